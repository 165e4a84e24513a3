//! A harness that runs real `corral-master` processes on free loopback ports with temp data
//! dirs, and can SIGKILL, SIGSTOP/SIGCONT, restart and add each one. Every process is killed
//! when the [`Cluster`] drops; on a panicking test, the masters' logs are printed.
//!
//! Set `CORRAL_KEEP_LOGS=<dir>` to keep the masters' logs after the cluster is dropped.
//!
//! Binaries are looked up beside the test executable (`target/<profile>/`), where
//! `cargo test --workspace` and `cargo build` put them, or in `CORRAL_BIN_DIR`.
//!
//! Files: `cluster` starts and controls the processes; `framework` is a test framework on
//! the raw Scheduler API; `waits` waits on conditions with a deadline; `sim` simulates
//! fleets of agents and frameworks on the real protocol (for the benches), `sim_mesos` a
//! framework on the Mesos HTTP API; `slowdisk` holds up a running master's fsyncs (strace);
//! `docker` runs
//! the deploy files with real containers; `browser` drives headless Chromium (the web UI).

#![warn(missing_docs)]

pub mod browser;
pub mod cluster;
pub mod docker;
pub mod framework;
pub mod sim;
pub mod sim_mesos;
pub mod slowdisk;
pub mod waits;

pub use cluster::*;
pub use framework::Framework;
pub use waits::*;

//! `corral-master`: parse flags, set up logging, run until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown; 2 for bad flags, or a data dir that belongs to
//! another node or cluster or is damaged (the operator must act: see the README's
//! recovery steps); SIGHUP re-reads the TLS files and the ACL file; 3 when the Raft core stopped while running (a storage error such as a
//! full disk: restarting may succeed once the cause is fixed); 1 for other failures.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use corral_master::config::MasterArgs;
use corral_master::node::{Master, StartError};

/// mimalloc instead of the system allocator: a master allocates many small, short-lived
/// objects on several threads (decoded commands, gRPC frames, events), where glibc's
/// malloc spent a fifth of the leader's time and fragmented its memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a master whose Raft core stopped while it ran.
const EXIT_RAFT_STOPPED: u8 = 3;

fn main() -> ExitCode {
    let args = MasterArgs::parse(); // clap exits with code 2 on usage errors
    let log_format = args.log_format;
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral-master: error: {e}");
            return ExitCode::from(2);
        }
    };
    corral_proto::logging::init(log_format, "info,openraft=warn");
    let runtime = match tokio::runtime::Runtime::new().context("starting the async runtime") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral-master: error: {e:#}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let master = match Master::start(config).await {
            Ok(m) => m,
            Err(e @ (StartError::DataDir(_) | StartError::Damaged { .. } | StartError::Tls(_) | StartError::Acl(_))) => {
                eprintln!("corral-master: error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("corral-master: error: {e}");
                return ExitCode::from(1);
            }
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("corral-master: error: installing the SIGHUP handler: {e}");
                master.shutdown().await;
                return ExitCode::from(1);
            }
        };
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let code = {
            let stopped = master.raft_stopped();
            tokio::pin!(stopped);
            loop {
            tokio::select! {
                signalled = &mut shutdown => {
                    if let Err(e) = signalled {
                        tracing::error!(error = %e, "waiting for signals failed; shutting down");
                    }
                    tracing::info!("shutdown requested");
                    break ExitCode::SUCCESS;
                }
                _ = hangup.recv() => {
                    // Certificate rotation and ACL changes without a restart.
                    if let Err(e) = master.reload() {
                        tracing::error!(error = %e, "reload on SIGHUP incomplete");
                    }
                }
                why = &mut stopped => {
                    // One line, then exit: a master whose Raft stopped can never vote again, and a
                    // supervisor (systemd, Docker, the harness) restarts a process that exits.
                    tracing::error!(reason = %why, "raft stopped; this master cannot take part in the cluster and exits");
                    eprintln!("corral-master: error: raft stopped: {why}");
                    break ExitCode::from(EXIT_RAFT_STOPPED);
                }
            }
            }
        };
        master.shutdown().await;
        code
    })
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

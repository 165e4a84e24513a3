//! `corral-master`: parse flags, set up logging, run until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown; 2 for bad flags or a data dir that belongs to
//! another node or cluster (the operator must fix the configuration); 1 for other failures.

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

fn main() -> ExitCode {
    let args = MasterArgs::parse(); // clap exits with code 2 on usage errors
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral-master: error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Err(e @ StartError::DataDir(_)) => {
                eprintln!("corral-master: error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("corral-master: error: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = shutdown_signal().await {
            tracing::error!(error = %e, "waiting for signals failed; shutting down");
        }
        tracing::info!("shutdown requested");
        master.shutdown().await;
        ExitCode::SUCCESS
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

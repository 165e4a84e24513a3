//! `corral-agent`: parse flags, set up logging, run until SIGINT or SIGTERM. Tasks keep
//! running when the agent stops. SIGHUP re-reads the TLS files (certificate rotation).
//! Exit codes: 0 after shutdown, 2 for bad flags, 1 otherwise.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use corral_agent::{Agent, AgentArgs};

fn main() -> ExitCode {
    // Each task's supervisor is this binary started with a special first argument.
    corral_agent::supervisor::run_if_requested();
    let args = AgentArgs::parse();
    let log_format = args.log_format;
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral-agent: error: {e}");
            return ExitCode::from(2);
        }
    };
    let tls_files = config.tls.clone();
    let cluster = config.cluster.clone();
    match tls_files
        .as_ref()
        .map(|f| corral_proto::tls::ClientTls::load(f, &cluster))
        .transpose()
    {
        Ok(tls) => corral_proto::tls::set_client(tls),
        Err(e) => {
            eprintln!("corral-agent: error: {e}");
            return ExitCode::from(2);
        }
    }
    corral_proto::logging::init(log_format, "info");
    let runtime = match tokio::runtime::Runtime::new().context("starting the async runtime") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral-agent: error: {e:#}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let agent = match Agent::start(config).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("corral-agent: error: {e:#}");
                return ExitCode::from(1);
            }
        };
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("corral-agent: error: installing the SIGTERM handler: {e}");
                return ExitCode::from(1);
            }
        };
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("corral-agent: error: installing the SIGHUP handler: {e}");
                return ExitCode::from(1);
            }
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hangup.recv() => {
                    // Certificate rotation without a restart: tasks keep running.
                    if let Some(files) = &tls_files {
                        match corral_proto::tls::reload(files, &cluster, agent.tls.as_ref()) {
                            Ok(()) => tracing::info!(cert = %files.cert.display(), "TLS certificates reloaded"),
                            Err(e) => tracing::error!(error = %e, "TLS certificates not reloaded; the old ones stay in use"),
                        }
                    }
                }
            }
        }
        tracing::info!("shutdown requested; tasks keep running");
        agent.shutdown(false).await;
        ExitCode::SUCCESS
    })
}

//! `corral-agent`: parse flags, set up logging, run until SIGINT or SIGTERM. Tasks keep
//! running when the agent stops. Exit codes: 0 after shutdown, 2 for bad flags, 1 otherwise.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use corral_agent::{Agent, AgentArgs};

fn main() -> ExitCode {
    // Each task's supervisor is this binary started with a special first argument.
    corral_agent::supervisor::run_if_requested();
    let args = AgentArgs::parse();
    let log_format = args.log_format;
    let tls = corral_proto::tls::TlsFiles::from_flags(args.tls_ca.clone(), args.tls_cert.clone(), args.tls_key.clone())
        .and_then(|files| {
            files
                .map(|f| corral_proto::tls::ClientTls::load(&f, &args.cluster_name))
                .transpose()
        });
    match tls {
        Ok(tls) => corral_proto::tls::set_client(tls),
        Err(e) => {
            eprintln!("corral-agent: error: {e}");
            return ExitCode::from(2);
        }
    }
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral-agent: error: {e}");
            return ExitCode::from(2);
        }
    };
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
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested; tasks keep running");
        agent.shutdown(false).await;
        ExitCode::SUCCESS
    })
}

//! Corral agent: runs tasks as processes for the leading master.
//!
//! # Layout
//! - [`config`]: flags and their validation; [`detect`]: the machine's resources;
//! - [`connection`]: the link to the leader (register with the inventory, obey commands of
//!   the newest term, reconnect when the leader changes or goes silent);
//! - [`tasks`]: the table of the agent's tasks (`tasks/mod.rs`), their processes in their own
//!   groups and sandboxes with kill after a grace period (`tasks/process.rs`), checkpoints
//!   written outside the table's lock and read back after a restart
//!   (`tasks/checkpoint.rs`), and each task's outbox of status updates, sent in order once
//!   durable and resent until acknowledged (`tasks/outbox.rs`);
//! - [`supervisor`]: the small per-task process that lets tasks outlive the agent and keeps
//!   their real exit status;
//! - [`users`]: whom a task runs as (its framework's user; never root unless allowed);
//! - [`isolation`]: cpu and memory limits with cgroups v2 where possible;
//! - [`gc`]: finished sandboxes removed after `--gc-delay`, sooner as the disk fills;
//! - [`durable`]: checkpoints written whole and fsynced (temporary file, rename, directory);
//! - [`files`]: the sandboxes served read-only (`/files/read`, `/files/browse`, Mesos' shape);
//! - [`https`]: that endpoint over mutual TLS, the sandboxes for masters and clients only.
//!
//! # A task, end to end
//!
//! ```text
//! leader ──MasterMessage::RunTask (the Connect stream)──▶ connection
//!     (commands of an older leader's term are ignored)
//!     tasks::Tasks::launch: sandbox, checkpoint (durable), spawn the supervisor
//!         supervisor: starts the task in its own process group (cgroup limits if any),
//!                     waits, writes the exit status (durable), exits
//!     TASK_RUNNING, then the final state: each into the task's outbox, checkpointed
//!     (durable, outside the lock), then sent
//!     connection ──AgentMessage::StatusUpdate──▶ leader (resent until acknowledged)
//! leader ──AckUpdate──▶ tasks: the update is dropped from the checkpoint; a task with
//!     nothing left to send is let go, and its sandbox ages towards gc
//! ```
//!
//! After an agent restart, [`tasks`] re-adopts the tasks its checkpoints name (their
//! supervisors kept them running) and re-registers with their inventory.

#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod detect;
pub mod durable;
pub mod executor_api;
pub mod files;
pub mod gc;
pub mod https;
pub mod isolation;
pub mod supervisor;
pub mod tasks;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

pub use config::{AgentArgs, Config};

/// Remove finished tasks' sandboxes as they age (see [`gc`]) until `stop`.
async fn collect_sandboxes(tasks: Tasks, gc_delay: Duration, headroom: f64, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(gc::scan_interval(gc_delay));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Held tasks are read before the scan: a task launched during it has a fresh
        // sandbox, far younger than any age collected.
        let held = tasks.held();
        let work_dir = tasks.work_dir().to_path_buf();
        let scan = tokio::task::spawn_blocking(move || {
            let usage = gc::disk_usage(&work_dir).unwrap_or(0.0);
            let age = gc::max_age(gc_delay, headroom, usage);
            (
                usage,
                age,
                gc::collect(&work_dir, &held, age, std::time::SystemTime::now()),
            )
        });
        match scan.await {
            Ok((usage, age, removed)) if !removed.is_empty() => {
                tasks.collected(removed.len() as u64);
                tracing::info!(removed = removed.len(), disk_usage = usage, max_age = ?age, "removed finished sandboxes");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sandbox collection failed"),
        }
    }
}
pub use tasks::Tasks;

/// A running agent.
pub struct Agent {
    /// The agent's tasks.
    pub tasks: Tasks,
    /// The address its HTTP endpoint is bound to.
    pub local_addr: std::net::SocketAddr,
    /// The endpoint's TLS configuration, replaced on a certificate reload.
    pub tls: Option<corral_proto::tls::SharedServerConfig>,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Start the agent: HTTP endpoint, the resend timer and the link to the masters.
    pub async fn start(mut config: Config) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(config.work_dir.join("meta"))
            .map_err(|e| anyhow::anyhow!("--work-dir {}: {e}", config.work_dir.display()))?;
        let cgroups = match isolation::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup")) {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::warn!(reason = %why, "cpu and memory isolation is off");
                None
            }
        };
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("locating this executable (the task supervisor): {e}"))?;
        let tasks = Tasks::new(config.work_dir.clone(), config.kill_grace, cgroups, exe)
            .allowing_root_tasks(config.allow_root_tasks);
        let recovered = tasks.recover();
        if recovered > 0 {
            tracing::info!(recovered, "took back the tasks of the previous run");
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
        let local_addr = listener.local_addr()?;
        config.listen = local_addr;
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::new();
        let files = Router::new()
            .route("/files/read", get(files::read))
            .route("/files/browse", get(files::browse));
        let tls = match &config.tls {
            Some(f) => Some(Arc::new(std::sync::RwLock::new(
                corral_proto::tls::server_config(f).map_err(|e| anyhow::anyhow!("{e}"))?,
            ))),
            None => None,
        };
        let mut http_stop = stopped.clone();
        let shutdown = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        let executor_api = || {
            Router::new()
                .route(executor_api::PATH, post(executor_api::handle))
                .layer(DefaultBodyLimit::max(executor_api::MAX_CALL_BYTES))
        };
        let endpoints = Router::new()
            .route("/health", get(health))
            .route("/state", get(state))
            .route("/metrics", get(metrics));
        let server_tls = tls.clone();
        // Executors speak plain HTTP to the agent (as Mesos executors do): on the agent's
        // own address without TLS; with TLS, on a loopback address of their own, reachable
        // from this host only.
        let executor_address = if server_tls.is_some() {
            let loopback = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(|e| anyhow::anyhow!("binding the executor endpoint on 127.0.0.1: {e}"))?;
            let address = loopback.local_addr()?;
            let app = executor_api().with_state(tasks.clone());
            let mut stop = stopped.clone();
            handles.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(loopback, app).with_graceful_shutdown(shutdown).await {
                    tracing::error!(error = %e, "agent executor endpoint failed");
                }
            }));
            address
        } else if local_addr.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local_addr.port())
        } else {
            local_addr
        };
        tasks.set_endpoint(
            executor_address.to_string(),
            config.hostname.clone(),
            corral_proto::convert::resources_to_wire(&config.resources),
        );
        match server_tls {
            Some(server) => {
                let cluster: Arc<str> = Arc::from(config.cluster.as_str());
                let app = endpoints
                    .merge(files.route_layer(axum::middleware::from_fn_with_state(
                        cluster,
                        https::sandboxes_for_masters_and_clients,
                    )))
                    .with_state(tasks.clone());
                let listener = https::TlsListener::new(listener, server)?;
                handles.push(tokio::spawn(async move {
                    let app = app.into_make_service_with_connect_info::<https::Peer>();
                    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                        tracing::error!(error = %e, "agent https server failed");
                    }
                }));
            }
            None => {
                let app = endpoints.merge(files).merge(executor_api()).with_state(tasks.clone());
                handles.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                        tracing::error!(error = %e, "agent http server failed");
                    }
                }));
            }
        }
        let resend_tasks = tasks.clone();
        let mut resend_stop = stopped.clone();
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => resend_tasks.resend_due(),
                    _ = resend_stop.wait_for(|s| *s) => return,
                }
            }
        }));
        handles.push(tokio::spawn(collect_sandboxes(
            tasks.clone(),
            config.gc_delay,
            config.gc_disk_headroom,
            stopped.clone(),
        )));
        tracing::info!(hostname = %config.hostname, resources = %config.resources, listen = %local_addr, isolation = tasks.isolation(), tls = tls.is_some(), "agent started");
        handles.push(tokio::spawn(connection::run(config, tasks.clone(), stopped)));
        Ok(Agent {
            tasks,
            local_addr,
            tls,
            stop,
            handles,
        })
    }

    /// Stop the agent. Tasks keep running (a restarted agent takes them back) unless
    /// `kill_tasks` is set.
    pub async fn shutdown(self, kill_tasks: bool) {
        if kill_tasks {
            self.tasks.kill_all();
        }
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

async fn health(State(tasks): State<Tasks>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "agent_id": tasks.agent_id(), "isolation": tasks.isolation()}))
}

/// Prometheus text: the agent's tasks by state, whether it isolates them, the newest
/// leader term it obeys, and the sandboxes it removed.
async fn metrics(State(tasks): State<Tasks>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    use std::fmt::Write;
    let mut by_state: std::collections::BTreeMap<&'static str, u64> = std::collections::BTreeMap::new();
    for (_, _, _, s) in tasks.running() {
        let name = corral_proto::v1::TaskState::try_from(s).map_or("TASK_UNKNOWN", |s| s.as_str_name());
        *by_state.entry(name).or_default() += 1;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP corral_agent_tasks Tasks this agent holds (running, or with updates not yet acknowledged), by state.\n# TYPE corral_agent_tasks gauge"
    );
    for (state, n) in by_state {
        let _ = writeln!(out, "corral_agent_tasks{{state=\"{state}\"}} {n}");
    }
    let executors = tasks.executors();
    let _ = writeln!(
        out,
        "# HELP corral_agent_executors Frameworks' executors this agent holds: running (subscribed or not), or ended and not yet acknowledged by the master.\n# TYPE corral_agent_executors gauge"
    );
    for (state, n) in [
        (
            "subscribed",
            executors.iter().filter(|e| !e.ended && e.subscribed).count(),
        ),
        (
            "unsubscribed",
            executors.iter().filter(|e| !e.ended && !e.subscribed).count(),
        ),
        ("ended", executors.iter().filter(|e| e.ended).count()),
    ] {
        let _ = writeln!(out, "corral_agent_executors{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP corral_agent_isolation 1 if tasks run in cgroups with cpu and memory limits.\n# TYPE corral_agent_isolation gauge\ncorral_agent_isolation {}",
        u8::from(tasks.isolation())
    );
    let _ = writeln!(
        out,
        "# HELP corral_agent_leader_term The newest leader term this agent obeys.\n# TYPE corral_agent_leader_term gauge\ncorral_agent_leader_term {}",
        tasks.max_term()
    );
    let _ = writeln!(
        out,
        "# HELP corral_agent_sandboxes_collected_total Finished sandboxes removed since the agent started.\n# TYPE corral_agent_sandboxes_collected_total counter\ncorral_agent_sandboxes_collected_total {}",
        tasks.collected_total()
    );
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn state(State(tasks): State<Tasks>) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = tasks
        .running()
        .into_iter()
        .map(|(f, t, pid, s)| json!({"framework_id": f, "task_id": t, "pid": pid, "state": corral_proto::v1::TaskState::try_from(s).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")}))
        .collect();
    let executors: Vec<serde_json::Value> = tasks
        .executors()
        .into_iter()
        .map(|e| json!({"framework_id": e.framework_id, "executor_id": e.executor_id, "pid": e.pid, "subscribed": e.subscribed, "ended": e.ended}))
        .collect();
    Json(json!({"agent_id": tasks.agent_id(), "tasks": list, "executors": executors}))
}

//! Plain HTTP on the gRPC port: `/health`, `/metrics` (Prometheus text), `/state` (JSON)
//! and `/redirect` (307 to the leader), as Mesos masters serve them. Any other path answers
//! 404 (a gRPC request for an unknown method gets gRPC's UNIMPLEMENTED), a known path with
//! another method 405.

use std::fmt::Write;

use std::ops::Bound;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::ServerState;
use serde_json::json;

use corral_proto::resources::{scalar_to_f64, Resources, Value};

use crate::node::Shared;
use crate::raft::write::WRITE_BUCKETS_MS;
use crate::service::operator::{DEFAULT_PAGE_RECORDS, MAX_PAGE_RECORDS};
use crate::state::{AgentState, ClusterState, FrameworkState};

/// Most agents, and most frameworks, `/state` lists (the counts say how many there are).
pub const MAX_STATE_RECORDS: usize = 10_000;

pub(crate) fn router(shared: Shared) -> Router {
    // What shows the cluster's state needs the operator's read permission; `/health` and
    // `/redirect` stay open to every caller the transport lets in (health checks, load
    // balancers).
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/state", get(state))
        .route("/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), require_read));
    Router::new()
        .route("/health", get(health))
        .route("/redirect", get(redirect))
        .route("/master/redirect", get(redirect))
        .route("/version", get(version))
        .merge(guarded)
        .with_state(shared)
}

/// The caller of an HTTP request, identified as a gRPC caller is: its bearer token, else its
/// client certificate (see `acl.rs`), and refused (401 or 403, naming the permission) unless
/// it may read the cluster's state as an operator.
pub(crate) async fn require_read(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs);
    let verdict = shared
        .access
        .identify_http(request.headers(), certs.as_deref().map(Vec::as_slice))
        .and_then(|p| p.operator(crate::acl::OperatorAccess::Read));
    match verdict {
        Ok(()) => next.run(request).await,
        Err(status) => {
            let code = match status.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            (code, format!("{}\n", status.message())).into_response()
        }
    }
}

/// What no route takes: gRPC's UNIMPLEMENTED for a gRPC request (as tonic answers an
/// unknown method), 404 for anything else.
pub(crate) async fn fallback(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/grpc"),
                (axum::http::HeaderName::from_static("grpc-status"), "12"),
            ],
        )
            .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        format!(
            "{} is not served here: /ui/, /health, /metrics, /state, /events, /redirect, /version, the Mesos APIs (/api/v1/scheduler, /api/v1, /master/state, /master/redirect) and the gRPC API\n",
            corral_proto::quote(request.uri().path())
        ),
    )
        .into_response()
}

/// 200 while this master can take part in the quorum; 503, with the reason, when it cannot
/// (its Raft core stopped, or it is not a voter), so that a health check replaces or
/// flags it. Says what it knows of the cluster either way.
///
/// Cheap enough to probe often: no state hash (that encodes the whole state).
async fn health(State(shared): State<Shared>) -> Response {
    let (role, term) = shared.role_and_term();
    let problem = shared.cannot_vote();
    let body = Json(json!({
        "status": if problem.is_some() { "unavailable" } else { "ok" },
        "reason": problem,
        "id": shared.config.id,
        "role": role,
        "term": term,
        "leader": shared.leader().map(|(id, address)| json!({"id": id, "address": address})),
    }));
    let code = if problem.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body).into_response()
}

/// One series of this master's `/metrics`, labelled with its id, with its help and type.
fn series(out: &mut String, kind: &str, name: &str, help: &str, id: crate::raft::types::NodeId, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{id=\"{id}\"}} {value}"
    );
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let m = shared.raft.metrics().borrow().clone();
    let id = shared.config.id;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| series(&mut out, "gauge", name, help, id, value);
    gauge("corral_raft_term", "Current Raft term.", m.current_term as f64);
    gauge(
        "corral_raft_log_generations",
        "sled databases the Raft log's entries are in now (each retired whole once purged).",
        shared.log.generations() as f64,
    );
    gauge(
        "corral_raft_is_leader",
        "1 if this master is the leader.",
        f64::from(u8::from(m.state == ServerState::Leader)),
    );
    gauge(
        "corral_raft_leader_id",
        "Id of the known leader, 0 if none.",
        m.current_leader.unwrap_or(0) as f64,
    );
    gauge(
        "corral_raft_last_log_index",
        "Index of the last log entry.",
        m.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        "corral_raft_applied_index",
        "Index of the last applied entry.",
        m.last_applied.map_or(0, |l| l.index) as f64,
    );
    gauge(
        "corral_raft_snapshot_index",
        "Index of the last snapshot.",
        m.snapshot.map_or(0, |l| l.index) as f64,
    );
    gauge(
        "corral_raft_purged_index",
        "Index up to which the log is purged.",
        m.purged.map_or(0, |l| l.index) as f64,
    );
    if let Some(ack) = m.millis_since_quorum_ack {
        gauge(
            "corral_raft_quorum_ack_age_seconds",
            "Time since a quorum last acknowledged the leader.",
            ack as f64 / 1000.0,
        );
    }
    gauge(
        "corral_raft_core_silence_seconds",
        "How long this master's Raft core has left a probe unanswered (0 while it answers).",
        shared.core_probe.silence().as_secs_f64(),
    );
    gauge(
        "corral_raft_log_flush_outstanding_seconds",
        "How long this master's Raft log flusher has been on its current write and flush (0 while idle).",
        shared.log.flush_outstanding().as_secs_f64(),
    );
    let leading = match shared.leader.get() {
        Some(leader) => leader
            .ask(|_, soft| {
                let mut offered = Resources::new();
                for o in soft.offers.values() {
                    offered = offered.checked_add(&o.resources).unwrap_or(offered);
                }
                (
                    soft.launches.len(),
                    soft.launches.limit(),
                    soft.offers.len(),
                    offered,
                    soft.passes,
                )
            })
            .await
            .ok(),
        None => None,
    };
    let offered = leading.as_ref().map(|l| l.3.clone());
    if let Some((in_flight, limit, offers, _, passes)) = leading {
        gauge(
            "corral_launches_in_flight",
            "Tasks accepted and not yet reported on by their agent (leader only).",
            in_flight as f64,
        );
        gauge(
            "corral_launch_limit",
            "Launches allowed in flight before offers wait; adapts to the commit latency (leader only).",
            limit as f64,
        );
        gauge(
            "corral_offers_outstanding",
            "Offers made and not yet accepted, declined or rescinded (leader only).",
            offers as f64,
        );
        gauge(
            "corral_allocation_last_pass_seconds",
            "Time the last allocation pass took (leader only).",
            passes.last_seconds,
        );
        let _ = writeln!(
            out,
            "# HELP corral_allocation_passes_total Allocation passes run in this leader's term.\n# TYPE corral_allocation_passes_total counter\ncorral_allocation_passes_total{{id=\"{id}\"}} {}",
            passes.count
        );
        let _ = writeln!(
            out,
            "# HELP corral_allocation_pass_seconds_total Time spent in allocation passes in this leader's term.\n# TYPE corral_allocation_pass_seconds_total counter\ncorral_allocation_pass_seconds_total{{id=\"{id}\"}} {}",
            passes.total_seconds
        );
    }
    if let Some(replication) = &m.replication {
        let last = m.last_log_index.unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP corral_raft_replication_lag_entries Entries a follower is behind the leader."
        );
        let _ = writeln!(out, "# TYPE corral_raft_replication_lag_entries gauge");
        for (peer, matched) in replication {
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            let _ = writeln!(
                out,
                "corral_raft_replication_lag_entries{{id=\"{id}\",peer=\"{peer}\"}} {lag}"
            );
        }
    }
    let (retained, retention) = {
        let state = shared.state.read();
        let total = cluster_figures(&mut out, id, &state.app);
        if let Some(offered) = offered {
            // Every resource the cluster has, 0 when none of it is on offer.
            per_resource(
                &mut out,
                id,
                "corral_resources_offered",
                "Resources in outstanding offers, by resource (leader only).",
                &total,
                &offered,
            );
        }
        (state.app.retained(), state.app.retention.clone())
    };
    let _ = writeln!(
        out,
        "# HELP corral_retained_records Records in this master's applied state, by kind.\n# TYPE corral_retained_records gauge"
    );
    for (kind, n) in ["agents", "frameworks", "tasks", "finished_tasks"].iter().zip(retained) {
        let _ = writeln!(out, "corral_retained_records{{id=\"{id}\",kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP corral_collected_records_total Records removed by retention since the cluster began, by kind.\n# TYPE corral_collected_records_total counter"
    );
    for (kind, n) in [
        ("tasks", retention.collected_tasks),
        ("frameworks", retention.collected_frameworks),
        ("agents", retention.collected_agents),
    ] {
        let _ = writeln!(out, "corral_collected_records_total{{id=\"{id}\",kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP corral_dropped_updates_total Unacknowledged status updates removed with their task.\n# TYPE corral_dropped_updates_total counter\ncorral_dropped_updates_total{{id=\"{id}\"}} {}",
        retention.dropped_updates
    );
    if let Some(snap) = shared.state.last_snapshot() {
        let mut gauge = |name: &str, help: &str, value: f64| series(&mut out, "gauge", name, help, id, value);
        gauge(
            "corral_snapshot_build_seconds",
            "Time to encode and durably write the last snapshot this master built.",
            snap.build.as_secs_f64(),
        );
        gauge(
            "corral_snapshot_locked_seconds",
            "Time the last snapshot build held the applied state (apply waited).",
            snap.locked.as_secs_f64(),
        );
        gauge(
            "corral_snapshot_bytes",
            "Size of the last snapshot this master built.",
            snap.bytes as f64,
        );
    }
    let flush = shared.log.flush_stats();
    let mut counter = |name: &str, help: &str, value: f64| series(&mut out, "counter", name, help, id, value);
    counter(
        "corral_raft_log_flushes_total",
        "Group-commit flushes of the Raft log (each a sled flush and an fdatasync of every log database written since the last).",
        flush.flushes as f64,
    );
    counter(
        "corral_raft_log_leader_appends_total",
        "Appends of this master's own entries as leader, sent to followers while its flush runs instead of after it.",
        flush.leader_appends as f64,
    );
    counter(
        "corral_raft_log_flush_waiters_total",
        "Appends, votes, purges and truncations made durable by those flushes.",
        flush.callbacks as f64,
    );
    counter(
        "corral_raft_log_flush_sled_seconds_total",
        "Time the flushes spent in sled's flush (its write and sync_file_range).",
        flush.sled_nanos as f64 / 1e9,
    );
    counter(
        "corral_raft_log_flush_sync_seconds_total",
        "Time the flushes spent in fdatasync.",
        flush.sync_nanos as f64 / 1e9,
    );
    counter(
        "corral_raft_log_appended_bytes_total",
        "Encoded bytes appended to the Raft log since the master started.",
        shared.log.appended_bytes() as f64,
    );
    counter(
        "corral_raft_log_write_seconds_total",
        "Time the log's flusher thread spent writing queued appends, votes and purges into sled.",
        flush.write_nanos as f64 / 1e9,
    );
    counter(
        "corral_raft_log_appends_total",
        "Log appends made durable.",
        flush.appends as f64,
    );
    counter(
        "corral_raft_log_append_wait_seconds_total",
        "Time those appends waited from being queued to being durable.",
        flush.append_wait_nanos as f64 / 1e9,
    );
    let stages = &shared.stages;
    for (name, help, stage) in [
        (
            "corral_write_queued",
            "writes queued for group commit, and their time in the queue",
            &stages.queued,
        ),
        (
            "corral_raft_append_rpc",
            "AppendEntries with entries this master sent, and the time to their answers",
            &stages.append_rpc,
        ),
        (
            "corral_raft_append_served",
            "AppendEntries with entries this master served, and the time to answer them",
            &stages.append_served,
        ),
    ] {
        counter(
            &format!("{name}_total"),
            &format!("Count of {help}."),
            stage.count() as f64,
        );
        counter(
            &format!("{name}_seconds_total"),
            &format!("Total time of {help}."),
            stage.seconds(),
        );
    }
    counter(
        "corral_raft_keepalives_sent_total",
        "Keepalives this master sent as a leader whose Raft core was waiting on its disk.",
        shared.keepalives.sent.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    counter(
        "corral_raft_keepalives_heard_total",
        "Keepalives this master took as hearing from its leader.",
        shared.keepalives.heard.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let apply = shared.state.apply_stats();
    counter(
        "corral_raft_apply_calls_total",
        "Runs of committed entries applied to the state.",
        apply.calls as f64,
    );
    counter(
        "corral_raft_applied_entries_total",
        "Entries applied to the state.",
        apply.entries as f64,
    );
    counter(
        "corral_raft_apply_seconds_total",
        "Time applying those runs (decoding, the state's lock, the commands).",
        apply.nanos as f64 / 1e9,
    );
    counter(
        "corral_raft_apply_durable_waits_total",
        "Runs of committed entries that first waited for this master's own log flush (a leader's entries commit before they are on its disk, and apply only once they are).",
        apply.durable_waits as f64,
    );
    counter(
        "corral_raft_apply_durable_wait_seconds_total",
        "Time those runs waited for this master's own log flush.",
        apply.durable_wait_nanos as f64 / 1e9,
    );
    let lat = shared.writer.latency();
    let _ = writeln!(
        out,
        "# HELP corral_write_commit_seconds Time from proposing a write to it being applied."
    );
    let _ = writeln!(out, "# TYPE corral_write_commit_seconds histogram");
    for (bound, count) in WRITE_BUCKETS_MS.iter().zip(lat.buckets.iter()) {
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(
            out,
            "corral_write_commit_seconds_bucket{{id=\"{id}\",le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "corral_write_commit_seconds_bucket{{id=\"{id}\",le=\"+Inf\"}} {}",
        lat.count
    );
    let _ = writeln!(out, "corral_write_commit_seconds_sum{{id=\"{id}\"}} {}", lat.sum_secs);
    let _ = writeln!(out, "corral_write_commit_seconds_count{{id=\"{id}\"}} {}", lat.count);
    let _ = writeln!(
        out,
        "# HELP corral_write_commands_total Commands committed (several per entry when batched)."
    );
    let _ = writeln!(out, "# TYPE corral_write_commands_total counter");
    let _ = writeln!(out, "corral_write_commands_total{{id=\"{id}\"}} {}", lat.commands);
    let _ = writeln!(
        out,
        "# HELP corral_write_command_bytes_total Encoded command bytes in the committed entries."
    );
    let _ = writeln!(out, "# TYPE corral_write_command_bytes_total counter");
    let _ = writeln!(out, "corral_write_command_bytes_total{{id=\"{id}\"}} {}", lat.bytes);
    let _ = writeln!(
        out,
        "# HELP corral_write_held_seconds_total Time proposals waited for a live follower to catch up."
    );
    let _ = writeln!(out, "# TYPE corral_write_held_seconds_total counter");
    let _ = writeln!(out, "corral_write_held_seconds_total{{id=\"{id}\"}} {}", lat.held_secs);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `value` as a Prometheus label value (backslash, quote and newline escaped).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One gauge per resource named in `names`: how much of it `r` holds (range sets count
/// their members; 0 when `r` has none).
fn per_resource(out: &mut String, id: u64, name: &str, help: &str, names: &Resources, r: &Resources) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (resource, kind) in names.iter() {
        let v = match kind {
            Value::Scalar(_) => scalar_to_f64(r.scalar_milli(resource)),
            Value::Ranges(_) => r.ranges(resource).len() as f64,
        };
        let _ = writeln!(out, "{name}{{id=\"{id}\",resource=\"{resource}\"}} {v}");
    }
}

/// The cluster as this master's applied state has it: agents, frameworks and tasks by
/// state, resources in all and used, and each role's dominant share (DRF). Returns the
/// active agents' resources in all.
fn cluster_figures(out: &mut String, id: u64, app: &ClusterState) -> Resources {
    let _ = writeln!(
        out,
        "# HELP corral_agents Agents in the replicated state, by state.\n# TYPE corral_agents gauge"
    );
    for s in [
        AgentState::Active,
        AgentState::Unreachable,
        AgentState::Draining,
        AgentState::Gone,
    ] {
        let n = app.agents.values().filter(|a| a.state == s).count();
        let _ = writeln!(out, "corral_agents{{id=\"{id}\",state=\"{}\"}} {n}", agent_label(s));
    }
    let _ = writeln!(
        out,
        "# HELP corral_frameworks Frameworks in the replicated state, by state.\n# TYPE corral_frameworks gauge"
    );
    for s in [
        FrameworkState::Connected,
        FrameworkState::Disconnected,
        FrameworkState::TornDown,
    ] {
        let n = app.frameworks.values().filter(|f| f.state == s).count();
        let _ = writeln!(
            out,
            "corral_frameworks{{id=\"{id}\",state=\"{}\"}} {n}",
            framework_label(s)
        );
    }
    let mut by_state: std::collections::BTreeMap<&'static str, u64> = std::collections::BTreeMap::new();
    for t in app.tasks.values() {
        *by_state.entry(t.state().as_str_name()).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP corral_tasks Tasks in the replicated state (running and retained), by state.\n# TYPE corral_tasks gauge"
    );
    for (state, n) in by_state {
        let _ = writeln!(out, "corral_tasks{{id=\"{id}\",state=\"{state}\"}} {n}");
    }
    let mut total = Resources::new();
    let mut used = Resources::new();
    for a in app.agents.values().filter(|a| a.state == AgentState::Active) {
        total = total.checked_add(&a.resources).unwrap_or(total);
        used = used.checked_add(&a.used).unwrap_or(used);
    }
    per_resource(
        out,
        id,
        "corral_resources_total",
        "Resources of the active agents, by resource.",
        &total,
        &total,
    );
    per_resource(
        out,
        id,
        "corral_resources_used",
        "Resources the active agents' tasks use, by resource.",
        &total,
        &used,
    );
    let mut by_role: std::collections::BTreeMap<&str, Resources> = std::collections::BTreeMap::new();
    for (framework_id, r) in &app.framework_used {
        if let Some(f) = app.frameworks.get(framework_id) {
            let role = by_role.entry(f.role.as_str()).or_default();
            *role = role.checked_add(r).unwrap_or_else(|_| role.clone());
        }
    }
    let _ = writeln!(
        out,
        "# HELP corral_role_dominant_share Each role's dominant share of the active agents' resources (DRF).\n# TYPE corral_role_dominant_share gauge"
    );
    for (role, r) in by_role {
        let _ = writeln!(
            out,
            "corral_role_dominant_share{{id=\"{id}\",role=\"{}\"}} {}",
            label(role),
            r.dominant_share(&total)
        );
    }
    total
}

/// The query of `/state`: which page of the tasks.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct StateQuery {
    /// Most tasks listed (default 1,000, at most 5,000).
    tasks_limit: Option<usize>,
    /// List the tasks after this `framework_id/task_id` (the last page's `tasks_next`).
    tasks_after: Option<String>,
}

/// Resources as a JSON object: scalars as numbers, range sets as `[b-e,...]`.
pub(crate) fn resources_json(r: &Resources) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = r
        .iter()
        .map(|(name, value)| {
            let v = match value {
                Value::Scalar(m) => json!(scalar_to_f64(*m)),
                Value::Ranges(set) => {
                    let ranges: Vec<String> = set.ranges().iter().map(|(b, e)| format!("{b}-{e}")).collect();
                    json!(format!("[{}]", ranges.join(",")))
                }
            };
            (name.to_string(), v)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// An agent state as a metric label (`active`).
fn agent_label(s: AgentState) -> &'static str {
    match s {
        AgentState::Active => "active",
        AgentState::Unreachable => "unreachable",
        AgentState::Draining => "draining",
        AgentState::Gone => "gone",
    }
}

/// A framework state as a metric label (`connected`).
fn framework_label(s: FrameworkState) -> &'static str {
    match s {
        FrameworkState::Connected => "connected",
        FrameworkState::Disconnected => "disconnected",
        FrameworkState::TornDown => "torn_down",
    }
}

/// This master's applied state as JSON (not a linearizable read: use the leader's): its
/// own view, the weights, every agent and framework (up to [`MAX_STATE_RECORDS`] each;
/// `agents_total` and `frameworks_total` count them all) and a page of the tasks in
/// (framework, task) order, `tasks_next` naming the next page (empty on the last).
async fn state(State(shared): State<Shared>, Query(q): Query<StateQuery>) -> Response {
    let limit = match q.tasks_limit {
        None | Some(0) => DEFAULT_PAGE_RECORDS,
        Some(n) => n.min(MAX_PAGE_RECORDS),
    };
    let after = match q.tasks_after.as_deref() {
        None | Some("") => None,
        Some(token) => match token.split_once('/') {
            Some((f, t)) if token.len() <= 2 * crate::validate::MAX_ID_LEN + 1 => Some((f.to_string(), t.to_string())),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    "tasks_after: not a framework_id/task_id of the last page\n",
                )
                    .into_response()
            }
        },
    };
    let v = shared.self_view();
    let body = {
        let s = shared.state.read();
        state_json(&s.app, limit, after)
    };
    let mut body = body;
    body["id"] = json!(v.id);
    body["address"] = json!(v.address);
    body["role"] = json!(v.role);
    body["term"] = json!(v.term);
    body["leader"] = json!(v.leader.map(|(id, address)| json!({"id": id, "address": address})));
    body["applied_index"] = json!(v.applied_index);
    body["state_hash"] = json!(v.state_hash);
    Json(body).into_response()
}

/// The records part of `/state`.
fn state_json(app: &ClusterState, limit: usize, after: Option<(String, String)>) -> serde_json::Value {
    let weights: serde_json::Map<String, serde_json::Value> = app
        .weights
        .iter()
        .map(|(r, m)| (r.clone(), json!(*m as f64 / 1000.0)))
        .collect();
    let agents: Vec<serde_json::Value> = app.agents.values().take(MAX_STATE_RECORDS).map(agent_json).collect();
    let frameworks: Vec<serde_json::Value> = app
        .frameworks
        .values()
        .take(MAX_STATE_RECORDS)
        .map(|f| {
            json!({
                "framework_id": f.id,
                "name": f.name,
                "role": f.role,
                "user": f.user,
                "state": crate::state::changes::framework_state(f.state).as_str_name(),
                "failover_timeout_seconds": f.failover_timeout_ms as f64 / 1000.0,
                "registered_at_ms": f.registered_at_ms,
                "used": resources_json(&app.framework_used.get(&f.id).cloned().unwrap_or_default()),
            })
        })
        .collect();
    let start = match after {
        Some(key) => Bound::Excluded(key),
        None => Bound::Unbounded,
    };
    let mut page = app.tasks.range((start, Bound::Unbounded));
    let mut tasks = Vec::new();
    let mut last = None;
    for (key, t) in page.by_ref().take(limit) {
        last = Some(format!("{}/{}", key.0, key.1));
        tasks.push(json!({
            "framework_id": t.framework_id,
            "task_id": t.task_id,
            "name": t.name,
            "agent_id": t.agent_id,
            "state": t.state().as_str_name(),
            "resources": resources_json(&t.resources),
            "exit_code": t.status.exit_code,
            "unacknowledged_updates": t.unacked.len(),
        }));
    }
    let next = if page.next().is_some() {
        last.unwrap_or_default()
    } else {
        String::new()
    };
    json!({
        "weights": weights,
        "agents_total": app.agents.len(),
        "agents": agents,
        "frameworks_total": app.frameworks.len(),
        "frameworks": frameworks,
        "tasks_total": app.tasks.len(),
        "tasks": tasks,
        "tasks_next": next,
    })
}

/// How often an idle `/events` stream sends a comment (so proxies keep it open and a
/// client notices a dead master).
pub const EVENTS_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /events`: this master's watch events (`Operator.Watch`) as Server-Sent Events, each
/// named by its kind (`task`, `agent`, `framework`, `leader`) with the JSON of
/// [`corral_proto::watch::to_json`] as data; a watcher that falls behind gets an `error`
/// event and the stream ends (the browser's EventSource reconnects).
pub(crate) async fn events(State(shared): State<Shared>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio_stream::StreamExt;
    let stream = match crate::service::watch::stream(&shared).await {
        Ok(stream) => stream,
        Err(status) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", status.message())).into_response(),
    };
    let stream = stream.map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(e) => {
                let data = corral_proto::watch::to_json(&e);
                let kind = data["kind"].as_str().unwrap_or("unknown").to_string();
                Event::default().event(kind).data(data.to_string())
            }
            Err(status) => Event::default().event("error").data(status.message()),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(EVENTS_KEEP_ALIVE))
        .into_response()
}

/// `GET /version`, in Mesos' shape, with Corral's own version beside it.
async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "version": corral_proto::mesos::convert::MESOS_VERSION,
        "corral_version": env!("CARGO_PKG_VERSION"),
        "build_user": "corral",
        "git_sha": "",
        "git_tag": "",
    }))
}

/// 307 to the leader's base URL, or 503 while there is none.
async fn redirect(State(shared): State<Shared>) -> Response {
    match shared.leader() {
        Some((_, addr)) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("http://{addr}/"))],
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leader is elected at the moment\n").into_response(),
    }
}

/// One agent as `/state` (and the web UI, which adds whether it is attached) shows it.
pub(crate) fn agent_json(a: &crate::state::AgentRecord) -> serde_json::Value {
    json!({
        "agent_id": a.id,
        "hostname": a.hostname,
        "address": a.address,
        "state": crate::state::changes::agent_state(a.state).as_str_name(),
        "resources": resources_json(&a.resources),
        "used": resources_json(&a.used),
        "attributes": a.attributes.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "isolation": a.isolation,
        "capabilities": a.capabilities,
        "executors": a.executors.values().map(|e| json!({
            "framework_id": e.framework_id,
            "executor_id": e.executor_id,
            "resources": resources_json(&e.resources),
            "launched_at_ms": e.launched_at_ms,
        })).collect::<Vec<_>>(),
        "registered_at_ms": a.registered_at_ms,
    })
}

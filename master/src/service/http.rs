//! Plain HTTP on the gRPC port: `/health`, `/metrics` (Prometheus text), `/state` (JSON)
//! and `/redirect` (307 to the leader), as Mesos masters serve them.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use openraft::ServerState;
use serde_json::json;

use crate::node::Shared;
use crate::raft::write::WRITE_BUCKETS_MS;

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/state", get(state))
        .route("/redirect", get(redirect))
        .with_state(shared)
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

async fn metrics(State(shared): State<Shared>) -> Response {
    let m = shared.raft.metrics().borrow().clone();
    let id = shared.config.id;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{id=\"{id}\"}} {value}"
        );
    };
    gauge("corral_raft_term", "Current Raft term.", m.current_term as f64);
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
    let launches = match shared.leader.get() {
        Some(leader) => leader
            .ask(|_, soft| (soft.launches.len(), soft.launches.limit()))
            .await
            .ok(),
        None => None,
    };
    if let Some((in_flight, limit)) = launches {
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
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{id=\"{id}\"}} {value}"
            );
        };
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

/// This master's applied state as JSON (not a linearizable read: use the leader's).
async fn state(State(shared): State<Shared>) -> Json<serde_json::Value> {
    let v = shared.self_view();
    let weights: serde_json::Map<String, serde_json::Value> = {
        let s = shared.state.read();
        s.app
            .weights
            .iter()
            .map(|(r, m)| (r.clone(), json!(*m as f64 / 1000.0)))
            .collect()
    };
    Json(json!({
        "id": v.id,
        "address": v.address,
        "role": v.role,
        "term": v.term,
        "leader": v.leader.map(|(id, address)| json!({"id": id, "address": address})),
        "applied_index": v.applied_index,
        "state_hash": v.state_hash,
        "weights": weights,
        "agents": [],
        "frameworks": [],
        "tasks": [],
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

//! The web UI every master serves at `/ui/` (`/` redirects there): a page, a script and a
//! style sheet embedded in the binary (no CDN, no build step), and the three requests the
//! page makes:
//!
//! - `GET /ui/api/view`: the leader's view of the cluster as JSON (members, agents,
//!   frameworks with their shares and task counts, outstanding offers, a filtered page of
//!   tasks). Soft state (who is subscribed, what is offered) only the leader has, so a
//!   follower relays the request to the leader, and its UI shows the leader's view.
//! - `GET /ui/api/events`: the leader's watch events as Server-Sent Events (`/events`),
//!   relayed the same way; the page applies each and fetches the view again.
//! - `GET /ui/api/output?framework_id=&task_id=&file=stdout|stderr`: a task's output as
//!   text, read from its agent's sandbox (`/files/read`) by the master, so the browser
//!   needs to reach only the master. Any master serves it from its applied state.
//!
//! A relayed request carries [`RELAYED`]; a master that gets one and is not the leader
//! answers 503 rather than relaying again (no loops while leadership moves).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use corral_proto::resources::Resources;
use corral_proto::v1;

use crate::node::Shared;
use crate::service::http::resources_json;
use crate::state::{AgentState, ClusterState};

/// The page.
const INDEX_HTML: &str = include_str!("../../ui/index.html");
/// Its script.
const APP_JS: &str = include_str!("../../ui/app.js");
/// Its style sheet.
const APP_CSS: &str = include_str!("../../ui/app.css");

/// The header a relayed request carries (its value: the relaying master's id).
pub const RELAYED: &str = "x-corral-relayed-by";

/// Most tasks one view lists (the newest matching the filter; the view says how many match).
pub const MAX_VIEW_TASKS: usize = 500;

/// Most outstanding offers one view lists.
pub const MAX_VIEW_OFFERS: usize = 500;

/// Most bytes of a task's output one `/ui/api/output` request answers.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// How long a relay waits for the leader's (or an agent's) answer to start.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        // The page itself holds no data; what it fetches needs the operator's read
        // permission, as `/state` does.
        .merge(
            Router::new()
                .route("/ui/api/view", get(view))
                .route("/ui/api/events", get(events))
                .route("/ui/api/output", get(output))
                .route_layer(axum::middleware::from_fn_with_state(
                    shared.clone(),
                    crate::service::http::require_read,
                )),
        )
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary: a browser asks again after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn unavailable(why: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

/// Relay `target` to the leader and pass its answer on as it comes, or say why not.
pub(crate) async fn to_leader(shared: &Shared, headers: &HeaderMap, target: &str) -> Response {
    if let Some(by) = headers.get(RELAYED) {
        return unavailable(format!(
            "master {} is not the leader either (relayed by master {}); try again",
            shared.config.id,
            corral_proto::quote(&String::from_utf8_lossy(by.as_bytes()))
        ));
    }
    let Some((id, address)) = shared.leader().filter(|(id, _)| *id != shared.config.id) else {
        return unavailable("no leader is elected at the moment".into());
    };
    let me = shared.config.id.to_string();
    let opened = match corral_proto::http::open(
        &address,
        corral_proto::tls::Role::Master,
        target,
        &[(RELAYED, &me)],
        RELAY_TIMEOUT,
    )
    .await
    {
        Ok(opened) => opened,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("the leader (master {id}) did not answer: {e}\n"),
            )
                .into_response()
        }
    };
    let status = StatusCode::from_u16(opened.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = opened.header("content-type").unwrap_or("text/plain").to_string();
    let mut response = Response::new(Body::from_stream(opened.body));
    *response.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}

/// The task filter of `/ui/api/view`.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ViewQuery {
    /// Only tasks in this state (`TASK_RUNNING`...), or `active` / `terminal`.
    state: Option<String>,
    /// Only this framework's tasks.
    framework_id: Option<String>,
}

/// What only the leader's soft state knows, taken in one trip through its loop.
struct Soft {
    subscribed: HashSet<String>,
    attached: HashSet<String>,
    offers: Vec<serde_json::Value>,
    offered_to: HashMap<String, Resources>,
}

async fn view(
    State(shared): State<Shared>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(q): Query<ViewQuery>,
) -> Response {
    let Ok(leader) = shared.leading() else {
        let target = match raw {
            Some(raw) => format!("/ui/api/view?{raw}"),
            None => "/ui/api/view".to_string(),
        };
        return to_leader(&shared, &headers, &target).await;
    };
    let soft = leader
        .ask(|_, soft| {
            let now = Instant::now();
            let mut offers: Vec<(&String, &crate::leader::OfferRecord)> = soft.offers.iter().collect();
            offers.sort_by_key(|(_, o)| std::cmp::Reverse(o.created));
            Soft {
                subscribed: soft.frameworks.keys().cloned().collect(),
                attached: soft.agents.keys().cloned().collect(),
                offers: offers
                    .into_iter()
                    .take(MAX_VIEW_OFFERS)
                    .map(|(id, o)| {
                        json!({
                            "offer_id": id,
                            "framework_id": o.framework_id,
                            "agent_id": o.agent_id,
                            "resources": resources_json(&o.resources),
                            "age_ms": now.saturating_duration_since(o.created).as_millis() as u64,
                        })
                    })
                    .collect(),
                offered_to: soft.offered_to.clone(),
            }
        })
        .await;
    let Ok(soft) = soft else {
        return unavailable("this master's term just ended; try again".into());
    };
    let offers_total = soft.offers.len();
    let members = crate::service::operator::members(&shared).await;
    let me = shared.self_view();
    let mut body = {
        let state = shared.state.read();
        records_json(&state.app, &q, &soft)
    };
    let leader_log = me.last_log_index;
    body["leader"] = json!({"id": me.id, "address": me.address, "term": me.term});
    body["members"] = members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "address": m.address,
                "role": m.role,
                "voter": m.voter,
                "term": m.term,
                "last_log_index": m.last_log_index,
                "applied_index": m.applied_index,
                "lag": (m.role != "unreachable").then(|| leader_log.saturating_sub(m.applied_index)),
                "state_hash": m.state_hash,
            })
        })
        .collect();
    body["offers"] = json!(soft.offers);
    body["offers_listed"] = json!(offers_total);
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}

/// Agents, frameworks and a page of tasks, as the view lists them.
fn records_json(app: &ClusterState, q: &ViewQuery, soft: &Soft) -> serde_json::Value {
    let mut total = Resources::new();
    for a in app.agents.values().filter(|a| a.state == AgentState::Active) {
        total = total.checked_add(&a.resources).unwrap_or(total);
    }
    let agents: Vec<serde_json::Value> = app
        .agents
        .values()
        .take(crate::service::http::MAX_STATE_RECORDS)
        .map(|a| {
            let mut agent = crate::service::http::agent_json(a);
            agent["attached"] = json!(soft.attached.contains(&a.id));
            agent
        })
        .collect();
    // Task counts by framework and state, and the tasks the filter lets through.
    let mut counts: BTreeMap<&str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut matching = Vec::new();
    let wanted = q.state.as_deref().filter(|s| !s.is_empty());
    let of = q.framework_id.as_deref().filter(|s| !s.is_empty());
    for ((framework_id, _), t) in app.tasks.iter() {
        let state = t.state();
        *counts
            .entry(framework_id.as_str())
            .or_default()
            .entry(state.as_str_name())
            .or_default() += 1;
        let state_ok = match wanted {
            None => true,
            Some("active") => !t.is_terminal(),
            Some("terminal") => t.is_terminal(),
            Some(s) => s == state.as_str_name(),
        };
        if state_ok && of.is_none_or(|f| f == framework_id) {
            matching.push(t);
        }
    }
    let tasks_matching = matching.len();
    // Newest first: the last status update's time.
    matching.sort_by_key(|t| std::cmp::Reverse(t.status.timestamp_ms.max(t.launched_at_ms)));
    let hostnames: HashMap<&str, &str> = app
        .agents
        .values()
        .map(|a| (a.id.as_str(), a.hostname.as_str()))
        .collect();
    let tasks: Vec<serde_json::Value> = matching
        .into_iter()
        .take(MAX_VIEW_TASKS)
        .map(|t| {
            json!({
                "framework_id": t.framework_id,
                "task_id": t.task_id,
                "name": t.name,
                "agent_id": t.agent_id,
                "hostname": hostnames.get(t.agent_id.as_str()).copied().unwrap_or(""),
                "state": t.state().as_str_name(),
                "message": t.status.message,
                "exit_code": t.status.exit_code,
                "updated_ms": t.status.timestamp_ms.max(t.launched_at_ms),
                "resources": resources_json(&t.resources),
            })
        })
        .collect();
    let frameworks: Vec<serde_json::Value> = app
        .frameworks
        .values()
        .take(crate::service::http::MAX_STATE_RECORDS)
        .map(|f| {
            let weight = app.weights.get(&f.role).map_or(1.0, |m| *m as f64 / 1000.0);
            let used = app.framework_used.get(&f.id).cloned().unwrap_or_default();
            let offered = soft.offered_to.get(&f.id).cloned().unwrap_or_default();
            let allocation = used.checked_add(&offered).unwrap_or_else(|_| used.clone());
            let state = match f.state {
                crate::state::FrameworkState::TornDown => v1::FrameworkState::FrameworkTornDown,
                _ if soft.subscribed.contains(&f.id) => v1::FrameworkState::FrameworkConnected,
                _ => v1::FrameworkState::FrameworkDisconnected,
            };
            json!({
                "framework_id": f.id,
                "name": f.name,
                "role": f.role,
                "user": f.user,
                "state": state.as_str_name(),
                "weight": weight,
                "used": resources_json(&used),
                "offered": resources_json(&offered),
                "dominant_share": used.dominant_share(&total),
                "weighted_share": crate::allocator::weighted_share(&allocation, &total, weight),
                "tasks": counts.get(f.id.as_str()).cloned().unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "resources_total": resources_json(&total),
        "agents_total": app.agents.len(),
        "agents": agents,
        "frameworks_total": app.frameworks.len(),
        "frameworks": frameworks,
        "tasks_total": app.tasks.len(),
        "tasks_matching": tasks_matching,
        "tasks": tasks,
    })
}

async fn events(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if shared.leading().is_err() {
        return to_leader(&shared, &headers, "/ui/api/events").await;
    }
    crate::service::http::events(State(shared)).await
}

/// The query of `/ui/api/output`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct OutputQuery {
    framework_id: String,
    task_id: String,
    /// `stdout` (the default) or `stderr`.
    file: Option<String>,
    /// First byte to read (default: the last [`MAX_OUTPUT_BYTES`]).
    offset: Option<u64>,
}

/// A task's output, read from its agent: `text/plain`, with the offset after the last byte
/// in `x-corral-next-offset`.
async fn output(
    State(shared): State<Shared>,
    q: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let bad = |why: String| (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return bad(format!("{e} (framework_id and task_id are required)")),
    };
    if let Err(e) = crate::validate::id("framework_id", &q.framework_id) {
        return bad(e);
    }
    if let Err(e) = crate::validate::id("task_id", &q.task_id) {
        return bad(e);
    }
    let file = match q.file.as_deref() {
        None | Some("stdout") => "stdout",
        Some("stderr") => "stderr",
        Some(other) => {
            return bad(format!(
                "file: {} is neither stdout nor stderr",
                corral_proto::quote(other)
            ))
        }
    };
    let (agent, sandbox) = {
        let state = shared.state.read();
        let Some(task) = state.app.tasks.get(&(q.framework_id.clone(), q.task_id.clone())) else {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "task {}/{} is not known (or no longer retained)\n",
                    q.framework_id, q.task_id
                ),
            )
                .into_response();
        };
        // A task its framework's executor runs writes to the executor's sandbox.
        let executor = task.task_info().and_then(|i| i.executor).map(|e| e.executor_id);
        let sandbox = corral_proto::sandbox_dir(&q.framework_id, &q.task_id, executor.as_deref().unwrap_or(""));
        match state.app.agents.get(&task.agent_id) {
            Some(a) => (corral_proto::http::reachable(&a.address, &a.hostname), sandbox),
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    format!("task {}'s agent {} is no longer known\n", q.task_id, task.agent_id),
                )
                    .into_response()
            }
        }
    };
    let path = format!("{sandbox}/{file}");
    let path = corral_proto::http::query_value(&path);
    // Where to start: from `offset`, or the last MAX_OUTPUT_BYTES (the file's size first).
    let start = match q.offset {
        Some(offset) => offset,
        None => match read(&agent, &format!("/files/read?path={path}&offset=-1")).await {
            Ok(v) => v["offset"].as_u64().unwrap_or(0).saturating_sub(MAX_OUTPUT_BYTES),
            Err(response) => return response,
        },
    };
    let target = format!("/files/read?path={path}&offset={start}&length={MAX_OUTPUT_BYTES}");
    match read(&agent, &target).await {
        Ok(v) => {
            let data = v["data"].as_str().unwrap_or_default().to_string();
            let next = v["next_offset"].as_u64().unwrap_or(start + data.len() as u64);
            (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                    (header::CACHE_CONTROL, "no-cache".to_string()),
                    (
                        header::HeaderName::from_static("x-corral-next-offset"),
                        next.to_string(),
                    ),
                ],
                data,
            )
                .into_response()
        }
        Err(response) => response,
    }
}

/// One `/files/read` of an agent, as JSON, or the answer that says why not.
async fn read(agent: &str, target: &str) -> Result<serde_json::Value, Response> {
    let (code, body) = corral_proto::http::get(agent, corral_proto::tls::Role::Agent, target, RELAY_TIMEOUT)
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("the task's agent did not answer: {e}\n"),
            )
                .into_response()
        })?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| {
        (
            StatusCode::BAD_GATEWAY,
            format!("the task's agent answered {code}, not a file read\n"),
        )
            .into_response()
    })?;
    if code != 200 {
        let why = v["error"].as_str().unwrap_or("no reason given");
        let status = if code == 404 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_GATEWAY
        };
        return Err((status, format!("the task's agent: {why}\n")).into_response());
    }
    Ok(v)
}

//! The Mesos v1 Operator HTTP API (`POST /api/v1`, also at `/api/v1/operator`, where
//! pymesos's operator driver sends it) and Mesos' `GET /master/state` (`/state.json`,
//! `/master/state.json`), for the tools and dashboards written against Mesos.
//!
//! Served calls: GET_HEALTH, GET_VERSION (this master's own), GET_STATE, GET_AGENTS,
//! GET_FRAMEWORKS, GET_EXECUTORS, GET_TASKS, GET_ROLES, GET_WEIGHTS, UPDATE_WEIGHTS and
//! TEARDOWN; any other Mesos call is answered 501 naming it. Like the scheduler API, a
//! follower relays each call to the leader, whose view (who is connected, what is offered)
//! is the cluster's. Reads need the operator's read permission, UPDATE_WEIGHTS write, and
//! TEARDOWN the `teardown` permission for that framework, as their `corral.v1.Operator`
//! calls do. Lists are bounded: at most [`MAX_STATE_RECORDS`] agents, frameworks, executors
//! and tasks of each kind (`corral tasks` pages through any number).

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_proto::convert::resources_to_wire;
use corral_proto::mesos::convert::{self as mc, MESOS_VERSION};
use corral_proto::mesos::media::Media;
use corral_proto::mesos::v1 as m;
use corral_proto::mesos::v1::master as mm;
use corral_proto::resources::Resources;
use corral_proto::v1;
use corral_proto::v1::operator_server::Operator as _;
use prost::Message as _;
use serde_json::json;
use tonic::Request;

use crate::acl::{OperatorAccess, Principal};
use crate::leader::Leader;
use crate::node::Shared;
use crate::service::http::{resources_json, MAX_STATE_RECORDS};
use crate::service::mesos::{lead_or_relay, receive, refuse, refuse_status, Call, Received};
use crate::service::operator::OperatorService;
use crate::state::{AgentRecord, AgentState, FrameworkRecord, FrameworkState, TaskRecord};

/// The operator API's path.
pub const PATH: &str = "/api/v1";
/// Where pymesos's operator driver sends the same calls.
pub const PYMESOS_PATH: &str = "/api/v1/operator";

const CALL: &str = "mesos.v1.master.Call";
const RESPONSE: &str = "mesos.v1.master.Response";

pub(crate) fn router(shared: Shared) -> Router {
    let state = Router::new()
        .route("/master/state", get(master_state))
        .route("/master/state.json", get(master_state))
        .route("/state.json", get(master_state))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::service::http::require_read,
        ));
    Router::new()
        .route(PATH, post(api_v1))
        .route(PYMESOS_PATH, post(api_operator))
        .merge(state)
        .with_state(shared)
}

async fn api_v1(State(shared): State<Shared>, request: axum::extract::Request) -> Response {
    api(shared, request, PATH).await
}

async fn api_operator(State(shared): State<Shared>, request: axum::extract::Request) -> Response {
    api(shared, request, PYMESOS_PATH).await
}

async fn api(shared: Shared, request: axum::extract::Request, path: &'static str) -> Response {
    use mm::call::Type as T;
    let Received {
        headers,
        body,
        media,
        call,
        principal,
    } = match receive::<mm::Call>(&shared, request, CALL).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let answer = match Media::answer(accept, media) {
        Ok(m) => m,
        Err(why) => return refuse(StatusCode::NOT_ACCEPTABLE, why),
    };
    let kind = call
        .r#type
        .and_then(|t| T::try_from(t).ok())
        .filter(|t| *t != T::Unknown);
    let Some(kind) = kind else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "type: missing or not a known call type (GET_HEALTH, GET_VERSION, GET_STATE, GET_AGENTS, GET_FRAMEWORKS, GET_EXECUTORS, GET_TASKS, GET_ROLES, GET_WEIGHTS, UPDATE_WEIGHTS, TEARDOWN, ...)",
        );
    };
    // This master's own health and version: no leader needed.
    match kind {
        T::GetHealth => {
            let response = mm::Response {
                r#type: Some(mm::response::Type::GetHealth as i32),
                get_health: Some(mm::response::GetHealth {
                    healthy: shared.cannot_vote().is_none(),
                }),
                ..Default::default()
            };
            return respond(answer, &response);
        }
        T::GetVersion => {
            let response = mm::Response {
                r#type: Some(mm::response::Type::GetVersion as i32),
                get_version: Some(mm::response::GetVersion {
                    version_info: version_info(),
                }),
                ..Default::default()
            };
            return respond(answer, &response);
        }
        _ => {}
    }
    let to = Call {
        principal: &principal,
        headers: &headers,
        body: &body,
        path,
    };
    lead_or_relay(&shared, to, |leader| {
        serve(&shared, leader, &principal, answer, call, kind)
    })
    .await
}

/// Corral's build as Mesos' VersionInfo: the Mesos version whose APIs it serves, Corral's own
/// in `git_tag`.
fn version_info() -> m::VersionInfo {
    m::VersionInfo {
        version: MESOS_VERSION.to_string(),
        build_user: Some("corral".into()),
        git_tag: Some(format!("corral-{}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    }
}

/// The answer in `media`: 200 with the response.
fn respond(media: Media, response: &mm::Response) -> Response {
    let body = match media {
        Media::Protobuf => response.encode_to_vec(),
        Media::Json => match corral_proto::mesos::json::encode(RESPONSE, response) {
            Ok(b) => b,
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, media.name())],
        Bytes::from(body),
    )
        .into_response()
}

async fn serve(
    shared: &Shared,
    leader: Leader,
    principal: &Principal,
    answer: Media,
    call: mm::Call,
    kind: mm::call::Type,
) -> Response {
    use mm::call::Type as T;
    use mm::response::Type as R;
    let reads = [
        T::GetState,
        T::GetAgents,
        T::GetFrameworks,
        T::GetExecutors,
        T::GetTasks,
        T::GetRoles,
        T::GetWeights,
    ];
    if reads.contains(&kind) {
        if let Err(s) = principal.operator(OperatorAccess::Read) {
            return refuse_status(&s);
        }
        let Some(view) = View::gather(shared, &leader).await else {
            return refuse_status(&shared.not_leading());
        };
        let mut response = mm::Response::default();
        let t = match kind {
            T::GetState => {
                response.get_state = Some(mm::response::GetState {
                    get_tasks: Some(view.tasks()),
                    get_executors: Some(view.executors()),
                    get_frameworks: Some(view.frameworks()),
                    get_agents: Some(view.agents()),
                });
                R::GetState
            }
            T::GetAgents => {
                response.get_agents = Some(view.agents());
                R::GetAgents
            }
            T::GetFrameworks => {
                response.get_frameworks = Some(view.frameworks());
                R::GetFrameworks
            }
            T::GetExecutors => {
                response.get_executors = Some(view.executors());
                R::GetExecutors
            }
            T::GetTasks => {
                response.get_tasks = Some(view.tasks());
                R::GetTasks
            }
            T::GetRoles => {
                response.get_roles = Some(view.roles());
                R::GetRoles
            }
            _ => {
                response.get_weights = Some(mm::response::GetWeights {
                    weight_infos: view.weight_infos(),
                });
                R::GetWeights
            }
        };
        response.r#type = Some(t as i32);
        return respond(answer, &response);
    }
    let svc = OperatorService::new(shared.clone());
    let done = match kind {
        T::UpdateWeights => {
            let Some(u) = call.update_weights else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "update_weights: missing for an UPDATE_WEIGHTS call",
                );
            };
            let weights = u
                .weight_infos
                .into_iter()
                .map(|w| v1::WeightInfo {
                    role: w.role.unwrap_or_default(),
                    weight: w.weight,
                })
                .collect();
            svc.set_weights(as_caller(principal, v1::SetWeightsRequest { weights }))
                .await
                .map(drop)
        }
        T::Teardown => {
            let Some(t) = call.teardown else {
                return refuse(StatusCode::BAD_REQUEST, "teardown: missing for a TEARDOWN call");
            };
            let request = v1::TeardownFrameworkRequest {
                framework_id: t.framework_id.value,
            };
            svc.teardown_framework(as_caller(principal, request)).await.map(drop)
        }
        other => {
            return refuse(
                StatusCode::NOT_IMPLEMENTED,
                format!("type: {} is not served by Corral", other.as_str_name()),
            )
        }
    };
    match done {
        Ok(()) => StatusCode::OK.into_response(),
        Err(s) => refuse_status(&s),
    }
}

/// A `corral.v1.Operator` request made on behalf of `principal`.
fn as_caller<T>(principal: &Principal, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(principal.clone());
    request
}

/// What the leader knows: its applied state (bounded lists) and the soft state only it has.
struct View {
    agents: Vec<AgentRecord>,
    /// Agent id → its place in `agents`.
    agent_at: HashMap<String, usize>,
    frameworks: Vec<FrameworkRecord>,
    framework_used: HashMap<String, Resources>,
    /// Framework id → its user (a task runs as its framework's user).
    users: HashMap<String, String>,
    tasks: Vec<TaskRecord>,
    weights: BTreeMap<String, u64>,
    /// Agent → resources outstanding in offers.
    offered: HashMap<String, Resources>,
    /// Framework → resources outstanding in offers.
    offered_to: HashMap<String, Resources>,
    /// Framework → its outstanding offers (id, agent, resources).
    offers: HashMap<String, Vec<(String, String, Resources)>>,
    subscribed: HashSet<String>,
    suppressed: HashSet<String>,
    leader: (u64, String),
}

impl View {
    async fn gather(shared: &Shared, leader: &Leader) -> Option<View> {
        let soft = leader
            .ask(|_, soft| {
                let mut offers: HashMap<String, Vec<(String, String, Resources)>> = HashMap::new();
                for (id, o) in soft.offers.iter() {
                    let list = offers.entry(o.framework_id.clone()).or_default();
                    if list.len() < MAX_STATE_RECORDS {
                        list.push((id.clone(), o.agent_id.clone(), o.resources.clone()));
                    }
                }
                (
                    soft.offered.clone(),
                    soft.offered_to.clone(),
                    offers,
                    soft.frameworks.keys().cloned().collect::<HashSet<_>>(),
                    soft.suppressed.clone(),
                )
            })
            .await
            .ok()?;
        let state = shared.state.read();
        let app = &state.app;
        Some(View {
            agents: app.agents.values().take(MAX_STATE_RECORDS).cloned().collect(),
            agent_at: app
                .agents
                .keys()
                .take(MAX_STATE_RECORDS)
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect(),
            frameworks: app.frameworks.values().take(MAX_STATE_RECORDS).cloned().collect(),
            framework_used: app.framework_used.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            users: app
                .frameworks
                .values()
                .map(|f| (f.id.clone(), f.user.clone()))
                .collect(),
            tasks: bounded_tasks(app.tasks.values()),
            weights: app.weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            offered: soft.0,
            offered_to: soft.1,
            offers: soft.2,
            subscribed: soft.3,
            suppressed: soft.4,
            leader: (shared.config.id, shared.config.advertise.clone()),
        })
    }

    fn agent_info(a: &AgentRecord) -> m::AgentInfo {
        let port = a.address.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        m::AgentInfo {
            hostname: a.hostname.clone(),
            resources: mc::resources_to_mesos(&resources_to_wire(&a.resources)),
            attributes: mc::attributes_to_mesos(&attributes(a)),
            id: Some(m::AgentId { value: a.id.clone() }),
            port,
        }
    }

    fn agents(&self) -> mm::response::GetAgents {
        let agents = self
            .agents
            .iter()
            .filter(|a| a.state != AgentState::Gone)
            .map(|a| mm::response::get_agents::Agent {
                agent_info: Self::agent_info(a),
                active: a.state == AgentState::Active,
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: Some(format!("slave(1)@{}", a.address)),
                registered_time: Some(time_ms(a.registered_at_ms)),
                total_resources: mesos_resources(&a.resources),
                allocated_resources: mesos_resources(&a.used),
                offered_resources: mesos_resources(&self.offered.get(&a.id).cloned().unwrap_or_default()),
                deactivated: Some(a.state == AgentState::Draining),
            })
            .collect();
        mm::response::GetAgents {
            agents,
            recovered_agents: Vec::new(),
        }
    }

    fn framework(&self, f: &FrameworkRecord) -> mm::response::get_frameworks::Framework {
        let connected = self.subscribed.contains(&f.id);
        let offers = self
            .offers
            .get(&f.id)
            .map(|list| {
                list.iter()
                    .map(|(id, agent_id, resources)| {
                        let agent = self.agent_at.get(agent_id).map(|i| &self.agents[*i]);
                        m::Offer {
                            id: m::OfferId { value: id.clone() },
                            framework_id: m::FrameworkId { value: f.id.clone() },
                            agent_id: m::AgentId {
                                value: agent_id.clone(),
                            },
                            hostname: agent.map(|a| a.hostname.clone()).unwrap_or_default(),
                            resources: mesos_resources(resources),
                            executor_ids: Vec::new(),
                            attributes: agent
                                .map(|a| mc::attributes_to_mesos(&attributes(a)))
                                .unwrap_or_default(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        mm::response::get_frameworks::Framework {
            framework_info: mc::framework_to_mesos(&f.wire_info()),
            active: connected && !self.suppressed.contains(&f.id),
            connected,
            registered_time: Some(time_ms(f.registered_at_ms)),
            unregistered_time: f.disconnected_at_ms.map(time_ms),
            offers,
            allocated_resources: mesos_resources(&self.framework_used.get(&f.id).cloned().unwrap_or_default()),
            offered_resources: mesos_resources(&self.offered_to.get(&f.id).cloned().unwrap_or_default()),
            recovered: false,
        }
    }

    fn frameworks(&self) -> mm::response::GetFrameworks {
        let (done, live): (Vec<&FrameworkRecord>, Vec<&FrameworkRecord>) = self
            .frameworks
            .iter()
            .partition(|f| f.state == FrameworkState::TornDown);
        mm::response::GetFrameworks {
            frameworks: live.into_iter().map(|f| self.framework(f)).collect(),
            completed_frameworks: done.into_iter().map(|f| self.framework(f)).collect(),
        }
    }

    fn executors(&self) -> mm::response::GetExecutors {
        let executors = self
            .agents
            .iter()
            .flat_map(|a| a.executors.values().map(move |e| (a, e)))
            .take(MAX_STATE_RECORDS)
            .filter_map(|(a, e)| {
                let info = v1::ExecutorInfo::decode(e.info.as_slice()).ok()?;
                Some(mm::response::get_executors::Executor {
                    executor_info: mc::executor_to_mesos(&e.framework_id, &info),
                    agent_id: m::AgentId { value: a.id.clone() },
                })
            })
            .collect();
        mm::response::GetExecutors { executors }
    }

    fn task(&self, t: &TaskRecord) -> m::Task {
        let info = t.task_info();
        let status = mc::status_to_mesos(
            &t.wire_status(&t.status),
            info.as_ref()
                .and_then(|i| i.executor.as_ref())
                .map(|e| e.executor_id.as_str()),
        );
        m::Task {
            name: if t.name.is_empty() {
                t.task_id.clone()
            } else {
                t.name.clone()
            },
            task_id: m::TaskId {
                value: t.task_id.clone(),
            },
            framework_id: m::FrameworkId {
                value: t.framework_id.clone(),
            },
            executor_id: status.executor_id.clone(),
            agent_id: m::AgentId {
                value: t.agent_id.clone(),
            },
            state: mc::task_state_to_mesos(t.status.state) as i32,
            resources: mesos_resources(&t.resources),
            statuses: vec![m::TaskStatus { uuid: None, ..status }],
            labels: info.as_ref().and_then(|i| mc::labels_to_mesos(&i.labels)),
            user: self.users.get(&t.framework_id).cloned(),
        }
    }

    fn tasks(&self) -> mm::response::GetTasks {
        let mut out = mm::response::GetTasks::default();
        for t in &self.tasks {
            let list = if t.state() == v1::TaskState::TaskUnreachable {
                &mut out.unreachable_tasks
            } else if t.is_terminal() {
                &mut out.completed_tasks
            } else {
                &mut out.tasks
            };
            list.push(self.task(t));
        }
        out
    }

    fn weight_infos(&self) -> Vec<m::WeightInfo> {
        self.weights
            .iter()
            .map(|(role, milli)| m::WeightInfo {
                weight: *milli as f64 / 1000.0,
                role: Some(role.clone()),
            })
            .collect()
    }

    /// Every role with a weight or a framework: its weight (1 unless set), its frameworks
    /// and what they hold.
    fn roles(&self) -> mm::response::GetRoles {
        let mut roles: BTreeMap<String, (Vec<String>, Resources)> = BTreeMap::new();
        for role in self.weights.keys() {
            roles.entry(role.clone()).or_default();
        }
        for f in self.frameworks.iter().filter(|f| f.state != FrameworkState::TornDown) {
            let role = if f.role.is_empty() {
                crate::state::DEFAULT_ROLE
            } else {
                f.role.as_str()
            };
            let entry = roles.entry(role.to_string()).or_default();
            entry.0.push(f.id.clone());
            if let Some(used) = self.framework_used.get(&f.id) {
                entry.1 = entry.1.checked_add(used).unwrap_or_else(|_| entry.1.clone());
            }
        }
        mm::response::GetRoles {
            roles: roles
                .into_iter()
                .map(|(name, (frameworks, held))| m::Role {
                    weight: self.weights.get(&name).map_or(1.0, |w| *w as f64 / 1000.0),
                    name,
                    frameworks: frameworks.into_iter().map(|value| m::FrameworkId { value }).collect(),
                    resources: mesos_resources(&held),
                })
                .collect(),
        }
    }
}

/// At most [`MAX_STATE_RECORDS`] tasks of each kind (running, finished, unreachable), in
/// (framework, task) order.
fn bounded_tasks<'a>(all: impl Iterator<Item = &'a TaskRecord>) -> Vec<TaskRecord> {
    let (mut live, mut done, mut gone) = (0, 0, 0);
    all.filter(|t| {
        let n = if t.state() == v1::TaskState::TaskUnreachable {
            &mut gone
        } else if t.is_terminal() {
            &mut done
        } else {
            &mut live
        };
        *n += 1;
        *n <= MAX_STATE_RECORDS
    })
    .cloned()
    .collect()
}

fn attributes(a: &AgentRecord) -> Vec<v1::Attribute> {
    a.attributes
        .iter()
        .map(|(name, value)| v1::Attribute {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn mesos_resources(r: &Resources) -> Vec<m::Resource> {
    mc::resources_to_mesos(&resources_to_wire(r))
}

fn time_ms(ms: i64) -> m::TimeInfo {
    m::TimeInfo {
        nanoseconds: ms.saturating_mul(1_000_000),
    }
}

/// Resources in Mesos' v0 JSON (`/master/state`): cpus, mem, disk and gpus always, ports as
/// `[b-e,...]`.
fn v0_resources(r: &Resources) -> serde_json::Value {
    let mut v = resources_json(r);
    if let Some(map) = v.as_object_mut() {
        for name in ["cpus", "mem", "disk", "gpus"] {
            map.entry(name).or_insert(json!(0.0));
        }
    }
    v
}

/// `GET /master/state` (also `/state.json`, `/master/state.json`): the leader's view in the
/// shape of Mesos' `/master/state`, the JSON older tools and dashboards read. A follower
/// relays it to the leader.
async fn master_state(State(shared): State<Shared>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let Ok(leader) = shared.leading() else {
        return crate::service::ui::to_leader(&shared, &headers, uri.path()).await;
    };
    let Some(view) = View::gather(&shared, &leader).await else {
        return refuse_status(&shared.not_leading());
    };
    Json(view.v0()).into_response()
}

impl View {
    fn v0_task(&self, t: &TaskRecord) -> serde_json::Value {
        let executor = t
            .task_info()
            .and_then(|i| i.executor)
            .map(|e| e.executor_id)
            .unwrap_or_default();
        json!({
            "id": t.task_id,
            "name": if t.name.is_empty() { &t.task_id } else { &t.name },
            "framework_id": t.framework_id,
            "executor_id": executor,
            "slave_id": t.agent_id,
            "state": mc::task_state_to_mesos(t.status.state).as_str_name(),
            "resources": v0_resources(&t.resources),
            "statuses": [{
                "state": mc::task_state_to_mesos(t.status.state).as_str_name(),
                "timestamp": t.status.timestamp_ms as f64 / 1000.0,
            }],
            "user": self.users.get(&t.framework_id),
        })
    }

    /// One framework of `/master/state`, with its tasks and executors (grouped once by
    /// [`View::v0`], so that the page costs one walk of each list, not one per framework).
    fn v0_framework(
        &self,
        f: &FrameworkRecord,
        mine: &[&TaskRecord],
        executors: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        let connected = self.subscribed.contains(&f.id);
        let used = self.framework_used.get(&f.id).cloned().unwrap_or_default();
        let tasks = |pick: &dyn Fn(&TaskRecord) -> bool| -> Vec<serde_json::Value> {
            mine.iter().filter(|t| pick(t)).map(|t| self.v0_task(t)).collect()
        };
        let offers: Vec<serde_json::Value> = self
            .offers
            .get(&f.id)
            .map(|list| {
                list.iter()
                    .map(|(id, agent, r)| json!({"id": id, "framework_id": f.id, "slave_id": agent, "resources": v0_resources(r)}))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "id": f.id,
            "name": f.name,
            "pid": "",
            "hostname": f.hostname,
            "user": f.user,
            "role": if f.role.is_empty() { crate::state::DEFAULT_ROLE } else { f.role.as_str() },
            "principal": f.principal,
            "active": connected && !self.suppressed.contains(&f.id),
            "connected": connected,
            "recovered": false,
            "checkpoint": true,
            "failover_timeout": f.failover_timeout_ms as f64 / 1000.0,
            "registered_time": f.registered_at_ms as f64 / 1000.0,
            "unregistered_time": f.disconnected_at_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
            "webui_url": "",
            "capabilities": [],
            "resources": v0_resources(&used),
            "used_resources": v0_resources(&used),
            "offered_resources": v0_resources(&self.offered_to.get(&f.id).cloned().unwrap_or_default()),
            "tasks": tasks(&|t| !t.is_terminal() && t.state() != v1::TaskState::TaskUnreachable),
            "unreachable_tasks": tasks(&|t| t.state() == v1::TaskState::TaskUnreachable),
            "completed_tasks": tasks(&|t| t.is_terminal()),
            "offers": offers,
            "executors": executors,
        })
    }

    /// Mesos' `/master/state`.
    fn v0(&self) -> serde_json::Value {
        let (id, address) = &self.leader;
        let pid = format!("master@{address}");
        let slaves: Vec<serde_json::Value> = self
            .agents
            .iter()
            .filter(|a| a.state != AgentState::Gone)
            .map(|a| {
                json!({
                    "id": a.id,
                    "pid": format!("slave(1)@{}", a.address),
                    "hostname": a.hostname,
                    "port": a.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()),
                    "registered_time": a.registered_at_ms as f64 / 1000.0,
                    "resources": v0_resources(&a.resources),
                    "used_resources": v0_resources(&a.used),
                    "offered_resources": v0_resources(&self.offered.get(&a.id).cloned().unwrap_or_default()),
                    "reserved_resources": {},
                    "unreserved_resources": v0_resources(&a.resources),
                    "attributes": a.attributes.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "active": a.state == AgentState::Active,
                    "deactivated": a.state == AgentState::Draining,
                    "version": env!("CARGO_PKG_VERSION"),
                    "capabilities": a.capabilities,
                })
            })
            .collect();
        let count = |s: AgentState| self.agents.iter().filter(|a| a.state == s).count();
        let (done, live): (Vec<&FrameworkRecord>, Vec<&FrameworkRecord>) = self
            .frameworks
            .iter()
            .partition(|f| f.state == FrameworkState::TornDown);
        let mut tasks: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
        for t in &self.tasks {
            tasks.entry(t.framework_id.as_str()).or_default().push(t);
        }
        let mut executors: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
        for a in &self.agents {
            for e in a.executors.values() {
                executors.entry(e.framework_id.as_str()).or_default().push(
                    json!({"executor_id": e.executor_id, "slave_id": a.id, "resources": v0_resources(&e.resources)}),
                );
            }
        }
        let mut framework = |f: &FrameworkRecord| {
            let mine = tasks.get(f.id.as_str()).map(Vec::as_slice).unwrap_or_default();
            self.v0_framework(f, mine, executors.remove(f.id.as_str()).unwrap_or_default())
        };
        let live: Vec<serde_json::Value> = live.into_iter().map(&mut framework).collect();
        let done: Vec<serde_json::Value> = done.into_iter().map(&mut framework).collect();
        let info = mc::master_info_to_mesos(*id, address);
        json!({
            "version": MESOS_VERSION,
            "corral_version": env!("CARGO_PKG_VERSION"),
            "build_user": "corral",
            "git_sha": "",
            "git_tag": "",
            "id": id.to_string(),
            "pid": pid,
            "hostname": info.hostname,
            "leader": pid,
            "leader_info": serde_json::from_slice::<serde_json::Value>(
                &corral_proto::mesos::json::encode("mesos.v1.MasterInfo", &info).unwrap_or_default()
            ).unwrap_or_default(),
            "activated_slaves": count(AgentState::Active),
            "deactivated_slaves": count(AgentState::Draining),
            "unreachable_slaves": count(AgentState::Unreachable),
            "slaves": slaves,
            "frameworks": live,
            "completed_frameworks": done,
            "orphan_tasks": [],
            "unregistered_frameworks": [],
        })
    }
}

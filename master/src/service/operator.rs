//! The operator API (`corral.v1.Operator`), behind `corral status`, `corral members` and
//! `corral weights`.
//!
//! Every mutating call follows the same steps: redirect if not leader → validate → Raft
//! write → reply. Reads other than `Status` and `Member` are served by the leader at a
//! linearizable read point.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Duration;

use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use corral_proto::v1::operator_server::Operator;
use openraft::BasicNode;
use tonic::{Request, Response, Status};

use crate::acl::OperatorAccess;
use crate::node::{SelfView, Shared};
use crate::raft::types::{NodeId, Outcome};
use crate::raft::write::WriteError;
use crate::state::{validate_weight, AgentState, FrameworkState};
use corral_proto::convert::resources_to_wire;

/// How long `Status` waits for each other member's own view.
pub const MEMBER_QUERY_TIMEOUT: Duration = Duration::from_millis(800);
/// How long `AddMember` waits for the new master to catch up as a learner.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most weights set in one call.
pub const MAX_WEIGHTS_PER_CALL: usize = 1024;
/// Records in a page of a list call when the request names no limit.
pub const DEFAULT_PAGE_RECORDS: usize = 1000;
/// Most records in a page of a list call.
pub const MAX_PAGE_RECORDS: usize = 5000;
/// A page ends once its records reach this many encoded bytes, well within the gRPC
/// message limit whatever the records hold.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Most task states in one `ListTasks` filter.
pub const MAX_STATE_FILTERS: usize = 16;
/// Longest page token a client may send back (a task key: two ids and a separator).
const MAX_PAGE_TOKEN_LEN: usize = 2 * crate::validate::MAX_ID_LEN + 1;

/// One page of a list call: where it starts and how much it may hold.
struct Page {
    limit: usize,
    /// The key of the last record of the previous page.
    after: Option<String>,
}

impl Page {
    fn new(limit: u32, token: &str) -> Result<Page, Status> {
        if token.len() > MAX_PAGE_TOKEN_LEN || token.chars().any(char::is_control) {
            return Err(Status::invalid_argument("page_token: not a token this server issued"));
        }
        let limit = match limit as usize {
            0 => DEFAULT_PAGE_RECORDS,
            n => n.min(MAX_PAGE_RECORDS),
        };
        Ok(Page {
            limit,
            after: (!token.is_empty()).then(|| token.to_string()),
        })
    }

    /// The range of ids after the previous page's last one.
    fn after_key(&self) -> (Bound<String>, Bound<String>) {
        match &self.after {
            Some(key) => (Bound::Excluded(key.clone()), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        }
    }

    /// Take records (each with its key) up to the page's count and byte limits; returns them
    /// and the token of the next page (empty when nothing is left).
    fn fill<T: prost::Message>(&self, records: impl Iterator<Item = (String, T)>) -> (Vec<T>, String) {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut records = records.peekable();
        let mut last = String::new();
        for (key, record) in records.by_ref() {
            bytes += record.encoded_len();
            out.push(record);
            last = key;
            if out.len() >= self.limit || bytes >= MAX_PAGE_BYTES {
                break;
            }
        }
        let next = if records.peek().is_some() { last } else { String::new() };
        (out, next)
    }
}

/// The `corral.v1.Operator` service.
pub struct OperatorService {
    shared: Shared,
}

impl OperatorService {
    /// The service over `shared`.
    pub fn new(shared: Shared) -> Self {
        OperatorService { shared }
    }

    /// Every member's status (see [`members`]).
    async fn members(&self) -> Vec<v1::MemberStatus> {
        members(&self.shared).await
    }
}

/// Every member's status: this master's own view, and each other member's answer to
/// `Member`, or "unreachable".
pub(crate) async fn members(shared: &Shared) -> Vec<v1::MemberStatus> {
    let metrics = shared.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let nodes: Vec<(NodeId, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (id, addr) in nodes.clone() {
        if id == shared.config.id {
            continue;
        }
        tasks.spawn(async move {
            let answer = async {
                let channel = corral_proto::client::channel(&addr, MEMBER_QUERY_TIMEOUT)?;
                let mut client = OperatorClient::new(channel);
                client.member(v1::MemberRequest {}).await.map(Response::into_inner)
            };
            let answer = tokio::time::timeout(MEMBER_QUERY_TIMEOUT, answer).await;
            (id, addr, answer)
        });
    }
    let mut out: BTreeMap<NodeId, v1::MemberStatus> = BTreeMap::new();
    if nodes.iter().any(|(id, _)| *id == shared.config.id) {
        out.insert(shared.config.id, member_status(&shared.self_view()));
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((id, addr, answer)) = joined else { continue };
        let status = match answer {
            Ok(Ok(mut s)) if s.id == id => {
                s.voter = voters.contains(&id);
                s
            }
            _ => v1::MemberStatus {
                id,
                address: addr,
                role: "unreachable".into(),
                voter: voters.contains(&id),
                ..Default::default()
            },
        };
        out.insert(id, status);
    }
    out.into_values().collect()
}

fn member_status(v: &SelfView) -> v1::MemberStatus {
    v1::MemberStatus {
        id: v.id,
        address: v.address.clone(),
        role: v.role.into(),
        voter: v.voter,
        last_log_index: v.last_log_index,
        applied_index: v.applied_index,
        state_hash: v.state_hash.clone(),
        term: v.term,
    }
}

/// Longest member address accepted.
pub const MAX_ADDRESS_LEN: usize = 256;

fn valid_member_address(addr: &str) -> bool {
    addr.len() <= MAX_ADDRESS_LEN
        && !addr.chars().any(|c| c.is_control() || c.is_whitespace())
        && matches!(addr.rsplit_once(':'), Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn teardown_framework(
        &self,
        req: Request<v1::TeardownFrameworkRequest>,
    ) -> Result<Response<v1::TeardownFrameworkResponse>, Status> {
        let principal = self.shared.access.caller(&req)?;
        self.shared.leader_or_hold().await?;
        let framework_id = req.into_inner().framework_id;
        crate::validate::id("framework_id", &framework_id).map_err(Status::invalid_argument)?;
        let owner = {
            let state = self.shared.state.read();
            match state.app.frameworks.get(&framework_id) {
                None => {
                    return Err(Status::not_found(format!(
                        "framework_id: {framework_id} is not known to this cluster"
                    )))
                }
                Some(f) if f.state == FrameworkState::TornDown => {
                    return Ok(Response::new(v1::TeardownFrameworkResponse {}))
                }
                Some(f) => f.principal.clone(),
            }
        };
        principal.teardown(&framework_id, &owner)?;
        let leader = self.shared.leading()?;
        tracing::info!(%framework_id, principal = %principal.name, "framework torn down by the operator API");
        match crate::leader::teardown(&self.shared, &leader, &framework_id, "torn down by an operator").await? {
            Outcome::Applied => Ok(Response::new(v1::TeardownFrameworkResponse {})),
            Outcome::Rejected(why) => Err(Status::failed_precondition(why)),
        }
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        let view = self.shared.self_view();
        let members = self.members().await;
        let counts = {
            let s = self.shared.state.read();
            let agents = s.app.agents.values().filter(|a| a.state != AgentState::Gone).count() as u64;
            let frameworks = s
                .app
                .frameworks
                .values()
                .filter(|f| f.state != FrameworkState::TornDown)
                .count() as u64;
            (agents, frameworks, s.app.task_counts().into_iter().collect())
        };
        Ok(Response::new(v1::StatusResponse {
            leader: view.leader.as_ref().map(|(id, address)| v1::MasterInfo {
                id: *id,
                address: address.clone(),
            }),
            term: view.term,
            members,
            agents: counts.0,
            frameworks: counts.1,
            tasks: counts.2,
            answered_by: Some(v1::MasterInfo {
                id: view.id,
                address: view.address,
            }),
        }))
    }

    async fn member(&self, req: Request<v1::MemberRequest>) -> Result<Response<v1::MemberStatus>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        Ok(Response::new(member_status(&self.shared.self_view())))
    }

    type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        Ok(Response::new(Box::pin(
            crate::service::watch::stream(&self.shared).await?,
        )))
    }

    async fn list_members(
        &self,
        req: Request<v1::ListMembersRequest>,
    ) -> Result<Response<v1::ListMembersResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        self.shared.leader_or_hold().await?;
        Ok(Response::new(v1::ListMembersResponse {
            members: self.members().await,
        }))
    }

    async fn add_member(&self, req: Request<v1::AddMemberRequest>) -> Result<Response<v1::AddMemberResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Write)?;
        self.shared.leader_or_hold().await?;
        let req = req.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument("id: must be a positive integer"));
        }
        if !valid_member_address(&req.address) {
            return Err(Status::invalid_argument(format!(
                "address: {} is not host:port",
                corral_proto::quote(&req.address)
            )));
        }
        let membership = self.shared.membership();
        if let Some(node) = membership.get_node(&req.id) {
            if node.addr != req.address {
                return Err(Status::already_exists(format!(
                    "id: master {} is already a member at {}; remove it first to move it",
                    req.id, node.addr
                )));
            }
        }
        if membership.nodes().any(|(id, n)| *id != req.id && n.addr == req.address) {
            return Err(Status::already_exists(format!(
                "address: {} is already used by another member",
                req.address
            )));
        }
        let raft = &self.shared.raft;
        // Catch up as a learner first, so that the new master never counts towards a
        // quorum before it holds the log.
        tracing::info!(id = req.id, address = %req.address, "adding master as learner");
        match tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(req.id, BasicNode::new(&req.address), true)).await
        {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "master {} did not catch up within {CATCH_UP_TIMEOUT:?}; is it running at {}? It stays a learner until removed",
                    req.id, req.address
                )))
            }
            Ok(Err(e)) => return Err(WriteError::from_raft(e, || self.shared.leader().map(|l| l.1)).into()),
            Ok(Ok(_)) => {}
        }
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        voters.insert(req.id);
        tracing::info!(id = req.id, ?voters, "promoting master to voter");
        raft.change_membership(voters, false)
            .await
            .map_err(|e| Status::from(WriteError::from_raft(e, || self.shared.leader().map(|l| l.1))))?;
        Ok(Response::new(v1::AddMemberResponse {
            members: self.members().await,
        }))
    }

    async fn remove_member(
        &self,
        req: Request<v1::RemoveMemberRequest>,
    ) -> Result<Response<v1::RemoveMemberResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Write)?;
        self.shared.leader_or_hold().await?;
        let id = req.into_inner().id;
        let membership = self.shared.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("id: {id} is not a member")));
        }
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        voters.remove(&id);
        if voters.is_empty() {
            return Err(Status::failed_precondition("id: cannot remove the last voting master"));
        }
        tracing::info!(id, ?voters, "removing master");
        // retain = false: a removed voter does not stay on as a learner.
        self.shared
            .raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Status::from(WriteError::from_raft(e, || self.shared.leader().map(|l| l.1))))?;
        Ok(Response::new(v1::RemoveMemberResponse {
            members: self.members().await,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        let req = req.into_inner();
        let page = Page::new(req.limit, &req.page_token)?;
        self.shared.linearizable().await?;
        let connected: std::collections::HashSet<String> = self
            .shared
            .ask(|_, soft| soft.agents.keys().cloned().collect())
            .await
            // Leader, its term's loop not started yet: nobody is attached to it.
            .unwrap_or_default();
        let state = self.shared.state.read();
        let records = state.app.agents.range::<_, String>(page.after_key()).map(|(id, a)| {
            let summary = v1::AgentSummary {
                agent_id: a.id.clone(),
                hostname: a.hostname.clone(),
                address: a.address.clone(),
                state: match a.state {
                    AgentState::Active => v1::AgentState::AgentActive,
                    AgentState::Unreachable => v1::AgentState::AgentUnreachable,
                    AgentState::Draining => v1::AgentState::AgentDraining,
                    AgentState::Gone => v1::AgentState::AgentGone,
                } as i32,
                resources: resources_to_wire(&a.resources),
                used: resources_to_wire(&a.used),
                attributes: corral_proto::convert::attributes_to_wire(&a.attributes),
                connected: connected.contains(&a.id),
                isolation: a.isolation,
                registered_at_ms: a.registered_at_ms,
            };
            (id.clone(), summary)
        });
        let (agents, next_page_token) = page.fill(records);
        Ok(Response::new(v1::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn list_frameworks(
        &self,
        req: Request<v1::ListFrameworksRequest>,
    ) -> Result<Response<v1::ListFrameworksResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        let req = req.into_inner();
        let page = Page::new(req.limit, &req.page_token)?;
        self.shared.linearizable().await?;
        let subscribed: std::collections::HashSet<String> = self
            .shared
            .ask(|_, soft| soft.frameworks.keys().cloned().collect())
            .await
            // Leader, its term's loop not started yet: nobody is attached to it.
            .unwrap_or_default();
        let state = self.shared.state.read();
        let records = state
            .app
            .frameworks
            .range::<String, _>(page.after_key())
            .map(|(id, f)| {
                // The framework's tasks are contiguous in the task map (keyed by framework id).
                let active = state
                    .app
                    .tasks
                    .range((f.id.clone(), String::new())..)
                    .take_while(|((fw, _), _)| *fw == f.id)
                    .filter(|(_, t)| !t.is_terminal())
                    .count() as u64;
                let summary = v1::FrameworkSummary {
                    framework_id: f.id.clone(),
                    name: f.name.clone(),
                    role: f.role.clone(),
                    // Connected means subscribed to this leader now; the replicated state alone
                    // cannot tell (a framework of a dead leader is "connected" there until it
                    // re-subscribes or its failover timeout ends).
                    state: match f.state {
                        FrameworkState::TornDown => v1::FrameworkState::FrameworkTornDown,
                        _ if subscribed.contains(&f.id) => v1::FrameworkState::FrameworkConnected,
                        _ => v1::FrameworkState::FrameworkDisconnected,
                    } as i32,
                    used: resources_to_wire(&state.app.framework_used.get(&f.id).cloned().unwrap_or_default()),
                    active_tasks: active,
                    failover_timeout_seconds: f.failover_timeout_ms as f64 / 1000.0,
                    registered_at_ms: f.registered_at_ms,
                };
                (id.clone(), summary)
            });
        let (frameworks, next_page_token) = page.fill(records);
        Ok(Response::new(v1::ListFrameworksResponse {
            frameworks,
            next_page_token,
        }))
    }

    async fn list_tasks(&self, req: Request<v1::ListTasksRequest>) -> Result<Response<v1::ListTasksResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        let req = req.into_inner();
        let page = Page::new(req.limit, &req.page_token)?;
        let only = req.framework_id;
        if !only.is_empty() {
            crate::validate::id("framework_id", &only).map_err(Status::invalid_argument)?;
        }
        let task_id = req.task_id;
        if !task_id.is_empty() {
            crate::validate::id("task_id", &task_id).map_err(Status::invalid_argument)?;
        }
        if req.states.len() > MAX_STATE_FILTERS {
            return Err(Status::invalid_argument(format!(
                "states: {} entries, at most {MAX_STATE_FILTERS}",
                req.states.len()
            )));
        }
        for (i, s) in req.states.iter().enumerate() {
            if v1::TaskState::try_from(*s).is_err() {
                return Err(Status::invalid_argument(format!(
                    "states[{i}]: {s} is not a task state"
                )));
            }
        }
        // The token holds the last key of the previous page: framework id and task id, which
        // cannot contain '/'.
        let after = match page.after.as_deref() {
            None => None,
            Some(token) => Some(
                token
                    .split_once('/')
                    .map(|(f, t)| (f.to_string(), t.to_string()))
                    .ok_or_else(|| Status::invalid_argument("page_token: not a token this server issued"))?,
            ),
        };
        let start = match (&after, only.is_empty()) {
            (Some(key), _) => Bound::Excluded(key.clone()),
            (None, false) => Bound::Included((only.clone(), String::new())),
            (None, true) => Bound::Unbounded,
        };
        self.shared.linearizable().await?;
        let state = self.shared.state.read();
        let records = state
            .app
            .tasks
            .range((start, Bound::Unbounded))
            .take_while(|((f, _), _)| only.is_empty() || *f == only)
            .filter(|(_, t)| req.states.is_empty() || req.states.contains(&t.status.state))
            .filter(|(_, t)| task_id.is_empty() || t.task_id == task_id)
            .map(|((f, id), t)| {
                let summary = v1::TaskSummary {
                    framework_id: t.framework_id.clone(),
                    task_id: t.task_id.clone(),
                    name: t.name.clone(),
                    agent_id: t.agent_id.clone(),
                    state: t.status.state,
                    resources: resources_to_wire(&t.resources),
                    exit_code: t.status.exit_code,
                    // Decoded for the page's tasks only (the iterator is lazy).
                    executor_id: t
                        .task_info()
                        .and_then(|i| i.executor)
                        .map(|e| e.executor_id)
                        .unwrap_or_default(),
                };
                (format!("{f}/{id}"), summary)
            });
        let (tasks, next_page_token) = page.fill(records);
        Ok(Response::new(v1::ListTasksResponse { tasks, next_page_token }))
    }

    async fn get_weights(
        &self,
        req: Request<v1::GetWeightsRequest>,
    ) -> Result<Response<v1::GetWeightsResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Read)?;
        self.shared.linearizable().await?;
        let state = self.shared.state.read();
        let weights = state
            .app
            .weights
            .iter()
            .map(|(r, m)| (r.clone(), *m as f64 / 1000.0))
            .collect();
        Ok(Response::new(v1::GetWeightsResponse { weights }))
    }

    async fn set_weights(
        &self,
        req: Request<v1::SetWeightsRequest>,
    ) -> Result<Response<v1::SetWeightsResponse>, Status> {
        self.shared.access.caller(&req)?.operator(OperatorAccess::Write)?;
        self.shared.leader_or_hold().await?;
        let req = req.into_inner();
        if req.weights.is_empty() {
            return Err(Status::invalid_argument(
                "weights: at least one role weight is required",
            ));
        }
        if req.weights.len() > MAX_WEIGHTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "weights: more than {MAX_WEIGHTS_PER_CALL} entries"
            )));
        }
        let mut seen = BTreeSet::new();
        let mut weights = Vec::with_capacity(req.weights.len());
        for (i, w) in req.weights.iter().enumerate() {
            let field = format!("weights[{i}]");
            let milli = validate_weight(&field, &w.role, w.weight).map_err(Status::invalid_argument)?;
            if !seen.insert(w.role.clone()) {
                return Err(Status::invalid_argument(format!(
                    "{field}.role: {:?} is given twice",
                    w.role
                )));
            }
            weights.push(v1::RoleWeight {
                role: w.role.clone(),
                weight_milli: milli,
            });
        }
        match self
            .shared
            .write(v1::command::Kind::SetWeights(v1::SetWeights { weights }))
            .await?
        {
            Outcome::Applied => Ok(Response::new(v1::SetWeightsResponse {})),
            Outcome::Rejected(why) => Err(Status::failed_precondition(why)),
        }
    }
}

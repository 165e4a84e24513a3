//! The agent API (`corral.v1.Agents`): one bidirectional stream per agent, on the leader.
//!
//! Registration is committed through Raft before the agent is told its id. The agent's
//! task inventory is reconciled against the replicated tasks: a committed launch the agent
//! never received is sent again (launches are idempotent by task id on the agent), and a
//! task the master does not know is killed. Status updates are committed before they are
//! acknowledged to the agent and forwarded to the framework (at-least-once end to end).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use corral_proto::v1;
use corral_proto::v1::agents_server::Agents;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::leader::{event, AgentSession, AGENT_PING_INTERVAL, STREAM_CAPACITY};
use crate::node::Shared;
use crate::state::AgentState;
use crate::types::Outcome;
use crate::validate;

/// How long an agent has to send Register after opening the stream.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most registrations handled at once. After a failover every agent of the cluster
/// re-registers within a second; the rest wait their turn (their Register message stays
/// in the connection's flow-control window), so the storm costs bounded memory and the
/// leader keeps answering everything else, its own heartbeats included. Each registration
/// is one group-committed write, so this many share a few Raft entries.
pub const MAX_REGISTRATIONS_IN_FLIGHT: usize = 1024;

pub struct AgentsService {
    shared: Shared,
    registering: Arc<Semaphore>,
}

impl AgentsService {
    pub fn new(shared: Shared) -> Self {
        AgentsService {
            shared,
            registering: Arc::new(Semaphore::new(MAX_REGISTRATIONS_IN_FLIGHT)),
        }
    }
}

type MasterStream = ReceiverStream<Result<v1::MasterMessage, Status>>;

#[tonic::async_trait]
impl Agents for AgentsService {
    type AttachStream = MasterStream;

    async fn attach(&self, req: Request<Streaming<v1::AgentMessage>>) -> Result<Response<MasterStream>, Status> {
        let shared = &self.shared;
        shared.leader_or_hold().await?;
        let _turn = self
            .registering
            .acquire()
            .await
            .map_err(|_| Status::unavailable("this master is shutting down"))?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message within 10 s"))?
            .ok_or_else(|| Status::invalid_argument("stream closed before Register"))??;
        let Some(v1::agent_message::Message::Register(register)) = first.message else {
            return Err(Status::invalid_argument("message: the first message must be Register"));
        };
        let info = register
            .info
            .clone()
            .ok_or_else(|| Status::invalid_argument("register.info: missing"))?;
        let resources = validate::agent_info("register.info", &info).map_err(Status::invalid_argument)?;
        let prior = shared.state.read().app.agents.get(&register.agent_id).map(|a| a.state);
        let known = !register.agent_id.is_empty() && prior.is_some();
        let agent_id = if register.agent_id.is_empty() {
            format!("agent-{:016x}", rand::random::<u64>())
        } else {
            validate::id("register.agent_id", &register.agent_id).map_err(Status::invalid_argument)?;
            register.agent_id.clone()
        };
        let kind = if known {
            v1::command::Kind::ReregisterAgent(v1::ReregisterAgent {
                agent_id: agent_id.clone(),
                info: Some(info),
                tasks: inventory_for_log(&register.tasks),
            })
        } else {
            v1::command::Kind::RegisterAgent(v1::RegisterAgent {
                agent_id: agent_id.clone(),
                info: Some(info),
            })
        };
        if let Outcome::Rejected(why) = shared.write(kind).await? {
            return Err(Status::failed_precondition(why));
        }
        if prior == Some(AgentState::Unreachable) {
            // Tasks reconciled back from UNREACHABLE: tell their frameworks.
            crate::leader::forward_task_updates(shared, &agent_id);
        }

        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let session = {
            let state = shared.state.read();
            let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
            let soft = guard.as_mut().ok_or_else(|| corral_proto::client::not_leader(None))?;
            let session = soft.next_session();
            soft.add_agent(&agent_id, AgentSession { session, tx, resources });
            soft.send_agent(
                &agent_id,
                v1::master_message::Message::Registered(v1::Registered {
                    agent_id: agent_id.clone(),
                    ping_interval_seconds: AGENT_PING_INTERVAL.as_secs_f64(),
                }),
            );
            // Reconcile the inventory with the replicated tasks.
            let inventory: HashSet<(String, String)> = register
                .tasks
                .iter()
                .filter_map(|t| t.task.as_ref().map(|i| (t.framework_id.clone(), i.task_id.clone())))
                .collect();
            let mut resent = 0;
            for task in state.app.tasks_on(&agent_id) {
                let key = (task.framework_id.clone(), task.task_id.clone());
                if !task.is_terminal() && !inventory.contains(&key) {
                    if let Some(info) = task.task_info() {
                        resent += 1;
                        soft.send_agent(
                            &agent_id,
                            v1::master_message::Message::RunTask(v1::RunTask {
                                framework_id: task.framework_id.clone(),
                                task: Some(info),
                                framework: None,
                            }),
                        );
                    }
                }
            }
            let mut killed = 0;
            for (framework_id, task_id) in &inventory {
                let known = state.app.tasks.get(&(framework_id.clone(), task_id.clone()));
                if known.is_none_or(|t| t.agent_id != agent_id) {
                    killed += 1;
                    soft.send_agent(
                        &agent_id,
                        v1::master_message::Message::KillTask(v1::KillTask {
                            framework_id: framework_id.clone(),
                            task_id: task_id.clone(),
                            kill_grace_period_ms: 0,
                        }),
                    );
                }
            }
            tracing::info!(%agent_id, session, reregistered = known, inventory = inventory.len(), resent, killed, "agent registered");
            session
        };
        shared.allocate_now.notify_one();
        tokio::spawn(serve_agent(shared.clone(), agent_id, session, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The inventory as the log needs it: apply reconciles a returning agent's tasks by id,
/// state and exit code, so the rest of each TaskInfo (command, resources, ...) stays out
/// of the Raft entry. After a failover every agent re-registers at once; this keeps those
/// entries, and the work of replicating and applying them, a fraction of the size.
fn inventory_for_log(tasks: &[v1::TaskRecord]) -> Vec<v1::TaskRecord> {
    tasks
        .iter()
        .map(|t| v1::TaskRecord {
            framework_id: t.framework_id.clone(),
            task: t.task.as_ref().map(|info| v1::TaskInfo {
                task_id: info.task_id.clone(),
                ..Default::default()
            }),
            state: t.state,
            exit_code: t.exit_code,
        })
        .collect()
}

/// Most status updates of one agent being committed at once. Further messages wait in the
/// stream (HTTP/2 flow control pushes back on the agent).
pub const MAX_STATUS_IN_FLIGHT: usize = 1024;

/// A status update queued for commit, waiting for its outcome.
struct InFlight {
    status: v1::TaskStatus,
    answer: tokio::sync::oneshot::Receiver<Result<Outcome, Status>>,
}

/// Read one agent's messages until its stream ends; ping it meanwhile.
///
/// Status updates are pipelined: each is queued for commit as it arrives, without waiting
/// for the ones before it, and the outcomes are handled in arrival order. Commits apply in
/// queue order, so a task's RUNNING is applied, acknowledged and forwarded before its
/// FINISHED, and an agent's updates share group commits instead of taking one each.
async fn serve_agent(shared: Shared, agent_id: String, session: u64, mut inbound: Streaming<v1::AgentMessage>) {
    // Ping often enough that a silent agent is noticed within its ping timeout.
    let timeout = shared.config.agent_ping_timeout;
    let mut ping = tokio::time::interval(
        AGENT_PING_INTERVAL
            .min(timeout / 3)
            .max(std::time::Duration::from_millis(100)),
    );
    let mut nonce = 0u64;
    let mut last_heard = std::time::Instant::now();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        tokio::select! {
            msg = inbound.next(), if in_flight.len() < MAX_STATUS_IN_FLIGHT => {
                let Some(Ok(msg)) = msg else { break };
                last_heard = std::time::Instant::now();
                match msg.message {
                    Some(v1::agent_message::Message::StatusUpdate(u)) => {
                        if let Some(status) = u.status {
                            match submit_status(&shared, &agent_id, status).await {
                                Ok(f) => in_flight.push_back(f),
                                // Not the leader any more: the agent sends it to the next one.
                                Err(e) => {
                                    tracing::warn!(%agent_id, error = %e.message(), "status update not queued");
                                    break;
                                }
                            }
                        }
                    }
                    Some(v1::agent_message::Message::Pong(_)) => {}
                    Some(v1::agent_message::Message::Register(_)) | None => {
                        tracing::warn!(%agent_id, "unexpected message on an attached agent stream");
                    }
                }
            }
            answer = async { (&mut in_flight.front_mut().expect("guarded by the condition").answer).await },
                if !in_flight.is_empty() =>
            {
                let done = in_flight.pop_front().expect("guarded by the condition");
                let outcome = answer.unwrap_or_else(|_| Err(Status::unavailable("this master is shutting down")));
                finish_status(&shared, &agent_id, done.status, outcome);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > timeout {
                    // Paused or partitioned: the TCP connection may look fine, the agent is not.
                    tracing::warn!(%agent_id, silent = ?last_heard.elapsed(), "agent missed its pings; closing its session");
                    break;
                }
                nonce += 1;
                let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
                let Some(soft) = guard.as_mut() else { break };
                if soft.agents.get(&agent_id).is_none_or(|s| s.session != session) {
                    break;
                }
                soft.send_agent(&agent_id, v1::master_message::Message::Ping(v1::Ping { nonce }));
            }
        }
    }
    let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(soft) = guard.as_mut() {
        if soft.agents.get(&agent_id).is_some_and(|s| s.session == session) {
            soft.remove_agent(&agent_id);
            soft.agent_gone_at.insert(agent_id.clone(), std::time::Instant::now());
            soft.rescind_agent_offers(&agent_id);
            tracing::info!(%agent_id, "agent disconnected");
        }
    }
}

/// Queue one status update for commit. Nothing is acknowledged yet: see [`finish_status`].
async fn submit_status(shared: &Shared, agent_id: &str, mut status: v1::TaskStatus) -> Result<InFlight, Status> {
    // The agent speaks for its own tasks only.
    status.agent_id = agent_id.to_string();
    status.source = v1::Source::Agent as i32;
    let kind = v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
        statuses: vec![status.clone()],
    });
    let answer = shared.submit(kind).await?;
    Ok(InFlight { status, answer })
}

/// Once a status update is committed, acknowledge it to the agent and forward it to the
/// framework. If the commit failed (leadership lost) nothing is acknowledged: the agent
/// sends it again to the next leader.
fn finish_status(shared: &Shared, agent_id: &str, status: v1::TaskStatus, outcome: Result<Outcome, Status>) {
    match outcome {
        Ok(outcome) => {
            if let Outcome::Rejected(why) = &outcome {
                tracing::warn!(agent_id, task_id = %status.task_id, why, "status update refused; acknowledging it anyway");
            }
            forward_status(shared, &status);
            let ack = v1::AckUpdate {
                framework_id: status.framework_id,
                task_id: status.task_id,
                uuid: status.uuid,
            };
            let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(soft) = guard.as_mut() {
                soft.send_agent(agent_id, v1::master_message::Message::AckUpdate(ack));
                soft.touch_agent(agent_id);
            }
            shared.allocate_now.notify_one();
        }
        Err(e) => {
            tracing::warn!(agent_id, task_id = %status.task_id, error = %e.message(), "status update not committed")
        }
    }
}

/// Send a committed update to its framework, as it stands in the replicated state.
pub fn forward_status(shared: &Shared, status: &v1::TaskStatus) {
    let state = shared.state.read();
    let Some(task) = state
        .app
        .tasks
        .get(&(status.framework_id.clone(), status.task_id.clone()))
    else {
        return;
    };
    let Some(record) = task.unacked.iter().find(|u| u.uuid == status.uuid) else {
        return;
    };
    let wire = task.wire_status(record);
    let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(soft) = guard.as_mut() {
        soft.send_framework(
            &status.framework_id,
            event(v1::event::Event::Update(v1::Update { status: Some(wire) })),
        );
    }
}

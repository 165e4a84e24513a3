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

use crate::leader::{event, AgentSession, Leader, Soft, AGENT_PING_INTERVAL, STREAM_CAPACITY};
use crate::node::Shared;
use crate::raft::types::Outcome;
use crate::raft::write::WriteResult;
use crate::state::{AgentState, ClusterState};
use crate::validate;

/// How long an agent has to send Register after opening the stream.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most registrations handled at once. After a failover every agent of the cluster
/// re-registers within a second; the rest wait their turn (their Register message stays
/// in the connection's flow-control window), so the storm costs bounded memory and the
/// leader keeps answering everything else, its own heartbeats included. Each registration
/// is one group-committed write, so this many share a few Raft entries.
pub const MAX_REGISTRATIONS_IN_FLIGHT: usize = 1024;

/// The `corral.v1.Agents` service.
pub struct AgentsService {
    shared: Shared,
    registering: Arc<Semaphore>,
}

impl AgentsService {
    /// The service over `shared`.
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
        let certs = req.peer_certs();
        if let Some(refused) = corral_proto::tls::refuse_unless(
            shared.config.tls.is_some(),
            certs.as_deref().map(Vec::as_slice),
            corral_proto::tls::Role::Agent,
            &shared.config.cluster,
            "attaching as an agent",
        ) {
            return Err(refused);
        }
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
        let resources = validate::agent_request("register.info", &info).map_err(Status::invalid_argument)?;
        if !register.agent_id.is_empty() {
            validate::id("register.agent_id", &register.agent_id).map_err(Status::invalid_argument)?;
        }
        validate::inventory("register.tasks", &register.tasks).map_err(Status::invalid_argument)?;
        let prior = shared.state.read().app.agents.get(&register.agent_id).map(|a| a.state);
        let known = !register.agent_id.is_empty() && prior.is_some();
        let agent_id = if register.agent_id.is_empty() {
            format!("agent-{:016x}", rand::random::<u64>())
        } else {
            register.agent_id.clone()
        };
        let kind = if known {
            let tasks = inventory_for_log(&shared.state.read().app, &agent_id, &register.tasks);
            validate::logged_inventory("register.tasks", &tasks).map_err(Status::invalid_argument)?;
            v1::command::Kind::ReregisterAgent(v1::ReregisterAgent {
                agent_id: agent_id.clone(),
                info: Some(info),
                tasks,
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
        let leader = shared.leading()?;
        if prior == Some(AgentState::Unreachable) {
            // Tasks reconciled back from UNREACHABLE: tell their frameworks.
            crate::leader::forward_task_updates(&leader, &agent_id).await;
        }

        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let id = agent_id.clone();
        let inventory = register.tasks;
        let session = leader
            .ask(move |shared, soft| {
                let agent_id = id;
                let state = shared.state.read();
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
                let (run, kill) = reconcile(&state.app, &agent_id, &inventory);
                let (resent, killed) = (run.len(), kill.len());
                for r in run {
                    soft.send_agent(&agent_id, v1::master_message::Message::RunTask(r));
                }
                for k in kill {
                    soft.send_agent(&agent_id, v1::master_message::Message::KillTask(k));
                }
                // Executors of frameworks torn down while the agent was away: shut down now
                // (the ShutdownFramework sent at the teardown did not reach it).
                for f in orphaned_executors(&state.app, &agent_id) {
                    soft.send_agent(
                        &agent_id,
                        v1::master_message::Message::ShutdownFramework(v1::ShutdownFramework { framework_id: f }),
                    );
                }
                let inventory = inventory.len();
                if known {
                    // After a failover every agent of the cluster comes back within a second
                    // or two: one line each would be thousands; the leader logs when all are
                    // back.
                    tracing::debug!(%agent_id, session, inventory, resent, killed, "agent re-registered");
                } else {
                    tracing::info!(%agent_id, session, inventory, resent, killed, "agent registered");
                }
                session
            })
            .await
            .map_err(|_| shared.not_leading())?;
        shared.allocate_now.notify_one();
        tokio::spawn(serve_agent(shared.clone(), leader, agent_id, session, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What a (re-)registering agent must be told so that it runs exactly the committed tasks
/// of its own: the launches it never received (sent again; launches are idempotent by
/// task id on the agent), and a kill for each task it runs that the master does not know
/// as this agent's. Looks up a task record only for a task missing from the inventory.
fn reconcile(
    state: &ClusterState,
    agent_id: &str,
    inventory: &[v1::TaskRecord],
) -> (Vec<v1::RunTask>, Vec<v1::KillTask>) {
    let reported: HashSet<(&str, &str)> = inventory
        .iter()
        .filter_map(|t| t.task.as_ref().map(|i| (t.framework_id.as_str(), i.task_id.as_str())))
        .collect();
    let ours: HashSet<(&str, &str)> = state
        .agent_tasks
        .get(agent_id)
        .into_iter()
        .flatten()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let run = ours
        .iter()
        .filter(|key| !reported.contains(*key))
        .filter_map(|(f, t)| state.tasks.get(&(f.to_string(), t.to_string())))
        .filter(|task| !task.is_terminal())
        .filter_map(|task| {
            Some(v1::RunTask {
                framework_id: task.framework_id.clone(),
                task: Some(task.task_info()?),
                framework: state.frameworks.get(&task.framework_id).map(|f| f.wire_info()),
            })
        })
        .collect();
    let kill = reported
        .iter()
        .filter(|key| !ours.contains(*key))
        .map(|(f, t)| v1::KillTask {
            framework_id: f.to_string(),
            task_id: t.to_string(),
            kill_grace_period_ms: 0,
        })
        .collect();
    (run, kill)
}

/// The inventory as the log needs it: apply reconciles a returning agent's tasks by id,
/// state and exit code, so the rest of each TaskInfo (command, resources, ...) stays out
/// of the Raft entry. After a failover every agent re-registers at once; this keeps those
/// entries, and the work of replicating and applying them, a fraction of the size.
///
/// Apply looks only at the agent's tasks that it holds as UNREACHABLE, so only tasks the
/// state has on this agent and not ended are kept (the not-ended ones, not just the
/// unreachable ones: the agent may be marked unreachable between this read and the apply).
/// Tasks the master does not know are killed by the leader, not written to the log.
fn inventory_for_log(state: &ClusterState, agent_id: &str, tasks: &[v1::TaskRecord]) -> Vec<v1::TaskRecord> {
    let ours = state.agent_tasks.get(agent_id);
    tasks
        .iter()
        .filter(|t| {
            t.task.as_ref().is_some_and(|info| {
                let key = (t.framework_id.clone(), info.task_id.clone());
                ours.is_some_and(|o| o.contains(&key)) && state.tasks.get(&key).is_some_and(|r| !r.is_terminal())
            })
        })
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
/// Most status updates in one command: updates that have already arrived when one is read
/// (a task's RUNNING and FINISHED, a burst after a reconnection) are committed together.
pub const MAX_STATUS_BATCH: usize = 64;

/// Status updates queued for commit as one command, waiting for its outcome.
struct InFlight {
    statuses: Vec<v1::TaskStatus>,
    answer: tokio::sync::oneshot::Receiver<WriteResult>,
}

/// Read one agent's messages until its stream ends or `leader`'s term does; ping it
/// meanwhile.
///
/// Status updates are pipelined: they are queued for commit as they arrive (those already
/// waiting in the stream as one command), without waiting for the ones before them, and
/// the outcomes are handled in arrival order. Commits apply in queue order, so a task's
/// RUNNING is applied, acknowledged and forwarded before its FINISHED, and an agent's
/// updates share group commits instead of taking one each.
async fn serve_agent(
    shared: Shared,
    leader: Leader,
    agent_id: String,
    session: u64,
    mut inbound: Streaming<v1::AgentMessage>,
) {
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
    let mut statuses_in_flight = 0;
    loop {
        tokio::select! {
            msg = inbound.next(), if statuses_in_flight < MAX_STATUS_IN_FLIGHT => {
                let Some(Ok(msg)) = msg else { break };
                last_heard = std::time::Instant::now();
                // This message and those already waiting behind it.
                let mut statuses = Vec::new();
                let mut next = Some(msg);
                let mut ended = false;
                while let Some(msg) = next.take() {
                    match msg.message {
                        Some(v1::agent_message::Message::StatusUpdate(u)) => statuses.extend(u.status),
                        Some(v1::agent_message::Message::Pong(_)) => {}
                        Some(v1::agent_message::Message::ExecutorEnded(e)) => {
                            tokio::spawn(executor_ended(shared.clone(), leader.clone(), agent_id.clone(), e));
                        }
                        Some(v1::agent_message::Message::ExecutorMessage(m)) => {
                            if forward_executor_message(&leader, &agent_id, m).await.is_err() {
                                ended = true;
                            }
                        }
                        Some(v1::agent_message::Message::Register(_)) | None => {
                            tracing::warn!(%agent_id, "unexpected message on an attached agent stream");
                        }
                    }
                    if statuses.len() < MAX_STATUS_BATCH {
                        next = match already_arrived(&mut inbound).await {
                            Some(Some(Ok(m))) => Some(m),
                            Some(_) => {
                                ended = true;
                                None
                            }
                            None => None,
                        };
                    }
                }
                let mut invalid = Vec::new();
                statuses.retain_mut(|status| match validate::agent_status("status", status) {
                    Ok(()) => true,
                    Err(why) => {
                        tracing::warn!(%agent_id, why, "dropped an invalid status update");
                        invalid.push(v1::AckUpdate {
                            framework_id: std::mem::take(&mut status.framework_id),
                            task_id: std::mem::take(&mut status.task_id),
                            uuid: std::mem::take(&mut status.uuid),
                        });
                        false
                    }
                });
                if !invalid.is_empty() {
                    // Resending would not make them valid: acknowledged as they came, so that
                    // they do not block the updates queued behind them on the agent.
                    let id = agent_id.clone();
                    let told = leader
                        .tell(move |_, soft| {
                            for ack in invalid {
                                soft.send_agent(&id, v1::master_message::Message::AckUpdate(ack));
                            }
                        })
                        .await;
                    if told.is_err() {
                        break;
                    }
                }
                if !statuses.is_empty() {
                    let n = statuses.len();
                    match submit_statuses(&shared, &agent_id, statuses).await {
                        Ok(f) => {
                            statuses_in_flight += n;
                            in_flight.push_back(f);
                        }
                        // Not the leader any more: the agent sends them to the next one.
                        Err(e) => {
                            tracing::warn!(%agent_id, error = %e, "status updates not queued");
                            break;
                        }
                    }
                }
                if ended {
                    break;
                }
            }
            answer = async { (&mut in_flight.front_mut().expect("guarded by the condition").answer).await },
                if !in_flight.is_empty() =>
            {
                let done = in_flight.pop_front().expect("guarded by the condition");
                statuses_in_flight -= done.statuses.len();
                let outcome = answer.unwrap_or(Err(crate::raft::write::WriteError::ShuttingDown));
                finish_statuses(&leader, &agent_id, done.statuses, outcome).await;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > timeout {
                    // Paused or partitioned: the TCP connection may look fine, the agent is not.
                    tracing::warn!(%agent_id, silent = ?last_heard.elapsed(), "agent missed its pings; closing its session");
                    break;
                }
                nonce += 1;
                let id = agent_id.clone();
                let pinged = leader
                    .ask(move |_, soft| {
                        if soft.agents.get(&id).is_none_or(|s| s.session != session) {
                            return false;
                        }
                        soft.send_agent(&id, v1::master_message::Message::Ping(v1::Ping { nonce }));
                        true
                    })
                    .await;
                if pinged != Ok(true) {
                    break;
                }
            }
        }
    }
    let _ = leader
        .tell(move |_, soft| {
            // A newer session of the agent is not ours to end; one already ended (a message
            // could not be queued) recorded its end then.
            if soft.agents.get(&agent_id).is_some_and(|s| s.session == session) {
                soft.end_agent_session(&agent_id, std::time::Instant::now());
                tracing::info!(%agent_id, "agent disconnected");
            }
        })
        .await;
}

/// An executor of `agent_id` ended: record it (its resources are free again, its unfinished
/// tasks fail), then acknowledge to the agent and tell the framework (FAILURE, best effort).
/// An end the state does not know of (reported twice, or of an executor already gone with
/// its agent) is acknowledged too: resending it would change nothing.
async fn executor_ended(shared: Shared, leader: Leader, agent_id: String, e: v1::ExecutorEnded) {
    for (field, value) in [("framework_id", &e.framework_id), ("executor_id", &e.executor_id)] {
        if let Err(why) = validate::id(field, value) {
            tracing::warn!(%agent_id, why, "dropped an invalid executor end");
            return;
        }
    }
    let message: String = e.message.chars().take(validate::MAX_TEXT_LEN).collect();
    let kind = v1::command::Kind::ExecutorExited(v1::ExecutorExited {
        framework_id: e.framework_id.clone(),
        agent_id: agent_id.clone(),
        executor_id: e.executor_id.clone(),
        message: message.clone(),
        exit_code: e.exit_code,
    });
    match shared.write(kind).await {
        Ok(outcome) => {
            if let Outcome::Rejected(why) = &outcome {
                tracing::info!(%agent_id, executor_id = %e.executor_id, why, "executor end already recorded or unknown");
            } else {
                tracing::info!(%agent_id, framework_id = %e.framework_id, executor_id = %e.executor_id, %message, "executor ended");
            }
            let applied = outcome == Outcome::Applied;
            let _ = leader
                .tell(move |shared, soft| {
                    soft.send_agent(
                        &agent_id,
                        v1::master_message::Message::AckExecutorEnded(v1::AckExecutorEnded {
                            framework_id: e.framework_id.clone(),
                            executor_id: e.executor_id.clone(),
                        }),
                    );
                    if applied {
                        let failure = v1::Failure {
                            agent_id: agent_id.clone(),
                            executor_id: e.executor_id.clone(),
                            exit_code: e.exit_code,
                            message,
                        };
                        soft.send_framework(&e.framework_id, event(v1::event::Event::Failure(failure)));
                        // The tasks it failed, as the state now holds them.
                        let failed: Vec<v1::TaskStatus> = {
                            let state = shared.state.read();
                            state
                                .app
                                .tasks_on(&agent_id)
                                .filter(|t| t.framework_id == e.framework_id)
                                .filter(|t| t.status.reason == v1::Reason::ExecutorTerminated as i32)
                                .filter(|t| {
                                    t.task_info()
                                        .and_then(|i| i.executor)
                                        .is_some_and(|x| x.executor_id == e.executor_id)
                                })
                                .filter(|t| t.unacked.iter().any(|u| u.source == v1::Source::Master as i32))
                                .map(|t| t.wire_status(&t.status))
                                .collect()
                        };
                        forward_statuses(shared, soft, &failed);
                        soft.touch_agent(&agent_id);
                        shared.allocate_now.notify_one();
                    }
                })
                .await;
        }
        // Not the leader any more: the agent reports it to the next one.
        Err(err) => tracing::warn!(%agent_id, error = %err, "executor end not recorded"),
    }
}

/// An executor's message for its framework: sent on the framework's stream if it is
/// subscribed (best effort, as in Mesos). Err when the term's loop is gone.
async fn forward_executor_message(leader: &Leader, agent_id: &str, m: v1::ExecutorMessage) -> Result<(), ()> {
    if m.data.len() > validate::MAX_FRAMEWORK_MESSAGE_BYTES {
        tracing::warn!(agent_id, executor_id = %corral_proto::quote(&m.executor_id), bytes = m.data.len(), "dropped an oversized executor message");
        return Ok(());
    }
    let agent_id = agent_id.to_string();
    leader
        .tell(move |_, soft| {
            let msg = v1::FrameworkMessage {
                agent_id,
                data: m.data,
                executor_id: m.executor_id,
            };
            if !soft.send_framework(&m.framework_id, event(v1::event::Event::Message(msg))) {
                tracing::debug!(framework_id = %m.framework_id, "executor message dropped: framework not subscribed");
            }
        })
        .await
        .map_err(|_| ())
}

/// The next message of `inbound` if it has already arrived; `None` if none is waiting.
async fn already_arrived(
    inbound: &mut Streaming<v1::AgentMessage>,
) -> Option<Option<Result<v1::AgentMessage, Status>>> {
    tokio::select! {
        biased;
        msg = inbound.next() => Some(msg),
        _ = std::future::ready(()) => None,
    }
}

/// Queue status updates for commit, as one command. Nothing is acknowledged yet: see
/// [`finish_statuses`].
async fn submit_statuses(
    shared: &Shared,
    agent_id: &str,
    mut statuses: Vec<v1::TaskStatus>,
) -> Result<InFlight, crate::raft::write::WriteError> {
    for status in &mut statuses {
        // The agent speaks for its own tasks only.
        status.agent_id = agent_id.to_string();
        // An executor's updates come through its agent and say so.
        if status.source != v1::Source::Executor as i32 {
            status.source = v1::Source::Agent as i32;
        }
    }
    let kind = v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
        statuses: statuses.clone(),
    });
    let answer = shared.submit(kind).await?;
    Ok(InFlight { statuses, answer })
}

/// Once status updates are committed, acknowledge them to the agent and forward them to
/// the frameworks. If the commit failed (leadership lost) nothing is acknowledged: the
/// agent sends them again to the next leader. The loop is told and not waited for, so the
/// agent's stream goes on reading meanwhile; jobs run in order, so each update is forwarded
/// after the ones committed before it.
async fn finish_statuses(leader: &Leader, agent_id: &str, statuses: Vec<v1::TaskStatus>, outcome: WriteResult) {
    match outcome {
        Ok(outcome) => {
            if let Outcome::Rejected(why) = &outcome {
                tracing::warn!(
                    agent_id,
                    updates = statuses.len(),
                    why,
                    "status updates refused; acknowledging them anyway"
                );
            }
            let agent_id = agent_id.to_string();
            let _ = leader
                .tell(move |shared, soft| {
                    forward_statuses(shared, soft, &statuses);
                    for status in statuses {
                        soft.launches.done(&status.framework_id, &status.task_id);
                        let ack = v1::AckUpdate {
                            framework_id: status.framework_id,
                            task_id: status.task_id,
                            uuid: status.uuid,
                        };
                        soft.send_agent(&agent_id, v1::master_message::Message::AckUpdate(ack));
                    }
                    soft.touch_agent(&agent_id);
                    shared.allocate_now.notify_one();
                })
                .await;
        }
        Err(e) => {
            tracing::warn!(agent_id, updates = statuses.len(), error = %e, "status updates not committed")
        }
    }
}

/// The frameworks with executors on `agent_id` that are torn down (or forgotten).
fn orphaned_executors(state: &ClusterState, agent_id: &str) -> std::collections::BTreeSet<String> {
    let Some(agent) = state.agents.get(agent_id) else {
        return Default::default();
    };
    agent
        .executors
        .keys()
        .map(|(f, _)| f)
        .filter(|f| {
            state
                .frameworks
                .get(*f)
                .is_none_or(|r| r.state == crate::state::FrameworkState::TornDown)
        })
        .cloned()
        .collect()
}

/// Send committed updates to their frameworks, as they stand in the replicated state.
fn forward_statuses(shared: &Shared, soft: &mut Soft, statuses: &[v1::TaskStatus]) {
    let state = shared.state.read();
    for status in statuses {
        let Some(task) = state
            .app
            .tasks
            .get(&(status.framework_id.clone(), status.task_id.clone()))
        else {
            continue;
        };
        let Some(record) = task.unacked.iter().find(|u| u.uuid == status.uuid) else {
            continue;
        };
        soft.send_framework(
            &status.framework_id,
            event(v1::event::Event::Update(v1::Update {
                status: Some(task.wire_status(record)),
            })),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Outcome;

    fn apply(s: &mut ClusterState, kind: v1::command::Kind) {
        let outcome = s.apply_command(&v1::Command {
            timestamp_ms: 1,
            kind: Some(kind),
        });
        assert_eq!(outcome, Outcome::Applied);
    }

    fn cpus(v: f64) -> Vec<v1::Resource> {
        vec![v1::Resource {
            name: "cpus".into(),
            value: Some(v1::resource::Value::Scalar(v)),
        }]
    }

    fn record(framework_id: &str, task_id: &str) -> v1::TaskRecord {
        v1::TaskRecord {
            framework_id: framework_id.into(),
            task: Some(v1::TaskInfo {
                task_id: task_id.into(),
                ..Default::default()
            }),
            state: v1::TaskState::TaskRunning as i32,
            exit_code: None,
        }
    }

    #[test]
    fn executors_of_torn_down_frameworks_are_found_for_a_returning_agent() {
        let mut s = ClusterState::default();
        apply(
            &mut s,
            v1::command::Kind::RegisterAgent(v1::RegisterAgent {
                agent_id: "a1".into(),
                info: Some(v1::AgentInfo {
                    hostname: "a1".into(),
                    resources: cpus(4.0),
                    capabilities: vec![crate::state::CAPABILITY_EXECUTORS.into()],
                    ..Default::default()
                }),
            }),
        );
        for f in ["f1", "f2"] {
            apply(
                &mut s,
                v1::command::Kind::RegisterFramework(v1::RegisterFramework {
                    framework_id: f.into(),
                    info: Some(v1::FrameworkInfo {
                        name: f.into(),
                        ..Default::default()
                    }),
                }),
            );
            apply(
                &mut s,
                v1::command::Kind::LaunchTasks(v1::LaunchTasks {
                    framework_id: f.into(),
                    agent_id: "a1".into(),
                    tasks: vec![v1::TaskInfo {
                        task_id: "t".into(),
                        agent_id: "a1".into(),
                        resources: cpus(0.5),
                        executor: Some(v1::ExecutorInfo {
                            executor_id: "e".into(),
                            command: Some(v1::CommandInfo {
                                argv: vec!["./executor".into()],
                                ..Default::default()
                            }),
                            resources: cpus(0.1),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                }),
            );
        }
        assert!(orphaned_executors(&s, "a1").is_empty());
        apply(
            &mut s,
            v1::command::Kind::TeardownFramework(v1::TeardownFramework {
                framework_id: "f2".into(),
            }),
        );
        assert_eq!(orphaned_executors(&s, "a1"), ["f2".to_string()].into());
        assert!(orphaned_executors(&s, "nobody").is_empty());
    }

    #[test]
    fn reconcile_resends_missing_launches_and_kills_unknown_tasks() {
        let mut s = ClusterState::default();
        for agent in ["a1", "a2"] {
            apply(
                &mut s,
                v1::command::Kind::RegisterAgent(v1::RegisterAgent {
                    agent_id: agent.into(),
                    info: Some(v1::AgentInfo {
                        hostname: agent.into(),
                        resources: cpus(4.0),
                        ..Default::default()
                    }),
                }),
            );
        }
        apply(
            &mut s,
            v1::command::Kind::RegisterFramework(v1::RegisterFramework {
                framework_id: "f1".into(),
                info: Some(v1::FrameworkInfo {
                    name: "f".into(),
                    ..Default::default()
                }),
            }),
        );
        let launch = |agent: &str, ids: &[&str]| {
            v1::command::Kind::LaunchTasks(v1::LaunchTasks {
                framework_id: "f1".into(),
                agent_id: agent.into(),
                tasks: ids
                    .iter()
                    .map(|id| v1::TaskInfo {
                        task_id: id.to_string(),
                        agent_id: agent.into(),
                        resources: cpus(0.5),
                        command: Some(v1::CommandInfo {
                            argv: vec!["true".into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            })
        };
        apply(&mut s, launch("a1", &["kept", "missing", "ended"]));
        apply(&mut s, launch("a2", &["elsewhere"]));
        apply(
            &mut s,
            v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
                statuses: vec![v1::TaskStatus {
                    task_id: "ended".into(),
                    framework_id: "f1".into(),
                    agent_id: "a1".into(),
                    state: v1::TaskState::TaskFinished as i32,
                    uuid: vec![1],
                    ..Default::default()
                }],
            }),
        );
        let inventory = [
            record("f1", "kept"),
            record("f1", "stranger"),
            record("f1", "elsewhere"),
        ];
        let (run, kill) = reconcile(&s, "a1", &inventory);
        let run: Vec<_> = run.iter().map(|r| r.task.as_ref().unwrap().task_id.as_str()).collect();
        assert_eq!(run, ["missing"], "a finished task is not launched again");
        let mut kill: Vec<_> = kill.iter().map(|k| k.task_id.as_str()).collect();
        kill.sort();
        assert_eq!(kill, ["elsewhere", "stranger"], "tasks that are not this agent's");
        // An agent that has exactly its tasks is told nothing.
        let (run, kill) = reconcile(&s, "a2", &[record("f1", "elsewhere")]);
        assert!(run.is_empty() && kill.is_empty());
    }
}

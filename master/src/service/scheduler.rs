//! The framework API (`corral.v1.Scheduler`), on the leader.
//!
//! Mutating calls follow one shape: redirect if not leader → check the header (framework
//! id and the stream id of its live subscription) → validate, naming the field → Raft write
//! → effects after commit (RunTask to the agent, events) → reply.

use std::time::{Duration, Instant};

use corral_proto::resources::Resources;
use corral_proto::v1;
use corral_proto::v1::scheduler_server::Scheduler;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::leader::{event, start_resend, FrameworkEvents, FrameworkSession, Leader, Soft, FRAMEWORK_HEARTBEAT};
use crate::node::Shared;
use crate::raft::types::Outcome;
use crate::state::FrameworkState;
use crate::validate;

/// The `corral.v1.Scheduler` service.
pub struct SchedulerService {
    shared: Shared,
}

impl SchedulerService {
    /// The service over `shared`.
    pub fn new(shared: Shared) -> Self {
        SchedulerService { shared }
    }

    /// Subscribe (register, or fail over with a known framework id) as `principal`: the
    /// framework's event stream, its first event SUBSCRIBED. Shared by the gRPC `Subscribe`
    /// and the Mesos HTTP API's SUBSCRIBE.
    /// `field` names the framework's description in refusals.
    pub(crate) async fn subscribe_as(
        &self,
        principal: crate::acl::Principal,
        req: v1::SubscribeRequest,
        field: &str,
    ) -> Result<EventStream, Status> {
        let shared = &self.shared;
        shared.leader_or_hold().await?;
        let mut info = req
            .framework
            .ok_or_else(|| Status::invalid_argument(format!("{field}: missing")))?;
        validate::framework_request(field, &info).map_err(Status::invalid_argument)?;
        if !info.principal.is_empty() && info.principal != principal.name {
            return Err(Status::permission_denied(format!(
                "{field}.principal: {} is not the principal this call is made as ({})",
                corral_proto::quote(&info.principal),
                corral_proto::quote(&principal.name)
            )));
        }
        let role = if info.role.is_empty() {
            crate::state::DEFAULT_ROLE
        } else {
            info.role.as_str()
        };
        principal.register_role(role)?;
        principal.run_as(&info.user)?;
        let failover = !info.framework_id.is_empty();
        let kind = if failover {
            let state = shared.state.read();
            match state.app.frameworks.get(&info.framework_id) {
                None => {
                    return Err(Status::not_found(format!(
                        "{field}.framework_id: {} is not known to this cluster",
                        info.framework_id
                    )))
                }
                Some(f) if f.state == FrameworkState::TornDown => {
                    return Err(Status::failed_precondition(format!(
                        "{field}.framework_id: {} was torn down",
                        info.framework_id
                    )))
                }
                Some(f) => {
                    // Subscribing as a framework gives the power to kill its tasks and tear
                    // it down: only its own principal, or one that may tear down any.
                    principal.teardown(&info.framework_id, &f.principal)?;
                    info.principal = f.principal.clone();
                    v1::command::Kind::UpdateFramework(v1::UpdateFramework {
                        info: Some(info.clone()),
                    })
                }
            }
        } else {
            info.framework_id = format!("fw-{:016x}", rand::random::<u64>());
            info.principal = principal.name.clone();
            v1::command::Kind::RegisterFramework(v1::RegisterFramework {
                framework_id: info.framework_id.clone(),
                info: Some(info.clone()),
            })
        };
        if let Outcome::Rejected(why) = shared.write(kind).await? {
            return Err(Status::failed_precondition(why));
        }
        let framework_id = info.framework_id.clone();
        let stream_id = format!("{:032x}", rand::random::<u128>());
        let (session, events, gone) = FrameworkSession::new(stream_id.clone());
        let leader = shared.leading()?;
        let (id, stream, suppressed) = (framework_id.clone(), stream_id.clone(), req.suppressed);
        on_soft(shared, &leader, move |shared, soft| {
            let (framework_id, stream_id) = (id, stream);
            if let Some(old) = soft.end_framework_session(&framework_id, std::time::Instant::now()) {
                let _ = old.tx.try_send(Ok(event(v1::event::Event::Error(v1::Error {
                    message: "replaced by a newer subscription of this framework".into(),
                }))));
            }
            soft.frameworks.insert(framework_id.clone(), session);
            if suppressed {
                soft.suppressed.insert(framework_id.clone());
            }
            soft.full_pass = true;
            let subscribed = v1::Subscribed {
                framework_id: framework_id.clone(),
                stream_id: stream_id.clone(),
                heartbeat_interval_seconds: FRAMEWORK_HEARTBEAT.as_secs_f64(),
                master: Some(v1::MasterInfo {
                    id: shared.config.id,
                    address: shared.config.advertise.clone(),
                }),
                leader_term: soft.term,
            };
            soft.send_framework(&framework_id, event(v1::event::Event::Subscribed(subscribed)));
            // Updates the framework has not acknowledged, from before a failover too.
            if let Some(session) = soft.frameworks.get(&framework_id) {
                start_resend(shared, &framework_id, session);
            }
        })
        .await?;
        tracing::info!(%framework_id, name = %info.name, role = %info.role, principal = %info.principal, failover, "framework subscribed");
        shared.allocate_now.notify_one();
        tokio::spawn(watch_framework(shared.clone(), leader, framework_id, stream_id, gone));
        Ok(events)
    }

    /// The header names a subscribed framework and its current stream. Returns the
    /// framework id and the handle of the term it is subscribed in.
    async fn check_header(&self, header: Option<&v1::CallHeader>) -> Result<(String, Leader), Status> {
        let (caller, leader) = self.caller(header).await?;
        let framework_id = leader
            .ask(move |_, soft| caller.check(soft))
            .await
            .map_err(|_| self.shared.not_leading())??;
        Ok((framework_id, leader))
    }

    /// The header's checks that need no soft state, and the leader to ask: a call that runs
    /// a job of its own checks the subscription in that job ([`Caller::check`]), one trip
    /// through the leader's loop instead of two.
    async fn caller(&self, header: Option<&v1::CallHeader>) -> Result<(Caller, Leader), Status> {
        self.shared.leader_or_hold().await?;
        let h = header.ok_or_else(|| Status::invalid_argument("header: missing"))?;
        validate::id("header.framework_id", &h.framework_id).map_err(Status::invalid_argument)?;
        let leader = self.shared.leading()?;
        let caller = Caller {
            framework_id: h.framework_id.clone(),
            stream_id: h.stream_id.clone(),
        };
        Ok((caller, leader))
    }
}

/// A call's framework and subscription, as its header names them.
struct Caller {
    framework_id: String,
    stream_id: String,
}

impl Caller {
    /// The framework is subscribed to this term's leader with this stream: its id.
    fn check(self, soft: &Soft) -> Result<String, Status> {
        match soft.frameworks.get(&self.framework_id) {
            None => Err(Status::invalid_argument(format!(
                "header.framework_id: {} is not subscribed to this leader",
                self.framework_id
            ))),
            Some(s) if s.stream_id != self.stream_id => Err(Status::invalid_argument(
                "header.stream_id: does not match the framework's current subscription",
            )),
            Some(_) => Ok(self.framework_id),
        }
    }
}

/// Run `f` on the soft state of `leader`'s term, or answer with the redirect.
async fn on_soft<R, F>(shared: &Shared, leader: &Leader, f: F) -> Result<R, Status>
where
    R: Send + 'static,
    F: FnOnce(&Shared, &mut Soft) -> R + Send + 'static,
{
    leader.ask(f).await.map_err(|_| shared.not_leading())
}

pub(crate) type EventStream = FrameworkEvents;

/// The acknowledgements of one Acknowledge call (the one in its own fields, if any, and its
/// list), each checked, as replicated acks of `framework_id`.
pub(crate) fn acknowledgements(framework_id: &str, req: v1::AcknowledgeRequest) -> Result<Vec<v1::StatusAck>, Status> {
    if req.acks.len() > validate::MAX_ACKS_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "acks: {} acknowledgements, at most {} per call",
            req.acks.len(),
            validate::MAX_ACKS_PER_CALL
        )));
    }
    let single = (!req.task_id.is_empty() || !req.uuid.is_empty() || req.acks.is_empty()).then(|| {
        (
            String::new(),
            v1::Acknowledgement {
                agent_id: req.agent_id,
                task_id: req.task_id,
                uuid: req.uuid,
            },
        )
    });
    let listed = req
        .acks
        .into_iter()
        .enumerate()
        .map(|(i, a)| (format!("acks[{i}]."), a));
    single
        .into_iter()
        .chain(listed)
        .map(|(at, a)| {
            validate::id(&format!("{at}task_id"), &a.task_id).map_err(Status::invalid_argument)?;
            if a.uuid.is_empty() || a.uuid.len() > 64 {
                return Err(Status::invalid_argument(format!(
                    "{at}uuid: must be the 1 to 64 byte uuid of a status update"
                )));
            }
            Ok(v1::StatusAck {
                framework_id: framework_id.to_string(),
                task_id: a.task_id,
                uuid: a.uuid,
            })
        })
        .collect()
}

fn filter_until(refuse_seconds: f64) -> Option<Instant> {
    (refuse_seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(refuse_seconds))
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<v1::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let principal = self.shared.access.caller(&req)?;
        self.subscribe_as(principal, req.into_inner(), "framework")
            .await
            .map(Response::new)
    }

    async fn accept(&self, req: Request<v1::AcceptRequest>) -> Result<Response<v1::AcceptResponse>, Status> {
        let req = req.into_inner();
        let (caller, leader) = self.caller(req.header.as_ref()).await?;
        let framework_id = caller.framework_id.clone();
        if req.offer_ids.is_empty() {
            return Err(Status::invalid_argument("offer_ids: at least one offer is required"));
        }
        validate::offer_ids("offer_ids", &req.offer_ids).map_err(Status::invalid_argument)?;
        if req.operations.len() > validate::MAX_OPERATIONS_PER_ACCEPT {
            return Err(Status::invalid_argument(format!(
                "operations: {} entries, at most {}",
                req.operations.len(),
                validate::MAX_OPERATIONS_PER_ACCEPT
            )));
        }
        let refuse = validate::refuse_seconds("filters", req.filters.as_ref()).map_err(Status::invalid_argument)?;
        let mut tasks = Vec::new();
        for (i, op) in req.operations.iter().enumerate() {
            match &op.operation {
                Some(v1::operation::Operation::Launch(l)) => tasks.extend(l.tasks.iter().cloned()),
                None => return Err(Status::invalid_argument(format!("operations[{i}]: no operation given"))),
            }
        }
        let starts = executors_started(&self.shared, &framework_id, &tasks)?;
        // Check the offers and the tasks, then consume the offers, all in one job of the
        // term's loop, so that two accepts cannot use the same offer.
        let offer_ids = req.offer_ids;
        let (agent_id, asked, tasks) = on_soft(&self.shared, &leader, move |_, soft| -> Result<(String, Resources, Vec<v1::TaskInfo>), Status> {
            let framework_id = caller.check(soft)?;
            let mut agent: Option<String> = None;
            let mut held = Resources::new();
            for (i, id) in offer_ids.iter().enumerate() {
                if let Some(t) = Soft::offer_term(id) {
                    if t != soft.term {
                        return Err(Status::failed_precondition(format!(
                            "offer_ids[{i}]: offer {id} was made by the leader of term {t}; this leader's term is {} (offers do not survive a leader change)",
                            soft.term
                        )));
                    }
                }
                let offer = soft.offers.get(id).ok_or_else(|| {
                    Status::invalid_argument(format!("offer_ids[{i}]: {id} is not an outstanding offer (unknown, used, declined or rescinded)"))
                })?;
                if offer.framework_id != framework_id {
                    return Err(Status::invalid_argument(format!("offer_ids[{i}]: {id} was made to another framework")));
                }
                match &agent {
                    Some(a) if *a != offer.agent_id => {
                        return Err(Status::invalid_argument(format!("offer_ids[{i}]: offers of different agents cannot be combined")))
                    }
                    _ => agent = Some(offer.agent_id.clone()),
                }
                held = held.checked_add(&offer.resources).map_err(|e| Status::invalid_argument(e.to_string()))?;
            }
            let agent = agent.unwrap_or_default();
            let mut asked = Resources::new();
            if !tasks.is_empty() {
                (_, asked) = validate::launch_request("operations.launch.tasks", &agent, &tasks).map_err(Status::invalid_argument)?;
                // The executors the launch starts hold resources of the offers too.
                asked = asked.checked_add(&starts).map_err(|e| Status::invalid_argument(format!("operations.launch.tasks: {e}")))?;
                if !held.contains(&asked) {
                    return Err(Status::invalid_argument(format!(
                        "operations.launch.tasks: ask for {asked}, more than the offers hold ({held})"
                    )));
                }
            }
            for id in &offer_ids {
                soft.take_offer(id);
            }
            if let Some(until) = filter_until(refuse) {
                soft.add_filter(&framework_id, &agent, until);
            }
            soft.reserve_launch(&agent, &asked);
            soft.launches
                .start(&framework_id, tasks.iter().map(|t| t.task_id.as_str()), Instant::now());
            Ok((agent, asked, tasks))
        })
        .await??;
        let checked = Instant::now();
        // S2 pre-check against the replicated state (apply checks again).
        let reused = {
            let state = self.shared.state.read();
            tasks
                .iter()
                .enumerate()
                .find(|(_, t)| state.app.tasks.contains_key(&(framework_id.clone(), t.task_id.clone())))
        };
        if let Some((i, t)) = reused {
            let message = format!(
                "operations.launch.tasks[{i}].task_id: {:?} was already used by this framework",
                t.task_id
            );
            release_launch(&leader, &framework_id, &agent_id, &asked, &tasks).await;
            self.shared.allocate_now.notify_one();
            return Err(Status::invalid_argument(message));
        }
        self.shared.allocate_now.notify_one();
        if tasks.is_empty() {
            return Ok(Response::new(v1::AcceptResponse {
                launched_task_ids: Vec::new(),
            }));
        }
        // From here on the launch runs to its end even if the caller goes away: a launch
        // committed but never sent to its agent would sit in STAGING, and its reservation
        // would never be released.
        let launch = Launch {
            shared: self.shared.clone(),
            leader,
            framework_id,
            agent_id,
            asked,
            tasks,
            checked,
        };
        let ids = tokio::spawn(launch.run())
            .await
            .map_err(|e| Status::internal(format!("the launch did not complete: {e}")))??;
        Ok(Response::new(v1::AcceptResponse { launched_task_ids: ids }))
    }

    async fn decline(&self, req: Request<v1::DeclineRequest>) -> Result<Response<v1::DeclineResponse>, Status> {
        let req = req.into_inner();
        let (framework_id, leader) = self.check_header(req.header.as_ref()).await?;
        validate::offer_ids("offer_ids", &req.offer_ids).map_err(Status::invalid_argument)?;
        let refuse = validate::refuse_seconds("filters", req.filters.as_ref()).map_err(Status::invalid_argument)?;
        let offer_ids = req.offer_ids;
        on_soft(&self.shared, &leader, move |_, soft| {
            for id in &offer_ids {
                // Declining an offer that is already gone is harmless, as in Mesos.
                if soft.offers.get(id).is_some_and(|o| o.framework_id == framework_id) {
                    if let Some(o) = soft.take_offer(id) {
                        if let Some(until) = filter_until(refuse) {
                            soft.add_filter(&framework_id, &o.agent_id, until);
                        }
                    }
                }
            }
        })
        .await?;
        self.shared.allocate_now.notify_one();
        Ok(Response::new(v1::DeclineResponse {}))
    }

    async fn revive(&self, req: Request<v1::ReviveRequest>) -> Result<Response<v1::ReviveResponse>, Status> {
        let (framework_id, leader) = self.check_header(req.get_ref().header.as_ref()).await?;
        on_soft(&self.shared, &leader, move |_, soft| {
            soft.suppressed.remove(&framework_id);
            soft.filters.remove(&framework_id);
            soft.full_pass = true;
        })
        .await?;
        self.shared.allocate_now.notify_one();
        Ok(Response::new(v1::ReviveResponse {}))
    }

    async fn suppress(&self, req: Request<v1::SuppressRequest>) -> Result<Response<v1::SuppressResponse>, Status> {
        let (framework_id, leader) = self.check_header(req.get_ref().header.as_ref()).await?;
        on_soft(&self.shared, &leader, move |_, soft| {
            soft.suppressed.insert(framework_id)
        })
        .await?;
        Ok(Response::new(v1::SuppressResponse {}))
    }

    async fn kill(&self, req: Request<v1::KillRequest>) -> Result<Response<v1::KillResponse>, Status> {
        let req = req.into_inner();
        let (framework_id, leader) = self.check_header(req.header.as_ref()).await?;
        validate::id("task_id", &req.task_id).map_err(Status::invalid_argument)?;
        let (agent_id, terminal) = {
            let state = self.shared.state.read();
            let task = state
                .app
                .tasks
                .get(&(framework_id.clone(), req.task_id.clone()))
                .ok_or_else(|| {
                    Status::not_found(format!("task_id: {} is not a task of this framework", req.task_id))
                })?;
            (task.agent_id.clone(), task.is_terminal())
        };
        if !terminal {
            let kill = v1::KillTask {
                framework_id,
                task_id: req.task_id,
                kill_grace_period_ms: req.kill_grace_period_ms,
            };
            on_soft(&self.shared, &leader, move |_, soft| {
                soft.send_agent(&agent_id, v1::master_message::Message::KillTask(kill))
            })
            .await?;
        }
        Ok(Response::new(v1::KillResponse {}))
    }

    async fn message(&self, req: Request<v1::MessageRequest>) -> Result<Response<v1::MessageResponse>, Status> {
        let req = req.into_inner();
        let (framework_id, leader) = self.check_header(req.header.as_ref()).await?;
        if req.data.len() > validate::MAX_FRAMEWORK_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "data: {} bytes, at most {}",
                req.data.len(),
                validate::MAX_FRAMEWORK_MESSAGE_BYTES
            )));
        }
        self.check_executor(&framework_id, &req.agent_id, &req.executor_id)?;
        let message = v1::FrameworkMessageToExecutor {
            framework_id,
            executor_id: req.executor_id,
            data: req.data,
        };
        let message = v1::master_message::Message::FrameworkMessage(message);
        send_to_agent(&self.shared, &leader, req.agent_id, message).await?;
        Ok(Response::new(v1::MessageResponse {}))
    }

    async fn shutdown(&self, req: Request<v1::ShutdownRequest>) -> Result<Response<v1::ShutdownResponse>, Status> {
        let req = req.into_inner();
        let (framework_id, leader) = self.check_header(req.header.as_ref()).await?;
        self.check_executor(&framework_id, &req.agent_id, &req.executor_id)?;
        let shutdown = v1::ShutdownExecutor {
            framework_id,
            executor_id: req.executor_id,
        };
        let message = v1::master_message::Message::ShutdownExecutor(shutdown);
        send_to_agent(&self.shared, &leader, req.agent_id, message).await?;
        Ok(Response::new(v1::ShutdownResponse {}))
    }

    async fn acknowledge(
        &self,
        req: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::AcknowledgeResponse>, Status> {
        let req = req.into_inner();
        let (framework_id, _) = self.check_header(req.header.as_ref()).await?;
        let acks = acknowledgements(&framework_id, req)?;
        let kind = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses { acks });
        if let Outcome::Rejected(why) = self.shared.write(kind).await? {
            return Err(Status::failed_precondition(why));
        }
        Ok(Response::new(v1::AcknowledgeResponse {}))
    }

    async fn reconcile(&self, req: Request<v1::ReconcileRequest>) -> Result<Response<v1::ReconcileResponse>, Status> {
        let req = req.into_inner();
        let (framework_id, leader) = self.check_header(req.header.as_ref()).await?;
        validate::reconcile_tasks("tasks", &req.tasks).map_err(Status::invalid_argument)?;
        self.shared.linearizable().await?;
        let statuses: Vec<v1::TaskStatus> = {
            let state = self.shared.state.read();
            let latest = |t: &crate::state::TaskRecord| {
                let mut s = t.wire_status(&t.status);
                s.uuid.clear(); // reconciliation answers need no acknowledgement
                s.reason = v1::Reason::Reconciliation as i32;
                s
            };
            if req.tasks.is_empty() {
                // Implicit: every non-terminal task of the framework.
                state
                    .app
                    .tasks
                    .range((framework_id.clone(), String::new())..)
                    .take_while(|((f, _), _)| *f == framework_id)
                    .filter(|(_, t)| !t.is_terminal())
                    .map(|(_, t)| latest(t))
                    .collect()
            } else {
                req.tasks
                    .iter()
                    .map(
                        |r| match state.app.tasks.get(&(framework_id.clone(), r.task_id.clone())) {
                            Some(t) => latest(t),
                            None => v1::TaskStatus {
                                task_id: r.task_id.clone(),
                                agent_id: r.agent_id.clone(),
                                framework_id: framework_id.clone(),
                                state: v1::TaskState::TaskUnknown as i32,
                                message: "the master has no record of this task".into(),
                                reason: v1::Reason::Reconciliation as i32,
                                source: v1::Source::Master as i32,
                                ..Default::default()
                            },
                        },
                    )
                    .collect()
            }
        };
        let sent = statuses.clone();
        on_soft(&self.shared, &leader, move |_, soft| {
            for s in sent {
                soft.send_framework(
                    &framework_id,
                    event(v1::event::Event::Update(v1::Update { status: Some(s) })),
                );
            }
        })
        .await?;
        Ok(Response::new(v1::ReconcileResponse { statuses }))
    }

    async fn teardown(&self, req: Request<v1::TeardownRequest>) -> Result<Response<v1::TeardownResponse>, Status> {
        let (framework_id, leader) = self.check_header(req.get_ref().header.as_ref()).await?;
        if let Outcome::Rejected(why) = crate::leader::teardown(
            &self.shared,
            &leader,
            &framework_id,
            "the framework asked to be torn down",
        )
        .await?
        {
            return Err(Status::failed_precondition(why));
        }
        Ok(Response::new(v1::TeardownResponse {}))
    }
}

/// An accepted launch on its way: committed through Raft, then sent to its agent.
struct Launch {
    shared: Shared,
    /// The term whose offers it used: its reservation lives in that term's soft state.
    leader: Leader,
    framework_id: String,
    agent_id: String,
    /// The resources reserved for it on the agent.
    asked: Resources,
    tasks: Vec<v1::TaskInfo>,
    /// When its offers were checked (the start of its commit latency).
    checked: Instant,
}

impl SchedulerService {
    /// Executor `executor_id` of `framework_id` runs on `agent_id` (in the replicated state).
    fn check_executor(&self, framework_id: &str, agent_id: &str, executor_id: &str) -> Result<(), Status> {
        validate::id("agent_id", agent_id).map_err(Status::invalid_argument)?;
        validate::id("executor_id", executor_id).map_err(Status::invalid_argument)?;
        let state = self.shared.state.read();
        let runs = state.app.agents.get(agent_id).is_some_and(|a| {
            a.executors
                .contains_key(&(framework_id.to_string(), executor_id.to_string()))
        });
        if !runs {
            return Err(Status::not_found(format!(
                "executor_id: {} of this framework does not run on agent {}",
                corral_proto::quote(executor_id),
                corral_proto::quote(agent_id)
            )));
        }
        Ok(())
    }
}

/// Send `message` on agent `agent_id`'s stream; UNAVAILABLE if it is not attached now.
async fn send_to_agent(
    shared: &Shared,
    leader: &Leader,
    agent_id: String,
    message: v1::master_message::Message,
) -> Result<(), Status> {
    let sent = on_soft(shared, leader, move |_, soft| soft.send_agent(&agent_id, message)).await?;
    if !sent {
        return Err(Status::unavailable(
            "agent_id: the agent is not attached to the leader now; try again",
        ));
    }
    Ok(())
}

/// What the executors a launch would start hold: those its tasks name that do not run on
/// the tasks' agent yet (read from the replicated state; apply checks again). Refuses
/// executor tasks for an agent that runs command tasks only, and an executor described
/// otherwise than as it runs.
fn executors_started(shared: &Shared, framework_id: &str, tasks: &[v1::TaskInfo]) -> Result<Resources, Status> {
    const FIELD: &str = "operations.launch.tasks";
    let executors = validate::launch_executors(FIELD, tasks).map_err(Status::invalid_argument)?;
    if executors.is_empty() {
        return Ok(Resources::new());
    }
    let agent_id = tasks.first().map(|t| t.agent_id.as_str()).unwrap_or_default();
    let state = shared.state.read();
    let Some(agent) = state.app.agents.get(agent_id) else {
        // Not known: the offer check says so.
        return Ok(Resources::new());
    };
    let mut starts = Resources::new();
    for (eid, (info, resources)) in executors {
        let i = tasks
            .iter()
            .position(|t| t.executor.as_ref().is_some_and(|e| e.executor_id == eid))
            .unwrap_or_default();
        if !agent.can(crate::state::CAPABILITY_EXECUTORS) {
            return Err(Status::invalid_argument(format!(
                "{FIELD}[{i}].executor: agent {agent_id} runs command tasks only (it does not advertise EXECUTORS)"
            )));
        }
        match agent.executors.get(&(framework_id.to_string(), eid.clone())) {
            Some(running) if running.info != info.encode_to_vec() => {
                return Err(Status::invalid_argument(format!(
                    "{FIELD}[{i}].executor: executor {} already runs on agent {agent_id} with a different ExecutorInfo",
                    corral_proto::quote(&eid)
                )));
            }
            Some(_) => {}
            None => {
                starts = starts
                    .checked_add(&resources)
                    .map_err(|e| Status::invalid_argument(format!("{FIELD}[{i}].executor.resources: {e}")))?;
            }
        }
    }
    Ok(starts)
}

impl Launch {
    async fn run(self) -> Result<Vec<String>, Status> {
        let command = v1::LaunchTasks {
            framework_id: self.framework_id.clone(),
            agent_id: self.agent_id.clone(),
            tasks: self.tasks.clone(),
        };
        let written = self.shared.write(v1::command::Kind::LaunchTasks(command)).await;
        let refused = match written {
            Ok(Outcome::Applied) => None,
            Ok(Outcome::Rejected(why)) => Some(Status::failed_precondition(why)),
            Err(e) => Some(Status::from(e)),
        };
        if let Some(refused) = refused {
            release_launch(
                &self.leader,
                &self.framework_id,
                &self.agent_id,
                &self.asked,
                &self.tasks,
            )
            .await;
            return Err(refused);
        }
        let committed = self.checked.elapsed();
        // Committed: end the reservation and send the tasks to their agent in one job. The
        // caller is answered once the job is queued: a term that ends before it runs leaves
        // the launch to the next leader, which sends committed launches still in STAGING
        // again (and agents reconcile them when they re-register).
        let ids: Vec<String> = self.tasks.iter().map(|t| t.task_id.clone()).collect();
        let framework = {
            let state = self.shared.state.read();
            state.app.frameworks.get(&self.framework_id).map(|f| f.wire_info())
        };
        let Launch {
            shared,
            leader,
            framework_id,
            agent_id,
            asked,
            tasks,
            ..
        } = self;
        leader
            .tell(move |_, soft| {
                soft.release_launch(&agent_id, &asked);
                soft.launches.committed(committed);
                tracing::debug!(%framework_id, %agent_id, tasks = tasks.len(), "tasks launched");
                for task in tasks {
                    soft.send_agent(
                        &agent_id,
                        v1::master_message::Message::RunTask(v1::RunTask {
                            framework_id: framework_id.clone(),
                            task: Some(task),
                            framework: framework.clone(),
                        }),
                    );
                }
            })
            .await
            .map_err(|_| shared.not_leading())?;
        Ok(ids)
    }
}

/// A launch was refused or not committed: its reservation on the agent ends and it is no
/// longer in flight. (A committed launch ends its reservation in the job that sends it,
/// [`Launch::run`]: its resources are then in the agent's `used`.)
///
/// A term that has ended has no reservation left to release.
async fn release_launch(
    leader: &Leader,
    framework_id: &str,
    agent_id: &str,
    asked: &Resources,
    tasks: &[v1::TaskInfo],
) {
    let (framework_id, agent_id, asked) = (framework_id.to_string(), agent_id.to_string(), asked.clone());
    let not_committed: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
    let _ = leader
        .tell(move |_, soft| {
            soft.release_launch(&agent_id, &asked);
            for task_id in &not_committed {
                soft.launches.done(&framework_id, task_id);
            }
        })
        .await;
}

/// What a heartbeat found.
enum Beat {
    Sent,
    /// The session ended: record the disconnection.
    Ended,
    /// A newer subscription replaced it, or the term ended: nothing to record here.
    Replaced,
}

/// Heartbeat a framework's stream; when the framework goes away, drop its session and
/// record the disconnection (its failover timeout starts).
async fn watch_framework(
    shared: Shared,
    leader: Leader,
    framework_id: String,
    stream_id: String,
    mut gone: tokio::sync::oneshot::Receiver<()>,
) {
    let mut beat = tokio::time::interval(FRAMEWORK_HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            _ = &mut gone => break,
            _ = beat.tick() => {
                let (id, stream) = (framework_id.clone(), stream_id.clone());
                let beat = leader
                    .ask(move |_, soft| match soft.frameworks.get(&id) {
                        Some(s) if s.stream_id == stream => {
                            if soft.send_framework(&id, event(v1::event::Event::Heartbeat(v1::Heartbeat {}))) {
                                Beat::Sent
                            } else {
                                Beat::Ended
                            }
                        }
                        // Replaced by a newer subscription: that one's watcher takes over.
                        Some(_) => Beat::Replaced,
                        // Ended (an event could not be queued): record the disconnection.
                        None => Beat::Ended,
                    })
                    .await;
                match beat {
                    Ok(Beat::Sent) => {}
                    Ok(Beat::Ended) => break,
                    Ok(Beat::Replaced) | Err(_) => return,
                }
            }
        }
    }
    let (id, stream) = (framework_id.clone(), stream_id.clone());
    let ours = leader
        .ask(move |_, soft| match soft.frameworks.get(&id) {
            Some(s) if s.stream_id == stream => {
                soft.end_framework_session(&id, std::time::Instant::now());
                true
            }
            // A newer subscription replaced this one.
            Some(_) => false,
            // Ended already (an event could not be queued, which recorded when) or torn
            // down: the disconnection is still to be recorded in the first case.
            None => true,
        })
        .await
        .unwrap_or(false);
    if ours {
        tracing::info!(%framework_id, "framework disconnected");
        let connected = shared
            .state
            .read()
            .app
            .frameworks
            .get(&framework_id)
            .is_some_and(|f| f.state == FrameworkState::Connected);
        if connected {
            let kind = v1::command::Kind::DisconnectFramework(v1::DisconnectFramework {
                framework_id: framework_id.clone(),
            });
            if let Err(e) = shared.write(kind).await {
                tracing::warn!(%framework_id, error = %e, "could not record the disconnection");
            }
        }
        shared.allocate_now.notify_one();
    }
}

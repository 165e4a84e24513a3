//! Frameworks' executors: started once per (framework, executor id) with the first task that
//! names them, under a supervisor like a command task (so they outlive the agent), in
//! `<work-dir>/frameworks/<fid>/executors/<eid>/`, with the environment Mesos gives an
//! executor. They speak the Mesos v1 Executor HTTP API to this agent
//! ([`crate::executor_api`]): SUBSCRIBE opens the event stream (SUBSCRIBED, then LAUNCH for
//! each task not yet handed over, KILL for each kill asked for), UPDATE reports a task's
//! state, which takes the path every status update takes (checkpoint, master commit) and is
//! answered with ACKNOWLEDGED once the master committed it.
//!
//! An executor that exits fails its unfinished tasks (TASK_FAILED,
//! REASON_EXECUTOR_TERMINATED) and its end is reported to the master (`ExecutorEnded`,
//! resent until acknowledged) so that what it held is offered again. Its checkpoint,
//! `<work-dir>/meta/frameworks/<fid>/executors/<eid>.json`, lets a restarted agent take it
//! back; the executor re-subscribes and resends what was not acknowledged.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_proto::mesos::convert;
use corral_proto::mesos::v1 as m;
use corral_proto::mesos::v1::executor as me;
use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{checkpoint, signal_group, Inner, Key, Tasks, RESEND_INTERVAL};
use crate::supervisor;

/// How long an executor may take to subscribe after it starts (or after the agent
/// restarts) before it is killed (Mesos' `--executor_registration_timeout` is 1 minute).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an executor has between SHUTDOWN and the kill of its process group (Mesos'
/// `--executor_shutdown_grace_period` default).
pub const EXECUTOR_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often a subscribed executor is sent HEARTBEAT.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Events queued for an executor that does not read them; past this its subscription is
/// closed (it re-subscribes, and what it missed is sent again then).
const EVENT_QUEUE: usize = 1024;
use corral_proto::MAX_FRAMEWORK_MESSAGE_BYTES as MAX_MESSAGE_BYTES;
/// Longest uuid of an executor's status update.
pub const MAX_UUID_BYTES: usize = 64;
/// Longest message of an executor's status update kept (longer ones are cut), in
/// characters: the master's limit for free text.
pub const MAX_STATUS_MESSAGE_CHARS: usize = 1024;
/// Most unacknowledged updates a SUBSCRIBE may carry (each is checkpointed, an fsync).
pub const MAX_SUBSCRIBE_UPDATES: usize = 1024;
/// Most unacknowledged tasks a SUBSCRIBE may carry.
pub const MAX_SUBSCRIBE_TASKS: usize = 4096;

/// Where executors reach the agent and what SUBSCRIBED says of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Endpoint {
    /// `host:port` of the plain-HTTP endpoint serving `/api/v1/executor`.
    pub address: String,
    /// The agent's hostname.
    pub hostname: String,
    /// The agent's resources, for SUBSCRIBED.agent_info.
    pub resources: Vec<v1::Resource>,
}

/// How an executor ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Ended {
    message: String,
    exit_code: Option<i32>,
}

pub(super) struct ExecutorEntry {
    info: v1::ExecutorInfo,
    framework: v1::FrameworkInfo,
    pub(super) pid: Option<u32>,
    supervisor: Option<(u32, u64)>,
    /// The open subscription: its id and the sender of its events.
    stream: Option<(u64, mpsc::Sender<me::Event>)>,
    /// Set once it has ended: reported to the master until acknowledged.
    pub(super) ended: Option<Ended>,
    pub(super) ended_sent: Option<Instant>,
    /// SHUTDOWN was sent (or is due at its next subscription).
    shutdown: bool,
    version: u64,
    file: checkpoint::File,
}

/// What is checkpointed per executor.
#[derive(Serialize, Deserialize)]
struct ExecutorCheckpoint {
    framework_id: String,
    info: Vec<u8>,
    framework: Vec<u8>,
    pid: Option<u32>,
    supervisor_pid: Option<u32>,
    supervisor_start: Option<u64>,
    shutdown: bool,
    ended: Option<Ended>,
}

/// Recovered executors: those still running (key, supervisor pid and start, executor pid),
/// and those that ended while the agent was away.
pub(super) type Recovered = (Vec<(Key, u32, u64, Option<u32>)>, Vec<Key>);

/// An executor as `/state` and tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorView {
    /// Its framework.
    pub framework_id: String,
    /// Its id.
    pub executor_id: String,
    /// The pid of its process (the leader of its process group).
    pub pid: Option<u32>,
    /// Whether it holds an open subscription.
    pub subscribed: bool,
    /// Whether it has ended (and the master has not yet acknowledged that).
    pub ended: bool,
}

/// Why an executor's call is refused; each maps to an HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// The call is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// No such executor runs on this agent (404).
    #[error("{0}")]
    UnknownExecutor(String),
    /// The executor has not subscribed (or its subscription ended) (403).
    #[error("{0}")]
    NotSubscribed(String),
}

/// A subscription handed to the HTTP layer: its events, and a guard that ends it when the
/// stream is dropped (the executor went away).
pub struct Subscription {
    /// The events, SUBSCRIBED first.
    pub events: mpsc::Receiver<me::Event>,
    /// Ends the subscription when dropped.
    pub guard: SubscriptionGuard,
}

/// Ends a subscription when dropped, unless a newer one replaced it.
pub struct SubscriptionGuard {
    tasks: Tasks,
    key: Key,
    id: u64,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let mut inner = self.tasks.lock();
        if let Some(e) = inner.executors.get_mut(&self.key) {
            if e.stream.as_ref().is_some_and(|(id, _)| *id == self.id) {
                e.stream = None;
                tracing::info!(framework_id = %self.key.0, executor_id = %self.key.1, "executor unsubscribed");
            }
        }
    }
}

fn event(kind: me::event::Type) -> me::Event {
    me::Event {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

fn unknown(key: &Key) -> CallError {
    CallError::UnknownExecutor(format!(
        "executor {} of framework {} does not run on this agent",
        corral_proto::quote(&key.1),
        corral_proto::quote(&key.0)
    ))
}

/// Send `ev` on the executor's subscription; a full or closed one is dropped (what it
/// missed is derived again when it re-subscribes).
fn send(e: &mut ExecutorEntry, ev: me::Event) -> bool {
    let Some((_, tx)) = &e.stream else { return false };
    if tx.try_send(ev).is_err() {
        tracing::warn!(executor_id = %e.info.executor_id, "executor not reading its events; closing its subscription");
        e.stream = None;
        return false;
    }
    true
}

/// Send ACKNOWLEDGED for `uuid` of `task_id` to executor `key`, if subscribed (if not, it
/// resends the update when it subscribes again, and is acknowledged then).
pub(super) fn acknowledge_to_executor(inner: &mut Inner, key: &Key, task_id: &str, uuid: &[u8]) {
    if let Some(e) = inner.executors.get_mut(key) {
        send(e, acknowledged(task_id, uuid));
    }
}

fn acknowledged(task_id: &str, uuid: &[u8]) -> me::Event {
    me::Event {
        acknowledged: Some(me::event::Acknowledged {
            task_id: m::TaskId {
                value: task_id.to_string(),
            },
            uuid: uuid.to_vec(),
        }),
        ..event(me::event::Type::Acknowledged)
    }
}

/// Report the ends of executors not yet acknowledged by the master.
pub(super) fn pump_ended(inner: &mut Inner, link: &mpsc::Sender<v1::AgentMessage>, now: Instant) {
    for ((f, eid), e) in inner.executors.iter_mut() {
        let Some(ended) = &e.ended else { continue };
        if e.ended_sent
            .is_some_and(|s| now.saturating_duration_since(s) < RESEND_INTERVAL)
        {
            continue;
        }
        let msg = v1::AgentMessage {
            message: Some(v1::agent_message::Message::ExecutorEnded(v1::ExecutorEnded {
                framework_id: f.clone(),
                executor_id: eid.clone(),
                message: ended.message.clone(),
                exit_code: ended.exit_code,
            })),
        };
        if link.try_send(msg).is_err() {
            return;
        }
        e.ended_sent = Some(now);
    }
}

impl Tasks {
    pub(crate) fn set_endpoint(&self, address: String, hostname: String, resources: Vec<v1::Resource>) {
        *self.endpoint.lock().unwrap_or_else(|p| p.into_inner()) = Endpoint {
            address,
            hostname,
            resources,
        };
    }

    fn endpoint(&self) -> Endpoint {
        self.endpoint.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn executor_checkpoint_path(&self, (f, e): &Key) -> PathBuf {
        self.work_dir
            .join("meta/frameworks")
            .join(f)
            .join("executors")
            .join(format!("{e}.json"))
    }

    fn executor_exit_path(&self, key: &Key) -> PathBuf {
        self.executor_checkpoint_path(key).with_extension("exit")
    }

    fn executor_sandbox(&self, (f, e): &Key) -> PathBuf {
        self.work_dir.join("frameworks").join(f).join("executors").join(e)
    }

    /// The executors this agent runs (or that ended without the master knowing yet).
    pub fn executors(&self) -> Vec<ExecutorView> {
        self.lock()
            .executors
            .iter()
            .map(|((f, eid), e)| ExecutorView {
                framework_id: f.clone(),
                executor_id: eid.clone(),
                pid: e.pid,
                subscribed: e.stream.is_some(),
                ended: e.ended.is_some(),
            })
            .collect()
    }

    /// Checkpoint executor `key` as it is now (durably, outside the lock).
    fn commit_executor(&self, mut inner: std::sync::MutexGuard<'_, Inner>, key: &Key) {
        let Some(e) = inner.executors.get_mut(key) else { return };
        e.version += 1;
        let version = e.version;
        let cp = ExecutorCheckpoint {
            framework_id: key.0.clone(),
            info: e.info.encode_to_vec(),
            framework: e.framework.encode_to_vec(),
            pid: e.pid,
            supervisor_pid: e.supervisor.map(|s| s.0),
            supervisor_start: e.supervisor.map(|s| s.1),
            shutdown: e.shutdown,
            ended: e.ended.clone(),
        };
        let file = e.file.clone();
        drop(inner);
        if let Err(err) = file.write(&self.executor_checkpoint_path(key), version, &cp) {
            tracing::error!(executor_id = %key.1, error = %err, "cannot checkpoint executor");
        }
    }

    /// A task for an executor: start the executor if it does not run, hand it the task if
    /// it is subscribed (otherwise it gets it when it subscribes).
    pub(super) fn launch_on_executor(&self, task: &Key, executor: v1::ExecutorInfo, framework: v1::FrameworkInfo) {
        let key = (task.0.clone(), executor.executor_id.clone());
        let mut inner = self.lock();
        match inner.executors.get(&key).map(|e| e.ended.is_some()) {
            Some(true) => {
                drop(inner);
                self.update(
                    task,
                    v1::TaskState::TaskFailed,
                    "its executor has terminated".into(),
                    None,
                    v1::Reason::ExecutorTerminated,
                );
            }
            Some(false) => {
                // Sent now if it is subscribed and this subscription has not had it yet
                // (one that began since the task was recorded did); else at SUBSCRIBE.
                let stream = inner
                    .executors
                    .get(&key)
                    .and_then(|e| e.stream.as_ref().map(|(id, _)| *id));
                let Some(stream) = stream else { return };
                let Some(t) = inner.tasks.get_mut(task) else { return };
                if t.delivered_on == Some(stream) {
                    return;
                }
                t.delivered_on = Some(stream);
                let ev = launch_event(&key.0, &t.info);
                if let Some(e) = inner.executors.get_mut(&key) {
                    send(e, ev);
                }
            }
            None => {
                inner.executors.insert(
                    key.clone(),
                    ExecutorEntry {
                        info: executor,
                        framework,
                        pid: None,
                        supervisor: None,
                        stream: None,
                        ended: None,
                        ended_sent: None,
                        shutdown: false,
                        version: 0,
                        file: checkpoint::File::default(),
                    },
                );
                self.commit_executor(inner, &key);
                let tasks = self.clone();
                tokio::spawn(async move { tasks.run_executor(key).await });
            }
        }
    }

    /// Start executor `key` under its supervisor and watch it until it ends.
    async fn run_executor(self, key: Key) {
        let Some((info, framework)) = self
            .lock()
            .executors
            .get(&key)
            .map(|e| (e.info.clone(), e.framework.clone()))
        else {
            return;
        };
        let sandbox = self.executor_sandbox(&key);
        let exit_file = self.executor_exit_path(&key);
        let run_as = match crate::users::decide(&framework.user, crate::users::effective_uid(), self.allow_root) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(framework_id = %key.0, executor_id = %key.1, reason = %e, "executor refused");
                self.executor_ended(&key, None, Some(e));
                return;
            }
        };
        let endpoint = self.endpoint();
        let grace = EXECUTOR_SHUTDOWN_GRACE.as_secs_f64();
        let env = vec![
            ("MESOS_AGENT_ENDPOINT", endpoint.address),
            ("MESOS_FRAMEWORK_ID", key.0.clone()),
            ("MESOS_EXECUTOR_ID", key.1.clone()),
            ("MESOS_AGENT_ID", self.agent_id()),
            ("MESOS_SLAVE_ID", self.agent_id()),
            ("MESOS_DIRECTORY", sandbox.display().to_string()),
            ("MESOS_SANDBOX", sandbox.display().to_string()),
            // The agent checkpoints every executor and takes it back after a restart: the
            // executor should wait for it (and re-subscribe) rather than exit.
            ("MESOS_CHECKPOINT", "1".to_string()),
            ("MESOS_RECOVERY_TIMEOUT", "15mins".to_string()),
            ("MESOS_SUBSCRIPTION_BACKOFF_MAX", "2secs".to_string()),
            ("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", format!("{grace}secs")),
            ("CORRAL_FRAMEWORK_ID", key.0.clone()),
            ("CORRAL_EXECUTOR_ID", key.1.clone()),
            ("CORRAL_AGENT_ID", self.agent_id()),
            ("CORRAL_SANDBOX", sandbox.display().to_string()),
        ];
        let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let command = info.command.clone().unwrap_or_default();
        let (mut child, pid) = match self
            .spawn_supervised(&command, env, &sandbox, &exit_file, run_as.as_ref())
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(framework_id = %key.0, executor_id = %key.1, error = %e, "executor did not start");
                self.executor_ended(&key, None, Some(e));
                return;
            }
        };
        let sup = child
            .id()
            .and_then(|p| supervisor::process_start(p).map(|(start, _)| (p, start)));
        {
            let mut inner = self.lock();
            let Some(e) = inner.executors.get_mut(&key) else { return };
            e.pid = Some(pid);
            e.supervisor = sup;
            self.commit_executor(inner, &key);
        }
        tracing::info!(framework_id = %key.0, executor_id = %key.1, pid, "executor started");
        self.expect_subscription(&key, pid);
        let _ = child.wait().await;
        self.executor_ended(&key, Some(pid), None);
    }

    /// Kill executor `key` (process `pid`) if it has not subscribed within
    /// [`SUBSCRIBE_TIMEOUT`].
    fn expect_subscription(&self, key: &Key, pid: u32) {
        let tasks = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (subscribed, running) = {
                    let inner = tasks.lock();
                    match inner.executors.get(&key) {
                        Some(e) => (e.stream.is_some(), e.ended.is_none() && e.pid == Some(pid)),
                        None => (false, false),
                    }
                };
                if subscribed || !running {
                    return;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(framework_id = %key.0, executor_id = %key.1, "executor did not subscribe in time; killing it");
                    signal_group(pid, libc::SIGKILL);
                    return;
                }
            }
        });
    }

    /// Executor `key` ended (its supervisor exited, or it could not start: `error`): fail
    /// its unfinished tasks and report its end to the master.
    fn executor_ended(&self, key: &Key, pid: Option<u32>, error: Option<String>) {
        let outcome = supervisor::read_outcome(&self.executor_exit_path(key));
        if outcome.is_none() {
            if let Some(pid) = pid {
                // The supervisor died without cleaning up: leave nothing of it behind.
                signal_group(pid, libc::SIGKILL);
            }
        }
        let (message, exit_code) = match (error, outcome) {
            (Some(e), _) => (format!("could not start: {e}"), None),
            (None, Some(supervisor::Outcome { error: Some(e), .. })) => (format!("could not start: {e}"), None),
            (None, Some(o)) => match (o.code, o.signal) {
                (Some(c), _) => (format!("exited with {c}"), Some(c)),
                (None, Some(s)) => (format!("killed by signal {s}"), Some(128 + s)),
                (None, None) => ("ended".to_string(), None),
            },
            (None, None) => ("ended without its supervisor recording how".to_string(), None),
        };
        let unfinished: Vec<Key> = {
            let mut inner = self.lock();
            let Some(e) = inner.executors.get_mut(key) else { return };
            if e.ended.is_some() {
                return;
            }
            e.ended = Some(Ended {
                message: message.clone(),
                exit_code,
            });
            e.stream = None;
            inner
                .tasks
                .iter()
                .filter(|((f, _), t)| *f == key.0 && t.executor.as_deref() == Some(key.1.as_str()))
                .filter(|(_, t)| !t.state.is_terminal())
                .map(|(k, _)| k.clone())
                .collect()
        };
        tracing::info!(framework_id = %key.0, executor_id = %key.1, %message, tasks = unfinished.len(), "executor ended");
        for t in &unfinished {
            self.update(
                t,
                v1::TaskState::TaskFailed,
                format!("the executor terminated: {message}"),
                None,
                v1::Reason::ExecutorTerminated,
            );
        }
        let inner = self.lock();
        self.commit_executor(inner, key);
        Self::pump(&mut self.lock());
    }

    /// The master recorded executor `key`'s end: forget it.
    pub fn executor_end_acknowledged(&self, framework_id: &str, executor_id: &str) {
        let key = (framework_id.to_string(), executor_id.to_string());
        let mut inner = self.lock();
        if inner.executors.get(&key).is_none_or(|e| e.ended.is_none()) {
            return;
        }
        let Some(e) = inner.executors.remove(&key) else { return };
        drop(inner);
        let exit = self.executor_exit_path(&key);
        let _ = std::fs::remove_file(supervisor::pids_path(&exit));
        let _ = std::fs::remove_file(exit);
        e.file.remove(&self.executor_checkpoint_path(&key));
        let marker = self.executor_sandbox(&key).join(crate::gc::FINISHED_MARKER);
        let _ = std::fs::write(marker, b"");
    }

    /// Subscribe executor `key`: a new event stream (replacing any older one), SUBSCRIBED
    /// first, then what the executor is owed: ACKNOWLEDGED for its updates already
    /// committed, LAUNCH for the tasks it does not have, KILL for kills asked for.
    pub fn subscribe(&self, key: &Key, subscribe: me::call::Subscribe) -> Result<Subscription, CallError> {
        for (field, n, max) in [
            (
                "unacknowledged_updates",
                subscribe.unacknowledged_updates.len(),
                MAX_SUBSCRIBE_UPDATES,
            ),
            (
                "unacknowledged_tasks",
                subscribe.unacknowledged_tasks.len(),
                MAX_SUBSCRIBE_TASKS,
            ),
        ] {
            if n > max {
                return Err(CallError::Invalid(format!(
                    "subscribe.{field}: {n} entries, at most {max}"
                )));
            }
        }
        // Its unacknowledged updates first, as UPDATE calls would have been.
        let mut acks = Vec::new();
        for (i, u) in subscribe.unacknowledged_updates.iter().enumerate() {
            let field = format!("subscribe.unacknowledged_updates[{i}].status");
            match self.executor_update_inner(key, &u.status, &field, false) {
                Ok(Some(ack)) => acks.push(ack),
                Ok(None) => {}
                Err(CallError::Invalid(why)) => {
                    tracing::warn!(executor_id = %key.1, why, "skipped an invalid unacknowledged update");
                    // Said on the stream too: SUBSCRIBE itself succeeds.
                    acks.push(me::Event {
                        error: Some(me::event::Error {
                            message: format!("skipped: {why}"),
                        }),
                        ..event(me::event::Type::Error)
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let has: BTreeSet<String> = subscribe
            .unacknowledged_tasks
            .iter()
            .map(|t| t.task_id.value.clone())
            .collect();
        let endpoint = self.endpoint();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut killed_undelivered = Vec::new();
        let mut launched = Vec::new();
        let id = {
            let mut inner = self.lock();
            inner.subscriptions += 1;
            let id = inner.subscriptions;
            let agent_id = inner.agent_id.clone();
            let (info, framework, shutdown) = match inner.executors.get(key) {
                Some(e) if e.ended.is_none() => (e.info.clone(), e.framework.clone(), e.shutdown),
                _ => return Err(unknown(key)),
            };
            let mut events = vec![me::Event {
                subscribed: Some(me::event::Subscribed {
                    executor_info: convert::executor_to_mesos(&key.0, &info),
                    framework_info: convert::framework_to_mesos(&v1::FrameworkInfo {
                        framework_id: key.0.clone(),
                        ..framework
                    }),
                    agent_info: m::AgentInfo {
                        hostname: endpoint.hostname.clone(),
                        id: Some(m::AgentId { value: agent_id }),
                        port: endpoint.address.rsplit(':').next().and_then(|p| p.parse().ok()),
                        resources: convert::resources_to_mesos(&endpoint.resources),
                        attributes: Vec::new(),
                    },
                    container_id: Some(m::ContainerId {
                        value: format!("{}.{}", key.0, key.1),
                        parent: None,
                    }),
                }),
                ..event(me::event::Type::Subscribed)
            }];
            events.extend(acks);
            let mine = inner
                .tasks
                .iter()
                .filter(|((f, _), t)| *f == key.0 && t.executor.as_deref() == Some(key.1.as_str()))
                .filter(|(_, t)| !t.state.is_terminal());
            for ((_, tid), t) in mine {
                let staging = t.state == v1::TaskState::TaskStaging;
                if staging && !has.contains(tid) {
                    if t.kill_requested {
                        killed_undelivered.push((key.0.clone(), tid.clone()));
                        continue;
                    }
                    events.push(launch_event(&key.0, &t.info));
                    launched.push(tid.clone());
                }
                if t.kill_requested {
                    events.push(kill_event(tid, t.info.kill_grace_period_ms));
                }
            }
            if shutdown {
                events.push(event(me::event::Type::Shutdown));
            }
            for ev in events {
                // A fresh channel of EVENT_QUEUE: more than that at once is a broken executor.
                if tx.try_send(ev).is_err() {
                    return Err(CallError::Invalid("too many events owed to this executor".into()));
                }
            }
            let Some(e) = inner.executors.get_mut(key) else {
                return Err(unknown(key));
            };
            e.stream = Some((id, tx));
            for tid in launched {
                if let Some(t) = inner.tasks.get_mut(&(key.0.clone(), tid)) {
                    t.delivered_on = Some(id);
                }
            }
            id
        };
        for t in killed_undelivered {
            self.update(
                &t,
                v1::TaskState::TaskKilled,
                "killed before its executor received it".into(),
                None,
                v1::Reason::KilledByFramework,
            );
        }
        tracing::info!(framework_id = %key.0, executor_id = %key.1, "executor subscribed");
        Ok(Subscription {
            events: rx,
            guard: SubscriptionGuard {
                tasks: self.clone(),
                key: key.clone(),
                id,
            },
        })
    }

    /// Whether executor `key` runs here and is subscribed.
    pub fn check_subscribed(&self, key: &Key) -> Result<(), CallError> {
        let inner = self.lock();
        match inner.executors.get(key) {
            Some(e) if e.ended.is_none() && e.stream.is_some() => Ok(()),
            Some(e) if e.ended.is_none() => Err(CallError::NotSubscribed(format!(
                "executor {} is not subscribed: SUBSCRIBE first",
                corral_proto::quote(&key.1)
            ))),
            _ => Err(unknown(key)),
        }
    }

    /// An UPDATE call of subscribed executor `key`: checkpointed (durable) before this
    /// returns, then sent to the master; ACKNOWLEDGED follows its commit.
    pub fn executor_update(&self, key: &Key, status: &m::TaskStatus) -> Result<(), CallError> {
        self.check_subscribed(key)?;
        if let Some(ack) = self.executor_update_inner(key, status, "update.status", true)? {
            let mut inner = self.lock();
            if let Some(e) = inner.executors.get_mut(key) {
                send(e, ack);
            }
        }
        Ok(())
    }

    /// Check and record an executor's update. Returns an ACKNOWLEDGED to send at once when
    /// the update was committed already (the task is finished or forgotten).
    fn executor_update_inner(
        &self,
        key: &Key,
        status: &m::TaskStatus,
        field: &str,
        strict: bool,
    ) -> Result<Option<me::Event>, CallError> {
        let task_id = status.task_id.value.clone();
        if task_id.is_empty() {
            return Err(CallError::Invalid(format!("{field}.task_id: missing")));
        }
        let uuid = status.uuid.clone().unwrap_or_default();
        if uuid.is_empty() || uuid.len() > MAX_UUID_BYTES {
            return Err(CallError::Invalid(format!(
                "{field}.uuid: an executor's update needs a uuid (1 to {MAX_UUID_BYTES} bytes)"
            )));
        }
        let state = convert::task_state_from_mesos(status.state);
        if matches!(
            state,
            v1::TaskState::Unspecified
                | v1::TaskState::TaskStaging
                | v1::TaskState::TaskUnreachable
                | v1::TaskState::TaskGone
                | v1::TaskState::TaskUnknown
        ) {
            return Err(CallError::Invalid(format!(
                "{field}.state: {} is not a state an executor reports",
                m::TaskState::try_from(status.state).map_or("unknown", |s| s.as_str_name())
            )));
        }
        let tkey = (key.0.clone(), task_id.clone());
        {
            let inner = self.lock();
            if inner.executors.get(key).is_none_or(|e| e.ended.is_some()) {
                return Err(unknown(key));
            }
            match inner.tasks.get(&tkey) {
                // Forgotten: its last update was committed (the task ended): acknowledged.
                None if !strict => return Ok(Some(acknowledged(&task_id, &uuid))),
                None => {
                    return Err(CallError::Invalid(format!(
                        "{field}.task_id: task {} is not known to this agent",
                        corral_proto::quote(&task_id)
                    )))
                }
                Some(t) if t.executor.as_deref() != Some(key.1.as_str()) => {
                    return Err(CallError::Invalid(format!(
                        "{field}.task_id: task {} is not a task of executor {}",
                        corral_proto::quote(&task_id),
                        corral_proto::quote(&key.1)
                    )))
                }
                Some(t) if t.outbox.statuses().any(|s| s.uuid == uuid) => return Ok(None),
                Some(t) if t.state.is_terminal() => return Ok(Some(acknowledged(&task_id, &uuid))),
                Some(_) => {}
            }
        }
        let message: String = status
            .message
            .clone()
            .unwrap_or_default()
            .chars()
            .take(MAX_STATUS_MESSAGE_CHARS)
            .collect();
        let reason = status
            .reason
            .map_or(v1::Reason::Unspecified, convert::reason_from_mesos);
        self.update_from(&tkey, state, message, None, reason, uuid, v1::Source::Executor);
        Ok(None)
    }

    /// A MESSAGE call of subscribed executor `key`: passed to the master for its framework
    /// (best effort: dropped when the agent is not attached).
    pub fn executor_message(&self, key: &Key, data: Vec<u8>) -> Result<(), CallError> {
        self.check_subscribed(key)?;
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(CallError::Invalid(format!(
                "message.data: {} bytes, at most {MAX_MESSAGE_BYTES}",
                data.len()
            )));
        }
        let link = self.lock().link.clone();
        let msg = v1::AgentMessage {
            message: Some(v1::agent_message::Message::ExecutorMessage(v1::ExecutorMessage {
                framework_id: key.0.clone(),
                executor_id: key.1.clone(),
                data,
            })),
        };
        if link.is_none_or(|l| l.try_send(msg).is_err()) {
            tracing::warn!(executor_id = %key.1, "executor message dropped: not attached to a leader");
        }
        Ok(())
    }

    /// A framework's message for executor `key` (best effort: dropped if it is not
    /// subscribed).
    pub fn framework_message(&self, framework_id: &str, executor_id: &str, data: Vec<u8>) {
        let key = (framework_id.to_string(), executor_id.to_string());
        let mut inner = self.lock();
        let Some(e) = inner.executors.get_mut(&key) else { return };
        let ev = me::Event {
            message: Some(me::event::Message { data }),
            ..event(me::event::Type::Message)
        };
        if !send(e, ev) {
            tracing::warn!(
                framework_id,
                executor_id,
                "framework message dropped: executor not subscribed"
            );
        }
    }

    /// A kill of `task`, run by executor `eid`: KILL to the executor (now if it is
    /// subscribed, else when it subscribes; a task it never received is killed at once then).
    pub(super) fn kill_on_executor(&self, task: &Key, eid: &str, grace_ms: u64) {
        let key = (task.0.clone(), eid.to_string());
        let mut inner = self.lock();
        let grace = if grace_ms > 0 {
            grace_ms
        } else {
            inner.tasks.get(task).map_or(0, |t| t.info.kill_grace_period_ms)
        };
        if let Some(e) = inner.executors.get_mut(&key) {
            send(e, kill_event(&task.1, grace));
        }
        tracing::info!(framework_id = %task.0, task_id = %task.1, executor_id = eid, "kill sent to the executor");
        self.commit(inner, task);
    }

    /// Shut executor `key` down: SHUTDOWN, then its process group killed after
    /// [`EXECUTOR_SHUTDOWN_GRACE`].
    pub fn shutdown_executor(&self, framework_id: &str, executor_id: &str) {
        let key = (framework_id.to_string(), executor_id.to_string());
        let mut inner = self.lock();
        let Some(e) = inner.executors.get_mut(&key) else { return };
        if e.ended.is_some() || e.shutdown {
            return;
        }
        e.shutdown = true;
        send(e, event(me::event::Type::Shutdown));
        let pid = e.pid;
        self.commit_executor(inner, &key);
        tracing::info!(framework_id, executor_id, ?pid, "shutting down executor");
        let tasks = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(EXECUTOR_SHUTDOWN_GRACE).await;
            let running = tasks
                .lock()
                .executors
                .get(&key)
                .and_then(|e| e.ended.is_none().then_some(e.pid).flatten());
            if let Some(pid) = running {
                signal_group(pid, libc::SIGKILL);
            }
        });
    }

    /// Shut down every executor of `framework_id` (it was torn down).
    pub fn shutdown_executors_of(&self, framework_id: &str) {
        let ids: Vec<String> = self
            .lock()
            .executors
            .keys()
            .filter(|(f, _)| f == framework_id)
            .map(|(_, e)| e.clone())
            .collect();
        for eid in ids {
            self.shutdown_executor(framework_id, &eid);
        }
    }

    /// Read back the executors an earlier run checkpointed. Returns those to watch
    /// (supervisor alive) and those that ended while the agent was away.
    pub(super) fn recover_executors(&self) -> Recovered {
        let mut watch = Vec::new();
        let mut ended = Vec::new();
        let root = self.work_dir.join("meta/frameworks");
        for f in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(f.path().join("executors"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let read = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<ExecutorCheckpoint>(&b).map_err(|e| e.to_string()));
                let cp = match read {
                    Ok(cp) => cp,
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "unreadable executor checkpoint skipped");
                        continue;
                    }
                };
                let (Ok(info), Ok(framework)) = (
                    v1::ExecutorInfo::decode(cp.info.as_slice()),
                    v1::FrameworkInfo::decode(cp.framework.as_slice()),
                ) else {
                    tracing::error!(path = %path.display(), "executor checkpoint holds undecodable messages; skipped");
                    continue;
                };
                let key = (cp.framework_id.clone(), info.executor_id.clone());
                let mut entry = ExecutorEntry {
                    info,
                    framework,
                    pid: cp.pid,
                    supervisor: cp.supervisor_pid.zip(cp.supervisor_start),
                    stream: None,
                    ended: cp.ended,
                    ended_sent: None,
                    shutdown: cp.shutdown,
                    version: 0,
                    file: checkpoint::File::default(),
                };
                if entry.ended.is_none() {
                    let exit_file = self.executor_exit_path(&key);
                    if entry.supervisor.is_none() {
                        if let Some((s, t)) = supervisor::read_pids(&exit_file) {
                            if supervisor::is_supervisor_of(s, &exit_file) {
                                entry.pid = Some(t);
                                entry.supervisor = supervisor::process_start(s).map(|(start, _)| (s, start));
                            }
                        }
                    }
                    match entry.supervisor {
                        Some((p, start)) if supervisor::process_start(p) == Some((start, false)) => {
                            watch.push((key.clone(), p, start, entry.pid))
                        }
                        _ => ended.push(key.clone()),
                    }
                }
                tracing::info!(framework_id = %key.0, executor_id = %key.1, pid = ?entry.pid, ended = entry.ended.is_some(), "executor recovered");
                self.lock().executors.insert(key, entry);
            }
        }
        (watch, ended)
    }

    /// Watch the recovered executors that still run; end those that ended meanwhile.
    pub(super) fn watch_recovered_executors(&self, (watch, ended): Recovered) {
        for (key, sup, start, pid) in watch {
            if let Some(pid) = pid {
                self.expect_subscription(&key, pid);
            }
            let tasks = self.clone();
            tokio::spawn(async move {
                supervisor::wait_exit(sup, start).await;
                tasks.executor_ended(&key, pid, None);
            });
        }
        for key in ended {
            self.executor_ended(&key, None, None);
        }
    }
}

fn kill_event(task_id: &str, grace_ms: u64) -> me::Event {
    me::Event {
        kill: Some(me::event::Kill {
            task_id: m::TaskId {
                value: task_id.to_string(),
            },
            kill_policy: (grace_ms > 0).then(|| m::KillPolicy {
                grace_period: Some(convert::duration_ms(grace_ms)),
            }),
        }),
        ..event(me::event::Type::Kill)
    }
}

/// The LAUNCH event of task `t`, as Mesos describes it.
fn launch_event(framework_id: &str, t: &v1::TaskInfo) -> me::Event {
    me::Event {
        launch: Some(me::event::Launch {
            task: convert::task_to_mesos(framework_id, t),
        }),
        ..event(me::event::Type::Launch)
    }
}

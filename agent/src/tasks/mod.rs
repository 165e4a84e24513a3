//! Running tasks and delivering their status updates.
//!
//! Files: this one holds [`Tasks`], the table of tasks and every change to it; `process`
//! starts a task under its supervisor and reports how it ended; `checkpoint` writes and
//! reads what survives a restart; `outbox` orders and resends a task's status updates.
//!
//! Each task runs as a process in its own process group, in its sandbox
//! `<work-dir>/frameworks/<fid>/tasks/<tid>/` with `stdout` and `stderr` there, and with
//! `CORRAL_TASK_ID`, `CORRAL_FRAMEWORK_ID`, `CORRAL_AGENT_ID` and `CORRAL_SANDBOX` in its
//! environment, started by a per-task [`supervisor`] so that it outlives the agent.
//! Killing a task is SIGTERM to its group, then SIGKILL to the group after the grace period;
//! when a task's main process ends, whatever it left in its group is killed too, so a
//! finished task leaves no processes behind.
//!
//! Task state lives in `<work-dir>/meta/frameworks/<fid>/tasks/<tid>.json` (with the
//! supervisor's `<tid>.exit` beside it); [`Tasks::recover`] reads it back after a restart.
//!
//! Status updates get a uuid, are checkpointed under `<work-dir>/meta/` (durably, and
//! outside the tasks' lock), and are sent to the leader one at a time per task, in order,
//! each once its checkpoint is on disk: the next goes once the previous is acknowledged, and
//! an unacknowledged one is sent again every [`RESEND_INTERVAL`] (at-least-once).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::v1;
use prost::Message;
use tokio::sync::mpsc;

use crate::isolation::Cgroups;
use crate::supervisor;

mod checkpoint;
mod executors;
mod outbox;
mod process;

use checkpoint::Checkpoint;
pub use executors::{CallError, ExecutorView, Subscription, EXECUTOR_SHUTDOWN_GRACE, HEARTBEAT_INTERVAL};
use outbox::Outbox;
pub use process::signal_group;

/// How long an unacknowledged status update waits before it is sent again.
pub const RESEND_INTERVAL: Duration = Duration::from_secs(2);
/// How long a task's supervisor may take to start the task.
const SUPERVISOR_START: Duration = Duration::from_secs(30);

type Key = (String, String);

struct TaskEntry {
    info: v1::TaskInfo,
    state: v1::TaskState,
    exit_code: Option<i32>,
    pid: Option<u32>,
    /// Status updates not yet acknowledged.
    outbox: Outbox,
    kill_requested: bool,
    /// The task's supervisor: pid and start time (see [`crate::supervisor`]).
    supervisor: Option<(u32, u64)>,
    /// Version of the newest checkpoint built, and of the newest known to be on disk.
    version: u64,
    durable: u64,
    file: checkpoint::File,
    /// The executor that runs it (`None`: a command task, run by its own supervisor).
    executor: Option<String>,
    /// The executor subscription its LAUNCH was sent on (never twice on one).
    delivered_on: Option<u64>,
}

impl TaskEntry {
    fn new(info: v1::TaskInfo) -> TaskEntry {
        TaskEntry {
            executor: info.executor.as_ref().map(|e| e.executor_id.clone()),
            delivered_on: None,
            info,
            state: v1::TaskState::TaskStaging,
            exit_code: None,
            pid: None,
            outbox: Outbox::default(),
            kill_requested: false,
            supervisor: None,
            version: 0,
            durable: 0,
            file: checkpoint::File::default(),
        }
    }
}

struct Inner {
    agent_id: String,
    tasks: BTreeMap<Key, TaskEntry>,
    /// The frameworks' executors, by (framework id, executor id).
    executors: BTreeMap<Key, executors::ExecutorEntry>,
    link: Option<mpsc::Sender<v1::AgentMessage>>,
    max_term: u64,
    /// Subscriptions handed out, for telling an old one from the current.
    subscriptions: u64,
}

/// The agent's tasks. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Mutex<Inner>>,
    work_dir: PathBuf,
    kill_grace: Duration,
    cgroups: Option<Cgroups>,
    /// The executable started as each task's supervisor.
    exe: PathBuf,
    /// Sandboxes removed by garbage collection since the agent started.
    collected: Arc<std::sync::atomic::AtomicU64>,
    /// Whether tasks may run as root (`--allow-root-tasks`).
    allow_root: bool,
    /// Where executors reach this agent (`MESOS_AGENT_ENDPOINT`), and its description for
    /// their SUBSCRIBED event; set once the endpoint is bound.
    endpoint: Arc<Mutex<executors::Endpoint>>,
}

impl Tasks {
    /// `exe` is a binary that calls [`crate::supervisor::run_if_requested`] first thing.
    pub fn new(work_dir: PathBuf, kill_grace: Duration, cgroups: Option<Cgroups>, exe: PathBuf) -> Self {
        let agent_id = std::fs::read_to_string(work_dir.join("meta/agent_id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Tasks {
            inner: Arc::new(Mutex::new(Inner {
                agent_id,
                tasks: BTreeMap::new(),
                executors: BTreeMap::new(),
                link: None,
                max_term: 0,
                subscriptions: 0,
            })),
            work_dir,
            kill_grace,
            cgroups,
            exe,
            collected: Arc::default(),
            allow_root: false,
            endpoint: Arc::default(),
        }
    }

    /// Let tasks run as root (`--allow-root-tasks`); refused by default.
    pub fn allowing_root_tasks(mut self, allow: bool) -> Self {
        self.allow_root = allow;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id the master gave this agent (empty before the first registration).
    pub fn agent_id(&self) -> String {
        self.lock().agent_id.clone()
    }

    /// Whether tasks run in cgroups with resource limits.
    pub fn isolation(&self) -> bool {
        self.cgroups.is_some()
    }

    /// What this agent advertises beyond command tasks (`AgentInfo.capabilities`): it runs
    /// frameworks' executors.
    pub fn capabilities(&self) -> Vec<String> {
        vec!["EXECUTORS".to_string()]
    }

    /// The newest leader term this agent has acted on.
    pub fn max_term(&self) -> u64 {
        self.lock().max_term
    }

    /// Whether a message of `term` may be acted on (and remember the newest term).
    pub fn accept_term(&self, term: u64) -> bool {
        let mut inner = self.lock();
        if term < inner.max_term {
            return false;
        }
        inner.max_term = term;
        true
    }

    /// Remember the id the master gave this agent.
    pub fn set_agent_id(&self, id: &str) {
        let mut inner = self.lock();
        if inner.agent_id != id {
            inner.agent_id = id.to_string();
            let meta = self.work_dir.join("meta");
            if let Err(e) = std::fs::create_dir_all(&meta)
                .and_then(|_| crate::durable::write(&meta.join("agent_id"), id.as_bytes()))
            {
                tracing::error!(error = %e, "cannot checkpoint the agent id");
            }
        }
    }

    /// The inventory sent on (re-)registration.
    pub fn inventory(&self) -> Vec<v1::TaskRecord> {
        self.lock()
            .tasks
            .iter()
            .map(|((f, id), t)| v1::TaskRecord {
                framework_id: f.clone(),
                // The id is all the master reads (see the proto).
                task: Some(v1::TaskInfo {
                    task_id: id.clone(),
                    ..Default::default()
                }),
                state: t.state as i32,
                exit_code: t.exit_code,
            })
            .collect()
    }

    /// Pids of the running tasks (for tests and /state).
    pub fn running(&self) -> Vec<(String, String, Option<u32>, i32)> {
        self.lock()
            .tasks
            .iter()
            .map(|((f, t), e)| (f.clone(), t.clone(), e.pid, e.state as i32))
            .collect()
    }

    /// A connection to the leader is up: send what is pending.
    pub fn set_link(&self, link: Option<mpsc::Sender<v1::AgentMessage>>) {
        let mut inner = self.lock();
        inner.link = link;
        for t in inner.tasks.values_mut() {
            t.outbox.reset();
        }
        for e in inner.executors.values_mut() {
            e.ended_sent = None;
        }
        Self::pump(&mut inner);
    }

    /// Send the head update of every task that is due, and the ends of executors not yet
    /// acknowledged.
    fn pump(inner: &mut Inner) {
        let Some(link) = inner.link.clone() else { return };
        let now = Instant::now();
        executors::pump_ended(inner, &link, now);
        for t in inner.tasks.values_mut() {
            let Some(head) = t.outbox.due(now, t.durable, RESEND_INTERVAL) else {
                continue;
            };
            let msg = v1::AgentMessage {
                message: Some(v1::agent_message::Message::StatusUpdate(v1::StatusUpdate {
                    status: Some(head.clone()),
                })),
            };
            if link.try_send(msg).is_err() {
                return; // the connection is full or gone; the resend timer retries
            }
            t.outbox.sent(now);
        }
    }

    /// Called every second: resend what is overdue.
    pub fn resend_due(&self) {
        Self::pump(&mut self.lock());
    }

    /// The master committed the update with this uuid.
    pub fn acknowledged(&self, framework_id: &str, task_id: &str, uuid: &[u8]) {
        let mut inner = self.lock();
        let key = (framework_id.to_string(), task_id.to_string());
        let Some(t) = inner.tasks.get_mut(&key) else { return };
        let from_executor = t
            .outbox
            .statuses()
            .next()
            .is_some_and(|h| h.uuid == uuid && h.source == v1::Source::Executor as i32);
        if !t.outbox.acknowledged(uuid) {
            return;
        }
        if let (true, Some(eid)) = (from_executor, t.executor.clone()) {
            executors::acknowledge_to_executor(&mut inner, &(key.0.clone(), eid), task_id, uuid);
        }
        let Some(t) = inner.tasks.get_mut(&key) else { return };
        if t.outbox.is_empty() && t.state.is_terminal() {
            // Forgotten: nothing of the task is left to report or recover.
            let Some(t) = inner.tasks.remove(&key) else { return };
            Self::pump(&mut inner);
            drop(inner);
            self.let_go(&key);
            let exit = self.exit_path(&key);
            let _ = std::fs::remove_file(supervisor::pids_path(&exit));
            let _ = std::fs::remove_file(exit);
            t.file.remove(&self.checkpoint_path(&key));
        } else {
            self.commit(inner, &key);
        }
    }

    /// The agent no longer holds the task: its sandbox ages from now (see `gc`).
    fn let_go(&self, key: &Key) {
        let marker = self.sandbox(key).join(crate::gc::FINISHED_MARKER);
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::debug!(path = %marker.display(), error = %e, "could not mark a sandbox finished");
        }
    }

    /// The tasks the agent holds (running, or with updates not yet acknowledged) and its
    /// executors (until the master acknowledged their end): their sandboxes are never
    /// collected.
    pub fn held(&self) -> crate::gc::Held {
        let inner = self.lock();
        crate::gc::Held {
            tasks: inner.tasks.keys().cloned().collect(),
            executors: inner.executors.keys().cloned().collect(),
        }
    }

    /// `n` more sandboxes were removed by garbage collection.
    pub fn collected(&self, n: u64) {
        self.collected.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sandboxes removed by garbage collection since the agent started.
    pub fn collected_total(&self) -> u64 {
        self.collected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The agent's work dir.
    pub fn work_dir(&self) -> &std::path::Path {
        &self.work_dir
    }

    fn checkpoint_path(&self, (f, t): &Key) -> PathBuf {
        checkpoint::path(&self.work_dir, f, t)
    }

    /// Where the task's supervisor records how it ended.
    fn exit_path(&self, key: &Key) -> PathBuf {
        self.checkpoint_path(key).with_extension("exit")
    }

    /// Checkpoint `key`'s entry as it is now, then send what became durable. The
    /// checkpoint is built under the lock (`inner`) and written after it is released: a
    /// task's fsync never holds up the others. Durable before the update it records is
    /// sent: after a power cut the agent must not have told the master of a state its
    /// checkpoint has lost.
    fn commit(&self, mut inner: std::sync::MutexGuard<'_, Inner>, key: &Key) {
        let Some(t) = inner.tasks.get_mut(key) else { return };
        t.version += 1;
        let version = t.version;
        let cp = Checkpoint {
            framework_id: key.0.clone(),
            info: t.info.encode_to_vec(),
            state: t.state as i32,
            exit_code: t.exit_code,
            pid: t.pid,
            pending: t.outbox.statuses().map(Message::encode_to_vec).collect(),
            supervisor_pid: t.supervisor.map(|s| s.0),
            supervisor_start: t.supervisor.map(|s| s.1),
            kill_requested: t.kill_requested,
        };
        let file = t.file.clone();
        drop(inner);
        if let Err(e) = file.write(&self.checkpoint_path(key), version, &cp) {
            // Sent anyway: holding the update back would stall the task's reports for good,
            // while the master still orders them and a restart reports the real exit.
            tracing::error!(task_id = %key.1, error = %e, "cannot checkpoint task");
        }
        let mut inner = self.lock();
        if let Some(t) = inner.tasks.get_mut(key) {
            t.durable = t.durable.max(version);
        }
        Self::pump(&mut inner);
    }

    /// Record a new state and queue its status update.
    fn update(&self, key: &Key, state: v1::TaskState, message: String, exit_code: Option<i32>, reason: v1::Reason) {
        let uuid = rand::random::<[u8; 16]>().to_vec();
        self.update_from(key, state, message, exit_code, reason, uuid, v1::Source::Agent);
    }

    /// Record a new state and queue its status update, with the uuid and source given (an
    /// executor's updates keep the uuid it chose: its ACKNOWLEDGED names it).
    #[allow(clippy::too_many_arguments)]
    fn update_from(
        &self,
        key: &Key,
        state: v1::TaskState,
        message: String,
        exit_code: Option<i32>,
        reason: v1::Reason,
        uuid: Vec<u8>,
        source: v1::Source,
    ) {
        let mut inner = self.lock();
        let agent_id = inner.agent_id.clone();
        let Some(t) = inner.tasks.get_mut(key) else { return };
        t.state = state;
        t.exit_code = exit_code;
        let version = t.version + 1;
        t.outbox.push(
            version,
            v1::TaskStatus {
                task_id: key.1.clone(),
                state: state as i32,
                message,
                agent_id,
                framework_id: key.0.clone(),
                uuid,
                exit_code,
                reason: reason as i32,
                source: source as i32,
                timestamp_ms: corral_proto::time::now_ms(),
            },
        );
        tracing::info!(framework_id = %key.0, task_id = %key.1, state = state.as_str_name(), ?exit_code, "task state");
        self.commit(inner, key);
    }

    /// Start a task unless it is already known (launches are idempotent by task id): a
    /// command task under its own supervisor, an executor's task by its executor (started
    /// first if it does not run yet).
    pub fn launch(&self, framework_id: String, info: v1::TaskInfo, framework: v1::FrameworkInfo) {
        let key = (framework_id.clone(), info.task_id.clone());
        {
            let mut inner = self.lock();
            if inner.tasks.contains_key(&key) {
                tracing::debug!(task_id = %info.task_id, "launch of a known task ignored");
                return;
            }
            inner.tasks.insert(key.clone(), TaskEntry::new(info.clone()));
            self.commit(inner, &key);
        }
        if let Some(executor) = info.executor.clone() {
            self.launch_on_executor(&key, executor, framework);
            return;
        }
        let tasks = self.clone();
        tokio::spawn(async move { tasks.run(key, info, framework.user).await });
    }

    fn sandbox(&self, (f, t): &Key) -> PathBuf {
        self.work_dir.join("frameworks").join(f).join("tasks").join(t)
    }

    /// Take back the tasks an earlier run of this agent checkpointed: tasks whose supervisor
    /// still runs are watched again, tasks that ended meanwhile are reported with their real
    /// exit status, and unacknowledged updates are queued again. Returns how many tasks were
    /// recovered.
    pub fn recover(&self) -> usize {
        // Executors first: their tasks' recovery needs to know whether they still run.
        let executors = self.recover_executors();
        let mut watch = Vec::new();
        let mut ended = Vec::new();
        let mut recovered = 0;
        for (path, read) in checkpoint::read_all(&self.work_dir) {
            let (cp, info) = match read {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable task checkpoint skipped");
                    continue;
                }
            };
            let key = (cp.framework_id.clone(), info.task_id.clone());
            let state = v1::TaskState::try_from(cp.state).unwrap_or(v1::TaskState::TaskStaging);
            let pending = cp
                .pending
                .iter()
                .filter_map(|b| v1::TaskStatus::decode(b.as_slice()).ok());
            let mut entry = TaskEntry {
                state,
                exit_code: cp.exit_code,
                pid: cp.pid,
                outbox: Outbox::recovered(pending),
                kill_requested: cp.kill_requested,
                supervisor: cp.supervisor_pid.zip(cp.supervisor_start),
                ..TaskEntry::new(info)
            };
            if !state.is_terminal() && entry.executor.is_some() {
                // Its executor reports on it (or fails it if the executor is gone).
            } else if !state.is_terminal() {
                let exit_file = self.exit_path(&key);
                if entry.supervisor.is_none() {
                    // The agent stopped between starting the supervisor and checkpointing it.
                    if let Some((s, t)) = supervisor::read_pids(&exit_file) {
                        if supervisor::is_supervisor_of(s, &exit_file) {
                            entry.pid = Some(t);
                            entry.supervisor = supervisor::process_start(s).map(|(start, _)| (s, start));
                        }
                    }
                }
                let alive = entry
                    .supervisor
                    .is_some_and(|(p, start)| supervisor::process_start(p) == Some((start, false)));
                match entry.supervisor {
                    Some((p, start)) if alive => watch.push((key.clone(), p, start)),
                    _ => ended.push(key.clone()),
                }
            } else if entry.outbox.is_empty() {
                let _ = std::fs::remove_file(&path);
                self.let_go(&key);
                continue;
            }
            tracing::info!(framework_id = %key.0, task_id = %key.1, state = state.as_str_name(), pid = ?entry.pid, "task recovered");
            self.lock().tasks.insert(key, entry);
            recovered += 1;
        }
        for (key, pid, start) in watch {
            let tasks = self.clone();
            tokio::spawn(async move {
                supervisor::wait_exit(pid, start).await;
                tasks.finish(&key);
            });
        }
        for key in ended {
            self.finish(&key);
        }
        // An executor's task whose executor was not recovered (its checkpoint is gone) has
        // no one to report on it.
        let orphans: Vec<Key> = {
            let inner = self.lock();
            inner
                .tasks
                .iter()
                .filter(|(_, t)| !t.state.is_terminal())
                .filter(|((f, _), t)| {
                    t.executor
                        .as_ref()
                        .is_some_and(|e| !inner.executors.contains_key(&(f.clone(), e.clone())))
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in orphans {
            self.update(
                &key,
                v1::TaskState::TaskFailed,
                "its executor was not recovered after the agent restarted".into(),
                None,
                v1::Reason::ExecutorTerminated,
            );
        }
        self.watch_recovered_executors(executors);
        recovered
    }

    /// Kill a task: SIGTERM to its group, SIGKILL after the grace period.
    pub fn kill(&self, framework_id: &str, task_id: &str, grace_ms: u64) {
        let key = (framework_id.to_string(), task_id.to_string());
        let pid = {
            let mut inner = self.lock();
            let Some(t) = inner.tasks.get_mut(&key) else { return };
            if t.state.is_terminal() {
                return;
            }
            t.kill_requested = true;
            if let Some(eid) = t.executor.clone() {
                drop(inner);
                self.kill_on_executor(&key, &eid, grace_ms);
                return;
            }
            let grace = if grace_ms > 0 {
                Duration::from_millis(grace_ms)
            } else if t.info.kill_grace_period_ms > 0 {
                Duration::from_millis(t.info.kill_grace_period_ms)
            } else {
                self.kill_grace
            };
            t.pid.map(|p| (p, grace))
        };
        let Some((pid, grace)) = pid else { return };
        tracing::info!(framework_id, task_id, pid, ?grace, "killing task");
        signal_group(pid, libc::SIGTERM);
        let tasks = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still = tasks.lock().tasks.get(&key).is_some_and(|t| !t.state.is_terminal());
            if still {
                signal_group(pid, libc::SIGKILL);
            }
        });
    }

    /// Kill every task and executor (used by `corral local` on exit).
    pub fn kill_all(&self) {
        let inner = self.lock();
        let pids: Vec<u32> = inner
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .filter_map(|t| t.pid)
            .chain(
                inner
                    .executors
                    .values()
                    .filter(|e| e.ended.is_none())
                    .filter_map(|e| e.pid),
            )
            .collect();
        drop(inner);
        for pid in pids {
            signal_group(pid, libc::SIGKILL);
        }
    }
}

//! Running tasks and delivering their status updates.
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
//! Status updates get a uuid, are checkpointed under `<work-dir>/meta/`, and are sent to the
//! leader one at a time per task, in order: the next goes once the previous is acknowledged,
//! and an unacknowledged one is sent again every [`RESEND_INTERVAL`] (at-least-once).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::convert::resources_from_wire;
use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::isolation::Cgroups;
use crate::supervisor;

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
    pending: VecDeque<v1::TaskStatus>,
    last_sent: Option<Instant>,
    kill_requested: bool,
    /// The task's supervisor: pid and start time (see [`crate::supervisor`]).
    supervisor: Option<(u32, u64)>,
}

/// What is checkpointed per task (protobuf fields as bytes, so the file stays readable by
/// newer agents).
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    framework_id: String,
    info: Vec<u8>,
    state: i32,
    exit_code: Option<i32>,
    pid: Option<u32>,
    pending: Vec<Vec<u8>>,
    #[serde(default)]
    supervisor_pid: Option<u32>,
    #[serde(default)]
    supervisor_start: Option<u64>,
    #[serde(default)]
    kill_requested: bool,
}

struct Inner {
    agent_id: String,
    tasks: BTreeMap<Key, TaskEntry>,
    link: Option<mpsc::Sender<v1::AgentMessage>>,
    max_term: u64,
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
                link: None,
                max_term: 0,
            })),
            work_dir,
            kill_grace,
            cgroups,
            exe,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn agent_id(&self) -> String {
        self.lock().agent_id.clone()
    }

    pub fn isolation(&self) -> bool {
        self.cgroups.is_some()
    }

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
            t.last_sent = None;
        }
        Self::pump(&mut inner);
    }

    /// Send the head update of every task that is due.
    fn pump(inner: &mut Inner) {
        let Some(link) = inner.link.clone() else { return };
        let now = Instant::now();
        for t in inner.tasks.values_mut() {
            let Some(head) = t.pending.front() else { continue };
            if t.last_sent.is_some_and(|s| now - s < RESEND_INTERVAL) {
                continue;
            }
            let msg = v1::AgentMessage {
                message: Some(v1::agent_message::Message::StatusUpdate(v1::StatusUpdate {
                    status: Some(head.clone()),
                })),
            };
            if link.try_send(msg).is_err() {
                return; // the connection is full or gone; the resend timer retries
            }
            t.last_sent = Some(now);
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
        if t.pending.front().is_some_and(|h| h.uuid == uuid) {
            t.pending.pop_front();
            t.last_sent = None;
            let done = t.pending.is_empty() && t.state.is_terminal();
            if done {
                inner.tasks.remove(&key);
                self.let_go(&key);
                let exit = self.exit_path(&key);
                let _ = std::fs::remove_file(supervisor::pids_path(&exit));
                let _ = std::fs::remove_file(exit);
                let _ = std::fs::remove_file(self.checkpoint_path(&key));
            } else {
                self.checkpoint(&inner, &key);
            }
            Self::pump(&mut inner);
        }
    }

    /// The agent no longer holds the task: its sandbox ages from now (see `gc`).
    fn let_go(&self, key: &Key) {
        let marker = self.sandbox(key).join(crate::gc::FINISHED_MARKER);
        if let Err(e) = std::fs::write(&marker, b"") {
            tracing::debug!(path = %marker.display(), error = %e, "could not mark a sandbox finished");
        }
    }

    /// The tasks the agent holds (running, or with updates not yet acknowledged): their
    /// sandboxes are never collected.
    pub fn held(&self) -> std::collections::BTreeSet<Key> {
        self.lock().tasks.keys().cloned().collect()
    }

    /// The agent's work dir.
    pub fn work_dir(&self) -> &std::path::Path {
        &self.work_dir
    }

    fn checkpoint_path(&self, (f, t): &Key) -> PathBuf {
        self.work_dir
            .join("meta/frameworks")
            .join(f)
            .join("tasks")
            .join(format!("{t}.json"))
    }

    /// Where the task's supervisor records how it ended.
    fn exit_path(&self, key: &Key) -> PathBuf {
        self.checkpoint_path(key).with_extension("exit")
    }

    fn checkpoint(&self, inner: &Inner, key: &Key) {
        let Some(t) = inner.tasks.get(key) else { return };
        let cp = Checkpoint {
            framework_id: key.0.clone(),
            info: t.info.encode_to_vec(),
            state: t.state as i32,
            exit_code: t.exit_code,
            pid: t.pid,
            pending: t.pending.iter().map(Message::encode_to_vec).collect(),
            supervisor_pid: t.supervisor.map(|s| s.0),
            supervisor_start: t.supervisor.map(|s| s.1),
            kill_requested: t.kill_requested,
        };
        let path = self.checkpoint_path(key);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Durable before the update it records is sent: after a power cut the agent
            // must not have told the master of a state its checkpoint has lost.
            crate::durable::write(&path, &serde_json::to_vec(&cp).map_err(std::io::Error::other)?)
        };
        if let Err(e) = write() {
            tracing::error!(task_id = %key.1, error = %e, "cannot checkpoint task");
        }
    }

    /// Record a new state and queue its status update.
    fn update(&self, key: &Key, state: v1::TaskState, message: String, exit_code: Option<i32>, reason: v1::Reason) {
        let mut inner = self.lock();
        let agent_id = inner.agent_id.clone();
        let Some(t) = inner.tasks.get_mut(key) else { return };
        t.state = state;
        t.exit_code = exit_code;
        t.pending.push_back(v1::TaskStatus {
            task_id: key.1.clone(),
            state: state as i32,
            message,
            agent_id,
            framework_id: key.0.clone(),
            uuid: rand::random::<[u8; 16]>().to_vec(),
            exit_code,
            reason: reason as i32,
            source: v1::Source::Agent as i32,
            timestamp_ms: corral_proto::time::now_ms(),
        });
        self.checkpoint(&inner, key);
        tracing::info!(framework_id = %key.0, task_id = %key.1, state = state.as_str_name(), ?exit_code, "task state");
        Self::pump(&mut inner);
    }

    /// Start a task unless it is already known (launches are idempotent by task id).
    pub fn launch(&self, framework_id: String, info: v1::TaskInfo) {
        let key = (framework_id.clone(), info.task_id.clone());
        {
            let mut inner = self.lock();
            if inner.tasks.contains_key(&key) {
                tracing::debug!(task_id = %info.task_id, "launch of a known task ignored");
                return;
            }
            inner.tasks.insert(
                key.clone(),
                TaskEntry {
                    info: info.clone(),
                    state: v1::TaskState::TaskStaging,
                    exit_code: None,
                    pid: None,
                    pending: VecDeque::new(),
                    last_sent: None,
                    kill_requested: false,
                    supervisor: None,
                },
            );
            self.checkpoint(&inner, &key);
        }
        let tasks = self.clone();
        tokio::spawn(async move { tasks.run(key, info).await });
    }

    fn sandbox(&self, (f, t): &Key) -> PathBuf {
        self.work_dir.join("frameworks").join(f).join("tasks").join(t)
    }

    async fn run(self, key: Key, info: v1::TaskInfo) {
        let sandbox = self.sandbox(&key);
        let exit_file = self.exit_path(&key);
        let (mut child, pid) = match self.spawn(&key, &info, &sandbox, &exit_file).await {
            Ok(v) => v,
            Err(e) => {
                self.update(&key, v1::TaskState::TaskFailed, e, None, v1::Reason::LaunchFailed);
                return;
            }
        };
        let supervisor = child
            .id()
            .and_then(|p| supervisor::process_start(p).map(|(start, _)| (p, start)));
        if let Some(cg) = &self.cgroups {
            let resources = resources_from_wire("resources", &info.resources).unwrap_or_default();
            if let Err(e) = cg
                .create(&cgroup_name(&key), &resources)
                .and_then(|dir| cg.add(&dir, pid))
            {
                tracing::warn!(task_id = %key.1, error = %e, "task runs without cgroup limits");
            }
        }
        let kill_now = {
            let mut inner = self.lock();
            match inner.tasks.get_mut(&key) {
                Some(t) => {
                    t.pid = Some(pid);
                    t.supervisor = supervisor;
                    t.kill_requested
                }
                None => false,
            }
        };
        self.update(
            &key,
            v1::TaskState::TaskRunning,
            format!("pid {pid}"),
            None,
            v1::Reason::Unspecified,
        );
        if kill_now {
            signal_group(pid, libc::SIGTERM);
        }
        // The supervisor is our child: waiting for it also reaps it.
        let _ = child.wait().await;
        self.finish(&key);
    }

    /// Start the task under its supervisor; returns the supervisor and the task's pid.
    async fn spawn(
        &self,
        key: &Key,
        info: &v1::TaskInfo,
        sandbox: &Path,
        exit_file: &Path,
    ) -> Result<(tokio::process::Child, u32), String> {
        use tokio::io::AsyncBufReadExt;
        std::fs::create_dir_all(sandbox).map_err(|e| format!("cannot create the sandbox: {e}"))?;
        if let Some(dir) = exit_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let stderr = std::fs::File::create(sandbox.join("stderr")).map_err(|e| format!("cannot create stderr: {e}"))?;
        let command = info.command.clone().unwrap_or_default();
        let argv: Vec<String> = if command.shell {
            let script = command.argv.first().cloned().unwrap_or_default();
            vec!["/bin/sh".into(), "-c".into(), script]
        } else {
            command.argv.clone()
        };
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err("the command is empty".to_string());
        }
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg(supervisor::ARG)
            .arg(exit_file)
            .args(&argv)
            .current_dir(sandbox)
            .envs(&command.environment)
            .env("CORRAL_TASK_ID", &key.1)
            .env("CORRAL_FRAMEWORK_ID", &key.0)
            .env("CORRAL_AGENT_ID", self.agent_id())
            .env("CORRAL_SANDBOX", sandbox)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            // A group of its own: a Ctrl-C meant for the agent does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the task supervisor {}: {e}", self.exe.display()))?;
        let Some(stdout) = child.stdout.take() else {
            return Err("the task supervisor has no stdout".to_string());
        };
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = tokio::time::timeout(SUPERVISOR_START, reader.read_line(&mut line)).await;
        if let Some(pid) = line.trim().strip_prefix("pid ").and_then(|p| p.parse().ok()) {
            return Ok((child, pid));
        }
        if read.is_err() {
            let _ = child.start_kill();
        }
        let _ = child.wait().await;
        Err(match line.trim().strip_prefix("error ") {
            Some(e) => e.to_string(),
            None => format!("the task supervisor did not start the task ({:?})", line.trim()),
        })
    }

    /// The task's supervisor has exited: report how the task ended.
    fn finish(&self, key: &Key) {
        let (pid, killed, state) = {
            let inner = self.lock();
            let Some(t) = inner.tasks.get(key) else { return };
            (t.pid, t.kill_requested, t.state)
        };
        if state.is_terminal() {
            return;
        }
        if let Some(cg) = &self.cgroups {
            cg.remove(&cg.dir(&cgroup_name(key)));
        }
        let outcome = supervisor::read_outcome(&self.exit_path(key));
        let (state, code, message, reason) = match outcome {
            None => {
                if let Some(pid) = pid {
                    // The supervisor died without cleaning up: leave nothing of the task behind.
                    signal_group(pid, libc::SIGKILL);
                }
                let message = if pid.is_some() {
                    "the task's supervisor ended without recording how the task ended"
                } else {
                    "the agent stopped before the task started"
                };
                (
                    v1::TaskState::TaskFailed,
                    None,
                    message.to_string(),
                    v1::Reason::AgentRestarted,
                )
            }
            Some(supervisor::Outcome { error: Some(e), .. }) => {
                (v1::TaskState::TaskFailed, None, e, v1::Reason::LaunchFailed)
            }
            Some(o) => {
                let code = o.code.or_else(|| o.signal.map(|sig| 128 + sig));
                match (killed, o.code) {
                    (true, _) => (
                        v1::TaskState::TaskKilled,
                        code,
                        "killed".to_string(),
                        v1::Reason::KilledByFramework,
                    ),
                    (false, Some(0)) => (
                        v1::TaskState::TaskFinished,
                        code,
                        "exited with 0".to_string(),
                        v1::Reason::CommandExited,
                    ),
                    (false, Some(c)) => (
                        v1::TaskState::TaskFailed,
                        code,
                        format!("exited with {c}"),
                        v1::Reason::CommandExited,
                    ),
                    (false, None) => (
                        v1::TaskState::TaskFailed,
                        code,
                        format!("killed by signal {}", o.signal.unwrap_or(0)),
                        v1::Reason::CommandExited,
                    ),
                }
            }
        };
        self.update(key, state, message, code, reason);
    }

    /// Take back the tasks an earlier run of this agent checkpointed: tasks whose supervisor
    /// still runs are watched again, tasks that ended meanwhile are reported with their real
    /// exit status, and unacknowledged updates are queued again. Returns how many tasks were
    /// recovered.
    pub fn recover(&self) -> usize {
        let root = self.work_dir.join("meta/frameworks");
        let mut files = Vec::new();
        for f in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for t in std::fs::read_dir(f.path().join("tasks"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = t.path();
                if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        let mut watch = Vec::new();
        let mut ended = Vec::new();
        let mut recovered = 0;
        for path in files {
            let cp = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).map_err(|e| e.to_string()))
            {
                Ok(cp) => cp,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable task checkpoint skipped");
                    continue;
                }
            };
            let Ok(info) = v1::TaskInfo::decode(cp.info.as_slice()) else {
                tracing::error!(path = %path.display(), "task checkpoint with an undecodable task skipped");
                continue;
            };
            let key = (cp.framework_id.clone(), info.task_id.clone());
            let state = v1::TaskState::try_from(cp.state).unwrap_or(v1::TaskState::TaskStaging);
            let pending: VecDeque<v1::TaskStatus> = cp
                .pending
                .iter()
                .filter_map(|b| v1::TaskStatus::decode(b.as_slice()).ok())
                .collect();
            let mut entry = TaskEntry {
                info,
                state,
                exit_code: cp.exit_code,
                pid: cp.pid,
                pending,
                last_sent: None,
                kill_requested: cp.kill_requested,
                supervisor: cp.supervisor_pid.zip(cp.supervisor_start),
            };
            if !state.is_terminal() {
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
            } else if entry.pending.is_empty() {
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

    /// Kill every task (used by `corral local` on exit).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = self
            .lock()
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .filter_map(|t| t.pid)
            .collect();
        for pid in pids {
            signal_group(pid, libc::SIGKILL);
        }
    }
}

fn cgroup_name((f, t): &Key) -> String {
    format!("{f}__{t}")
}

/// Send `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe { libc::kill(-(pid as libc::pid_t), sig) };
}

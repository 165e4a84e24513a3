//! Running tasks and delivering their status updates.
//!
//! Each task runs as a process in its own process group, in its sandbox
//! `<work-dir>/frameworks/<fid>/tasks/<tid>/` with `stdout` and `stderr` there, and with
//! `CORRAL_TASK_ID`, `CORRAL_FRAMEWORK_ID`, `CORRAL_AGENT_ID` and `CORRAL_SANDBOX` in its
//! environment. Killing a task is SIGTERM to its group, then SIGKILL to the group after the
//! grace period; when a task's main process ends, whatever it left in its group is killed
//! too, so a finished task leaves no processes behind.
//!
//! Status updates get a uuid, are checkpointed under `<work-dir>/meta/`, and are sent to the
//! leader one at a time per task, in order: the next goes once the previous is acknowledged,
//! and an unacknowledged one is sent again every [`RESEND_INTERVAL`] (at-least-once).

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corral_proto::convert::resources_from_wire;
use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::isolation::Cgroups;

/// How long an unacknowledged status update waits before it is sent again.
pub const RESEND_INTERVAL: Duration = Duration::from_secs(2);

type Key = (String, String);

struct TaskEntry {
    info: v1::TaskInfo,
    state: v1::TaskState,
    exit_code: Option<i32>,
    pid: Option<u32>,
    pending: VecDeque<v1::TaskStatus>,
    last_sent: Option<Instant>,
    kill_requested: bool,
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
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn terminal(state: v1::TaskState) -> bool {
    use v1::TaskState::*;
    matches!(
        state,
        TaskFinished | TaskFailed | TaskKilled | TaskError | TaskLost | TaskDropped | TaskGone
    )
}

impl Tasks {
    pub fn new(work_dir: PathBuf, kill_grace: Duration, cgroups: Option<Cgroups>) -> Self {
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
            if let Err(e) = std::fs::create_dir_all(&meta).and_then(|_| std::fs::write(meta.join("agent_id"), id)) {
                tracing::error!(error = %e, "cannot checkpoint the agent id");
            }
        }
    }

    /// The inventory sent on (re-)registration.
    pub fn inventory(&self) -> Vec<v1::TaskRecord> {
        self.lock()
            .tasks
            .iter()
            .map(|((f, _), t)| v1::TaskRecord {
                framework_id: f.clone(),
                task: Some(t.info.clone()),
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
            let done = t.pending.is_empty() && terminal(t.state);
            if done {
                inner.tasks.remove(&key);
                let _ = std::fs::remove_file(self.checkpoint_path(&key));
            } else {
                self.checkpoint(&inner, &key);
            }
            Self::pump(&mut inner);
        }
    }

    fn checkpoint_path(&self, (f, t): &Key) -> PathBuf {
        self.work_dir
            .join("meta/frameworks")
            .join(f)
            .join("tasks")
            .join(format!("{t}.json"))
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
        };
        let path = self.checkpoint_path(key);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&cp).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, &path)
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
            timestamp_ms: now_ms(),
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
        let child = self.spawn(&key, &info, &sandbox);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                self.update(
                    &key,
                    v1::TaskState::TaskFailed,
                    format!("could not start the task: {e}"),
                    None,
                    v1::Reason::LaunchFailed,
                );
                return;
            }
        };
        let pid = child.id();
        let cgroup = match (&self.cgroups, pid) {
            (Some(cg), Some(pid)) => {
                let resources = resources_from_wire("resources", &info.resources).unwrap_or_default();
                let name = format!("{}__{}", key.0, key.1);
                match cg
                    .create(&name, &resources)
                    .and_then(|dir| cg.add(&dir, pid).map(|_| dir))
                {
                    Ok(dir) => Some(dir),
                    Err(e) => {
                        tracing::warn!(task_id = %key.1, error = %e, "task runs without cgroup limits");
                        None
                    }
                }
            }
            _ => None,
        };
        {
            let mut inner = self.lock();
            if let Some(t) = inner.tasks.get_mut(&key) {
                t.pid = pid;
            }
        }
        self.update(
            &key,
            v1::TaskState::TaskRunning,
            format!("pid {}", pid.unwrap_or(0)),
            None,
            v1::Reason::Unspecified,
        );
        let status = child.wait().await;
        if let Some(pid) = pid {
            // Leave nothing of the task behind: kill what remains in its process group.
            signal_group(pid, libc::SIGKILL);
        }
        if let (Some(cg), Some(dir)) = (&self.cgroups, &cgroup) {
            cg.remove(dir);
        }
        let killed = self.lock().tasks.get(&key).is_some_and(|t| t.kill_requested);
        let (state, code, message, reason) = match status {
            Err(e) => (
                v1::TaskState::TaskFailed,
                None,
                format!("lost track of the task: {e}"),
                v1::Reason::CommandExited,
            ),
            Ok(s) => {
                let code = s.code().or_else(|| s.signal().map(|sig| 128 + sig));
                match (killed, s.code()) {
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
                        format!("killed by signal {}", s.signal().unwrap_or(0)),
                        v1::Reason::CommandExited,
                    ),
                }
            }
        };
        self.update(&key, state, message, code, reason);
    }

    fn spawn(&self, key: &Key, info: &v1::TaskInfo, sandbox: &PathBuf) -> std::io::Result<tokio::process::Child> {
        std::fs::create_dir_all(sandbox)?;
        let stdout = std::fs::File::create(sandbox.join("stdout"))?;
        let stderr = std::fs::File::create(sandbox.join("stderr"))?;
        let command = info.command.clone().unwrap_or_default();
        let mut cmd = if command.shell {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(command.argv.first().cloned().unwrap_or_default());
            c
        } else {
            let mut c = tokio::process::Command::new(command.argv.first().cloned().unwrap_or_default());
            c.args(command.argv.iter().skip(1));
            c
        };
        cmd.current_dir(sandbox)
            .envs(&command.environment)
            .env("CORRAL_TASK_ID", &key.1)
            .env("CORRAL_FRAMEWORK_ID", &key.0)
            .env("CORRAL_AGENT_ID", self.agent_id())
            .env("CORRAL_SANDBOX", sandbox)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so that a kill reaches everything it started.
            .process_group(0)
            .kill_on_drop(false);
        cmd.spawn()
    }

    /// Kill a task: SIGTERM to its group, SIGKILL after the grace period.
    pub fn kill(&self, framework_id: &str, task_id: &str, grace_ms: u64) {
        let key = (framework_id.to_string(), task_id.to_string());
        let pid = {
            let mut inner = self.lock();
            let Some(t) = inner.tasks.get_mut(&key) else { return };
            if terminal(t.state) {
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
            let still = tasks.lock().tasks.get(&key).is_some_and(|t| !terminal(t.state));
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
            .filter(|t| !terminal(t.state))
            .filter_map(|t| t.pid)
            .collect();
        for pid in pids {
            signal_group(pid, libc::SIGKILL);
        }
    }
}

/// Send `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe { libc::kill(-(pid as libc::pid_t), sig) };
}

//! A task's process: started by its supervisor ([`crate::supervisor`]) in its own process
//! group and sandbox, watched until the supervisor exits, then reported with how it ended.

use std::path::Path;

use corral_proto::convert::resources_from_wire;
use corral_proto::v1;

use super::{Key, Tasks, SUPERVISOR_START};
use crate::supervisor;

impl Tasks {
    pub(super) async fn run(self, key: Key, info: v1::TaskInfo, user: String) {
        let sandbox = self.sandbox(&key);
        let exit_file = self.exit_path(&key);
        let run_as = match crate::users::decide(&user, crate::users::effective_uid(), self.allow_root) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(framework_id = %key.0, task_id = %key.1, %user, reason = %e, "task refused");
                self.update(&key, v1::TaskState::TaskFailed, e, None, v1::Reason::LaunchFailed);
                return;
            }
        };
        let (mut child, pid) = match self.spawn(&key, &info, &sandbox, &exit_file, run_as.as_ref()).await {
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
        run_as: Option<&crate::users::RunAs>,
    ) -> Result<(tokio::process::Child, u32), String> {
        let command = info.command.clone().unwrap_or_default();
        let env = [
            ("CORRAL_TASK_ID", key.1.clone()),
            ("CORRAL_FRAMEWORK_ID", key.0.clone()),
            ("CORRAL_AGENT_ID", self.agent_id()),
            ("CORRAL_SANDBOX", sandbox.display().to_string()),
        ];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.clone()));
        self.spawn_supervised(&command, env.collect(), sandbox, exit_file, run_as)
            .await
    }

    /// Start `command` under a supervisor in `sandbox` (created, and given to `run_as`),
    /// with the command's environment and then `env`; returns the supervisor and the pid of
    /// the process it started (the leader of the group a kill signals).
    pub(super) async fn spawn_supervised(
        &self,
        command: &v1::CommandInfo,
        env: Vec<(String, String)>,
        sandbox: &Path,
        exit_file: &Path,
        run_as: Option<&crate::users::RunAs>,
    ) -> Result<(tokio::process::Child, u32), String> {
        use tokio::io::AsyncBufReadExt;
        std::fs::create_dir_all(sandbox).map_err(|e| format!("cannot create the sandbox: {e}"))?;
        if let Some(u) = run_as {
            // The task owns its sandbox (it writes there); its output files stay the agent's.
            std::os::unix::fs::chown(sandbox, Some(u.uid), Some(u.gid))
                .map_err(|e| format!("cannot give the sandbox to user {:?}: {e}", u.name))?;
        }
        if let Some(dir) = exit_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let stderr = std::fs::File::create(sandbox.join("stderr")).map_err(|e| format!("cannot create stderr: {e}"))?;
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
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr);
        if let Some(u) = run_as {
            cmd.env(supervisor::RUN_AS_ENV, format!("{}:{}", u.uid, u.gid))
                .env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .env("HOME", &u.home);
        }
        cmd
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
    pub(super) fn finish(&self, key: &Key) {
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
        if outcome.is_none() {
            if let Some(pid) = pid {
                // The supervisor died without cleaning up: leave nothing of the task behind.
                signal_group(pid, libc::SIGKILL);
            }
        }
        let (state, code, message, reason) = ended(outcome, pid.is_some(), killed);
        self.update(key, state, message, code, reason);
    }
}

/// How a task ended, from what its supervisor recorded (`None`: nothing), whether it had
/// started, and whether a kill was asked for: state, exit code, message, reason.
pub(super) fn ended(
    outcome: Option<supervisor::Outcome>,
    started: bool,
    killed: bool,
) -> (v1::TaskState, Option<i32>, String, v1::Reason) {
    match outcome {
        None => {
            let message = if started {
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
    }
}

pub(super) fn cgroup_name((f, t): &Key) -> String {
    format!("{f}__{t}")
}

/// Send `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    unsafe { libc::kill(-(pid as libc::pid_t), sig) };
}

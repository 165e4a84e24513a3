//! The per-task supervisor: a small process between the agent and each task, so that a task
//! outlives its agent (even a SIGKILLed one) and its real exit status is still known.
//!
//! The agent starts its own executable as `<exe> __corral-supervise <exit-file> <program>
//! [args...]` in the task's sandbox, in a process group of its own. The supervisor:
//! 1. starts the task in a further process group (the one a kill signals), with stdin from
//!    `/dev/null`, stdout to `<sandbox>/stdout` and stderr inherited (the agent points it at
//!    `<sandbox>/stderr`);
//! 2. writes `<exit-file>.pids` (`<supervisor pid> <task pid>`), then `pid <task pid>` on its
//!    stdout, a pipe the agent reads to learn that the task started;
//! 3. waits for the task, writes its exit status to `<exit-file>` (JSON, fsynced, renamed into
//!    place), kills whatever the task left in its group, and exits.
//!
//! A restarted agent finds the supervisor by pid (checked against its start time, so a
//! reused pid is not mistaken for it), waits for it to exit, and reads the exit file.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The first argument that turns a Corral binary into a task supervisor.
pub const ARG: &str = "__corral-supervise";

/// How a task ended, as the supervisor recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The exit code, when the task exited.
    pub code: Option<i32>,
    /// The signal that ended it, when it was killed by one.
    pub signal: Option<i32>,
    /// Why the task could not be started, when it was not.
    pub error: Option<String>,
}

/// The environment variable that tells a supervisor whom to start its task as (`uid:gid`).
pub const RUN_AS_ENV: &str = "CORRAL_SUPERVISOR_RUN_AS";

/// If this process was started as a task supervisor, supervise and exit; otherwise return.
/// Binaries that run agents (`corral-agent`, `corral` for `corral local`) call this first.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    let _exe = args.next();
    if args.next().as_deref() != Some(OsStr::new(ARG)) {
        return;
    }
    std::process::exit(supervise(args.collect()));
}

/// The path of the pids file next to `exit_file`.
pub fn pids_path(exit_file: &Path) -> PathBuf {
    let mut p = exit_file.as_os_str().to_owned();
    p.push(".pids");
    PathBuf::from(p)
}

/// Read an exit file; `None` when there is none (yet) or it cannot be read.
pub fn read_outcome(exit_file: &Path) -> Option<Outcome> {
    let bytes = std::fs::read(exit_file).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Read a pids file: (supervisor pid, task pid).
pub fn read_pids(exit_file: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(pids_path(exit_file)).ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u32>);
    match (it.next(), it.next()) {
        (Some(Ok(s)), Some(Ok(t))) => Some((s, t)),
        _ => None,
    }
}

/// The task could not be started: record why as its outcome, tell the agent, exit 1.
fn fail(exit_file: &Path, error: String) -> i32 {
    record(
        exit_file,
        &Outcome {
            code: None,
            signal: None,
            error: Some(error.clone()),
        },
    );
    println!("error {error}");
    1
}

fn record(exit_file: &Path, outcome: &Outcome) {
    let bytes = serde_json::to_vec(outcome).unwrap_or_default();
    if let Err(e) = crate::durable::write(exit_file, &bytes) {
        eprintln!(
            "corral supervisor: cannot record the task's exit in {}: {e}",
            exit_file.display()
        );
    }
}

fn supervise(args: Vec<OsString>) -> i32 {
    let (Some(exit_file), Some(program)) = (args.first(), args.get(1)) else {
        eprintln!("corral supervisor: usage: {ARG} EXIT-FILE PROGRAM [ARGS...]");
        return 2;
    };
    let exit_file = PathBuf::from(exit_file);
    let stdout = match std::fs::File::create("stdout") {
        Ok(f) => f,
        Err(e) => {
            return fail(&exit_file, format!("cannot create stdout in the sandbox: {e}"));
        }
    };
    let mut cmd = Command::new(program);
    cmd.args(&args[2..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // The user the agent chose for the task: set (groups dropped, then gid, then uid) in
    // the child before exec, so the supervisor itself keeps the agent's rights.
    if let Some(run_as) = std::env::var_os(RUN_AS_ENV) {
        cmd.env_remove(RUN_AS_ENV);
        let ids = run_as
            .to_str()
            .and_then(|v| v.split_once(':'))
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
        let Some((uid, gid)) = ids else {
            return fail(&exit_file, format!("{RUN_AS_ENV}: {run_as:?} is not uid:gid"));
        };
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                &exit_file,
                format!("cannot start {}: {e}", Path::new(program).display()),
            );
        }
    };
    let pid = child.id();
    if let Err(e) = crate::durable::write(
        &pids_path(&exit_file),
        format!("{} {pid}", std::process::id()).as_bytes(),
    ) {
        eprintln!("corral supervisor: cannot record pids: {e}");
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "pid {pid}");
        let _ = out.flush();
    }
    // Let go of the agent's pipe: the agent may be gone, and nothing else is written there.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdout; `null` stays open until after the call.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), libc::STDOUT_FILENO) };
    }
    let outcome = loop {
        match child.wait() {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                break Outcome {
                    code: status.code(),
                    signal: status.signal(),
                    error: None,
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Outcome {
                    code: None,
                    signal: None,
                    error: Some(format!("lost track of the task: {e}")),
                }
            }
        }
    };
    // Nothing of the task is left behind: its whole group goes with it.
    // SAFETY: kill(2) on the process group our child led; no memory is involved.
    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    record(&exit_file, &outcome);
    0
}

/// Start time of process `pid` in clock ticks since boot, and whether it is a zombie; `None`
/// when there is no such process.
pub fn process_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3 of stat), the start time is field 22.
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

/// Wait until process `pid` (which started at `start`) has exited. Uses a pidfd where the
/// kernel has them, and polls `/proc` otherwise.
pub async fn wait_exit(pid: u32, start: u64) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after opening, so the descriptor refers to the process we mean.
        match process_start(pid) {
            Some((s, false)) if s == start => {}
            _ => return,
        }
        // SAFETY: `owned` is an open pidfd that the AsyncFd owns and closes on drop, so the
        // registered descriptor stays valid and the same for the AsyncFd's whole life.
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) };
        if let Ok(afd) = registered {
            let _ = afd.readable().await;
            return;
        }
    }
    loop {
        match process_start(pid) {
            Some((s, false)) if s == start => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            _ => return,
        }
    }
}

/// Whether process `pid` is the supervisor that records into `exit_file`.
pub fn is_supervisor_of(pid: u32, exit_file: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let _exe = args.next();
    use std::os::unix::ffi::OsStrExt;
    args.next() == Some(ARG.as_bytes()) && args.next() == Some(exit_file.as_os_str().as_bytes())
}

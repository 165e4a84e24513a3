//! A slow disk under a running process, made with `strace`: every `fdatasync` the process
//! makes is held for a set time before it runs, for as long as the [`SlowDisk`] lives.
//!
//! This is fault injection from outside: the master under test is the released binary,
//! with no hook of its own. strace attaches to every thread of the process
//! (`-p PID -f`); dropping the [`SlowDisk`] interrupts strace, which detaches and lets the
//! process run on at full speed. (Attached with ptrace, the process also pays a little for
//! each system call it makes; a master at test load barely notices.)

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long strace may take to attach to every thread.
const ATTACH_DEADLINE: Duration = Duration::from_secs(10);

/// `fdatasync` held up in one process (see the module docs). Detaches on drop.
pub struct SlowDisk {
    child: Child,
    _out: tempfile::TempDir,
}

impl SlowDisk {
    /// Hold every `fdatasync` of process `pid` for `delay` (before it runs), until dropped.
    /// Returns once strace has attached. Panics if strace is missing or cannot attach.
    pub fn attach(pid: u32, delay: Duration) -> SlowDisk {
        let out = tempfile::tempdir().expect("a temp dir for strace's output");
        let stderr: PathBuf = out.path().join("strace.err");
        let err_file = std::fs::File::create(&stderr).expect("strace's stderr file");
        let child = Command::new("strace")
            .args(["-f", "-p", &pid.to_string(), "-e", "trace=fdatasync", "-e"])
            .arg(format!("inject=fdatasync:delay_enter={}", delay.as_micros()))
            .args(["-o", "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .expect("strace (Debian's strace package; .ci/run installs it)");
        let slow = SlowDisk { child, _out: out };
        // strace says "Process N attached with K threads" (or "Process N attached") once it
        // holds every thread.
        let give_up = Instant::now() + ATTACH_DEADLINE;
        loop {
            let said = std::fs::read_to_string(&stderr).unwrap_or_default();
            if said.contains("attached") {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "strace did not attach to process {pid} within {ATTACH_DEADLINE:?}: {said}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        slow
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // SIGINT: strace detaches from every thread (a held call then runs) and exits.
        // SAFETY: kill(2) with a pid this struct owns and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

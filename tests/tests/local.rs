//! local: `corral local` is the README's first command; a new user then runs a task on it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::binary;

#[test]
fn local_p1_corral_local_runs_a_task_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut local = Command::new(binary("corral"))
        .args(["local", "--data-dir", dir.path().to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = local.id() as libc::pid_t;
    let stdout = local.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let masters = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("corral local printed its masters");
        if let Some(list) = line.trim().strip_prefix("masters:") {
            break list.trim().to_string();
        }
    };
    let out = Command::new(binary("corral"))
        .args(["--masters", &masters, "run", "--", "echo", "hello"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // SAFETY: interrupting our own child, as Ctrl-C would.
    unsafe { libc::kill(pid, libc::SIGINT) };
    assert!(
        out.status.success(),
        "corral run: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("TASK_FINISHED"), "{text}");
    let stop = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = local.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > stop {
            let _ = local.kill();
            panic!("corral local did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "corral local exited with {status}");
}

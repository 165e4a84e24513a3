//! master: flags: bad input gives a one-line error and exit code 2.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn master(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral-master"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run corral-master")
}

fn assert_usage_error(args: &[&str], fragment: &str) {
    let out = master(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: exit {:?}, stderr {stderr}",
        out.status
    );
    assert!(
        stderr.contains(fragment),
        "{args:?}: stderr lacks {fragment:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn master_flags_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_usage_error(&["--id", "1", "--data-dir", d, "--bogus"], "--bogus");
    assert_usage_error(&["--data-dir", d], "--id");
    assert_usage_error(&["--id", "x", "--data-dir", d], "invalid value");
    let cases: &[(&[&str], &str)] = &[
        (&["--peers", "1=127.0.0.1"], "not host:port"),
        (&["--peers", "1:127.0.0.1:5050"], "not id=host:port"),
        (&["--peers", "1=127.0.0.1:5050,1=127.0.0.1:5051"], "duplicate id 1"),
        (&["--peers", "1=127.0.0.1:5050,2=127.0.0.1:5050"], "given twice"),
        (&["--peers", "2=127.0.0.1:5050"], "does not include"),
        (
            &["--election-timeout-ms", "30", "--heartbeat-interval-ms", "20"],
            "at least twice",
        ),
        (&["--agent-ping-timeout", "5 parsecs"], "agent-ping-timeout"),
    ];
    for (extra, fragment) in cases {
        let mut args = vec!["--id", "1", "--data-dir", d];
        args.extend_from_slice(extra);
        let out = master(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(fragment),
            "{args:?}: stderr lacks {fragment:?}: {stderr}"
        );
        if stderr.starts_with("corral-master: error:") {
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
    }
}

fn health_says_id_1(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.starts_with("HTTP/1.") && body.contains("\"id\":1")
}

#[test]
fn master_flags_data_dir_of_another_node_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // Master 1 creates the data dir; it is stopped once the dir holds its identity.
    let mut first = Command::new(env!("CARGO_BIN_EXE_corral-master"))
        .args(["--id", "1", "--listen", &listen, "--data-dir", d])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Up means *this* master answers /health as id 1 (the port alone could be anyone's).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health_says_id_1(&listen) {
        assert!(Instant::now() < deadline, "master 1 never answered /health");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // Master 2 on master 1's data dir must refuse at once; never wait for it forever.
    let mut second = Command::new(env!("CARGO_BIN_EXE_corral-master"))
        .args(["--id", "2", "--listen", &listen, "--data-dir", d])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("master 2 started on master 1's data dir instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("belongs to node 1, not node 2"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

//! cli: errors are one line on stderr with a non-zero exit, never a panic.

use std::process::{Command, Output, Stdio};

fn corral(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .env_remove("CORRAL_MASTERS")
        .stdin(Stdio::null())
        .output()
        .expect("run corral")
}

/// An address where nothing listens: a port that was just free.
fn nothing_listens() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn cli_errors_usage_exits_2() {
    for args in [
        &["frobnicate"][..],
        &["weights", "set", "prod"],
        &["members", "add", "x", "h:1"],
    ] {
        let out = corral(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn cli_errors_unreachable_cluster_is_one_line_exit_1() {
    let masters = nothing_listens();
    for args in [&["status"][..], &["weights"], &["members", "list"]] {
        let mut full = vec!["--masters", masters.as_str(), "--timeout-secs", "1"];
        full.extend_from_slice(args);
        let out = corral(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("corral: error: "), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A flag the CLI refuses before asking anyone is a usage error (issue 22: usage errors
    // exit 2).
    let out = corral(&["--masters", "nonsense", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--masters"), "{stderr}");
}

#[test]
fn cli_errors_run_without_a_cluster_gives_up_saying_what_it_waited_for() {
    let masters = nothing_listens();
    let out = corral(&["--masters", &masters, "run", "--timeout", "2s", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gave up after 2s without progress, waiting for a leader"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

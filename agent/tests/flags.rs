//! agent: flags: bad input gives one line and exit code 2.

use std::process::{Command, Stdio};

#[test]
fn agent_flags_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--work-dir", d, "--resources", "cpus:NaN"], "--resources"),
        (&["--work-dir", d, "--resources", "cpus:1;cpus:2"], "duplicate"),
        (&["--work-dir", d, "--masters", "nope"], "--masters"),
        (&["--work-dir", d, "--attributes", "rack"], "--attributes"),
        (&["--work-dir", d, "--bogus"], "--bogus"),
    ];
    for (args, fragment) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_corral-agent"))
            .args(*args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
    }
}

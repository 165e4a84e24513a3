//! operator: what an operator reads off a running cluster (logs, and more to come: the
//! operator's view).

use std::time::Duration;

use corral_tests::Cluster;

const T: Duration = Duration::from_secs(20);

/// Log files hold no terminal escape codes (a master's stderr is a file here), and
/// `--log-format json` writes one JSON object per line with a level and the event's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_logs_are_plain_off_a_terminal_and_json_lines_on_request() {
    let text = {
        let cluster = Cluster::start(1);
        cluster.wait_leader(&[1], T).await;
        cluster.log_tail(1, 1000)
    };
    assert!(text.contains("INFO"), "the master logged at info level:\n{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a log file:\n{text}");

    let cluster = Cluster::start_with(1, &["--log-format", "json"]);
    cluster.wait_leader(&[1], T).await;
    let json = cluster.log_tail(1, 1000);
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the master logged nothing");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["fields"].is_object(), "no fields: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"INFO\"")),
        "no info event among:\n{json}"
    );
}

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

/// A `corral` process killed when the test ends, whatever happens.
struct Cli(std::process::Child);

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for `child` to exit, or panic naming `what` after `deadline`.
async fn exit_of(child: &mut std::process::Child, deadline: Duration, what: &str) -> std::process::ExitStatus {
    corral_tests::wait_for(deadline, what, || {
        let status = child.try_wait().expect("try_wait");
        async move { status }
    })
    .await
}

fn corral(args: &[&str], masters: &str, out: &std::path::Path, err: &std::path::Path) -> Cli {
    let child = std::process::Command::new(corral_tests::binary("corral"))
        .args(args)
        .env("CORRAL_MASTERS", masters)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(std::fs::File::create(err).expect("stderr file"))
        .spawn()
        .expect("spawn corral");
    Cli(child)
}

/// Usage errors exit 2 and name the flag, before any master is asked: a negative number is
/// the flag's value (not clap's "did you mean `-- -1`"), and a scalar below the smallest
/// amount (0.001) is refused rather than run as zero.
#[test]
fn operator_usage_errors_exit_2_and_name_the_flag() {
    let cases: [(&[&str], &str); 7] = [
        (&["run", "--cpus", "-1", "--", "true"], "--cpus"),
        (&["run", "--cpus", "0.0001", "--", "true"], "--cpus"),
        (&["run", "--mem", "0.0004", "--", "true"], "--mem"),
        (&["run", "--count", "0", "--", "true"], "--count"),
        (&["run", "--timeout", "0s", "--", "true"], "--timeout"),
        (&["--timeout-secs", "-2", "status"], "--timeout-secs"),
        (&["tasks", "--state", "sleeping"], "--state"),
    ];
    for (args, flag) in cases {
        let out = std::process::Command::new(corral_tests::binary("corral"))
            .args(args)
            // Nothing listens there: a usage error must not need a master.
            .env("CORRAL_MASTERS", format!("127.0.0.1:{}", corral_tests::free_port()))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run corral");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "corral {args:?}: {err}");
        assert!(err.contains(flag), "corral {args:?} does not name {flag}: {err}");
    }
}

/// With no master to answer, `corral run` gives up after --timeout-secs with a message
/// (it once printed nothing for ten minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_run_with_no_master_gives_up_with_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let nobody = format!("127.0.0.1:{}", corral_tests::free_port());
    let mut run = corral(&["--timeout-secs", "2", "run", "--", "echo", "hi"], &nobody, &out, &err);
    let status = exit_of(&mut run.0, T, "corral run to give up").await;
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.starts_with("corral: error: ") && text.len() > 20, "{text}");
}

/// A task that no registered agent could ever hold is refused at once, naming the largest
/// agent; one that fits but must wait says what it waits for every few seconds; Ctrl-C on
/// a running `corral run` tears its framework down (its task is killed) and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_run_refuses_what_never_fits_and_ctrl_c_kills_its_task() {
    let mut cluster = Cluster::start(1);
    cluster.wait_leader(&[1], T).await;
    cluster.start_agent("a", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let masters = cluster.masters_arg();

    let mut big = corral(&["run", "--cpus", "64", "--", "true"], &masters, &out, &err);
    let status = exit_of(&mut big.0, T, "corral run --cpus 64 to be refused").await;
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("no registered agent can ever hold") && text.contains("cpus:2"),
        "{text}"
    );

    // Two tasks of 1.5 cpus on an agent of 2: one runs, the other waits for room.
    let args = [
        "run", "--name", "sleeper", "--count", "2", "--cpus", "1.5", "--", "sleep", "600",
    ];
    let mut sleeper = corral(&args, &masters, &out, &err);
    corral_tests::wait_for(T, "the first task to run", || async {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("sleeper-0 TASK_RUNNING")
            .then_some(())
    })
    .await;
    corral_tests::wait_for(T, "corral run to say what it waits for", || async {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        (text.contains("corral: waiting") && text.contains("an offer with room for")).then_some(())
    })
    .await;
    // SAFETY: interrupting our own child, as Ctrl-C would.
    unsafe { libc::kill(sleeper.0.id() as libc::pid_t, libc::SIGINT) };
    let status = exit_of(&mut sleeper.0, T, "corral run to stop on Ctrl-C").await;
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("tearing down framework"), "{text}");
    corral_tests::wait_for(T, "the task killed by the teardown", || async {
        let tasks = cluster.tasks().await.ok()?;
        let t = tasks.iter().find(|t| t.task_id == "sleeper-0")?;
        (t.state == corral_proto::v1::TaskState::TaskKilled as i32).then_some(())
    })
    .await;
}

/// A task's output, through the agent's sandbox: `corral run` prints what its one task
/// writes; `corral logs` shows a finished task's and a running task's output, its last
/// lines with --tail, its stderr with --stderr, and with --follow prints lines as they come
/// until the task ends. The agent serves only the sandboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_task_output_through_corral_run_and_corral_logs() {
    let mut cluster = Cluster::start(1);
    cluster.wait_leader(&[1], T).await;
    cluster.start_agent("a", "cpus:2;mem:1024", "");
    let agent = cluster.wait_agents(1, T).await.remove(0);

    let out = cluster.cli(&["run", "--name", "hello", "--", "echo", "hello"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.lines().any(|l| l == "hello"),
        "corral run did not print the task's output:\n{text}"
    );
    let several = cluster.cli(&["run", "--name", "pair", "--count", "2", "--", "true"]);
    let text = String::from_utf8_lossy(&several.stdout);
    assert!(several.status.success(), "{text}");
    assert!(
        text.contains("1/2 tasks ended (1 finished)") && text.contains("2/2 tasks ended (2 finished)"),
        "{text}"
    );
    let quiet = cluster.cli(&["run", "--name", "quiet", "--quiet", "--", "echo", "hello"]);
    let text = String::from_utf8_lossy(&quiet.stdout);
    assert!(quiet.status.success() && !text.lines().any(|l| l == "hello"), "{text}");

    let logs = |args: &[&str]| {
        let out = cluster.cli(args);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(logs(&["logs", "hello"]), "hello\n", "a finished task's stdout");

    // A task that writes, then waits for a file in its sandbox before it writes again.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "echo first; echo oops >&2; while [ ! -e go ]; do sleep 0.1; done; echo last";
    let (out, err) = (dir.path().join("run.out"), dir.path().join("run.err"));
    let _talker = corral(
        &["run", "--name", "talker", "--quiet", "--", "sh", "-c", script],
        &cluster.masters_arg(),
        &out,
        &err,
    );
    let framework_id = corral_tests::wait_for(T, "the talker to run and write", || async {
        let tasks = cluster.tasks().await.ok()?;
        let t = tasks.iter().find(|t| t.task_id == "talker")?;
        let running = t.state == corral_proto::v1::TaskState::TaskRunning as i32;
        let sandbox = cluster.sandbox("a", &t.framework_id, "talker");
        let wrote = std::fs::read_to_string(sandbox.join("stdout")).is_ok_and(|s| s == "first\n");
        (running && wrote).then(|| t.framework_id.clone())
    })
    .await;
    assert_eq!(logs(&["logs", "talker"]), "first\n", "a running task's stdout");
    assert_eq!(logs(&["logs", "--tail", "1", "talker"]), "first\n");
    assert_eq!(logs(&["logs", "--stderr", "talker"]), "oops\n");

    let (fout, ferr) = (dir.path().join("follow.out"), dir.path().join("follow.err"));
    let mut follow = corral(&["logs", "--follow", "talker"], &cluster.masters_arg(), &fout, &ferr);
    corral_tests::wait_for(T, "--follow to print what is there", || async {
        (std::fs::read_to_string(&fout).unwrap_or_default() == "first\n").then_some(())
    })
    .await;
    std::fs::write(cluster.sandbox("a", &framework_id, "talker").join("go"), b"").expect("go file");
    let status = exit_of(&mut follow.0, T, "--follow to end with the task").await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&ferr).unwrap_or_default()
    );
    assert_eq!(std::fs::read_to_string(&fout).unwrap_or_default(), "first\nlast\n");

    // The agent serves the sandboxes and nothing else.
    let code = |target: String| {
        let address = agent.address.clone();
        async move {
            corral_tests::http_request(&address, "GET", &target, b"")
                .await
                .map(|(code, _)| code)
        }
    };
    assert_eq!(code("/files/read?path=meta/agent_id".into()).await, Some(403));
    assert_eq!(code("/files/read?path=frameworks/nothing/here".into()).await, Some(404));
    assert_eq!(code("/files/read".into()).await, Some(400));
    let listing = corral_tests::http_request(
        &agent.address,
        "GET",
        &format!("/files/browse?path=frameworks/{framework_id}/tasks/talker"),
        b"",
    )
    .await
    .expect("browse answers");
    assert_eq!(listing.0, 200, "{}", listing.1);
    assert!(
        listing.1.contains("/stdout\"") && listing.1.contains("\"mode\""),
        "{}",
        listing.1
    );
}

/// Every sample of a Prometheus text answer: (metric, labels, value), parsed as Prometheus
/// parses it (a line it cannot read fails the parse).
fn prometheus(text: &str) -> Vec<(String, prometheus_parse::Labels, f64)> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (s.metric, s.labels, v)
        })
        .collect()
}

fn sample(
    samples: &[(String, prometheus_parse::Labels, f64)],
    metric: &str,
    label: Option<(&str, &str)>,
) -> Option<f64> {
    samples
        .iter()
        .find(|(m, labels, _)| m == metric && label.is_none_or(|(k, v)| labels.get(k) == Some(v)))
        .map(|(_, _, v)| *v)
}

/// `/metrics` of the leader and of an agent parse as Prometheus text and hold the cluster's
/// figures; `/state` is the real applied state, its tasks paged; unknown paths answer 404
/// and a known path with another method 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_metrics_and_state_hold_the_cluster() {
    let mut cluster = Cluster::start(1);
    cluster.wait_leader(&[1], T).await;
    cluster.start_agent("a", "cpus:2;mem:1024", "");
    let agent = cluster.wait_agents(1, T).await.remove(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let args = [
        "run", "--name", "m", "--count", "2", "--cpus", "0.5", "--mem", "64", "--", "sleep", "600",
    ];
    let _run = corral(&args, &cluster.masters_arg(), &out, &err);
    corral_tests::wait_for(T, "two running tasks", || async {
        let tasks = cluster.tasks().await.ok()?;
        let running = tasks
            .iter()
            .filter(|t| t.state == corral_proto::v1::TaskState::TaskRunning as i32)
            .count();
        (running == 2).then_some(())
    })
    .await;
    let finished = cluster.cli(&["run", "--name", "done", "--", "true"]);
    assert!(finished.status.success());

    let (code, text) = cluster.http_get(1, "/metrics").await.expect("master /metrics");
    assert_eq!(code, 200);
    let m = prometheus(&text);
    assert_eq!(
        sample(&m, "corral_agents", Some(("state", "active"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&m, "corral_frameworks", Some(("state", "connected"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&m, "corral_tasks", Some(("state", "TASK_RUNNING"))),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&m, "corral_tasks", Some(("state", "TASK_FINISHED"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&m, "corral_resources_total", Some(("resource", "cpus"))),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "corral_resources_used", Some(("resource", "cpus"))),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "corral_resources_used", Some(("resource", "mem"))),
        Some(128.0)
    );
    assert_eq!(
        sample(&m, "corral_role_dominant_share", Some(("role", "*"))),
        Some(0.5),
        "{text}"
    );
    assert!(
        sample(&m, "corral_allocation_passes_total", None).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(&m, "corral_allocation_last_pass_seconds", None).is_some(),
        "{text}"
    );
    assert!(sample(&m, "corral_offers_outstanding", None).is_some(), "{text}");
    assert!(
        sample(&m, "corral_resources_offered", Some(("resource", "cpus"))).is_some(),
        "{text}"
    );

    let (code, text) = corral_tests::http_request(&agent.address, "GET", "/metrics", b"")
        .await
        .expect("agent /metrics");
    assert_eq!(code, 200);
    let a = prometheus(&text);
    assert_eq!(
        sample(&a, "corral_agent_tasks", Some(("state", "TASK_RUNNING"))),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&a, "corral_agent_sandboxes_collected_total", None).is_some(),
        "{text}"
    );

    let (code, body) = cluster.http_get(1, "/state?tasks_limit=2").await.expect("/state");
    assert_eq!(code, 200);
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(state["agents"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(state["agents"][0]["resources"]["cpus"], 2.0, "{body}");
    assert_eq!(
        state["agents"][0]["state"], "AGENT_ACTIVE",
        "the wire's names, as corral watch: {body}"
    );
    assert_eq!(state["frameworks_total"], 2, "{body}");
    assert_eq!(state["tasks_total"], 3, "{body}");
    assert_eq!(state["tasks"].as_array().map(Vec::len), Some(2), "{body}");
    let next = state["tasks_next"].as_str().expect("a next page").to_string();
    assert!(!next.is_empty(), "{body}");
    let (_, body) = cluster
        .http_get(1, &format!("/state?tasks_limit=2&tasks_after={next}"))
        .await
        .expect("/state page 2");
    let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(page["tasks_next"], "", "{body}");

    assert_eq!(
        cluster.http_get(1, "/").await.map(|r| r.0),
        Some(307),
        "/ redirects to the UI"
    );
    assert_eq!(cluster.http_get(1, "/no/such/page").await.map(|r| r.0), Some(404));
    // Mesos' /version (clients parse `version`) and /master/redirect (307 to the leader).
    let (code, body) = cluster.http_get(1, "/version").await.expect("/version");
    assert_eq!(code, 200);
    let version: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let v = version["version"].as_str().unwrap_or_default();
    assert!(
        !v.is_empty()
            && v.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
        "{body}"
    );
    assert_eq!(cluster.http_get(1, "/master/redirect").await.map(|r| r.0), Some(307));
    let posted = corral_tests::http_request(cluster.address(1), "POST", "/health", b"").await;
    assert_eq!(posted.map(|r| r.0), Some(405));
}

/// `corral watch --json` prints the cluster's changes as they are applied: who leads, an
/// agent registering, a framework subscribing, a task's states, one JSON object a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_watch_prints_changes_as_they_happen() {
    let mut cluster = Cluster::start(1);
    cluster.wait_leader(&[1], T).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("watch.out"), dir.path().join("watch.err"));
    let _watch = corral(&["watch", "--json"], &cluster.masters_arg(), &out, &err);
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let has = |kind: &str, field: &str, value: &str| {
        lines()
            .iter()
            .any(|e| e["kind"] == kind && e[field].as_str() == Some(value))
    };
    corral_tests::wait_for(T, "the watch to name the leader", || async {
        lines()
            .iter()
            .any(|e| e["kind"] == "leader" && e["leader_id"] == 1)
            .then_some(())
    })
    .await;
    // The same events as Server-Sent Events, for browsers.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sse = tokio::net::TcpStream::connect(cluster.address(1))
        .await
        .expect("connect");
    sse.write_all(b"GET /events HTTP/1.1\r\nHost: corral\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request /events");
    // Read /events until `done` holds for what it sent, or fail after T.
    async fn read_until(sse: &mut tokio::net::TcpStream, got: &mut String, done: impl Fn(&str) -> bool) {
        let give_up = std::time::Instant::now() + T;
        while !done(got) {
            assert!(std::time::Instant::now() < give_up, "/events sent:\n{got}");
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(200), sse.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("/events closed:\n{got}"),
                Ok(Ok(n)) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(Err(e)) => panic!("/events: {e}\n{got}"),
                Err(_) => {}
            }
        }
    }
    let mut got = String::new();
    // The first event (who leads) is sent once the stream has joined: everything applied
    // after it comes too.
    read_until(&mut sse, &mut got, |g| g.contains("event: leader")).await;
    cluster.start_agent("a", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    read_until(&mut sse, &mut got, |g| {
        g.contains("event: agent") && g.contains("\"AGENT_ACTIVE\"")
    })
    .await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains("text/event-stream"),
        "{got}"
    );
    // Changes applied within 50 ms are coalesced: a task that runs for a second is seen
    // running, then finished.
    let run = cluster.cli(&["run", "--name", "watched", "--", "sleep", "1"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let seen = || {
        let task = |state: &str| {
            lines()
                .iter()
                .any(|e| e["kind"] == "task" && e["task_id"] == "watched" && e["state"] == state)
        };
        has("agent", "state", "AGENT_ACTIVE")
            && has("framework", "state", "FRAMEWORK_CONNECTED")
            && task("TASK_RUNNING")
            && task("TASK_FINISHED")
    };
    let give_up = std::time::Instant::now() + T;
    while !seen() {
        assert!(
            std::time::Instant::now() < give_up,
            "the agent, the framework and the task's states are not all in the watch:\n{}\nstderr: {}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every event of a change names the index it was read at.
    assert!(lines()
        .iter()
        .filter(|e| e["kind"] != "leader")
        .all(|e| e["index"].as_u64() > Some(0)));
}

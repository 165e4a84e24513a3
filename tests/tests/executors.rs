//! executors: frameworks' own executors on real processes: the Rust test executor
//! (`test-executor`, on the executor SDK) and one written with pymesos's executor driver,
//! through leader failovers, an agent restart, a crash, and bad input to the agent's
//! `/api/v1/executor`.

use std::path::PathBuf;
use std::time::Duration;

use corral_proto::mesos::v1 as m;
use corral_proto::mesos::v1::executor as me;
use corral_proto::v1;
use corral_proto::v1::TaskState;
use corral_tests::{binary, path_str, wait_for, Cluster, Framework};
use prost::Message;

const T: Duration = Duration::from_secs(30);

async fn cluster_with_agent(resources: &str) -> (Cluster, v1::AgentSummary) {
    let mut c = Cluster::start(3);
    c.wait_leader(&[1, 2, 3], T).await;
    c.start_agent("a1", resources, "");
    let agent = c.wait_agents(1, T).await.remove(0);
    (c, agent)
}

/// The agent's view of its executors (`/state`): (executor id, pid, subscribed).
async fn executors(agent: &v1::AgentSummary) -> Vec<(String, Option<u32>, bool)> {
    let Some((200, body)) = corral_tests::http_request(&agent.address, "GET", "/state", b"").await else {
        return Vec::new();
    };
    let state: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    state["executors"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|e| e["ended"] == false)
                .map(|e| {
                    (
                        e["executor_id"].as_str().unwrap_or_default().to_string(),
                        e["pid"].as_u64().map(|p| p as u32),
                        e["subscribed"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn subscribed_executor(agent: &v1::AgentSummary, id: &str) -> u32 {
    wait_for(T, &format!("executor {id} subscribed"), || async {
        executors(agent)
            .await
            .into_iter()
            .find(|(e, _, s)| e == id && *s)
            .and_then(|(_, pid, _)| pid)
    })
    .await
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn sandbox(cluster: &Cluster, framework_id: &str, executor_id: &str) -> PathBuf {
    cluster.agents["a1"]
        .work_dir
        .join("frameworks")
        .join(framework_id)
        .join("executors")
        .join(executor_id)
}

fn has_message(fw: &Framework, text: &str) -> bool {
    fw.messages.iter().any(|m| m.data == text.as_bytes())
}

async fn launch_one(fw: &mut Framework, task: impl Fn(&str) -> v1::TaskInfo) -> v1::Offer {
    let offer = fw.next_offers(T).await.remove(0);
    fw.accept(vec![offer.offer_id.clone()], vec![task(&offer.agent_id)], 0.0)
        .await
        .expect("accept");
    offer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_keep_their_pids_through_leader_kills_and_an_agent_restart() {
    let (mut cluster, agent) = cluster_with_agent("cpus:4;mem:1024").await;
    let exe = binary("test-executor");
    let exe = path_str(&exe).to_string();
    let mut fw = cluster.framework("exec", "*").await;
    launch_one(&mut fw, |a| Framework::executor_task("t1", a, 0.5, "e1", &[&exe])).await;
    fw.wait_state("t1", TaskState::TaskRunning, T).await;
    let pid = subscribed_executor(&agent, "e1").await;
    // A second task for the running executor: no second executor.
    launch_one(&mut fw, |a| Framework::executor_task("t2", a, 0.5, "e1", &[&exe])).await;
    fw.wait_state("t2", TaskState::TaskRunning, T).await;
    assert_eq!(executors(&agent).await.len(), 1, "one executor for both tasks");
    fw.wait_until(T, "both launches announced", |f| {
        has_message(f, "launched:t1") && has_message(f, "launched:t2")
    })
    .await;
    for round in 0..3 {
        let leader = cluster.wait_leader(&[1, 2, 3], T).await;
        cluster.kill(leader);
        let rest: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
        cluster.wait_leader(&rest, T).await;
        cluster.wait_agents(1, T).await;
        let give_up = std::time::Instant::now() + T;
        while let Err(e) = fw.resubscribe().await {
            assert!(
                std::time::Instant::now() < give_up,
                "round {round}: no re-subscription: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(alive(pid), "round {round}: the executor still runs");
        assert_eq!(
            subscribed_executor(&agent, "e1").await,
            pid,
            "round {round}: the same executor"
        );
        // Messages both ways through the new leader.
        let text = format!("ping-{round}");
        let give_up = std::time::Instant::now() + T;
        while let Err(e) = fw.message(&agent.agent_id, "e1", text.as_bytes()).await {
            assert!(
                std::time::Instant::now() < give_up,
                "round {round}: message not taken: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fw.wait_until(T, "the executor's echo", |f| has_message(f, &format!("echo:{text}")))
            .await;
        cluster.restart(leader);
    }
    // The agent dies; the executor finishes t2 while it is away: that update must arrive
    // once the agent is back and the executor has re-subscribed.
    fw.message(&agent.agent_id, "e1", b"finish-when-agent-gone:t2")
        .await
        .unwrap();
    let dir = sandbox(&cluster, &fw.id, "e1");
    wait_for(T, "the executor took the message", || async {
        dir.join("marked-t2").exists().then_some(())
    })
    .await;
    cluster.kill_agent("a1");
    wait_for(T, "the executor finished t2 with its agent away", || async {
        dir.join("sent-t2").exists().then_some(())
    })
    .await;
    assert!(alive(pid), "the executor outlives its agent");
    assert!(
        !fw.updates
            .iter()
            .any(|s| s.task_id == "t2" && s.state == TaskState::TaskFinished as i32),
        "t2 cannot have finished before the agent is back"
    );
    cluster.restart_agent("a1");
    cluster.wait_agents(1, T).await;
    assert_eq!(
        subscribed_executor(&agent, "e1").await,
        pid,
        "the restarted agent took it back"
    );
    fw.wait_state("t2", TaskState::TaskFinished, T).await;
    // And it still runs t1.
    fw.message(&agent.agent_id, "e1", b"finish:t1").await.unwrap();
    fw.wait_state("t1", TaskState::TaskFinished, T).await;
    assert_eq!(
        fw.updates
            .iter()
            .filter(|s| s.task_id == "t1" && s.state == TaskState::TaskRunning as i32)
            .count(),
        1,
        "t1 was launched once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_crashes_fails_its_tasks_and_frees_its_resources() {
    // The executor (0.1 cpus) and its task (0.9) fill the agent.
    let (cluster, agent) = cluster_with_agent("cpus:1;mem:256").await;
    let exe = binary("test-executor");
    let exe = path_str(&exe).to_string();
    let mut fw = cluster.framework("crash", "*").await;
    launch_one(&mut fw, |a| Framework::executor_task("t1", a, 0.9, "e1", &[&exe])).await;
    fw.wait_state("t1", TaskState::TaskRunning, T).await;
    subscribed_executor(&agent, "e1").await;
    let offers = fw.watch(Duration::from_secs(2)).await;
    assert!(
        offers.iter().all(|o| o.resources.iter().all(|r| r.name != "cpus")),
        "nothing left to offer while the executor and its task hold the agent: {offers:?}"
    );
    // The operator's view: the masters' /state lists the executor with what it holds, the
    // agent's /metrics counts it.
    wait_for(T, "the executor in a master's /state", || async {
        let (_, body) = cluster.http_get(1, "/state").await?;
        let state: serde_json::Value = serde_json::from_str(&body).ok()?;
        let listed = state["agents"].as_array()?.iter().any(|a| {
            a["executors"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["executor_id"] == "e1" && e["resources"]["cpus"] == 0.1)
            })
        });
        listed.then_some(())
    })
    .await;
    let (_, metrics) = corral_tests::http_request(&agent.address, "GET", "/metrics", b"")
        .await
        .expect("/metrics");
    assert!(
        metrics.contains("corral_agent_executors{state=\"subscribed\"} 1"),
        "{metrics}"
    );
    fw.message(&agent.agent_id, "e1", b"crash:3").await.unwrap();
    let failed = fw.wait_state("t1", TaskState::TaskFailed, T).await;
    assert_eq!(failed.reason, v1::Reason::ExecutorTerminated as i32, "{failed:?}");
    assert!(failed.message.contains("exited with 3"), "{}", failed.message);
    fw.wait_until(T, "FAILURE for the executor", |f| {
        f.failures
            .iter()
            .any(|x| x.executor_id == "e1" && x.exit_code == Some(3) && x.agent_id == agent.agent_id)
    })
    .await;
    // All of the agent is offered again.
    let give_up = std::time::Instant::now() + T;
    loop {
        let offers = fw.watch(Duration::from_millis(500)).await;
        let cpus: f64 = offers
            .iter()
            .flat_map(|o| &o.resources)
            .filter(|r| r.name == "cpus")
            .map(|r| match r.value {
                Some(v1::resource::Value::Scalar(v)) => v,
                _ => 0.0,
            })
            .sum();
        if (cpus - 1.0).abs() < 1e-9 {
            break;
        }
        for o in offers {
            fw.decline(vec![o.offer_id], 0.0).await.unwrap();
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the agent's 1 cpu was not offered again"
        );
    }
    // The agent forgot the executor once the master recorded its end.
    wait_for(T, "the agent forgot the executor", || async {
        executors(&agent).await.is_empty().then_some(())
    })
    .await;
}

/// POST `body` to the agent's executor API with `content_type`.
async fn post(agent: &v1::AgentSummary, content_type: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(&agent.address).await.expect("connect");
    let head = format!(
        "POST /api/v1/executor HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        agent.address,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A body over the limit may be refused before it is all sent.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(T, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn call(framework_id: &str, executor_id: &str, kind: me::call::Type) -> me::Call {
    me::Call {
        executor_id: m::ExecutorId {
            value: executor_id.into(),
        },
        framework_id: m::FrameworkId {
            value: framework_id.into(),
        },
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_executor_calls_get_a_4xx_naming_the_problem_and_the_agent_keeps_serving() {
    let (cluster, agent) = cluster_with_agent("cpus:4;mem:1024").await;
    let mut fw = cluster.framework("bad", "*").await;
    // An executor that never subscribes (it sleeps): calls for it before SUBSCRIBE.
    launch_one(&mut fw, |a| {
        Framework::executor_task("t1", a, 0.5, "sleeper", &["sleep", "600"])
    })
    .await;
    wait_for(T, "the sleeper executor started", || async {
        executors(&agent)
            .await
            .into_iter()
            .find(|(e, p, _)| e == "sleeper" && p.is_some())
    })
    .await;
    let json = "application/json";
    let pb = "application/x-protobuf";
    let fid = fw.id.clone();
    let update = |task: &str| {
        let mut c = call(&fid, "sleeper", me::call::Type::Update);
        c.update = Some(me::call::Update {
            status: m::TaskStatus {
                task_id: m::TaskId { value: task.into() },
                state: m::TaskState::TaskRunning as i32,
                uuid: Some(vec![1; 16]),
                ..Default::default()
            },
        });
        c
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            json,
            b"{\"type\": \"SUBSCRIBE\",".to_vec(),
            400,
            "malformed JSON call",
        ),
        (
            "a JSON field of the wrong type",
            json,
            br#"{"executor_id": 5}"#.to_vec(),
            400,
            "executor_id",
        ),
        (
            "malformed protobuf",
            pb,
            vec![0xff, 0xff, 0xff, 0xff],
            400,
            "malformed protobuf call",
        ),
        (
            "an unknown call type",
            json,
            format!(
                r#"{{"type": "RESTART", "framework_id": {{"value": "{fid}"}}, "executor_id": {{"value": "sleeper"}}}}"#
            )
            .into_bytes(),
            400,
            "type",
        ),
        (
            "no framework id",
            pb,
            call("", "sleeper", me::call::Type::Heartbeat).encode_to_vec(),
            400,
            "framework_id",
        ),
        (
            "an unknown executor",
            pb,
            call(&fid, "nobody", me::call::Type::Heartbeat).encode_to_vec(),
            404,
            "does not run on this agent",
        ),
        (
            "a foreign framework",
            pb,
            call("fw-someone-else", "sleeper", me::call::Type::Heartbeat).encode_to_vec(),
            404,
            "does not run on this agent",
        ),
        (
            "an update before SUBSCRIBE",
            pb,
            update("t1").encode_to_vec(),
            403,
            "SUBSCRIBE first",
        ),
        (
            "a media type not spoken",
            "text/plain",
            b"hello".to_vec(),
            415,
            "Content-Type",
        ),
        (
            "a SUBSCRIBE with too many unacknowledged updates",
            pb,
            {
                let mut c = call(&fid, "sleeper", me::call::Type::Subscribe);
                c.subscribe = Some(me::call::Subscribe {
                    unacknowledged_tasks: Vec::new(),
                    unacknowledged_updates: vec![update("t1").update.unwrap(); 1025],
                });
                c.encode_to_vec()
            },
            400,
            "subscribe.unacknowledged_updates: 1025 entries, at most 1024",
        ),
        ("a 10 MiB body", json, vec![b' '; 10 << 20], 413, "length limit"),
    ];
    for (what, content_type, body, status, needle) in cases {
        let (code, text) = post(&agent, content_type, &body).await;
        assert_eq!(code, status, "{what}: {text}");
        assert!(text.contains(needle), "{what}: {text:?} does not say {needle:?}");
    }
    // Once subscribed (as the sleeper, by hand), an update for a task that is not its own.
    // Its subscription carries an invalid unacknowledged update: skipped, and said so with
    // an ERROR event on the stream.
    let mut sub = call(&fid, "sleeper", me::call::Type::Subscribe);
    let mut bad = update("t1").update.unwrap();
    bad.status.uuid = None;
    sub.subscribe = Some(me::call::Subscribe {
        unacknowledged_tasks: Vec::new(),
        unacknowledged_updates: vec![bad],
    });
    let address = agent.address.clone();
    let (error_tx, error_rx) = tokio::sync::oneshot::channel();
    let subscription = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = sub.encode_to_vec();
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /api/v1/executor HTTP/1.1\r\nHost: {address}\r\nContent-Type: {pb}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        // Read until the ERROR event (protobuf inside RecordIO inside chunks: its text is
        // there verbatim), then keep the stream open while the test runs.
        let mut seen = Vec::new();
        let mut buf = vec![0; 4096];
        while !String::from_utf8_lossy(&seen).contains("skipped") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the subscription ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        let _ = error_tx.send(String::from_utf8_lossy(&seen).to_string());
        let _ = stream.read(&mut buf).await;
    });
    wait_for(T, "the hand-made subscription", || async {
        executors(&agent)
            .await
            .into_iter()
            .find(|(e, _, s)| e == "sleeper" && *s)
    })
    .await;
    let seen = tokio::time::timeout(T, error_rx)
        .await
        .expect("the ERROR event")
        .unwrap();
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.contains("subscribe.unacknowledged_updates[0].status.uuid"),
        "the ERROR names the field: {seen}"
    );
    let (code, text) = post(&agent, pb, &update("t-of-nobody").encode_to_vec()).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("update.status.task_id"), "{text}");
    let mut staging = update("t1");
    if let Some(u) = &mut staging.update {
        u.status.state = m::TaskState::TaskStaging as i32;
    }
    let (code, text) = post(&agent, pb, &staging.encode_to_vec()).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("update.status.state"), "{text}");
    // A real update from the hand-made executor is taken, and reaches the framework.
    let (code, text) = post(&agent, pb, &update("t1").encode_to_vec()).await;
    assert_eq!(code, 202, "{text}");
    fw.wait_state("t1", TaskState::TaskRunning, T).await;
    // The agent kept serving throughout, and is still attached.
    let (code, _) = corral_tests::http_request(&agent.address, "GET", "/health", b"")
        .await
        .expect("/health answers");
    assert_eq!(code, 200);
    cluster.wait_agents(1, T).await;
    subscription.abort();
    let log = cluster.agents["a1"].log_text();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymesos_executor_runs_tasks_exchanges_messages_and_shuts_down() {
    let python = corral_tests::pymesos_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/pymesos_executor.py");
    let (cluster, agent) = cluster_with_agent("cpus:4;mem:1024").await;
    let mut fw = cluster.framework("pymesos", "*").await;
    let argv = [path_str(&python), path_str(&script)];
    launch_one(&mut fw, |a| Framework::executor_task("t1", a, 0.5, "py", &argv)).await;
    fw.wait_state("t1", TaskState::TaskRunning, T).await;
    launch_one(&mut fw, |a| Framework::executor_task("t2", a, 0.5, "py", &argv)).await;
    fw.wait_state("t2", TaskState::TaskRunning, T).await;
    let pid = subscribed_executor(&agent, "py").await;
    fw.wait_until(T, "the pymesos executor's launch messages", |f| {
        has_message(f, "launched:t1") && has_message(f, "launched:t2")
    })
    .await;
    fw.message(&agent.agent_id, "py", b"hello there").await.unwrap();
    fw.wait_until(T, "the echo", |f| has_message(f, "echo:hello there"))
        .await;
    fw.message(&agent.agent_id, "py", b"finish:t1").await.unwrap();
    let finished = fw.wait_state("t1", TaskState::TaskFinished, T).await;
    assert_eq!(finished.source, v1::Source::Executor as i32, "{finished:?}");
    // A kill goes to the executor, which reports KILLED.
    let kill = v1::KillRequest {
        header: Some(fw.header.clone()),
        task_id: "t2".into(),
        agent_id: agent.agent_id.clone(),
        kill_grace_period_ms: 0,
    };
    fw.call(|mut c| {
        let kill = kill.clone();
        async move { c.kill(kill).await.map(|_| ()) }
    })
    .await
    .unwrap();
    fw.wait_state("t2", TaskState::TaskKilled, T).await;
    let log = sandbox(&cluster, &fw.id, "py").join("events.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(T, "ACKNOWLEDGED for both tasks' updates", || async {
        let text = read();
        (text.matches("ACKNOWLEDGED t1").count() >= 2 && text.matches("ACKNOWLEDGED t2").count() >= 2).then_some(())
    })
    .await;
    // Teardown: SHUTDOWN to the executor, which then ends.
    fw.teardown().await.unwrap();
    wait_for(T, "SHUTDOWN reached the pymesos executor", || async {
        read().contains("SHUTDOWN").then_some(())
    })
    .await;
    wait_for(T, "the executor ended", || async { (!alive(pid)).then_some(()) }).await;
    let text = read();
    for line in [
        "REGISTERED py",
        "LAUNCH t1",
        "LAUNCH t2",
        "MESSAGE hello there",
        "MESSAGE finish:t1",
        "KILL t2",
    ] {
        assert!(
            text.contains(line),
            "{line:?} missing from the executor's events:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_while_the_agent_is_away_shuts_its_executor_down_when_it_returns() {
    let (mut cluster, agent) = cluster_with_agent("cpus:4;mem:1024").await;
    let exe = binary("test-executor");
    let exe = path_str(&exe).to_string();
    let mut fw = cluster.framework("away", "*").await;
    launch_one(&mut fw, |a| Framework::executor_task("t1", a, 0.5, "e1", &[&exe])).await;
    fw.wait_state("t1", TaskState::TaskRunning, T).await;
    let pid = subscribed_executor(&agent, "e1").await;
    cluster.kill_agent("a1");
    fw.teardown().await.unwrap();
    assert!(alive(pid), "the executor runs on while its agent is away");
    cluster.restart_agent("a1");
    wait_for(T, "the executor shut down after its agent re-registered", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    // Its end reached the master: nothing of it is held any more.
    wait_for(T, "the master forgot the executor", || async {
        let (_, body) = cluster.http_get(1, "/state").await?;
        let state: serde_json::Value = serde_json::from_str(&body).ok()?;
        let held = state["agents"]
            .as_array()?
            .iter()
            .any(|a| a["executors"].as_array().is_some_and(|e| !e.is_empty()));
        (!held).then_some(())
    })
    .await;
}

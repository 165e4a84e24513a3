//! tasks: agents, frameworks, DRF offers and the task lifecycle on real processes.

use std::time::{Duration, Instant};

use corral_proto::v1;
use corral_proto::v1::TaskState;
use corral_tests::{Cluster, Framework};
use tonic::Code;

const T: Duration = Duration::from_secs(20);

fn sum_cpus(offers: &[v1::Offer]) -> f64 {
    offers
        .iter()
        .flat_map(|o| &o.resources)
        .filter(|r| r.name == "cpus")
        .map(|r| match r.value {
            Some(v1::resource::Value::Scalar(s)) => s,
            _ => 0.0,
        })
        .sum()
}

fn scalar(offer: &v1::Offer, name: &str) -> f64 {
    offer
        .resources
        .iter()
        .filter(|r| r.name == name)
        .map(|r| match r.value {
            Some(v1::resource::Value::Scalar(s)) => s,
            _ => 0.0,
        })
        .sum()
}

async fn cluster_with_agents(agents: &[(&str, &str, &str)]) -> Cluster {
    let mut c = Cluster::start(3);
    c.wait_leader(&[1, 2, 3], T).await;
    for (name, res, attrs) in agents {
        c.start_agent(name, res, attrs);
    }
    c.wait_agents(agents.len(), T).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_drf_paper_example_end_to_end() {
    // One agent with <9 CPU, 18 GB>; A runs <1 CPU, 4 GB> tasks, B <3 CPU, 1 GB>; each
    // accepts one task per offer and declines the rest with refuse_seconds 0.
    let cluster = cluster_with_agents(&[("drf", "cpus:9;mem:18432", "")]).await;
    let mut fws = [cluster.framework("A", "a").await, cluster.framework("B", "b").await];
    let shape = [(1.0, 4096.0), (3.0, 1024.0)];
    let mut launched = [0u32; 2];
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        for (i, fw) in fws.iter_mut().enumerate() {
            for offer in fw.watch(Duration::from_millis(150)).await {
                let (cpus, mem) = shape[i];
                let fits = scalar(&offer, "cpus") >= cpus && scalar(&offer, "mem") >= mem;
                if fits {
                    let id = format!("{}{}", fw.id, launched[i]);
                    let task = Framework::task(&id, &offer.agent_id, cpus, mem, &["sleep", "600"]);
                    fw.accept(vec![offer.offer_id], vec![task], 0.0).await.unwrap();
                    launched[i] += 1;
                    quiet_since = Instant::now();
                } else {
                    fw.decline(vec![offer.offer_id], 0.0).await.unwrap();
                }
            }
        }
        assert!(launched.iter().sum::<u32>() <= 5, "more tasks than fit: {launched:?}");
    }
    assert_eq!(launched, [3, 2], "A gets 3 tasks and B 2 (both at dominant share 2/3)");
    let tasks = cluster.tasks().await.unwrap();
    assert_eq!(tasks.len(), 5);
}

/// The SDK acknowledges updates off its event loop, yet by the time `run` returns after a
/// stop every update its callbacks saw is acknowledged: the same framework subscribing
/// again is sent none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_sdk_acknowledges_every_update_before_it_stops() {
    use corral_proto::scheduler::{self, Driver, Scheduler};
    const TASKS: usize = 5;
    #[derive(Default)]
    struct Batch {
        framework_id: String,
        launched: bool,
        finished: usize,
    }
    impl Scheduler for Batch {
        fn registered(&mut self, _driver: &Driver, framework_id: &str, _master: &v1::MasterInfo) {
            self.framework_id = framework_id.to_string();
        }
        fn offers(&mut self, driver: &Driver, offers: Vec<v1::Offer>) {
            for offer in offers {
                if self.launched {
                    driver.decline(vec![offer.offer_id], None);
                    continue;
                }
                self.launched = true;
                let tasks = (0..TASKS)
                    .map(|i| Framework::task(&format!("sdk-{i}"), &offer.agent_id, 0.1, 16.0, &["true"]))
                    .collect();
                driver.accept(vec![offer.offer_id], tasks, Some(0.0));
            }
        }
        fn status_update(&mut self, driver: &Driver, status: &v1::TaskStatus) {
            if status.state == TaskState::TaskFinished as i32 {
                self.finished += 1;
                if self.finished == TASKS {
                    driver.stop(false);
                }
            }
        }
    }
    let cluster = cluster_with_agents(&[("sdk", "cpus:2;mem:1024", "")]).await;
    let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
    let info = v1::FrameworkInfo {
        name: "sdk".into(),
        failover_timeout_seconds: 60.0,
        ..Default::default()
    };
    let done = tokio::time::timeout(T, scheduler::run(masters, info.clone(), Batch::default()))
        .await
        .expect("every task finishes within the deadline")
        .expect("the driver runs");
    assert_eq!(done.finished, TASKS);
    // The same framework again (its failover): nothing is left to resend.
    let mut again = Framework::subscribe(
        cluster.client(),
        v1::FrameworkInfo {
            framework_id: done.framework_id.clone(),
            ..info
        },
    )
    .await
    .unwrap();
    again.watch(Duration::from_secs(1)).await;
    let resent: Vec<_> = again.updates.iter().map(|s| (&s.task_id, s.state)).collect();
    assert!(resent.is_empty(), "acknowledged updates resent: {resent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_corral_run_prints_states_and_exits_with_the_task_code() {
    let cluster = cluster_with_agents(&[("runner", "cpus:2;mem:1024", "")]).await;
    let out = cluster.cli(&["run", "--name", "hello", "--", "sh", "-c", "echo hello; exit 3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello TASK_RUNNING"), "{stdout}");
    assert!(stdout.contains("hello TASK_FAILED (exit code 3)"), "{stdout}");
    let tasks = cluster.tasks().await.unwrap();
    let task = tasks.iter().find(|t| t.task_id == "hello").expect("the task is known");
    let sandbox = cluster.sandbox("runner", &task.framework_id, "hello");
    // `corral tasks --json` carries the documented fields and the real state.
    let out = cluster.cli(&["tasks", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hello = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "hello")
        .expect("hello listed");
    assert_eq!(hello["state"], "TASK_FAILED");
    assert_eq!(hello["framework_id"], task.framework_id.as_str());
    for key in ["name", "agent_id", "resources"] {
        assert!(hello.get(key).is_some(), "{key} missing: {hello}");
    }
    assert_eq!(std::fs::read_to_string(sandbox.join("stdout")).unwrap(), "hello\n");

    let out = cluster.cli(&["run", "--count", "5", "--", "true"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.matches("TASK_FINISHED").count(), 5, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_kill_ends_the_whole_process_group() {
    let cluster = cluster_with_agents(&[("k", "cpus:2;mem:1024", "")]).await;
    let mut fw = cluster.framework("killer", "").await;
    let offers = fw.next_offers(T).await;
    // The task starts a child of its own: both must go.
    let task = Framework::task(
        "long",
        &offers[0].agent_id,
        0.5,
        64.0,
        &["sh", "-c", "sleep 600 & sleep 600; wait"],
    );
    fw.accept(vec![offers[0].offer_id.clone()], vec![task], 5.0)
        .await
        .unwrap();
    let running = fw.wait_state("long", TaskState::TaskRunning, T).await;
    let pid: i32 = running
        .message
        .trim_start_matches("pid ")
        .parse()
        .expect("pid in the RUNNING message");
    // SAFETY: probing the process group with signal 0.
    assert_eq!(unsafe { libc::kill(-pid, 0) }, 0, "the task's group is alive");
    let req = v1::KillRequest {
        header: Some(fw.header.clone()),
        task_id: "long".into(),
        agent_id: offers[0].agent_id.clone(),
        kill_grace_period_ms: 0,
    };
    fw.call(|mut c| {
        let req = req.clone();
        async move { c.kill(req).await.map(|_| ()) }
    })
    .await
    .unwrap();
    fw.wait_state("long", TaskState::TaskKilled, T).await;
    let gone = corral_tests::wait_for(
        Duration::from_secs(5),
        "the task's process group to be gone",
        || async {
            // SAFETY: as above.
            (unsafe { libc::kill(-pid, 0) } != 0).then_some(())
        },
    )
    .await;
    assert_eq!(gone, ());
    // Killing an unknown task names the field.
    let req = v1::KillRequest {
        header: Some(fw.header.clone()),
        task_id: "nope".into(),
        ..Default::default()
    };
    let err = fw
        .call(|mut c| {
            let req = req.clone();
            async move { c.kill(req).await.map(|_| ()) }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().starts_with("task_id"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_decline_filters_suppress_and_revive() {
    let cluster = cluster_with_agents(&[("f1", "cpus:2;mem:1024", "")]).await;
    let mut fw = cluster.framework("filters", "").await;
    let offers = fw.next_offers(T).await;
    // Declined for 3 s: not offered again before that (allocation runs every second).
    let declined = Instant::now();
    fw.decline(offers.iter().map(|o| o.offer_id.clone()).collect(), 3.0)
        .await
        .unwrap();
    let again = fw.next_offers(T).await;
    let waited = declined.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "re-offered after {waited:?}, before the 3 s filter expired"
    );
    assert!(
        waited < Duration::from_secs(6),
        "the filter outlived its 3 s: {waited:?}"
    );
    // Suppress: no offers at all, even after filters expire.
    let h = Some(fw.header.clone());
    fw.call(|mut c| {
        let h = h.clone();
        async move { c.suppress(v1::SuppressRequest { header: h }).await.map(|_| ()) }
    })
    .await
    .unwrap();
    fw.decline(again.iter().map(|o| o.offer_id.clone()).collect(), 0.0)
        .await
        .unwrap();
    let during = fw.watch(Duration::from_secs(3)).await;
    assert!(during.is_empty(), "offers while suppressed: {during:?}");
    // Revive: offers resume at once, and revive clears decline filters too.
    fw.call(|mut c| {
        let h = h.clone();
        async move { c.revive(v1::ReviveRequest { header: h }).await.map(|_| ()) }
    })
    .await
    .unwrap();
    let revived = Instant::now();
    let offers = fw.next_offers(T).await;
    fw.decline(offers.iter().map(|o| o.offer_id.clone()).collect(), 600.0)
        .await
        .unwrap();
    fw.call(|mut c| {
        let h = h.clone();
        async move { c.revive(v1::ReviveRequest { header: h }).await.map(|_| ()) }
    })
    .await
    .unwrap();
    fw.next_offers(Duration::from_secs(3)).await;
    assert!(revived.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_bad_accepts_launch_nothing() {
    let cluster = cluster_with_agents(&[("acc", "cpus:2;mem:1024", "")]).await;
    let mut a = cluster.framework("a", "").await;
    let offers = a.next_offers(T).await;
    let offer = offers[0].clone();
    let task = |id: &str, cpus: f64| Framework::task(id, &offer.agent_id, cpus, 32.0, &["sleep", "60"]);
    // More than the offer holds.
    let err = a
        .accept(vec![offer.offer_id.clone()], vec![task("big", 3.0)], 0.0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("more than the offers hold"), "{}", err.message());
    // Unknown offer.
    let err = a
        .accept(vec!["O99999-1".into()], vec![task("t", 0.1)], 0.0)
        .await
        .unwrap_err();
    assert!(err.message().contains("offer_ids[0]"), "{}", err.message());
    // An offer of an earlier leader term.
    let err = a
        .accept(vec!["O0-1".into()], vec![task("t", 0.1)], 0.0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("term"), "{}", err.message());
    // Another framework's offer.
    let b = cluster.framework("b", "").await;
    let err = b
        .accept(vec![offer.offer_id.clone()], vec![task("t", 0.1)], 0.0)
        .await
        .unwrap_err();
    assert!(err.message().contains("another framework"), "{}", err.message());
    // A declined (no longer outstanding) offer.
    a.decline(vec![offer.offer_id.clone()], 0.0).await.unwrap();
    let err = a
        .accept(vec![offer.offer_id.clone()], vec![task("t", 0.1)], 0.0)
        .await
        .unwrap_err();
    assert!(err.message().contains("not an outstanding offer"), "{}", err.message());
    assert!(cluster.tasks().await.unwrap().is_empty(), "nothing was launched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p1_bad_input_is_invalid_argument_naming_the_field() {
    let cluster = cluster_with_agents(&[("bad", "cpus:2;mem:1024", "")]).await;
    let mut fw = cluster.framework("bad", "").await;
    let offer = fw.next_offers(T).await.remove(0);
    let base = Framework::task("ok", &offer.agent_id, 0.1, 32.0, &["true"]);
    let scalar = |n: &str, v: f64| v1::Resource {
        name: n.into(),
        value: Some(v1::resource::Value::Scalar(v)),
    };
    let cases: Vec<(Vec<v1::TaskInfo>, &str)> = vec![
        (
            vec![v1::TaskInfo {
                resources: vec![scalar("cpus", -1.0)],
                ..base.clone()
            }],
            "resources[0]",
        ),
        (
            vec![v1::TaskInfo {
                resources: vec![scalar("cpus", f64::NAN)],
                ..base.clone()
            }],
            "resources[0]",
        ),
        (
            vec![v1::TaskInfo {
                resources: vec![scalar("mem", 1e300)],
                ..base.clone()
            }],
            "resources[0]",
        ),
        (
            vec![v1::TaskInfo {
                task_id: "".into(),
                ..base.clone()
            }],
            "task_id",
        ),
        (vec![base.clone(), base.clone()], "tasks[1].task_id"),
        (
            vec![v1::TaskInfo {
                agent_id: "agent-unknown".into(),
                ..base.clone()
            }],
            "agent_id",
        ),
    ];
    for (tasks, field) in cases {
        let err = fw.accept(vec![offer.offer_id.clone()], tasks, 0.0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // Unknown framework and wrong stream id.
    let mut wrong = fw.header.clone();
    wrong.stream_id = "not-the-stream".into();
    let req = v1::DeclineRequest {
        header: Some(wrong),
        offer_ids: vec![],
        filters: None,
    };
    let err = fw
        .call(|mut c| {
            let req = req.clone();
            async move { c.decline(req).await.map(|_| ()) }
        })
        .await
        .unwrap_err();
    assert!(
        err.code() == Code::InvalidArgument && err.message().starts_with("header.stream_id"),
        "{err:?}"
    );
    let req = v1::ReviveRequest {
        header: Some(v1::CallHeader {
            framework_id: "fw-nope".into(),
            stream_id: "x".into(),
        }),
    };
    let err = fw
        .call(|mut c| {
            let req = req.clone();
            async move { c.revive(req).await.map(|_| ()) }
        })
        .await
        .unwrap_err();
    assert!(
        err.code() == Code::InvalidArgument && err.message().starts_with("header.framework_id"),
        "{err:?}"
    );
    // Bad filters.
    let req = v1::DeclineRequest {
        header: Some(fw.header.clone()),
        offer_ids: vec![],
        filters: Some(v1::Filters {
            refuse_seconds: Some(f64::NAN),
        }),
    };
    let err = fw
        .call(|mut c| {
            let req = req.clone();
            async move { c.decline(req).await.map(|_| ()) }
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("refuse_seconds"), "{err:?}");
    // An oversized message is refused with the limit, and the master keeps serving.
    let huge = Framework::task(
        "huge",
        &offer.agent_id,
        0.1,
        32.0,
        &[&"x".repeat(corral_proto::MAX_MESSAGE_BYTES + 1)],
    );
    let err = fw
        .accept(vec![offer.offer_id.clone()], vec![huge], 0.0)
        .await
        .unwrap_err();
    // tonic refuses the frame before any handler runs, with OUT_OF_RANGE and the limit.
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains(&corral_proto::MAX_MESSAGE_BYTES.to_string()),
        "{err:?}"
    );
    // Still serving: a valid launch goes through.
    fw.accept(vec![offer.offer_id.clone()], vec![base], 0.0).await.unwrap();
    fw.wait_state("ok", TaskState::TaskFinished, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p2_reconciliation_explicit_and_implicit() {
    let cluster = cluster_with_agents(&[("rec", "cpus:2;mem:1024", "")]).await;
    let mut fw = cluster.framework("rec", "").await;
    let offer = fw.next_offers(T).await.remove(0);
    let tasks = vec![
        Framework::task("runs", &offer.agent_id, 0.2, 32.0, &["sleep", "600"]),
        Framework::task("ends", &offer.agent_id, 0.2, 32.0, &["true"]),
    ];
    fw.accept(vec![offer.offer_id], tasks, 0.0).await.unwrap();
    fw.wait_state("runs", TaskState::TaskRunning, T).await;
    fw.wait_state("ends", TaskState::TaskFinished, T).await;
    let rec = |tasks: Vec<v1::ReconcileTask>| v1::ReconcileRequest {
        header: Some(fw.header.clone()),
        tasks,
    };
    let req = rec(vec![
        v1::ReconcileTask {
            task_id: "runs".into(),
            agent_id: String::new(),
        },
        v1::ReconcileTask {
            task_id: "ends".into(),
            agent_id: String::new(),
        },
        v1::ReconcileTask {
            task_id: "never".into(),
            agent_id: String::new(),
        },
    ]);
    let r = fw
        .call(|mut c| {
            let req = req.clone();
            async move { c.reconcile(req).await.map(tonic::Response::into_inner) }
        })
        .await
        .unwrap();
    let state_of = |id: &str| r.statuses.iter().find(|s| s.task_id == id).map(|s| s.state);
    assert_eq!(state_of("runs"), Some(TaskState::TaskRunning as i32));
    assert_eq!(state_of("ends"), Some(TaskState::TaskFinished as i32));
    assert_eq!(state_of("never"), Some(TaskState::TaskUnknown as i32));
    assert!(r
        .statuses
        .iter()
        .all(|s| s.uuid.is_empty() && s.reason == v1::Reason::Reconciliation as i32));
    let req = rec(vec![]);
    let r = fw
        .call(|mut c| {
            let req = req.clone();
            async move { c.reconcile(req).await.map(tonic::Response::into_inner) }
        })
        .await
        .unwrap();
    let ids: Vec<&str> = r.statuses.iter().map(|s| s.task_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["runs"],
        "implicit reconciliation returns the non-terminal tasks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_p2_locality_and_delay_scheduling() {
    let cluster = cluster_with_agents(&[
        ("host-a", "cpus:1;mem:512", "rack:r1"),
        ("host-b", "cpus:1;mem:512", "rack:r2"),
    ])
    .await;
    // B has room: a task preferring B lands on B.
    let out = cluster.cli(&[
        "run",
        "--name",
        "on-b",
        "--cpus",
        "0.5",
        "--prefer",
        "host-b",
        "--locality-wait",
        "10s",
        "--",
        "true",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("launching on-b on host-b"), "{stdout}");
    // Fill B, then prefer B with a 2 s wait: the task runs on A, after about 2 s.
    let mut fw = cluster.framework("filler", "").await;
    let filled = loop {
        let offers = fw.next_offers(T).await;
        let mut done = false;
        for o in offers {
            if o.hostname == "host-b" && sum_cpus(std::slice::from_ref(&o)) >= 1.0 {
                let t = Framework::task("fill", &o.agent_id, 1.0, 64.0, &["sleep", "600"]);
                fw.accept(vec![o.offer_id], vec![t], 600.0).await.unwrap();
                done = true;
            } else {
                fw.decline(vec![o.offer_id], 600.0).await.unwrap();
            }
        }
        if done {
            break fw.wait_state("fill", TaskState::TaskRunning, T).await;
        }
    };
    assert_eq!(filled.state, TaskState::TaskRunning as i32);
    let started = Instant::now();
    let out = cluster.cli(&[
        "run",
        "--name",
        "wants-b",
        "--cpus",
        "0.5",
        "--prefer",
        "rack:r2",
        "--locality-wait",
        "2s",
        "--",
        "true",
    ]);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("launching wants-b on host-a"), "{stdout}");
    assert!(
        took >= Duration::from_secs(2),
        "did not wait for the preferred agent: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2 + 6),
        "waited far longer than --locality-wait: {took:?}"
    );
}

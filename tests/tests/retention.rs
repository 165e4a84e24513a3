//! retention: finished tasks are removed from the replicated state by count, the same way on
//! every master, a new member gets the result by snapshot, and task ids free up only once
//! their task is gone (DESIGN.md "Retention", S2, S3).

use std::collections::BTreeSet;
use std::time::Duration;

use corral_proto::v1;
use corral_tests::{wait_for, Cluster, Framework};

/// Finished tasks each framework keeps in these tests.
const KEEP: usize = 5;

/// The task ids the leader lists.
async fn task_ids(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .tasks()
        .await
        .map(|ts| ts.into_iter().map(|t| t.task_id).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_p1_masters_agree_while_gc_runs_and_ids_free_up_only_when_collected() {
    let keep = KEEP.to_string();
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--max-completed-tasks-per-framework",
            &keep,
            "--snapshot-every-entries",
            "50",
        ],
    );
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await;
    cluster.start_agent("a", "cpus:4;mem:4096", "");
    cluster.wait_agents(1, Duration::from_secs(20)).await;

    // 12 tasks of one framework, one at a time so that their finish times are ordered.
    let mut fw = cluster.framework("gc", "*").await;
    for i in 0..12 {
        let offer = fw.next_offers(Duration::from_secs(20)).await.remove(0);
        let id = format!("x{i:02}");
        let task = Framework::task(&id, &offer.agent_id, 0.1, 16.0, &["true"]);
        fw.accept(vec![offer.offer_id], vec![task], 0.0).await.expect("launch");
        fw.wait_state(&id, v1::TaskState::TaskFinished, Duration::from_secs(20))
            .await;
    }
    let kept = wait_for(
        Duration::from_secs(15),
        "retention down to the newest tasks",
        || async {
            let ids = task_ids(&cluster).await;
            (ids.len() == KEEP).then_some(ids)
        },
    )
    .await;
    let expected: BTreeSet<String> = (12 - KEEP..12).map(|i| format!("x{i:02}")).collect();
    assert_eq!(kept, expected, "the newest finished tasks are kept");

    // S2 for retained tasks; a collected id is free again.
    let offer = fw.next_offers(Duration::from_secs(20)).await.remove(0);
    let retained = Framework::task("x11", &offer.agent_id, 0.1, 16.0, &["true"]);
    let refused = fw
        .accept(vec![offer.offer_id.clone()], vec![retained], 0.0)
        .await
        .expect_err("a retained task id is not launched again");
    assert!(refused.message().contains("already used"), "{}", refused.message());
    // (A refused accept used up its offer, as any accept does.)
    let offer = fw.next_offers(Duration::from_secs(20)).await.remove(0);
    let collected = Framework::task("x00", &offer.agent_id, 0.1, 16.0, &["true"]);
    fw.accept(vec![offer.offer_id], vec![collected], 0.0)
        .await
        .expect("a collected task id may be launched again");
    fw.wait_state("x00", v1::TaskState::TaskFinished, Duration::from_secs(20))
        .await;

    // Every master applied the same removals.
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let index = cluster.member(leader).await.expect("leader").applied_index;
    let (_, hash) = cluster.wait_converged(&[1, 2, 3], index, Duration::from_secs(15)).await;
    let (code, metrics) = cluster.http_get(leader, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    let collected: u64 = metrics
        .lines()
        .find(|l| l.starts_with("corral_collected_records_total") && l.contains("kind=\"tasks\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the collected tasks metric");
    assert!(collected >= 7, "{collected} tasks collected");

    // A new member catches up from a snapshot and agrees. First the log is purged behind
    // a snapshot on the leader (every 50-75 entries here): writes until it is, as many as
    // the group commit did not already make.
    let client = cluster.client();
    let mut writes = 0;
    wait_for(
        Duration::from_secs(30),
        "the leader's log purged behind a snapshot",
        || {
            writes += 1;
            let role = format!("fill{writes}");
            let (cluster, client) = (&cluster, &client);
            async move {
                cluster
                    .set_weight(client, &role, 1.0, Duration::from_secs(10))
                    .await
                    .ok()?;
                let (_, metrics) = cluster.http_get(leader, "/metrics").await?;
                let purged = corral_tests::sim::metric(&metrics, "corral_raft_purged_index", "")?;
                (purged > 0.0).then_some(())
            }
        },
    )
    .await;
    let address = cluster.start_standalone(4);
    let out = cluster.cli(&["members", "add", "4", &address]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index = cluster.member(leader).await.expect("leader").applied_index;
    let (_, with_four) = cluster
        .wait_converged(&[1, 2, 3, 4], index, Duration::from_secs(30))
        .await;
    eprintln!("hash before {hash}, with the new member {with_four}");
    let log = cluster.log_tail(4, 200);
    assert!(
        log.contains("snapshot installed"),
        "the new member got a snapshot:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_p1_an_agent_removes_old_sandboxes_and_keeps_a_running_tasks() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await;
    cluster.start_agent_with("a", "cpus:4;mem:4096", "", &["--gc-delay", "2s"]);
    cluster.wait_agents(1, Duration::from_secs(20)).await;
    let mut fw = cluster.framework("sandboxes", "*").await;
    let offer = fw.next_offers(Duration::from_secs(20)).await.remove(0);
    let tasks = vec![
        Framework::task("done", &offer.agent_id, 0.1, 16.0, &["sh", "-c", "echo output"]),
        Framework::task("long", &offer.agent_id, 0.1, 16.0, &["sleep", "120"]),
    ];
    fw.accept(vec![offer.offer_id], tasks, 0.0).await.expect("launch");
    fw.wait_state("done", v1::TaskState::TaskFinished, Duration::from_secs(20))
        .await;
    fw.wait_state("long", v1::TaskState::TaskRunning, Duration::from_secs(20))
        .await;
    let done = cluster.sandbox("a", &fw.id, "done");
    let long = cluster.sandbox("a", &fw.id, "long");
    assert!(long.exists(), "the running task has a sandbox");
    wait_for(
        Duration::from_secs(20),
        "the finished task's sandbox removed",
        || async { (!done.exists()).then_some(()) },
    )
    .await;
    // The scan that removed the finished sandbox found the running task's older still (it
    // was made at launch, before the other task ended): only being held kept it.
    assert!(
        long.join("stdout").exists(),
        "a running task's sandbox is never removed"
    );
    let tasks = cluster.tasks().await.expect("tasks");
    let state = tasks.iter().find(|t| t.task_id == "long").map(|t| t.state);
    assert_eq!(state, Some(v1::TaskState::TaskRunning as i32));
}

/// A gauge of a master's /metrics (labelled with the master's id only).
async fn gauge(cluster: &Cluster, id: u64, name: &str) -> Option<u64> {
    let (code, body) = cluster.http_get(id, "/metrics").await?;
    (code == 200).then_some(())?;
    corral_tests::sim::metric(&body, name, &format!("id=\"{id}\"")).map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_p2_every_master_snapshots_its_log_by_size() {
    // The entry count alone would never snapshot here: only the log's size can.
    let mut cluster = Cluster::start_with(3, &["--snapshot-every-mib", "1", "--snapshot-every-entries", "1000000"]);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await;
    cluster.start_agent("a", "cpus:8;mem:8192", "");
    cluster.wait_agents(1, Duration::from_secs(20)).await;
    let mut fw = cluster.framework("big", "*").await;
    // About 2 MiB of log in a few dozen entries: tasks with a 48 KiB argument.
    let padding = "p".repeat(48 * 1024);
    // One task per offer: returned resources come back as offers of their own.
    let mut launched = Vec::new();
    while launched.len() < 40 {
        for offer in fw.next_offers(Duration::from_secs(20)).await {
            let id = format!("t{}", launched.len());
            let task = Framework::task(&id, &offer.agent_id, 0.01, 1.0, &["true", &padding]);
            fw.accept(vec![offer.offer_id], vec![task], 0.0).await.expect("launch");
            launched.push(id);
        }
    }
    for id in &launched {
        fw.wait_state(id, v1::TaskState::TaskFinished, Duration::from_secs(20))
            .await;
    }
    for id in [1, 2, 3] {
        // (The purge behind it keeps the last 500 entries, more than this test writes.)
        let snapshot = wait_for(Duration::from_secs(20), "a snapshot by size", || async {
            let snapshot = gauge(&cluster, id, "corral_raft_snapshot_index").await?;
            (snapshot > 0).then_some(snapshot)
        })
        .await;
        let last = gauge(&cluster, id, "corral_raft_last_log_index")
            .await
            .expect("metrics");
        eprintln!("master {id}: last index {last}, snapshot at {snapshot}");
        assert!(snapshot <= last);
    }
}

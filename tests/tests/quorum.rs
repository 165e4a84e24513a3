//! quorum: real `corral-master` processes forming, losing and regaining a Raft quorum.

use std::time::{Duration, Instant};

use corral_tests::{wait_for, Cluster};
use tonic::Code;

const ELECTION_DEADLINE: Duration = Duration::from_secs(5);
const CONVERGE: Duration = Duration::from_secs(15);
const WRITE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p1_three_masters_elect_exactly_one_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let mut roles = Vec::new();
    for id in 1..=3 {
        let m = cluster.member(id).await.unwrap();
        assert!(m.voter, "master {id} is a voter");
        roles.push(m.role);
        let status = cluster.status_of(id).await.unwrap();
        assert_eq!(status.leader.unwrap().id, leader, "master {id} names the leader");
        assert_eq!(status.members.len(), 3);
    }
    assert_eq!(roles.iter().filter(|r| *r == "leader").count(), 1, "roles: {roles:?}");
    // The CLI's JSON has the documented shape.
    let out = cluster.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["leader"]["id"], leader);
    assert_eq!(json["members"].as_array().unwrap().len(), 3);
    for key in [
        "id",
        "address",
        "role",
        "voter",
        "last_log_index",
        "applied_index",
        "state_hash",
    ] {
        assert!(json["members"][0].get(key).is_some(), "member JSON lacks {key}: {json}");
    }
    for key in ["term", "agents", "frameworks", "tasks"] {
        assert!(json.get(key).is_some(), "status JSON lacks {key}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p1_sigkill_leader_elects_new_leader_and_keeps_writes() {
    let mut cluster = Cluster::start(3);
    let old = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    for i in 0..10 {
        cluster
            .set_weight(&client, &format!("role{i}"), 1.0 + i as f64, WRITE)
            .await
            .unwrap();
    }
    let killed_at = Instant::now();
    cluster.kill(old);
    let rest: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let new = cluster.wait_leader(&rest, ELECTION_DEADLINE).await;
    eprintln!("new leader {new} after {:?}", killed_at.elapsed());
    assert_ne!(new, old);
    let weights = cluster.weights(&cluster.client(), WRITE).await.unwrap();
    for i in 0..10 {
        assert_eq!(
            weights.get(&format!("role{i}")),
            Some(&(1.0 + i as f64)),
            "acknowledged write {i} survived"
        );
    }
    cluster
        .set_weight(&cluster.client(), "after", 3.0, WRITE)
        .await
        .unwrap();
    cluster.restart(old);
    let leader_applied = cluster.member(new).await.unwrap().applied_index;
    let (index, _) = cluster.wait_converged(&[1, 2, 3], leader_applied, CONVERGE).await;
    assert!(index >= leader_applied);
    assert_eq!(cluster.member(old).await.unwrap().role, "follower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p1_five_masters_survive_two_losses_and_refuse_without_quorum() {
    let mut cluster = Cluster::start(5);
    let leader = cluster.wait_leader(&[1, 2, 3, 4, 5], Duration::from_secs(10)).await;
    // Lose the leader and one follower: three of five remain, a majority.
    let follower = (1..=5).find(|&i| i != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(follower);
    let rest: Vec<u64> = (1..=5).filter(|&i| i != leader && i != follower).collect();
    cluster.wait_leader(&rest, ELECTION_DEADLINE).await;
    cluster
        .set_weight(&cluster.client(), "two-down", 2.0, WRITE)
        .await
        .unwrap();

    // Lose a third: no majority. A write must fail with UNAVAILABLE, not hang.
    cluster.kill(rest[0]);
    let started = Instant::now();
    let deadline = Duration::from_secs(8);
    let err = cluster
        .set_weight(&cluster.client(), "no-quorum", 2.0, deadline)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took < deadline + Duration::from_secs(3),
        "the failed write took {took:?}"
    );
    eprintln!("write without quorum failed after {took:?}: {}", err.message());

    // Restarting one master restores the majority and service.
    cluster.restart(rest[0]);
    cluster.wait_leader(&rest, Duration::from_secs(10)).await;
    cluster
        .set_weight(&cluster.client(), "restored", 4.0, WRITE)
        .await
        .unwrap();
    let weights = cluster.weights(&cluster.client(), WRITE).await.unwrap();
    assert_eq!(weights.get("two-down"), Some(&2.0));
    assert_eq!(weights.get("restored"), Some(&4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p1_sigstop_leader_steps_down_after_sigcont() {
    let mut cluster = Cluster::start(3);
    let old = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    cluster
        .set_weight(&cluster.client(), "before", 1.5, WRITE)
        .await
        .unwrap();
    cluster.pause(old);
    let rest: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    let new = cluster.wait_leader(&rest, ELECTION_DEADLINE).await;
    cluster
        .set_weight(&cluster.client(), "during", 2.5, WRITE)
        .await
        .unwrap();
    cluster.resume(old);
    let agreed = cluster.wait_leader(&[1, 2, 3], CONVERGE).await;
    assert_ne!(agreed, old, "the paused leader must not lead after resuming");
    let applied = cluster.member(new).await.unwrap().applied_index;
    cluster.wait_converged(&[1, 2, 3], applied, CONVERGE).await;
    let weights = cluster.weights(&cluster.client(), WRITE).await.unwrap();
    assert_eq!(weights.get("before"), Some(&1.5));
    assert_eq!(weights.get("during"), Some(&2.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p2_grow_to_five_and_shrink_to_three_while_writing() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let addr4 = cluster.start_standalone(4);
    let addr5 = cluster.start_standalone(5);

    // A writer runs throughout, against the three original masters.
    let client = cluster.client();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let (mut ok, mut failed, mut i) = (0u32, Vec::new(), 0u64);
        while !*stop_rx.borrow_and_update() {
            i += 1;
            let weights = vec![corral_proto::v1::WeightInfo {
                role: "flow".into(),
                weight: i as f64,
            }];
            let res = client
                .on_leader(WRITE, |ch| {
                    let weights = weights.clone();
                    async move {
                        corral_proto::v1::operator_client::OperatorClient::new(ch)
                            .set_weights(corral_proto::v1::SetWeightsRequest { weights })
                            .await
                    }
                })
                .await;
            match res {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e.message().to_string()),
            }
        }
        (ok, failed, i)
    });
    let writes_so_far = || async {
        let leader = cluster.wait_leader(&[1, 2, 3], WRITE).await;
        cluster.member(leader).await.unwrap().applied_index
    };

    let mut mark = writes_so_far().await;
    for (id, addr) in [(4u64, &addr4), (5, &addr5)] {
        let out = cluster.cli(&["members", "add", &id.to_string(), addr]);
        assert!(
            out.status.success(),
            "members add {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now = writes_so_far().await;
        assert!(now > mark, "writes kept flowing while adding master {id}");
        mark = now;
    }
    let out = cluster.cli(&["members", "list", "--json"]);
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let voters = members
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 5, "{members}");
    cluster.wait_converged(&[1, 2, 3, 4, 5], mark, CONVERGE).await;

    for id in [4u64, 5] {
        let out = cluster.cli(&["members", "remove", &id.to_string()]);
        assert!(
            out.status.success(),
            "members remove {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now = writes_so_far().await;
        assert!(now > mark, "writes kept flowing while removing master {id}");
        mark = now;
    }
    stop_tx.send(true).unwrap();
    let (ok, failed, attempted) = writer.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {attempted} writes failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 10, "only {ok} writes went through");
    for id in [4u64, 5] {
        cluster.discard(id);
    }
    let out = cluster.cli(&["members", "list", "--json"]);
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 3, "{members}");
    let weights = cluster.weights(&cluster.client(), WRITE).await.unwrap();
    assert_eq!(
        weights.get("flow"),
        Some(&(ok as f64)),
        "the last acknowledged write is the state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p1_every_master_restarted_keeps_state() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    for i in 0..5 {
        cluster
            .set_weight(&cluster.client(), &format!("r{i}"), 10.0 + i as f64, WRITE)
            .await
            .unwrap();
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let weights = cluster.weights(&cluster.client(), WRITE).await.unwrap();
    for i in 0..5 {
        assert_eq!(weights.get(&format!("r{i}")), Some(&(10.0 + i as f64)));
    }
    let leader = cluster.wait_leader(&[1, 2, 3], WRITE).await;
    let applied = cluster.member(leader).await.unwrap().applied_index;
    cluster.wait_converged(&[1, 2, 3], applied, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p2_invalid_weights_are_rejected_and_the_master_keeps_serving() {
    let cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = cluster.set_weight(&client, "prod", bad, WRITE).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "weight {bad}: {err:?}");
        assert!(
            err.message().contains("weights[0].weight"),
            "weight {bad}: {}",
            err.message()
        );
    }
    let err = cluster.set_weight(&client, "", 1.0, WRITE).await.unwrap_err();
    assert!(err.message().contains("weights[0].role"), "{}", err.message());
    // The CLI reports it in one line and exits non-zero.
    let out = cluster.cli(&["weights", "set", "prod", "-3"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("invalid argument"), "{stderr}");
    // Still serving.
    cluster.set_weight(&client, "prod", 2.0, WRITE).await.unwrap();
    let weights = wait_for(WRITE, "weights readable", || async {
        cluster.weights(&client, WRITE).await.ok()
    })
    .await;
    assert_eq!(weights.get("prod"), Some(&2.0));
}

/// While no leader is known, a follower holds a leader-only call until one is elected
/// (then answers with the redirect, or serves it if it won) instead of refusing at once:
/// clients that lost their leader learn the next one with one call, not a retry storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p2_a_follower_holds_leader_only_calls_through_an_election() {
    use corral_proto::v1;
    use corral_proto::v1::operator_client::OperatorClient;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let other = (1..=3).find(|&i| i != leader).unwrap();
    let survivor = (1..=3).find(|&i| i != leader && i != other).unwrap();
    // No quorum: the survivor stands for election again and again, and knows no leader.
    cluster.kill(leader);
    cluster.kill(other);
    wait_for(Duration::from_secs(10), "the survivor to know no leader", || async {
        let s = cluster.status_of(survivor).await?;
        s.leader.is_none().then_some(())
    })
    .await;
    let channel = corral_proto::client::channel(cluster.address(survivor), Duration::from_secs(5)).unwrap();
    let ask = || {
        let mut client = OperatorClient::new(channel.clone());
        async move { client.list_members(v1::ListMembersRequest {}).await }
    };
    // Held for the whole hold, then refused without a leader to name.
    let started = Instant::now();
    let err = ask().await.unwrap_err();
    let held = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(corral_proto::client::leader_hint(&err), None);
    assert!(held >= Duration::from_millis(1400), "refused after only {held:?}");
    // The quorum comes back during a held call: that call gets the outcome of the election.
    cluster.restart(other);
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        let answer = ask().await;
        let waited = started.elapsed();
        let elected = match &answer {
            Ok(_) => true,
            Err(e) => corral_proto::client::leader_hint(e).is_some(),
        };
        if elected {
            // Calls follow each other without a pause, so the election ended during one.
            assert!(
                waited >= Duration::from_millis(20),
                "answered after {waited:?}: {answer:?}"
            );
            break;
        }
        assert!(Instant::now() < give_up, "no leader elected: {answer:?}");
    }
}

/// The value of counter `name` in master `id`'s `/metrics` (0 if absent or unreadable).
async fn counter(cluster: &Cluster, id: u64, name: &str) -> f64 {
    let Some((200, text)) = cluster.http_get(id, "/metrics").await else {
        return 0.0;
    };
    corral_tests::sim::metric(&text, name, "").unwrap_or(0.0)
}

/// A leader whose disk is slow (every fsync held 400 ms, far past the 120 ms lease) keeps
/// leading, with no election: its Raft core does not wait for its own appends' flushes and
/// keeps sending heartbeats (and where the core does wait on the disk, for a vote or a purge
/// point, the leader vouches for itself with keepalives). A leader whose disk is wedged (one
/// fsync held 7 s) stops sending AppendEntries once its flush has been outstanding for
/// `CORE_STALL_LIMIT` (1 s) and is replaced well before its disk comes back, and its
/// `/health` turns to 503 once the flush has been stuck for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_p1_a_leader_on_a_slow_disk_keeps_leading_and_a_wedged_one_is_replaced() {
    use corral_tests::slowdisk::SlowDisk;
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    cluster.set_weight(&client, "before", 1.0, WRITE).await.unwrap();
    let term = cluster.member(leader).await.unwrap().term;
    let pid = cluster.masters[&leader].pid().unwrap();

    let slow = SlowDisk::attach(pid, Duration::from_millis(400));
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        cluster
            .set_weight(&client, &format!("slow{writes}"), 1.0, WRITE)
            .await
            .unwrap();
        writes += 1;
        eprintln!("write {writes} on the slow disk took {:?}", t.elapsed());
    }
    // The disk was slow indeed: every write waited for at least one held fsync.
    let per_write = started.elapsed() / writes;
    assert!(
        per_write >= Duration::from_millis(400),
        "{writes} writes, {per_write:?} each"
    );
    for id in 1..=3 {
        let m = cluster.member(id).await.unwrap();
        assert_eq!(
            m.term, term,
            "master {id}: the term moved while the leader's disk was slow"
        );
    }
    assert_eq!(cluster.leader_among(&[1, 2, 3]).await, Some(leader));
    // Every write waited for the leader's own flush before it was applied.
    let waits = counter(&cluster, leader, "corral_raft_apply_durable_waits_total").await;
    assert!(waits >= f64::from(writes), "{waits} applies waited for {writes} writes");
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    drop(slow);

    let wedged = SlowDisk::attach(pid, Duration::from_secs(7));
    let wedged_at = Instant::now();
    // A write makes the leader flush, and the flush waits 7 s for the disk. This client
    // gives up on the write after 300 ms, long after it was proposed.
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        cluster.set_weight(&client, "wedged", 1.0, WRITE),
    )
    .await;
    let new = cluster.wait_leader(&others, Duration::from_millis(3500)).await;
    let took = wedged_at.elapsed();
    eprintln!("wedged leader {leader} replaced by {new} after {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "replaced long after the core stalled: {took:?}"
    );
    // Its core silent for 5 s, the wedged master says so on /health (before its disk comes
    // back at 7 s).
    wait_for(
        Duration::from_secs(6),
        "the wedged master's /health to answer 503",
        || async {
            let (code, body) = cluster.http_get(leader, "/health").await?;
            (code == 503 && body.contains("has not answered")).then_some(())
        },
    )
    .await;
    assert!(
        wedged_at.elapsed() < Duration::from_secs(7),
        "503 only after the disk came back"
    );
    drop(wedged);
    cluster
        .set_weight(&cluster.client(), "after", 2.0, WRITE)
        .await
        .unwrap();
    let applied = cluster.member(new).await.unwrap().applied_index;
    cluster.wait_converged(&[1, 2, 3], applied, CONVERGE).await;
    let weights = cluster.weights(&cluster.client(), WRITE).await.unwrap();
    for role in ["before", "slow0", "after"] {
        assert!(weights.contains_key(role), "{role} lost: {weights:?}");
    }
}

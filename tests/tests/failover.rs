//! failover: tasks, agents and frameworks through leader failures (real processes).

use corral_tests::sim::scalar;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::Duration;

use corral_proto::v1;
use corral_proto::v1::TaskState;
use corral_tests::{wait_for, Cluster, Framework};

const T: Duration = Duration::from_secs(30);

/// Pids of processes whose command line is exactly `sleep <secs>`.
fn sleeps(secs: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd == format!("sleep\0{secs}\0").as_bytes() {
            out.insert(pid);
        }
    }
    out
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `corral run --count COUNT -- sleep SECS` in the background: a framework (the SDK) that
/// follows the leader by itself. Killed when dropped.
fn background_run(cluster: &Cluster, name: &str, count: u32, secs: &str) -> KillOnDrop {
    let child = cluster
        .corral()
        .args([
            "--masters",
            &cluster.masters_arg(),
            "run",
            "--name",
            name,
            "--count",
            &count.to_string(),
        ])
        .args(["--cpus", "0.1", "--mem", "16", "--", "sleep", secs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral run");
    KillOnDrop(child)
}

/// How many tasks named `prefix*` the leader has RUNNING.
async fn running(cluster: &Cluster, prefix: &str) -> usize {
    let tasks = cluster.tasks().await.unwrap_or_default();
    tasks
        .iter()
        .filter(|t| t.task_id.starts_with(prefix) && t.state == TaskState::TaskRunning as i32)
        .count()
}

async fn framework_states(cluster: &Cluster) -> Vec<i32> {
    corral_proto::client::list_all(
        &cluster.client(),
        Duration::from_secs(5),
        v1::ListFrameworksRequest::default(),
    )
    .await
    .map(|fws| fws.iter().map(|f| f.state).collect())
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_tasks_survive_five_leader_kills() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    for name in ["fa", "fb", "fc"] {
        cluster.start_agent(name, "cpus:2;mem:1024", "");
    }
    cluster.wait_agents(3, T).await;
    // The framework: `corral run` (the SDK) with 30 long tasks, running in the background.
    let framework = background_run(&cluster, "long", 30, "3601");
    let pids = wait_for(T, "30 running task processes", || async {
        let p = sleeps("3601");
        (p.len() == 30).then_some(p)
    })
    .await;
    wait_for(T, "all 30 tasks RUNNING in the replicated state", || async {
        (running(&cluster, "long").await == 30).then_some(())
    })
    .await;
    for round in 0..5 {
        let leader = cluster.wait_leader(&[1, 2, 3], T).await;
        cluster.kill(leader);
        let rest: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
        let new = cluster.wait_leader(&rest, T).await;
        eprintln!("failover: round {round}: killed {leader}, new leader {new}");
        assert_eq!(sleeps("3601"), pids, "round {round}: the same 30 processes still run");
        cluster.wait_agents(3, T).await;
        wait_for(T, "the framework re-subscribed to the new leader", || async {
            let states = framework_states(&cluster).await;
            states
                .contains(&(v1::FrameworkState::FrameworkConnected as i32))
                .then_some(())
        })
        .await;
        // Updates still in flight at the kill are resent by the agents to the new leader.
        wait_for(T, "all 30 tasks RUNNING in the new leader's state", || async {
            (running(&cluster, "long").await == 30).then_some(())
        })
        .await;
        cluster.restart(leader);
        let applied = cluster.member(new).await.unwrap().applied_index;
        cluster.wait_converged(&[1, 2, 3], applied, T).await;
    }
    // Offers still flow: a new task launches and finishes.
    let out = cluster.cli(&["run", "--name", "after", "--", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    drop(framework);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_updates_from_a_leaderless_time_reach_the_framework() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("nl", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let mut fw = cluster.framework("leaderless", "").await;
    let offer = fw.next_offers(T).await.remove(0);
    let tasks: Vec<v1::TaskInfo> = (0..3)
        .map(|i| Framework::task(&format!("t{i}"), &offer.agent_id, 0.1, 16.0, &["sleep", "3"]))
        .collect();
    fw.accept(vec![offer.offer_id], tasks, 0.0).await.unwrap();
    for i in 0..3 {
        fw.wait_state(&format!("t{i}"), TaskState::TaskRunning, T).await;
    }
    // No quorum while the tasks end.
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    let other = (1..=3).find(|&i| i != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(other);
    wait_for(
        Duration::from_secs(20),
        "the tasks to end while there is no leader",
        || async { sleeps("3").is_empty().then_some(()) },
    )
    .await;
    cluster.restart(leader);
    cluster.restart(other);
    cluster.wait_leader(&[1, 2, 3], T).await;
    // The framework comes back (failover with its id) and gets every terminal update.
    let info = v1::FrameworkInfo {
        framework_id: fw.id.clone(),
        name: "leaderless".into(),
        failover_timeout_seconds: 60.0,
        ..Default::default()
    };
    let mut again = Framework::subscribe(cluster.client(), info).await.unwrap();
    assert_eq!(again.id, fw.id, "failover keeps the framework id");
    for i in 0..3 {
        let s = again.wait_state(&format!("t{i}"), TaskState::TaskFinished, T).await;
        assert_eq!(s.exit_code, Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_every_master_restarted_while_tasks_run() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("rs", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let framework = background_run(&cluster, "keep", 4, "3602");
    let pids = wait_for(T, "4 running task processes", || async {
        let p = sleeps("3602");
        (p.len() == 4).then_some(p)
    })
    .await;
    // Committed as RUNNING before the masters go (updates in flight would be resent anyway).
    wait_for(T, "the 4 tasks RUNNING", || async {
        (running(&cluster, "keep").await == 4).then_some(())
    })
    .await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_leader(&[1, 2, 3], T).await;
    assert_eq!(sleeps("3602"), pids, "the tasks kept running");
    cluster.wait_agents(1, T).await;
    wait_for(T, "the 4 tasks RUNNING after the restart", || async {
        (running(&cluster, "keep").await == 4).then_some(())
    })
    .await;
    let out = cluster.cli(&["run", "--name", "offers-resume", "--", "true"]);
    assert!(
        out.status.success(),
        "offers resume: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(framework);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_paused_agent_goes_unreachable_and_comes_back() {
    let mut cluster = Cluster::start_with(3, &["--agent-ping-timeout", "2s"]);
    cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("pause", "cpus:2;mem:1024", "");
    let agents = cluster.wait_agents(1, T).await;
    let mut fw = cluster.framework("unreach", "").await;
    let offer = fw.next_offers(T).await.remove(0);
    fw.accept(
        vec![offer.offer_id],
        vec![Framework::task("u1", &offer.agent_id, 0.1, 16.0, &["sleep", "3603"])],
        0.0,
    )
    .await
    .unwrap();
    fw.wait_state("u1", TaskState::TaskRunning, T).await;
    let pids = sleeps("3603");
    cluster.pause_agent("pause");
    let s = fw.wait_state("u1", TaskState::TaskUnreachable, T).await;
    assert_eq!(s.reason, v1::Reason::AgentUnreachable as i32);
    let listed = cluster.tasks().await.unwrap();
    assert_eq!(listed[0].state, TaskState::TaskUnreachable as i32);
    fw.updates.clear();
    cluster.resume_agent("pause");
    let back = fw.wait_state("u1", TaskState::TaskRunning, T).await;
    assert_eq!(back.reason, v1::Reason::Reconciliation as i32);
    assert_eq!(sleeps("3603"), pids, "the task never stopped");
    let agents_now = cluster.wait_agents(1, T).await;
    assert_eq!(agents_now[0].agent_id, agents[0].agent_id, "the same agent came back");
    assert_eq!(agents_now[0].state, v1::AgentState::AgentActive as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_framework_failover_timeout_tears_down_only_the_late() {
    let cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    let mut c = cluster;
    c.start_agent("ft", "cpus:2;mem:1024", "");
    c.wait_agents(1, T).await;
    let info = |name: &str, timeout: f64| v1::FrameworkInfo {
        name: name.into(),
        failover_timeout_seconds: timeout,
        ..Default::default()
    };
    // One that stays away longer than its 2 s failover timeout.
    let mut late = Framework::subscribe(c.client(), info("late", 2.0)).await.unwrap();
    let offer = late.next_offers(T).await.remove(0);
    late.accept(
        vec![offer.offer_id],
        vec![Framework::task("l1", &offer.agent_id, 0.1, 16.0, &["sleep", "3604"])],
        0.0,
    )
    .await
    .unwrap();
    late.wait_state("l1", TaskState::TaskRunning, T).await;
    // Like a real framework, decline what it does not use (for long), so others get offers.
    let unused: Vec<String> = std::mem::take(&mut late.offers)
        .into_iter()
        .map(|o| o.offer_id)
        .collect();
    if !unused.is_empty() {
        late.decline(unused, 600.0).await.unwrap();
    }
    // One that comes back within its 6 s.
    let mut back = Framework::subscribe(c.client(), info("back", 6.0)).await.unwrap();
    let offer = back.next_offers(T).await.remove(0);
    back.accept(
        vec![offer.offer_id],
        vec![Framework::task("b1", &offer.agent_id, 0.1, 16.0, &["sleep", "3605"])],
        0.0,
    )
    .await
    .unwrap();
    back.wait_state("b1", TaskState::TaskRunning, T).await;
    let back_id = back.id.clone();
    drop(late);
    drop(back);
    // "back" returns after about a second, as the same framework.
    // The fault itself: the framework stays away for a second (not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut returned = Framework::subscribe(
        c.client(),
        v1::FrameworkInfo {
            framework_id: back_id.clone(),
            ..info("back", 6.0)
        },
    )
    .await
    .unwrap();
    wait_for(T, "the late framework's task to be killed", || async {
        sleeps("3604").is_empty().then_some(())
    })
    .await;
    let states = framework_states(&c).await;
    assert!(
        states.contains(&(v1::FrameworkState::FrameworkTornDown as i32)),
        "{states:?}"
    );
    // Past "back"'s own timeout: it kept its task.
    returned.watch(Duration::from_secs(7)).await;
    assert_eq!(
        sleeps("3605").len(),
        1,
        "the framework that returned in time keeps its task"
    );
    let tasks = c.tasks().await.unwrap();
    let b1 = tasks.iter().find(|t| t.task_id == "b1").unwrap();
    assert_eq!(b1.state, TaskState::TaskRunning as i32);
    let l1 = tasks.iter().find(|t| t.task_id == "l1").unwrap();
    assert_eq!(l1.state, TaskState::TaskKilled as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_five_masters_lose_two_leaders_in_a_row() {
    let mut cluster = Cluster::start(5);
    let all = [1, 2, 3, 4, 5];
    cluster.wait_leader(&all, T).await;
    cluster.start_agent("f5", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let framework = background_run(&cluster, "five", 3, "3606");
    wait_for(T, "the 3 tasks RUNNING", || async {
        (running(&cluster, "five").await == 3).then_some(())
    })
    .await;
    let pids = sleeps("3606");
    let mut alive: Vec<u64> = all.to_vec();
    for round in 0..2 {
        let leader = cluster.wait_leader(&alive, T).await;
        cluster.kill(leader);
        alive.retain(|&i| i != leader);
        let next = cluster.wait_leader(&alive, T).await;
        eprintln!("failover: five masters, round {round}: killed {leader}, leader now {next}");
    }
    // Three of five left: still serving, tasks untouched, agent and framework re-attached.
    assert_eq!(sleeps("3606"), pids);
    cluster.wait_agents(1, T).await;
    wait_for(T, "the framework re-subscribed", || async {
        framework_states(&cluster)
            .await
            .contains(&(v1::FrameworkState::FrameworkConnected as i32))
            .then_some(())
    })
    .await;
    let out = cluster.cli(&["run", "--name", "still-serving", "--", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    drop(framework);
}

/// Pids of processes whose argv is exactly `argv`.
fn pids_of(argv: &[&str]) -> BTreeSet<u32> {
    let mut want = Vec::new();
    for a in argv {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want) {
            out.insert(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_sigkilled_agent_takes_its_tasks_back() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("rec", "cpus:2;mem:1024", "");
    let agents = cluster.wait_agents(1, T).await;
    let mut fw = cluster.framework("recover", "").await;
    let offer = fw.next_offers(T).await.remove(0);
    // "exits" waits for a file in its sandbox, then exits 7: it ends while the agent is down.
    let waiter = ["/bin/sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; exit 7"];
    let tasks = vec![
        Framework::task("stays", &offer.agent_id, 0.1, 16.0, &["sleep", "3607"]),
        Framework::task("exits", &offer.agent_id, 0.1, 16.0, &waiter),
    ];
    fw.accept(vec![offer.offer_id], tasks, 0.0).await.unwrap();
    fw.wait_state("stays", TaskState::TaskRunning, T).await;
    fw.wait_state("exits", TaskState::TaskRunning, T).await;
    let stays = sleeps("3607");
    assert_eq!(stays.len(), 1);
    assert_eq!(pids_of(&waiter).len(), 1);

    cluster.kill_agent("rec");
    std::fs::write(cluster.sandbox("rec", &fw.id, "exits").join("go"), b"").unwrap();
    wait_for(T, "the waiting task to exit while its agent is down", || async {
        pids_of(&waiter).is_empty().then_some(())
    })
    .await;
    assert_eq!(sleeps("3607"), stays, "a task keeps running without its agent");

    cluster.restart_agent("rec");
    let ended = fw.wait_state("exits", TaskState::TaskFailed, T).await;
    assert_eq!(ended.exit_code, Some(7), "the real exit code: {ended:?}");
    assert_eq!(ended.agent_id, agents[0].agent_id);
    let back = cluster.wait_agents(1, T).await;
    assert_eq!(back[0].agent_id, agents[0].agent_id, "the same agent re-registered");
    assert_eq!(sleeps("3607"), stays, "the same process, untouched by the restart");
    let listed = cluster.tasks().await.unwrap();
    let s = listed.iter().find(|t| t.task_id == "stays").unwrap();
    assert_eq!(s.state, TaskState::TaskRunning as i32);

    // The restarted agent supervises the recovered task: a kill reaches it and is reported.
    let req = v1::KillRequest {
        header: Some(fw.header.clone()),
        task_id: "stays".into(),
        agent_id: agents[0].agent_id.clone(),
        kill_grace_period_ms: 0,
    };
    fw.call(|mut c| {
        let req = req.clone();
        async move { c.kill(req).await.map(|_| ()) }
    })
    .await
    .unwrap();
    let killed = fw.wait_state("stays", TaskState::TaskKilled, T).await;
    assert_eq!(killed.exit_code, Some(128 + libc::SIGTERM));
    assert!(sleeps("3607").is_empty(), "the killed task is gone");
    // Both are acknowledged, so the agent forgets them: a second restart recovers nothing.
    wait_for(T, "the agent's checkpoints of the ended tasks to go", || async {
        let dir = cluster.sandbox("rec", &fw.id, "x");
        let meta = dir
            .ancestors()
            .nth(4)
            .unwrap()
            .join("meta/frameworks")
            .join(&fw.id)
            .join("tasks");
        let left = std::fs::read_dir(&meta).map(|d| d.count()).unwrap_or(0);
        (left == 0).then_some(())
    })
    .await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// SIGKILL the leader, restart it later.
    Kill,
    /// SIGSTOP the leader, SIGCONT it once another leads.
    Pause,
}

/// The `sleep` argument that names storm task `id` (`s007` → `4000.007`).
fn storm_arg(id: &str) -> String {
    format!("4000.{}", &id[1..])
}

/// Storm task ids whose `sleep 4000.NNN` process runs, with how many processes each has.
fn storm_processes() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.len() == 3 && args[0] == b"sleep" && args[1].starts_with(b"4000.") {
            let id = format!("s{}", String::from_utf8_lossy(&args[1][5..]));
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// A framework launches tasks as fast as offers come while the leader fails (`fault`).
/// Afterwards every launch it was told succeeded runs exactly once, no agent holds more
/// than it has, and all masters have the same state.
async fn launch_storm(fault: Fault) {
    const WANT: usize = 60;
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    for name in ["sa", "sb"] {
        cluster.start_agent(name, "cpus:4;mem:4096", "");
    }
    cluster.wait_agents(2, T).await;
    let mut fw = cluster.framework("storm", "").await;
    let mut told_ok: BTreeSet<String> = BTreeSet::new();
    let mut refused = 0;
    let mut sent = 0;
    let mut faulted: Option<u64> = None;
    let mut healed = false;
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    while told_ok.len() < WANT {
        assert!(
            std::time::Instant::now() < give_up,
            "storm stalled at {} launches",
            told_ok.len()
        );
        if let (Some(old), false) = (faulted, healed) {
            if told_ok.len() >= 36 {
                match fault {
                    Fault::Kill => cluster.restart(old),
                    Fault::Pause => cluster.resume(old),
                }
                eprintln!("storm: master {old} back after {} launches", told_ok.len());
                healed = true;
            }
        }
        if fw.closed {
            if let Err(e) = fw.resubscribe().await {
                eprintln!("storm: resubscribe: {}", e.message());
            }
            continue;
        }
        for offer in fw.watch(Duration::from_millis(100)).await {
            let ids: Vec<String> = (0..6)
                .map(|_| {
                    sent += 1;
                    format!("s{sent:03}")
                })
                .collect();
            let tasks = ids
                .iter()
                .map(|id| Framework::task(id, &offer.agent_id, 0.1, 16.0, &["sleep", &storm_arg(id)]))
                .collect();
            let accept = fw.accept(vec![offer.offer_id], tasks, 0.0);
            let result = if faulted.is_none() && told_ok.len() >= 12 {
                // The fault strikes while this accept is in flight.
                let leader = cluster.wait_leader(&[1, 2, 3], T).await;
                let strike = async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    match fault {
                        Fault::Kill => cluster.kill(leader),
                        Fault::Pause => cluster.pause(leader),
                    }
                };
                let (result, ()) = tokio::join!(accept, strike);
                eprintln!("storm: {fault:?} leader {leader} after {} launches", told_ok.len());
                faulted = Some(leader);
                result
            } else {
                accept.await
            };
            match result {
                Ok(_) => told_ok.extend(ids),
                Err(e) => {
                    refused += 1;
                    eprintln!("storm: accept refused ({:?}): {}", e.code(), e.message());
                }
            }
        }
    }
    let old = faulted.expect("the fault happened");
    if !healed {
        match fault {
            Fault::Kill => cluster.restart(old),
            Fault::Pause => cluster.resume(old),
        }
    }
    eprintln!(
        "storm: {} launches acknowledged, {refused} refused, {sent} task ids sent",
        told_ok.len()
    );
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    if fault == Fault::Pause {
        assert_ne!(leader, old, "the paused leader did not come back as leader");
    }
    // Every acknowledged launch is RUNNING in the replicated state.
    let listed = wait_for(T, "every acknowledged launch RUNNING", || async {
        let tasks = cluster.tasks().await.ok()?;
        let running: BTreeSet<String> = tasks
            .iter()
            .filter(|t| t.state == TaskState::TaskRunning as i32)
            .map(|t| t.task_id.clone())
            .collect();
        told_ok.is_subset(&running).then_some(tasks)
    })
    .await;
    // Exactly once: one process and one sandbox for each; no process the masters do not know.
    let live: BTreeSet<String> = listed
        .iter()
        .filter(|t| t.state == TaskState::TaskRunning as i32)
        .map(|t| t.task_id.clone())
        .collect();
    let processes = wait_for(T, "one process per running task and no other", || async {
        let p = storm_processes();
        (p.keys().cloned().collect::<BTreeSet<_>>() == live).then_some(p)
    })
    .await;
    for (id, n) in &processes {
        assert_eq!(*n, 1, "task {id} runs {n} times");
    }
    for id in &told_ok {
        let sandboxes = ["sa", "sb"]
            .iter()
            .filter(|a| cluster.sandbox(a, &fw.id, id).is_dir())
            .count();
        assert_eq!(sandboxes, 1, "task {id} has {sandboxes} sandboxes");
    }
    // No agent holds more than it has.
    for agent in cluster.wait_agents(2, T).await {
        let on_agent: Vec<&v1::TaskSummary> = listed
            .iter()
            .filter(|t| t.agent_id == agent.agent_id && t.state == TaskState::TaskRunning as i32)
            .collect();
        let cpus: f64 = on_agent.iter().map(|t| scalar(&t.resources, "cpus")).sum();
        let mem: f64 = on_agent.iter().map(|t| scalar(&t.resources, "mem")).sum();
        assert!(
            cpus <= scalar(&agent.resources, "cpus") + 1e-9,
            "{}: cpus {cpus}",
            agent.hostname
        );
        assert!(
            mem <= scalar(&agent.resources, "mem") + 1e-9,
            "{}: mem {mem}",
            agent.hostname
        );
        assert!(scalar(&agent.used, "cpus") <= scalar(&agent.resources, "cpus") + 1e-9);
    }
    // The masters agree, the faulted one included.
    let applied = cluster.member(leader).await.unwrap().applied_index;
    cluster.wait_converged(&[1, 2, 3], applied, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_launch_storm_through_a_leader_kill_launches_exactly_once() {
    launch_storm(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p1_paused_old_leader_cannot_double_launch() {
    launch_storm(Fault::Pause).await;
}

/// How long a framework may take to receive (and acknowledge, one call at a time) 1,200
/// updates: about 20 s on an idle 2-core machine, three times that when the machine also
/// builds or runs other tests. A deadline for correctness, not a speed target.
const MANY_UPDATES: Duration = Duration::from_secs(120);

/// Read `fw`'s events until `done` holds, or fail after [`MANY_UPDATES`]. A stream that ends
/// (the leader changed: on a loaded 2-core machine an election can happen in the middle of
/// thousands of updates) is subscribed again, as every framework does.
async fn watch_until(fw: &mut Framework, what: &str, done: impl Fn(&Framework) -> bool) {
    let give_up = std::time::Instant::now() + MANY_UPDATES;
    while !done(fw) {
        assert!(std::time::Instant::now() < give_up, "timed out waiting for: {what}");
        if fw.closed {
            eprintln!("watch: the event stream ended (leader change); subscribing again");
            if let Err(e) = fw.resubscribe().await {
                eprintln!("watch: resubscribe: {}", e.message());
            }
            continue;
        }
        fw.watch(Duration::from_millis(200)).await;
    }
}

/// The tasks whose RUNNING update `fw` has received.
fn running_seen(fw: &Framework) -> BTreeSet<String> {
    fw.updates
        .iter()
        .filter(|s| s.state == TaskState::TaskRunning as i32)
        .map(|s| s.task_id.clone())
        .collect()
}

/// `agents` simulated agents (their tasks report RUNNING and stay so) and a framework `name`
/// that launches `per_agent` tasks on each and receives every RUNNING update without
/// acknowledging one: the fleet, the framework and the task ids.
async fn unacknowledged_fleet(
    cluster: &Cluster,
    name: &str,
    agents: usize,
    per_agent: usize,
) -> (corral_tests::sim::Fleet, Framework, BTreeSet<String>) {
    let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
    let fleet = corral_tests::sim::Fleet::start(&masters, agents, "cpus:8;mem:8192", false);
    cluster.wait_agents(agents, T).await;
    let mut fw = cluster.framework(name, "").await;
    fw.ack = false;
    let mut launched = BTreeSet::new();
    let mut seen_agents = BTreeSet::new();
    while seen_agents.len() < agents {
        for offer in fw.next_offers(T).await {
            if !seen_agents.insert(offer.agent_id.clone()) {
                continue;
            }
            let tasks: Vec<v1::TaskInfo> = (0..per_agent)
                .map(|i| {
                    let id = format!("{}-{i}", offer.agent_id);
                    launched.insert(id.clone());
                    Framework::task(&id, &offer.agent_id, 0.01, 1.0, &["true"])
                })
                .collect();
            fw.accept(vec![offer.offer_id], tasks, 0.0).await.unwrap();
        }
    }
    watch_until(&mut fw, "RUNNING of every task, unacknowledged", |fw| {
        running_seen(fw) == launched
    })
    .await;
    (fleet, fw, launched)
}

/// Whether an acknowledgement failed only because the leader changed under it: it reached a
/// new leader, where this subscription does not exist, or it was on its way to the killed
/// leader when the connection broke (the client cannot tell whether it was taken, and does
/// not retry it).
fn lost_to_leader_change(status: &tonic::Status) -> bool {
    status.message().contains("is not subscribed to this leader")
        || (status.code() == tonic::Code::Unknown && status.message().contains("transport error"))
}

/// Acknowledgements that failed because the leader changed are not lost: the new leader
/// resends every unacknowledged update to the framework's next subscription. Subscribe again
/// and wait until each of those updates has come again and been acknowledged (`fw.ack` being
/// on); any other failure fails the test. (An update can reach the framework twice, from the
/// periodic resend: a failed second acknowledgement of an update already acknowledged is no
/// loss.)
async fn settle_acks_lost_to_leader_change(fw: &mut Framework) {
    // Updates whose acknowledgement failed and has not been taken since, across rounds.
    let mut pending: BTreeSet<Vec<u8>> = BTreeSet::new();
    for round in 0..3 {
        let other: Vec<_> = fw
            .ack_failures
            .iter()
            .filter(|(_, _, e)| !lost_to_leader_change(e))
            .collect();
        assert!(other.is_empty(), "acknowledgements failed: {:?}", other.first());
        pending.extend(fw.ack_failures.drain(..).map(|(_, uuid, _)| uuid));
        pending.retain(|uuid| !fw.acked.contains(uuid));
        if pending.is_empty() {
            return;
        }
        eprintln!(
            "settle (round {round}): {} acknowledgements went to a new leader; subscribing again",
            pending.len()
        );
        fw.resubscribe().await.unwrap();
        watch_until(
            fw,
            "the updates whose acknowledgement was lost, resent and acknowledged",
            |fw| pending.iter().all(|uuid| fw.acked.contains(uuid)) || !fw.ack_failures.is_empty(),
        )
        .await;
    }
    pending.retain(|uuid| !fw.acked.contains(uuid));
    assert!(
        pending.is_empty() && fw.ack_failures.is_empty(),
        "acknowledgements still failing after three leader changes: {} unacknowledged; {:?}",
        pending.len(),
        fw.ack_failures.first()
    );
}

/// A framework that comes back to more unacknowledged updates than one read of the state
/// resends gets every one of them, in its new subscription, while live events still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p2_a_returning_framework_gets_thousands_of_unacknowledged_updates() {
    // More than one read of the state resends (1,024 tasks), and than the resend channel
    // holds.
    const AGENTS: usize = 6;
    const PER_AGENT: usize = 200;
    let cluster = Cluster::start(3);
    let term = leader_term(&cluster).await;
    let (fleet, mut fw, launched) = unacknowledged_fleet(&cluster, "unacked", AGENTS, PER_AGENT).await;
    // The framework fails over to a new subscription: every update comes again, and this
    // time it acknowledges them.
    fw.updates.clear();
    fw.ack = true;
    fw.resubscribe().await.unwrap();
    watch_until(&mut fw, "every unacknowledged update resent", |fw| {
        running_seen(fw) == launched
    })
    .await;
    settle_acks_lost_to_leader_change(&mut fw).await;
    // Every one was acknowledged (pump waits for each Acknowledge): a new subscription gets
    // none again. The resend starts with the subscription, so a second is plenty.
    let acked = fw.acked.clone();
    fw.updates.clear();
    fw.resubscribe().await.unwrap();
    fw.watch(Duration::from_secs(1)).await;
    // Say which kind of failure it is: an acknowledged update sent again, or a new one.
    let again: Vec<(String, bool)> = fw
        .updates
        .iter()
        .filter(|s| s.state == TaskState::TaskRunning as i32)
        .map(|s| (s.task_id.clone(), acked.contains(&s.uuid)))
        .collect();
    // If the leader changed on its own meanwhile (a loaded machine), agents re-registering
    // with the new leader may report a task again, a new update the framework has not seen
    // yet: only an acknowledged update coming again is wrong then.
    let leader_changed = leader_term(&cluster).await != term;
    let wrong: Vec<&(String, bool)> = again.iter().filter(|(_, acked)| !leader_changed || *acked).collect();
    assert!(
        wrong.is_empty(),
        "{} RUNNING updates came again (task, whether that very update was acknowledged; \
         leader changed: {leader_changed}): {:?}; acknowledgements that failed: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)],
        fw.ack_failures.first()
    );
    fleet.stop().await;
}

/// The current leader's Raft term.
async fn leader_term(cluster: &Cluster) -> u64 {
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.member(leader).await.expect("the leader answers").term
}

/// One Acknowledge call carrying `acks`.
async fn acknowledge(fw: &Framework, acks: Vec<v1::Acknowledgement>) -> Result<(), tonic::Status> {
    let req = v1::AcknowledgeRequest {
        header: Some(fw.header.clone()),
        acks,
        ..Default::default()
    };
    fw.call(|mut c| {
        let req = req.clone();
        async move { c.acknowledge(req).await.map(|_| ()) }
    })
    .await
}

/// Many updates acknowledged in one call stop being resent, repeated and unknown
/// acknowledgements in the batch are harmless, and a malformed batch is refused naming the
/// acknowledgement at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p2_updates_acknowledged_in_one_call_are_not_resent() {
    const TASKS: usize = 40;
    let cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
    let fleet = corral_tests::sim::Fleet::start(&masters, 1, "cpus:8;mem:8192", false);
    cluster.wait_agents(1, T).await;
    let mut fw = cluster.framework("batched", "").await;
    fw.ack = false;
    let offer = fw.next_offers(T).await.remove(0);
    let tasks: Vec<v1::TaskInfo> = (0..TASKS)
        .map(|i| Framework::task(&format!("b-{i}"), &offer.agent_id, 0.01, 1.0, &["true"]))
        .collect();
    fw.accept(vec![offer.offer_id], tasks, 0.0).await.unwrap();
    let running = |fw: &Framework| -> Vec<v1::TaskStatus> {
        fw.updates
            .iter()
            .filter(|s| s.state == TaskState::TaskRunning as i32)
            .cloned()
            .collect()
    };
    watch_until(&mut fw, "RUNNING of every task", |fw| running(fw).len() == TASKS).await;
    let ack = |s: &v1::TaskStatus| v1::Acknowledgement {
        agent_id: s.agent_id.clone(),
        task_id: s.task_id.clone(),
        uuid: s.uuid.clone(),
    };
    let updates = running(&fw);
    // Malformed batches: refused whole, naming the acknowledgement.
    let cases = [
        (
            vec![
                ack(&updates[0]),
                v1::Acknowledgement {
                    task_id: String::new(),
                    ..ack(&updates[1])
                },
            ],
            "acks[1].task_id",
        ),
        (
            vec![v1::Acknowledgement {
                uuid: Vec::new(),
                ..ack(&updates[0])
            }],
            "acks[0].uuid",
        ),
        (vec![ack(&updates[0]); 1025], "acks"),
        (Vec::new(), "task_id"),
    ];
    for (acks, field) in cases {
        let err = acknowledge(&fw, acks).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(field), "{field}: {}", err.message());
    }
    // Nothing was acknowledged by them: a new subscription gets every update again.
    fw.updates.clear();
    fw.resubscribe().await.unwrap();
    watch_until(&mut fw, "every update resent", |fw| running(fw).len() == TASKS).await;
    // One call acknowledges them all, with a repeat and an unknown uuid among them.
    let mut acks: Vec<v1::Acknowledgement> = running(&fw).iter().map(ack).collect();
    acks.push(acks[0].clone());
    acks.push(v1::Acknowledgement {
        uuid: b"no-such-update".to_vec(),
        ..acks[1].clone()
    });
    acknowledge(&fw, acks).await.unwrap();
    fw.updates.clear();
    fw.resubscribe().await.unwrap();
    fw.watch(Duration::from_secs(1)).await;
    assert_eq!(running(&fw), Vec::new(), "acknowledged updates are not resent");
    fleet.stop().await;
}

/// A launch whose Accept gave up before it committed (no quorum for longer than a write
/// may wait) still commits once the quorum is back, and the leader then delivers it to its
/// agent: no task is left in STAGING, launched in the log but never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p2_a_launch_committed_after_its_accept_gave_up_still_runs() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("late", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let mut fw = cluster.framework("late", "").await;
    let offer = fw.next_offers(T).await.remove(0);
    let task = Framework::task("late-launch", &offer.agent_id, 0.1, 16.0, &["sleep", "60"]);
    // Both followers go: the leader appends the launch but cannot commit it.
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    for &f in &followers {
        cluster.kill(f);
    }
    let mut client = corral_proto::v1::scheduler_client::SchedulerClient::new(
        corral_proto::client::channel(cluster.address(leader), Duration::from_secs(10)).unwrap(),
    );
    let answer = client
        .accept(v1::AcceptRequest {
            header: Some(fw.header.clone()),
            offer_ids: vec![offer.offer_id],
            operations: vec![v1::Operation {
                operation: Some(v1::operation::Operation::Launch(v1::LaunchOperation {
                    tasks: vec![task],
                })),
            }],
            filters: None,
        })
        .await;
    let err = answer.expect_err("no quorum: the launch cannot be committed in time");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // The quorum returns, the leader stays (its log is the longest) and the entry commits
    // after all, long after the Accept gave up on it.
    for &f in &followers {
        cluster.restart(f);
    }
    assert_eq!(
        cluster.wait_leader(&[1, 2, 3], T).await,
        leader,
        "the leader kept its place"
    );
    wait_for(T, "the late launch to run on its agent", || async {
        (running(&cluster, "late-launch").await == 1).then_some(())
    })
    .await;
}

/// A framework acknowledging hundreds of updates when the leader is killed loses none: the
/// acknowledgements the old leader took stay taken, and every update whose acknowledgement
/// went to the new leader (where the old subscription does not exist) comes again to the next
/// subscription; once all are acknowledged, none comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_p2_acknowledgements_cut_by_a_leader_failover_are_not_lost() {
    const AGENTS: usize = 3;
    const PER_AGENT: usize = 100;
    let mut cluster = Cluster::start(3);
    cluster.wait_leader(&[1, 2, 3], T).await;
    let (fleet, mut fw, launched) = unacknowledged_fleet(&cluster, "cut", AGENTS, PER_AGENT).await;
    // A new subscription gets them all again; the framework acknowledges them one by one, and
    // a third of the way through the leader is killed.
    fw.updates.clear();
    fw.ack = true;
    fw.resubscribe().await.unwrap();
    watch_until(&mut fw, "a third acknowledged", |fw| {
        fw.acked.len() >= launched.len() / 3
    })
    .await;
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.kill(leader);
    assert!(
        fw.acked.len() < launched.len(),
        "the leader was killed only after every update was acknowledged: nothing was cut"
    );
    watch_until(&mut fw, "every update seen since", |fw| running_seen(fw) == launched).await;
    settle_acks_lost_to_leader_change(&mut fw).await;
    let alive: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&alive, T).await;
    assert_ne!(new_leader, leader);
    // Every update of every task was acknowledged, before the failover or after it.
    let every: BTreeSet<String> = fw
        .updates
        .iter()
        .filter(|s| fw.acked.contains(&s.uuid))
        .map(|s| s.task_id.clone())
        .collect();
    assert_eq!(every, launched, "tasks with an acknowledged RUNNING update");
    // And so a new subscription gets none of them again. (Agents re-registering with the
    // new leader may report a task anew, an update the framework may not have seen yet.)
    fw.updates.clear();
    fw.resubscribe().await.unwrap();
    fw.watch(Duration::from_secs(1)).await;
    let again: Vec<&String> = fw
        .updates
        .iter()
        .filter(|s| fw.acked.contains(&s.uuid))
        .map(|s| &s.task_id)
        .collect();
    assert!(
        again.is_empty(),
        "{} acknowledged updates came again, of tasks {:?}",
        again.len(),
        &again[..again.len().min(10)]
    );
    fleet.stop().await;
}

//! deploy: the compose files of `deploy/` on real containers: failover, partition, loss of
//! two of five masters. The image is built from the local binaries (no registry here).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_tests::docker::Project;
use serde_json::Value;

/// One compose project at a time: the machine has two cores.
static ONE_PROJECT: Mutex<()> = Mutex::new(());

fn wait<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn masters(n: u32) -> String {
    (1..=n)
        .map(|i| format!("master-{i}:5050"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `corral ARGS --json` run inside `service`, parsed.
fn cli_json(p: &Project, service: &str, masters: &str, args: &[&str]) -> Option<Value> {
    let mut cmd = vec!["corral", "--masters", masters, "--timeout-secs", "3"];
    cmd.extend_from_slice(args);
    cmd.push("--json");
    let out = p.exec(service, &cmd);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The leader's service name as `service` sees it, if all answering members agree.
fn leader(p: &Project, service: &str, masters: &str) -> Option<String> {
    let status = cli_json(p, service, masters, &["status"])?;
    let addr = status["leader"]["address"].as_str()?;
    Some(addr.split(':').next()?.to_string())
}

fn converged(p: &Project, service: &str, masters: &str, n: usize) -> Option<Value> {
    let status = cli_json(p, service, masters, &["status"])?;
    let members = status["members"].as_array()?;
    let first = &members[0];
    let same = members.len() == n
        && members.iter().all(|m| {
            m["applied_index"] == first["applied_index"]
                && m["state_hash"] == first["state_hash"]
                && m["role"] != "unreachable"
        });
    same.then_some(status)
}

fn connected_agents(p: &Project, service: &str, masters: &str) -> usize {
    cli_json(p, service, masters, &["agents"])
        .and_then(|v| {
            v.as_array()
                .map(|a| a.iter().filter(|x| x["connected"] == true).count())
        })
        .unwrap_or(0)
}

fn task_pid(p: &Project) -> Option<(String, String)> {
    for agent in ["agent-1", "agent-2"] {
        // busybox ps: "PID USER COMMAND"; the task's command is exactly `sleep 600`.
        let out = p.exec(agent, &["ps"]);
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let mut cols = line.split_whitespace();
            let (Some(pid), Some(_user)) = (cols.next(), cols.next()) else {
                continue;
            };
            if cols.collect::<Vec<_>>().join(" ") == "sleep 600" {
                return Some((agent.to_string(), pid.to_string()));
            }
        }
    }
    None
}

#[test]
fn deploy_p1_three_masters_failover_and_partition() {
    let _turn = ONE_PROJECT.lock().unwrap_or_else(|p| p.into_inner());
    let p = Project::up("compose.yaml");
    let m = masters(3);
    let first = wait(Duration::from_secs(90), "a leader", || leader(&p, "master-1", &m));
    eprintln!("deploy: leader {first}");
    wait(Duration::from_secs(60), "both agents registered", || {
        (connected_agents(&p, &first, &m) == 2).then_some(())
    });

    // A long task, launched by `corral run` from an agent container.
    let out = p.exec(
        "agent-2",
        &[
            "sh",
            "-c",
            &format!("corral --masters {m} run --name long -- sleep 600 >/tmp/run.log 2>&1 &"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait(Duration::from_secs(60), "the task RUNNING", || {
        let tasks = cli_json(&p, &first, &m, &["tasks"])?;
        tasks
            .as_array()?
            .iter()
            .any(|t| t["task_id"] == "long" && t["state"] == "TASK_RUNNING")
            .then_some(())
    });
    let (agent, pid) = wait(Duration::from_secs(10), "the task's process", || task_pid(&p));

    // docker kill the leader.
    p.ok(&["kill", &first]);
    let others: Vec<String> = (1..=3).map(|i| format!("master-{i}")).filter(|s| *s != first).collect();
    let rest = others.iter().map(|s| format!("{s}:5050")).collect::<Vec<_>>().join(",");
    let second = wait(Duration::from_secs(30), "a new leader", || {
        leader(&p, &others[0], &rest).filter(|l| *l != first)
    });
    eprintln!("deploy: {first} killed, new leader {second}");
    assert_eq!(
        task_pid(&p),
        Some((agent.clone(), pid.clone())),
        "the task kept running, same process"
    );
    wait(
        Duration::from_secs(60),
        "both agents re-registered with the new leader",
        || (connected_agents(&p, &second, &rest) == 2).then_some(()),
    );
    let tasks = cli_json(&p, &second, &rest, &["tasks"]).expect("tasks from the new leader");
    assert!(
        tasks
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task_id"] == "long" && t["state"] == "TASK_RUNNING"),
        "{tasks}"
    );

    // The old master, restarted, rejoins as a follower and converges.
    p.ok(&["start", &first]);
    let status = wait(Duration::from_secs(60), "three members converged", || {
        converged(&p, &second, &m, 3)
    });
    let old = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == format!("{first}:5050"))
        .cloned()
        .unwrap();
    assert_eq!(old["role"], "follower", "{status}");

    // Partition: cut the leader off; the majority elects a new one and keeps serving.
    let cut = second;
    p.disconnect(&cut);
    let majority: Vec<String> = (1..=3).map(|i| format!("master-{i}")).filter(|s| *s != cut).collect();
    let majority_list = majority
        .iter()
        .map(|s| format!("{s}:5050"))
        .collect::<Vec<_>>()
        .join(",");
    let third = wait(Duration::from_secs(30), "a leader on the majority side", || {
        leader(&p, &majority[0], &majority_list).filter(|l| *l != cut)
    });
    let out = p.exec(
        &majority[0],
        &[
            "corral",
            "--masters",
            &majority_list,
            "weights",
            "set",
            "partitioned",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "write on the majority side: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Heal: the old leader steps down and converges, no divergent state.
    p.connect(&cut);
    let status = wait(Duration::from_secs(60), "convergence after the partition heals", || {
        converged(&p, &third, &m, 3)
    });
    let cut_member = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == format!("{cut}:5050"))
        .cloned()
        .unwrap();
    assert_eq!(cut_member["role"], "follower", "{status}");
    let weights = cli_json(&p, &third, &m, &["weights"]).expect("weights");
    assert_eq!(weights["partitioned"], 2.0);
    assert_eq!(task_pid(&p), Some((agent, pid)), "the task survived the partition too");
}

#[test]
fn deploy_p1_five_masters_survive_two_killed_at_once() {
    let _turn = ONE_PROJECT.lock().unwrap_or_else(|p| p.into_inner());
    let p = Project::up("compose.5-masters.yaml");
    let m = masters(5);
    let first = wait(Duration::from_secs(90), "a leader", || leader(&p, "master-1", &m));
    let follower = (1..=5).map(|i| format!("master-{i}")).find(|s| *s != first).unwrap();
    p.ok(&["kill", &first, &follower]);
    let rest: Vec<String> = (1..=5)
        .map(|i| format!("master-{i}"))
        .filter(|s| *s != first && *s != follower)
        .collect();
    let rest_list = rest.iter().map(|s| format!("{s}:5050")).collect::<Vec<_>>().join(",");
    let new = wait(Duration::from_secs(30), "a leader among the three left", || {
        leader(&p, &rest[0], &rest_list).filter(|l| rest.contains(l))
    });
    eprintln!("deploy: killed {first} and {follower}; leader now {new}");
    let out = p.exec(
        &rest[0],
        &["corral", "--masters", &rest_list, "weights", "set", "survivor", "3"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let weights = cli_json(&p, &rest[1], &rest_list, &["weights"]).expect("weights");
    assert_eq!(weights["survivor"], 3.0);
}

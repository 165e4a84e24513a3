use super::snapshot::SNAPSHOT_FORMAT;
use super::*;
use crate::raft::types::Outcome;
use prost::Message;

fn set(role: &str, milli: u64) -> v1::Command {
    v1::Command {
        timestamp_ms: 1,
        kind: Some(v1::command::Kind::SetWeights(v1::SetWeights {
            weights: vec![v1::RoleWeight {
                role: role.into(),
                weight_milli: milli,
            }],
        })),
    }
}

#[test]
fn weights_apply_and_hash_is_deterministic() {
    let mut a = ClusterState::default();
    let mut b = ClusterState::default();
    for s in [&mut a, &mut b] {
        assert_eq!(s.apply_command(&set("prod", 2000)), Outcome::Applied);
        assert_eq!(s.apply_command(&set("dev", 500)), Outcome::Applied);
    }
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.weight("prod"), 2.0);
    assert_eq!(a.weight("other"), 1.0);
    b.apply_command(&set("dev", 600));
    assert_ne!(a.hash(), b.hash());
    assert_eq!(ClusterState::decode(&a.encode()).unwrap(), a);
}

#[test]
fn apply_rechecks_what_the_leader_checked() {
    let mut s = ClusterState::default();
    let before = s.weights.clone();
    assert!(matches!(s.apply_command(&set("prod", 0)), Outcome::Rejected(m) if m.contains("weights[0].weight")));
    assert!(matches!(s.apply_command(&set("", 1000)), Outcome::Rejected(m) if m.contains("weights[0].role")));
    assert!(matches!(
        s.apply_command(&v1::Command {
            timestamp_ms: 0,
            kind: None
        }),
        Outcome::Rejected(_)
    ));
    assert_eq!(s.weights, before);
    assert_eq!(s.rejected_commands, 3);
}

#[test]
fn weight_validation_names_the_field() {
    assert_eq!(validate_weight("w", "prod", 2.5), Ok(2500));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12, 0.0001] {
        let e = validate_weight("weights[0]", "prod", bad).unwrap_err();
        assert!(e.starts_with("weights[0].weight"), "{bad}: {e}");
    }
    assert!(validate_weight("w", "a b", 1.0).unwrap_err().starts_with("w.role"));
}

fn cmd(kind: v1::command::Kind) -> v1::Command {
    v1::Command {
        timestamp_ms: 7,
        kind: Some(kind),
    }
}

fn scalar(name: &str, v: f64) -> v1::Resource {
    v1::Resource {
        name: name.into(),
        value: Some(v1::resource::Value::Scalar(v)),
    }
}

fn cluster_with_agent(cpus: f64, mem: f64) -> ClusterState {
    let mut s = ClusterState::default();
    let info = v1::AgentInfo {
        hostname: "h1".into(),
        resources: vec![scalar("cpus", cpus), scalar("mem", mem)],
        ..Default::default()
    };
    let reg = v1::RegisterAgent {
        agent_id: "a1".into(),
        info: Some(info),
    };
    assert_eq!(
        s.apply_command(&cmd(v1::command::Kind::RegisterAgent(reg))),
        Outcome::Applied
    );
    let fw = v1::FrameworkInfo {
        name: "fw".into(),
        ..Default::default()
    };
    let reg = v1::RegisterFramework {
        framework_id: "f1".into(),
        info: Some(fw),
    };
    assert_eq!(
        s.apply_command(&cmd(v1::command::Kind::RegisterFramework(reg))),
        Outcome::Applied
    );
    s
}

fn launch(tasks: &[(&str, f64)]) -> v1::command::Kind {
    let tasks = tasks
        .iter()
        .map(|(id, cpus)| v1::TaskInfo {
            task_id: id.to_string(),
            agent_id: "a1".into(),
            resources: vec![scalar("cpus", *cpus)],
            command: Some(v1::CommandInfo {
                argv: vec!["true".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    v1::command::Kind::LaunchTasks(v1::LaunchTasks {
        framework_id: "f1".into(),
        agent_id: "a1".into(),
        tasks,
    })
}

fn status(task: &str, state: v1::TaskState, uuid: u8) -> v1::command::Kind {
    v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
        statuses: vec![v1::TaskStatus {
            task_id: task.into(),
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            state: state as i32,
            uuid: vec![uuid],
            ..Default::default()
        }],
    })
}

fn finish_at(task: &str, state: v1::TaskState, uuid: u8, at_ms: i64) -> v1::command::Kind {
    v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
        statuses: vec![v1::TaskStatus {
            task_id: task.into(),
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            state: state as i32,
            uuid: vec![uuid],
            timestamp_ms: at_ms,
            ..Default::default()
        }],
    })
}

fn gc(max_tasks: u64, max_age_ms: i64, max_frameworks: u64, agent_age_ms: i64) -> v1::command::Kind {
    v1::command::Kind::CollectGarbage(v1::CollectGarbage {
        max_completed_tasks_per_framework: max_tasks,
        completed_task_max_age_ms: max_age_ms,
        max_completed_frameworks: max_frameworks,
        agent_gc_age_ms: agent_age_ms,
    })
}

fn at(now: i64, kind: v1::command::Kind) -> v1::Command {
    v1::Command {
        timestamp_ms: now,
        kind: Some(kind),
    }
}

#[test]
fn retention_keeps_the_newest_finished_tasks_and_ids_free_up_after_it() {
    let mut s = cluster_with_agent(100.0, 1024.0);
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let launch_all: Vec<(&str, f64)> = ids.iter().map(|i| (i.as_str(), 1.0)).collect();
    assert_eq!(s.apply_command(&cmd(launch(&launch_all))), Outcome::Applied);
    // Finished in reverse order of their ids: retention goes by finish time.
    for (i, id) in ids.iter().enumerate() {
        let t = 1000 - i as i64;
        s.apply_command(&cmd(finish_at(id, v1::TaskState::TaskFinished, i as u8, t)));
    }
    s.apply_command(&cmd(launch(&[("running", 1.0)])));
    assert!(s.garbage_due(
        &v1::CollectGarbage {
            max_completed_tasks_per_framework: 3,
            max_completed_frameworks: 50,
            ..Default::default()
        },
        2000
    ));
    assert_eq!(s.apply_command(&at(2000, gc(3, 0, 50, 0))), Outcome::Applied);
    let kept: Vec<&str> = s.tasks.keys().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        kept,
        ["running", "t0", "t1", "t2"],
        "the newest three finished tasks and the running one"
    );
    assert_eq!(s.retention.collected_tasks, 7);
    assert_eq!(
        s.retention.dropped_updates, 7,
        "their unacknowledged updates went with them"
    );
    assert_eq!(s.validate(), Ok(()));
    assert!(!s.garbage_due(
        &v1::CollectGarbage {
            max_completed_tasks_per_framework: 3,
            max_completed_frameworks: 50,
            ..Default::default()
        },
        2000
    ));
    // S2 holds for every retained task; a collected id may be launched again.
    let r = s.apply_command(&cmd(launch(&[("t1", 1.0)])));
    assert!(matches!(&r, Outcome::Rejected(m) if m.contains("S2")), "{r:?}");
    assert_eq!(s.apply_command(&cmd(launch(&[("t9", 1.0)]))), Outcome::Applied);
    // Age: finished before now - age goes, however few.
    assert_eq!(s.apply_command(&at(2000, gc(1000, 1000, 50, 0))), Outcome::Applied);
    let kept: Vec<&str> = s.tasks.keys().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        kept,
        ["running", "t0", "t9"],
        "t1 (999) and t2 (998) finished before 2000 - 1000"
    );
    assert_eq!(s.validate(), Ok(()));
}

fn statuses(updates: impl Iterator<Item = (String, Vec<u8>, i64)>) -> v1::command::Kind {
    v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
        statuses: updates
            .map(|(task, uuid, at_ms)| v1::TaskStatus {
                task_id: task,
                framework_id: "f1".into(),
                agent_id: "a1".into(),
                state: v1::TaskState::TaskRunning as i32,
                uuid,
                timestamp_ms: at_ms,
                ..Default::default()
            })
            .collect(),
    })
}

#[test]
fn unacknowledged_updates_are_bounded_per_framework_oldest_dropped_first() {
    let mut s = cluster_with_agent(1_000_000.0, 1_000_000.0);
    // Enough tasks that each holds fewer than the per-task bound and the framework
    // holds more than its own: 4,000 tasks x 13 updates = 52,000 > 50,000.
    let tasks: Vec<String> = (0..4000).map(|i| format!("t{i:04}")).collect();
    for chunk in tasks.chunks(500) {
        let l: Vec<(&str, f64)> = chunk.iter().map(|t| (t.as_str(), 1.0)).collect();
        assert_eq!(s.apply_command(&cmd(launch(&l))), Outcome::Applied);
    }
    let per_task = 13;
    assert!(per_task < MAX_UNACKED_PER_TASK && tasks.len() * per_task > MAX_UNACKED_PER_FRAMEWORK);
    // Round r gives every task an update stamped r: round 0 is the oldest.
    for round in 0..per_task {
        let updates = tasks
            .iter()
            .map(|t| (t.clone(), format!("{t}-{round}").into_bytes(), round as i64));
        assert_eq!(s.apply_command(&cmd(statuses(updates))), Outcome::Applied);
    }
    let held: usize = s.tasks.values().map(|t| t.unacked.len()).sum();
    assert_eq!(held, MAX_UNACKED_PER_FRAMEWORK);
    let dropped = tasks.len() * per_task - MAX_UNACKED_PER_FRAMEWORK;
    assert_eq!(s.retention.dropped_updates, dropped as u64);
    // The 2,000 dropped are round 0's first 2,000 tasks (oldest stamp, then task id).
    for (i, t) in tasks.iter().enumerate() {
        let first = &s.tasks[&("f1".to_string(), t.clone())].unacked[0];
        let expect_round = if i < dropped { 1 } else { 0 };
        assert_eq!(first.uuid, format!("{t}-{expect_round}").into_bytes(), "{t}");
    }
    assert_eq!(s.validate(), Ok(()));
    // Acknowledging frees room: the next update drops nothing.
    let ack = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
        acks: vec![v1::StatusAck {
            framework_id: "f1".into(),
            task_id: tasks[3999].clone(),
            uuid: format!("{}-0", tasks[3999]).into_bytes(),
        }],
    });
    assert_eq!(s.apply_command(&cmd(ack)), Outcome::Applied);
    let one = std::iter::once((tasks[0].clone(), b"late".to_vec(), 99));
    assert_eq!(s.apply_command(&cmd(statuses(one))), Outcome::Applied);
    assert_eq!(s.retention.dropped_updates, dropped as u64);
    assert_eq!(s.validate(), Ok(()));
    // The index is derived: a restored replica rebuilds the same one.
    assert_eq!(ClusterState::decode(&s.encode()).unwrap(), s);
}

#[test]
fn a_snapshot_view_is_the_state_when_taken_whatever_apply_does_next() {
    let mut s = cluster_with_agent(100.0, 1024.0);
    s.apply_command(&cmd(launch(&[("a", 1.0), ("b", 1.0)])));
    let before = s.clone();
    let view = s.snapshot_view();
    s.apply_command(&cmd(status("a", v1::TaskState::TaskFinished, 1)));
    s.apply_command(&cmd(launch(&[("c", 1.0)])));
    let mut bytes = Vec::new();
    view.write_to(&mut bytes).unwrap();
    assert_eq!(bytes, before.encode(), "the view encodes the state as it was");
    assert_eq!(ClusterState::decode(&bytes).unwrap(), before);
    assert_ne!(bytes, s.encode());
}

#[test]
fn retention_removes_old_torn_down_frameworks_once_their_tasks_ended() {
    let mut s = cluster_with_agent(100.0, 1024.0);
    s.apply_command(&cmd(launch(&[("t", 1.0)])));
    for f in ["f2", "f3"] {
        let reg = v1::RegisterFramework {
            framework_id: f.into(),
            info: Some(v1::FrameworkInfo {
                name: f.into(),
                ..Default::default()
            }),
        };
        s.apply_command(&cmd(v1::command::Kind::RegisterFramework(reg)));
    }
    for (f, t) in [("f1", 10), ("f2", 20), ("f3", 30)] {
        let down = v1::command::Kind::TeardownFramework(v1::TeardownFramework { framework_id: f.into() });
        s.apply_command(&at(t, down));
    }
    // Keep one: f2 goes (f1 is older but still has a running task), f3 stays.
    s.apply_command(&at(100, gc(1000, 0, 1, 0)));
    assert!(s.frameworks.contains_key("f1") && !s.frameworks.contains_key("f2") && s.frameworks.contains_key("f3"));
    s.apply_command(&cmd(status("t", v1::TaskState::TaskKilled, 1)));
    s.apply_command(&at(100, gc(1000, 0, 1, 0)));
    assert_eq!(s.frameworks.keys().collect::<Vec<_>>(), ["f3"]);
    assert!(s.tasks.is_empty(), "f1's finished task went with it");
    assert_eq!(s.retention.collected_frameworks, 2);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn agents_unreachable_too_long_are_gone_then_removed() {
    let mut s = cluster_with_agent(100.0, 1024.0);
    s.apply_command(&cmd(launch(&[("t", 1.0)])));
    let mark = v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: "a1".into() });
    s.apply_command(&at(1000, mark));
    // The first GC notes when it saw the agent away; the age counts from there.
    s.apply_command(&at(5000, gc(1000, 0, 50, 10_000)));
    assert_eq!(s.retention.unreachable_since.get("a1"), Some(&5000));
    s.apply_command(&at(14_999, gc(1000, 0, 50, 10_000)));
    assert_eq!(s.agents["a1"].state, AgentState::Unreachable);
    s.apply_command(&at(15_000, gc(1000, 0, 50, 10_000)));
    assert_eq!(s.agents["a1"].state, AgentState::Gone);
    let t = &s.tasks[&("f1".to_string(), "t".to_string())];
    assert_eq!(t.state(), v1::TaskState::TaskGone);
    assert_eq!(t.unacked.last().map(|u| u.state), Some(v1::TaskState::TaskGone as i32));
    // Its task finished, so it is kept only as long as finished tasks are; then the agent goes.
    s.apply_command(&at(16_000, gc(0, 0, 50, 10_000)));
    assert!(s.tasks.is_empty());
    assert!(
        s.agents.contains_key("a1"),
        "removed only by a GC that finds it without tasks"
    );
    s.apply_command(&at(16_000, gc(0, 0, 50, 10_000)));
    assert!(!s.agents.contains_key("a1"));
    assert!(s.retention.unreachable_since.is_empty());
    assert_eq!(s.retention.collected_agents, 1);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn version_1_snapshots_are_read() {
    let mut s = cluster_with_agent(4.0, 1024.0);
    s.apply_command(&cmd(launch(&[("t1", 1.0)])));
    let mut old = vec![1u8];
    // Frameworks as version 1 wrote them: without principals (the test's are anonymous).
    let frameworks: std::collections::BTreeMap<String, super::snapshot::FrameworkRecordV2> =
        s.frameworks.iter().map(|(k, f)| (k.clone(), f.into())).collect();
    let agents: std::collections::BTreeMap<String, super::snapshot::AgentRecordV3> =
        s.agents.iter().map(|(k, a)| (k.clone(), a.into())).collect();
    old.extend(
        postcard::to_allocvec(&(
            &s.weights,
            &agents,
            &frameworks,
            &s.tasks,
            s.applied_commands,
            s.rejected_commands,
        ))
        .unwrap(),
    );
    let back = ClusterState::decode(&old).unwrap();
    assert_eq!(back.tasks, s.tasks);
    assert_eq!(back.validate(), Ok(()));
    assert_eq!(back.hash(), s.hash());
}

#[test]
fn launch_refuses_over_commit_and_reused_task_ids() {
    let mut s = cluster_with_agent(4.0, 1024.0);
    assert_eq!(
        s.apply_command(&cmd(launch(&[("t1", 1.0), ("t2", 2.0)]))),
        Outcome::Applied
    );
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 3000);
    // S1: 3 + 2 > 4, even though the leader (a buggy one) proposed it.
    let r = s.apply_command(&cmd(launch(&[("t3", 2.0)])));
    assert!(matches!(&r, Outcome::Rejected(m) if m.contains("over-commit")), "{r:?}");
    assert!(!s.tasks.contains_key(&("f1".into(), "t3".into())));
    // S2: a task id is launched once, even after it finished.
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskFinished, 1)));
    let r = s.apply_command(&cmd(launch(&[("t1", 0.5)])));
    assert!(matches!(&r, Outcome::Rejected(m) if m.contains("S2")), "{r:?}");
    // Unknown framework or agent.
    let mut bad = launch(&[("t9", 0.5)]);
    if let v1::command::Kind::LaunchTasks(l) = &mut bad {
        l.framework_id = "nope".into();
    }
    assert!(matches!(s.apply_command(&cmd(bad)), Outcome::Rejected(_)));
}

#[test]
fn statuses_free_resources_once_and_acks_clear_them() {
    let mut s = cluster_with_agent(4.0, 1024.0);
    s.apply_command(&cmd(launch(&[("t1", 1.0)])));
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 1)));
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 1))); // retry: ignored
    let t = &s.tasks[&("f1".to_string(), "t1".to_string())];
    assert_eq!(t.state(), v1::TaskState::TaskRunning);
    assert_eq!(t.unacked.len(), 1);
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskFailed, 2)));
    assert_eq!(s.agents["a1"].used, Resources::new());
    // After a terminal state nothing changes the task any more.
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 3)));
    let t = &s.tasks[&("f1".to_string(), "t1".to_string())];
    assert_eq!(t.state(), v1::TaskState::TaskFailed);
    assert_eq!(t.unacked.len(), 2);
    let ack = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
        acks: vec![v1::StatusAck {
            framework_id: "f1".into(),
            task_id: "t1".into(),
            uuid: vec![1],
        }],
    });
    s.apply_command(&cmd(ack));
    assert_eq!(s.tasks[&("f1".to_string(), "t1".to_string())].unacked.len(), 1);
    // An update for a task that does not exist is rejected.
    assert!(matches!(
        s.apply_command(&cmd(status("zz", v1::TaskState::TaskRunning, 9))),
        Outcome::Rejected(_)
    ));
}

#[test]
fn unreachable_agents_and_their_return_are_deterministic() {
    let mut replicas = [cluster_with_agent(4.0, 1024.0), cluster_with_agent(4.0, 1024.0)];
    for s in replicas.iter_mut() {
        s.apply_command(&cmd(launch(&[("kept", 1.0), ("gone", 1.0)])));
        s.apply_command(&cmd(status("kept", v1::TaskState::TaskRunning, 1)));
        s.apply_command(&cmd(status("gone", v1::TaskState::TaskRunning, 2)));
        let mark = v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: "a1".into() });
        assert_eq!(s.apply_command(&cmd(mark)), Outcome::Applied);
        assert_eq!(s.agents["a1"].state, AgentState::Unreachable);
        assert!(s.tasks.values().all(|t| t.state() == v1::TaskState::TaskUnreachable));
        // The agent returns with one of the two tasks still running.
        let inventory = vec![v1::TaskRecord {
            framework_id: "f1".into(),
            task: Some(v1::TaskInfo {
                task_id: "kept".into(),
                ..Default::default()
            }),
            state: v1::TaskState::TaskRunning as i32,
            exit_code: None,
        }];
        let info = v1::AgentInfo {
            hostname: "h1".into(),
            resources: vec![scalar("cpus", 4.0), scalar("mem", 1024.0)],
            ..Default::default()
        };
        let back = v1::command::Kind::ReregisterAgent(v1::ReregisterAgent {
            agent_id: "a1".into(),
            info: Some(info),
            tasks: inventory,
        });
        assert_eq!(s.apply_command(&cmd(back)), Outcome::Applied);
        assert_eq!(
            s.tasks[&("f1".to_string(), "kept".to_string())].state(),
            v1::TaskState::TaskRunning
        );
        assert_eq!(
            s.tasks[&("f1".to_string(), "gone".to_string())].state(),
            v1::TaskState::TaskLost
        );
        assert_eq!(
            s.agents["a1"].used.scalar_milli("cpus"),
            1000,
            "the lost task's resources are free"
        );
    }
    // Master-made updates (uuids included) are the same on every replica.
    assert_eq!(replicas[0].hash(), replicas[1].hash());
}

#[test]
fn restore_rebuilds_the_agent_index() {
    let mut s = cluster_with_agent(4.0, 1024.0);
    s.apply_command(&cmd(launch(&[("t1", 1.0), ("t2", 1.0)])));
    let back = ClusterState::decode(&s.encode()).unwrap();
    assert_eq!(back.tasks_on("a1").count(), 2);
    assert_eq!(back.validate(), Ok(()));
    assert_eq!(back.hash(), s.hash());
}

#[test]
fn newer_snapshot_formats_are_refused() {
    let mut bytes = ClusterState::default().encode();
    bytes[0] = SNAPSHOT_FORMAT + 1;
    assert!(ClusterState::decode(&bytes).unwrap_err().contains("newer"));
}

/// A launch of a task with 20 labels and 20 environment variables, built with the maps
/// filled in `order`.
fn launch_with_maps(order: &[usize]) -> v1::command::Kind {
    let mut labels = BTreeMap::new();
    let mut environment = BTreeMap::new();
    for &i in order {
        labels.insert(format!("label-{i}"), format!("value-{i}"));
        environment.insert(format!("VAR_{i}"), format!("{i}"));
    }
    v1::command::Kind::LaunchTasks(v1::LaunchTasks {
        framework_id: "f1".into(),
        agent_id: "a1".into(),
        tasks: vec![v1::TaskInfo {
            task_id: "mapped".into(),
            agent_id: "a1".into(),
            resources: vec![scalar("cpus", 1.0)],
            command: Some(v1::CommandInfo {
                argv: vec!["true".into()],
                environment,
                ..Default::default()
            }),
            labels,
            ..Default::default()
        }],
    })
}

/// The state hash after launching the task of [`launch_with_maps`].
fn hash_with_maps(order: &[usize]) -> String {
    let mut s = cluster_with_agent(4.0, 1024.0);
    assert_eq!(s.apply_command(&cmd(launch_with_maps(order))), Outcome::Applied);
    s.hash()
}

/// Set in the child process of `maps_hash_the_same_in_any_order_and_in_any_process`.
const HASH_CHILD_ENV: &str = "CORRAL_STATE_HASH_CHILD";

/// S3 for records with maps: a map's encoding (and so the state hash) depends neither
/// on the order its entries were inserted in nor on the process (a HashMap's iteration
/// order differs between processes; prost maps are BTreeMaps for this reason).
#[test]
fn maps_hash_the_same_in_any_order_and_in_any_process() {
    let forward: Vec<usize> = (0..20).collect();
    let backward: Vec<usize> = (0..20).rev().collect();
    let shuffled: Vec<usize> = (0..20).map(|i| (i * 7) % 20).collect();
    let here = hash_with_maps(&forward);
    if std::env::var_os(HASH_CHILD_ENV).is_some() {
        println!("hash={here}");
        return;
    }
    assert_eq!(hash_with_maps(&backward), here);
    assert_eq!(hash_with_maps(&shuffled), here);
    // The same state built in another process: the test binary, run on this test.
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "state::tests::maps_hash_the_same_in_any_order_and_in_any_process",
            "--nocapture",
        ])
        .env(HASH_CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let theirs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("hash="))
        .unwrap_or_else(|| panic!("the child printed no hash: {stdout}"));
    assert_eq!(theirs, here, "another process hashes the same state differently");
}

/// Every kind of command, in a random order over a small universe of agents,
/// frameworks and tasks: after each one the invariants hold (S1 and the indexes) and
/// the incremental digest equals a recomputation from every record; a restored copy
/// has the same hash.
#[test]
fn random_commands_keep_the_invariants_and_the_hash() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("CORRAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("CORRAL_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = ClusterState::default();
    let mut replica = ClusterState::default();
    let mut views: Option<(i64, SnapshotView, String)> = None;
    let (mut executors_started, mut executors_ended) = (0usize, 0u64);
    let agents = ["a1", "a2", "a3"];
    let frameworks = ["f1", "f2", "f3"];
    let states = [
        v1::TaskState::TaskRunning,
        v1::TaskState::TaskFinished,
        v1::TaskState::TaskFailed,
        v1::TaskState::TaskKilled,
    ];
    for step in 0..3000i64 {
        let agent = agents[rng.random_range(0..agents.len())].to_string();
        let framework = frameworks[rng.random_range(0..frameworks.len())].to_string();
        let task = format!("t{}", rng.random_range(0..40));
        let info = v1::AgentInfo {
            hostname: format!("h-{agent}"),
            resources: vec![scalar("cpus", 4.0), scalar("mem", 1024.0)],
            capabilities: if rng.random_bool(0.8) {
                vec![CAPABILITY_EXECUTORS.into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let executor = format!("e{}", rng.random_range(0..3));
        use v1::command::Kind;
        let kind = match rng.random_range(0..40) {
            0..=2 => Kind::RegisterAgent(v1::RegisterAgent {
                agent_id: agent,
                info: Some(info),
            }),
            3..=5 => Kind::ReregisterAgent(v1::ReregisterAgent {
                tasks: s
                    .tasks_on(&agent)
                    .filter(|_| rng.random_bool(0.5))
                    .map(|t| v1::TaskRecord {
                        framework_id: t.framework_id.clone(),
                        task: Some(v1::TaskInfo {
                            task_id: t.task_id.clone(),
                            ..Default::default()
                        }),
                        state: v1::TaskState::TaskRunning as i32,
                        exit_code: None,
                    })
                    .collect(),
                agent_id: agent,
                info: Some(info),
            }),
            6 => Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: agent }),
            7..=8 => Kind::RegisterFramework(v1::RegisterFramework {
                framework_id: framework,
                info: Some(v1::FrameworkInfo {
                    name: "fw".into(),
                    ..Default::default()
                }),
            }),
            9 => Kind::UpdateFramework(v1::UpdateFramework {
                info: Some(v1::FrameworkInfo {
                    framework_id: framework,
                    name: format!("fw{step}"),
                    ..Default::default()
                }),
            }),
            10 => Kind::DisconnectFramework(v1::DisconnectFramework {
                framework_id: framework,
            }),
            11 if rng.random_bool(0.1) => Kind::TeardownFramework(v1::TeardownFramework {
                framework_id: framework,
            }),
            11..=14 => Kind::LaunchTasks(v1::LaunchTasks {
                tasks: vec![v1::TaskInfo {
                    task_id: task,
                    agent_id: agent.clone(),
                    resources: vec![scalar("cpus", 0.5)],
                    executor: Some(v1::ExecutorInfo {
                        executor_id: executor,
                        // Now and then a second description of the same id: refused.
                        name: format!("exec-{}", u8::from(rng.random_bool(0.1))),
                        command: Some(v1::CommandInfo {
                            argv: vec!["executor".into()],
                            ..Default::default()
                        }),
                        resources: vec![scalar("cpus", 0.25), scalar("mem", 32.0)],
                        ..Default::default()
                    }),
                    data: vec![1, 2, 3],
                    ..Default::default()
                }],
                framework_id: framework,
                agent_id: agent,
            }),
            15 => Kind::ExecutorExited(v1::ExecutorExited {
                framework_id: framework,
                agent_id: agent,
                executor_id: executor,
                message: "exited".into(),
                exit_code: Some(rng.random_range(0..3)),
            }),
            16..=20 => Kind::LaunchTasks(v1::LaunchTasks {
                tasks: vec![v1::TaskInfo {
                    task_id: task,
                    agent_id: agent.clone(),
                    resources: vec![scalar("cpus", 0.5)],
                    command: Some(v1::CommandInfo {
                        argv: vec!["true".into()],
                        environment: (0..rng.random_range(0..6))
                            .map(|i| (format!("V{}", rng.random_range(0..20)), format!("{i}")))
                            .collect(),
                        ..Default::default()
                    }),
                    labels: (0..rng.random_range(0..6))
                        .map(|i| (format!("l{}", rng.random_range(0..20)), format!("{i}")))
                        .collect(),
                    ..Default::default()
                }],
                framework_id: framework,
                agent_id: agent,
            }),
            21..=32 => Kind::UpdateStatuses(v1::UpdateStatuses {
                statuses: vec![v1::TaskStatus {
                    task_id: task,
                    framework_id: framework,
                    agent_id: agent,
                    state: states[rng.random_range(0..states.len())] as i32,
                    uuid: vec![rng.random_range(0..8)],
                    timestamp_ms: step,
                    ..Default::default()
                }],
            }),
            33..=34 => Kind::CollectGarbage(v1::CollectGarbage {
                max_completed_tasks_per_framework: rng.random_range(0..8),
                completed_task_max_age_ms: rng.random_range(0..200),
                max_completed_frameworks: rng.random_range(0..3),
                agent_gc_age_ms: rng.random_range(0..200),
            }),
            _ => Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
                acks: vec![v1::StatusAck {
                    framework_id: framework,
                    task_id: task,
                    uuid: vec![rng.random_range(0..8)],
                }],
            }),
        };
        let c = at(step, kind);
        // A replica fed the command after a trip through its wire encoding, as a follower
        // gets it: it must reach the same state and hash.
        let wire = v1::Command::decode(c.encode_to_vec().as_slice()).expect("decodes");
        let exit = matches!(c.kind, Some(Kind::ExecutorExited(_)));
        let before: usize = s.agents.values().map(|a| a.executors.len()).sum();
        if s.apply_command(&c) == Outcome::Applied && exit {
            executors_ended += 1;
        }
        let after: usize = s.agents.values().map(|a| a.executors.len()).sum();
        executors_started += after.saturating_sub(before);
        replica.apply_command(&wire);
        assert_eq!(s.digests.sums(), s.full_digest_sums(), "step {step}");
        assert_eq!(s.validate(), Ok(()), "step {step}");
        // A snapshot view taken now still encodes this state after later commands
        // changed the shared trees.
        if step % 250 == 0 {
            if let Some((at_step, view, then)) = views.take() {
                let mut bytes = Vec::new();
                view.write_to(&mut bytes).unwrap();
                let restored = ClusterState::decode(&bytes).unwrap();
                assert_eq!(restored.hash(), then, "the view of step {at_step}");
            }
            views = Some((step, s.snapshot_view(), s.hash()));
        }
    }
    assert!(
        s.tasks.len() as u64 + s.retention.collected_tasks > 10,
        "the sequence launched tasks"
    );
    assert!(s.retention.collected_tasks > 0, "the sequence collected tasks");
    assert!(
        executors_started > 0 && executors_ended > 0,
        "the sequence started ({executors_started}) and ended ({executors_ended}) executors"
    );
    assert_eq!(replica.hash(), s.hash(), "a replica fed the encoded commands diverged");
    let back = ClusterState::decode(&s.encode()).unwrap();
    assert_eq!(back.hash(), s.hash());
}

#[test]
fn a_batch_with_a_command_this_master_does_not_handle_halts_apply() {
    use corral_raft_store::StateMachine;
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 5);
    let known = v1::Command {
        timestamp_ms: 1,
        kind: Some(v1::command::Kind::SetWeights(v1::SetWeights::default())),
    };
    let ok = crate::raft::types::Proposal::of(vec![known.clone()]);
    assert!(<ClusterState as StateMachine<crate::raft::types::CorralRaft>>::decode(&log_id, &ok).is_ok());
    // An unknown kind (from a newer master) decodes with no kind: refused, never skipped.
    let unknown = v1::Command {
        timestamp_ms: 1,
        kind: None,
    };
    let bad = crate::raft::types::Proposal::of(vec![known, unknown]);
    let err = <ClusterState as StateMachine<crate::raft::types::CorralRaft>>::decode(&log_id, &bad)
        .expect_err("an unknown command kind must stop apply");
    assert!(err.contains("command 1"), "{err}");
}

/// Watch events: what appeared, changed state or went, between two views; a status update
/// that does not change a task's state (its acknowledgement) is no event.
#[test]
fn watch_events_say_what_changed_between_two_views() {
    use super::changes::changes;
    use v1::watch_event::Event;
    let describe = |events: Vec<v1::WatchEvent>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e.event {
                Some(Event::Task(t)) => format!(
                    "task {} {}{}",
                    t.task_id,
                    v1::TaskState::try_from(t.state).map_or("?", |s| s.as_str_name()),
                    if t.removed { " removed" } else { "" }
                ),
                Some(Event::Agent(a)) => format!("agent {} {}", a.agent_id, a.state),
                Some(Event::Framework(f)) => format!("framework {} {}", f.framework_id, f.state),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let empty = ClusterState::default().watch_view(0);
    let mut s = cluster_with_agent(4.0, 1024.0);
    let v1_ = s.watch_view(2);
    assert_eq!(
        describe(changes(&empty, &v1_)),
        ["agent a1 1", "framework f1 1"],
        "registered: AGENT_ACTIVE, FRAMEWORK_CONNECTED"
    );
    assert!(changes(&v1_, &s.watch_view(2)).is_empty(), "nothing changed");

    assert_eq!(
        s.apply_command(&cmd(launch(&[("t1", 1.0), ("t2", 1.0)]))),
        Outcome::Applied
    );
    assert_eq!(
        s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 1))),
        Outcome::Applied
    );
    let v2 = s.watch_view(4);
    assert_eq!(
        describe(changes(&v1_, &v2)),
        ["task t1 TASK_RUNNING", "task t2 TASK_STAGING"]
    );
    assert!(changes(&v1_, &v2).iter().all(|e| e.index == 4));

    // An acknowledgement changes the record, not the task's state: no event.
    let ack = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
        acks: vec![v1::StatusAck {
            framework_id: "f1".into(),
            task_id: "t1".into(),
            uuid: vec![1],
        }],
    });
    assert_eq!(s.apply_command(&cmd(ack)), Outcome::Applied);
    let v3 = s.watch_view(5);
    assert!(changes(&v2, &v3).is_empty(), "{:?}", describe(changes(&v2, &v3)));

    assert_eq!(
        s.apply_command(&at(10, finish_at("t1", v1::TaskState::TaskFinished, 2, 10))),
        Outcome::Applied
    );
    let v4 = s.watch_view(6);
    assert_eq!(describe(changes(&v3, &v4)), ["task t1 TASK_FINISHED"]);
    assert_eq!(s.apply_command(&at(11, gc(0, 0, 50, 0))), Outcome::Applied);
    let v5 = s.watch_view(7);
    assert_eq!(describe(changes(&v4, &v5)), ["task t1 TASK_FINISHED removed"]);
    // Coalesced: a task that ended and was removed between two views is reported removed
    // with the last state the watcher saw.
    assert_eq!(describe(changes(&v3, &v5)), ["task t1 TASK_RUNNING removed"]);
}

fn executor_info(id: &str, cpus: f64) -> v1::ExecutorInfo {
    v1::ExecutorInfo {
        executor_id: id.into(),
        name: format!("{id} executor"),
        command: Some(v1::CommandInfo {
            argv: vec!["./executor".into()],
            ..Default::default()
        }),
        resources: vec![scalar("cpus", cpus), scalar("mem", 64.0)],
        data: Vec::new(),
    }
}

/// A launch of tasks `(id, cpus)` for executor `e` on a1.
fn launch_on(executor: &v1::ExecutorInfo, tasks: &[(&str, f64)]) -> v1::command::Kind {
    let mut kind = launch(tasks);
    if let v1::command::Kind::LaunchTasks(l) = &mut kind {
        for t in &mut l.tasks {
            t.command = None;
            t.executor = Some(executor.clone());
            t.data = b"payload".to_vec();
        }
    }
    kind
}

fn cluster_with_executor_agent(cpus: f64, mem: f64) -> ClusterState {
    let mut s = cluster_with_agent(cpus, mem);
    let info = v1::AgentInfo {
        hostname: "h1".into(),
        resources: vec![scalar("cpus", cpus), scalar("mem", mem)],
        capabilities: vec![CAPABILITY_EXECUTORS.into()],
        ..Default::default()
    };
    let again = v1::ReregisterAgent {
        agent_id: "a1".into(),
        info: Some(info),
        tasks: Vec::new(),
    };
    assert_eq!(
        s.apply_command(&cmd(v1::command::Kind::ReregisterAgent(again))),
        Outcome::Applied
    );
    s
}

fn exited(executor: &str) -> v1::command::Kind {
    v1::command::Kind::ExecutorExited(v1::ExecutorExited {
        framework_id: "f1".into(),
        agent_id: "a1".into(),
        executor_id: executor.into(),
        message: "exit status 3".into(),
        exit_code: Some(3),
    })
}

#[test]
fn executor_resources_count_against_the_agent_once_and_apply_refuses_over_commit() {
    let mut s = cluster_with_executor_agent(4.0, 1024.0);
    let e = executor_info("e1", 1.0);
    // Task 1.0 + executor 1.0.
    assert_eq!(s.apply_command(&cmd(launch_on(&e, &[("t1", 1.0)]))), Outcome::Applied);
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 2000);
    assert_eq!(s.agents["a1"].used.scalar_milli("mem"), 64_000);
    // A second task for the running executor: the executor is not counted again.
    assert_eq!(s.apply_command(&cmd(launch_on(&e, &[("t2", 1.0)]))), Outcome::Applied);
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 3000);
    assert_eq!(s.agents["a1"].executors.len(), 1);
    // S1: a new executor of 1.0 with a task of 0.5 does not fit in the 1.0 left, although
    // the task alone would (a buggy leader proposed it; apply refuses).
    let e2 = executor_info("e2", 1.0);
    let r = s.apply_command(&cmd(launch_on(&e2, &[("t3", 0.5)])));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("over-commit") && m.contains("S1")),
        "{r:?}"
    );
    assert!(!s.tasks.contains_key(&("f1".into(), "t3".into())));
    assert!(!s.agents["a1"].executors.contains_key(&("f1".into(), "e2".into())));
    // The same task without a new executor fits.
    assert_eq!(s.apply_command(&cmd(launch_on(&e, &[("t3", 0.5)]))), Outcome::Applied);
    // The framework's allocation (its DRF share) includes the executor.
    assert_eq!(s.framework_used["f1"].scalar_milli("cpus"), 3500);
    assert_eq!(s.framework_used["f1"].scalar_milli("mem"), 64_000);
    assert_eq!(s.validate(), Ok(()));
    // Finished tasks free their own resources; the executor keeps its until it ends.
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskFinished, 1)));
    s.apply_command(&cmd(status("t2", v1::TaskState::TaskFinished, 2)));
    s.apply_command(&cmd(status("t3", v1::TaskState::TaskFinished, 3)));
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 1000);
    assert_eq!(s.framework_used["f1"].scalar_milli("cpus"), 1000);
    assert_eq!(s.apply_command(&cmd(exited("e1"))), Outcome::Applied);
    assert_eq!(s.agents["a1"].used, Resources::new());
    assert_eq!(s.framework_used["f1"], Resources::new());
    // A second report of the same exit is refused and changes nothing.
    let (agents, tasks) = (s.agents.clone(), s.tasks.clone());
    assert!(matches!(s.apply_command(&cmd(exited("e1"))), Outcome::Rejected(m) if m.contains("executor_id")));
    assert_eq!((s.agents.clone(), s.tasks.clone()), (agents, tasks));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn an_executor_that_ends_fails_its_unfinished_tasks_and_frees_everything() {
    let mut s = cluster_with_executor_agent(4.0, 1024.0);
    let e = executor_info("e1", 0.5);
    assert_eq!(
        s.apply_command(&cmd(launch_on(&e, &[("t1", 1.0), ("t2", 1.0)]))),
        Outcome::Applied
    );
    // A command task beside it is not the executor's.
    assert_eq!(s.apply_command(&cmd(launch(&[("c1", 1.0)]))), Outcome::Applied);
    s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 1)));
    s.apply_command(&cmd(status("t2", v1::TaskState::TaskFinished, 2)));
    assert_eq!(s.apply_command(&cmd(exited("e1"))), Outcome::Applied);
    let t1 = &s.tasks[&("f1".to_string(), "t1".to_string())];
    assert_eq!(t1.state(), v1::TaskState::TaskFailed);
    assert_eq!(t1.status.reason, v1::Reason::ExecutorTerminated as i32);
    assert!(t1.status.message.contains("exit status 3"), "{}", t1.status.message);
    // The framework must hear of it: the update waits for its acknowledgement.
    assert_eq!(t1.unacked.len(), 2);
    let t2 = &s.tasks[&("f1".to_string(), "t2".to_string())];
    assert_eq!(t2.state(), v1::TaskState::TaskFinished);
    let c1 = &s.tasks[&("f1".to_string(), "c1".to_string())];
    assert_eq!(c1.state(), v1::TaskState::TaskStaging);
    // Only the command task holds anything now.
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 1000);
    assert_eq!(s.framework_used["f1"].scalar_milli("cpus"), 1000);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn executor_launches_are_refused_where_they_cannot_run() {
    // An agent that does not advertise EXECUTORS runs command tasks only.
    let mut s = cluster_with_agent(4.0, 1024.0);
    let e = executor_info("e1", 0.5);
    let r = s.apply_command(&cmd(launch_on(&e, &[("t1", 1.0)])));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("tasks[0].executor") && m.contains("does not run executors")),
        "{r:?}"
    );
    assert_eq!(s.agents["a1"].used, Resources::new());

    let mut s = cluster_with_executor_agent(4.0, 1024.0);
    assert_eq!(s.apply_command(&cmd(launch_on(&e, &[("t1", 1.0)]))), Outcome::Applied);
    // The running executor described otherwise.
    let mut other = e.clone();
    other.command = Some(v1::CommandInfo {
        argv: vec!["./other".into()],
        ..Default::default()
    });
    let r = s.apply_command(&cmd(launch_on(&other, &[("t2", 1.0)])));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("tasks[0].executor") && m.contains("different")),
        "{r:?}"
    );
    // Two tasks of one launch describing one executor differently.
    let mut kind = launch_on(&executor_info("e3", 0.5), &[("t3", 0.5), ("t4", 0.5)]);
    if let v1::command::Kind::LaunchTasks(l) = &mut kind {
        l.tasks[1].executor.as_mut().unwrap().name = "renamed".into();
    }
    let r = s.apply_command(&cmd(kind));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("tasks[1].executor")),
        "{r:?}"
    );
    // A task with both a command and an executor, or with neither.
    let mut kind = launch_on(&e, &[("t5", 0.5)]);
    if let v1::command::Kind::LaunchTasks(l) = &mut kind {
        l.tasks[0].command = Some(v1::CommandInfo {
            argv: vec!["true".into()],
            ..Default::default()
        });
    }
    let r = s.apply_command(&cmd(kind));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("tasks[0].executor") && m.contains("not both")),
        "{r:?}"
    );
    let mut kind = launch(&[("t6", 0.5)]);
    if let v1::command::Kind::LaunchTasks(l) = &mut kind {
        l.tasks[0].command = None;
    }
    let r = s.apply_command(&cmd(kind));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("tasks[0].command")),
        "{r:?}"
    );
    // Oversized task data.
    let mut kind = launch_on(&e, &[("t7", 0.5)]);
    if let v1::command::Kind::LaunchTasks(l) = &mut kind {
        l.tasks[0].data = vec![0; crate::validate::MAX_TASK_DATA_BYTES + 1];
    }
    let r = s.apply_command(&cmd(kind));
    assert!(
        matches!(&r, Outcome::Rejected(m) if m.contains("tasks[0].data")),
        "{r:?}"
    );
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 1500);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn executors_survive_a_snapshot_and_go_with_their_agent() {
    let mut s = cluster_with_executor_agent(4.0, 1024.0);
    let e = executor_info("e1", 0.5);
    assert_eq!(s.apply_command(&cmd(launch_on(&e, &[("t1", 1.0)]))), Outcome::Applied);
    let back = ClusterState::decode(&s.encode()).unwrap();
    assert_eq!(back.hash(), s.hash());
    assert_eq!(back.agents["a1"].executors, s.agents["a1"].executors);
    assert_eq!(back.framework_used["f1"], s.framework_used["f1"]);
    assert_eq!(back.validate(), Ok(()));
    // Unreachable: the executor keeps its resources (it may come back); gone: freed.
    assert_eq!(
        s.apply_command(&at(
            10,
            v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: "a1".into() })
        )),
        Outcome::Applied
    );
    assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 1500);
    s.apply_command(&at(20, gc(100, 0, 100, 5)));
    s.apply_command(&at(30, gc(100, 0, 100, 5)));
    assert_eq!(s.agents.get("a1").map(|a| a.state), Some(AgentState::Gone));
    assert!(s.agents["a1"].executors.is_empty());
    assert_eq!(s.framework_used["f1"], Resources::new());
    assert_eq!(s.validate(), Ok(()));
}

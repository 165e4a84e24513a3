//! Snapshot cost at scale, through the real store: 1,000 agents, 50 frameworks and
//! `--tasks` live (running) tasks, applied as Raft entries. Prints how long the state's lock
//! was held to take the snapshot view, the whole build (encode + write + fsync), the
//! snapshot's size, and the longest apply while a build runs against one without.
//!
//! `cargo bench -p corral-master --bench snapshot -- --tasks 100000`

use std::time::{Duration, Instant};

use corral_master::raft::types::{CorralRaft, Proposal};
use corral_master::state::ClusterState;
use corral_proto::v1;
use corral_raft_store::openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use corral_raft_store::openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use corral_raft_store::{Identity, LogStore, Options, SmStore};

const AGENTS: usize = 1_000;
const FRAMEWORKS: usize = 50;

fn scalar(name: &str, value: f64) -> v1::Resource {
    v1::Resource {
        name: name.into(),
        value: Some(v1::resource::Value::Scalar(value)),
    }
}

fn command(kind: v1::command::Kind) -> v1::Command {
    v1::Command {
        timestamp_ms: 1_700_000_000_000,
        kind: Some(kind),
    }
}

struct Applier {
    sm: SmStore<CorralRaft, ClusterState>,
    index: u64,
}

impl Applier {
    async fn apply(&mut self, commands: Vec<v1::Command>) -> Duration {
        self.index += 1;
        let entry = Entry::<CorralRaft> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Proposal::of(commands)),
        };
        let started = Instant::now();
        self.sm.apply([entry]).await.expect("apply");
        started.elapsed()
    }
}

fn agent(i: usize) -> v1::Command {
    command(v1::command::Kind::RegisterAgent(v1::RegisterAgent {
        agent_id: format!("agent-{i:04}"),
        info: Some(v1::AgentInfo {
            hostname: format!("host-{i:04}"),
            address: format!("10.0.{}.{}:5051", i / 250, i % 250),
            resources: vec![scalar("cpus", 512.0), scalar("mem", 1_048_576.0)],
            ..Default::default()
        }),
    }))
}

fn framework(i: usize) -> v1::Command {
    command(v1::command::Kind::RegisterFramework(v1::RegisterFramework {
        framework_id: format!("fw-{i:02}"),
        info: Some(v1::FrameworkInfo {
            name: format!("framework {i}"),
            role: format!("role-{}", i % 5),
            ..Default::default()
        }),
    }))
}

/// One launch of `count` tasks starting at number `first`, all on one agent.
fn launch(first: usize, count: usize) -> v1::Command {
    let fw = format!("fw-{:02}", first / count % FRAMEWORKS);
    let agent_id = format!("agent-{:04}", first / count % AGENTS);
    let tasks = (first..first + count)
        .map(|n| v1::TaskInfo {
            task_id: format!("task-{n:07}"),
            name: format!("soak task {n}"),
            agent_id: agent_id.clone(),
            resources: vec![scalar("cpus", 0.1), scalar("mem", 32.0)],
            command: Some(v1::CommandInfo {
                argv: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    command(v1::command::Kind::LaunchTasks(v1::LaunchTasks {
        framework_id: fw,
        agent_id,
        tasks,
    }))
}

/// RUNNING for `count` tasks starting at `first` (launched together by [`launch`]).
fn running(first: usize, count: usize, round: usize) -> v1::Command {
    let fw = format!("fw-{:02}", first / count % FRAMEWORKS);
    let agent_id = format!("agent-{:04}", first / count % AGENTS);
    let statuses = (first..first + count)
        .map(|n| v1::TaskStatus {
            task_id: format!("task-{n:07}"),
            framework_id: fw.clone(),
            agent_id: agent_id.clone(),
            state: v1::TaskState::TaskRunning as i32,
            source: v1::Source::Agent as i32,
            uuid: format!("{n}-{round}").into_bytes(),
            timestamp_ms: 1_700_000_000_000 + round as i64,
            ..Default::default()
        })
        .collect();
    command(v1::command::Kind::UpdateStatuses(v1::UpdateStatuses { statuses }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut tasks = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--tasks" {
            tasks = args.next().and_then(|v| v.parse().ok()).expect("--tasks N");
        }
    }
    let per_launch = 100usize;
    let tasks = tasks.div_ceil(per_launch) * per_launch;
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = Identity {
        node_id: 1,
        cluster: "bench".into(),
    };
    let (_log, sm): (LogStore<CorralRaft>, SmStore<CorralRaft, ClusterState>) =
        corral_raft_store::open(dir.path(), &identity, &Options::default()).expect("open store");
    let reader = sm.reader();
    let mut applier = Applier { sm, index: 0 };
    applier.apply((0..AGENTS).map(agent).collect()).await;
    applier.apply((0..FRAMEWORKS).map(framework).collect()).await;
    let started = Instant::now();
    for first in (0..tasks).step_by(per_launch) {
        applier.apply(vec![launch(first, per_launch)]).await;
        applier.apply(vec![running(first, per_launch, 0)]).await;
    }
    {
        let state = reader.read();
        assert_eq!(state.app.tasks.len(), tasks, "every launch applied");
        assert!(state.app.staging.is_empty(), "every task running");
    }
    println!(
        "state: {AGENTS} agents, {FRAMEWORKS} frameworks, {tasks} running tasks (built in {:.1?})",
        started.elapsed()
    );

    // What a build held the lock for before views: encoding the whole state in memory.
    let t = Instant::now();
    let encoded = reader.read().app.encode();
    let encode_in_memory = t.elapsed();

    // Apply alone: the longest of 200 batches of 100 status updates.
    let mut round = 1;
    let mut quiet = Duration::ZERO;
    for i in 0..200 {
        quiet = quiet.max(
            applier
                .apply(vec![running(i * per_launch % tasks, per_launch, round)])
                .await,
        );
    }
    round += 1;

    // A build with applies running beside it.
    let mut sm = applier.sm.clone();
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await.expect("build") });
    let mut during = Duration::ZERO;
    let mut applied_during = 0;
    while !build.is_finished() {
        let first = applied_during * per_launch % tasks;
        during = during.max(applier.apply(vec![running(first, per_launch, round)]).await);
        applied_during += 1;
        if applied_during % 2000 == 0 {
            round += 1;
        }
    }
    build.await.expect("build task");
    let stats = reader.last_snapshot().expect("a snapshot was built");
    println!(
        "snapshot: {:.1} MB, build {:.1?} (view, encode, write, fsync)",
        stats.bytes as f64 / 1e6,
        stats.build
    );
    println!("  state lock held to take the view: {:.1?}", stats.locked);
    println!(
        "  for comparison, encoding the state in memory (what the lock covered before views): {:.1?} for {:.1} MB",
        encode_in_memory,
        encoded.len() as f64 / 1e6
    );
    println!(
        "apply of 100 status updates, longest: {:.2?} alone (200 batches), {:.2?} during the build ({applied_during} batches)",
        quiet, during
    );
}

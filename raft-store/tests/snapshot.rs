//! store: snapshot: build on one node, install on a fresh one, restart both.
//!
//! Real openraft nodes over an in-process network: leader A writes past its snapshot
//! threshold, snapshots and purges its log; learner B joins with an empty store and can only
//! catch up by installing A's snapshot. Both are then restarted from their data dirs and must
//! reach the same applied state, with the logs still purged behind the snapshot.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{open_node, Kv, TestConfig};
use corral_raft_store::openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use corral_raft_store::openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use corral_raft_store::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use corral_raft_store::openraft::{AnyError, BasicNode, Config, Raft, SnapshotPolicy};
use corral_raft_store::{LogStore, SmStore, StateReader};

type Node = Raft<TestConfig>;
type Router = Arc<Mutex<BTreeMap<u64, Node>>>;

struct Net {
    router: Router,
    target: u64,
}

impl Net {
    // The error type is the one openraft's RaftNetwork methods must return.
    #[allow(clippy::result_large_err)]
    fn peer<E: std::error::Error>(&self) -> Result<Node, RPCError<u64, BasicNode, RaftError<u64, E>>> {
        self.router
            .lock()
            .unwrap()
            .get(&self.target)
            .cloned()
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&AnyError::error("node is down"))))
    }
}

fn remote<E: std::error::Error>(target: u64, e: RaftError<u64, E>) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::RemoteError(RemoteError::new(target, e))
}

impl RaftNetwork<TestConfig> for Net {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TestConfig>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.peer()?
            .append_entries(rpc)
            .await
            .map_err(|e| remote(self.target, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TestConfig>,
        _: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.peer()?
            .install_snapshot(rpc)
            .await
            .map_err(|e| remote(self.target, e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.peer()?.vote(rpc).await.map_err(|e| remote(self.target, e))
    }
}

struct NetFactory(Router);

impl RaftNetworkFactory<TestConfig> for NetFactory {
    type Network = Net;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Net {
        Net {
            router: self.0.clone(),
            target,
        }
    }
}

const SNAPSHOT_EVERY: u64 = 100;
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

async fn start(id: u64, dir: &std::path::Path, router: &Router) -> (Node, StateReader<Kv>, LogStore<TestConfig>) {
    let (log, sm): (LogStore<TestConfig>, SmStore<TestConfig, Kv>) = open_node(dir, id).unwrap();
    let reader = sm.reader();
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        // Small chunks so that the snapshot crosses the network in several pieces.
        snapshot_max_chunk_size: 512,
        ..Default::default()
    };
    let raft = Raft::new(
        id,
        Arc::new(config.validate().unwrap()),
        NetFactory(router.clone()),
        log.clone(),
        sm,
    )
    .await
    .unwrap();
    router.lock().unwrap().insert(id, raft.clone());
    (raft, reader, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_snapshot_install_on_fresh_node_survives_restart() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let router: Router = Default::default();

    let (a, reader_a, log_a) = start(1, dir_a.path(), &router).await;
    a.initialize(BTreeMap::from([(1, BasicNode::new("a"))])).await.unwrap();
    a.wait(WAIT).current_leader(1, "A leads").await.unwrap();
    for i in 0..350u64 {
        a.client_write(format!("key{}={i}", i % 50)).await.unwrap();
    }
    let m = a
        .wait(WAIT)
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 250), "A snapshots")
        .await
        .unwrap();
    let snap = m.snapshot.unwrap();
    a.wait(WAIT)
        .purged(Some(snap), "A purges behind its snapshot")
        .await
        .unwrap();
    assert!(log_a.verify().unwrap().first_index.is_none_or(|f| f > snap.index));

    // B starts empty; the entries it needs are gone from A's log, so only the snapshot helps.
    let (b, reader_b, log_b) = start(2, dir_b.path(), &router).await;
    a.add_learner(2, BasicNode::new("b"), true).await.unwrap();
    let mut last = snap;
    for i in 350..370u64 {
        last = a.client_write(format!("key{}={i}", i % 50)).await.unwrap().log_id;
    }
    b.wait(WAIT)
        .applied_index(Some(last.index), "B catches up")
        .await
        .unwrap();
    assert!(
        b.metrics().borrow().snapshot.is_some_and(|s| s.index >= snap.index),
        "B installed a snapshot"
    );
    let state_a = reader_a.read().app.clone();
    assert_eq!(state_a, reader_b.read().app, "A and B applied the same state");
    assert_eq!(state_a.map.len(), 50);
    assert_eq!(state_a.map["key19"], "369");
    assert!(
        log_b.verify().unwrap().last_purged.is_some(),
        "B's log starts at its snapshot"
    );

    // Restart both from disk.
    for raft in [a, b] {
        raft.shutdown().await.unwrap();
    }
    router.lock().unwrap().clear();
    drop((reader_a, reader_b, log_a, log_b));
    let (a, reader_a, log_a) = start(1, dir_a.path(), &router).await;
    let (b, reader_b, log_b) = start(2, dir_b.path(), &router).await;
    a.wait(WAIT).current_leader(1, "A leads again").await.unwrap();
    a.wait(WAIT)
        .applied_index_at_least(Some(last.index), "A re-applied")
        .await
        .unwrap();
    b.wait(WAIT)
        .applied_index_at_least(Some(last.index), "B re-applied")
        .await
        .unwrap();
    // A new leader term appends a blank entry; wait for B to have it too before comparing.
    let now = a
        .wait(WAIT)
        .metrics(
            |m| m.last_applied.is_some_and(|l| Some(l.index) == m.last_log_index),
            "A applied its whole log",
        )
        .await
        .unwrap()
        .last_applied
        .unwrap();
    b.wait(WAIT)
        .applied_index(Some(now.index), "B applies the new term's entry")
        .await
        .unwrap();
    assert_eq!(reader_a.read().app, state_a, "A's state survived the restart");
    assert_eq!(reader_b.read().app, state_a, "B's state survived the restart");
    assert_eq!(reader_a.read().last_applied, reader_b.read().last_applied);
    for log in [&log_a, &log_b] {
        let summary = log.verify().unwrap();
        assert!(
            summary.last_purged.is_some_and(|p| p.index >= snap.index),
            "purge kept: {summary:?}"
        );
    }
    for raft in [a, b] {
        raft.shutdown().await.unwrap();
    }
}

//! A leader's own appends (`log_store`, "A leader's own appends") on three real openraft
//! nodes over an in-process network. The network passes the `leader_commit` of every
//! AppendEntries through [`LogStore::clamp_commit`], as a node that sets
//! [`crate::Options::leader_appends_before_flush`] must; one test leaves that out to show
//! what it prevents.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode, Config, Raft};

use crate::{LogStore, SmStore, StateReader};

openraft::declare_raft_types!(
    /// Payloads are strings.
    Cfg: D = String, R = String
);

/// Keeps every payload applied, in order.
#[derive(Default)]
struct Applied(Vec<String>);

impl crate::StateMachine<Cfg> for Applied {
    type Decoded = String;
    fn decode(_: &openraft::LogId<u64>, data: &String) -> Result<String, String> {
        Ok(data.clone())
    }
    fn apply(&mut self, _: &openraft::LogId<u64>, d: String) -> String {
        self.0.push(d.clone());
        d
    }
    type SnapshotView = Vec<String>;
    fn snapshot_view(&self) -> Vec<String> {
        self.0.clone()
    }
    fn write_snapshot(view: &Vec<String>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(out, view).map_err(std::io::Error::other)
    }
    fn restore(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map(Applied).map_err(|e| e.to_string())
    }
}

type Node = Raft<Cfg>;
type Router = Arc<Mutex<BTreeMap<u64, Node>>>;

/// One node's client to one peer.
struct Net {
    router: Router,
    target: u64,
    /// The sending node's log, when its `leader_commit` is clamped.
    clamp: Option<LogStore<Cfg>>,
}

type Rpc<T, E = openraft::error::Infallible> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Net {
    // The error type is the one openraft's RaftNetwork methods must return.
    #[allow(clippy::result_large_err)]
    fn peer<E: std::error::Error>(&self) -> Rpc<Node, E> {
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

impl RaftNetwork<Cfg> for Net {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<Cfg>,
        _: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        if let Some(log) = &self.clamp {
            rpc.leader_commit = log.clamp_commit(rpc.leader_commit);
        }
        self.peer()?
            .append_entries(rpc)
            .await
            .map_err(|e| remote(self.target, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Cfg>,
        _: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.peer()?
            .install_snapshot(rpc)
            .await
            .map_err(|e| remote(self.target, e))
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _: RPCOption) -> Rpc<VoteResponse<u64>> {
        self.peer()?.vote(rpc).await.map_err(|e| remote(self.target, e))
    }
}

struct NetFactory {
    router: Router,
    clamp: Option<LogStore<Cfg>>,
}

impl RaftNetworkFactory<Cfg> for NetFactory {
    type Network = Net;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Net {
        Net {
            router: self.router.clone(),
            target,
            clamp: self.clamp.clone(),
        }
    }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

struct Member {
    raft: Node,
    log: LogStore<Cfg>,
    state: StateReader<Applied>,
    _dir: tempfile::TempDir,
}

impl Member {
    fn applied(&self) -> Vec<String> {
        self.state.read().app.0.clone()
    }
}

/// Three nodes, ids 1 to 3, with a leader elected; returns them and the leader's id.
async fn cluster(clamp: bool) -> (BTreeMap<u64, Member>, u64) {
    let router = Router::default();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let identity = crate::Identity {
            node_id: id,
            cluster: "t".into(),
        };
        let options = crate::Options {
            leader_appends_before_flush: true,
            ..crate::Options::default()
        };
        let (log, sm): (LogStore<Cfg>, SmStore<Cfg, Applied>) = crate::open(dir.path(), &identity, &options).unwrap();
        let state = sm.reader();
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 1_000,
            election_timeout_max: 2_000,
            ..Default::default()
        };
        let network = NetFactory {
            router: router.clone(),
            clamp: clamp.then(|| log.clone()),
        };
        let raft = Raft::new(id, Arc::new(config.validate().unwrap()), network, log.clone(), sm)
            .await
            .unwrap();
        router.lock().unwrap().insert(id, raft.clone());
        members.insert(
            id,
            Member {
                raft,
                log,
                state,
                _dir: dir,
            },
        );
    }
    let voters: BTreeSet<u64> = (1..=3).collect();
    members[&1].raft.initialize(voters).await.unwrap();
    let m = members[&1]
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    // The leader's first entries (membership, blank) applied everywhere.
    let last = members[&leader]
        .raft
        .wait(WAIT)
        .metrics(|m| m.last_applied.is_some(), "leader applied")
        .await
        .unwrap()
        .last_log_index
        .unwrap();
    for m in members.values() {
        m.raft
            .wait(WAIT)
            .applied_index_at_least(Some(last), "caught up")
            .await
            .unwrap();
    }
    (members, leader)
}

async fn shutdown(members: BTreeMap<u64, Member>) {
    for m in members.values() {
        m.raft.shutdown().await.unwrap();
    }
}

/// Wait until both followers of `leader` have acknowledged `index` (so that openraft counts
/// it committed: the leader's own vote was given when it was queued).
async fn followers_hold(members: &BTreeMap<u64, Member>, leader: u64, index: u64) {
    let followers: Vec<u64> = members.keys().copied().filter(|id| *id != leader).collect();
    members[&leader]
        .raft
        .wait(WAIT)
        .metrics(
            |m| {
                m.replication.as_ref().is_some_and(|r| {
                    followers
                        .iter()
                        .all(|f| r.get(f).copied().flatten().is_some_and(|l| l.index >= index))
                })
            },
            "followers acknowledged the entry",
        )
        .await
        .unwrap();
}

/// The leader's entry goes to the followers while its own flush is held up, and they make it
/// durable; but nobody applies it, the client is not answered, and the followers are not
/// told it is committed until the leader's own copy is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_entry_is_applied_nowhere_before_its_own_copy_is_durable() {
    let (members, leader) = cluster(true).await;
    let first = members[&leader].raft.client_write("a".to_string()).await.unwrap();
    let a = first.log_id.index;
    for m in members.values() {
        m.raft
            .wait(WAIT)
            .applied_index_at_least(Some(a), "a applied")
            .await
            .unwrap();
    }

    let release = members[&leader].log.hold_flusher();
    let mut writing = tokio::spawn({
        let raft = members[&leader].raft.clone();
        async move { raft.client_write("b".to_string()).await.map(|r| r.data) }
    });
    // Replicated and durable on both followers while the leader's flush is held.
    followers_hold(&members, leader, a + 1).await;
    // Several heartbeats carry the leader's commit index meanwhile.
    let early = tokio::time::timeout(Duration::from_millis(400), &mut writing).await;
    assert!(
        early.is_err(),
        "the client was answered before the leader's copy was durable"
    );
    for (id, m) in &members {
        assert_eq!(
            m.applied(),
            ["a"],
            "node {id} applied b before the leader's copy was durable"
        );
    }
    assert!(members[&leader].log.flush_stats().leader_appends >= 1);

    release.send(()).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), writing).await;
    assert_eq!(answered.expect("answered once durable").unwrap().unwrap(), "b");
    for (id, m) in &members {
        m.raft
            .wait(WAIT)
            .applied_index_at_least(Some(a + 1), "b applied")
            .await
            .unwrap();
        assert_eq!(m.applied(), ["a", "b"], "node {id}");
        if *id != leader {
            assert_eq!(m.log.flush_stats().leader_appends, 0, "follower {id}");
        }
    }
    shutdown(members).await;
}

/// Without the network's clamp, the followers hear that the entry is committed and apply it
/// while the leader's copy is not on disk: the leader and one follower dying then would lose
/// an applied entry. This is what `clamp_commit` is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_clamp_a_follower_would_apply_what_the_leader_has_not_made_durable() {
    let (members, leader) = cluster(false).await;
    let first = members[&leader].raft.client_write("a".to_string()).await.unwrap();
    let a = first.log_id.index;
    let release = members[&leader].log.hold_flusher();
    let writing = tokio::spawn({
        let raft = members[&leader].raft.clone();
        async move { raft.client_write("b".to_string()).await.map(|r| r.data) }
    });
    let follower = *members.keys().find(|id| **id != leader).unwrap();
    members[&follower]
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(a + 1), "the follower applies b")
        .await
        .unwrap();
    assert_eq!(members[&follower].applied(), ["a", "b"]);
    assert_eq!(members[&leader].applied(), ["a"], "the leader itself still waits");
    release.send(()).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), writing).await;
    assert_eq!(answered.expect("answered once durable").unwrap().unwrap(), "b");
    shutdown(members).await;
}

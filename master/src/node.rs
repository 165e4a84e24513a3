//! A running master: opens the store, starts openraft, serves gRPC and HTTP on one port,
//! forms the cluster on first start, and shuts down in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_proto::v1;
use corral_raft_store::{Identity, LogStore, Options, StateReader, StoreError};
use openraft::error::RaftError;
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tonic::Status;

use crate::config::Config;
use crate::raft::network::{Network, RaftService};
use crate::raft::types::{CorralRaft, NodeId, Raft};
use crate::raft::write::{WriteError, WriteResult, Writer, WRITE_TIMEOUT};
use crate::state::ClusterState;

/// Longest a leader-only call waits for a leader to be elected (see
/// [`Shared::leader_or_hold`]). Well within the clients' request timeout (5 s), and longer
/// than an election takes with the default timeouts (under half a second).
pub const LEADER_HOLD: Duration = Duration::from_millis(1500);
/// Entries between two snapshots by default (`--snapshot-every-entries`); the log is purged
/// behind each one.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;
/// MiB of log between two snapshots by default (`--snapshot-every-mib`), whichever of this
/// and [`SNAPSHOT_EVERY_ENTRIES`] comes first. Under full churn entries are group-committed
/// batches of tens of KiB, and 10,000 of them made a log of about 200 MiB that dominated the
/// data dir (`soak-bench`); this keeps the log at a size that does not depend on the load.
pub const SNAPSHOT_EVERY_MIB: u64 = 32;
/// How often the log's growth is checked against [`SNAPSHOT_EVERY_ENTRIES`] and
/// [`SNAPSHOT_EVERY_MIB`].
const SNAPSHOT_POLICY_CHECK: Duration = Duration::from_millis(200);
/// Entries kept behind a snapshot, so that a briefly lagging follower catches up from the
/// log instead of needing the whole snapshot (about a second and a half of full churn; a
/// follower further behind is sent the snapshot).
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 500;
/// Most entries in one AppendEntries. openraft gives every AppendEntries one heartbeat
/// interval to complete, follower fsync included; with group-committed entries of up to
/// `raft::write::MAX_BATCH_BYTES`, openraft's default (300) makes messages of tens of MiB that
/// never complete in time, so a lagging follower would never catch up and, starved of
/// heartbeats, depose the leader. Two keep a message within 128 KiB: in a 10 s run of
/// `throughput-bench --configs 1000x50`, 44 AppendEntries missed the 30 ms deadline (and
/// were sent again) with eight, 4 with two, at the same throughput.
pub const MAX_PAYLOAD_ENTRIES: u64 = 2;

/// The Raft store's options. A leader's own appends go out to the followers while they are
/// flushed, not after; what makes that safe is in `corral_raft_store`'s log store, and
/// its part here is the peer network passing every `leader_commit` through
/// `LogStore::clamp_commit` (`raft::network`).
fn store_options() -> Options {
    Options {
        leader_appends_before_flush: true,
        ..Options::default()
    }
}

/// Why a master could not start.
// Each variant's message says what its fields are.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir belongs to another node or cluster, or is of a newer format: the
    /// operator must fix the configuration (exit code 2).
    #[error("{0}")]
    DataDir(StoreError),
    /// The data dir is damaged (a missing or corrupt snapshot, a broken or undecodable log):
    /// the operator restores this master from its peers (exit code 2).
    #[error(
        "data dir {dir} is damaged: {source}. Restore this master from its peers: stop it, \
         move the data dir away, remove it with `corral members remove {id}`, start it on an \
         empty data dir without --peers and add it again with `corral members add {id} <address>` \
         (README, \"Recovering a damaged master\")"
    )]
    Damaged {
        dir: std::path::PathBuf,
        id: NodeId,
        source: StoreError,
    },
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(StoreError),
    /// The port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// openraft refused to start.
    #[error("starting raft: {0}")]
    Raft(String),
    /// The TLS files could not be used (exit code 2).
    #[error("{0}")]
    Tls(corral_proto::tls::TlsError),
    /// The ACL file could not be used (exit code 2).
    #[error("{0}")]
    Acl(crate::acl::AclError),
}

/// Everything the services of one master share. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    /// The validated flags.
    pub config: Arc<Config>,
    /// This master's Raft node.
    pub raft: Raft,
    /// The applied replicated state (read side).
    pub state: StateReader<ClusterState>,
    /// The handle to the loop of the term this master leads (which owns the leader's soft
    /// state); empty while this master does not lead.
    pub leader: crate::leader::LeaderSlot,
    /// Wakes the allocator for a pass (batched: many notifications, one pass).
    pub allocate_now: Arc<tokio::sync::Notify>,
    /// The state hash at an applied index, computed once per index.
    hash_cache: Arc<Mutex<Option<(u64, String)>>>,
    /// When the leader was last heard from (see [`Shared::leader_or_hold`]).
    contact: crate::raft::network::LeaderContact,
    /// Group commit: every replicated write of this master.
    pub writer: Writer,
    /// Hints from vote traffic to the election driver.
    elections: crate::raft::election::Elections,
    /// The changes this master applies, for `Operator.Watch` ([`crate::service::watch`]).
    pub watch: crate::service::watch::Hub,
    /// Who callers are and what they may do ([`crate::acl`]).
    pub access: Arc<crate::acl::Access>,
    /// This master's Raft log store, for its counters (`/metrics`).
    pub log: LogStore<CorralRaft>,
    /// Where this master's writes spend their time, hop by hop (`/metrics`).
    pub stages: Arc<crate::raft::stages::Stages>,
    /// When this master's Raft core last answered ([`crate::raft::keepalive`]).
    pub core_probe: crate::raft::keepalive::CoreProbe,
    /// Keepalives sent and heard (`/metrics`).
    pub keepalives: Arc<crate::raft::keepalive::KeepaliveStats>,
}

/// This master's own view of itself, read consistently (index and hash from one state).
#[derive(Debug, Clone)]
pub struct SelfView {
    /// Node id.
    pub id: NodeId,
    /// Advertised address.
    pub address: String,
    /// `leader`, `follower` (a candidate too), `learner` or `unreachable` (shut down).
    pub role: &'static str,
    /// Whether it votes (learners do not).
    pub voter: bool,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of: id and address.
    pub leader: Option<(NodeId, String)>,
    /// Index of the last entry in its log.
    pub last_log_index: u64,
    /// Index of the last entry applied to its state.
    pub applied_index: u64,
    /// Hash of its applied state (equal on every master at one index).
    pub state_hash: String,
}

impl Shared {
    /// The leader's id and address, if one is known: this master itself, or a leader it
    /// has heard within the lease. openraft keeps naming the last leader after it went
    /// silent, and a follower that cannot muster a quorum never stands (its pre-votes fail)
    /// to replace that name, so the name alone would point clients at a dead master.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let (id, addr) = crate::raft::leader_of(&self.raft)?;
        (id == self.config.id || self.contact.silence(id).is_some_and(|s| s <= self.lease())).then_some((id, addr))
    }

    /// How long a leader may be silent before this master takes it for gone.
    pub fn lease(&self) -> Duration {
        crate::raft::election::Timing::new(self.config.election_timeout, self.config.heartbeat_interval).lease
    }

    /// Why this master's Raft core has stopped, if it has: it then cannot vote, append or
    /// apply, and `/health` answers 503.
    pub fn raft_failure(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match &m.running_state {
            Err(fatal) => Some(fatal.to_string()),
            Ok(()) if m.state == ServerState::Shutdown => Some("the raft core has shut down".into()),
            Ok(()) => None,
        }
    }

    /// Why this master cannot take part in the quorum right now, if it cannot: its Raft core
    /// stopped, or it is not a voter (a learner catching up, or a master not yet added).
    pub fn cannot_vote(&self) -> Option<String> {
        if let Some(why) = self.raft_failure() {
            return Some(format!("raft stopped: {why}"));
        }
        let silence = self.core_probe.silence();
        if silence >= crate::raft::keepalive::CORE_UNRESPONSIVE {
            return Some(format!(
                "the raft core has not answered for {:.1} s (a stuck disk?)",
                silence.as_secs_f64()
            ));
        }
        // A leader's core does not wait for its own log flushes: a stuck one shows here.
        let stalled = self.log.flush_outstanding();
        if stalled >= crate::raft::keepalive::CORE_UNRESPONSIVE {
            return Some(format!(
                "the raft log's disk has not answered for {:.1} s (a flush is stuck)",
                stalled.as_secs_f64()
            ));
        }
        let voter = self.membership().voter_ids().any(|v| v == self.config.id);
        (!voter).then(|| "not a voting member of the cluster".to_string())
    }

    /// The cluster membership as this master last applied it.
    pub fn membership(&self) -> openraft::Membership<NodeId, BasicNode> {
        self.raft.metrics().borrow().membership_config.membership().clone()
    }

    /// Whether this master is the Raft leader now (its soft state may still be starting).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Fail with the redirect status unless this master is the leader.
    pub fn require_leader(&self) -> Result<(), Status> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(corral_proto::client::not_leader(self.leader().map(|l| l.1).as_deref()))
        }
    }

    /// Like [`Shared::require_leader`], but while no leader is known (an election is on),
    /// or the known one has gone silent (it just died; the election has not started yet),
    /// wait up to [`LEADER_HOLD`] for one before answering: then the caller goes on here
    /// if this master won, or gets the redirect to the winner. Clients that lost their
    /// leader thus learn the next one the moment it is elected, with one call per master
    /// instead of a storm of retries that would slow the election down (Nomad holds RPCs
    /// the same way while it has no leader).
    pub async fn leader_or_hold(&self) -> Result<(), Status> {
        let mut metrics = self.raft.metrics();
        let hold = tokio::time::sleep(LEADER_HOLD);
        tokio::pin!(hold);
        // A leader silent for this long has probably died; its followers will notice at
        // their election timeout, and until then keep naming it.
        let silent = self.config.heartbeat_interval * 3;
        loop {
            // What to answer if the hold runs out: the leader named, though silent (within the
            // lease); and whether a leader is named at all (it may be heard again).
            let (stale_hint, named) = {
                let m = metrics.borrow_and_update();
                let other = m.current_leader.filter(|id| *id != self.config.id);
                if m.state == ServerState::Leader {
                    if self.leading_term() == Some(m.current_term) {
                        return Ok(());
                    }
                    // Elected, its barrier not applied yet (`leader::run_leadership`); the
                    // apply changes the metrics.
                    (None, false)
                } else if let Some(id) = other {
                    let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone());
                    let redirect = corral_proto::client::not_leader(addr.as_deref());
                    let silence = self.contact.silence(id);
                    if silence.is_some_and(|s| s <= silent) {
                        return Err(redirect);
                    }
                    // Past the lease it is taken for gone: no hint at all.
                    (silence.is_some_and(|s| s <= self.lease()).then_some(redirect), true)
                } else {
                    (None, false)
                }
            };
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return Err(Status::unavailable("this master's raft node stopped"));
                },
                // A known but silent leader: look again when it might have been heard from.
                _ = tokio::time::sleep(silent), if named => {}
                _ = &mut hold => {
                    return Err(stale_hint.unwrap_or_else(|| corral_proto::client::not_leader(None)));
                }
            }
        }
    }

    /// The term this master leads with its leader-only subsystems running (its leadership
    /// barrier applied), if any.
    pub fn leading_term(&self) -> Option<u64> {
        self.leader.get().map(|l| l.term())
    }

    /// The redirect for a call that needs the leader's soft state when this master has
    /// none: the one place a closed term (or no term) becomes the not-leader status.
    pub fn not_leading(&self) -> Status {
        corral_proto::client::not_leader(self.leader().filter(|l| l.0 != self.config.id).map(|l| l.1).as_deref())
    }

    /// The handle to the term this master leads, or the redirect.
    pub fn leading(&self) -> Result<crate::leader::Leader, Status> {
        self.leader.get().ok_or_else(|| self.not_leading())
    }

    /// Run `f` on the current term's soft state and return its answer, or the redirect.
    pub async fn ask<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&Shared, &mut crate::leader::Soft) -> R + Send + 'static,
    {
        self.leading()?.ask(f).await.map_err(|_| self.not_leading())
    }

    /// The current state hash and the applied index it belongs to.
    pub fn applied_and_hash(&self) -> (u64, String) {
        let applied = self.state.read();
        let index = applied.last_applied.map_or(0, |l| l.index);
        let mut cache = self.hash_cache.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some((i, h)) if *i == index => (index, h.clone()),
            _ => {
                let h = applied.app.hash();
                *cache = Some((index, h.clone()));
                (index, h)
            }
        }
    }

    /// This master's role as the operator API names it, and its current term.
    pub fn role_and_term(&self) -> (&'static str, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (role_name(m.state), m.current_term)
    }

    /// This master's view of itself: role, indexes and state hash.
    pub fn self_view(&self) -> SelfView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voter = membership.voter_ids().any(|v| v == self.config.id);
        let role = role_name(m.state);
        let (applied_index, state_hash) = self.applied_and_hash();
        SelfView {
            id: self.config.id,
            address: self.config.advertise.clone(),
            role,
            voter,
            term: m.current_term,
            leader: self.leader(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index,
            state_hash,
        }
    }

    /// Commit one command through Raft and return its outcome (see [`Writer::write`]).
    pub async fn write(&self, kind: v1::command::Kind) -> WriteResult {
        self.writer.write(kind).await
    }

    /// Queue a write for the next group commit (see [`Writer::submit`]).
    pub async fn submit(
        &self,
        kind: v1::command::Kind,
    ) -> Result<tokio::sync::oneshot::Receiver<WriteResult>, WriteError> {
        self.writer.submit(kind).await
    }

    /// Wait until this master is the leader and has applied everything committed before
    /// the call (a linearizable read point), or answer with the redirect.
    pub async fn linearizable(&self) -> Result<(), Status> {
        // A leader serves reads once its barrier is applied: before that its state may lack
        // entries committed under the previous leader.
        self.leader_or_hold().await?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(Status::unavailable(
                "could not confirm leadership with a quorum in time",
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)))) => Err(
                corral_proto::client::not_leader(f.leader_node.as_ref().map(|n| n.addr.as_str())),
            ),
            Ok(Err(e)) => Err(Status::unavailable(format!("not able to serve a consistent read: {e}"))),
        }
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Learner => "learner",
        // A candidate is a follower that is standing for election.
        ServerState::Follower | ServerState::Candidate => "follower",
        ServerState::Shutdown => "unreachable",
    }
}

/// How long shutdown waits for the master's tasks to end after `stop`.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// A running master.
pub struct Master {
    /// What every service shares.
    pub shared: Shared,
    /// The address the port is bound to.
    pub local_addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    /// The port's TLS configuration, replaced by [`Master::reload`].
    tls: Option<corral_proto::tls::SharedServerConfig>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// Every other task this master spawned at start (group commit, leadership, elections):
    /// each ends when `stop` is sent; drained on shutdown, aborted if the master is dropped.
    tasks: tokio::task::JoinSet<()>,
    /// The runtime openraft's tasks run on (see [`raft_runtime`]); held for its drop.
    _raft_runtime: RaftRuntime,
}

/// The runtime of openraft's tasks, shut down without blocking when dropped: a master is
/// started and dropped from async code (also when its start fails half-way), where dropping
/// a runtime the ordinary way panics.
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// openraft's core, replication and state-machine tasks get a runtime and an OS thread of
/// their own. On the shared runtime they queued behind hundreds of client RPCs: a busy
/// leader sent heartbeats late and followers deposed it. On their own thread the kernel's
/// scheduler runs them promptly, however loaded the API side is.
fn raft_runtime(id: NodeId) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("raft-{id}"))
        .enable_all()
        .build()
}

impl Master {
    /// Open the store, start Raft and the servers, and form the cluster if this is the first
    /// start with `--peers`.
    pub async fn start(config: Config) -> Result<Master, StartError> {
        // TLS first: bad files are said before anything is opened.
        let tls = match &config.tls {
            Some(files) => {
                let server = corral_proto::tls::server_config(files).map_err(StartError::Tls)?;
                let client = corral_proto::tls::ClientTls::load(files, &config.cluster).map_err(StartError::Tls)?;
                corral_proto::tls::set_client(Some(client));
                Some(Arc::new(std::sync::RwLock::new(server)))
            }
            None => None,
        };
        let access = crate::acl::Access::new(config.acl_file.clone(), tls.is_some(), &config.cluster)
            .map_err(StartError::Acl)?;
        let identity = Identity {
            node_id: config.id,
            cluster: config.cluster.clone(),
        };
        let (mut log, sm): (LogStore<CorralRaft>, _) =
            corral_raft_store::open::<CorralRaft, ClusterState>(&config.data_dir, &identity, &store_options())
                .map_err(|e| {
                    if e.is_fatal_environment() {
                        StartError::DataDir(e)
                    } else if e.is_damage() {
                        StartError::Damaged {
                            dir: config.data_dir.clone(),
                            id: config.id,
                            source: e,
                        }
                    } else {
                        StartError::Store(e)
                    }
                })?;
        let fresh = log
            .get_log_state()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
            .last_log_id
            .is_none()
            && log
                .read_vote()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?
                .is_none();
        let state = sm.reader();
        let log_handle = log.clone();

        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.cluster.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            // Elections are the driver's (`raft::election`): openraft's timer is off, and
            // its range matters only as the vote lease, `election_timeout_max` = t (a voter
            // refuses votes for that long after hearing its leader).
            election_timeout_min: election_ms - 1,
            election_timeout_max: election_ms,
            enable_elect: false,
            // Snapshots are `snapshot_policy`'s (by entries and by size, at points drawn per
            // master).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT.min(config.snapshot_every_entries / 5),
            install_snapshot_timeout: 2_000,
            // A group-committed entry may reach MAX_BATCH_BYTES; this keeps one AppendEntries
            // to a lagging follower within the peer message limit.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let elections = crate::raft::election::Elections::default();
        let stages = Arc::new(crate::raft::stages::Stages::default());
        let network = Network::new(
            config.cluster.clone(),
            config.heartbeat_interval,
            elections.clone(),
            stages.clone(),
            log.clone(),
        );
        let network_for_elections = network.clone();
        let network_for_keepalives = network.clone();
        let raft_runtime = RaftRuntime(Some(
            raft_runtime(config.id).map_err(|e| StartError::Raft(format!("raft runtime: {e}")))?,
        ));
        // Created on its runtime, so that every task openraft spawns runs there.
        let id = config.id;
        let raft = raft_runtime
            .handle()
            .spawn(async move { openraft::Raft::new(id, Arc::new(raft_config), network, log, sm).await })
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;

        let (writer, commit_rx) = Writer::new(raft.clone(), stages.clone());
        let (watch_hub, watch_joins) = crate::service::watch::hub();
        let shared = Shared {
            config: Arc::new(config),
            raft: raft.clone(),
            state,
            leader: Default::default(),
            allocate_now: Arc::default(),
            hash_cache: Arc::default(),
            contact: Default::default(),
            writer: writer.clone(),
            elections: elections.clone(),
            watch: watch_hub,
            access: Arc::new(access),
            log: log_handle,
            stages,
            core_probe: Default::default(),
            keepalives: Arc::default(),
        };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::raft::write::run(writer, commit_rx, stopped.clone()));
        tasks.spawn(crate::leader::run_leadership(shared.clone(), stopped.clone()));
        tasks.spawn(crate::service::watch::publish(
            shared.clone(),
            watch_joins,
            stopped.clone(),
        ));
        tasks.spawn(crate::raft::election::run(
            shared.raft.clone(),
            network_for_elections,
            shared.config.id,
            shared.contact.clone(),
            elections.clone(),
            crate::raft::election::Timing::new(shared.config.election_timeout, shared.config.heartbeat_interval),
            stopped.clone(),
        ));
        tasks.spawn(crate::raft::keepalive::probe_core(
            shared.raft.clone(),
            shared.core_probe.clone(),
            shared.config.heartbeat_interval / 2,
            stopped.clone(),
        ));
        tasks.spawn(crate::raft::keepalive::run(
            shared.raft.clone(),
            network_for_keepalives,
            shared.config.id,
            shared.config.heartbeat_interval,
            shared.core_probe.clone(),
            shared.keepalives.clone(),
            stopped.clone(),
        ));
        tasks.spawn(snapshot_policy(
            shared.raft.clone(),
            shared.log.clone(),
            shared.config.snapshot_every_entries,
            shared.config.snapshot_every_bytes,
            stopped.clone(),
        ));
        let tls_for_reload = tls.clone();
        let server = tokio::spawn(serve(shared.clone(), listener, tls, stopped));

        if fresh {
            if let Some(peers) = &shared.config.peers {
                initialize(&raft, peers).await;
            } else {
                tracing::info!("empty data dir and no --peers: waiting to be added with `corral members add`");
            }
        }
        tracing::info!(id = shared.config.id, address = %shared.config.advertise, listen = %local_addr, "master started");
        Ok(Master {
            shared,
            local_addr,
            stop,
            tls: tls_for_reload,
            server,
            tasks,
            _raft_runtime: raft_runtime,
        })
    }

    /// Read the TLS files and the ACL file again (SIGHUP): new connections use the new
    /// certificates, and every call from now on the new ACL; running tasks and open streams
    /// are untouched. What fails to load is kept as it was, and the error says what.
    pub fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(files) = &self.shared.config.tls {
            match corral_proto::tls::reload(files, &self.shared.config.cluster, self.tls.as_ref()) {
                Ok(()) => tracing::info!(cert = %files.cert.display(), "TLS certificates reloaded"),
                Err(e) => errors.push(format!("TLS kept as it was: {e}")),
            }
        }
        match self.shared.access.reload() {
            Ok(Some(principals)) => tracing::info!(principals, "ACL file reloaded"),
            Ok(None) => {}
            Err(e) => errors.push(format!("ACL kept as it was: {e}")),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Resolves if this master's Raft core stops while the master was not asked to stop (a
    /// storage error: a full disk, an entry the store refuses, an entry that does not
    /// decode): a master in that state can never vote or apply again, so the caller must
    /// end the process rather than leave it up looking alive (R1). Returns why it stopped.
    pub async fn raft_stopped(&self) -> String {
        // The core reports its end (running_state) in the full metrics just before it
        // drops its senders; waiting on those would wake this task after every turn of the
        // core, several times per write. The server metrics' sender goes at the same end.
        let mut metrics = self.shared.raft.server_metrics();
        loop {
            if let Some(why) = self.shared.raft_failure() {
                return why;
            }
            if metrics.changed().await.is_err() {
                // The core is gone and took its metrics with it.
                return self
                    .shared
                    .raft_failure()
                    .unwrap_or_else(|| "the raft core ended".to_string());
            }
        }
    }

    /// Stop serving and stop the Raft node.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        match (&mut self.server).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
            Ok(Ok(())) => {}
        }
        let tasks = &mut self.tasks;
        let drain = async {
            while let Some(ended) = tasks.join_next().await {
                if let Err(e) = ended {
                    tracing::warn!(error = %e, "a master task failed");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_DRAIN, drain).await.is_err() {
            tracing::warn!(
                left = self.tasks.len(),
                "master tasks still running at shutdown; aborting them"
            );
            self.tasks.abort_all();
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        tracing::info!(id = self.shared.config.id, "master stopped");
    }
}

/// When this master builds its next snapshot: once the log has grown by `entries` entries or
/// by `bytes` bytes since the last snapshot, whichever comes first. Each point is drawn anew
/// after every snapshot, in `[every, 1.5 × every)`, so that masters that share a machine, a
/// disk or a rack do not all build at once. Seen under full churn with openraft's own
/// policy (a fixed entry count): from a common start, all three masters reached it within a
/// few milliseconds, the two followers spent 0.6–0.8 s each encoding, and the leader,
/// starved of the machine's two cores meanwhile, missed its heartbeats until a follower
/// stood; the agents' re-registration with the new leader then starved it in turn (12
/// terms in two seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotPoint {
    entries: u64,
    bytes: u64,
}

impl SnapshotPoint {
    fn draw(every_entries: u64, every_bytes: u64, rng: &mut impl rand::Rng) -> SnapshotPoint {
        SnapshotPoint {
            entries: every_entries + rng.random_range(0..=every_entries / 2),
            bytes: every_bytes + rng.random_range(0..=every_bytes / 2),
        }
    }

    /// Whether a log that grew by `entries` entries and `bytes` bytes has reached the point.
    fn reached(&self, entries: u64, bytes: u64) -> bool {
        entries >= self.entries || bytes >= self.bytes
    }
}

/// Build a snapshot whenever the log has grown past this master's [`SnapshotPoint`] since
/// the last snapshot (openraft's own policy is off: it counts entries only, whatever their
/// size, at the same point on every master). A snapshot installed from the leader counts as
/// one. The log is then purged behind it as after any snapshot.
async fn snapshot_policy(
    raft: Raft,
    log: LogStore<CorralRaft>,
    every_entries: u64,
    every_bytes: u64,
    mut stop: watch::Receiver<bool>,
) {
    let draw = || SnapshotPoint::draw(every_entries, every_bytes, &mut rand::rng());
    let mut due = draw();
    let index_of = |id: Option<openraft::LogId<NodeId>>| id.map_or(0, |l| l.index + 1);
    let (mut last_snapshot, mut since_index) = {
        let m = raft.metrics().borrow().clone();
        (m.snapshot, index_of(m.snapshot))
    };
    let mut since_bytes = log.appended_bytes();
    let mut tick = tokio::time::interval(SNAPSHOT_POLICY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (snapshot, applied) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.snapshot, index_of(m.last_applied))
        };
        let appended = log.appended_bytes();
        if snapshot != last_snapshot {
            last_snapshot = snapshot;
            since_index = index_of(snapshot);
            since_bytes = appended;
            due = draw();
            continue;
        }
        let entries = applied.saturating_sub(since_index);
        let bytes = appended.saturating_sub(since_bytes);
        if !due.reached(entries, bytes) {
            continue;
        }
        tracing::debug!(
            entries,
            log_bytes = bytes,
            "log grew past --snapshot-every-entries or --snapshot-every-mib: building a snapshot"
        );
        // Counted from now: the snapshot, once built, moves both marks again.
        since_index = applied;
        since_bytes = appended;
        if let Err(e) = raft.trigger().snapshot().await {
            // The core stopped; `raft_stopped` reports why.
            tracing::debug!(error = %e, "snapshot trigger");
            return;
        }
    }
}

/// Form the cluster from `--peers`. Every initial master does this with the same list: the
/// membership entry they write is identical (log index 0, term 0), so whichever starts
/// first, they agree; a master that already received a leader's log refuses, harmlessly.
async fn initialize(raft: &Raft, peers: &BTreeMap<NodeId, String>) {
    let members: BTreeMap<NodeId, BasicNode> = peers.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(?voters, "cluster initialized from --peers"),
        Err(RaftError::APIError(e)) => tracing::info!(error = %e, "not initializing: this master already has state"),
        Err(e) => tracing::error!(error = %e, "initialize failed"),
    }
}

async fn serve(
    shared: Shared,
    listener: tokio::net::TcpListener,
    tls: Option<corral_proto::tls::SharedServerConfig>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let max = corral_proto::MAX_MESSAGE_BYTES;
    let raft_svc = v1::raft_server::RaftServer::new(RaftService {
        raft: shared.raft.clone(),
        cluster: shared.config.cluster.clone(),
        id: shared.config.id,
        contact: shared.contact.clone(),
        elections: shared.elections.clone(),
        lease: crate::raft::election::Timing::new(shared.config.election_timeout, shared.config.heartbeat_interval)
            .lease,
        pre_vote_silence: shared.lease(),
        tls: tls.is_some(),
        stages: shared.stages.clone(),
        keepalives: shared.keepalives.clone(),
    })
    .max_decoding_message_size(max * 4)
    .max_encoding_message_size(max * 4);
    let operator =
        v1::operator_server::OperatorServer::new(crate::service::operator::OperatorService::new(shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let scheduler =
        v1::scheduler_server::SchedulerServer::new(crate::service::scheduler::SchedulerService::new(shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let agents = v1::agents_server::AgentsServer::new(crate::service::agents::AgentsService::new(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let mut routes = tonic::service::Routes::new(raft_svc)
        .add_service(operator)
        .add_service(scheduler)
        .add_service(agents);
    let http = crate::service::http::router(shared.clone())
        .merge(crate::service::ui::router(shared.clone()))
        .merge(crate::service::mesos::router(shared.clone()))
        .merge(crate::service::mesos_operator::router(shared.clone()));
    let grpc = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = grpc.merge(http).fallback(crate::service::http::fallback);
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .initial_stream_window_size(crate::raft::network::PEER_WINDOW_BYTES)
        .initial_connection_window_size(crate::raft::network::PEER_WINDOW_BYTES)
        .add_routes(routes);
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    match tls {
        Some(config) => {
            router
                .serve_with_incoming_shutdown(corral_proto::tls::incoming(listener, config), shutdown)
                .await
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    }
}

#[cfg(test)]
mod snapshot_point_tests {
    use super::SnapshotPoint;
    use rand::SeedableRng;

    #[test]
    fn points_are_drawn_in_every_to_one_and_a_half_every() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut entries = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let p = SnapshotPoint::draw(10_000, 32 << 20, &mut rng);
            assert!((10_000..=15_000).contains(&p.entries), "{p:?}");
            assert!(((32 << 20)..=(48 << 20)).contains(&p.bytes), "{p:?}");
            entries.insert(p.entries);
        }
        // Spread over the range, not one point for every master.
        assert!(entries.len() > 800, "{} distinct points", entries.len());
        assert!(*entries.first().unwrap() < 10_500 && *entries.last().unwrap() > 14_500);
    }

    #[test]
    fn either_bound_reaches_the_point() {
        let p = SnapshotPoint {
            entries: 100,
            bytes: 1_000,
        };
        assert!(!p.reached(99, 999));
        assert!(p.reached(100, 0));
        assert!(p.reached(0, 1_000));
    }
}

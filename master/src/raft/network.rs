//! Raft peer traffic over tonic: the client side (openraft's `RaftNetworkFactory`) and the
//! server side (the `corral.v1.Raft` service), on the masters' one port.
//!
//! Payloads are openraft's request/response types encoded with postcard behind a format
//! byte. Every request names the cluster and the target node; a master refuses traffic for
//! another cluster or node id (for example a reused address), so a misrouted append can
//! never land in the wrong log.

use corral_proto::tls::Role;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_proto::v1;
use corral_proto::v1::raft_client::RaftClient;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::election::Elections;
use super::keepalive::KeepaliveStats;
use super::stages::Stages;
use super::types::{CorralRaft, NodeId, Raft};
use corral_raft_store::LogStore;

/// Format byte in front of every payload. Version 2: standard Raft votes and log ids (one
/// leader per term); a version 1 peer is refused rather than misread.
const WIRE_FORMAT: u8 = 2;
/// How long to wait for a TCP connection to a peer. Short: a dead peer should be reported
/// unreachable quickly so openraft backs off instead of queuing behind it.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 flow-control window towards a peer: a whole AppendEntries fits in it, so sending one
/// never waits a round trip for a window update.
pub const PEER_WINDOW_BYTES: u32 = 8 << 20;
/// Longest a heartbeat or AppendEntries may take once sent (see [`PeerClient::call`]).
const SENT_RPC_LIMIT: Duration = Duration::from_secs(5);

/// One lane to one peer: its connection, and the turn that lets one heartbeat or
/// AppendEntries at a time be in flight on it.
#[derive(Clone)]
struct LaneConn {
    channel: Channel,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Which connection to a peer an RPC uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Heartbeats and votes: small, and late ones depose leaders.
    Control,
    /// Entries and snapshots.
    Data,
}

/// A Raft message as peers send it: the wire format byte, then postcard.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![WIRE_FORMAT];
    postcard::to_io(value, &mut out)?;
    Ok(out)
}

/// A Raft message from a peer (see [`encode`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&WIRE_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unsupported raft wire format {v}")),
        None => Err("empty raft payload".into()),
    }
}

/// Creates openraft's per-peer clients; channels are shared and reused across RPCs and
/// across the clients openraft re-creates (on every election, for instance).
#[derive(Clone)]
pub struct Network {
    cluster: String,
    channels: Arc<Mutex<HashMap<(String, Lane), LaneConn>>>,
    retry_unreachable: Duration,
    elections: Elections,
    stages: Arc<Stages>,
    log: LogStore<CorralRaft>,
}

impl Network {
    /// `retry_unreachable`: how soon to try a peer again after it was unreachable.
    /// `elections`: where vote answers leave their hints (see [`crate::raft::election`]).
    /// `stages`: where the time of AppendEntries is counted.
    /// `log`: this master's log, whose durable end caps the commit index sent to followers.
    pub fn new(
        cluster: String,
        retry_unreachable: Duration,
        elections: Elections,
        stages: Arc<Stages>,
        log: LogStore<CorralRaft>,
    ) -> Self {
        Network {
            stages,
            log,
            cluster,
            channels: Arc::default(),
            retry_unreachable,
            elections,
        }
    }

    /// How long this master's log flusher has been on its current flush (zero while idle).
    pub fn flush_outstanding(&self) -> Duration {
        self.log.flush_outstanding()
    }

    /// The channel to `addr` for one lane. Heartbeats and votes get their own connection:
    /// openraft gives every AppendEntries one heartbeat interval, and on a shared connection
    /// a heartbeat would queue behind the entries being sent to a follower.
    fn channel(&self, addr: &str, lane: Lane) -> Result<LaneConn, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let key = (addr.to_string(), lane);
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let tls = corral_proto::tls::client();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        if let Some(tls) = tls {
            // Only a master certificate is taken for a peer.
            endpoint = endpoint
                .tls_config(tls.tonic(Role::Master, PEER_CONNECT_TIMEOUT))
                .map_err(|e| format!("TLS for peer {addr:?}: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(PEER_WINDOW_BYTES)
            .initial_connection_window_size(PEER_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let conn = LaneConn {
            channel,
            turn: Arc::default(),
        };
        channels.insert(key, conn.clone());
        Ok(conn)
    }
}

impl RaftNetworkFactory<CorralRaft> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = |lane| {
            self.channel(&node.addr, lane).map(|c| PeerLane {
                client: RaftClient::new(c.channel)
                    .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES * 4)
                    .max_encoding_message_size(corral_proto::MAX_MESSAGE_BYTES * 4),
                turn: c.turn,
            })
        };
        let client = client(Lane::Control).and_then(|control| Ok((control, client(Lane::Data)?)));
        PeerClient {
            cluster: self.cluster.clone(),
            target,
            client,
            retry_unreachable: self.retry_unreachable,
            elections: self.elections.clone(),
            stages: self.stages.clone(),
            log: self.log.clone(),
        }
    }
}

/// openraft's client for one peer.
pub struct PeerClient {
    cluster: String,
    target: NodeId,
    /// (control, data) lanes.
    client: Result<(PeerLane, PeerLane), String>,
    retry_unreachable: Duration,
    elections: Elections,
    stages: Arc<Stages>,
    log: LogStore<CorralRaft>,
}

struct PeerLane {
    client: RaftClient<Channel>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, kind: RpcKind, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let lane = match &mut self.client {
            Ok((control, data)) => match kind {
                RpcKind::Heartbeat | RpcKind::Vote => control,
                RpcKind::Append | RpcKind::Snapshot => data,
            },
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    e.clone(),
                ))))
            }
        };
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(v1::RaftRequest {
            cluster: self.cluster.clone(),
            target: self.target,
            payload,
        });
        let reply = match kind {
            RpcKind::Append | RpcKind::Heartbeat => {
                // openraft gives a heartbeat or AppendEntries one heartbeat interval and then
                // drops it. Dropped mid-flight, it would be cancelled on the follower too, and
                // under load every retry can meet the same fate: the follower hears nothing,
                // stands for election and deposes a healthy leader. So once sent, it runs to
                // completion on its own task (late, it still resets the follower's election
                // timer and lands the entries, so the retry is quick), and one at a time per
                // lane: a retry waits for the one in flight, and is dropped unsent if
                // openraft gives up on it first.
                request.set_timeout(SENT_RPC_LIMIT);
                let turn = lane.turn.clone().lock_owned().await;
                let mut client = lane.client.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let _turn = turn;
                    let _ = tx.send(client.append_entries(request).await);
                });
                rx.await
                    .unwrap_or_else(|_| Err(Status::cancelled("raft rpc task ended without an answer")))
            }
            RpcKind::Vote => {
                request.set_timeout(option.hard_ttl());
                lane.client.vote(request).await
            }
            RpcKind::Snapshot => {
                request.set_timeout(option.hard_ttl());
                lane.client.install_snapshot(request).await
            }
        };
        let reply = reply
            .map_err(|status| transport_error(status, self.target, kind, option))?
            .into_inner();
        match reply.result {
            Some(v1::raft_reply::Result::Ok(bytes)) => {
                decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
            }
            Some(v1::raft_reply::Result::RaftError(bytes)) => {
                let err: RaftError<NodeId, E> =
                    decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
                Err(RPCError::RemoteError(RemoteError::new(self.target, err)))
            }
            None => Err(RPCError::Network(NetworkError::new(&std::io::Error::other(
                "empty raft reply",
            )))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum RpcKind {
    Append,
    Heartbeat,
    Vote,
    Snapshot,
}

fn transport_error<E: std::error::Error>(
    status: Status,
    target: NodeId,
    kind: RpcKind,
    option: &RPCOption,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    let err = std::io::Error::other(format!("{:?}: {}", status.code(), status.message()));
    match status.code() {
        // Connection refused or reset: openraft backs off an unreachable peer.
        Code::Unavailable => RPCError::Unreachable(Unreachable::new(&err)),
        Code::DeadlineExceeded | Code::Cancelled => RPCError::Timeout(Timeout {
            action: match kind {
                RpcKind::Append | RpcKind::Heartbeat => openraft::network::RPCTypes::AppendEntries,
                RpcKind::Vote => openraft::network::RPCTypes::Vote,
                RpcKind::Snapshot => openraft::network::RPCTypes::InstallSnapshot,
            },
            id: 0,
            target,
            timeout: option.hard_ttl(),
        }),
        _ => RPCError::Network(NetworkError::new(&err)),
    }
}

impl RaftNetwork<CorralRaft> for PeerClient {
    /// openraft waits this long before retrying a peer that was unreachable. Its default,
    /// a fixed 500 ms, is longer than our election timeout: a restarted master would hear
    /// nothing from the leader in time, stand for election with a higher term and depose a
    /// healthy leader. Retrying at the heartbeat pace costs a refused connection per try.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.retry_unreachable))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<CorralRaft>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // A leader whose disk has stopped completing flushes cannot commit anything, but its
        // core, which no longer waits for its own appends, would go on sending heartbeats
        // and keep its followers from electing another. It falls silent instead, as a
        // wedged core used to (see `keepalive`, CORE_STALL_LIMIT).
        let stalled = self.log.flush_outstanding();
        if stalled > super::keepalive::CORE_STALL_LIMIT {
            tracing::warn!(
                target_node = self.target,
                stalled_ms = stalled.as_millis() as u64,
                "not sending AppendEntries: this master's log flush is stuck"
            );
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                format!("this master's log flush has been outstanding for {stalled:?}"),
            ))));
        }
        // openraft counts a leader's own entries as durable before they are (see
        // `corral_raft_store`'s log store, "A leader's own appends"): a follower must not
        // apply what the leader's disk does not hold yet.
        rpc.leader_commit = self.log.clamp_commit(rpc.leader_commit);
        if rpc.entries.is_empty() {
            return self.call(RpcKind::Heartbeat, &rpc, &option).await;
        }
        let sent = std::time::Instant::now();
        let answer = self.call(RpcKind::Append, &rpc, &option).await;
        if answer.is_ok() {
            self.stages.append_rpc.observe(sent.elapsed());
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<CorralRaft>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let answer: RpcResult<VoteResponse<NodeId>, _> = self.call(RpcKind::Vote, &rpc, &option).await;
        if let Ok(resp) = &answer {
            if !resp.vote_granted {
                if resp.last_log_id > rpc.last_log_id {
                    // That peer can win; this master cannot.
                    self.elections.outlogged();
                } else if resp.last_log_id < rpc.last_log_id
                    && !resp.vote.is_committed()
                    && resp.vote.leader_id().term >= rpc.vote.leader_id().term
                {
                    // It refused only because it voted (for itself) in this term; a higher
                    // term, which this master takes by standing again, it grants.
                    self.elections.stand_now();
                }
            }
        }
        answer
    }
}

/// A master asking whether it should stand for election (see `raft.proto`, `PreVote`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PreVoteRequest {
    /// The master that would stand.
    pub candidate: NodeId,
    /// The candidate's current term (it would stand in the next).
    pub term: u64,
    /// The index of the candidate's last log entry.
    pub last_log_index: Option<u64>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PreVoteResponse {
    /// Whether this voter would vote for the candidate now: it misses the leader too (or
    /// has none) and the candidate's log is not shorter than its own.
    pub granted: bool,
}

/// A leader vouching for itself while its Raft core waits on the disk (see
/// [`crate::raft::keepalive`] and `raft.proto`, `Keepalive`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct KeepaliveRequest {
    /// The leader.
    pub leader: NodeId,
    /// Its term.
    pub term: u64,
}

/// The answer to a [`KeepaliveRequest`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct KeepaliveResponse {
    /// Whether the peer took it as hearing from its leader (it is in that term and follows
    /// that leader).
    pub heard: bool,
}

impl Network {
    /// Send `target` at `addr` a keepalive; whether it was heard, `None` if it did not
    /// answer within `timeout`.
    pub async fn keepalive(
        &self,
        target: NodeId,
        addr: &str,
        req: &KeepaliveRequest,
        timeout: Duration,
    ) -> Option<bool> {
        let answer: KeepaliveResponse = self
            .control_call(
                target,
                addr,
                req,
                timeout,
                |mut c, r| async move { c.keepalive(r).await },
            )
            .await?;
        Some(answer.heard)
    }

    /// Ask `target` at `addr` for a pre-vote; `None` if it did not answer within `timeout`.
    pub async fn pre_vote(&self, target: NodeId, addr: &str, req: &PreVoteRequest, timeout: Duration) -> Option<bool> {
        let answer: PreVoteResponse = self
            .control_call(
                target,
                addr,
                req,
                timeout,
                |mut c, r| async move { c.pre_vote(r).await },
            )
            .await?;
        Some(answer.granted)
    }

    /// One of Corral's own Raft calls (not openraft's) on the control lane: `req` to
    /// `target` at `addr` through `call`, and its answer; `None` if there was none within
    /// `timeout` or it was not one.
    async fn control_call<Req, Resp, F, Fut>(
        &self,
        target: NodeId,
        addr: &str,
        req: &Req,
        timeout: Duration,
        call: F,
    ) -> Option<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, Request<v1::RaftRequest>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<v1::RaftReply>, Status>>,
    {
        let conn = self.channel(addr, Lane::Control).ok()?;
        let payload = encode(req).ok()?;
        let mut request = Request::new(v1::RaftRequest {
            cluster: self.cluster.clone(),
            target,
            payload,
        });
        request.set_timeout(timeout);
        let reply = tokio::time::timeout(timeout, call(RaftClient::new(conn.channel), request))
            .await
            .ok()?
            .ok()?
            .into_inner();
        match reply.result {
            Some(v1::raft_reply::Result::Ok(bytes)) => decode::<Resp>(&bytes).ok(),
            _ => None,
        }
    }
}

/// The server side: hands peer requests to the local openraft node.
pub struct RaftService {
    /// The local Raft node.
    pub raft: Raft,
    /// The cluster's name; requests of another cluster are refused.
    pub cluster: String,
    /// This master's node id.
    pub id: NodeId,
    /// When the leader was last heard from (AppendEntries it sent).
    pub contact: LeaderContact,
    /// Hints to the election driver from the vote traffic.
    pub elections: Elections,
    /// The leader lease: a leader silent this long is taken for gone.
    pub lease: Duration,
    /// A voter grants a pre-vote once it has not heard its leader for this long.
    pub pre_vote_silence: Duration,
    /// Whether the server speaks TLS: then only a master certificate may speak Raft.
    pub tls: bool,
    /// Where the time of serving AppendEntries is counted.
    pub stages: Arc<Stages>,
    /// Where heard keepalives are counted.
    pub keepalives: Arc<KeepaliveStats>,
}

/// When this master last accepted an AppendEntries (heartbeats included), and from which
/// leader. openraft's metrics name the leader a follower last followed, even one that died
/// a moment ago; this tells whether that leader is still heard from. Cheap to clone.
#[derive(Clone, Default)]
pub struct LeaderContact(Arc<Mutex<Option<(NodeId, std::time::Instant)>>>);

impl LeaderContact {
    fn heard(&self, leader: NodeId) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((leader, std::time::Instant::now()));
    }

    /// When a leader was last heard from, if one ever was.
    pub fn last_heard(&self) -> Option<std::time::Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).map(|(_, at)| at)
    }

    /// How long ago `leader` was last heard from, if it ever was.
    pub fn silence(&self, leader: NodeId) -> Option<Duration> {
        match *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((id, at)) if id == leader => Some(at.elapsed()),
            _ => None,
        }
    }
}

impl RaftService {
    fn open<T: DeserializeOwned>(&self, req: Request<v1::RaftRequest>) -> Result<T, Status> {
        let certs = req.peer_certs();
        if let Some(refused) = corral_proto::tls::refuse_unless(
            self.tls,
            certs.as_deref().map(Vec::as_slice),
            Role::Master,
            &self.cluster,
            "Raft",
        ) {
            return Err(refused);
        }
        let req = req.into_inner();
        if req.cluster != self.cluster {
            return Err(Status::failed_precondition(format!(
                "raft request for cluster {:?} reached cluster {:?}",
                req.cluster, self.cluster
            )));
        }
        if req.target != self.id {
            return Err(Status::failed_precondition(format!(
                "raft request for node {} reached node {}",
                req.target, self.id
            )));
        }
        decode(&req.payload).map_err(|e| Status::invalid_argument(format!("payload: {e}")))
    }
}

fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Result<Response<v1::RaftReply>, Status> {
    let result = match result {
        Ok(v) => v1::raft_reply::Result::Ok(encode(&v).map_err(|e| Status::internal(e.to_string()))?),
        Err(e) => v1::raft_reply::Result::RaftError(encode(&e).map_err(|e| Status::internal(e.to_string()))?),
    };
    Ok(Response::new(v1::RaftReply { result: Some(result) }))
}

#[tonic::async_trait]
impl v1::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<v1::RaftRequest>) -> Result<Response<v1::RaftReply>, Status> {
        let rpc: AppendEntriesRequest<CorralRaft> = self.open(req)?;
        // Heard when it arrives from the leader this master follows (or a newer one), not
        // when the Raft core is done with it: a core busy with a slow flush must not make
        // a live leader look silent (and this master stand for election against it).
        if let Some(leader) = rpc.vote.leader_id().voted_for() {
            if rpc.vote.is_committed() && rpc.vote >= self.raft.metrics().borrow().vote {
                self.contact.heard(leader);
            }
        }
        let entries = !rpc.entries.is_empty();
        let arrived = std::time::Instant::now();
        let answer = self.raft.append_entries(rpc).await;
        if entries && answer.is_ok() {
            self.stages.append_served.observe(arrived.elapsed());
        }
        reply(answer)
    }

    async fn vote(&self, req: Request<v1::RaftRequest>) -> Result<Response<v1::RaftReply>, Status> {
        let rpc: VoteRequest<NodeId> = self.open(req)?;
        let answer = self.raft.vote(rpc.clone()).await;
        if let Ok(resp) = &answer {
            let leader_gone = self.contact.last_heard().is_none_or(|at| at.elapsed() >= self.lease);
            if !resp.vote_granted && resp.last_log_id > rpc.last_log_id && leader_gone {
                // A candidate that cannot win stood while the leader is gone: this master
                // can, so it stands now rather than at its own timer.
                self.elections.stand_now();
            }
        }
        reply(answer)
    }

    async fn install_snapshot(&self, req: Request<v1::RaftRequest>) -> Result<Response<v1::RaftReply>, Status> {
        let rpc: InstallSnapshotRequest<CorralRaft> = self.open(req)?;
        reply(self.raft.install_snapshot(rpc).await)
    }

    async fn pre_vote(&self, req: Request<v1::RaftRequest>) -> Result<Response<v1::RaftReply>, Status> {
        let rpc: PreVoteRequest = self.open(req)?;
        let (leading, last_log_index) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == openraft::ServerState::Leader, m.last_log_index)
        };
        let misses_leader = self
            .contact
            .last_heard()
            .is_none_or(|at| at.elapsed() >= self.pre_vote_silence);
        let granted = !leading && misses_leader && rpc.last_log_index >= last_log_index;
        if granted {
            self.elections.granted_pre_vote(rpc.candidate, rpc.last_log_index);
        }
        tracing::debug!(candidate = rpc.candidate, term = rpc.term, granted, "pre-vote");
        reply::<_, openraft::error::Infallible>(Ok(PreVoteResponse { granted }))
    }

    async fn keepalive(&self, req: Request<v1::RaftRequest>) -> Result<Response<v1::RaftReply>, Status> {
        let rpc: KeepaliveRequest = self.open(req)?;
        // Heard only from the leader of this master's own term, whose leadership it knows
        // (its vote committed): a deposed leader's keepalive, of an older term, is ignored.
        let heard = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.state != openraft::ServerState::Leader
                && m.vote.is_committed()
                && m.current_term == rpc.term
                && m.current_leader == Some(rpc.leader)
                && rpc.leader != self.id
        };
        if heard {
            self.contact.heard(rpc.leader);
            self.keepalives.heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        reply::<_, openraft::error::Infallible>(Ok(KeepaliveResponse { heard }))
    }
}

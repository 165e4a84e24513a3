//! Group commit: every replicated write of this master goes through one queue, and what
//! has queued up while earlier entries were being committed goes into the next Raft entry
//! as one `CommandBatch`. An idle master commits a lone command at once; a busy one pays
//! one log append, one replication round and one fsync for hundreds of commands.
//!
//! Each command keeps its own outcome (apply is per command), so batching changes no
//! answer. [`MAX_IN_FLIGHT`] entries are in the pipeline at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::v1;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tonic::Status;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::BasicNode;

use super::types::{CorralRaft, NodeId, Outcome, Proposal, Raft};

/// Most commands in one Raft entry.
pub const MAX_BATCH_COMMANDS: usize = 4096;
/// Most encoded command bytes that other commands join in one Raft entry (see
/// `node::MAX_PAYLOAD_ENTRIES` for why entries stay small). A command larger than this
/// goes into an entry of its own.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Largest encoded command that may be proposed. Checked before a command is queued
/// (`Shared::submit`), after validation has bounded every field of the request it came
/// from: a log entry over the store's limit would stop this master's Raft.
pub const MAX_COMMAND_BYTES: usize = 768 * 1024;
/// Room for what wraps a batch in a log entry: the batch's own protobuf framing (a few bytes
/// per command) and openraft's envelope (log id, payload tag).
const ENTRY_OVERHEAD_BYTES: usize = 8 * MAX_BATCH_COMMANDS + 1024;

// An entry is at most a batch that reached MAX_BATCH_BYTES plus one command of the largest
// size (a batch takes a further command only while it is under MAX_BATCH_BYTES).
const _: () = assert!(
    MAX_BATCH_BYTES + MAX_COMMAND_BYTES + ENTRY_OVERHEAD_BYTES <= corral_raft_store::MAX_ENTRY_BYTES,
    "a full batch must fit in one log entry"
);
/// Entries being committed at once. One: what queues up during an entry's round trip goes
/// into the next entry whole. With the log's group commit on its flusher thread, more
/// entries in flight only made them smaller, each paying its own flush, AppendEntries and
/// openraft work: at 8 (until 2026-12-07) `write-bench`'s 32 clients made 4,399 writes/s at
/// 298 µs of server CPU each; at 2, ~8,000 at ~170 µs; at 1, ~8,400 at ~154 µs
/// (`throughput-bench` 1000x50: ~7,200–8,000 tasks/s at 8, ~11,000 at 1 or 2).
pub const MAX_IN_FLIGHT: usize = 1;
/// Most entries a live voting follower may trail the leader's log by before the leader
/// proposes no more: commands wait in the queue (and join larger batches) until it catches
/// up. A leader needs only a majority to commit, so without this a follower that is slower
/// for a while (building a snapshot, purging its log) falls behind by thousands of entries
/// under full load, and when the leader dies the next one cannot commit its first entry
/// until that follower has caught up: seconds without a leader. 64 entries of at most
/// `MAX_BATCH_BYTES` each take a follower a few tens of milliseconds to append.
pub const MAX_FOLLOWER_LAG: u64 = 64;
/// A follower further behind than this is recovering (restarted, or back from a partition)
/// and catching up at full speed: the leader does not hold its proposals for it until it is
/// within this distance, so a restart costs the cluster a short hold, not its throughput
/// for as long as the catch-up takes.
pub const RECOVERING_FOLLOWER_LAG: u64 = 4 * MAX_FOLLOWER_LAG;
/// A voting follower whose matched index has not moved for this long is down, stalled or
/// being sent a snapshot; it is not waited for (it catches up when it can). A follower that
/// is catching up acknowledges entries every few milliseconds; a dead one holds
/// proposals back for this long at most.
pub const FOLLOWER_STALLED: Duration = Duration::from_millis(250);
/// How often a held proposal looks again at the followers' progress.
const LAG_POLL: Duration = Duration::from_millis(2);
/// Commands that may wait for a batch.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Why a write was not committed. Callers decide on the variant, never on message text;
/// the status a client acts on is chosen in one place, `From<WriteError> for Status`.
/// (A command that was committed but refused by apply is not an error here: it is
/// `Outcome::Rejected`, with apply's reason.)
// Each variant's message says what its fields are.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This master does not lead; `leader` is the leader's address when one is known.
    #[error("this master is not the leader")]
    NotLeader { leader: Option<String> },
    /// Not committed in time: a quorum of masters is not reachable.
    #[error("write not committed within {0:?}: no quorum of masters is reachable")]
    NoQuorum(Duration),
    /// The master is stopping; the client retries elsewhere.
    #[error("this master is shutting down")]
    ShuttingDown,
    /// This master's Raft core stopped (a storage error); it exits (R1).
    #[error("this master's raft node stopped: {0}")]
    RaftStopped(String),
    /// The command is over [`MAX_COMMAND_BYTES`]: a log entry over the store's limit would
    /// stop this master's Raft (R2).
    #[error("request: the {kind} command it makes encodes to {bytes} bytes, over the limit of {MAX_COMMAND_BYTES}")]
    TooLarge { kind: &'static str, bytes: usize },
    /// A membership change openraft refused (another is in progress, for instance).
    #[error("{0}")]
    Membership(String),
    /// Apply answered fewer outcomes than the batch had commands: a broken invariant.
    #[error("apply returned fewer outcomes than commands")]
    MissingOutcome,
}

impl WriteError {
    /// An openraft write or membership error; `known_leader` names the leader when openraft
    /// does not.
    pub fn from_raft(
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
        known_leader: impl FnOnce() -> Option<String>,
    ) -> WriteError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::NotLeader {
                leader: f.leader_node.map(|n| n.addr).or_else(known_leader),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => WriteError::Membership(c.to_string()),
            RaftError::Fatal(Fatal::Stopped) => WriteError::ShuttingDown,
            RaftError::Fatal(f) => WriteError::RaftStopped(f.to_string()),
        }
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        match &e {
            WriteError::NotLeader { leader } => corral_proto::client::not_leader(leader.as_deref()),
            WriteError::NoQuorum(_) | WriteError::ShuttingDown | WriteError::RaftStopped(_) => {
                Status::unavailable(e.to_string())
            }
            WriteError::TooLarge { .. } => Status::invalid_argument(e.to_string()),
            WriteError::Membership(_) => Status::failed_precondition(e.to_string()),
            WriteError::MissingOutcome => Status::internal(e.to_string()),
        }
    }
}

/// What a queued write answers.
pub type WriteResult = Result<Outcome, WriteError>;

/// One command waiting to be committed.
pub struct Pending {
    /// The command to commit.
    pub command: v1::Command,
    /// Where its outcome goes.
    pub reply: oneshot::Sender<WriteResult>,
    /// When it was queued.
    pub queued: Instant,
}

/// How long a write may wait to be committed before the client is told UNAVAILABLE. A
/// leader that lost its quorum cannot commit; the client must not hang on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Latency of committed writes, for `/metrics`: a small fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct WriteLatency {
    /// Writes per bucket of [`WRITE_BUCKETS_MS`] (at most that many ms; the last holds the rest).
    pub buckets: [u64; WRITE_BUCKETS_MS.len()],
    /// Writes committed.
    pub count: u64,
    /// Total commit time of those writes.
    pub sum_secs: f64,
    /// Commands in the committed entries (more than `count` when batched).
    pub commands: u64,
    /// Encoded command bytes in those entries.
    pub bytes: u64,
    /// Time proposals were held for a follower to catch up ([`MAX_FOLLOWER_LAG`]).
    pub held_secs: f64,
}

/// Upper bounds of the write latency buckets, in milliseconds.
pub const WRITE_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

impl WriteLatency {
    fn observe(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, bound) in WRITE_BUCKETS_MS.iter().enumerate() {
            if ms <= *bound as f64 {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_secs += d.as_secs_f64();
    }
}

/// The writing side of group commit: queues commands for [`run`]. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    raft: Raft,
    queue: mpsc::Sender<Pending>,
    latency: Arc<Mutex<WriteLatency>>,
    stages: Arc<super::stages::Stages>,
}

impl Writer {
    /// A writer for `raft`, and the queue [`run`] takes its commands from. The time
    /// commands wait in the queue is counted in `stages`.
    pub fn new(raft: Raft, stages: Arc<super::stages::Stages>) -> (Writer, mpsc::Receiver<Pending>) {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        (
            Writer {
                raft,
                queue,
                latency: Arc::default(),
                stages,
            },
            rx,
        )
    }

    /// Commit one command through Raft and return its outcome. Leader only: elsewhere it
    /// answers [`WriteError::NotLeader`]; a leader that cannot commit within
    /// [`WRITE_TIMEOUT`] answers [`WriteError::NoQuorum`].
    pub async fn write(&self, kind: v1::command::Kind) -> WriteResult {
        let answer = self.submit(kind).await?;
        match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
            Err(_) => Err(WriteError::NoQuorum(WRITE_TIMEOUT)),
            Ok(Err(_)) => Err(WriteError::ShuttingDown),
            Ok(Ok(result)) => result,
        }
    }

    /// Queue a write for the next group commit and return where its outcome will arrive.
    /// Writes are applied in the order they are queued, so a caller may queue dependent
    /// writes (a task's RUNNING, then its FINISHED) without waiting for each. The answer
    /// always arrives: the committer replies with an error after [`WRITE_TIMEOUT`].
    pub async fn submit(&self, kind: v1::command::Kind) -> Result<oneshot::Receiver<WriteResult>, WriteError> {
        if self.raft.metrics().borrow().state != openraft::ServerState::Leader {
            return Err(WriteError::NotLeader {
                leader: super::leader_of(&self.raft).map(|l| l.1),
            });
        }
        let command = v1::Command {
            timestamp_ms: corral_proto::time::now_ms(),
            kind: Some(kind),
        };
        // The last line of defence for R2: validation bounds every field of every request,
        // so this refuses only what a new, unbounded field would let through.
        let bytes = command.encoded_len();
        if bytes > MAX_COMMAND_BYTES {
            let kind = command.kind.as_ref().map_or("command", crate::state::kind_name);
            tracing::warn!(kind, bytes, "refused a command over the size limit");
            return Err(WriteError::TooLarge { kind, bytes });
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                command,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        Ok(answer)
    }

    /// Writes queued for commit and not yet taken into a Raft entry.
    pub fn backlog(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// The latency histogram of committed entries, for `/metrics`.
    pub fn latency(&self) -> std::sync::MutexGuard<'_, WriteLatency> {
        self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&self, latency: Duration, commands: usize, bytes: usize) {
        let mut w = self.latency();
        w.observe(latency);
        w.commands += commands as u64;
        w.bytes += bytes as u64;
    }
}

/// Batch queued commands into Raft entries until `stopped`.
pub async fn run(writer: Writer, mut rx: mpsc::Receiver<Pending>, mut stopped: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    let mut followers = Followers::default();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        // Hold the next entry while a live follower trails too far (see MAX_FOLLOWER_LAG).
        let mut held_since: Option<Instant> = None;
        loop {
            let lagging = {
                let metrics = writer.raft.metrics();
                let m = metrics.borrow();
                followers.lagging(&m, Instant::now())
            };
            let Some((follower, lag)) = lagging else {
                if let Some(since) = held_since {
                    writer.latency().held_secs += since.elapsed().as_secs_f64();
                }
                break;
            };
            held_since.get_or_insert_with(Instant::now);
            tracing::trace!(follower, lag, "holding proposals for a follower to catch up");
            tokio::select! {
                _ = tokio::time::sleep(LAG_POLL) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = stopped.wait_for(|s| *s) => return,
            },
        };
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            let Ok(next) = rx.try_recv() else { break };
            let size = next.command.encoded_len();
            if bytes + size > MAX_BATCH_BYTES {
                carry = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let started = Instant::now();
        for p in &batch {
            writer
                .stages
                .queued
                .observe(started.saturating_duration_since(p.queued));
        }
        let (commands, replies): (Vec<v1::Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let n = commands.len();
        let proposal = Proposal::of(commands);
        let bytes = proposal.batch.len();
        // Handed to Raft here, in queue order, so that commands are applied in the order they
        // were queued (a caller may pipeline dependent commands, such as a task's RUNNING and
        // FINISHED); only the wait for the outcome runs beside the next batch.
        let submitted = writer.raft.client_write_ff(proposal).await;
        let writer = writer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match submitted {
                Ok(rx) => match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
                    Ok(Ok(Ok(response))) => Ok(Ok(response)),
                    Ok(Ok(Err(api))) => Ok(Err(RaftError::APIError(api))),
                    // Raft dropped the request: it is shutting down.
                    Ok(Err(_)) => Ok(Err(RaftError::Fatal(Fatal::Stopped))),
                    Err(elapsed) => Err(elapsed),
                },
                Err(fatal) => Ok(Err(RaftError::Fatal(fatal))),
            };
            finish(&writer, result, replies, started, n, bytes);
        });
    }
}

/// The voting followers' progress, as the leader's Raft metrics show it.
#[derive(Default)]
struct Followers {
    /// Follower → (matched index, when it last moved).
    seen: std::collections::HashMap<NodeId, (u64, Instant)>,
}

impl Followers {
    /// A live voting follower that trails the log by more than [`MAX_FOLLOWER_LAG`] (and
    /// is not recovering, see [`RECOVERING_FOLLOWER_LAG`]), and by how much. None on a
    /// follower (no replication metrics).
    fn lagging(&mut self, m: &openraft::RaftMetrics<NodeId, BasicNode>, now: Instant) -> Option<(NodeId, u64)> {
        let last = m.last_log_index?;
        let replication = m.replication.as_ref()?;
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        self.worst(
            m.id,
            last,
            &voters,
            replication.iter().map(|(id, matched)| (*id, matched.map(|l| l.index))),
            now,
        )
    }

    /// The decision itself: `me` leads with its log ending at `last`; `matched` is each
    /// follower's matched index (None: nothing matched yet this term).
    fn worst(
        &mut self,
        me: NodeId,
        last: u64,
        voters: &[NodeId],
        matched: impl Iterator<Item = (NodeId, Option<u64>)>,
        now: Instant,
    ) -> Option<(NodeId, u64)> {
        let mut worst = None;
        for (id, index) in matched {
            if id == me || !voters.contains(&id) {
                continue;
            }
            // Nothing matched yet this term: a new leader has not heard from it.
            let Some(index) = index else {
                continue;
            };
            let seen = self.seen.entry(id).or_insert((index, now));
            if seen.0 != index {
                *seen = (index, now);
            }
            let lag = last.saturating_sub(index);
            let live = now.saturating_duration_since(seen.1) < FOLLOWER_STALLED;
            let held_for = lag > MAX_FOLLOWER_LAG && lag <= RECOVERING_FOLLOWER_LAG;
            if live && held_for && worst.is_none_or(|(_, w)| lag > w) {
                worst = Some((id, lag));
            }
        }
        worst
    }
}

type RaftAnswer = Result<
    Result<ClientWriteResponse<CorralRaft>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    tokio::time::error::Elapsed,
>;

fn finish(
    writer: &Writer,
    result: RaftAnswer,
    replies: Vec<oneshot::Sender<WriteResult>>,
    started: Instant,
    n: usize,
    bytes: usize,
) {
    match result {
        Ok(Ok(response)) => {
            writer.observe(started.elapsed(), n, bytes);
            let mut outcomes = response.data.outcomes.into_iter();
            for reply in replies {
                let outcome = outcomes.next().ok_or(WriteError::MissingOutcome);
                let _ = reply.send(outcome);
            }
        }
        Ok(Err(e)) => {
            let error = WriteError::from_raft(e, || super::leader_of(&writer.raft).map(|l| l.1));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err(WriteError::NoQuorum(WRITE_TIMEOUT)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOTERS: [NodeId; 3] = [1, 2, 3];

    #[test]
    fn a_live_follower_within_the_hold_window_is_waited_for() {
        let mut f = Followers::default();
        let t0 = Instant::now();
        // 2 trails by MAX_FOLLOWER_LAG + 10, 3 is current.
        let last = 1_000;
        let lagging = f.worst(
            1,
            last,
            &VOTERS,
            [(2, Some(last - MAX_FOLLOWER_LAG - 10)), (3, Some(last))].into_iter(),
            t0,
        );
        assert_eq!(lagging, Some((2, MAX_FOLLOWER_LAG + 10)));
        // Exactly at the bound is not lagging.
        let mut f = Followers::default();
        let at_bound = f.worst(1, last, &VOTERS, [(2, Some(last - MAX_FOLLOWER_LAG))].into_iter(), t0);
        assert_eq!(at_bound, None);
    }

    #[test]
    fn the_worst_of_two_lagging_followers_is_named() {
        let mut f = Followers::default();
        let t0 = Instant::now();
        let last = 10_000;
        let lagging = f.worst(
            1,
            last,
            &VOTERS,
            [(2, Some(last - 100)), (3, Some(last - 200))].into_iter(),
            t0,
        );
        assert_eq!(lagging, Some((3, 200)));
    }

    #[test]
    fn a_recovering_follower_is_not_waited_for() {
        let mut f = Followers::default();
        let t0 = Instant::now();
        let last = 10_000;
        let far = f.worst(
            1,
            last,
            &VOTERS,
            [(2, Some(last - RECOVERING_FOLLOWER_LAG - 1))].into_iter(),
            t0,
        );
        assert_eq!(far, None);
    }

    #[test]
    fn a_stalled_follower_stops_holding_writes() {
        let mut f = Followers::default();
        let t0 = Instant::now();
        let last = 1_000;
        let behind = Some(last - 100);
        assert!(f.worst(1, last, &VOTERS, [(2, behind)].into_iter(), t0).is_some());
        // Its matched index has not moved for FOLLOWER_STALLED: no longer live.
        let later = t0 + FOLLOWER_STALLED;
        assert_eq!(f.worst(1, last, &VOTERS, [(2, behind)].into_iter(), later), None);
        // It moves again: live again.
        let moved = Some(last - 90);
        assert_eq!(
            f.worst(1, last, &VOTERS, [(2, moved)].into_iter(), later),
            Some((2, 90))
        );
    }

    #[test]
    fn learners_self_and_unmatched_followers_are_ignored() {
        let mut f = Followers::default();
        let t0 = Instant::now();
        let last = 1_000;
        // 4 is a learner (not a voter); 1 is the leader itself; 2 has matched nothing yet.
        let matched = [(4, Some(0)), (1, Some(0)), (2, None)];
        assert_eq!(f.worst(1, last, &VOTERS, matched.into_iter(), t0), None);
    }
}

//! Group commit: every replicated write of this master goes through one queue, and what
//! has queued up while earlier entries were being committed goes into the next Raft entry
//! as one `CommandBatch`. An idle master commits a lone command at once; a busy one pays
//! one log append, one replication round and one fsync for hundreds of commands.
//!
//! Each command keeps its own outcome (apply is per command), so batching changes no
//! answer. Up to [`MAX_IN_FLIGHT`] entries are in the pipeline at a time.

use std::sync::Arc;
use std::time::Instant;

use corral_proto::v1;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tonic::Status;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::BasicNode;

use crate::node::{write_error, Shared, WRITE_TIMEOUT};
use crate::types::{CorralRaft, NodeId, Outcome, Proposal};

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
/// Entries being committed at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Commands that may wait for a batch.
pub const QUEUE_CAPACITY: usize = 65_536;

/// One command waiting to be committed.
pub struct Pending {
    pub command: v1::Command,
    pub reply: oneshot::Sender<Result<Outcome, Status>>,
}

/// The sending side, kept in [`Shared`].
pub type Queue = mpsc::Sender<Pending>;

pub fn queue() -> (Queue, mpsc::Receiver<Pending>) {
    mpsc::channel(QUEUE_CAPACITY)
}

/// Batch queued commands into Raft entries until `stopped`.
pub async fn run(shared: Shared, mut rx: mpsc::Receiver<Pending>, mut stopped: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
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
        let (commands, replies): (Vec<v1::Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let n = commands.len();
        let started = Instant::now();
        let proposal = Proposal::of(commands);
        let bytes = proposal.batch.len();
        // Handed to Raft here, in queue order, so that commands are applied in the order they
        // were queued (a caller may pipeline dependent commands, such as a task's RUNNING and
        // FINISHED); only the wait for the outcome runs beside the next batch.
        let submitted = shared.raft.client_write_ff(proposal).await;
        let shared = shared.clone();
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
            finish(&shared, result, replies, started, n, bytes);
        });
    }
}

type WriteResult = Result<
    Result<ClientWriteResponse<CorralRaft>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    tokio::time::error::Elapsed,
>;

fn finish(
    shared: &Shared,
    result: WriteResult,
    replies: Vec<oneshot::Sender<Result<Outcome, Status>>>,
    started: Instant,
    n: usize,
    bytes: usize,
) {
    match result {
        Ok(Ok(response)) => {
            shared.observe_write(started.elapsed(), n, bytes);
            let mut outcomes = response.data.outcomes.into_iter();
            for reply in replies {
                let outcome = outcomes
                    .next()
                    .ok_or_else(|| Status::internal("apply returned fewer outcomes than commands"));
                let _ = reply.send(outcome);
            }
        }
        Ok(Err(e)) => {
            let status = write_error(shared, e);
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err(Status::unavailable(format!(
                    "write not committed within {WRITE_TIMEOUT:?}: no quorum of masters is reachable"
                ))));
            }
        }
    }
}

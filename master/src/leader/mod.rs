//! Leader-only soft state and subsystems (STYLE.md 5).
//!
//! Everything here can be rebuilt from the replicated state, so none of it is replicated:
//! connected agent and framework streams, outstanding offers, decline filters, suppressed
//! frameworks, timers. [`run_leadership`] starts a loop for each term this master leads; the
//! loop owns that term's [`Soft`] and is reached only through its [`Leader`] handle
//! (`handle`). When leadership is lost the loop ends and drops the soft state; that closes
//! every stream, so agents and frameworks go and find the new leader.
//!
//! # Layout
//! - `handle`: the [`Leader`] handle and the slot where the services find it;
//! - `sessions`: agent and framework streams;
//! - `soft`: the soft state of one term ([`Soft`]);
//! - `launches`: launch flow control;
//! - `allocation`: the allocation loop and offers;
//! - `timers`: retention and timeouts;
//! - `delivery`: events, forwarding and resends;
//! - `teardown`: ending a framework.

mod allocation;
mod delivery;
mod handle;
mod launches;
mod sessions;
mod soft;
mod teardown;
#[cfg(test)]
mod tests;
mod timers;

pub use allocation::*;
pub use delivery::*;
pub use handle::*;
pub use launches::*;
pub use sessions::*;
pub use soft::*;
pub use teardown::teardown;
pub use timers::*;

use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::node::Shared;

/// The running loop of the term this master leads.
struct Term {
    term: u64,
    end: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Withdraw the term's handle from the services, end its loop and wait for it: when this
/// returns, the term's soft state (and with it every agent and framework stream) is gone.
async fn end_term(shared: &Shared, t: Term) {
    shared.leader.set(None);
    let _ = t.end.send(());
    if let Err(e) = t.task.await {
        tracing::error!(term = t.term, error = %e, "the leader loop failed");
    }
}

/// Watch Raft and keep a term loop running while, and only while, this master leads.
/// Runs for the life of the master.
///
/// Leadership is established only after a barrier: an empty entry of the new term,
/// committed and applied. Before it, the applied state may lack entries that were
/// committed under the previous leader (a restarted master can even resume its old term
/// at once from its stored vote, with its commit index behind); with it, the leader-only
/// subsystems and every read see everything acknowledged before (Raft's rule that a leader
/// commits an entry of its own term before it serves; Nomad's barrier on leadership).
pub async fn run_leadership(shared: Shared, mut stop: watch::Receiver<bool>) {
    // The server metrics (vote, role, leader, membership) change only when one of those
    // does; the full metrics are sent after every turn of the Raft core, several times per
    // write, and each send would wake this task on another thread for nothing.
    let mut metrics = shared.raft.server_metrics();
    let mut current: Option<Term> = None;
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(shared.config.id),
                m.vote.leader_id().get_term(),
            )
        };
        let running = current.as_ref().map(|t| t.term);
        if leading && running != Some(term) {
            if let Some(t) = current.take() {
                end_term(&shared, t).await;
            }
            let (elected, applied_then, log_then) = {
                let m = shared.raft.metrics().borrow().clone();
                (
                    Instant::now(),
                    m.last_applied.map_or(0, |l| l.index),
                    m.last_log_index.unwrap_or(0),
                )
            };
            match barrier(&shared).await {
                Ok(()) if shared.is_leader() && shared.raft.metrics().borrow().current_term == term => {
                    let (leader, jobs) = Leader::new(term);
                    let (end, ended) = oneshot::channel();
                    let task = tokio::spawn(run_term(shared.clone(), leader.clone(), jobs, ended));
                    shared.leader.set(Some(leader));
                    current = Some(Term { term, end, task });
                    tracing::info!(
                        term,
                        barrier_ms = elected.elapsed().as_millis() as u64,
                        applied_at_election = applied_then,
                        log_at_election = log_then,
                        "leadership established: leader-only subsystems started"
                    );
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::info!(term, error = %e, "leadership barrier not committed; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(BARRIER_RETRY) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
            continue;
        } else if !leading {
            if let Some(t) = current.take() {
                let term = t.term;
                end_term(&shared, t).await;
                tracing::info!(term, "leadership lost: leader-only subsystems stopped");
            }
        }
        let task = async {
            match current.as_mut() {
                Some(t) => (&mut t.task).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
            ended = task => {
                // A term loop ends only when told to; one that ended by itself hit a bug
                // (a job panicked). Its sessions are gone: start the term's subsystems
                // afresh, as a new leader would, rather than lead with none.
                let term = current.take().map(|t| t.term);
                shared.leader.set(None);
                tracing::error!(?term, outcome = ?ended.err(), "the leader loop ended by itself; starting it again");
            }
        }
    }
    if let Some(t) = current.take() {
        end_term(&shared, t).await;
    }
}

/// Most jobs run in a row before the loop looks at its timers again.
pub const JOBS_PER_TURN: usize = 256;

/// The loop of one leader term: it owns the term's [`Soft`] and runs, one at a time, the
/// jobs sent through its [`Leader`] handle, the allocation passes and the timers. A pass
/// runs on every relevant event (`Shared::allocate_now`), events arriving within
/// [`PASS_COALESCE`] of each other sharing one pass; a pass looks only at the agents whose
/// free resources changed. Every `allocation_interval` a full pass looks at every agent and
/// runs the timers (filters, offer and agent/framework timeouts, retention).
async fn run_term(shared: Shared, me: Leader, mut jobs: mpsc::Receiver<Job>, mut end: oneshot::Receiver<()>) {
    let term = me.term();
    let mut soft = Soft::new(term);
    let interval = shared.config.allocation_interval;
    let notify = shared.allocate_now.clone();
    let mut next_full = tokio::time::Instant::now();
    // A pass is wanted, not before `pass_at`.
    let mut wanted = true;
    let mut pass_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut end => break,
            _ = tokio::time::sleep_until(pass_at), if wanted => {
                let now = tokio::time::Instant::now();
                let full = now >= next_full;
                if full {
                    next_full = now + interval;
                }
                let started = std::time::Instant::now();
                wanted = allocation_pass(&shared, &me, &mut soft, full) == Pass::Held;
                soft.passes.record(started.elapsed());
                pass_at = now + PASS_COALESCE;
            }
            _ = tokio::time::sleep_until(next_full), if !wanted => wanted = true,
            _ = notify.notified(), if !wanted => wanted = true,
            job = jobs.recv() => {
                let Some(job) = job else { break };
                job(&shared, &mut soft);
                for _ in 1..JOBS_PER_TURN {
                    match jobs.try_recv() {
                        Ok(job) => job(&shared, &mut soft),
                        Err(_) => break,
                    }
                }
            }
        }
    }
    tracing::debug!(term, "leader loop stopped with the term");
}

/// Pause before trying a leadership barrier again (no quorum yet).
const BARRIER_RETRY: Duration = Duration::from_millis(50);

/// Commit and apply an empty entry of the current term.
async fn barrier(shared: &Shared) -> Result<(), String> {
    let write = shared.raft.client_write(crate::raft::types::Proposal::of(Vec::new()));
    match tokio::time::timeout(crate::raft::write::WRITE_TIMEOUT, write).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not committed within {:?}", crate::raft::write::WRITE_TIMEOUT)),
    }
}

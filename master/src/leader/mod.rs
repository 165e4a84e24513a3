//! Leader-only soft state and subsystems (STYLE.md 5).
//!
//! Everything here can be rebuilt from the replicated state, so none of it is replicated:
//! connected agent and framework streams, outstanding offers, decline filters, suppressed
//! frameworks, timers. [`run_leadership`] creates a fresh [`Soft`] when this master becomes
//! leader of a term and drops it when leadership is lost; dropping it closes every stream,
//! so agents and frameworks go and find the new leader.
//!
//! # Layout
//! - `sessions`: agent and framework streams;
//! - `soft`: the soft state of one term ([`Soft`]);
//! - `launches`: launch flow control;
//! - `allocation`: the allocation loop and offers;
//! - `timers`: retention and timeouts;
//! - `delivery`: events, forwarding and resends;
//! - `teardown`: ending a framework.

mod allocation;
mod delivery;
mod launches;
mod sessions;
mod soft;
mod teardown;
#[cfg(test)]
mod tests;
mod timers;

pub use allocation::*;
pub use delivery::*;
pub use launches::*;
pub use sessions::*;
pub use soft::*;
pub use teardown::teardown;
pub use timers::*;

use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use crate::node::Shared;

/// Watch Raft and keep [`Soft`] in step with leadership. Runs for the life of the master.
///
/// Leadership is established only after a barrier: an empty entry of the new term,
/// committed and applied. Before it, the applied state may lack entries that were
/// committed under the previous leader (a restarted master can even resume its old term
/// at once from its stored vote, with its commit index behind); with it, the leader-only
/// subsystems and every read see everything acknowledged before (Raft's rule that a leader
/// commits an entry of its own term before it serves; Nomad's barrier on leadership).
pub async fn run_leadership(shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut metrics = shared.raft.metrics();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(shared.config.id),
                m.current_term,
            )
        };
        let current = shared
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.term);
        if leading && current != Some(term) {
            if current.is_some() {
                *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
                    *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(Soft::new(term));
                    tracing::info!(
                        term,
                        barrier_ms = elected.elapsed().as_millis() as u64,
                        applied_at_election = applied_then,
                        log_at_election = log_then,
                        "leadership established: leader-only subsystems started"
                    );
                    tokio::spawn(run_allocator(shared.clone(), term, stop.clone()));
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
        } else if !leading && current.is_some() {
            *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(term, "leadership lost: leader-only subsystems stopped");
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
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

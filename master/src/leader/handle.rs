//! The way into a term's soft state: a cheap handle to the task that owns it.
//!
//! One task per leader term ([`super::run_term`]) owns the term's [`Soft`]; nothing else
//! holds it. Services, stream handlers and timers reach it only through a [`Leader`]: a
//! bounded channel of jobs, each a short synchronous function of the soft state, run one
//! at a time in arrival order. A job that answers gets a oneshot reply
//! ([`Leader::ask`]); one that only changes something waits for room in the queue and no
//! longer ([`Leader::tell`]), so that a status update's acknowledgement never waits for
//! the loop to reach it. The channel closes when the term ends: every call then fails
//! with [`NotLeading`], which the services turn into the redirect in one place
//! ([`crate::node::Shared::not_leading`]).
//!
//! Jobs are synchronous on purpose: a job cannot await a Raft write while it holds the
//! soft state, so a flow that must commit between two decisions (an Accept: take the
//! offers, commit the launch, send it) asks twice, and the term may end in between.

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::node::Shared;

use super::Soft;

/// Jobs waiting for a term's loop. A full queue makes callers wait (back-pressure on the
/// streams and calls behind them), it never drops a job.
pub const JOB_QUEUE: usize = 4096;

/// A job for a term's loop: runs with the master's shared handles and the soft state.
pub(super) type Job = Box<dyn FnOnce(&Shared, &mut Soft) + Send>;

/// The term this handle was made for has ended (or this master never led it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this master no longer leads the term")]
pub struct NotLeading;

/// A handle to one leader term's loop. Cloning it is cheap; holding one does not keep the
/// term alive.
#[derive(Clone)]
pub struct Leader {
    term: u64,
    jobs: mpsc::Sender<Job>,
}

impl Leader {
    pub(super) fn new(term: u64) -> (Leader, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel(JOB_QUEUE);
        (Leader { term, jobs }, rx)
    }

    /// The Raft term this handle's loop leads.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Run `f` on the soft state and return its answer.
    pub async fn ask<R, F>(&self, f: F) -> Result<R, NotLeading>
    where
        R: Send + 'static,
        F: FnOnce(&Shared, &mut Soft) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |shared, soft| {
            // The asker may have gone away (its call was cancelled): nothing to tell.
            let _ = tx.send(f(shared, soft));
        });
        self.jobs.send(job).await.map_err(|_| NotLeading)?;
        rx.await.map_err(|_| NotLeading)
    }

    /// Queue `f` to run on the soft state, without waiting for it to run.
    pub async fn tell<F>(&self, f: F) -> Result<(), NotLeading>
    where
        F: FnOnce(&Shared, &mut Soft) + Send + 'static,
    {
        self.jobs.send(Box::new(f)).await.map_err(|_| NotLeading)
    }
}

/// Where the current term's handle is published for the services: `None` while this master
/// does not lead (or has not finished its leadership barrier).
#[derive(Clone, Default)]
pub struct LeaderSlot(Arc<RwLock<Option<Leader>>>);

impl LeaderSlot {
    /// The current term's handle, if this master leads one.
    pub fn get(&self) -> Option<Leader> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set(&self, leader: Option<Leader>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = leader;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handle_fails_once_its_loop_is_gone() {
        let (leader, rx) = Leader::new(7);
        assert_eq!(leader.term(), 7);
        drop(rx);
        assert_eq!(leader.tell(|_, _| {}).await, Err(NotLeading));
        assert_eq!(leader.ask(|_, soft| soft.term).await, Err(NotLeading));
    }

    #[tokio::test]
    async fn an_unanswered_ask_fails_when_the_loop_drops_its_job() {
        let (leader, mut rx) = Leader::new(3);
        let asker = tokio::spawn(async move { leader.ask(|_, soft| soft.term).await });
        // The loop ends with the job still queued: the job (and its reply) is dropped.
        let job = rx.recv().await;
        assert!(job.is_some());
        drop(job);
        drop(rx);
        assert_eq!(asker.await.expect("the asker ran"), Err(NotLeading));
    }

    #[test]
    fn the_slot_publishes_and_withdraws_a_handle() {
        let slot = LeaderSlot::default();
        assert!(slot.get().is_none());
        let (leader, _rx) = Leader::new(9);
        slot.set(Some(leader));
        assert_eq!(slot.get().map(|l| l.term()), Some(9));
        slot.set(None);
        assert!(slot.get().is_none());
    }
}

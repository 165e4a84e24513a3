//! Where a replicated write's time goes, hop by hop: counters that `/metrics` shows and
//! `write-bench` turns into a per-write breakdown (issue: fewer hand-offs per write; each
//! hop is measured before it is removed or merged).
//!
//! A write on the leader: queued (`queued`), batched into an entry and handed to Raft;
//! the entry is appended to the leader's log (the store's `append_wait`) while it is sent
//! to each follower (`append_rpc`, which includes the follower's own `append_served`);
//! committed on a majority, applied (the store's apply counters), answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often one hop was taken and the time spent in it.
#[derive(Debug, Default)]
pub struct Stage {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Stage {
    /// Count one pass through the hop that took `d`.
    pub fn observe(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Passes counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Total time of those passes, in seconds.
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// The hops of the write path this master measures (the log store measures its own).
#[derive(Debug, Default)]
pub struct Stages {
    /// Leader: a write queued for group commit, until taken into a batch.
    pub queued: Stage,
    /// Leader: an AppendEntries carrying entries, from sending it to its answer (both
    /// transport legs and the follower's `append_served`).
    pub append_rpc: Stage,
    /// Follower: an AppendEntries carrying entries, from its arrival to the answer (its
    /// Raft core and its durable append).
    pub append_served: Stage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_counts_passes_and_sums_their_time() {
        let s = Stage::default();
        s.observe(Duration::from_micros(250));
        s.observe(Duration::from_micros(750));
        assert_eq!(s.count(), 2);
        assert!((s.seconds() - 0.001).abs() < 1e-12, "{}", s.seconds());
    }
}

//! The state hash, kept current as apply changes the state, so that asking for it costs
//! the same with ten tasks or a hundred thousand.
//!
//! Each record (agent, framework, task) has a 128-bit digest: SHA-256 of a collection tag
//! and the record's canonical (postcard) encoding. The state keeps, per collection, the
//! wrapping sum of its records' digests (a multiset hash, "AdHash"). Apply marks a record
//! *stale* before changing it: its digest leaves the sum then, and the record's new digest
//! joins it when the command is done ([`Digests::settle`]). A record changed several times
//! by one command is hashed twice, not once per change.
//!
//! The state hash is SHA-256 over the weights, the command counters and the three sums. It
//! detects replicas that diverged (S3), not an adversary; debug builds check it against a
//! full recomputation every time it is asked for.

use std::collections::HashSet;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::ClusterState;

/// Which record of the state a digest stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An agent record, by id.
    Agent(String),
    /// A framework record, by id.
    Framework(String),
    /// (framework id, task id)
    Task((String, String)),
}

impl Key {
    fn collection(&self) -> usize {
        match self {
            Key::Agent(_) => 0,
            Key::Framework(_) => 1,
            Key::Task(..) => 2,
        }
    }
}

/// Running per-collection digest sums, and the records whose digest is out of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests {
    sums: [u128; 3],
    stale: HashSet<Key>,
}

/// The digest of one record of collection `collection`.
pub fn record_digest<T: Serialize>(collection: usize, record: &T) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update([collection as u8]);
    // Plain data into a hasher cannot fail to serialize.
    let hasher = postcard::to_io(record, hasher).expect("state records serialize");
    let full = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&full[..16]);
    u128::from_le_bytes(first)
}

impl Digests {
    /// Take `key`'s current digest (`current`, `None` if the record does not exist) out of
    /// the sums until the next settle. Call before changing the record; calling again
    /// before the settle does nothing.
    pub fn mark(&mut self, key: Key, current: impl FnOnce() -> Option<u128>) {
        if self.stale.contains(&key) {
            return;
        }
        if let Some(d) = current() {
            let sum = &mut self.sums[key.collection()];
            *sum = sum.wrapping_sub(d);
        }
        self.stale.insert(key);
    }

    /// Add back the digest of every stale record as it is now (`digest_of` gives `None`
    /// for a record that no longer exists).
    pub fn settle(&mut self, mut digest_of: impl FnMut(&Key) -> Option<u128>) {
        for key in std::mem::take(&mut self.stale) {
            if let Some(d) = digest_of(&key) {
                let sum = &mut self.sums[key.collection()];
                *sum = sum.wrapping_add(d);
            }
        }
    }

    /// The per-collection sums (complete once settled).
    pub fn sums(&self) -> [u128; 3] {
        debug_assert!(self.stale.is_empty(), "state digest read before it was settled");
        self.sums
    }

    /// Start over from `sums` computed over every record (after a restore).
    pub fn reset(&mut self, sums: [u128; 3]) {
        self.sums = sums;
        self.stale.clear();
    }
}

/// The state hash from the parts that are not records and the settled sums: hex SHA-256.
pub fn state_hash<W: Serialize>(format: u8, small: &W, sums: [u128; 3]) -> String {
    let mut hasher = Sha256::new();
    hasher.update([format]);
    let mut hasher = postcard::to_io(small, hasher).expect("state parts serialize");
    for s in sums {
        hasher.update(s.to_le_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl ClusterState {
    /// The state hash (hex SHA-256): equal on masters that applied the same entries (S3).
    /// Costs the same whatever the size of the state (see [`crate::state::digest`]).
    pub fn hash(&self) -> String {
        let sums = self.digests.sums();
        if cfg!(debug_assertions) {
            assert_eq!(
                sums,
                self.full_digest_sums(),
                "the incremental state digest missed a change"
            );
        }
        state_hash(
            super::snapshot::SNAPSHOT_FORMAT,
            &(
                &self.weights,
                self.applied_commands,
                self.rejected_commands,
                &self.retention,
            ),
            sums,
        )
    }

    /// The digest of the record `key` names as last settled, if the record exists.
    pub(super) fn digest_of(&self, key: &Key) -> Option<u128> {
        match key {
            Key::Agent(id) => self.agents.get(id).map(|r| r.digest),
            Key::Framework(id) => self.frameworks.get(id).map(|r| r.digest),
            Key::Task(k) => self.tasks.get(k).map(|r| r.digest),
        }
    }

    /// Compute the digest of the record `key` names from its content, store it in the
    /// record and return it.
    pub(super) fn refresh_digest(&mut self, key: &Key) -> Option<u128> {
        match key {
            Key::Agent(id) => self.agents.get_mut(id).map(|r| {
                r.digest = record_digest(0, r);
                r.digest
            }),
            Key::Framework(id) => self.frameworks.get_mut(id).map(|r| {
                r.digest = record_digest(1, r);
                r.digest
            }),
            Key::Task(k) => self.tasks.get_mut(k).map(|r| {
                r.digest = record_digest(2, r);
                r.digest
            }),
        }
    }

    /// The digest sums computed from every record's content.
    pub(super) fn full_digest_sums(&self) -> [u128; 3] {
        let sum = |it: &mut dyn Iterator<Item = u128>| it.fold(0u128, u128::wrapping_add);
        [
            sum(&mut self.agents.values().map(|r| record_digest(0, r))),
            sum(&mut self.frameworks.values().map(|r| record_digest(1, r))),
            sum(&mut self.tasks.values().map(|r| record_digest(2, r))),
        ]
    }

    /// Compute and store every record's digest (after a restore), and the sums.
    pub(super) fn rebuild_digests(&mut self) {
        let mut sums = [0u128; 3];
        // Persistent maps have no `values_mut`: rebuild them (this runs once per restore).
        self.agents = std::mem::take(&mut self.agents)
            .into_iter()
            .map(|(id, mut r)| {
                r.digest = record_digest(0, &r);
                sums[0] = sums[0].wrapping_add(r.digest);
                (id, r)
            })
            .collect();
        for r in self.frameworks.values_mut() {
            r.digest = record_digest(1, r);
            sums[1] = sums[1].wrapping_add(r.digest);
        }
        self.tasks = std::mem::take(&mut self.tasks)
            .into_iter()
            .map(|(key, mut r)| {
                r.digest = record_digest(2, &r);
                sums[2] = sums[2].wrapping_add(r.digest);
                (key, r)
            })
            .collect();
        self.digests.reset(sums);
    }

    /// About to change the record `key` names: take its digest out of the sums.
    pub(super) fn mark(&mut self, key: Key) {
        let mut digests = std::mem::take(&mut self.digests);
        digests.mark(key.clone(), || self.digest_of(&key));
        self.digests = digests;
    }

    pub(super) fn mark_agent(&mut self, id: &str) {
        self.mark(Key::Agent(id.to_string()));
    }

    pub(super) fn mark_framework(&mut self, id: &str) {
        self.mark(Key::Framework(id.to_string()));
    }

    pub(super) fn mark_task(&mut self, framework_id: &str, task_id: &str) {
        self.mark(Key::Task((framework_id.to_string(), task_id.to_string())));
    }

    /// The command is done: the changed records' digests join the sums again.
    pub(super) fn settle_digests(&mut self) {
        let mut digests = std::mem::take(&mut self.digests);
        digests.settle(|key| self.refresh_digest(key));
        self.digests = digests;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_twice_before_a_settle_counts_once() {
        let mut d = Digests::default();
        d.reset([10, 0, 0]);
        d.mark(Key::Agent("a".into()), || Some(5));
        d.mark(Key::Agent("a".into()), || Some(7));
        d.settle(|_| Some(9));
        assert_eq!(d.sums(), [14, 0, 0]);
        // A record that went away leaves the sum for good.
        d.mark(Key::Task(("f".into(), "t".into())), || Some(3));
        d.settle(|_| None);
        assert_eq!(d.sums(), [14, 0, 3u128.wrapping_neg()]);
    }
}

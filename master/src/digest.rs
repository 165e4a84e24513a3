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

/// Which record of the state a digest stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Agent(String),
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

//! [`LogStore`]: openraft's `RaftLogStorage` on a sled tree.
//!
//! Durability rules (each one is what Raft's safety argument assumes of "stable storage"):
//! - an append is reported durable only after the flush that covers it (see `flusher`);
//! - a vote is flushed before `save_vote` returns, because openraft grants the vote as soon
//!   as it returns, and a node that forgets its vote after a crash can vote twice in a term;
//! - `purge` persists `last_purged` and flushes it before deleting anything, so a crash in
//!   the middle of a purge leaves extra entries below `last_purged` (dropped on the next
//!   open), never a hole between `last_purged` and the first entry;
//! - `truncate` flushes, so conflicting entries removed on a follower cannot come back.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::codec::{decode, encode, index_key, key_index};
use crate::flusher::Flusher;
use crate::{StoreConfig, StoreError};

pub(crate) const KEY_VOTE: &str = "vote";
/// An append slower than this (into sled, or until durable) is logged.
const SLOW_APPEND: std::time::Duration = std::time::Duration::from_millis(50);
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";

pub(crate) struct LogInner {
    pub(crate) log: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) flusher: Flusher,
    /// How far the log has been durable (see `watermark`).
    pub(crate) mark: Arc<crate::watermark::Watermark>,
    /// Encoded bytes appended since this store was opened (never lowered).
    pub(crate) appended_bytes: std::sync::atomic::AtomicU64,
}

/// The Raft log, vote and committed index of one node. Cheap to clone; every clone is the
/// same store.
pub struct LogStore<C: StoreConfig> {
    pub(crate) inner: Arc<LogInner>,
    _c: std::marker::PhantomData<fn() -> C>,
}

impl<C: StoreConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: self.inner.clone(),
            _c: std::marker::PhantomData,
        }
    }
}

/// A summary of the stored log, as checked by [`LogStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// The last log id purged (behind a snapshot).
    pub last_purged: Option<LogId<u64>>,
    /// Index of the first entry kept.
    pub first_index: Option<u64>,
    /// Id of the last entry.
    pub last_log_id: Option<LogId<u64>>,
    /// Entries kept.
    pub entries: u64,
    /// The vote saved.
    pub vote: Option<Vote<u64>>,
    /// The committed log id saved.
    pub committed: Option<LogId<u64>>,
}

fn read_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
fn write_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl<C: StoreConfig> LogStore<C> {
    pub(crate) fn new(inner: Arc<LogInner>) -> Self {
        LogStore {
            inner,
            _c: std::marker::PhantomData,
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        match self.inner.meta.get(key)? {
            Some(bytes) => Ok(Some(decode(key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), StoreError> {
        self.inner.meta.insert(key, encode(key, value)?)?;
        Ok(())
    }

    /// Encoded bytes of the entries appended since the store was opened. Only grows: the
    /// difference between two readings is what the log took on in between, which is what a
    /// snapshot policy by size needs (openraft's own counts entries, whatever their size).
    pub fn appended_bytes(&self) -> u64 {
        self.inner.appended_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the flusher's time went since the store was opened.
    pub fn flush_stats(&self) -> crate::FlushStats {
        self.inner.flusher.counters.read()
    }

    /// Wait until every write made so far is durable (see `flusher`).
    async fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.flusher.barrier().await
    }

    fn decode_entry(bytes: &[u8]) -> Result<Entry<C>, StoreError> {
        decode("log entry", bytes)
    }

    fn last_purged(&self) -> Result<Option<LogId<u64>>, StoreError> {
        self.get_meta(KEY_LAST_PURGED)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, StoreError> {
        match self.inner.log.last()? {
            Some((_, v)) => Ok(Some(Self::decode_entry(&v)?.log_id)),
            None => Ok(None),
        }
    }

    /// Read every stored entry and check the invariants of the log: entries contiguous from
    /// the first to the last, each stored under its own index, terms never decreasing, the
    /// first entry right after `last_purged`, and the committed index within the log.
    /// Runs at open; also the check of the crash test.
    pub fn verify(&self) -> Result<LogSummary, StoreError> {
        let last_purged = self.last_purged()?;
        let mut first_index = None;
        let mut prev: Option<LogId<u64>> = None;
        let mut entries = 0u64;
        for item in self.inner.log.iter() {
            let (key, value) = item?;
            let index = key_index(&key)?;
            let entry = Self::decode_entry(&value)?;
            if entry.log_id.index != index {
                return Err(StoreError::Corrupt(format!(
                    "entry {} stored under index {index}",
                    entry.log_id
                )));
            }
            match prev {
                None => {
                    let expected = last_purged.map_or(0, |p| p.index + 1);
                    if last_purged.is_some() && index != expected {
                        return Err(StoreError::Corrupt(format!(
                            "first entry {index} does not follow last purged {}",
                            expected - 1
                        )));
                    }
                    first_index = Some(index);
                }
                Some(p) => {
                    if index != p.index + 1 {
                        return Err(StoreError::Corrupt(format!(
                            "hole in log between {} and {index}",
                            p.index
                        )));
                    }
                    if entry.log_id.leader_id < p.leader_id {
                        return Err(StoreError::Corrupt(format!(
                            "term goes back at {}: {}",
                            index, entry.log_id
                        )));
                    }
                }
            }
            prev = Some(entry.log_id);
            entries += 1;
        }
        let last_log_id = prev.or(last_purged);
        let committed: Option<LogId<u64>> = self.get_meta(KEY_COMMITTED)?;
        if let (Some(c), Some(last)) = (committed, last_log_id) {
            // The committed index may run ahead of a follower's log only by what a truncate
            // could never remove: committed entries are never truncated.
            if c.index > last.index {
                return Err(StoreError::Corrupt(format!("committed {c} beyond last log id {last}")));
            }
        }
        Ok(LogSummary {
            last_purged,
            first_index,
            last_log_id,
            entries,
            vote: self.get_meta(KEY_VOTE)?,
            committed,
        })
    }

    /// Decode the application payload of every stored entry with `A`'s decoder: an entry
    /// that does not decode is reported as corruption (with its log id) before the node
    /// starts, instead of stopping it when openraft applies the entry.
    pub(crate) fn check_payloads<A: crate::StateMachine<C>>(&self) -> Result<(), StoreError> {
        for item in self.inner.log.iter() {
            let (_, value) = item?;
            let entry = Self::decode_entry(&value)?;
            if let openraft::EntryPayload::Normal(data) = &entry.payload {
                A::decode(&entry.log_id, data)
                    .map_err(|e| StoreError::Corrupt(format!("log entry {} cannot be decoded: {e}", entry.log_id)))?;
            }
        }
        Ok(())
    }

    /// Delete entries at or below `last_purged` left behind by a purge interrupted by a crash.
    pub(crate) fn finish_interrupted_purge(&self) -> Result<u64, StoreError> {
        let Some(purged) = self.last_purged()? else {
            return Ok(0);
        };
        let mut removed = 0;
        for key in self.inner.log.range(..=index_key(purged.index)).keys() {
            self.inner.log.remove(key?)?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// Convert any range of log indexes into inclusive bounds, or None when it is empty.
fn inclusive_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl<C: StoreConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        let Some((start, end)) = inclusive_bounds(&range) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.inner.log.range(index_key(start)..=index_key(end)) {
            let (_, value) = item.map_err(|e| read_err(e.into()))?;
            out.push(Self::decode_entry(&value).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl<C: StoreConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_log_id = self.last_entry_id().map_err(read_err)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let res = match self.put_meta(KEY_VOTE, vote) {
            Ok(()) => self.flush_now().await,
            Err(e) => Err(e),
        };
        res.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        // Not flushed on its own: the committed index only lets a restarted node re-apply
        // sooner; it rides along with the next flush.
        let res = match committed {
            Some(c) => self.put_meta(KEY_COMMITTED, &c),
            None => self
                .inner
                .meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(StoreError::from),
        };
        res.map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.get_meta(KEY_COMMITTED).map_err(read_err)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut last = None;
        let mut total = 0u64;
        for entry in entries {
            last = Some(entry.log_id.index);
            let bytes = encode("log entry", &entry).map_err(write_err)?;
            if bytes.len() > crate::MAX_ENTRY_BYTES {
                return Err(write_err(StoreError::EntryTooLarge {
                    index: entry.log_id.index,
                    bytes: bytes.len(),
                }));
            }
            total += bytes.len() as u64;
            encoded.push((index_key(entry.log_id.index), bytes));
        }
        let started = std::time::Instant::now();
        // A lone entry is a plain insert: a sled batch costs an extra manifest record, which
        // sled writes and syncs separately. Several entries go in one atomic batch.
        if let [(key, bytes)] = encoded.as_mut_slice() {
            self.inner
                .log
                .insert(key, std::mem::take(bytes))
                .map_err(|e| write_err(e.into()))?;
        } else {
            let mut batch = sled::Batch::default();
            for (key, bytes) in encoded {
                batch.insert(&key, bytes);
            }
            self.inner.log.apply_batch(batch).map_err(|e| write_err(e.into()))?;
        }
        self.inner
            .appended_bytes
            .fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        let took = started.elapsed();
        if took >= SLOW_APPEND {
            // openraft's core waits for this: no heartbeat goes out meanwhile.
            tracing::warn!(took_ms = took.as_millis() as u64, "slow log append");
        }
        let queued = std::time::Instant::now();
        let done = Box::new(move |res: Result<(), std::io::Error>| {
            let waited = queued.elapsed();
            if waited >= SLOW_APPEND {
                tracing::warn!(waited_ms = waited.as_millis() as u64, "slow wait for a durable append");
            }
            callback.log_io_completed(res)
        });
        if let Err(done) = self.inner.flusher.after_flush_of(done, last) {
            done(Err(std::io::Error::other(StoreError::FlusherStopped)));
            return Err(write_err(StoreError::FlusherStopped));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "truncate log");
        // Lower the watermark first: see `watermark`.
        self.inner
            .mark
            .lower(log_id.index)
            .map_err(|e| write_err(StoreError::Io(e)))?;
        let mut batch = sled::Batch::default();
        for key in self.inner.log.range(index_key(log_id.index)..).keys() {
            batch.remove(key.map_err(|e| write_err(e.into()))?);
        }
        self.inner.log.apply_batch(batch).map_err(|e| write_err(e.into()))?;
        self.flush_now().await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "purge log");
        // Record the purge point durably first: see the module doc.
        self.put_meta(KEY_LAST_PURGED, &log_id).map_err(write_err)?;
        self.flush_now().await.map_err(write_err)?;
        // Thousands of removals after each snapshot (measured: the leader sent no heartbeat
        // while they ran, and a follower stood for election): off openraft's worker.
        crate::off_core(|| self.finish_interrupted_purge()).map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::inclusive_bounds;

    #[test]
    fn range_bounds_to_inclusive() {
        assert_eq!(inclusive_bounds(&(3..7)), Some((3, 6)));
        assert_eq!(inclusive_bounds(&(3..=7)), Some((3, 7)));
        assert_eq!(inclusive_bounds(&(..)), Some((0, u64::MAX)));
        assert_eq!(inclusive_bounds(&(5..5)), None);
        assert_eq!(inclusive_bounds(&(..0)), None);
        assert_eq!(inclusive_bounds(&(u64::MAX..)), Some((u64::MAX, u64::MAX)));
    }
}

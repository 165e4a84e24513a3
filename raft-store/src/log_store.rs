//! [`LogStore`]: openraft's `RaftLogStorage` on sled: the entries in generations of sled
//! databases (`generations`), the vote, committed index and purge point in `meta`.
//!
//! Durability rules (each one is what Raft's safety argument assumes of "stable storage"):
//! - an append is reported durable only after the flush that covers it (see `flusher`);
//! - a vote is flushed before `save_vote` returns, because openraft grants the vote as soon
//!   as it returns, and a node that forgets its vote after a crash can vote twice in a term;
//! - `purge` persists `last_purged` and flushes it before deleting anything, so a crash in
//!   the middle of a purge leaves extra entries below `last_purged`, never a hole between
//!   `last_purged` and the first entry. Entries at or below `last_purged` may stay stored
//!   until their generation retires; every reader skips them;
//! - `truncate` flushes, so conflicting entries removed on a follower cannot come back.
//!
//! A leader's own appends are the one exception to the first rule, and Raft's safety does
//! not rest on it (see "A leader's own appends" below).
//!
//! No write touches sled on openraft's thread: each is a job for the flusher thread, made in
//! queue order (see `flusher`). Until its job has written it, an appended entry is read from
//! [`Pending`]; a reader looks there first, then in sled, and the flusher removes an entry
//! from it only after writing it, so every entry is always in one of the two.
//!
//! # A leader's own appends
//!
//! (With [`crate::Options::leader_appends_before_flush`], which Corral's masters set.)
//! openraft 0.9 awaits an append's callback before it sends the entries to its followers
//! (`RaftCore::append_to_log`), so a leader that waited for its own disk first would pay
//! its flush and its followers' in series, where Raft needs them only in parallel. The
//! entries a leader appends in its own term (the saved vote is committed and names this
//! node, every entry carries that term, none changes the membership) are therefore reported
//! to openraft as soon as they are queued and readable, and flushed as any other append.
//! openraft then counts the leader in the quorum of those entries before its flush ends,
//! so its "committed" can run ahead of what a majority holds on disk. Nothing acts on it
//! until the leader's own flush has caught up:
//! - the state machine applies an entry, and the client hears of it, only once this log is
//!   durable through it (`SmStore::apply` waits for [`Durability`]);
//! - followers are told a commit index no higher than this log is durable through
//!   ([`LogStore::clamp_commit`], which the network applies to every AppendEntries), so no
//!   follower applies an entry before the leader's copy of it is on disk;
//! - the committed index saved here is clamped the same way.
//!
//! An entry acted on is thus on the leader's disk and, by openraft's count, on the disk of
//! enough followers to make a majority with it. One that was not (the leader died before its
//! flush) was applied nowhere and acknowledged to no one, and may be lost like any
//! uncommitted entry. A node that stays up keeps its unflushed entries in memory, and its
//! votes and log comparisons count them, which is the conservative side. Membership
//! entries keep the strict rule: openraft moves to the next configuration on its own
//! "committed", so those must be on a majority's disks when it says so.
//!
//! A leader that stops no longer has everything it sent on its disk, so it must not resume
//! leading the same term after a restart, as openraft 0.9 would (its new entries would reuse
//! the ids of entries that a crash lost here and the followers kept). At open, a committed
//! vote for this node is saved back as this node's uncommitted vote of the same term
//! (`open`): it restarts as a candidate and leads again only in a later term.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::codec::{decode, encode, index_key};
use crate::flusher::{Durability, Flusher, Job, Mark};
use crate::generations::Disk;
use crate::{StoreConfig, StoreError};

pub(crate) const KEY_VOTE: &str = "vote";
/// An append that waits longer than this to be durable is logged.
const SLOW_APPEND: std::time::Duration = std::time::Duration::from_millis(50);
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";

/// Entries appended and not yet written into sled by the flusher, and the latest state of
/// what openraft keeps in memory anyway (committed, purged), as the queued writes will
/// leave it.
#[derive(Default)]
pub(crate) struct Pending {
    /// Index → (the append job's sequence number, encoded entry).
    entries: std::collections::BTreeMap<u64, (u64, sled::IVec)>,
    next_seq: u64,
    /// The committed log id last saved (None: not saved since open; read sled).
    committed: Option<Option<LogId<u64>>>,
    /// The last purged index: entries at or below it are never read (sled may hold them
    /// until their generation retires).
    pub(crate) purged: Option<u64>,
}

pub(crate) type SharedPending = Arc<std::sync::Mutex<Pending>>;

fn lock(p: &SharedPending) -> std::sync::MutexGuard<'_, Pending> {
    // Pending is only ever changed by whole-map operations that cannot panic halfway.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct LogInner {
    pub(crate) disk: Arc<Disk>,
    pub(crate) pending: SharedPending,
    pub(crate) flusher: Flusher,
    /// How far the log has been durable (see `watermark`).
    pub(crate) mark: Arc<crate::watermark::Watermark>,
    /// Encoded bytes appended since this store was opened (never lowered).
    pub(crate) appended_bytes: std::sync::atomic::AtomicU64,
    /// This node's id (see "A leader's own appends").
    pub(crate) node_id: u64,
    /// Whether a leader's own appends are reported before they are durable
    /// ([`crate::Options::leader_appends_before_flush`]).
    pub(crate) leader_appends_before_flush: bool,
    /// The vote last made durable.
    pub(crate) vote: std::sync::Mutex<Option<Vote<u64>>>,
    /// How far the log is durable, as the flusher publishes it.
    pub(crate) durable: tokio::sync::watch::Receiver<Durability>,
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
        match self.inner.disk.meta.get(key)? {
            Some(bytes) => Ok(Some(decode(key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Encoded bytes of the entries appended since the store was opened. Only grows: the
    /// difference between two readings is what the log took on in between, which is what a
    /// snapshot policy by size needs (openraft's own counts entries, whatever their size).
    pub fn appended_bytes(&self) -> u64 {
        self.inner.appended_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long the log's flusher has been on its current batch of writes and flush (zero
    /// while idle). A leader's own appends do not hold up openraft's core (see "A leader's
    /// own appends"), so a disk that stopped completing flushes shows here, not as a core
    /// that stopped answering.
    pub fn flush_outstanding(&self) -> std::time::Duration {
        self.inner.flusher.counters.outstanding()
    }

    /// Where the flusher's time went since the store was opened.
    pub fn flush_stats(&self) -> crate::FlushStats {
        self.inner.flusher.counters.read()
    }

    /// Wait until every write queued so far is made and durable (see `flusher`).
    async fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.flusher.barrier().await
    }

    /// Write `value` under `key` in the meta tree on the flusher thread, after everything
    /// queued before, and wait until it is durable.
    async fn put_meta_durably<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        let disk = self.inner.disk.clone();
        self.inner
            .flusher
            .write_durably(Some(Box::new(move || disk.put_meta(key, bytes))))
            .await
    }

    fn decode_entry(bytes: &[u8]) -> Result<Entry<C>, StoreError> {
        decode("log entry", bytes)
    }

    fn last_purged(&self) -> Result<Option<LogId<u64>>, StoreError> {
        self.get_meta(KEY_LAST_PURGED)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, StoreError> {
        match self.inner.disk.last()? {
            Some((_, v)) => Ok(Some(Self::decode_entry(&v)?.log_id)),
            None => Ok(None),
        }
    }

    /// Queue `entries` for the flusher and return at once: they are readable now, and
    /// `done` fires once they are durable. Nothing here waits for sled or the disk.
    pub(crate) fn queue_append(
        &self,
        entries: impl IntoIterator<Item = Entry<C>>,
        done: crate::flusher::Durable,
    ) -> Result<(), StoreError> {
        let mut encoded = Vec::new();
        let mut last = None;
        let mut total = 0u64;
        for entry in entries {
            last = Some(entry.log_id.index);
            let bytes = encode("log entry", &entry)?;
            if bytes.len() > crate::MAX_ENTRY_BYTES {
                return Err(StoreError::EntryTooLarge {
                    index: entry.log_id.index,
                    bytes: bytes.len(),
                });
            }
            total += bytes.len() as u64;
            encoded.push((index_key(entry.log_id.index), bytes));
        }
        let Some(last) = last else {
            // Nothing to append: durable as it stands.
            done(Ok(()));
            return Ok(());
        };
        let items: Vec<([u8; 8], sled::IVec)> = encoded.into_iter().map(|(k, v)| (k, sled::IVec::from(v))).collect();
        // Readable at once from pending; the flusher writes it into sled, then lets it go.
        let seq = {
            let mut p = lock(&self.inner.pending);
            let seq = p.next_seq;
            p.next_seq += 1;
            for (key, bytes) in &items {
                p.entries.insert(u64::from_be_bytes(*key), (seq, bytes.clone()));
            }
            seq
        };
        self.inner
            .appended_bytes
            .fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        let disk = self.inner.disk.clone();
        let pending = self.inner.pending.clone();
        let write = Box::new(move || {
            let indexes: Vec<u64> = items.iter().map(|(k, _)| u64::from_be_bytes(*k)).collect();
            disk.append(items, total)?;
            // Only this append's own entries: a truncation may have replaced them since.
            let mut p = lock(&pending);
            for index in indexes {
                if p.entries.get(&index).is_some_and(|(s, _)| *s == seq) {
                    p.entries.remove(&index);
                }
            }
            Ok(())
        });
        let queued = std::time::Instant::now();
        let counters = self.inner.flusher.counters.clone();
        let done = Box::new(move |res: Result<(), std::io::Error>| {
            let waited = queued.elapsed();
            counters.append_done(waited);
            if waited >= SLOW_APPEND {
                tracing::warn!(waited_ms = waited.as_millis() as u64, "slow wait for a durable append");
            }
            done(res)
        });
        let job = Job {
            write: Some(write),
            done: Some(done),
            mark: Mark::Append(last),
        };
        if let Err(job) = self.inner.flusher.submit(job) {
            if let Some(done) = job.done {
                done(Err(std::io::Error::other(StoreError::FlusherStopped)));
            }
            return Err(StoreError::FlusherStopped);
        }
        Ok(())
    }

    /// Queue `entries` and call `report` once openraft may count them as this node's: when
    /// they are durable, or at once for a leader's own entries (see "A leader's own
    /// appends").
    pub(crate) fn append_reporting(
        &self,
        entries: Vec<Entry<C>>,
        report: crate::flusher::Durable,
    ) -> Result<(), StoreError> {
        if !self.own_leader_append(&entries) {
            return self.queue_append(entries, report);
        }
        // Flushed as usual. A failed flush shows in `Durability`, which the apply waits on,
        // and fails every later write.
        let done: crate::flusher::Durable = Box::new(move |res| {
            if let Err(e) = res {
                tracing::error!(error = %e, "a leader's append failed to become durable");
            }
        });
        self.queue_append(entries, done)?;
        self.inner.flusher.counters.leader_append();
        report(Ok(()));
        Ok(())
    }

    /// Every stored entry above the purge point, generation by generation, oldest first
    /// (entries at or below it may await their generation's retirement), read as iterated.
    fn kept_entries(&self) -> Result<impl Iterator<Item = Result<(u64, sled::IVec), StoreError>>, StoreError> {
        let from = self.last_purged()?.map_or(0, |p| p.index.saturating_add(1));
        Ok(self.inner.disk.iter_from(from))
    }

    /// Read every stored entry above the purge point and check the invariants of the log:
    /// entries contiguous from the first to the last (across generations, each generation's
    /// entries below the next one's), each stored under its own index, terms never
    /// decreasing, the first entry right after `last_purged`, and the committed index within
    /// the log. Runs at open; also the check of the crash test.
    pub fn verify(&self) -> Result<LogSummary, StoreError> {
        let last_purged = self.last_purged()?;
        let mut first_index = None;
        let mut prev: Option<LogId<u64>> = None;
        let mut entries = 0u64;
        for item in self.kept_entries()? {
            let (index, value) = item?;
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
        for item in self.kept_entries()? {
            let (_, value) = item?;
            let entry = Self::decode_entry(&value)?;
            if let openraft::EntryPayload::Normal(data) = &entry.payload {
                A::decode(&entry.log_id, data)
                    .map_err(|e| StoreError::Corrupt(format!("log entry {} cannot be decoded: {e}", entry.log_id)))?;
            }
        }
        Ok(())
    }

    /// Retire the generations left wholly at or below `last_purged` by a purge interrupted
    /// by a crash, and let readers skip what is left below it. Returns how many retired.
    pub(crate) fn finish_interrupted_purge(&self) -> Result<usize, StoreError> {
        let Some(purged) = self.last_purged()? else {
            return Ok(0);
        };
        lock(&self.inner.pending).purged = Some(purged.index);
        self.inner.disk.retire_through(purged.index)
    }

    /// Whether `entries` are this node's own appends as the leader of its term, reported to
    /// openraft before they are durable (see "A leader's own appends").
    fn own_leader_append(&self, entries: &[Entry<C>]) -> bool {
        if !self.inner.leader_appends_before_flush {
            return false;
        }
        let vote = *self.inner.vote.lock().unwrap_or_else(|p| p.into_inner());
        let Some(vote) = vote else {
            return false;
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(self.inner.node_id) {
            return false;
        }
        let term = vote.leader_id().get_term();
        !entries.is_empty()
            && entries
                .iter()
                .all(|e| e.log_id.leader_id.term == term && !matches!(e.payload, EntryPayload::Membership(_)))
    }

    /// The id of the entry at `index`, or the purge point if that is it.
    fn log_id_at(&self, index: u64) -> Result<Option<LogId<u64>>, StoreError> {
        let queued = lock(&self.inner.pending).entries.get(&index).map(|(_, v)| v.clone());
        let bytes = match queued {
            Some(b) => Some(b),
            None => self.inner.disk.range(index, index)?.remove(&index),
        };
        if let Some(bytes) = bytes {
            return Ok(Some(Self::decode_entry(&bytes)?.log_id));
        }
        Ok(self.last_purged()?.filter(|p| p.index == index))
    }

    /// `committed`, lowered to the last entry this log is durable through: what a leader may
    /// tell its followers is committed, and what it may save as committed (see "A leader's
    /// own appends"). Never raises it. If the id of that entry cannot be read, the answer is
    /// None: telling a follower less than it knows changes nothing for it.
    pub fn clamp_commit(&self, committed: Option<LogId<u64>>) -> Option<LogId<u64>> {
        let c = committed?;
        let durable = self.inner.durable.borrow().index;
        match durable {
            Some(d) if d >= c.index => Some(c),
            Some(d) => self.log_id_at(d).ok().flatten().filter(|l| *l <= c),
            None => None,
        }
    }

    /// The end of the durable log as the flusher publishes it, for the state machine.
    pub(crate) fn durability(&self) -> tokio::sync::watch::Receiver<Durability> {
        self.inner.durable.clone()
    }

    /// Hold the flusher thread until the returned sender is sent to (or dropped): nothing
    /// queued after this call is written or made durable until then.
    #[cfg(test)]
    pub(crate) fn hold_flusher(&self) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let job = Job {
            write: Some(Box::new(move || {
                let _ = held.recv();
                Ok(())
            })),
            done: None,
            mark: Mark::Keep,
        };
        assert!(self.inner.flusher.submit(job).is_ok(), "flusher running");
        release
    }

    /// How many sled databases the log's entries are in now (see `generations`).
    pub fn generations(&self) -> usize {
        self.inner.disk.generation_count()
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
        // Pending first: the flusher writes an entry into sled before it leaves pending, so
        // one missing here is in sled by now.
        let (mut pending, start) = {
            let p = lock(&self.inner.pending);
            let start = match p.purged {
                Some(purged) if purged >= start => purged.saturating_add(1),
                _ => start,
            };
            if start > end {
                return Ok(Vec::new());
            }
            let found: std::collections::BTreeMap<u64, sled::IVec> = p
                .entries
                .range(start..=end)
                .map(|(i, (_, v))| (*i, v.clone()))
                .collect();
            (found, start)
        };
        // The stored entries, by index (each index is in one generation at most).
        let mut found = self.inner.disk.range(start, end).map_err(read_err)?;
        // A pending entry is the newer version of its index (after a truncation, sled may
        // still hold the old one for a moment).
        found.append(&mut pending);
        let mut out = Vec::with_capacity(found.len());
        for bytes in found.values() {
            out.push(Self::decode_entry(bytes).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl<C: StoreConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        // What is queued is written first: sled then holds the log as openraft sees it, but
        // for entries at or below the purge point whose removal may still be queued.
        self.flush_now().await.map_err(read_err)?;
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_log_id = match (self.last_entry_id().map_err(read_err)?, last_purged_log_id) {
            (Some(last), Some(purged)) if last.index <= purged.index => Some(purged),
            (last, purged) => last.or(purged),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.put_meta_durably(KEY_VOTE, vote)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        *self.inner.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        // save_vote returns once written: sled has the latest.
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        // Not waited for: the committed index only lets a restarted node re-apply sooner; it
        // is written in queue order and made durable by the next flush. Never beyond the
        // durable log: a leader's openraft may count its own entries before they are on disk.
        let committed = self.clamp_commit(committed);
        let bytes = match committed {
            Some(c) => Some(encode(KEY_COMMITTED, &c).map_err(write_err)?),
            None => None,
        };
        lock(&self.inner.pending).committed = Some(committed);
        // Into `meta` without marking it for the next flush (see `generations`).
        let meta = self.inner.disk.meta.clone();
        let job = Job {
            write: Some(Box::new(move || match bytes {
                Some(b) => meta.insert(KEY_COMMITTED, b).map(|_| ()),
                None => meta.remove(KEY_COMMITTED).map(|_| ()),
            })),
            done: None,
            mark: Mark::Keep,
        };
        self.inner
            .flusher
            .submit(job)
            .map_err(|_| write_err(StoreError::FlusherStopped))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        if let Some(saved) = lock(&self.inner.pending).committed {
            return Ok(saved);
        }
        self.get_meta(KEY_COMMITTED).map_err(read_err)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let report: crate::flusher::Durable = Box::new(move |res| callback.log_io_completed(res));
        self.append_reporting(entries.into_iter().collect(), report)
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "truncate log");
        let first = log_id.index;
        // Gone for readers at once; from sled once the job (after every earlier append) runs.
        lock(&self.inner.pending).entries.split_off(&first);
        let disk = self.inner.disk.clone();
        let mark = self.inner.mark.clone();
        let write = Box::new(move || {
            // Lower the watermark first: see `watermark`.
            mark.lower(first).map_err(sled::Error::Io)?;
            disk.truncate(first)
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            write: Some(write),
            done: Some(Box::new(move |res| {
                let _ = tx.send(res);
            })),
            mark: Mark::Truncate(first),
        };
        self.inner
            .flusher
            .submit(job)
            .map_err(|_| write_err(StoreError::FlusherStopped))?;
        rx.await
            .map_err(|_| write_err(StoreError::FlusherStopped))?
            .map_err(|e| write_err(StoreError::Io(e)))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "purge log");
        let index = log_id.index;
        {
            // Gone for readers at once.
            let mut p = lock(&self.inner.pending);
            p.purged = Some(p.purged.map_or(index, |was| was.max(index)));
            let kept = p.entries.split_off(&index.saturating_add(1));
            p.entries = kept;
        }
        // Record the purge point durably first (see the module doc): a purge that returned is
        // never undone. Then the generations wholly behind it retire, as a job for the
        // flusher thread, not waited for; a crash before that leaves them, and the next open
        // retires them.
        self.put_meta_durably(KEY_LAST_PURGED, &log_id)
            .await
            .map_err(write_err)?;
        let disk = self.inner.disk.clone();
        let remove = Job {
            write: Some(Box::new(move || {
                let retired = disk.retire_through(index).map_err(StoreError::into_sled)?;
                if retired > 0 {
                    tracing::debug!(retired, purged = index, "retired log generations");
                }
                Ok(())
            })),
            done: None,
            mark: Mark::Keep,
        };
        self.inner
            .flusher
            .submit(remove)
            .map_err(|_| write_err(StoreError::FlusherStopped))
    }
}

#[cfg(test)]
mod tests {
    use super::inclusive_bounds;
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
    use std::io::Cursor;
    use std::time::Duration;

    openraft::declare_raft_types!(
        /// Payloads are strings.
        Cfg: D = String, R = String
    );

    /// A state machine that keeps nothing: these tests are about the log.
    #[derive(Default)]
    struct Nothing;

    impl crate::StateMachine<Cfg> for Nothing {
        type Decoded = String;
        fn decode(_: &openraft::LogId<u64>, data: &String) -> Result<String, String> {
            Ok(data.clone())
        }
        fn apply(&mut self, _: &openraft::LogId<u64>, d: String) -> String {
            d
        }
        type SnapshotView = ();
        fn snapshot_view(&self) {}
        fn write_snapshot(_: &(), _: &mut dyn std::io::Write) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(_: &[u8]) -> Result<Self, String> {
            Ok(Nothing)
        }
    }

    fn entry(term: u64, index: u64) -> openraft::Entry<Cfg> {
        openraft::Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Normal(format!("{term}.{index}")),
        }
    }

    fn payloads(entries: &[openraft::Entry<Cfg>]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(d) => d.clone(),
                _ => String::new(),
            })
            .collect()
    }

    fn open_store(dir: &std::path::Path) -> (super::LogStore<Cfg>, crate::SmStore<Cfg, Nothing>) {
        open_with(dir, crate::Options::default())
    }

    /// A store that reports a leader's own appends before they are durable.
    fn open_leader_store(dir: &std::path::Path) -> (super::LogStore<Cfg>, crate::SmStore<Cfg, Nothing>) {
        open_with(
            dir,
            crate::Options {
                leader_appends_before_flush: true,
                ..crate::Options::default()
            },
        )
    }

    /// A store whose every append after the first starts a new log generation.
    fn open_tiny_generations(dir: &std::path::Path) -> (super::LogStore<Cfg>, crate::SmStore<Cfg, Nothing>) {
        open_with(
            dir,
            crate::Options {
                log_generation_bytes: 1,
                ..crate::Options::default()
            },
        )
    }

    fn open_with(
        dir: &std::path::Path,
        options: crate::Options,
    ) -> (super::LogStore<Cfg>, crate::SmStore<Cfg, Nothing>) {
        let identity = crate::Identity {
            node_id: 1,
            cluster: "t".into(),
        };
        crate::open::<Cfg, Nothing>(dir, &identity, &options).unwrap()
    }

    /// Append `entries` and wait until they are durable.
    async fn append_durably(log: &super::LogStore<Cfg>, entries: Vec<openraft::Entry<Cfg>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.queue_append(entries, Box::new(move |r| tx.send(r.is_ok()).unwrap()))
            .unwrap();
        let ok = tokio::time::timeout(Duration::from_secs(10), rx).await;
        assert!(ok.expect("durable in time").unwrap(), "append failed");
    }

    /// The generation directories on disk.
    fn generation_dirs(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// An append returns without waiting for sled or the disk, and is readable at once:
    /// shown with the flusher thread held up. (openraft 0.9 then awaits the callback; the
    /// insert into sled is no longer its work.)
    #[tokio::test]
    async fn appends_return_and_are_readable_while_the_flusher_is_held_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_store(dir.path());
        let release = log.hold_flusher();

        let (tx, mut durable) = tokio::sync::mpsc::unbounded_channel();
        for batch in [vec![entry(1, 0), entry(1, 1), entry(1, 2)], vec![entry(1, 3)]] {
            let tx = tx.clone();
            log.queue_append(batch, Box::new(move |res| tx.send(res.is_ok()).unwrap()))
                .expect("queued");
        }
        // Nothing durable yet, nothing in sled yet, and every entry readable.
        assert!(durable.try_recv().is_err());
        assert_eq!(log.inner.disk.len(), 0);
        let read = log.try_get_log_entries(0..4).await.unwrap();
        assert_eq!(payloads(&read), ["1.0", "1.1", "1.2", "1.3"]);
        let some = log.try_get_log_entries(1..=2).await.unwrap();
        assert_eq!(payloads(&some), ["1.1", "1.2"]);

        release.send(()).unwrap();
        for _ in 0..2 {
            let ok = tokio::time::timeout(Duration::from_secs(10), durable.recv()).await;
            assert_eq!(ok.expect("durable in time"), Some(true));
        }
        // Written into sled, gone from pending, read the same.
        assert_eq!(log.inner.disk.len(), 4);
        assert!(super::lock(&log.inner.pending).entries.is_empty());
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(payloads(&read), ["1.0", "1.1", "1.2", "1.3"]);
    }

    /// A leader's own entries are reported to openraft at once, so that it sends them on
    /// while they are flushed; they are applied, and followers told they are committed, only
    /// once this log is durable through them.
    #[tokio::test]
    async fn a_leaders_own_entries_are_reported_at_once_and_applied_once_durable() {
        use openraft::storage::{RaftLogStorage, RaftStateMachine};
        let dir = tempfile::tempdir().unwrap();
        let (mut log, sm) = open_leader_store(dir.path());
        append_durably(&log, vec![entry(1, 0), entry(1, 1)]).await;
        // Node 1 (this store) leads term 2.
        log.save_vote(&openraft::Vote::new_committed(2, 1)).await.unwrap();
        let release = log.hold_flusher();

        let (tx, mut reported) = tokio::sync::mpsc::unbounded_channel();
        log.append_reporting(
            vec![entry(2, 2), entry(2, 3)],
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        )
        .unwrap();
        assert_eq!(reported.try_recv(), Ok(true), "reported before its flush");
        assert_eq!(log.flush_stats().leader_appends, 1);
        // openraft may now call entry 3 committed; followers hear of entry 1 at most.
        assert_eq!(log.clamp_commit(Some(entry(2, 3).log_id)), Some(entry(1, 1).log_id));
        assert_eq!(log.clamp_commit(Some(entry(1, 0).log_id)), Some(entry(1, 0).log_id));
        assert_eq!(log.clamp_commit(None), None);
        // The apply of entries 0..=3 waits for the flush.
        let mut applying = tokio::spawn({
            let mut sm = sm.clone();
            async move {
                sm.apply(vec![entry(1, 0), entry(1, 1), entry(2, 2), entry(2, 3)])
                    .await
                    .map(|r| r.len())
            }
        });
        let early = tokio::time::timeout(Duration::from_millis(200), &mut applying).await;
        assert!(early.is_err(), "applied before the leader's entries were durable");
        assert_eq!(sm.reader().read().last_applied, None);

        release.send(()).unwrap();
        let applied = tokio::time::timeout(Duration::from_secs(10), applying).await;
        assert_eq!(applied.expect("applied once durable").unwrap().unwrap(), 4);
        assert_eq!(sm.reader().read().last_applied, Some(entry(2, 3).log_id));
        assert_eq!(sm.reader().apply_stats().durable_waits, 1);
        assert_eq!(log.clamp_commit(Some(entry(2, 3).log_id)), Some(entry(2, 3).log_id));
    }

    /// Append `entries` with the flusher held and check that they are reported to openraft
    /// only once durable: not while the flush is held, and successfully once it is released.
    async fn assert_reported_only_once_durable(
        log: &super::LogStore<Cfg>,
        entries: Vec<openraft::Entry<Cfg>>,
        case: &str,
    ) {
        let release = log.hold_flusher();
        let (tx, mut reported) = tokio::sync::mpsc::unbounded_channel();
        log.append_reporting(entries, Box::new(move |r| tx.send(r.is_ok()).unwrap()))
            .unwrap();
        assert!(reported.try_recv().is_err(), "{case}: reported before durable");
        release.send(()).unwrap();
        let ok = tokio::time::timeout(Duration::from_secs(10), reported.recv()).await;
        assert_eq!(ok.expect("reported once durable"), Some(true), "{case}");
    }

    /// A leader that stops restarts as a candidate of its term (its committed vote saved
    /// back uncommitted), so that it cannot resume the term with entries lost in a crash;
    /// without the option, and for a follower's vote, the vote is kept as it was.
    #[tokio::test]
    async fn a_leader_restarts_as_a_candidate_of_its_term() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let led = openraft::Vote::new_committed(5, 1);
        {
            let (mut log, _sm) = open_store(dir.path());
            log.save_vote(&led).await.unwrap();
        }
        {
            // Option off: kept.
            let (mut log, _sm) = open_store(dir.path());
            assert_eq!(log.read_vote().await.unwrap(), Some(led));
        }
        {
            let (mut log, _sm) = open_leader_store(dir.path());
            let vote = log.read_vote().await.unwrap().unwrap();
            assert_eq!(vote, openraft::Vote::new(5, 1));
            assert!(!vote.is_committed());
            // Its appends are not a leader's own until it wins a later term.
            assert_reported_only_once_durable(&log, vec![entry(5, 0)], "restarted as a candidate").await;
            // A follower's committed vote is kept.
            log.save_vote(&openraft::Vote::new_committed(6, 2)).await.unwrap();
        }
        let (mut log, _sm) = open_leader_store(dir.path());
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(openraft::Vote::new_committed(6, 2))
        );
    }

    /// The flusher's outstanding time is zero while it is idle and grows while a batch is
    /// held up (a stuck disk), back to zero once it completes.
    #[tokio::test]
    async fn a_held_flush_shows_as_outstanding() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _sm) = open_store(dir.path());
        append_durably(&log, vec![entry(1, 0)]).await;
        // The flusher fires the batch's callbacks before it marks itself idle, so the
        // append can return a moment before the thread is back waiting for work.
        wait_until_idle(&log).await;
        let release = log.hold_flusher();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.flush_outstanding() < Duration::from_millis(100) {
            assert!(std::time::Instant::now() < deadline, "never outstanding");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        release.send(()).unwrap();
        append_durably(&log, vec![entry(1, 1)]).await;
        wait_until_idle(&log).await;
    }

    /// Waits, with a deadline, until the flusher shows nothing outstanding.
    async fn wait_until_idle(log: &super::LogStore<Cfg>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.flush_outstanding() != Duration::ZERO {
            assert!(std::time::Instant::now() < deadline, "still outstanding");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Everything else is reported only once durable: a follower's entries (the vote names
    /// another node), a leader's entries of an earlier term, a leader's membership change
    /// (openraft moves to the next configuration on its own "committed"), and everything
    /// when the option is off.
    #[tokio::test]
    async fn other_appends_are_reported_only_once_durable() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _sm) = open_store(dir.path());
            log.save_vote(&openraft::Vote::new_committed(2, 1)).await.unwrap();
            assert_reported_only_once_durable(&log, vec![entry(2, 0)], "option off").await;
        }
        let (mut log, _sm) = open_leader_store(dir.path());
        let membership = |term: u64, index: u64| openraft::Entry::<Cfg> {
            log_id: openraft::LogId::new(CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Membership(openraft::Membership::new(vec![[1u64].into_iter().collect()], None)),
        };
        let cases: Vec<(openraft::Vote<u64>, Vec<openraft::Entry<Cfg>>)> = vec![
            // Node 2 leads term 3: this node follows.
            (openraft::Vote::new_committed(3, 2), vec![entry(3, 1)]),
            // This node stands in term 4 and has not won yet.
            (openraft::Vote::new(4, 1), vec![entry(3, 2)]),
            // This node leads term 4; entries of term 3 are not its own.
            (openraft::Vote::new_committed(4, 1), vec![entry(3, 3)]),
            // A membership change in its own term.
            (openraft::Vote::new_committed(4, 1), vec![entry(4, 4), membership(4, 5)]),
        ];
        for (vote, entries) in cases {
            log.save_vote(&vote).await.unwrap();
            assert_reported_only_once_durable(&log, entries, &vote.to_string()).await;
        }
        assert_eq!(log.flush_stats().leader_appends, 0);
    }

    /// A purge returns once the purge point is durable, without waiting for anything to be
    /// deleted; readers skip the purged entries at once, the log's last id is the purge point
    /// even while older entries are still stored, and the generations wholly behind the
    /// purge point are deleted from the disk.
    #[tokio::test]
    async fn a_purge_is_durable_when_it_returns_and_retires_the_generations_behind_it() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_tiny_generations(dir.path());
        // One entry per append: one generation each.
        for i in 0..10 {
            append_durably(&log, vec![entry(1, i)]).await;
        }
        assert_eq!(log.generations(), 10);
        assert_eq!(generation_dirs(dir.path()).len(), 10);

        let purge_point = openraft::LogId::new(CommittedLeaderId::new(1, 0), 5);
        log.purge(purge_point).await.expect("purged");
        let stored: Option<openraft::LogId<u64>> = log.get_meta(super::KEY_LAST_PURGED).unwrap();
        assert_eq!(
            stored,
            Some(purge_point),
            "the purge point is written when purge returns"
        );
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(payloads(&read), ["1.6", "1.7", "1.8", "1.9"]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purge_point));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(9));
        // get_log_state waited for the queue: the retirement ran. Entries 0..=5 were in the
        // six oldest generations; their directories are gone.
        assert_eq!(log.generations(), 4);
        assert_eq!(
            generation_dirs(dir.path()),
            (7..=10).map(|seq| format!("gen-{seq:020}")).collect::<Vec<_>>()
        );
        assert_eq!(log.inner.disk.len(), 4);
        let summary = log.verify().unwrap();
        assert_eq!((summary.first_index, summary.entries), (Some(6), 4));

        // Purged past the end of the log (a snapshot installed from the leader): the log's
        // last id is the purge point; every generation but the newest retires, and the
        // newest keeps its entry, unread, until a later purge retires it.
        let beyond = openraft::LogId::new(CommittedLeaderId::new(2, 0), 20);
        log.purge(beyond).await.unwrap();
        assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(beyond));
        assert_eq!(log.generations(), 1);
        let summary = log.verify().unwrap();
        assert_eq!((summary.entries, summary.last_log_id), (0, Some(beyond)));

        // The log goes on after the purge point; the old entry's generation retires at the
        // next purge.
        append_durably(&log, vec![entry(2, 21)]).await;
        append_durably(&log, vec![entry(2, 22)]).await;
        log.purge(openraft::LogId::new(CommittedLeaderId::new(2, 0), 21))
            .await
            .unwrap();
        log.get_log_state().await.unwrap();
        assert_eq!(generation_dirs(dir.path()), [format!("gen-{:020}", 12)]);
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(payloads(&read), ["2.22"]);
    }

    /// A truncation removes entries from every generation that holds them, and a reopen
    /// reads the new log; what a crash left of a retirement is deleted at open.
    #[tokio::test]
    async fn a_truncation_across_generations_and_a_reopen() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_tiny_generations(dir.path());
        append_durably(&log, (0..4).map(|i| entry(1, i)).collect()).await;
        append_durably(&log, (4..8).map(|i| entry(1, i)).collect()).await;
        append_durably(&log, (8..10).map(|i| entry(1, i)).collect()).await;
        assert_eq!(log.generations(), 3);
        // Entries 2.. go: the first generation keeps 0 and 1, the others are emptied.
        log.truncate(openraft::LogId::new(CommittedLeaderId::new(1, 0), 2))
            .await
            .unwrap();
        append_durably(&log, vec![entry(2, 2), entry(2, 3)]).await;
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(payloads(&read), ["1.0", "1.1", "2.2", "2.3"]);
        assert_eq!(log.verify().unwrap().entries, 4);
        drop((log, _sm));
        // A retirement interrupted after its rename.
        let stray = dir.path().join("log").join(format!("gen-{:020}.retiring", 0));
        std::fs::create_dir_all(stray.join("blobs")).unwrap();
        let (mut log, _sm) = open_tiny_generations(dir.path());
        assert!(!stray.exists(), "an interrupted retirement is finished at open");
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(payloads(&read), ["1.0", "1.1", "2.2", "2.3"]);
        let summary = log.verify().unwrap();
        assert_eq!(summary.last_log_id.map(|l| (l.leader_id.term, l.index)), Some((2, 3)));
        // A generation found at open counts as full: the next append starts a new one.
        let before = log.generations();
        append_durably(&log, vec![entry(2, 4)]).await;
        assert_eq!(log.generations(), before + 1);
        let read = log.try_get_log_entries(3..).await.unwrap();
        assert_eq!(payloads(&read), ["2.3", "2.4"]);
    }

    /// A data dir written before generations, its entries in `sled/`'s `log` tree, opens with
    /// them moved into the first generation, and its `sled/` file, which sled would keep at
    /// the old log's size, rebuilt small.
    #[tokio::test]
    async fn a_log_written_before_generations_is_moved_into_one() {
        use openraft::storage::RaftLogStorage;
        const ENTRIES: u64 = 2000;
        let big = |i: u64| openraft::Entry::<Cfg> {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 0), i),
            payload: EntryPayload::Normal(format!("{i}:{}", "x".repeat(20_000))),
        };
        let dir = tempfile::tempdir().unwrap();
        drop(open_store(dir.path()));
        std::fs::remove_dir_all(dir.path().join("log")).unwrap();
        let meta_file = dir.path().join("sled").join("db");
        {
            let db = crate::generations::open_db(&dir.path().join("sled"), crate::META_CACHE_BYTES).unwrap();
            let legacy = db.open_tree("log").unwrap();
            for i in 0..ENTRIES {
                let bytes = crate::codec::encode("log entry", &big(i)).unwrap();
                legacy.insert(crate::codec::index_key(i), bytes).unwrap();
            }
            db.flush().unwrap();
        }
        let before = std::fs::metadata(&meta_file).unwrap().len();
        assert!(before > crate::generations::META_REBUILD_BYTES, "{before} bytes");
        let (mut log, _sm) = open_store(dir.path());
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(read.len() as u64, ENTRIES);
        assert_eq!(read[7].payload, big(7).payload);
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id.map(|l| l.index),
            Some(ENTRIES - 1)
        );
        assert!(!log.inner.disk.has_legacy_log(), "the old tree is dropped");
        let after = std::fs::metadata(&meta_file).unwrap().len();
        assert!(
            after <= crate::generations::META_REBUILD_BYTES,
            "sled/ is rebuilt small: {before} -> {after} bytes"
        );
        // The identity survived the rebuild, and the vote written after it is kept.
        let vote = openraft::Vote::new(3, 1);
        log.save_vote(&vote).await.unwrap();
        drop((log, _sm));
        let (mut log, _sm) = open_store(dir.path());
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len() as u64, ENTRIES);
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let other = crate::Identity {
            node_id: 2,
            cluster: "t".into(),
        };
        drop((log, _sm));
        assert!(matches!(
            crate::open::<Cfg, Nothing>(dir.path(), &other, &crate::Options::default()),
            Err(crate::StoreError::WrongNode { .. })
        ));
    }

    /// What a crash leaves of a rebuild of `sled/` is finished at the next open.
    #[test]
    fn an_interrupted_rebuild_of_meta_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = dir.path().join("sled");
        let (new, old) = (sled_dir.with_extension("new"), sled_dir.with_extension("old"));
        let mark = |d: &std::path::Path, what: &str| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("which"), what).unwrap();
        };
        let which = || std::fs::read_to_string(sled_dir.join("which")).unwrap();
        // Between the two renames: the complete new copy goes in.
        mark(&new, "new");
        mark(&old, "old");
        crate::generations::recover_meta_rebuild(&sled_dir).unwrap();
        assert_eq!(which(), "new");
        assert!(!new.exists() && !old.exists());
        // A copy never renamed in: dropped, the current one kept.
        mark(&new, "partial");
        crate::generations::recover_meta_rebuild(&sled_dir).unwrap();
        assert_eq!(which(), "new");
        assert!(!new.exists());
        // Swapped but the old one not yet deleted.
        mark(&old, "old");
        crate::generations::recover_meta_rebuild(&sled_dir).unwrap();
        assert_eq!(which(), "new");
        assert!(!old.exists());
    }

    /// A truncation and a re-append queued behind an append that is not yet written: readers
    /// see the new entries, sled ends with them, and the watermark does not claim the
    /// truncated ones.
    #[tokio::test]
    async fn a_truncation_behind_unwritten_appends_leaves_the_new_entries() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open_store(dir.path());
        let release = log.hold_flusher();
        let (tx, mut durable) = tokio::sync::mpsc::unbounded_channel();
        let t1 = tx.clone();
        log.queue_append(
            (0..5).map(|i| entry(1, i)),
            Box::new(move |r| t1.send(r.is_ok()).unwrap()),
        )
        .unwrap();
        // The truncation waits for its flush: run it beside the release.
        let mut truncating = log.clone();
        let truncated = tokio::spawn(async move {
            truncating
                .truncate(openraft::LogId::new(CommittedLeaderId::new(1, 0), 3))
                .await
        });
        // Readers stop seeing 3 and 4 at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while super::lock(&log.inner.pending).entries.contains_key(&3) {
            assert!(std::time::Instant::now() < deadline, "truncation not seen");
            tokio::task::yield_now().await;
        }
        let t2 = tx.clone();
        log.queue_append([entry(2, 3)], Box::new(move |r| t2.send(r.is_ok()).unwrap()))
            .unwrap();
        let read = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(payloads(&read), ["1.0", "1.1", "1.2", "2.3"]);
        release.send(()).unwrap();
        truncated.await.unwrap().expect("truncated");
        for _ in 0..2 {
            let ok = tokio::time::timeout(Duration::from_secs(10), durable.recv()).await;
            assert_eq!(ok.expect("durable in time"), Some(true));
        }
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(payloads(&read), ["1.0", "1.1", "1.2", "2.3"]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        let summary = log.verify().expect("verify");
        assert_eq!(summary.entries, 4);
        drop((log, _sm));
        // Reopens: the watermark (durable to 3) agrees with the log.
        let (log, _sm) = open_store(dir.path());
        assert_eq!(
            log.verify().unwrap().last_log_id.map(|l| (l.leader_id.term, l.index)),
            Some((2, 3))
        );
    }

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

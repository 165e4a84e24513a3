//! [`SmStore`]: openraft's `RaftStateMachine` around an application state machine.
//!
//! The applied state lives in memory; what makes it durable is the Raft log plus snapshots.
//! On open the state machine is restored from the last persisted snapshot and openraft
//! re-applies the committed entries after it (the log store persists the committed index).
//! This keeps apply free of I/O and fast, and bounds recovery work by the snapshot policy.
//!
//! Snapshots are files (`<data dir>/snapshots/current.snap`), not sled values: sled 0.34
//! stores values over a quarter of a segment as separate blob files that it never fsyncs, and
//! a cluster's snapshot is that large. A snapshot is written to a temporary file, fsynced,
//! renamed over the current one and the directory fsynced, so a crash leaves either the old
//! snapshot or the new one, and openraft purges the log only behind a durable snapshot.
//!
//! Building a snapshot does not stop apply: under the state's read lock the store takes only
//! the application's [`StateMachine::SnapshotView`] (for Corral an O(1) copy of persistent
//! maps), then encodes that view straight into the file on a blocking thread, hashing as it
//! writes. No encoded copy of the state is held in memory.

use std::fs::File;
use std::io::{BufWriter, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::codec::{decode, encode};
use crate::{StoreConfig, StoreError};

pub(crate) const SNAPSHOT_FILE: &str = "current.snap";
/// Temporary snapshot files are `current.snap.tmp.<n>`: a build and an install may write
/// at once, and only the rename decides which one is current.
const SNAPSHOT_TMP_PREFIX: &str = "current.snap.tmp";

/// The first bytes of a snapshot file written by this build. Then the SHA-256 of everything
/// after it, the length of the encoded metadata (u32, little-endian), the metadata, and the
/// application's snapshot bytes to the end of the file (streamed, so no length ahead).
const SNAPSHOT_MAGIC: &[u8; 8] = b"CRLSNAP2";
/// Files of the previous layout (checksum, then one encoded record holding metadata and
/// data) and files without magic (before checksums) are still read.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"CRLSNAP1";
const CHECKSUM_LEN: usize = 32;

/// The application state machine replicated by the store. Corral's cluster state implements
/// this; the store knows nothing else about it.
///
/// `apply` must be deterministic: the same entries applied to the same state give the same
/// state and responses on every node (no clock, no randomness, no I/O).
pub trait StateMachine<C: StoreConfig>: Default + Send + Sync + 'static {
    /// A normal entry's payload made ready to apply. The store decodes every entry of a
    /// batch before it takes the state's write lock, so readers do not wait on decoding.
    type Decoded: Send;

    /// Decode the payload of one normal entry. An error means corruption or a bug (a
    /// payload written by this cluster that it cannot read): the store reports it to
    /// openraft as a storage error, which stops the node rather than skip the entry.
    fn decode(log_id: &LogId<u64>, data: &C::D) -> Result<Self::Decoded, String>;

    /// Apply one decoded normal entry.
    fn apply(&mut self, log_id: &LogId<u64>, decoded: Self::Decoded) -> C::R;

    /// About how much work applying `decoded` is, in units of one small command. Batches
    /// of [`APPLY_IN_PLACE_MAX_COST`] or more are applied off the Raft core's worker.
    fn apply_cost(_decoded: &Self::Decoded) -> usize {
        1
    }

    /// A consistent, self-contained copy of what a snapshot holds, independent of later
    /// applies. It is taken under the state's read lock, so it must be cheap (shared
    /// persistent structures, not a deep copy).
    type SnapshotView: Send + Sync + 'static;

    /// Take the view of the current state for a snapshot.
    fn snapshot_view(&self) -> Self::SnapshotView;

    /// Encode a view: the bytes [`StateMachine::restore`] reads. Runs on a blocking thread
    /// without any lock; an error is the writer's (a full disk).
    fn write_snapshot(view: &Self::SnapshotView, out: &mut dyn Write) -> std::io::Result<()>;

    /// Rebuild a state from [`StateMachine::write_snapshot`] output.
    fn restore(bytes: &[u8]) -> Result<Self, String>;
}

/// Apply batches costing less than this (see [`StateMachine::apply_cost`]) run in place on
/// the Raft runtime; larger ones first hand the worker over (`block_in_place`) so that
/// openraft's core keeps answering while they run. About a millisecond of Corral commands.
pub const APPLY_IN_PLACE_MAX_COST: usize = 256;

/// The applied state: the application's plus what openraft needs to know of it.
#[derive(Default)]
pub struct Applied<A> {
    /// The last log id applied.
    pub last_applied: Option<LogId<u64>>,
    /// The membership as of `last_applied`.
    pub membership: StoredMembership<u64, openraft::BasicNode>,
    /// The application's state.
    pub app: A,
}

/// An entry's payload on its way to the state machine.
enum Payload<D> {
    Blank,
    Normal(D),
    Membership(openraft::Membership<u64, openraft::BasicNode>),
}

/// A snapshot as read from its file (and, in the previous layout, as encoded in it).
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
}

pub(crate) struct SmShared<A> {
    /// The directory holding the snapshot file.
    dir: PathBuf,
    /// Serializes snapshot writers; holds the metadata of the stored snapshot.
    stored_meta: Mutex<Option<SnapshotMeta<u64, openraft::BasicNode>>>,
    state: RwLock<Applied<A>>,
    snapshot_seq: AtomicU64,
    /// The last snapshot this node built: how long it took and its size.
    last_built: Mutex<Option<SnapshotStats>>,
    /// Apply calls, entries applied and time spent, since the store was opened.
    apply_calls: AtomicU64,
    apply_entries: AtomicU64,
    apply_nanos: AtomicU64,
    /// How far the log is durable, when the apply waits for it (see `log_store`, "A
    /// leader's own appends").
    durable: Option<tokio::sync::watch::Receiver<crate::flusher::Durability>>,
    /// Apply calls that waited for the log to be durable, and their total wait.
    durable_waits: AtomicU64,
    durable_wait_nanos: AtomicU64,
}

/// What apply has done since the store was opened, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Calls from openraft, each a run of committed entries.
    pub calls: u64,
    /// Entries applied.
    pub entries: u64,
    /// Time from a call's start to its answers (decoding, the state's lock, the commands),
    /// in nanoseconds.
    pub nanos: u64,
    /// Calls that first waited for this node's log to be durable through their entries (a
    /// leader's own appends, see `log_store`), and their total wait in nanoseconds (not in
    /// `nanos`).
    pub durable_waits: u64,
    /// See `durable_waits`.
    pub durable_wait_nanos: u64,
}

/// How the last snapshot build went, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotStats {
    /// Taking the view, encoding it and writing it durably.
    pub build: std::time::Duration,
    /// Of that, the time the state's read lock was held to take the view (apply waits
    /// for it).
    pub locked: std::time::Duration,
    /// Encoded size of the snapshot, in bytes.
    pub bytes: usize,
}

/// The state-machine half of the store. Cheap to clone.
pub struct SmStore<C: StoreConfig, A: StateMachine<C>> {
    shared: Arc<SmShared<A>>,
    _c: std::marker::PhantomData<fn() -> C>,
}

impl<C: StoreConfig, A: StateMachine<C>> Clone for SmStore<C, A> {
    fn clone(&self) -> Self {
        SmStore {
            shared: self.shared.clone(),
            _c: std::marker::PhantomData,
        }
    }
}

/// Read access to the applied state for the rest of the node (status, the allocator...).
pub struct StateReader<A> {
    shared: Arc<SmShared<A>>,
}

impl<A> Clone for StateReader<A> {
    fn clone(&self) -> Self {
        StateReader {
            shared: self.shared.clone(),
        }
    }
}

impl<A> StateReader<A> {
    /// How the last snapshot this node built went, if it built one since it started.
    pub fn last_snapshot(&self) -> Option<SnapshotStats> {
        *self.shared.last_built.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What apply has done since the store was opened.
    pub fn apply_stats(&self) -> ApplyStats {
        ApplyStats {
            calls: self.shared.apply_calls.load(Ordering::Relaxed),
            entries: self.shared.apply_entries.load(Ordering::Relaxed),
            nanos: self.shared.apply_nanos.load(Ordering::Relaxed),
            durable_waits: self.shared.durable_waits.load(Ordering::Relaxed),
            durable_wait_nanos: self.shared.durable_wait_nanos.load(Ordering::Relaxed),
        }
    }

    /// Lock the applied state for reading. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied<A>> {
        // A poisoned lock means a panic inside apply, which is a bug; the state is still the
        // last consistent one because apply mutates only after its checks.
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn snap_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

impl<C: StoreConfig, A: StateMachine<C>> SmStore<C, A> {
    /// Open the snapshots in `dir`, restoring the state from the current one if any; with
    /// `durable`, entries are applied only once it says the log holds them on disk.
    pub(crate) fn open(
        dir: PathBuf,
        durable: Option<tokio::sync::watch::Receiver<crate::flusher::Durability>>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)?;
        // A crash during a snapshot write leaves its temporary file: never current, remove it.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(SNAPSHOT_TMP_PREFIX) {
                std::fs::remove_file(entry.path())?;
            }
        }
        let mut applied = Applied::<A>::default();
        let stored = read_snapshot_file(&dir)?;
        let stored_meta = stored.as_ref().map(|s| s.meta.clone());
        if let Some(stored) = stored {
            applied.app = A::restore(&stored.data)
                .map_err(|e| StoreError::Corrupt(format!("the snapshot does not decode: {e}")))?;
            applied.last_applied = stored.meta.last_log_id;
            applied.membership = stored.meta.last_membership;
        }
        let shared = SmShared {
            dir,
            stored_meta: Mutex::new(stored_meta),
            state: RwLock::new(applied),
            snapshot_seq: AtomicU64::new(0),
            last_built: Mutex::new(None),
            apply_calls: AtomicU64::new(0),
            apply_entries: AtomicU64::new(0),
            apply_nanos: AtomicU64::new(0),
            durable,
            durable_waits: AtomicU64::new(0),
            durable_wait_nanos: AtomicU64::new(0),
        };
        Ok(SmStore {
            shared: Arc::new(shared),
            _c: std::marker::PhantomData,
        })
    }

    /// The last log id the stored snapshot covers (None without a snapshot).
    pub(crate) fn snapshot_last_log_id(&self) -> Option<LogId<u64>> {
        self.shared
            .stored_meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|m| m.last_log_id)
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader<A> {
        StateReader {
            shared: self.shared.clone(),
        }
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, Applied<A>> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let _writer = self.shared.stored_meta.lock().unwrap_or_else(|p| p.into_inner());
        read_snapshot_file(&self.shared.dir)
    }

    /// Durably store a snapshot with `meta` whose application bytes `write_data` writes,
    /// as the current snapshot unless a newer one is stored by then (a slow build may finish
    /// after a newer snapshot was installed from the leader). Returns the data's size, or
    /// None when a newer snapshot won. Blocking.
    fn persist_snapshot(
        &self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        write_data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Option<u64>, StoreError> {
        let dir = &self.shared.dir;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{SNAPSHOT_TMP_PREFIX}.{seq}"));
        let written = write_snapshot_file(&tmp, meta, write_data);
        let data_len = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let mut stored_meta = self.shared.stored_meta.lock().unwrap_or_else(|p| p.into_inner());
        if stored_meta.as_ref().is_some_and(|m| m.last_log_id > meta.last_log_id) {
            drop(stored_meta);
            std::fs::remove_file(&tmp)?;
            return Ok(None);
        }
        std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
        // The rename is durable only once the directory is.
        File::open(dir)?.sync_all()?;
        *stored_meta = Some(meta.clone());
        Ok(Some(data_len))
    }
}

/// The niceness of the thread that encodes a snapshot: it yields the CPU to the node's
/// Raft, apply and API threads whenever they want it. Measured under full churn on a
/// 2-core machine: two masters encoding at normal priority (0.6–0.8 s of CPU each) starved
/// the third, the leader, of heartbeats long enough for a follower to stand. At 10 it
/// gets about a tenth of a contended core, so a build takes longer under load and none
/// of the node's other work waits for it.
pub(crate) const SNAPSHOT_BUILD_NICE: i32 = 10;

/// Run `work` on a thread of its own at background priority ([`SNAPSHOT_BUILD_NICE`]) and
/// await its result. A fresh thread, not tokio's blocking pool: an unprivileged process
/// cannot raise a thread's priority back, and a pool thread would keep the low priority for
/// whatever it runs next.
async fn in_background<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Result<R, std::io::Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot-build".into())
        .spawn(move || {
            lower_this_threads_priority(SNAPSHOT_BUILD_NICE);
            let _ = tx.send(work());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the snapshot thread ended without a result (it panicked)"))
}

/// The calling thread's niceness (Linux: niceness is per thread).
#[cfg(target_os = "linux")]
fn this_threads_nice() -> i32 {
    // SAFETY: gettid and getpriority take plain integers and touch no memory of ours. (-1 is
    // also a valid niceness; a failure reads as that, which only means "do not lower".)
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
}

/// Lower the calling thread's priority to niceness `nice`, never raise it (a node started
/// at a lower priority stays there). Best effort: a refusal leaves the thread as it was,
/// which is only slower for the others.
fn lower_this_threads_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let target = this_threads_nice().max(nice);
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, target)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the snapshot thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// A writer that hashes what passes through it and counts it.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// How much of a snapshot file may be written and not yet on its way to the device. A
/// snapshot's tens of MiB written at once and fsynced at the end held the disk for
/// 150-330 ms, and every log flush behind it (soak-bench: openraft's core, waiting for its
/// append, sent no heartbeat meanwhile, and a follower stood against the leader after each
/// snapshot). Written back as it goes, a chunk at a time, the device's queue never holds
/// more than two chunks of it, and the final fsync has almost nothing left to write.
pub(crate) const SNAPSHOT_WRITEBACK_BYTES: u64 = 1 << 20;

/// A file written back to the device every [`SNAPSHOT_WRITEBACK_BYTES`] (Linux
/// `sync_file_range`: start the writeback of the last chunk, wait for the one before).
/// Durability still comes from the fsync at the end; this only spreads the device's work.
struct WrittenBack {
    file: File,
    /// Bytes written through this writer.
    written: u64,
    /// Where the next chunk to write back starts.
    started: u64,
}

impl WrittenBack {
    fn new(file: File, at: u64) -> Self {
        WrittenBack {
            file,
            written: at,
            started: at,
        }
    }

    fn pace(&mut self) {
        while self.written - self.started >= SNAPSHOT_WRITEBACK_BYTES {
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::io::AsRawFd;
                let fd = self.file.as_raw_fd();
                let chunk = SNAPSHOT_WRITEBACK_BYTES as i64;
                let start = self.started as i64;
                // SAFETY: plain integers; the descriptor is ours and open.
                let rc = unsafe {
                    // The chunk before: wait until it is on the device.
                    if start >= chunk {
                        libc::sync_file_range(
                            fd,
                            start - chunk,
                            chunk,
                            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                                | libc::SYNC_FILE_RANGE_WRITE
                                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                        );
                    }
                    // This chunk: start its writeback.
                    libc::sync_file_range(fd, start, chunk, libc::SYNC_FILE_RANGE_WRITE)
                };
                // Best effort (ENOSYS on some file systems): the fsync at the end is what counts.
                let _ = rc;
            }
            self.started += SNAPSHOT_WRITEBACK_BYTES;
        }
    }
}

impl Write for WrittenBack {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.pace();
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Write a snapshot file at `path` (the current layout, see [`SNAPSHOT_MAGIC`]) and fsync
/// it. Returns the size of the application's data.
fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta<u64, openraft::BasicNode>,
    write_data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<u64, StoreError> {
    let meta_bytes = encode("snapshot metadata", meta)?;
    let meta_len = u32::try_from(meta_bytes.len())
        .map_err(|_| StoreError::Snapshot(format!("snapshot metadata of {} bytes", meta_bytes.len())))?;
    let mut file = File::create(path)?;
    file.write_all(SNAPSHOT_MAGIC)?;
    // The checksum is known only at the end: a placeholder now, written in place below. A
    // crash before then leaves a temporary file that is never renamed.
    file.write_all(&[0u8; CHECKSUM_LEN])?;
    let header = (SNAPSHOT_MAGIC.len() + CHECKSUM_LEN) as u64;
    let mut out = Hashing {
        inner: BufWriter::with_capacity(256 << 10, WrittenBack::new(file, header)),
        hasher: sha2::Sha256::new(),
        written: 0,
    };
    out.write_all(&meta_len.to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    let before_data = out.written;
    write_data(&mut out)?;
    let data_len = out.written - before_data;
    let sum = out.hasher.finalize();
    let mut file = out.inner.into_inner().map_err(|e| e.into_error())?.file;
    file.seek(SeekFrom::Start(SNAPSHOT_MAGIC.len() as u64))?;
    file.write_all(&sum)?;
    file.sync_all()?;
    Ok(data_len)
}

fn read_snapshot_file(dir: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let damaged = |what: String| StoreError::Corrupt(format!("snapshot file {}: {what}", path.display()));
    if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
        if rest.len() < CHECKSUM_LEN + 4 {
            return Err(damaged(format!("truncated to {} bytes", bytes.len())));
        }
        let (sum, body) = rest.split_at(CHECKSUM_LEN);
        if sha2::Sha256::digest(body).as_slice() != sum {
            return Err(damaged("checksum mismatch: the file is damaged".into()));
        }
        let (len, body) = body.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if body.len() < len {
            return Err(damaged(format!("metadata of {len} bytes past the end of the file")));
        }
        let (meta, data) = body.split_at(len);
        let meta = decode("snapshot metadata", meta).map_err(|e| damaged(format!("cannot be decoded: {e}")))?;
        return Ok(Some(StoredSnapshot {
            meta,
            data: data.to_vec(),
        }));
    }
    let body = match bytes.strip_prefix(SNAPSHOT_MAGIC_V1.as_slice()) {
        Some(rest) => {
            if rest.len() < CHECKSUM_LEN {
                return Err(damaged(format!("truncated to {} bytes", bytes.len())));
            }
            let (sum, body) = rest.split_at(CHECKSUM_LEN);
            if sha2::Sha256::digest(body).as_slice() != sum {
                return Err(damaged("checksum mismatch: the file is damaged".into()));
            }
            body
        }
        // Written before snapshots carried a checksum.
        None => bytes.as_slice(),
    };
    decode("snapshot", body)
        .map(Some)
        .map_err(|e| damaged(format!("cannot be decoded: {e}")))
}

/// Builds a snapshot from the view of the state taken when the builder was made, so that
/// applying continues while the snapshot is encoded and written.
pub struct SnapshotBuilder<C: StoreConfig, A: StateMachine<C>> {
    store: SmStore<C, A>,
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    view: Option<A::SnapshotView>,
    /// When the builder began encoding, and how long it held the state's lock.
    started: std::time::Instant,
    locked: std::time::Duration,
}

impl<C: StoreConfig, A: StateMachine<C>> RaftSnapshotBuilder<C> for SnapshotBuilder<C, A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let meta = self.meta.clone();
        let view = self
            .view
            .take()
            .ok_or_else(|| snap_err(StoreError::Snapshot("a snapshot builder was used twice".into())))?;
        let store = self.store.clone();
        let persisted = {
            let meta = meta.clone();
            in_background(move || store.persist_snapshot(&meta, |w| A::write_snapshot(&view, w)))
        }
        .await
        .map_err(|e| snap_err(StoreError::Corrupt(format!("snapshot task failed: {e}"))))?
        .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        match persisted {
            Some(bytes) => {
                let stats = SnapshotStats {
                    build: self.started.elapsed(),
                    locked: self.locked,
                    bytes: bytes as usize,
                };
                *self.store.shared.last_built.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
                tracing::info!(
                    snapshot_id = %meta.snapshot_id,
                    bytes = stats.bytes,
                    build_ms = stats.build.as_millis() as u64,
                    locked_us = stats.locked.as_micros() as u64,
                    "snapshot built"
                );
            }
            None => {
                tracing::info!(snapshot_id = %meta.snapshot_id, "snapshot built, but a newer one was installed meanwhile")
            }
        }
        // openraft 0.9 keeps only the metadata of a built snapshot (the state machine worker
        // sends `snap.meta` on); the data is in the file, where `get_current_snapshot` reads
        // it when a follower needs it. Returning it here would mean holding a second copy.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl<C: StoreConfig, A: StateMachine<C>> SmStore<C, A> {
    /// Wait until this node's log is durable through `index`. A leader's openraft may
    /// commit its own entries before they are on its disk (see `log_store`, "A leader's own
    /// appends"); they are applied, and their clients answered, only once they are. On a
    /// follower the log is durable before openraft learns of an entry, and this returns at
    /// once.
    async fn wait_durable(&self, index: u64) -> Result<(), StorageError<u64>> {
        let Some(mut rx) = self.shared.durable.clone() else {
            return Ok(());
        };
        let mut since = None;
        loop {
            let now = *rx.borrow_and_update();
            if now.failed {
                return Err(StorageIOError::write_logs(AnyError::error(
                    "the log could not be made durable; committed entries are not applied",
                ))
                .into());
            }
            if now.index.is_some_and(|i| i >= index) {
                break;
            }
            since.get_or_insert_with(std::time::Instant::now);
            if rx.changed().await.is_err() {
                return Err(StorageIOError::write_logs(AnyError::error("the log's flusher stopped")).into());
            }
        }
        if let Some(since) = since {
            self.shared.durable_waits.fetch_add(1, Ordering::Relaxed);
            self.shared.durable_wait_nanos.fetch_add(
                u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        Ok(())
    }
}

impl<C: StoreConfig, A: StateMachine<C>> RaftStateMachine<C> for SmStore<C, A>
where
    C::R: Default,
{
    type SnapshotBuilder = SnapshotBuilder<C, A>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, openraft::BasicNode>), StorageError<u64>> {
        let state = self.reader();
        let state = state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.wait_durable(last.log_id.index).await?;
        }
        let started = std::time::Instant::now();
        let shared = self.shared.clone();
        // Decoded before the write lock is taken: only the mutation itself blocks readers.
        let mut decoded = Vec::new();
        for entry in entries {
            let payload = match entry.payload {
                EntryPayload::Blank => Payload::Blank,
                EntryPayload::Normal(ref data) => Payload::Normal(A::decode(&entry.log_id, data).map_err(|e| {
                    StorageError::from(StorageIOError::apply(
                        entry.log_id,
                        AnyError::error(format!("entry {} cannot be decoded: {e}", entry.log_id)),
                    ))
                })?),
                EntryPayload::Membership(m) => Payload::Membership(m),
            };
            decoded.push((entry.log_id, payload));
        }
        let cost: usize = decoded
            .iter()
            .map(|(_, p)| match p {
                Payload::Normal(d) => A::apply_cost(d),
                _ => 1,
            })
            .sum();
        let apply_all = move || {
            let mut state = self.write_state();
            let mut responses = Vec::with_capacity(decoded.len());
            for (log_id, payload) in decoded {
                state.last_applied = Some(log_id);
                let response = match payload {
                    Payload::Blank => C::R::default(),
                    Payload::Normal(d) => state.app.apply(&log_id, d),
                    Payload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(log_id), m);
                        C::R::default()
                    }
                };
                responses.push(response);
            }
            responses
        };
        // openraft's core shares this runtime. A long apply run in place would hold its
        // worker: no AppendEntries answered, no heartbeat sent until it ends (measured under
        // full churn: 25-100 ms applies made a follower miss the leader's 30 ms RPC timeout
        // on every round, and a new leader's barrier took seconds). A large batch hands the
        // worker to another thread first; a small one is not worth the hand-off.
        let responses = if cost < APPLY_IN_PLACE_MAX_COST {
            apply_all()
        } else {
            crate::off_core(apply_all)
        };
        shared.apply_calls.fetch_add(1, Ordering::Relaxed);
        shared
            .apply_entries
            .fetch_add(responses.len() as u64, Ordering::Relaxed);
        shared.apply_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let started = std::time::Instant::now();
        let state = self.reader();
        let state = state.read();
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match state.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        let view = state.app.snapshot_view();
        let locked = started.elapsed();
        drop(state);
        SnapshotBuilder {
            store: self.clone(),
            meta,
            view: Some(view),
            started,
            locked,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        // Decode first: a snapshot the application cannot read must not replace good state.
        // Decoding a whole state takes a while: off openraft's worker.
        let app = crate::off_core(|| A::restore(&data)).map_err(|e| snap_err(StoreError::Snapshot(e)))?;
        let store = self.clone();
        let stored_meta = meta.clone();
        tokio::task::spawn_blocking(move || store.persist_snapshot(&stored_meta, |w| w.write_all(&data)))
            .await
            .map_err(|e| snap_err(StoreError::Corrupt(format!("snapshot task failed: {e}"))))?
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        let old = {
            let mut state = self.write_state();
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            std::mem::replace(&mut state.app, app)
        };
        // Freeing the replaced state is as long as building one: outside the lock, off the core.
        crate::off_core(move || drop(old));
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        let store = self.clone();
        let stored = tokio::task::spawn_blocking(move || store.load_snapshot())
            .await
            .map_err(|e| snap_err(StoreError::Corrupt(format!("snapshot task failed: {e}"))))?
            .map_err(snap_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta<u64, openraft::BasicNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("3-{index}"),
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn snapshots_are_encoded_at_background_priority_on_a_thread_of_their_own() {
        let me = std::thread::current().id();
        let mine = super::this_threads_nice();
        let (nice, thread) = super::in_background(move || (super::this_threads_nice(), std::thread::current().id()))
            .await
            .expect("result");
        assert_eq!(nice, mine.max(super::SNAPSHOT_BUILD_NICE));
        assert!(nice >= super::SNAPSHOT_BUILD_NICE);
        assert_ne!(thread, me);
        // The caller's own priority is untouched.
        assert_eq!(super::this_threads_nice(), mine);
    }

    #[test]
    fn a_streamed_snapshot_file_reads_back_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let n = write_snapshot_file(&path, &meta(7), |w| {
            // Written in pieces, as an encoder streams it.
            for chunk in data.chunks(4096) {
                w.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(n, data.len() as u64);
        let read = read_snapshot_file(dir.path()).unwrap().unwrap();
        assert_eq!(read.meta, meta(7));
        assert_eq!(read.data, data);

        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_snapshot_file(dir.path()).err().unwrap().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = read_snapshot_file(dir.path()).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn snapshot_files_of_the_previous_layout_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = StoredSnapshot {
            meta: meta(9),
            data: b"state bytes".to_vec(),
        };
        let body = encode("snapshot", &old).unwrap();
        let mut file = SNAPSHOT_MAGIC_V1.to_vec();
        file.extend_from_slice(&sha2::Sha256::digest(&body));
        file.extend_from_slice(&body);
        std::fs::write(dir.path().join(SNAPSHOT_FILE), file).unwrap();
        let read = read_snapshot_file(dir.path()).unwrap().unwrap();
        assert_eq!(read.meta, meta(9));
        assert_eq!(read.data, b"state bytes");
    }

    #[test]
    fn a_failed_write_names_the_io_error_and_leaves_no_current_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SmStore::<TestCfg, Nothing>::open(dir.path().to_path_buf(), None).unwrap();
        let err = store
            .persist_snapshot(&meta(1), |_| Err(std::io::Error::other("no space left (test)")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("no space left (test)"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "no temporary or current file is left: {left:?}");
        assert_eq!(
            store.persist_snapshot(&meta(2), |w| w.write_all(b"ok")).unwrap(),
            Some(2)
        );
        assert_eq!(
            store.persist_snapshot(&meta(1), |w| w.write_all(b"older")).unwrap(),
            None,
            "an older snapshot does not replace a newer one"
        );
        assert_eq!(read_snapshot_file(dir.path()).unwrap().unwrap().data, b"ok");
    }

    openraft::declare_raft_types!(TestCfg: D = String, R = String);

    #[derive(Default)]
    struct Nothing;

    impl StateMachine<TestCfg> for Nothing {
        type Decoded = ();
        type SnapshotView = ();
        fn decode(_: &LogId<u64>, _: &String) -> Result<(), String> {
            Ok(())
        }
        fn apply(&mut self, _: &LogId<u64>, _: ()) -> String {
            String::new()
        }
        fn snapshot_view(&self) {}
        fn write_snapshot(_: &(), _: &mut dyn Write) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(_: &[u8]) -> Result<Self, String> {
            Ok(Nothing)
        }
    }
}

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

use std::fs::File;
use std::io::Cursor;
use std::io::Write;
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
const SNAPSHOT_TMP: &str = "current.snap.tmp";

/// The first bytes of a snapshot file: then the SHA-256 of the rest, then the encoded
/// snapshot. Files written before the checksum (no magic) are still read.
const SNAPSHOT_MAGIC: &[u8; 8] = b"CRLSNAP1";
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

    /// Serialize the whole state for a snapshot.
    fn snapshot(&self) -> Vec<u8>;

    /// Rebuild a state from [`StateMachine::snapshot`] output.
    fn restore(bytes: &[u8]) -> Result<Self, String>;
}

/// The applied state: the application's plus what openraft needs to know of it.
#[derive(Default)]
pub struct Applied<A> {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, openraft::BasicNode>,
    pub app: A,
}

/// An entry's payload on its way to the state machine.
enum Payload<D> {
    Blank,
    Normal(D),
    Membership(openraft::Membership<u64, openraft::BasicNode>),
}

/// A snapshot as persisted in the `snapshot` tree.
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
}

/// How the last snapshot build went, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotStats {
    /// Encoding the state (under the state's read lock) and writing it durably.
    pub build: std::time::Duration,
    /// Of that, the time the state's read lock was held (apply waits for it).
    pub locked: std::time::Duration,
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
    /// Open the snapshots in `dir`, restoring the state from the current one if any.
    pub(crate) fn open(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)?;
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

    /// Durably store `snap` as the current snapshot unless a newer one is already stored (a
    /// slow build may finish after a newer snapshot was installed from the leader). Blocking.
    fn persist_snapshot(&self, snap: &StoredSnapshot) -> Result<bool, StoreError> {
        let mut stored_meta = self.shared.stored_meta.lock().unwrap_or_else(|p| p.into_inner());
        if stored_meta
            .as_ref()
            .is_some_and(|m| m.last_log_id > snap.meta.last_log_id)
        {
            return Ok(false);
        }
        let dir = &self.shared.dir;
        let tmp = dir.join(SNAPSHOT_TMP);
        let mut file = File::create(&tmp)?;
        let body = encode("snapshot", snap)?;
        file.write_all(SNAPSHOT_MAGIC)?;
        file.write_all(&sha2::Sha256::digest(&body))?;
        file.write_all(&body)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
        // The rename is durable only once the directory is.
        File::open(dir)?.sync_all()?;
        *stored_meta = Some(snap.meta.clone());
        Ok(true)
    }
}

fn read_snapshot_file(dir: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let damaged = |what: String| StoreError::Corrupt(format!("snapshot file {}: {what}", path.display()));
    let body = match bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
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

/// Builds a snapshot from a copy of the state taken when the builder was made, so that
/// applying continues while the snapshot is written.
pub struct SnapshotBuilder<C: StoreConfig, A: StateMachine<C>> {
    store: SmStore<C, A>,
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
    /// When the builder began encoding, and how long it held the state's lock.
    started: std::time::Instant,
    locked: std::time::Duration,
}

impl<C: StoreConfig, A: StateMachine<C>> RaftSnapshotBuilder<C> for SnapshotBuilder<C, A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: std::mem::take(&mut self.data),
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.persist_snapshot(&stored).map(|_| stored))
            .await
            .map_err(|e| snap_err(StoreError::Corrupt(format!("snapshot task failed: {e}"))))?
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        let stats = SnapshotStats {
            build: self.started.elapsed(),
            locked: self.locked,
            bytes: stored.data.len(),
        };
        *self.store.shared.last_built.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        tracing::info!(
            snapshot_id = %stored.meta.snapshot_id,
            bytes = stats.bytes,
            build_ms = stats.build.as_millis() as u64,
            locked_ms = stats.locked.as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
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
        let data = state.app.snapshot();
        SnapshotBuilder {
            store: self.clone(),
            meta,
            data,
            started,
            locked: started.elapsed(),
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
        let app = A::restore(&data).map_err(|e| snap_err(StoreError::Snapshot(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.persist_snapshot(&stored))
            .await
            .map_err(|e| snap_err(StoreError::Corrupt(format!("snapshot task failed: {e}"))))?
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        let mut state = self.write_state();
        state.app = app;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
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

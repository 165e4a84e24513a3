//! [`SmStore`]: openraft's `RaftStateMachine` around an application state machine.
//!
//! The applied state lives in memory; what makes it durable is the Raft log plus snapshots.
//! On open the state machine is restored from the last persisted snapshot and openraft
//! re-applies the committed entries after it (the log store persists the committed index).
//! This keeps apply free of I/O and fast, and bounds recovery work by the snapshot policy.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{StoreConfig, StoreError};

const KEY_SNAPSHOT: &str = "current";

/// The application state machine replicated by the store. Corral's cluster state implements
/// this; the store knows nothing else about it.
///
/// `apply` must be deterministic: the same entries applied to the same state give the same
/// state and responses on every node (no clock, no randomness, no I/O).
pub trait StateMachine<C: StoreConfig>: Default + Send + Sync + 'static {
    /// Apply the payload of one normal entry.
    fn apply(&mut self, log_id: &LogId<u64>, data: &C::D) -> C::R;

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

/// A snapshot as persisted in the `snapshot` tree.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
}

pub(crate) struct SmShared<A> {
    pub(crate) db: sled::Db,
    pub(crate) snapshots: sled::Tree,
    pub(crate) state: RwLock<Applied<A>>,
    snapshot_seq: AtomicU64,
}

/// The state-machine half of the store. Cheap to clone.
pub struct SmStore<C: StoreConfig, A: StateMachine<C>> {
    shared: Arc<SmShared<A>>,
    _c: std::marker::PhantomData<fn() -> C>,
}

impl<C: StoreConfig, A: StateMachine<C>> Clone for SmStore<C, A> {
    fn clone(&self) -> Self {
        SmStore { shared: self.shared.clone(), _c: std::marker::PhantomData }
    }
}

/// Read access to the applied state for the rest of the node (status, the allocator...).
pub struct StateReader<A> {
    shared: Arc<SmShared<A>>,
}

impl<A> Clone for StateReader<A> {
    fn clone(&self) -> Self {
        StateReader { shared: self.shared.clone() }
    }
}

impl<A> StateReader<A> {
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
    /// Open over `db`, restoring the last persisted snapshot if there is one.
    pub(crate) fn open(db: sled::Db) -> Result<Self, StoreError> {
        let snapshots = db.open_tree("snapshot")?;
        let mut applied = Applied::<A>::default();
        if let Some(bytes) = snapshots.get(KEY_SNAPSHOT)? {
            let stored: StoredSnapshot = decode("snapshot", &bytes)?;
            applied.app = A::restore(&stored.data).map_err(StoreError::Snapshot)?;
            applied.last_applied = stored.meta.last_log_id;
            applied.membership = stored.meta.last_membership;
        }
        let shared = SmShared { db, snapshots, state: RwLock::new(applied), snapshot_seq: AtomicU64::new(0) };
        Ok(SmStore { shared: Arc::new(shared), _c: std::marker::PhantomData })
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader<A> {
        StateReader { shared: self.shared.clone() }
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, Applied<A>> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        match self.shared.snapshots.get(KEY_SNAPSHOT)? {
            Some(bytes) => Ok(Some(decode("snapshot", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Persist `snap` as the current snapshot unless a newer one is already stored (a slow
    /// build may finish after a newer snapshot was installed from the leader), and flush.
    fn persist_snapshot(&self, snap: &StoredSnapshot) -> Result<bool, StoreError> {
        if let Some(current) = self.load_snapshot()? {
            if current.meta.last_log_id > snap.meta.last_log_id {
                return Ok(false);
            }
        }
        self.shared.snapshots.insert(KEY_SNAPSHOT, encode("snapshot", snap)?)?;
        // Flushed before openraft is told, because it will purge the log behind it.
        self.shared.db.flush()?;
        Ok(true)
    }
}

/// Builds a snapshot from a copy of the state taken when the builder was made, so that
/// applying continues while the snapshot is written.
pub struct SnapshotBuilder<C: StoreConfig, A: StateMachine<C>> {
    store: SmStore<C, A>,
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
}

impl<C: StoreConfig, A: StateMachine<C>> RaftSnapshotBuilder<C> for SnapshotBuilder<C, A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let stored = StoredSnapshot { meta: self.meta.clone(), data: std::mem::take(&mut self.data) };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.persist_snapshot(&stored).map(|_| stored))
            .await
            .map_err(|e| snap_err(StoreError::Corrupt(format!("snapshot task failed: {e}"))))?
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        tracing::info!(snapshot_id = %stored.meta.snapshot_id, bytes = stored.data.len(), "snapshot built");
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
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
        let mut state = self.write_state();
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => C::R::default(),
                EntryPayload::Normal(ref data) => state.app.apply(&entry.log_id, data),
                EntryPayload::Membership(ref m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    C::R::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self.reader();
        let state = state.read();
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match state.last_applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        SnapshotBuilder { store: self.clone(), meta, data: state.app.snapshot() }
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
        let stored = StoredSnapshot { meta: meta.clone(), data };
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
        let stored = self.load_snapshot().map_err(snap_err)?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

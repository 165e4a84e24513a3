//! openraft 0.9 log storage and state-machine storage on sled, generic over the application
//! state machine. Knows nothing of Corral.
//!
//! # Layout
//! - [`open`] opens (or creates) a node's data dir and checks it belongs to that node and
//!   cluster, then returns the two halves openraft wants:
//! - [`LogStore`] (`log_store`): the log, the vote and the committed index; every write
//!   into sled made, in queue order, by a dedicated flusher thread that group-commits
//!   durable appends (`flusher`); appended entries readable at once from a pending map;
//! - [`SmStore`] (`state_machine`): the applied state in memory around a [`StateMachine`]
//!   of the application, snapshots persisted in files;
//! - `codec`: the versioned encoding of everything written.
//!
//! A data dir holds a sled `Db` in `sled/` with the tree `meta` (identity, vote, committed,
//! last purged), the log's entries (index → entry) in generations of sled `Db`s under
//! `log/gen-<seq>/`, retired whole once a purge passes them (`generations`), the current
//! snapshot in `snapshots/`, and `durable.mark`, how far the log was durable (`watermark`:
//! sled silently drops what follows a damaged record, and this is how open notices). A data
//! dir written before generations (its entries in a `log` tree of `sled/`) has them moved
//! into the first generation when it is opened, and `sled/` rebuilt into a fresh database
//! (sled would keep the space the old log took).
//!
//! ```text
//!  openraft ──append──▶ LogStore ──▶ pending (readable at once)
//!                          │ job
//!                          ▼
//!                      flusher thread ── insert into the newest generation, Db::flush,
//!                                        fdatasync (one for many appends) ──▶ callback: "durable"
//!                          │               (a leader's own appends: reported when queued)
//!                          ▼
//!                      Durability (how far the log is on disk) ──▶ the apply waits for it;
//!                                        LogStore::clamp_commit caps a leader's commit index
//!  openraft ──apply───▶ SmStore ──▶ StateMachine::apply (in memory, deterministic)
//!  openraft ──snapshot─▶ SmStore ──▶ snapshots/current.snap (fsynced) ──▶ openraft purges log
//! ```

#![warn(missing_docs)]

mod codec;
mod error;
mod flusher;
mod generations;
#[cfg(test)]
mod leader_tests;
mod log_store;
mod state_machine;
mod watermark;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub use codec::FORMAT_VERSION;
pub use error::StoreError;
pub use flusher::FlushStats;
pub use log_store::{LogStore, LogSummary};
pub use openraft;
/// Run `work`, which blocks for a while (a large apply, a purge of thousands of entries),
/// without holding up the other tasks of the runtime it is called on: on a multi-thread
/// runtime the worker is handed to another thread first (`block_in_place`). openraft's core
/// shares the store's runtime, and while its worker is held it sends no heartbeat and
/// answers no AppendEntries. On any other runtime (tests) `work` just runs.
pub(crate) fn off_core<R>(work: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

pub use state_machine::{
    Applied, ApplyStats, SmStore, SnapshotBuilder, SnapshotStats, StateMachine, StateReader, APPLY_IN_PLACE_MAX_COST,
};

use crate::codec::{decode, encode};
use crate::flusher::Flusher;
use crate::log_store::LogInner;

/// The openraft type configurations this store serves: u64 node ids, basic nodes, the
/// standard entry, snapshots as in-memory byte buffers.
pub trait StoreConfig:
    openraft::RaftTypeConfig<
    NodeId = u64,
    Node = openraft::BasicNode,
    Entry = openraft::Entry<Self>,
    SnapshotData = Cursor<Vec<u8>>,
>
{
}

impl<C> StoreConfig for C where
    C: openraft::RaftTypeConfig<
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<C>,
        SnapshotData = Cursor<Vec<u8>>,
    >
{
}

/// Who a data dir belongs to. Written on first open, checked on every later one, so that a
/// master pointed at another master's data dir refuses to start instead of corrupting Raft.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// This node's id (checked against the data dir).
    pub node_id: u64,
    /// The cluster's name (checked against the data dir).
    pub cluster: String,
}

/// Tuning of the underlying sled databases.
#[derive(Debug, Clone)]
pub struct Options {
    /// sled's page cache of each log generation, in bytes. The log is kept short by
    /// snapshots, so this need not be large; sled's own default (1 GiB) would dominate a
    /// master's memory. The `meta` database gets [`META_CACHE_BYTES`].
    pub cache_capacity_bytes: u64,
    /// Encoded entry bytes per log generation: the next append after the newest holds this
    /// much starts a new one (see the module doc). The disk holds the live log plus up to
    /// about one generation; smaller means more sled databases open at once.
    pub log_generation_bytes: u64,
    /// Report a leader's own appends to openraft before they are durable, so that it
    /// replicates them while they are flushed instead of after (see [`LogStore`], "A
    /// leader's own appends"). Off by default: with it on, Raft's safety needs the node's
    /// `RaftNetwork` to pass the `leader_commit` of every AppendEntries it sends through
    /// [`LogStore::clamp_commit`].
    pub leader_appends_before_flush: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_capacity_bytes: 16 * 1024 * 1024,
            log_generation_bytes: 16 * 1024 * 1024,
            leader_appends_before_flush: false,
        }
    }
}

/// sled's page cache of the `meta` database, in bytes: it holds a handful of keys.
pub const META_CACHE_BYTES: u64 = 4 * 1024 * 1024;

const KEY_IDENTITY: &str = "identity";

/// sled's segment size. sled writes any value over about a quarter of a segment to a blob
/// file of its own that it never fsyncs; a large segment keeps every log entry in the data
/// file that the flusher fsyncs.
pub(crate) const SEGMENT_SIZE: usize = 8 << 20;

/// The largest encoded log entry the store accepts; larger appends fail. Applications batch
/// commands into entries and must keep each entry below this.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

// Entries must stay clear of sled's blob threshold (a quarter segment less a header).
const _: () = assert!(MAX_ENTRY_BYTES < SEGMENT_SIZE / 4 - 1024);

/// Open the store in `dir` for `identity`, creating it if the dir is empty.
///
/// Fails with [`StoreError::WrongNode`] or [`StoreError::WrongCluster`] if the dir was
/// written for someone else, and with [`StoreError::Corrupt`] if the stored log breaks its
/// invariants (see [`LogStore::verify`]).
pub fn open<C, A>(
    dir: &Path,
    identity: &Identity,
    options: &Options,
) -> Result<(LogStore<C>, SmStore<C, A>), StoreError>
where
    C: StoreConfig,
    A: StateMachine<C>,
{
    let sled_dir = dir.join("sled");
    let snapshot_dir = dir.join("snapshots");
    generations::recover_meta_rebuild(&sled_dir)?;
    let fresh = !sled_dir.exists();
    std::fs::create_dir_all(&snapshot_dir)?;
    let db = generations::open_db(&sled_dir, META_CACHE_BYTES)?;
    let meta = db.open_tree("meta")?;
    let (mark, durable) = watermark::Watermark::open(dir)?;
    let had_snapshot = snapshot_dir.join(state_machine::SNAPSHOT_FILE).exists();
    match meta.get(KEY_IDENTITY)? {
        Some(bytes) => {
            let found: Identity = decode("identity", &bytes)?;
            if found.node_id != identity.node_id {
                return Err(StoreError::WrongNode {
                    dir: dir.to_path_buf(),
                    expected: identity.node_id,
                    found: found.node_id,
                });
            }
            if found.cluster != identity.cluster {
                return Err(StoreError::WrongCluster {
                    dir: dir.to_path_buf(),
                    expected: identity.cluster.clone(),
                    found: found.cluster,
                });
            }
        }
        // A store that reached a snapshot or made entries durable had its identity: sled
        // dropped it with the records after a damaged one (see `watermark`).
        None if had_snapshot || durable.is_some() => {
            return Err(StoreError::Corrupt(
                "the log lost its first records (identity, vote): the sled files are damaged".into(),
            ))
        }
        None => {
            meta.insert(KEY_IDENTITY, encode("identity", identity)?)?;
        }
    }
    drop(meta);
    let open_disk = |db: sled::Db| -> Result<Arc<generations::Disk>, StoreError> {
        let data_file = std::fs::OpenOptions::new().read(true).open(sled_dir.join("db"))?;
        Ok(Arc::new(generations::Disk::open(
            dir.join("log"),
            db,
            data_file,
            options.log_generation_bytes.max(1),
            options.cache_capacity_bytes,
        )?))
    };
    let disk = open_disk(db)?;
    let migrated = disk.migrate_legacy_log()?;
    if migrated > 0 {
        tracing::info!(
            entries = migrated,
            "moved the log of a data dir written before log generations into log/"
        );
    }
    disk.flush_all()?;
    let disk = if generations::meta_file_bytes(&sled_dir) > generations::META_REBUILD_BYTES {
        // sled keeps the space the moved log took: rebuild `meta` into a fresh database.
        drop(disk);
        let freed = generations::rebuild_meta(&sled_dir)?;
        tracing::info!(freed_bytes = freed, "rebuilt the meta database");
        open_disk(generations::open_db(&sled_dir, META_CACHE_BYTES)?)?
    } else {
        disk
    };
    if fresh {
        // Make the new files' directory entries durable before anything is acknowledged.
        for d in [&sled_dir, &snapshot_dir, dir] {
            std::fs::File::open(d)?.sync_all()?;
        }
    }
    let mark = Arc::new(mark);
    // The vote, before anything is appended: whether an append is a leader's own depends on
    // it (see `log_store`).
    let mut vote: Option<openraft::Vote<u64>> = match disk.meta.get(log_store::KEY_VOTE)? {
        Some(bytes) => Some(decode(log_store::KEY_VOTE, &bytes)?),
        None => None,
    };
    if options.leader_appends_before_flush {
        if let Some(v) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(identity.node_id)) {
            // This node led term T when it stopped. openraft 0.9 would resume leading T at
            // once, appending after what its log kept; but a leader's own entries go out
            // before they are durable, so a crash may have lost entries of T that followers
            // hold, and new entries would reuse their (term, index) ids. It restarts as a
            // candidate of T instead (it did vote for itself in T; that vote stands) and must
            // win a later term to lead again.
            let downgraded = openraft::Vote::new(v.leader_id().get_term(), identity.node_id);
            disk.meta
                .insert(log_store::KEY_VOTE, encode(log_store::KEY_VOTE, &downgraded)?)?;
            disk.flush_all()?;
            tracing::info!(
                term = v.leader_id().get_term(),
                "was the leader: restarting as a candidate of its term"
            );
            vote = Some(downgraded);
        }
    }
    // Set to the log's end once it is verified; the flusher raises it from there.
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(flusher::Durability::default());
    let flusher = Flusher::start(
        disk.clone(),
        mark.clone(),
        durable_tx.clone(),
        format!("raft-flush-{}", identity.node_id),
    )?;
    let log_store = LogStore::<C>::new(Arc::new(LogInner {
        disk,
        flusher,
        mark,
        appended_bytes: Default::default(),
        pending: Default::default(),
        node_id: identity.node_id,
        leader_appends_before_flush: options.leader_appends_before_flush,
        vote: std::sync::Mutex::new(vote),
        durable: durable_rx,
    }));
    let leftovers = log_store.finish_interrupted_purge()?;
    if leftovers > 0 {
        tracing::info!(generations = leftovers, "finished an interrupted log purge");
    }
    let summary = log_store.verify()?;
    tracing::debug!(?summary, "log store opened");
    let end = summary.last_log_id.map(|l| l.index);
    if let Some(durable) = durable {
        if end.is_none_or(|end| end < durable) {
            return Err(StoreError::Corrupt(format!(
                "the log was durable up to entry {durable} but ends at {}: the sled files are damaged or truncated",
                end.map_or("nothing".to_string(), |e| e.to_string())
            )));
        }
    }
    // Everything stored is durable: `flush_all` above made it so, and nothing was appended
    // since.
    durable_tx.send_modify(|d| d.index = end);
    // Only a leader that reports its appends early commits ahead of its disk.
    let gate = options.leader_appends_before_flush.then(|| log_store.durability());
    let sm = SmStore::<C, A>::open(snapshot_dir, gate)?;
    // The log holds only what follows the snapshot: without a snapshot that reaches the
    // purge point, the state before it is gone (openraft would fail to read the entries).
    if let Some(purged) = summary.last_purged {
        match sm.snapshot_last_log_id() {
            None => {
                return Err(StoreError::Corrupt(format!(
                    "the log is purged up to {purged} but there is no snapshot: the snapshot file is missing"
                )))
            }
            Some(snap) if snap.index < purged.index => {
                return Err(StoreError::Corrupt(format!(
                    "the log is purged up to {purged} but the snapshot ends at {snap}: entries in between are lost"
                )))
            }
            Some(_) => {}
        }
    }
    // Every entry must decode now, not when openraft applies it: a bad entry found then
    // stops the node in the middle of its start.
    log_store.check_payloads::<A>()?;
    Ok((log_store, sm))
}

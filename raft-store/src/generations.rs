//! Where the log's bytes live: the log's entries in generations of sled databases, and the
//! small `meta` database beside them.
//!
//! sled 0.34 gives file space back only when the segments at the end of its file come free,
//! so a single database keeps the high-water mark of its whole history: under steady churn
//! each master's file settled at its own level, 150 to 300 MiB for the same live log. Here
//! the log is a sequence of sled databases ("generations", `log/gen-<seq>`), each a short
//! stretch of the log:
//! - appends go into the newest generation; once it holds [`Disk::generation_bytes`] of
//!   entries, the next append starts a new one (a generation found at open counts as full);
//! - a purge retires the oldest generations whose entries are all at or below the purge
//!   point: the whole database is closed and its directory deleted. Entries below the purge
//!   point in a generation that also holds later ones stay until it retires (readers never
//!   see them: see `log_store`), so a purge removes no keys one by one;
//! - a truncation removes the conflicting entries from every generation that holds them,
//!   flushing each older generation before anything is appended again: the newer entries
//!   can never be durable while the older ones they replace still are.
//!
//! So the generations hold disjoint ranges in sequence order, each generation's entries
//! lower than the next one's, and the disk holds the live log plus at most one generation.
//!
//! A generation is retired by renaming its directory to `*.retiring` (one atomic step,
//! made durable), then deleting it; an open deletes what a crash left renamed.
//!
//! Durability is per database: a write marks its database dirty, and the flusher makes
//! every dirty one durable (sled's flush, then `fdatasync` of its data file, see `flusher`)
//! before it reports anything durable. The committed index is written to `meta` without
//! marking it dirty: it rides along with the next vote or purge (it only lets a restarted
//! node re-apply sooner, and is never above what this node has durable).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::codec::{index_key, key_index};
use crate::StoreError;

const GENERATION_PREFIX: &str = "gen-";
const RETIRING_SUFFIX: &str = ".retiring";

/// Open (or create) a sled database the way the store uses them: durability is explicit,
/// so sled's periodic background fsync is off (it would only compete with ours for the disk).
pub(crate) fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(path)
        .segment_size(crate::SEGMENT_SIZE)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .open()
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One sled database of log entries.
pub(crate) struct Generation {
    pub(crate) seq: u64,
    dir: PathBuf,
    db: sled::Db,
    pub(crate) tree: sled::Tree,
    /// sled's data file, for `fdatasync`.
    file: File,
    /// Encoded entry bytes appended into it since it was opened; one found at open starts
    /// at the generation size (full).
    appended: AtomicU64,
    /// Written since its last flush.
    dirty: AtomicBool,
}

impl Generation {
    fn open(root: &Path, seq: u64, cache_bytes: u64, create: bool) -> Result<Generation, StoreError> {
        let dir = root.join(format!("{GENERATION_PREFIX}{seq:020}"));
        if !create && !dir.exists() {
            return Err(StoreError::Corrupt(format!(
                "log generation {} is missing",
                dir.display()
            )));
        }
        let db = open_db(&dir, cache_bytes)?;
        let tree = db.open_tree("log")?;
        if create {
            // Its files' directory entries durable before anything in it is acknowledged.
            db.flush()?;
            sync_dir(&dir)?;
            sync_dir(root)?;
        }
        let file = File::open(dir.join("db"))?;
        Ok(Generation {
            seq,
            dir,
            db,
            tree,
            file,
            appended: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        })
    }

    /// The highest index it holds.
    fn last_index(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.last()? {
            Some((k, _)) => Ok(Some(key_index(&k)?)),
            None => Ok(None),
        }
    }
}

/// Time spent making writes durable, for the flusher's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FlushTimes {
    /// In sled's flush (its writes and `sync_file_range`).
    pub(crate) sled: Duration,
    /// In `fdatasync`.
    pub(crate) sync: Duration,
}

/// The store's databases: `meta` and the log's generations.
pub(crate) struct Disk {
    /// Where the generations are (`<data dir>/log`).
    root: PathBuf,
    meta_db: sled::Db,
    pub(crate) meta: sled::Tree,
    meta_file: File,
    meta_dirty: AtomicBool,
    /// Oldest first; never empty.
    generations: RwLock<Vec<Arc<Generation>>>,
    /// A new generation starts once the newest holds this many bytes of entries.
    pub(crate) generation_bytes: u64,
    cache_bytes: u64,
}

impl Disk {
    /// Open the generations under `root` (creating the first one if there is none), beside
    /// the `meta` database `meta_db` whose data file is `meta_file`. Deletes what a crash
    /// left of a retirement.
    pub(crate) fn open(
        root: PathBuf,
        meta_db: sled::Db,
        meta_file: File,
        generation_bytes: u64,
        cache_bytes: u64,
    ) -> Result<Disk, StoreError> {
        let meta = meta_db.open_tree("meta")?;
        let created = !root.exists();
        std::fs::create_dir_all(&root)?;
        if created {
            if let Some(parent) = root.parent() {
                sync_dir(parent)?;
            }
        }
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(RETIRING_SUFFIX) {
                std::fs::remove_dir_all(entry.path())?;
                tracing::info!(dir = %entry.path().display(), "deleted a log generation whose retirement was interrupted");
            } else if let Some(seq) = name.strip_prefix(GENERATION_PREFIX) {
                let seq: u64 = seq
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("unexpected log generation name {name:?}")))?;
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut generations = Vec::with_capacity(seqs.len().max(1));
        for seq in seqs {
            let generation = Generation::open(&root, seq, cache_bytes, false)?;
            // How much a generation took before this open is not known without reading it
            // all: count it as full, so that the first append starts a new one and no
            // generation grows past its size across restarts.
            generation.appended.store(generation_bytes, Ordering::Relaxed);
            generations.push(Arc::new(generation));
        }
        if generations.is_empty() {
            generations.push(Arc::new(Generation::open(&root, 1, cache_bytes, true)?));
        }
        Ok(Disk {
            root,
            meta_db,
            meta,
            meta_file,
            meta_dirty: AtomicBool::new(false),
            generations: RwLock::new(generations),
            generation_bytes,
            cache_bytes,
        })
    }

    fn read_list(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Generation>>> {
        // The list is only replaced by whole-vector operations that cannot panic halfway.
        self.generations.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_list(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Generation>>> {
        self.generations.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The generations, oldest first.
    pub(crate) fn generations(&self) -> Vec<Arc<Generation>> {
        self.read_list().clone()
    }

    /// How many generations there are.
    pub(crate) fn generation_count(&self) -> usize {
        self.read_list().len()
    }

    /// Write `value` under `key` in `meta`; durable with the next flush.
    pub(crate) fn put_meta(&self, key: &'static str, value: Vec<u8>) -> Result<(), sled::Error> {
        self.meta.insert(key, value)?;
        self.meta_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Every stored entry with index in `start..=end`, by index.
    pub(crate) fn range(&self, start: u64, end: u64) -> Result<BTreeMap<u64, sled::IVec>, StoreError> {
        let mut out = BTreeMap::new();
        for generation in self.generations() {
            for item in generation.tree.range(index_key(start)..=index_key(end)) {
                let (key, value) = item?;
                out.insert(key_index(&key)?, value);
            }
        }
        Ok(out)
    }

    /// Every stored entry from index `from` on, generation by generation, oldest first,
    /// read as it is iterated (at open: the whole log is not held in memory).
    pub(crate) fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<(u64, sled::IVec), StoreError>> {
        self.generations().into_iter().flat_map(move |generation| {
            generation.tree.range(index_key(from)..).map(|item| {
                let (key, value) = item?;
                Ok((key_index(&key)?, value))
            })
        })
    }

    /// The stored entry with the highest index.
    pub(crate) fn last(&self) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        let mut best: Option<(u64, sled::IVec)> = None;
        for generation in self.generations() {
            if let Some((key, value)) = generation.tree.last()? {
                let index = key_index(&key)?;
                if best.as_ref().is_none_or(|(b, _)| index > *b) {
                    best = Some((index, value));
                }
            }
        }
        Ok(best)
    }

    /// Entries stored (including any below the purge point not yet retired).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.generations().iter().map(|g| g.tree.len()).sum()
    }

    /// Append encoded entries (flusher thread): into the newest generation, after starting a
    /// new one if the newest is full.
    pub(crate) fn append(&self, items: Vec<([u8; 8], sled::IVec)>, bytes: u64) -> Result<(), sled::Error> {
        let newest = self.newest_with_room().map_err(StoreError::into_sled)?;
        // Plain inserts, in index order, not an atomic `sled::Batch`. sled recovers a prefix
        // of what was written to it (its log is replayed up to the first message missing), so
        // a crash in the middle of an append leaves a shorter log, never a hole, and a log
        // may lose any suffix that was not yet reported durable. A batch would cost two more
        // writes of sled's own, each a device wait on its I/O pool: `pin_log` seals and writes
        // the buffer in hand, then writes the batch's manifest in a buffer of its own.
        for (key, value) in items {
            newest.tree.insert(key, value)?;
        }
        newest.appended.fetch_add(bytes, Ordering::Relaxed);
        newest.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn newest_with_room(&self) -> Result<Arc<Generation>, StoreError> {
        let newest = {
            let list = self.read_list();
            list.last()
                .cloned()
                .ok_or_else(|| StoreError::Corrupt("no log generation".into()))?
        };
        if newest.appended.load(Ordering::Relaxed) < self.generation_bytes || newest.tree.is_empty() {
            return Ok(newest);
        }
        let started = Instant::now();
        let next = Arc::new(Generation::open(&self.root, newest.seq + 1, self.cache_bytes, true)?);
        tracing::debug!(
            generation = next.seq,
            took_us = started.elapsed().as_micros() as u64,
            "started a log generation"
        );
        self.write_list().push(next.clone());
        Ok(next)
    }

    /// Remove every entry at `first` or above (flusher thread). An older generation that
    /// lost entries is made durable at once, before anything newer can be written.
    pub(crate) fn truncate(&self, first: u64) -> Result<(), sled::Error> {
        let generations = self.generations();
        let newest_seq = generations.last().map(|g| g.seq);
        for generation in generations {
            let mut batch = sled::Batch::default();
            let mut removed = 0usize;
            for key in generation.tree.range(index_key(first)..).keys() {
                batch.remove(key?);
                removed += 1;
            }
            if removed == 0 {
                continue;
            }
            generation.tree.apply_batch(batch)?;
            if Some(generation.seq) == newest_seq {
                generation.dirty.store(true, Ordering::Release);
            } else {
                generation.db.flush()?;
                generation.file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Retire the oldest generations whose entries are all at or below `purged` (flusher
    /// thread, after the purge point is durable). The newest is never retired: it takes
    /// the next append. Returns how many were retired.
    pub(crate) fn retire_through(&self, purged: u64) -> Result<usize, StoreError> {
        let mut retired = 0;
        loop {
            let oldest = {
                let list = self.read_list();
                if list.len() < 2 {
                    break;
                }
                list[0].clone()
            };
            if oldest.last_index()?.is_some_and(|last| last > purged) {
                break;
            }
            let retiring = oldest.dir.with_extension(&RETIRING_SUFFIX[1..]);
            std::fs::rename(&oldest.dir, &retiring)?;
            sync_dir(&self.root)?;
            self.write_list().retain(|g| g.seq != oldest.seq);
            // Readers holding the generation keep reading its open files; the space is
            // freed once the last of them lets go.
            drop(oldest);
            std::fs::remove_dir_all(&retiring)?;
            retired += 1;
        }
        Ok(retired)
    }

    /// Make every database written since its last flush durable, oldest generation first,
    /// then `meta`.
    pub(crate) fn flush_dirty(&self) -> Result<FlushTimes, String> {
        let mut times = FlushTimes::default();
        let mut flush = |db: &sled::Db, file: &File| -> Result<(), String> {
            let started = Instant::now();
            db.flush().map_err(|e| e.to_string())?;
            let flushed = Instant::now();
            times.sled += flushed - started;
            file.sync_data().map_err(|e| e.to_string())?;
            times.sync += flushed.elapsed();
            Ok(())
        };
        for generation in self.generations() {
            if generation.dirty.swap(false, Ordering::AcqRel) {
                flush(&generation.db, &generation.file)?;
            }
        }
        if self.meta_dirty.swap(false, Ordering::AcqRel) {
            flush(&self.meta_db, &self.meta_file)?;
        }
        Ok(times)
    }

    /// Flush everything, dirty or not (at open and in tests).
    pub(crate) fn flush_all(&self) -> Result<(), StoreError> {
        for generation in self.generations() {
            generation.db.flush()?;
            generation.file.sync_data()?;
            generation.dirty.store(false, Ordering::Release);
        }
        self.meta_db.flush()?;
        self.meta_file.sync_data()?;
        self.meta_dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// Whether the meta database still has the `log` tree of a store written before
    /// generations.
    pub(crate) fn has_legacy_log(&self) -> bool {
        self.meta_db.tree_names().iter().any(|n| n.as_ref() == b"log")
    }

    /// Move the entries of a store written before generations (a `log` tree in the meta
    /// database) into the newest generation, durably, then drop that tree. Idempotent: a
    /// crash in the middle leaves the old tree, and the next open copies it again.
    pub(crate) fn migrate_legacy_log(&self) -> Result<u64, StoreError> {
        if !self.has_legacy_log() {
            return Ok(0);
        }
        let legacy = self.meta_db.open_tree("log")?;
        let newest = self
            .generations()
            .pop()
            .ok_or_else(|| StoreError::Corrupt("no log generation".into()))?;
        let mut moved = 0u64;
        let mut batch = sled::Batch::default();
        for item in legacy.iter() {
            let (key, value) = item?;
            batch.insert(key, value);
            moved += 1;
        }
        newest.tree.apply_batch(batch)?;
        newest.db.flush()?;
        newest.file.sync_data()?;
        drop(legacy);
        self.meta_db.drop_tree("log")?;
        self.meta_db.flush()?;
        self.meta_file.sync_data()?;
        Ok(moved)
    }
}

/// A `meta` database file larger than this is rebuilt at open: it holds a handful of keys,
/// and only the log of a data dir written before generations (moved out at open) makes it
/// large; sled would keep the space for good (see the module doc).
pub(crate) const META_REBUILD_BYTES: u64 = 32 * 1024 * 1024;

/// Finish what a crash left of [`rebuild_meta`] in `sled_dir`: the new copy renamed in but
/// the old one not yet deleted, the old one renamed away but the new one not yet renamed
/// in, or a copy not yet complete.
pub(crate) fn recover_meta_rebuild(sled_dir: &Path) -> Result<(), StoreError> {
    let new = sled_dir.with_extension("new");
    let old = sled_dir.with_extension("old");
    if !sled_dir.exists() && new.exists() {
        // Crashed between the two renames: the new copy is complete (it was made durable
        // before the first rename).
        std::fs::rename(&new, sled_dir)?;
        if let Some(parent) = sled_dir.parent() {
            sync_dir(parent)?;
        }
    }
    if new.exists() {
        // A copy that never got renamed in: the current database is intact.
        std::fs::remove_dir_all(&new)?;
    }
    if old.exists() && sled_dir.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The size of the `meta` database's data file in `sled_dir`.
pub(crate) fn meta_file_bytes(sled_dir: &Path) -> u64 {
    std::fs::metadata(sled_dir.join("db")).map_or(0, |m| m.len())
}

/// Rebuild the `meta` database in `sled_dir` (closed by the caller): copy its keys into a
/// fresh database beside it, make that durable, then swap the two directories and delete
/// the old one. Returns the bytes given back.
pub(crate) fn rebuild_meta(sled_dir: &Path) -> Result<u64, StoreError> {
    let was = meta_file_bytes(sled_dir);
    let new = sled_dir.with_extension("new");
    let old = sled_dir.with_extension("old");
    {
        let db = open_db(sled_dir, crate::META_CACHE_BYTES)?;
        let fresh = open_db(&new, crate::META_CACHE_BYTES)?;
        for name in db.tree_names() {
            if name.as_ref() == b"__sled__default" {
                continue;
            }
            let from = db.open_tree(&name)?;
            let to = fresh.open_tree(&name)?;
            for item in from.iter() {
                let (key, value) = item?;
                to.insert(key, value)?;
            }
        }
        fresh.flush()?;
        File::open(new.join("db"))?.sync_all()?;
        sync_dir(&new)?;
    }
    std::fs::rename(sled_dir, &old)?;
    std::fs::rename(&new, sled_dir)?;
    if let Some(parent) = sled_dir.parent() {
        sync_dir(parent)?;
    }
    std::fs::remove_dir_all(&old)?;
    Ok(was.saturating_sub(meta_file_bytes(sled_dir)))
}

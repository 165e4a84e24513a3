//! Group commit, and the one thread that writes the log into sled.
//!
//! openraft hands every append a callback to fire once the entries are durable. An append
//! (like a vote, a truncation, a purge or the committed index) does not touch sled on the
//! caller's thread: it queues a job here, the write it needs, with its callback. One thread
//! per store takes everything queued so far, makes each write in queue order, makes them
//! durable once and fires every callback: concurrent writers share the cost of one flush.
//! Readers see an append at once through the store's pending entries (`log_store`).
//!
//! What this does and does not take off openraft's core: openraft 0.9 awaits each append's
//! callback before its next command (`append_to_log`), so a follower's core waits for the
//! disk on every append; a leader's own appends are reported at once and flushed here while
//! they travel to the followers (`log_store`, "A leader's own appends"), and the flusher
//! publishes how far the log is durable ([`Durability`]) for the apply and the commit index
//! that wait on it. What left the core in every role is sled's insert (which itself blocks
//! while sled's buffers wait for the device), a purge's work (now retiring whole
//! generations, see `generations`; it used to be ~10,000 removals after each snapshot,
//! measured to hold the core for tens of milliseconds), and the committed index's write.
//!
//! "Durable" takes two steps, because sled 0.34's `flush` alone is not enough: on Linux it
//! ends in `sync_file_range`, which neither persists the file's size when the log grew nor
//! flushes the disk's write cache, so flushed writes can still vanish on power loss (they do
//! survive a process crash). After sled has written its buffers we `fdatasync` its data file
//! through our own descriptor; fsync works on the inode, so it covers sled's writes too.
//! This is done for each database written since its last flush (`Disk::flush_dirty`): in
//! the common batch, appends and the committed index, that is the newest log generation
//! alone.
//!
//! The work runs on this dedicated OS thread, never on a tokio worker: a blocking fsync would
//! stall the runtime, and `flush_async` on several `Db`s driven from different runtimes has
//! been reported to deadlock (`corral local` runs three stores in one process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use std::time::{Duration, Instant};

use tracing::{error, trace, warn};

use crate::generations::Disk;
use crate::watermark::Watermark;
use crate::StoreError;

/// A callback fired with the outcome of the flush that made its writes durable.
pub(crate) type Durable = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// Maximum callbacks served by one flush. Bounds the latency of the first waiter behind a
/// huge queue; anything left over is served by the next flush right away.
const MAX_CALLBACKS_PER_FLUSH: usize = 4096;

/// A flush slower than this is logged: every Raft reply and vote behind it waits as long.
const SLOW_FLUSH: Duration = Duration::from_millis(50);

/// A write into sled, made on the flusher thread in queue order.
pub(crate) type Write = Box<dyn FnOnce() -> Result<(), sled::Error> + Send>;

/// One unit of queued work: a write to make (if any), a callback to fire once it (and all
/// before it) is durable (if any), and what it does to the end of the durable log (for the
/// watermark). A job without a callback is written and made durable by the next flush that
/// some later job waits for.
pub(crate) struct Job {
    pub(crate) write: Option<Write>,
    pub(crate) done: Option<Durable>,
    pub(crate) mark: Mark,
}

/// What a job does to the end of the log, for the watermark raised after each flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Nothing (a vote, the committed index, a purge).
    Keep,
    /// An append whose last entry is this index.
    Append(u64),
    /// A truncation removing this index and every later one (its write lowered the mark
    /// durably before removing anything).
    Truncate(u64),
}

/// The end of the durable log after `marks` (in queue order), starting from `end`.
fn fold_marks(mut end: Option<u64>, marks: impl IntoIterator<Item = Mark>) -> Option<u64> {
    for mark in marks {
        match mark {
            Mark::Keep => {}
            Mark::Append(i) => end = Some(end.map_or(i, |e| e.max(i))),
            Mark::Truncate(first_removed) => {
                if end.is_some_and(|e| e >= first_removed) {
                    end = first_removed.checked_sub(1);
                }
            }
        }
    }
    end
}

/// The highest index a flush of `jobs` (in queue order) makes durable, given what the
/// watermark already says.
fn durable_end(jobs: &[Job]) -> Option<u64> {
    fold_marks(None, jobs.iter().map(|j| j.mark))
}

/// How far this node's log is durable, as of the flusher's last flush: what the leader's
/// apply waits for and what it lets its followers commit (see `log_store`, "A leader's own
/// appends").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Durability {
    /// The last index of the durable log: it and every entry before it are on disk (None:
    /// no entry is).
    pub(crate) index: Option<u64>,
    /// A write or flush failed: nothing more becomes durable, and waiters must give up.
    pub(crate) failed: bool,
}

/// Where the flusher publishes [`Durability`].
pub(crate) type DurableSender = tokio::sync::watch::Sender<Durability>;

/// Where the flusher's time goes, counted since the store was opened: each durable append
/// waits for sled to write and `sync_file_range` its buffers, then for our `fdatasync`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    /// Flushes done (each covers every callback queued before it).
    pub flushes: u64,
    /// Callbacks served (appends, votes, purges, truncations waiting for durability).
    pub callbacks: u64,
    /// Time in sled's flush (its write and `sync_file_range`), in nanoseconds.
    pub sled_nanos: u64,
    /// Time in `fdatasync`, in nanoseconds.
    pub sync_nanos: u64,
    /// Time making the queued writes into sled (on the flusher thread), in nanoseconds.
    pub write_nanos: u64,
    /// Log appends made durable.
    pub appends: u64,
    /// Their total wait, from the append being written into sled to its callback (queueing
    /// behind other flushes, the flush, the hand-back), in nanoseconds.
    pub append_wait_nanos: u64,
    /// Of those appends, the leader's own, reported to openraft before they were durable
    /// (see `log_store`, "A leader's own appends").
    pub leader_appends: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    flushes: AtomicU64,
    callbacks: AtomicU64,
    sled_nanos: AtomicU64,
    sync_nanos: AtomicU64,
    write_nanos: AtomicU64,
    appends: AtomicU64,
    append_wait_nanos: AtomicU64,
    leader_appends: AtomicU64,
    /// When the batch in hand began (None: idle).
    busy_since: std::sync::Mutex<Option<Instant>>,
}

impl Counters {
    pub(crate) fn read(&self) -> FlushStats {
        FlushStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            callbacks: self.callbacks.load(Ordering::Relaxed),
            sled_nanos: self.sled_nanos.load(Ordering::Relaxed),
            sync_nanos: self.sync_nanos.load(Ordering::Relaxed),
            write_nanos: self.write_nanos.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            append_wait_nanos: self.append_wait_nanos.load(Ordering::Relaxed),
            leader_appends: self.leader_appends.load(Ordering::Relaxed),
        }
    }

    fn busy(&self, since: Option<Instant>) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }

    /// How long the thread has been on the batch in hand (writing it, flushing it,
    /// firing its callbacks); zero while it waits for work. A disk that has stopped
    /// completing flushes shows here, even where nobody waits on the flush (a leader's own
    /// appends, see `log_store`).
    pub(crate) fn outstanding(&self) -> Duration {
        let since = *self.busy_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Count one append of the leader's reported before it was durable.
    pub(crate) fn leader_append(&self) {
        self.leader_appends.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one durable append that waited `waited`.
    pub(crate) fn append_done(&self, waited: Duration) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.append_wait_nanos
            .fetch_add(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Handle to the flusher thread. Dropping it closes the queue; the thread serves what is
/// queued, then exits, and the drop waits for it.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
    pub(crate) counters: Arc<Counters>,
}

impl Flusher {
    /// Start the thread for the databases of `disk`; after each flush it raises `mark` to
    /// the highest log index the flush made durable, and publishes the durable log's end on
    /// `durable`.
    pub(crate) fn start(
        disk: Arc<Disk>,
        mark: Arc<Watermark>,
        durable: DurableSender,
        name: String,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let for_thread = counters.clone();
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || run(&disk, mark, &durable, rx, &for_thread))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// Queue `job`. Its write is made after every write queued before it, and its
    /// callback fires once that is durable. Gives the job back if the thread is gone.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Make `write` (after everything queued before it) and wait until it is durable.
    pub(crate) async fn write_durably(&self, write: Option<Write>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            write,
            done: Some(Box::new(move |res| {
                // The waiter may have given up (its task was cancelled); nothing to do then.
                let _ = tx.send(res);
            })),
            mark: Mark::Keep,
        };
        self.submit(job).map_err(|_| StoreError::FlusherStopped)?;
        rx.await
            .map_err(|_| StoreError::FlusherStopped)?
            .map_err(StoreError::Io)
    }

    /// Wait until everything queued before this call is written and durable.
    pub(crate) async fn barrier(&self) -> Result<(), StoreError> {
        self.write_durably(None).await
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("log flusher thread panicked");
            }
        }
    }
}

fn run(disk: &Disk, mark: Arc<Watermark>, published: &DurableSender, rx: mpsc::Receiver<Job>, counters: &Counters) {
    let mut batch: Vec<Job> = Vec::new();
    // What batches written without a flush did to the log's end, for the next flush.
    let mut unflushed: Vec<Mark> = Vec::new();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    // A failed write or flush is final: sled's state is unknown from there on, and a later
    // write that succeeded would leave a hole behind the failed one. Every job after it fails.
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        counters.busy(Some(Instant::now()));
        batch.push(first);
        while batch.len() < MAX_CALLBACKS_PER_FLUSH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        for job in &mut batch {
            if let Some(write) = job.write.take() {
                if failed.is_none() {
                    if let Err(e) = write() {
                        failed = Some(format!("log write failed: {e}"));
                    }
                }
            }
        }
        let written = Instant::now();
        counters
            .write_nanos
            .fetch_add(nanos(written - started), Ordering::Relaxed);
        let waiters = batch.iter().filter(|j| j.done.is_some()).count();
        if waiters == 0 {
            // Written, not yet durable: the next flush that someone waits for covers it.
            unflushed.extend(batch.iter().map(|j| j.mark));
            batch.clear();
            counters.busy(None);
            continue;
        }
        let outcome = match &failed {
            Some(e) => Err(e.clone()),
            None => {
                let flushed = disk.flush_dirty();
                if let Ok(times) = &flushed {
                    counters.sled_nanos.fetch_add(nanos(times.sled), Ordering::Relaxed);
                    counters.sync_nanos.fetch_add(nanos(times.sync), Ordering::Relaxed);
                }
                let synced = flushed.map(|_| ());
                if let Err(e) = &synced {
                    failed = Some(format!("log flush failed: {e}"));
                }
                synced
            }
        };
        let took = started.elapsed();
        counters.flushes.fetch_add(1, Ordering::Relaxed);
        counters.callbacks.fetch_add(waiters as u64, Ordering::Relaxed);
        if took >= SLOW_FLUSH {
            warn!(jobs = batch.len(), took_ms = took.as_millis() as u64, "slow log flush");
        } else {
            trace!(jobs = batch.len(), ok = outcome.is_ok(), "log flush");
        }
        if let Err(e) = &outcome {
            error!(error = %e, "log write or flush failed");
        }
        let durable = durable_end(&batch);
        let outcome = match (outcome, durable) {
            // The watermark is what lets a later open tell a lost log from a short one: an
            // append is durable only once it is recorded.
            (Ok(()), Some(index)) => mark.raise(index).map_err(|e| format!("durable watermark: {e}")),
            (outcome, _) => outcome,
        };
        let marks = unflushed.drain(..).chain(batch.iter().map(|j| j.mark));
        match &outcome {
            Ok(()) => published.send_modify(|d| d.index = fold_marks(d.index, marks)),
            Err(_) => published.send_modify(|d| d.failed = true),
        }
        for job in batch.drain(..) {
            if let Some(done) = job.done {
                // io::Error is not Clone: every waiter gets its own copy of the message.
                done(outcome.clone().map_err(std::io::Error::other));
            }
        }
        counters.busy(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(mark: Mark) -> Job {
        Job {
            write: None,
            done: None,
            mark,
        }
    }

    #[test]
    fn a_truncation_in_a_batch_caps_what_earlier_appends_made_durable() {
        use Mark::*;
        let end = |marks: &[Mark]| durable_end(&marks.iter().map(|m| job(*m)).collect::<Vec<_>>());
        assert_eq!(end(&[Keep]), None);
        assert_eq!(end(&[Append(5), Append(9), Keep]), Some(9));
        // Entries 7.. were appended, then truncated in the same batch: durable to 6.
        assert_eq!(end(&[Append(9), Truncate(7)]), Some(6));
        // Truncated, then appended again.
        assert_eq!(end(&[Append(9), Truncate(7), Append(8)]), Some(8));
        // A truncation above what the batch appended changes nothing.
        assert_eq!(end(&[Append(5), Truncate(7)]), Some(5));
        // Everything truncated.
        assert_eq!(end(&[Append(3), Truncate(0)]), None);
        assert_eq!(end(&[Truncate(4)]), None);
    }

    #[test]
    fn the_durable_end_carries_over_from_earlier_flushes() {
        use Mark::*;
        assert_eq!(fold_marks(Some(10), [Keep]), Some(10));
        assert_eq!(fold_marks(Some(10), [Append(12)]), Some(12));
        // A truncation lowers what earlier flushes made durable.
        assert_eq!(fold_marks(Some(10), [Truncate(8)]), Some(7));
        assert_eq!(fold_marks(Some(10), [Truncate(8), Append(9)]), Some(9));
        assert_eq!(fold_marks(Some(10), [Truncate(11)]), Some(10));
        assert_eq!(fold_marks(None, [Truncate(0), Append(0)]), Some(0));
    }
}

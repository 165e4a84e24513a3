//! Group commit: the one place where the store makes writes durable.
//!
//! openraft hands every append a callback to fire once the entries are durable, and may issue
//! the next append before that happens. Appends write into sled at once (so readers see them),
//! then queue their callback here; votes, truncations and purges queue a barrier the same way.
//! One thread per store waits for work, takes everything queued so far, makes it durable once
//! and fires every callback: concurrent writers share the cost of one flush.
//!
//! "Durable" takes two steps, because sled 0.34's `flush` alone is not enough: on Linux it
//! ends in `sync_file_range`, which neither persists the file's size when the log grew nor
//! flushes the disk's write cache, so flushed writes can still vanish on power loss (they do
//! survive a process crash). After sled has written its buffers we `fdatasync` its data file
//! through our own descriptor; fsync works on the inode, so it covers sled's writes too.
//!
//! The work runs on this dedicated OS thread, never on a tokio worker: a blocking fsync would
//! stall the runtime, and `flush_async` on several `Db`s driven from different runtimes has
//! been reported to deadlock (`corral local` runs three stores in one process).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use std::time::{Duration, Instant};

use tracing::{error, trace, warn};

use crate::watermark::Watermark;
use crate::StoreError;

/// A callback fired with the outcome of the flush that made its writes durable.
pub(crate) type Durable = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// Maximum callbacks served by one flush. Bounds the latency of the first waiter behind a
/// huge queue; anything left over is served by the next flush right away.
const MAX_CALLBACKS_PER_FLUSH: usize = 4096;

/// A flush slower than this is logged: every Raft reply and vote behind it waits as long.
const SLOW_FLUSH: Duration = Duration::from_millis(50);

/// What waits for a flush: its callback, and the log index it makes durable, if any (for
/// the watermark).
type Waiter = (Durable, Option<u64>);

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
}

#[derive(Default)]
pub(crate) struct Counters {
    flushes: AtomicU64,
    callbacks: AtomicU64,
    sled_nanos: AtomicU64,
    sync_nanos: AtomicU64,
}

impl Counters {
    pub(crate) fn read(&self) -> FlushStats {
        FlushStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            callbacks: self.callbacks.load(Ordering::Relaxed),
            sled_nanos: self.sled_nanos.load(Ordering::Relaxed),
            sync_nanos: self.sync_nanos.load(Ordering::Relaxed),
        }
    }
}

/// Handle to the flusher thread. Dropping it closes the queue; the thread serves what is
/// queued, then exits, and the drop waits for it.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<thread::JoinHandle<()>>,
    pub(crate) counters: Arc<Counters>,
}

impl Flusher {
    /// Start the thread for `db`, whose data file is `data_file`; after each flush it raises
    /// `mark` to the highest log index the flush made durable.
    pub(crate) fn start(db: sled::Db, data_file: File, mark: Arc<Watermark>, name: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let counters = Arc::new(Counters::default());
        let for_thread = counters.clone();
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || run(db, data_file, mark, rx, &for_thread))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// Queue `done` to fire after the next flush. Everything written to sled before this call
    /// is covered by that flush.
    pub(crate) fn after_next_flush(&self, done: Durable) -> Result<(), Durable> {
        self.after_flush_of(done, None)
    }

    /// Like [`Flusher::after_next_flush`], for an append whose last entry is `index`.
    pub(crate) fn after_flush_of(&self, done: Durable, index: Option<u64>) -> Result<(), Durable> {
        match &self.tx {
            Some(tx) => tx.send((done, index)).map_err(|e| e.0 .0),
            None => Err(done),
        }
    }

    /// Wait until everything written to sled before this call is durable.
    pub(crate) async fn barrier(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_next_flush(Box::new(move |res| {
            // The waiter may have given up (its task was cancelled); nothing to do then.
            let _ = tx.send(res);
        }))
        .map_err(|_| StoreError::FlusherStopped)?;
        rx.await
            .map_err(|_| StoreError::FlusherStopped)?
            .map_err(StoreError::Io)
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

fn run(db: sled::Db, data_file: File, mark: Arc<Watermark>, rx: mpsc::Receiver<Waiter>, counters: &Counters) {
    let mut batch: Vec<Waiter> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_CALLBACKS_PER_FLUSH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let written = db.flush().map_err(|e| e.to_string());
        let sled_done = Instant::now();
        let outcome = written.and_then(|_| data_file.sync_data().map_err(|e| e.to_string()));
        let took = started.elapsed();
        counters.flushes.fetch_add(1, Ordering::Relaxed);
        counters.callbacks.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        counters
            .sled_nanos
            .fetch_add(nanos(sled_done - started), Ordering::Relaxed);
        counters
            .sync_nanos
            .fetch_add(nanos(sled_done.elapsed()), Ordering::Relaxed);
        if took >= SLOW_FLUSH {
            warn!(
                callbacks = batch.len(),
                took_ms = took.as_millis() as u64,
                "slow log flush"
            );
        } else {
            trace!(callbacks = batch.len(), ok = outcome.is_ok(), "log flush");
        }
        if let Err(e) = &outcome {
            error!(error = %e, "log flush failed");
        }
        let durable = batch.iter().filter_map(|(_, index)| *index).max();
        let outcome = match (outcome, durable) {
            // The watermark is what lets a later open tell a lost log from a short one: an
            // append is durable only once it is recorded.
            (Ok(()), Some(index)) => mark.raise(index).map_err(|e| format!("durable watermark: {e}")),
            (outcome, _) => outcome,
        };
        for (done, _) in batch.drain(..) {
            // io::Error is not Clone: every waiter gets its own copy of the message.
            done(outcome.clone().map_err(std::io::Error::other));
        }
    }
}

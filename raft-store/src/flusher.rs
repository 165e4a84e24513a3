//! Group commit for log appends.
//!
//! openraft hands every append a callback to fire once the entries are durable, and may issue
//! the next append before that happens. Appends write into sled at once (so readers see them),
//! then queue their callback here. One thread per store waits for callbacks, takes every one
//! queued so far, runs a single `Db::flush` (write + fsync of sled's log) and fires them all:
//! concurrent appends share one fsync instead of paying one each.
//!
//! The flush runs on this dedicated OS thread, never on a tokio worker: a blocking fsync would
//! stall the runtime, and `flush_async` on several `Db`s driven from different runtimes has
//! been reported to deadlock (`corral local` runs three stores in one process).

use std::sync::mpsc;
use std::thread;

use tracing::{error, trace};

/// A callback fired with the outcome of the flush that made its entries durable.
pub(crate) type Durable = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// Maximum callbacks served by one flush. Bounds the latency of the first waiter of a huge
/// batch; anything left over is served by the next flush right away.
const MAX_CALLBACKS_PER_FLUSH: usize = 4096;

/// Handle to the flusher thread. Dropping it closes the queue; the thread serves what is
/// queued, then exits, and the drop waits for it.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Durable>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: sled::Db, name: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Durable>();
        let thread = thread::Builder::new().name(name).spawn(move || run(db, rx))?;
        Ok(Flusher { tx: Some(tx), thread: Some(thread) })
    }

    /// Queue `done` to fire after the next flush. Everything written to sled before this call
    /// is covered by that flush.
    pub(crate) fn after_next_flush(&self, done: Durable) -> Result<(), Durable> {
        match &self.tx {
            Some(tx) => tx.send(done).map_err(|e| e.0),
            None => Err(done),
        }
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

fn run(db: sled::Db, rx: mpsc::Receiver<Durable>) {
    let mut batch: Vec<Durable> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_CALLBACKS_PER_FLUSH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let outcome = db.flush().map(|_| ()).map_err(|e| e.to_string());
        trace!(callbacks = batch.len(), ok = outcome.is_ok(), "log flush");
        for done in batch.drain(..) {
            // io::Error is not Clone: every waiter gets its own copy of the message.
            done(outcome.clone().map_err(std::io::Error::other));
        }
    }
}

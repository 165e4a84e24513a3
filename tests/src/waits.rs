//! Waiting on conditions with a deadline (never a bare sleep), and stopping cleanly on
//! SIGINT or SIGTERM.

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `check` every 50 ms until it returns `Some`, or panic after `deadline` saying what
/// was awaited.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `work` until it ends or the process gets SIGINT or SIGTERM; on a signal `work` is
/// dropped, and with it the clusters it started (their masters and agents are killed on
/// drop), rather than left running as orphans.
pub async fn until_interrupted(work: impl std::future::Future<Output = ()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        work.await;
        return;
    };
    tokio::select! {
        _ = work => {}
        _ = int.recv() => eprintln!("interrupted: stopping the masters"),
        _ = term.recv() => eprintln!("terminated: stopping the masters"),
    }
}

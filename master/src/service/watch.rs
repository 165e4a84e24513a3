//! `Operator.Watch`: the changes this master applies, as a stream of events. One publisher
//! per master diffs the applied state after each change (coalesced over
//! [`WATCH_COALESCE`]) and broadcasts the events; every watcher reads the broadcast, and one
//! that falls [`WATCH_BUFFER`] events behind is ended with RESOURCE_EXHAUSTED (it watches
//! again and reads the state afresh).
//!
//! The publisher holds a view of the state only while someone watches: a view shares the
//! state's persistent trees, and while it does, apply copies each node it changes instead
//! of changing it in place (measured: holding one all the time cost about a fifth of the
//! throughput). A watcher's events start from the publisher's first view after it subscribed
//! (within [`WATCH_COALESCE`]).

use std::time::Duration;

use corral_proto::v1;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use crate::node::Shared;

/// Events a watcher may fall behind before its stream is ended.
pub const WATCH_BUFFER: usize = 16_384;
/// Changes applied within this time are read as one diff.
pub const WATCH_COALESCE: Duration = Duration::from_millis(50);

/// The broadcast every watcher subscribes to.
pub fn channel() -> broadcast::Sender<v1::WatchEvent> {
    broadcast::channel(WATCH_BUFFER).0
}

/// Publish what changes (leader, agents, frameworks, tasks) until `stop`.
pub async fn publish(shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut metrics = shared.raft.metrics();
    let mut view: Option<crate::state::changes::WatchView> = None;
    let mut leader: Option<(u64, u64)> = None;
    loop {
        // A new watcher needs a first view even if nothing is applied for a while.
        let first_view = view.is_none() && shared.watch.receiver_count() > 0;
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(WATCH_COALESCE), if first_view => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Let a burst of applies land: one diff for all of them.
        tokio::select! {
            _ = tokio::time::sleep(WATCH_COALESCE) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (term, current) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader)
        };
        let now = (current.unwrap_or(0), term);
        if leader != Some(now) {
            leader = Some(now);
            let address = shared
                .leader()
                .filter(|(id, _)| Some(*id) == current)
                .map(|(_, a)| a)
                .unwrap_or_default();
            let _ = shared.watch.send(v1::WatchEvent {
                index: 0,
                event: Some(v1::watch_event::Event::Leader(v1::LeaderChanged {
                    leader_id: now.0,
                    address,
                    term,
                })),
            });
        }
        if shared.watch.receiver_count() == 0 {
            // Nobody watches: hold no view (see the module's docs).
            view = None;
            continue;
        }
        let new = {
            let s = shared.state.read();
            let index = s.last_applied.map_or(0, |l| l.index);
            if view.as_ref().is_some_and(|v| v.index == index) {
                continue;
            }
            s.app.watch_view(index)
        };
        if let Some(old) = &view {
            for event in crate::state::changes::changes(old, &new) {
                let _ = shared.watch.send(event);
            }
        }
        view = Some(new);
    }
}

/// One watcher's stream: the broadcast, ended with RESOURCE_EXHAUSTED if it falls behind.
pub fn stream(shared: &Shared) -> impl tokio_stream::Stream<Item = Result<v1::WatchEvent, Status>> + Send + 'static {
    let mut rx = shared.watch.subscribe();
    // Start with who leads, so a watcher need not wait for the next change to know.
    let (id, term) = {
        let m = shared.raft.metrics();
        let m = m.borrow();
        (m.current_leader.unwrap_or(0), m.current_term)
    };
    let address = shared.leader().map(|(_, a)| a).unwrap_or_default();
    let first = v1::WatchEvent {
        index: 0,
        event: Some(v1::watch_event::Event::Leader(v1::LeaderChanged {
            leader_id: id,
            address,
            term,
        })),
    };
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let item = tokio::select! {
                // The watcher went away: let go of the broadcast now, not at the next event.
                _ = tx.closed() => return,
                item = rx.recv() => item,
            };
            let item = match item {
                Ok(e) => Ok(e),
                Err(broadcast::error::RecvError::Lagged(n)) => Err(Status::resource_exhausted(format!(
                    "this watcher fell {n} events behind (at most {WATCH_BUFFER}); watch again"
                ))),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(out)
}

//! `Operator.Watch`: the changes this master applies, as a stream of events. One publisher
//! per master diffs the applied state after each change (coalesced over
//! [`WATCH_COALESCE`]) and broadcasts the events; every watcher reads the broadcast, and one
//! that falls [`WATCH_BUFFER`] events behind is ended with RESOURCE_EXHAUSTED (it watches
//! again and reads the state afresh).
//!
//! The publisher holds a view of the state only while someone watches: a view shares the
//! state's persistent trees, and while it does, apply copies each node it changes instead
//! of changing it in place (measured: holding one all the time cost about a fifth of the
//! throughput). So a watcher joins through the publisher ([`Hub::join`]): the publisher
//! takes a view if it holds none and subscribes the watcher at that moment, and the watcher
//! gets every change applied after it.

use std::time::Duration;

use corral_proto::v1;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use crate::node::Shared;

/// Events a watcher may fall behind before its stream is ended.
pub const WATCH_BUFFER: usize = 16_384;
/// Changes applied within this time are read as one diff.
pub const WATCH_COALESCE: Duration = Duration::from_millis(50);

/// A watcher asking to join: where its subscription goes.
type Join = tokio::sync::oneshot::Sender<broadcast::Receiver<v1::WatchEvent>>;

/// Where watchers join, and the broadcast the publisher sends on. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    events: broadcast::Sender<v1::WatchEvent>,
    joins: tokio::sync::mpsc::Sender<Join>,
}

/// The publisher's end of a [`Hub`].
pub struct Joins(tokio::sync::mpsc::Receiver<Join>);

/// A hub and the end the publisher reads joins from.
pub fn hub() -> (Hub, Joins) {
    let (joins, rx) = tokio::sync::mpsc::channel(64);
    let hub = Hub {
        events: broadcast::channel(WATCH_BUFFER).0,
        joins,
    };
    (hub, Joins(rx))
}

impl Hub {
    /// Subscribe to every change applied from now on (None once the publisher is gone).
    pub async fn join(&self) -> Option<broadcast::Receiver<v1::WatchEvent>> {
        let (reply, subscribed) = tokio::sync::oneshot::channel();
        self.joins.send(reply).await.ok()?;
        subscribed.await.ok()
    }
}

/// Publish what changes (leader, agents, frameworks, tasks) until `stop`.
pub async fn publish(shared: Shared, Joins(mut joins): Joins, mut stop: watch::Receiver<bool>) {
    // Who leads is in the server metrics, which change only with it (or the vote, role or
    // membership); applies move the data metrics, followed only while someone watches
    // (`view` is held exactly then). The full metrics are sent after every turn of the
    // Raft core, several times per write, whether anything changed or not.
    let mut server = shared.raft.server_metrics();
    let mut data = shared.raft.data_metrics();
    let mut view: Option<crate::state::changes::WatchView> = None;
    let mut leader: Option<(u64, u64)> = None;
    let events = shared.watch.events.clone();
    loop {
        tokio::select! {
            changed = server.changed() => if changed.is_err() { return },
            changed = data.changed(), if view.is_some() => if changed.is_err() { return },
            join = joins.recv() => {
                let Some(reply) = join else { return };
                // Subscribed at the view the next diff starts from: nothing applied after
                // it is missed.
                if view.is_none() {
                    let s = shared.state.read();
                    view = Some(s.app.watch_view(s.last_applied.map_or(0, |l| l.index)));
                }
                let _ = reply.send(events.subscribe());
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        // Let a burst of applies land: one diff for all of them.
        tokio::select! {
            _ = tokio::time::sleep(WATCH_COALESCE) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        data.mark_unchanged();
        let (term, current) = {
            let m = server.borrow_and_update();
            (m.vote.leader_id().get_term(), m.current_leader)
        };
        let now = (current.unwrap_or(0), term);
        if leader != Some(now) {
            leader = Some(now);
            let address = shared
                .leader()
                .filter(|(id, _)| Some(*id) == current)
                .map(|(_, a)| a)
                .unwrap_or_default();
            let _ = events.send(v1::WatchEvent {
                index: 0,
                event: Some(v1::watch_event::Event::Leader(v1::LeaderChanged {
                    leader_id: now.0,
                    address,
                    term,
                })),
            });
        }
        if events.receiver_count() == 0 {
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
                let _ = events.send(event);
            }
        }
        view = Some(new);
    }
}

/// One watcher's stream: the broadcast, ended with RESOURCE_EXHAUSTED if it falls behind.
pub async fn stream(
    shared: &Shared,
) -> Result<impl tokio_stream::Stream<Item = Result<v1::WatchEvent, Status>> + Send + 'static, Status> {
    let mut rx = shared
        .watch
        .join()
        .await
        .ok_or_else(|| Status::unavailable("this master is shutting down"))?;
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
    Ok(tokio_stream::wrappers::ReceiverStream::new(out))
}

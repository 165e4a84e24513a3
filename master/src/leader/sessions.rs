//! The streams of connected agents and frameworks: their sessions and channels.

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_proto::resources::Resources;
use corral_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::*;

/// Capacity of each agent's outbound stream. An agent that lets this many messages pile up
/// is disconnected (it re-registers and is reconciled).
pub const STREAM_CAPACITY: usize = 4096;

/// Capacity of each framework's outbound stream: larger, because one framework hears about
/// every task it runs, and thousands of agents can report at once after a failover. A
/// framework that lets this many events pile up is disconnected (it re-subscribes and
/// reconciles).
pub const FRAMEWORK_STREAM_CAPACITY: usize = 65_536;

/// How often frameworks get a HEARTBEAT event.
pub const FRAMEWORK_HEARTBEAT: Duration = Duration::from_secs(10);

/// How often the leader pings agents.
pub const AGENT_PING_INTERVAL: Duration = Duration::from_secs(5);

/// The stream of messages to one agent.
pub type AgentTx = mpsc::Sender<Result<v1::MasterMessage, Status>>;

/// The stream of events to one framework.
pub type FrameworkTx = mpsc::Sender<Result<v1::Event, Status>>;

/// An agent attached to this leader.
pub struct AgentSession {
    /// This leader's number for the attachment (a newer one replaces an older).
    pub session: u64,
    /// Where its messages go.
    pub tx: AgentTx,
    /// The agent's resources as it registered them (its part of the cluster total).
    pub resources: Resources,
}

/// A framework subscribed to this leader.
pub struct FrameworkSession {
    /// The subscription's id; every call must carry it.
    pub stream_id: String,
    /// Live events: offers, rescinds, new updates, heartbeats. Never waits: a framework
    /// that lets [`FRAMEWORK_STREAM_CAPACITY`] of them pile up is dropped.
    pub tx: FrameworkTx,
    /// Unacknowledged updates sent again, at the pace the framework reads them (see
    /// [`FrameworkEvents`]); however many there are, they cannot overflow the live channel.
    pub(super) resend_tx: mpsc::Sender<v1::Event>,
    /// Set while a resend to this session runs, so that there is one at a time.
    pub(super) resending: Arc<AtomicBool>,
}

impl FrameworkSession {
    /// A session, the stream the framework reads, and what tells that the framework went
    /// away (the stream was dropped).
    pub fn new(stream_id: String) -> (FrameworkSession, FrameworkEvents, oneshot::Receiver<()>) {
        let (tx, live) = mpsc::channel(FRAMEWORK_STREAM_CAPACITY);
        let (resend_tx, resent) = mpsc::channel(RESEND_CAPACITY);
        let (gone_tx, gone) = oneshot::channel();
        let session = FrameworkSession {
            stream_id,
            tx,
            resend_tx,
            resending: Arc::default(),
        };
        let events = FrameworkEvents {
            live,
            resent,
            _gone: gone_tx,
        };
        (session, events, gone)
    }
}

/// The event stream of one subscription: live events first, and resent updates when no
/// live event is waiting. It ends when the live channel closes: the session was replaced
/// or dropped, or this master stopped leading (dropping [`Soft`] drops every session).
pub struct FrameworkEvents {
    pub(super) live: mpsc::Receiver<Result<v1::Event, Status>>,
    pub(super) resent: mpsc::Receiver<v1::Event>,
    /// Dropped with the stream: tells the session's watcher the framework is gone.
    pub(super) _gone: oneshot::Sender<()>,
}

impl tokio_stream::Stream for FrameworkEvents {
    type Item = Result<v1::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.live.poll_recv(cx) {
            Poll::Ready(next) => return Poll::Ready(next),
            Poll::Pending => {}
        }
        match self.resent.poll_recv(cx) {
            Poll::Ready(Some(ev)) => Poll::Ready(Some(Ok(ev))),
            // No resend running (or none left): the live channel's waker is registered.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

//! Delivery: event builders, status forwarding and resends, STAGING launch resends.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_proto::v1;
use tokio::sync::mpsc;

use crate::node::Shared;
use crate::state::ClusterState;

use super::*;

/// How often unacknowledged status updates are sent to frameworks again.
pub const STATUS_RESEND_INTERVAL: Duration = Duration::from_secs(10);

/// A task still STAGING this long after its launch was committed is sent to its agent
/// again (launches are idempotent by task id on the agent), and then at this interval.
/// This delivers a committed launch whatever happened to its first RunTask: the Accept
/// that committed it timed out (the entry committed later), the agent's stream was full
/// or broke, the leader changed in between.
pub const STAGING_RESEND_AFTER: Duration = Duration::from_secs(5);

/// Capacity of a session's channel of resent updates. The resender waits for room, so
/// this only bounds how far it runs ahead of the framework.
pub const RESEND_CAPACITY: usize = 256;

/// Tasks looked at per read of the state while resending: bounds how long apply waits.
pub(super) const RESEND_SCAN: usize = 1024;

/// An event wrapping `e`.
pub fn event(e: v1::event::Event) -> v1::Event {
    v1::Event { event: Some(e) }
}

/// Send again the launches committed at least [`STAGING_RESEND_AFTER`] ago whose agent has
/// reported nothing on them, if the agent is connected.
pub(super) fn resend_stale_launches(state: &ClusterState, soft: &mut Soft, now_ms: i64) {
    let before = now_ms - STAGING_RESEND_AFTER.as_millis() as i64;
    let stale: Vec<(String, v1::RunTask)> = state
        .staging
        .iter()
        .filter_map(|key| state.tasks.get(key))
        .filter(|t| t.launched_at_ms <= before && soft.agents.contains_key(&t.agent_id))
        .filter_map(|t| {
            let run = v1::RunTask {
                framework_id: t.framework_id.clone(),
                task: Some(t.task_info()?),
                framework: state.frameworks.get(&t.framework_id).map(|f| f.wire_info()),
            };
            Some((t.agent_id.clone(), run))
        })
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            launches = stale.len(),
            "sending launches still STAGING to their agents again"
        );
    }
    for (agent_id, run) in stale {
        soft.send_agent(&agent_id, v1::master_message::Message::RunTask(run));
    }
}

/// Send the frameworks the latest unacknowledged update of each task on `agent_id` (through
/// `leader`'s loop; nothing if its term has ended).
pub async fn forward_task_updates(leader: &Leader, agent_id: &str) {
    let agent_id = agent_id.to_string();
    let _ = leader
        .tell(move |shared, soft| {
            let state = shared.state.read();
            for t in state.app.tasks_on(&agent_id) {
                if let Some(u) = t.unacked.last() {
                    soft.send_framework(
                        &t.framework_id,
                        event(v1::event::Event::Update(v1::Update {
                            status: Some(t.wire_status(u)),
                        })),
                    );
                }
            }
        })
        .await;
}

/// Send every unacknowledged update of `framework_id` again, through `session`'s resend
/// channel, unless a resend to it is already running. The updates go out as the framework
/// reads them, so a framework that comes back to a hundred thousand unacknowledged updates
/// gets them all without its stream overflowing.
pub fn start_resend(shared: &Shared, framework_id: &str, session: &FrameworkSession) {
    if session.resending.swap(true, Ordering::AcqRel) {
        return;
    }
    let job = resend(
        shared.clone(),
        framework_id.to_string(),
        session.resend_tx.clone(),
        session.resending.clone(),
    );
    tokio::spawn(job);
}

pub(super) async fn resend(
    shared: Shared,
    framework_id: String,
    tx: mpsc::Sender<v1::Event>,
    running: Arc<AtomicBool>,
) {
    /// Clears the flag however the resend ends.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _done = Done(running);
    let mut after: Option<(String, String)> = None;
    loop {
        // A bounded slice of the framework's tasks per read of the state.
        let (events, last) = {
            let state = shared.state.read();
            let from = match after.take() {
                Some(key) => Bound::Excluded(key),
                None => Bound::Included((framework_id.clone(), String::new())),
            };
            let mut events = Vec::new();
            let mut last = None;
            for (key, t) in state
                .app
                .tasks
                .range((from, Bound::Unbounded))
                .take_while(|((f, _), _)| *f == framework_id)
                .take(RESEND_SCAN)
            {
                events.extend(t.unacked.iter().map(|u| {
                    event(v1::event::Event::Update(v1::Update {
                        status: Some(t.wire_status(u)),
                    }))
                }));
                last = Some(key.clone());
            }
            (events, last)
        };
        let Some(last) = last else { return };
        for ev in events {
            if tx.send(ev).await.is_err() {
                return; // the subscription ended
            }
        }
        after = Some(last);
    }
}

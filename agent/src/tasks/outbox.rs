//! A task's outbox: its status updates waiting for the master's acknowledgement, sent one at
//! a time and in order (the next goes once the previous is acknowledged), each only once
//! the checkpoint that records it is durable, and sent again every
//! [`super::RESEND_INTERVAL`] until acknowledged (at-least-once). Pure: no I/O, no clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use corral_proto::v1;

/// The updates of one task not yet acknowledged, oldest first.
#[derive(Default)]
pub(super) struct Outbox {
    /// Each update with the checkpoint version that first records it.
    queue: VecDeque<(u64, v1::TaskStatus)>,
    /// When the head was last sent (None: due now).
    last_sent: Option<Instant>,
}

impl Outbox {
    /// Updates read back from a checkpoint: durable already (version 0).
    pub(super) fn recovered(statuses: impl IntoIterator<Item = v1::TaskStatus>) -> Outbox {
        Outbox {
            queue: statuses.into_iter().map(|s| (0, s)).collect(),
            last_sent: None,
        }
    }

    /// Queue `status`, first recorded by checkpoint version `version`.
    pub(super) fn push(&mut self, version: u64, status: v1::TaskStatus) {
        self.queue.push_back((version, status));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Every queued update, oldest first (what a checkpoint records).
    pub(super) fn statuses(&self) -> impl Iterator<Item = &v1::TaskStatus> {
        self.queue.iter().map(|(_, s)| s)
    }

    /// Send the head again as soon as it is due (a new connection to the leader).
    pub(super) fn reset(&mut self) {
        self.last_sent = None;
    }

    /// The head, if it should be sent at `now`: checkpointed (its version at most
    /// `durable`), and never sent or last sent `resend` ago or more.
    pub(super) fn due(&self, now: Instant, durable: u64, resend: Duration) -> Option<&v1::TaskStatus> {
        let (version, head) = self.queue.front()?;
        if *version > durable
            || self
                .last_sent
                .is_some_and(|s| now.saturating_duration_since(s) < resend)
        {
            return None;
        }
        Some(head)
    }

    /// The head was handed to the connection at `now`.
    pub(super) fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// The master acknowledged `uuid`: true when it was the head, which is dropped (the next
    /// is due at once). An acknowledgement of anything else (a duplicate) changes nothing.
    pub(super) fn acknowledged(&mut self, uuid: &[u8]) -> bool {
        if self.queue.front().is_some_and(|(_, h)| h.uuid == uuid) {
            self.queue.pop_front();
            self.last_sent = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uuid: u8) -> v1::TaskStatus {
        v1::TaskStatus {
            uuid: vec![uuid],
            ..Default::default()
        }
    }

    const RESEND: Duration = Duration::from_secs(2);

    #[test]
    fn an_update_goes_out_only_once_its_checkpoint_is_durable() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        out.push(3, status(1));
        assert!(out.due(t0, 2, RESEND).is_none(), "checkpoint version 3 not yet written");
        assert_eq!(out.due(t0, 3, RESEND).map(|s| s.uuid.clone()), Some(vec![1]));
    }

    #[test]
    fn updates_go_one_at_a_time_in_order_and_are_resent_until_acknowledged() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        out.push(1, status(1));
        out.push(2, status(2));
        assert_eq!(out.due(t0, 2, RESEND).unwrap().uuid, [1]);
        out.sent(t0);
        // Not again before the resend interval, and never the second before the first.
        assert!(out.due(t0 + Duration::from_secs(1), 2, RESEND).is_none());
        assert_eq!(out.due(t0 + RESEND, 2, RESEND).unwrap().uuid, [1]);
        // A duplicate acknowledgement of something else changes nothing.
        assert!(!out.acknowledged(&[2]));
        assert!(out.acknowledged(&[1]));
        // The next is due at once.
        assert_eq!(out.due(t0 + Duration::from_millis(1), 2, RESEND).unwrap().uuid, [2]);
        assert!(out.acknowledged(&[2]));
        assert!(out.is_empty());
    }

    #[test]
    fn recovered_updates_are_durable_and_due_at_once() {
        let out = Outbox::recovered([status(7), status(8)]);
        let t0 = Instant::now();
        assert_eq!(out.due(t0, 0, RESEND).unwrap().uuid, [7]);
        assert_eq!(out.statuses().count(), 2);
    }
}

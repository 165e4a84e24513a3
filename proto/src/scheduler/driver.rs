//! The [`Driver`]: the handle every scheduler callback acts with. Calls are queued on a
//! bounded channel and sent in order by the run loop ([`super::run`]).

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::v1;

/// Most calls a driver holds before the run loop sends them. Callbacks run on the run
/// loop, which sends queued calls between events, so the queue only fills when one callback
/// queues this many calls (decline many offers in one call instead). A call that does not
/// fit is dropped and reported through [`super::Scheduler::error`] (an Accept through
/// [`super::Scheduler::accept_failed`]) once the callback returns.
pub const DRIVER_QUEUE: usize = 4096;

/// A queued call.
pub(super) enum Call {
    Accept {
        offer_ids: Vec<String>,
        tasks: Vec<v1::TaskInfo>,
        refuse_seconds: Option<f64>,
    },
    Decline {
        offer_ids: Vec<String>,
        refuse_seconds: Option<f64>,
    },
    Kill {
        task_id: String,
        agent_id: String,
    },
    Reconcile(Vec<v1::ReconcileTask>),
    Message {
        agent_id: String,
        executor_id: String,
        data: Vec<u8>,
    },
    ShutdownExecutor {
        agent_id: String,
        executor_id: String,
    },
    Revive,
    Suppress,
    Stop {
        teardown: bool,
    },
}

/// Calls that did not fit in the queue, kept for the report after the callback.
#[derive(Default)]
pub(super) struct Overflow {
    /// How many calls were dropped.
    pub calls: usize,
    /// The tasks of dropped Accepts (handed to `accept_failed`).
    pub tasks: Vec<v1::TaskInfo>,
}

/// The handle a scheduler acts with. Calls are queued and sent in order.
#[derive(Clone)]
pub struct Driver {
    tx: mpsc::Sender<Call>,
    overflow: Arc<Mutex<Overflow>>,
}

impl Driver {
    /// A driver and the receiving end its run loop drains.
    pub(super) fn new() -> (Driver, mpsc::Receiver<Call>) {
        let (tx, rx) = mpsc::channel(DRIVER_QUEUE);
        let driver = Driver {
            tx,
            overflow: Arc::default(),
        };
        (driver, rx)
    }

    fn send(&self, call: Call) {
        match self.tx.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(call)) => {
                let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
                overflow.calls += 1;
                if let Call::Accept { tasks, .. } = call {
                    overflow.tasks.extend(tasks);
                }
            }
            // The run loop owns the receiver for as long as callbacks can be called.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// What overflowed since the last call, taken (empty when nothing did).
    pub(super) fn take_overflow(&self) -> Overflow {
        std::mem::take(&mut *self.overflow.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Launch `tasks` on `offer_ids` (all of one agent); unused resources are filtered for
    /// `refuse_seconds` (the master's default, 5 s, when None).
    pub fn accept(&self, offer_ids: Vec<String>, tasks: Vec<v1::TaskInfo>, refuse_seconds: Option<f64>) {
        self.send(Call::Accept {
            offer_ids,
            tasks,
            refuse_seconds,
        });
    }

    /// Decline `offer_ids`; their resources are filtered for `refuse_seconds` (the
    /// master's default when None).
    pub fn decline(&self, offer_ids: Vec<String>, refuse_seconds: Option<f64>) {
        self.send(Call::Decline {
            offer_ids,
            refuse_seconds,
        });
    }

    /// Kill task `task_id` running on `agent_id`.
    pub fn kill(&self, task_id: &str, agent_id: &str) {
        self.send(Call::Kill {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
        });
    }

    /// Explicit reconciliation of `tasks`, or implicit (all tasks) when empty.
    pub fn reconcile(&self, tasks: Vec<v1::ReconcileTask>) {
        self.send(Call::Reconcile(tasks));
    }

    /// Send `data` to executor `executor_id` on `agent_id` (best effort, as in Mesos).
    pub fn message(&self, agent_id: &str, executor_id: &str, data: Vec<u8>) {
        self.send(Call::Message {
            agent_id: agent_id.into(),
            executor_id: executor_id.into(),
            data,
        });
    }

    /// Shut executor `executor_id` on `agent_id` down (its unfinished tasks fail).
    pub fn shutdown_executor(&self, agent_id: &str, executor_id: &str) {
        self.send(Call::ShutdownExecutor {
            agent_id: agent_id.into(),
            executor_id: executor_id.into(),
        });
    }

    /// Clear this framework's offer filters and resume offers.
    pub fn revive(&self) {
        self.send(Call::Revive);
    }

    /// Stop offers to this framework until it revives.
    pub fn suppress(&self) {
        self.send(Call::Suppress);
    }

    /// End the run loop; with `teardown`, unregister the framework and kill its tasks.
    pub fn stop(&self, teardown: bool) {
        self.send(Call::Stop { teardown });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn calls_beyond_the_queue_are_counted_and_an_overflowed_accept_keeps_its_tasks() {
        let (driver, mut rx) = Driver::new();
        for _ in 0..DRIVER_QUEUE {
            driver.revive();
        }
        assert_eq!(driver.take_overflow().calls, 0);
        driver.decline(vec!["o1".into()], None);
        driver.accept(vec!["o2".into()], vec![task("t1"), task("t2")], None);
        let overflow = driver.take_overflow();
        assert_eq!(overflow.calls, 2);
        let ids: Vec<_> = overflow.tasks.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(ids, ["t1", "t2"]);
        // Taken: the next report starts empty.
        assert_eq!(driver.take_overflow().calls, 0);
        // Room again once the run loop drains one.
        assert!(matches!(rx.try_recv(), Ok(Call::Revive)));
        driver.suppress();
        assert_eq!(driver.take_overflow().calls, 0);
    }
}

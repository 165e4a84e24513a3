//! The framework SDK: a [`Scheduler`] trait and a driver, like the Mesos scheduler driver.
//!
//! [`run`] subscribes the framework to the leader (following redirects), calls the
//! scheduler's callbacks as events arrive, acknowledges every status update after its
//! callback returns (off the event loop, many per call when they queue up), and when the
//! stream breaks (leader failover) re-subscribes with the same framework id: that is a
//! failover of the framework, and its tasks are kept. The [`Driver`] handed to every
//! callback queues calls (accept, decline, kill, ...); they are sent in order by the run
//! loop, and failures come back through [`Scheduler::error`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::client::Masters;
use crate::v1;
use crate::v1::scheduler_client::SchedulerClient;

/// How long to keep looking for a leader before reporting it and trying again.
const FIND_LEADER: Duration = Duration::from_secs(10);
/// Missing this many heartbeat intervals means the stream is dead.
const HEARTBEATS_MISSED: u32 = 3;
/// Most acknowledgements sent in one call (the master takes up to 1,024).
pub const ACKS_PER_CALL: usize = 256;

/// What a framework does with events. Every method gets the [`Driver`] to act with.
pub trait Scheduler: Send {
    /// Subscribed for the first time; `framework_id` is the framework's id for life.
    fn registered(&mut self, _driver: &Driver, _framework_id: &str, _master: &v1::MasterInfo) {}
    /// Subscribed again after a leader failover or a lost stream.
    fn reregistered(&mut self, _driver: &Driver, _master: &v1::MasterInfo) {}
    fn offers(&mut self, driver: &Driver, offers: Vec<v1::Offer>);
    fn rescinded(&mut self, _driver: &Driver, _offer_id: &str) {}
    /// A status update; it is acknowledged after this returns.
    fn status_update(&mut self, driver: &Driver, status: &v1::TaskStatus);
    /// A call failed, or the master reported an error.
    fn error(&mut self, _driver: &Driver, _message: &str) {}
    /// An Accept failed: the leader did not confirm the launch of `tasks`. Across a leader
    /// failover such a launch may still have been committed (and will run), or not: a
    /// framework finds out with an explicit reconciliation of the tasks (the master answers
    /// TASK_UNKNOWN for a task it never launched). By default reported as an error.
    fn accept_failed(&mut self, driver: &Driver, _tasks: &[v1::TaskInfo], message: &str) {
        self.error(driver, message)
    }
    /// The stream to the leader broke; the driver is re-subscribing.
    fn disconnected(&mut self, _driver: &Driver) {}
}

enum Call {
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
    Revive,
    Suppress,
    Stop {
        teardown: bool,
    },
}

/// The handle a scheduler acts with. Calls are queued and sent in order.
#[derive(Clone)]
pub struct Driver {
    tx: mpsc::UnboundedSender<Call>,
}

impl Driver {
    fn send(&self, call: Call) {
        // The run loop owns the receiver for as long as callbacks can be called.
        let _ = self.tx.send(call);
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

    pub fn decline(&self, offer_ids: Vec<String>, refuse_seconds: Option<f64>) {
        self.send(Call::Decline {
            offer_ids,
            refuse_seconds,
        });
    }

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

    pub fn revive(&self) {
        self.send(Call::Revive);
    }

    pub fn suppress(&self) {
        self.send(Call::Suppress);
    }

    /// End the run loop; with `teardown`, unregister the framework and kill its tasks.
    pub fn stop(&self, teardown: bool) {
        self.send(Call::Stop { teardown });
    }
}

/// Why [`run`] ended without being stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the master refused the framework: {0}")]
    Refused(String),
    #[error("the framework was removed: {0}")]
    Removed(String),
}

/// Run `scheduler` for the framework `info` until [`Driver::stop`]; returns the scheduler.
pub async fn run<S: Scheduler>(
    masters: Vec<String>,
    mut info: v1::FrameworkInfo,
    mut scheduler: S,
) -> Result<S, DriverError> {
    let client = Arc::new(Masters::new(masters, Duration::from_secs(10)));
    let (tx, mut calls) = mpsc::unbounded_channel();
    let driver = Driver { tx };
    let mut subscribed_once = false;
    loop {
        let request = v1::SubscribeRequest {
            framework: Some(info.clone()),
            suppressed: false,
        };
        let opened = client
            .on_leader(FIND_LEADER, |ch| {
                let request = request.clone();
                async move { crate::limit_client!(SchedulerClient::new(ch)).subscribe(request).await }
            })
            .await;
        let mut events = match opened {
            Ok(r) => r.into_inner(),
            Err(s)
                if matches!(
                    s.code(),
                    Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
                ) =>
            {
                scheduler.error(&driver, s.message());
                return Err(DriverError::Refused(s.message().to_string()));
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "no leader accepted the subscription; retrying");
                continue;
            }
        };
        let mut header = v1::CallHeader::default();
        // Acknowledgements of this subscription; dropped with it (updates left
        // unacknowledged are resent to the next one).
        let mut acks: Option<Acker> = None;
        let mut silence = Duration::from_secs(30);
        let ended = loop {
            tokio::select! {
                ev = tokio::time::timeout(silence, events.next()) => {
                    let ev = match ev {
                        Err(_) => break "no heartbeat from the leader".to_string(),
                        Ok(None) => break "stream closed".to_string(),
                        Ok(Some(Err(s))) => break s.message().to_string(),
                        Ok(Some(Ok(ev))) => ev,
                    };
                    match ev.event {
                        Some(v1::event::Event::Subscribed(s)) => {
                            info.framework_id = s.framework_id.clone();
                            header = v1::CallHeader { framework_id: s.framework_id.clone(), stream_id: s.stream_id };
                            acks = Some(Acker::spawn(client.clone(), header.clone()));
                            silence = Duration::from_secs_f64(s.heartbeat_interval_seconds.max(1.0)) * HEARTBEATS_MISSED;
                            let master = s.master.unwrap_or_default();
                            if subscribed_once {
                                scheduler.reregistered(&driver, &master);
                            } else {
                                subscribed_once = true;
                                scheduler.registered(&driver, &s.framework_id, &master);
                            }
                        }
                        Some(v1::event::Event::Offers(o)) => scheduler.offers(&driver, o.offers),
                        Some(v1::event::Event::Rescind(r)) => scheduler.rescinded(&driver, &r.offer_id),
                        Some(v1::event::Event::Update(u)) => {
                            if let Some(status) = u.status {
                                scheduler.status_update(&driver, &status);
                                if let (false, Some(acks)) = (status.uuid.is_empty(), &acks) {
                                    acks.queue(v1::Acknowledgement {
                                        agent_id: status.agent_id.clone(),
                                        task_id: status.task_id.clone(),
                                        uuid: status.uuid.clone(),
                                    });
                                }
                            }
                        }
                        Some(v1::event::Event::Error(e)) => {
                            scheduler.error(&driver, &e.message);
                            if e.message.starts_with("framework torn down") {
                                return Err(DriverError::Removed(e.message));
                            }
                        }
                        Some(v1::event::Event::Message(_)) | Some(v1::event::Event::Failure(_)) | Some(v1::event::Event::Heartbeat(_)) | None => {}
                    }
                }
                // Calls wait for SUBSCRIBED: every call names the framework and its stream.
                Some(c) = calls.recv(), if !header.framework_id.is_empty() => {
                    if matches!(c, Call::Stop { .. }) {
                        // Acknowledge what the callbacks have seen before leaving (and
                        // before a teardown, which would refuse them).
                        if let Some(acks) = acks.take() {
                            acks.flush().await;
                        }
                    }
                    if perform(&client, &header, c, &mut scheduler, &driver).await {
                        return Ok(scheduler);
                    }
                }
            }
        };
        tracing::info!(reason = %ended, "disconnected from the leader; re-subscribing");
        scheduler.disconnected(&driver);
    }
}

/// Wait for the next item of `rx`, then take whatever else is already queued, up to `most`
/// in all: a batch as large as what arrived during the caller's last call. `None` once the
/// senders are gone and the queue is empty.
pub async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>, most: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < most {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Acknowledges status updates of one subscription as they are queued, without holding up
/// the event loop: one call at a time, carrying every acknowledgement queued while the
/// previous one was in flight. Dropped with its subscription (what it still holds is sent,
/// or resent to the next subscription by the master).
struct Acker {
    tx: mpsc::UnboundedSender<v1::Acknowledgement>,
    task: tokio::task::JoinHandle<()>,
}

impl Acker {
    fn spawn(client: Arc<Masters>, header: v1::CallHeader) -> Acker {
        let (tx, mut rx) = mpsc::unbounded_channel::<v1::Acknowledgement>();
        let task = tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut rx, ACKS_PER_CALL).await {
                let req = v1::AcknowledgeRequest {
                    header: Some(header.clone()),
                    acks: batch,
                    ..Default::default()
                };
                // Unacknowledged updates are resent, so a lost ack only costs a duplicate.
                let sent = call(&client, |mut c| {
                    let req = req.clone();
                    async move { c.acknowledge(req).await.map(|_| ()) }
                })
                .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e.message(), acks = req.acks.len(), "acknowledgements not delivered");
                }
            }
        });
        Acker { tx, task }
    }

    fn queue(&self, ack: v1::Acknowledgement) {
        let _ = self.tx.send(ack);
    }

    /// Send everything queued and wait for it, for [`FIND_LEADER`] at most.
    async fn flush(self) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(FIND_LEADER, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn call<F, Fut>(client: &Masters, f: F) -> Result<(), Status>
where
    F: Fn(SchedulerClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    client
        .on_leader(FIND_LEADER, |ch| f(crate::limit_client!(SchedulerClient::new(ch))))
        .await
}

/// Send one queued call; true when it was Stop and the run loop must end.
async fn perform<S: Scheduler>(
    client: &Masters,
    header: &v1::CallHeader,
    c: Call,
    scheduler: &mut S,
    driver: &Driver,
) -> bool {
    let h = Some(header.clone());
    let filters = |r: Option<f64>| {
        r.map(|s| v1::Filters {
            refuse_seconds: Some(s),
        })
    };
    let result = match c {
        Call::Accept {
            offer_ids,
            tasks,
            refuse_seconds,
        } => {
            let req = v1::AcceptRequest {
                header: h,
                offer_ids,
                operations: vec![v1::Operation {
                    operation: Some(v1::operation::Operation::Launch(v1::LaunchOperation { tasks })),
                }],
                filters: filters(refuse_seconds),
            };
            let accepted = call(client, |mut c| {
                let req = req.clone();
                async move { c.accept(req).await.map(|_| ()) }
            })
            .await;
            if let Err(e) = accepted {
                let tasks: Vec<v1::TaskInfo> = req
                    .operations
                    .into_iter()
                    .filter_map(|op| match op.operation {
                        Some(v1::operation::Operation::Launch(l)) => Some(l.tasks),
                        None => None,
                    })
                    .flatten()
                    .collect();
                scheduler.accept_failed(driver, &tasks, e.message());
            }
            Ok(())
        }
        Call::Decline {
            offer_ids,
            refuse_seconds,
        } => {
            let req = v1::DeclineRequest {
                header: h,
                offer_ids,
                filters: filters(refuse_seconds),
            };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.decline(req).await.map(|_| ()) }
            })
            .await
        }
        Call::Kill { task_id, agent_id } => {
            let req = v1::KillRequest {
                header: h,
                task_id,
                agent_id,
                kill_grace_period_ms: 0,
            };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.kill(req).await.map(|_| ()) }
            })
            .await
        }
        Call::Reconcile(tasks) => {
            let req = v1::ReconcileRequest { header: h, tasks };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.reconcile(req).await.map(|_| ()) }
            })
            .await
        }
        Call::Revive => {
            let req = v1::ReviveRequest { header: h };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.revive(req).await.map(|_| ()) }
            })
            .await
        }
        Call::Suppress => {
            let req = v1::SuppressRequest { header: h };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.suppress(req).await.map(|_| ()) }
            })
            .await
        }
        Call::Stop { teardown } => {
            if teardown {
                let req = v1::TeardownRequest { header: h };
                if let Err(e) = call(client, |mut c| {
                    let req = req.clone();
                    async move { c.teardown(req).await.map(|_| ()) }
                })
                .await
                {
                    tracing::warn!(error = %e.message(), "teardown failed");
                }
            }
            return true;
        }
    };
    if let Err(e) = result {
        scheduler.error(driver, e.message());
    }
    false
}

/// Framework-side placement policies from the Mesos paper's examples.
pub mod placement {
    use std::time::{Duration, Instant};

    use crate::v1;

    /// Data locality: where a task would rather run.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Preference {
        /// An agent with this hostname.
        Hostname(String),
        /// An agent with this attribute value.
        Attribute { name: String, value: String },
    }

    impl Preference {
        /// `host-b` prefers a hostname; `rack:r1` prefers an attribute value.
        pub fn parse(text: &str) -> Result<Preference, String> {
            let text = text.trim();
            if text.is_empty() {
                return Err("empty preference".into());
            }
            Ok(match text.split_once(':') {
                Some((name, value)) if !name.is_empty() && !value.is_empty() => Preference::Attribute {
                    name: name.to_string(),
                    value: value.to_string(),
                },
                Some(_) => return Err(format!("{text:?} is neither a hostname nor name:value")),
                None => Preference::Hostname(text.to_string()),
            })
        }

        pub fn matches(&self, offer: &v1::Offer) -> bool {
            match self {
                Preference::Hostname(h) => offer.hostname == *h,
                Preference::Attribute { name, value } => {
                    offer.attributes.iter().any(|a| a.name == *name && a.value == *value)
                }
            }
        }
    }

    /// Delay scheduling (Zaharia et al., EuroSys 2010): skip offers that are not preferred
    /// for up to `wait`, counted from the first one skipped, then take any offer.
    #[derive(Debug, Clone)]
    pub struct DelayScheduling {
        wait: Duration,
        skipping_since: Option<Instant>,
    }

    impl DelayScheduling {
        pub fn new(wait: Duration) -> Self {
            DelayScheduling {
                wait,
                skipping_since: None,
            }
        }

        /// Whether to use an offer that is (or is not) preferred, at `now`.
        pub fn take(&mut self, preferred: bool, now: Instant) -> bool {
            if preferred {
                self.skipping_since = None;
                return true;
            }
            let since = *self.skipping_since.get_or_insert(now);
            now.duration_since(since) >= self.wait
        }

        /// How much longer non-preferred offers will be skipped.
        pub fn remaining(&self, now: Instant) -> Duration {
            match self.skipping_since {
                Some(since) => self.wait.saturating_sub(now.duration_since(since)),
                None => self.wait,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn preferences() {
            let offer = v1::Offer {
                hostname: "b".into(),
                attributes: vec![v1::Attribute {
                    name: "rack".into(),
                    value: "r2".into(),
                }],
                ..Default::default()
            };
            assert!(Preference::parse("b").unwrap().matches(&offer));
            assert!(!Preference::parse("a").unwrap().matches(&offer));
            assert!(Preference::parse("rack:r2").unwrap().matches(&offer));
            assert!(!Preference::parse("rack:r1").unwrap().matches(&offer));
            assert!(Preference::parse(":x").is_err());
        }

        #[test]
        fn delay_scheduling_waits_then_takes_any() {
            let t0 = Instant::now();
            let mut d = DelayScheduling::new(Duration::from_secs(2));
            assert!(!d.take(false, t0));
            assert!(!d.take(false, t0 + Duration::from_millis(1500)));
            assert!(d.take(false, t0 + Duration::from_secs(2)));
            // A preferred offer is always taken and restarts the wait.
            assert!(d.take(true, t0 + Duration::from_secs(3)));
            assert!(!d.take(false, t0 + Duration::from_secs(3)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_what_queued_up_to_the_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![3, 4]));
        // Waits for the next item rather than returning an empty batch.
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(5).unwrap();
        });
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![5]));
        sender.await.unwrap();
        // Every sender gone and nothing queued: the end.
        assert_eq!(next_batch(&mut rx, 3).await, None);
    }
}

//! The framework SDK: a [`Scheduler`] trait and a driver, like the Mesos scheduler driver.
//!
//! [`run`] subscribes the framework to the leader (following redirects), calls the
//! scheduler's callbacks as events arrive, acknowledges every status update after its
//! callback returns (off the event loop, many per call when they queue up), and when the
//! stream breaks (leader failover) re-subscribes with the same framework id: that is a
//! failover of the framework, and its tasks are kept. The [`Driver`] handed to every
//! callback queues calls (accept, decline, kill, ...); they are sent in order by the run
//! loop, and failures come back through [`Scheduler::error`].
//!
//! Files: this one holds the [`Scheduler`] trait and the run loop (subscribe, dispatch
//! events, send calls, re-subscribe); `driver.rs` the [`Driver`] and its bounded call queue;
//! `acknowledger.rs` the acknowledgements sent off the event loop; `placement.rs` the
//! framework-side placement policies (data locality, delay scheduling).

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::client::Masters;
use crate::v1;
use crate::v1::scheduler_client::SchedulerClient;

mod acknowledger;
mod driver;
pub mod placement;

use acknowledger::Acker;
pub use acknowledger::{next_batch, ACKS_PER_CALL, ACK_QUEUE};
use driver::Call;
pub use driver::{Driver, DRIVER_QUEUE};

/// How long to keep looking for a leader before reporting it and trying again.
const FIND_LEADER: Duration = Duration::from_secs(10);
/// Missing this many heartbeat intervals means the stream is dead.
const HEARTBEATS_MISSED: u32 = 3;

/// What a framework does with events. Every method gets the [`Driver`] to act with.
pub trait Scheduler: Send {
    /// Subscribed for the first time; `framework_id` is the framework's id for life.
    fn registered(&mut self, _driver: &Driver, _framework_id: &str, _master: &v1::MasterInfo) {}
    /// Subscribed again after a leader failover or a lost stream.
    fn reregistered(&mut self, _driver: &Driver, _master: &v1::MasterInfo) {}
    /// Offers made to this framework; accept or decline them through `driver`.
    fn offers(&mut self, driver: &Driver, offers: Vec<v1::Offer>);
    /// An offer was taken back (the agent went away, or it timed out).
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
    /// A message from executor `executor_id` on `agent_id` (best effort).
    fn framework_message(&mut self, _driver: &Driver, _agent_id: &str, _executor_id: &str, _data: &[u8]) {}
    /// Executor `executor_id` on `agent_id` ended (`exit_code` when it exited); its
    /// unfinished tasks are failed by status updates of their own.
    fn executor_lost(&mut self, _driver: &Driver, _agent_id: &str, _executor_id: &str, _exit_code: Option<i32>) {}
    /// Agent `agent_id` was lost or removed.
    fn agent_lost(&mut self, _driver: &Driver, _agent_id: &str) {}
}

/// Why [`run`] ended without being stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The master refused the subscription (an invalid or unknown framework).
    #[error("the master refused the framework: {0}")]
    Refused(String),
    /// The framework was torn down.
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
    let (driver, mut calls) = Driver::new();
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
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::FailedPrecondition
                        | Code::PermissionDenied
                        | Code::Unauthenticated
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
                        Some(v1::event::Event::Message(m)) => {
                            scheduler.framework_message(&driver, &m.agent_id, &m.executor_id, &m.data)
                        }
                        Some(v1::event::Event::Failure(f)) if f.executor_id.is_empty() => scheduler.agent_lost(&driver, &f.agent_id),
                        Some(v1::event::Event::Failure(f)) => {
                            scheduler.executor_lost(&driver, &f.agent_id, &f.executor_id, f.exit_code)
                        }
                        Some(v1::event::Event::Heartbeat(_)) | None => {}
                    }
                    report_overflow(&mut scheduler, &driver);
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
                    report_overflow(&mut scheduler, &driver);
                }
            }
        };
        tracing::info!(reason = %ended, "disconnected from the leader; re-subscribing");
        scheduler.disconnected(&driver);
    }
}

/// Tell the scheduler about calls its last callback queued beyond [`DRIVER_QUEUE`].
fn report_overflow<S: Scheduler>(scheduler: &mut S, driver: &Driver) {
    let overflow = driver.take_overflow();
    if overflow.calls == 0 {
        return;
    }
    let message = format!(
        "{} calls dropped: the driver queue holds {DRIVER_QUEUE} calls (decline offers in one call)",
        overflow.calls
    );
    tracing::warn!(dropped = overflow.calls, queue = DRIVER_QUEUE, "driver queue full");
    if !overflow.tasks.is_empty() {
        scheduler.accept_failed(driver, &overflow.tasks, &message);
    }
    scheduler.error(driver, &message);
}

async fn call<F, Fut>(client: &Masters, f: F) -> Result<(), Status>
where
    F: Fn(SchedulerClient<crate::client::Channel>) -> Fut,
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
        Call::Message {
            agent_id,
            executor_id,
            data,
        } => {
            let req = v1::MessageRequest {
                header: h,
                agent_id,
                executor_id,
                data,
            };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.message(req).await.map(|_| ()) }
            })
            .await
        }
        Call::ShutdownExecutor { agent_id, executor_id } => {
            let req = v1::ShutdownRequest {
                header: h,
                agent_id,
                executor_id,
            };
            call(client, |mut c| {
                let req = req.clone();
                async move { c.shutdown(req).await.map(|_| ()) }
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

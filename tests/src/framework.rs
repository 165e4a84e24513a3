//! A test framework that speaks the raw Scheduler API (so tests can also send what the SDK
//! never would).

use std::future::Future;
use std::time::{Duration, Instant};

use corral_proto::client::Masters;
use corral_proto::v1;
use tonic::Status;

/// A test framework speaking the raw Scheduler API: it records every event, acknowledges
/// updates, and exposes the calls (including malformed ones).
pub struct Framework {
    /// The framework's id.
    pub id: String,
    /// The header its calls carry.
    pub header: v1::CallHeader,
    /// Clients of the masters.
    pub client: Masters,
    events: tonic::Streaming<v1::Event>,
    /// Every status update received, in order.
    pub updates: Vec<v1::TaskStatus>,
    /// Offers received and not yet taken by `next_offers`.
    pub offers: Vec<v1::Offer>,
    /// Offers rescinded, by id.
    pub rescinded: Vec<String>,
    /// Whether status updates are acknowledged as they arrive.
    pub ack: bool,
    /// Acknowledgements the master refused or that failed: the task and update they were for.
    pub ack_failures: Vec<(String, Vec<u8>, Status)>,
    /// The updates (by uuid) whose acknowledgement the master took.
    pub acked: std::collections::BTreeSet<Vec<u8>>,
    /// The event stream ended (the leader went away): [`Framework::resubscribe`].
    pub closed: bool,
    /// Messages from the framework's executors, in order.
    pub messages: Vec<v1::FrameworkMessage>,
    /// FAILURE events (agents lost, executors ended), in order.
    pub failures: Vec<v1::Failure>,
    info: v1::FrameworkInfo,
}

impl Framework {
    /// Subscribe a new framework `info` to the leader.
    pub async fn subscribe(client: Masters, info: v1::FrameworkInfo) -> Result<Framework, Status> {
        let (header, events) = Self::open(&client, &info).await?;
        Ok(Framework {
            id: header.framework_id.clone(),
            header,
            client,
            events,
            updates: Vec::new(),
            offers: Vec::new(),
            rescinded: Vec::new(),
            ack: true,
            ack_failures: Vec::new(),
            acked: Default::default(),
            closed: false,
            messages: Vec::new(),
            failures: Vec::new(),
            info,
        })
    }

    /// Subscribe and read SUBSCRIBED.
    async fn open(
        client: &Masters,
        info: &v1::FrameworkInfo,
    ) -> Result<(v1::CallHeader, tonic::Streaming<v1::Event>), Status> {
        use corral_proto::v1::scheduler_client::SchedulerClient;
        let request = v1::SubscribeRequest {
            framework: Some(info.clone()),
            suppressed: false,
        };
        let mut events = client
            .on_leader(Duration::from_secs(10), |ch| {
                let r = request.clone();
                async move { SchedulerClient::new(ch).subscribe(r).await }
            })
            .await?
            .into_inner();
        use tokio_stream::StreamExt;
        let first = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no SUBSCRIBED"))?
            .ok_or_else(|| Status::unavailable("stream closed"))??;
        let Some(v1::event::Event::Subscribed(s)) = first.event else {
            return Err(Status::internal("first event is not SUBSCRIBED"));
        };
        let header = v1::CallHeader {
            framework_id: s.framework_id,
            stream_id: s.stream_id,
        };
        Ok((header, events))
    }

    /// Subscribe again as the same framework (after a failover), keeping what was recorded.
    pub async fn resubscribe(&mut self) -> Result<(), Status> {
        let info = v1::FrameworkInfo {
            framework_id: self.id.clone(),
            ..self.info.clone()
        };
        let (header, events) = Self::open(&self.client, &info).await?;
        self.header = header;
        self.events = events;
        self.offers.clear();
        self.closed = false;
        Ok(())
    }

    /// Read one event (or time out), recording it.
    async fn pump(&mut self, wait: Duration) -> bool {
        use tokio_stream::StreamExt;
        let ev = match tokio::time::timeout(wait, self.events.next()).await {
            Err(_) => return false,
            Ok(Some(Ok(ev))) => ev,
            Ok(None | Some(Err(_))) => {
                self.closed = true;
                // Do not spin on a closed stream.
                tokio::time::sleep(wait).await;
                return false;
            }
        };
        match ev.event {
            Some(v1::event::Event::Offers(o)) => self.offers.extend(o.offers),
            Some(v1::event::Event::Rescind(r)) => {
                self.offers.retain(|o| o.offer_id != r.offer_id);
                self.rescinded.push(r.offer_id);
            }
            Some(v1::event::Event::Update(u)) => {
                if let Some(s) = u.status {
                    if self.ack && !s.uuid.is_empty() {
                        let req = v1::AcknowledgeRequest {
                            header: Some(self.header.clone()),
                            agent_id: s.agent_id.clone(),
                            task_id: s.task_id.clone(),
                            uuid: s.uuid.clone(),
                            acks: Vec::new(),
                        };
                        let acked = self
                            .call(|mut c| {
                                let req = req.clone();
                                async move { c.acknowledge(req).await.map(|_| ()) }
                            })
                            .await;
                        match acked {
                            Ok(()) => {
                                self.acked.insert(s.uuid.clone());
                            }
                            Err(e) => self.ack_failures.push((s.task_id.clone(), s.uuid.clone(), e)),
                        }
                    }
                    self.updates.push(s);
                }
            }
            Some(v1::event::Event::Message(m)) => self.messages.push(m),
            Some(v1::event::Event::Failure(f)) => self.failures.push(f),
            _ => {}
        }
        true
    }

    /// Read events until `done` holds of what was recorded, or panic after `deadline`
    /// saying `what` did not happen.
    pub async fn wait_until(&mut self, deadline: Duration, what: &str, done: impl Fn(&Framework) -> bool) {
        let give_up = Instant::now() + deadline;
        while !done(self) {
            assert!(
                Instant::now() < give_up,
                "framework {}: {what} did not happen within {deadline:?}; messages {:?}, failures {:?}",
                self.id,
                self.messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.data).to_string())
                    .collect::<Vec<_>>(),
                self.failures
            );
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// Send `data` to executor `executor_id` on `agent_id`.
    pub async fn message(&self, agent_id: &str, executor_id: &str, data: &[u8]) -> Result<(), Status> {
        let req = v1::MessageRequest {
            header: Some(self.header.clone()),
            agent_id: agent_id.into(),
            executor_id: executor_id.into(),
            data: data.to_vec(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.message(req).await.map(|_| ()) }
        })
        .await
    }

    /// Tear the framework down.
    pub async fn teardown(&self) -> Result<(), Status> {
        let req = v1::TeardownRequest {
            header: Some(self.header.clone()),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.teardown(req).await.map(|_| ()) }
        })
        .await
    }

    /// A task on `agent_id` run by executor `executor_id`, started with `argv` (the
    /// executor holds 0.1 cpus and 32 MB beside its tasks).
    pub fn executor_task(id: &str, agent_id: &str, cpus: f64, executor_id: &str, argv: &[&str]) -> v1::TaskInfo {
        let mut task = Self::task(id, agent_id, cpus, 16.0, argv);
        let executor = v1::ExecutorInfo {
            executor_id: executor_id.into(),
            name: format!("{executor_id} (test)"),
            command: task.command.take(),
            resources: Self::task(id, agent_id, 0.1, 32.0, argv).resources,
            data: Vec::new(),
        };
        task.executor = Some(executor);
        task
    }

    /// Wait for at least one offer (from `agent`, if given) and take the offers so far.
    pub async fn next_offers(&mut self, deadline: Duration) -> Vec<v1::Offer> {
        let give_up = Instant::now() + deadline;
        while self.offers.is_empty() {
            assert!(
                Instant::now() < give_up,
                "framework {}: no offer within {deadline:?}",
                self.id
            );
            self.pump(Duration::from_millis(100)).await;
        }
        std::mem::take(&mut self.offers)
    }

    /// Watch events for `wait` without expecting anything; returns the offers seen.
    pub async fn watch(&mut self, wait: Duration) -> Vec<v1::Offer> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            self.pump(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            )
            .await;
        }
        std::mem::take(&mut self.offers)
    }

    /// Wait for an update of `task_id` in `state`.
    pub async fn wait_state(&mut self, task_id: &str, state: v1::TaskState, deadline: Duration) -> v1::TaskStatus {
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(s) = self
                .updates
                .iter()
                .find(|s| s.task_id == task_id && s.state == state as i32)
            {
                return s.clone();
            }
            assert!(
                Instant::now() < give_up,
                "task {task_id}: no {} within {deadline:?}; updates: {:?}",
                state.as_str_name(),
                self.updates
                    .iter()
                    .map(|s| (s.task_id.clone(), s.state))
                    .collect::<Vec<_>>()
            );
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// A unary Scheduler call on the leader.
    pub async fn call<F, Fut, T>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(corral_proto::v1::scheduler_client::SchedulerClient<corral_proto::client::Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.client
            .on_leader(Duration::from_secs(10), |ch| {
                f(corral_proto::v1::scheduler_client::SchedulerClient::new(ch))
            })
            .await
    }

    /// A task running `argv` on `agent_id` with `cpus` and `mem`.
    pub fn task(id: &str, agent_id: &str, cpus: f64, mem: f64, argv: &[&str]) -> v1::TaskInfo {
        let scalar = |n: &str, v: f64| v1::Resource {
            name: n.into(),
            value: Some(v1::resource::Value::Scalar(v)),
        };
        v1::TaskInfo {
            task_id: id.into(),
            name: id.into(),
            agent_id: agent_id.into(),
            resources: vec![scalar("cpus", cpus), scalar("mem", mem)],
            command: Some(v1::CommandInfo {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Accept `offer_ids` launching `tasks`, unused resources filtered for `refuse`.
    pub async fn accept(
        &self,
        offer_ids: Vec<String>,
        tasks: Vec<v1::TaskInfo>,
        refuse: f64,
    ) -> Result<v1::AcceptResponse, Status> {
        let req = v1::AcceptRequest {
            header: Some(self.header.clone()),
            offer_ids,
            operations: vec![v1::Operation {
                operation: Some(v1::operation::Operation::Launch(v1::LaunchOperation { tasks })),
            }],
            filters: Some(v1::Filters {
                refuse_seconds: Some(refuse),
            }),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.accept(req).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Decline `offer_ids` with a filter of `refuse` seconds.
    pub async fn decline(&self, offer_ids: Vec<String>, refuse: f64) -> Result<(), Status> {
        let req = v1::DeclineRequest {
            header: Some(self.header.clone()),
            offer_ids,
            filters: Some(v1::Filters {
                refuse_seconds: Some(refuse),
            }),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.decline(req).await.map(|_| ()) }
        })
        .await
    }
}

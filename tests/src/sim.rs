//! Simulated agents and frameworks for the benchmarks. They speak the real gRPC protocol to
//! real masters (register with an inventory, answer pings, report status updates and resend
//! them until acknowledged, follow the leader), but run no processes, so one process can
//! hold ten thousand of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::client::Masters;
use corral_proto::resources::Resources;
use corral_proto::scheduler::{next_batch, ACKS_PER_CALL, ACK_QUEUE};
use corral_proto::v1;
use corral_proto::v1::agents_client::AgentsClient;
use corral_proto::v1::scheduler_client::SchedulerClient;
use rand::Rng;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// Agents that share one client (one HTTP/2 connection per master).
const AGENTS_PER_CONNECTION: usize = 100;
/// A leader silent this long is gone (as for real agents).
const LEADER_SILENCE: Duration = Duration::from_secs(12);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status(framework_id: &str, task_id: &str, agent_id: &str, state: v1::TaskState) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: task_id.to_string(),
        state: state as i32,
        message: String::new(),
        agent_id: agent_id.to_string(),
        framework_id: framework_id.to_string(),
        uuid: rand::random::<[u8; 16]>().to_vec(),
        exit_code: (state == v1::TaskState::TaskFinished).then_some(0),
        reason: v1::Reason::Unspecified as i32,
        source: v1::Source::Agent as i32,
        // Stamped like a real agent's: retention orders finished tasks by it.
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    }
}

#[derive(Default)]
struct FleetState {
    /// Per agent: the term and time of its latest registration.
    registered: Mutex<Vec<(u64, Option<Instant>)>>,
    /// Tasks each agent holds (not yet terminal and acknowledged).
    tasks: AtomicU64,
}

/// A fleet of simulated agents.
pub struct Fleet {
    state: Arc<FleetState>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Start `n` agents offering `resources` each, attached to `masters`. With `finish`, a
    /// task is reported RUNNING and then FINISHED as soon as it is launched; otherwise it
    /// stays RUNNING.
    pub fn start(masters: &[String], n: usize, resources: &str, finish: bool) -> Fleet {
        let resources = Resources::parse(resources).expect("simulated agent resources");
        let state = Arc::new(FleetState {
            registered: Mutex::new(vec![(0, None); n]),
            tasks: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        let mut client = None;
        for i in 0..n {
            if i % AGENTS_PER_CONNECTION == 0 {
                client = Some(Arc::new(Masters::new(masters.to_vec(), Duration::from_secs(5))));
            }
            let agent = SimAgent {
                index: i,
                hostname: format!("sim-{i:05}"),
                resources: resources.clone(),
                finish,
                masters: client.clone().expect("set above"),
                fleet: state.clone(),
            };
            handles.push(tokio::spawn(agent.run(stopped.clone())));
        }
        Fleet { state, stop, handles }
    }

    /// How many agents registered in a term above `term`, and when the last of them did.
    pub fn registered_after_term(&self, term: u64) -> (usize, Option<Instant>) {
        let reg = lock(&self.state.registered);
        let mut n = 0;
        let mut last = None;
        for (t, at) in reg.iter() {
            if *t > term {
                n += 1;
                last = last.max(*at);
            }
        }
        (n, last)
    }

    /// The newest term any agent registered in.
    pub fn newest_term(&self) -> u64 {
        lock(&self.state.registered).iter().map(|r| r.0).max().unwrap_or(0)
    }

    /// Tasks the agents hold.
    pub fn tasks(&self) -> u64 {
        self.state.tasks.load(Ordering::Relaxed)
    }

    /// Stop every simulated agent and wait for them to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

struct SimAgent {
    index: usize,
    hostname: String,
    resources: Resources,
    finish: bool,
    masters: Arc<Masters>,
    fleet: Arc<FleetState>,
}

struct SimTask {
    state: v1::TaskState,
}

impl SimAgent {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut agent_id = String::new();
        let mut tasks: HashMap<(String, String), SimTask> = HashMap::new();
        // Updates not yet acknowledged, in the order they were produced.
        let mut unacked: Vec<v1::TaskStatus> = Vec::new();
        let mut term = 0u64;
        loop {
            if *stopped.borrow() {
                return;
            }
            let register = v1::AgentMessage {
                message: Some(v1::agent_message::Message::Register(v1::Register {
                    agent_id: agent_id.clone(),
                    info: Some(v1::AgentInfo {
                        hostname: self.hostname.clone(),
                        address: "127.0.0.1:1".into(),
                        resources: corral_proto::convert::resources_to_wire(&self.resources),
                        attributes: Vec::new(),
                        version: "sim".into(),
                        isolation: false,
                        capabilities: Vec::new(),
                    }),
                    // As real agents do: the master needs only the task ids.
                    tasks: tasks
                        .iter()
                        .map(|((f, id), t)| v1::TaskRecord {
                            framework_id: f.clone(),
                            task: Some(v1::TaskInfo {
                                task_id: id.clone(),
                                ..Default::default()
                            }),
                            state: t.state as i32,
                            exit_code: None,
                        })
                        .collect(),
                    last_seen_term: term,
                })),
            };
            let attempt = self
                .masters
                .on_leader(Duration::from_secs(5), |channel| {
                    let (tx, rx) = mpsc::channel(1024);
                    let _ = tx.try_send(register.clone());
                    async move {
                        let response = AgentsClient::new(channel)
                            .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
                            .attach(ReceiverStream::new(rx))
                            .await?;
                        Ok((response.into_inner(), tx))
                    }
                })
                .await;
            let Ok((mut inbound, tx)) = attempt else { continue };
            loop {
                let next = tokio::select! {
                    m = tokio::time::timeout(LEADER_SILENCE, inbound.next()) => m,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let Ok(Some(Ok(msg))) = next else { break };
                if msg.term < term {
                    continue;
                }
                term = msg.term;
                let mut out = Vec::new();
                match msg.message {
                    Some(v1::master_message::Message::Registered(r)) => {
                        agent_id = r.agent_id;
                        lock(&self.fleet.registered)[self.index] = (term, Some(Instant::now()));
                        out.extend(unacked.iter().cloned());
                    }
                    Some(v1::master_message::Message::RunTask(r)) => {
                        let Some(info) = r.task else { continue };
                        let key = (r.framework_id.clone(), info.task_id.clone());
                        if tasks.contains_key(&key) {
                            continue;
                        }
                        let running = status(&key.0, &key.1, &agent_id, v1::TaskState::TaskRunning);
                        out.push(running.clone());
                        unacked.push(running);
                        let mut state = v1::TaskState::TaskRunning;
                        if self.finish {
                            let done = status(&key.0, &key.1, &agent_id, v1::TaskState::TaskFinished);
                            out.push(done.clone());
                            unacked.push(done);
                            state = v1::TaskState::TaskFinished;
                        }
                        tasks.insert(key, SimTask { state });
                        self.fleet.tasks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(v1::master_message::Message::KillTask(k)) => {
                        let key = (k.framework_id.clone(), k.task_id.clone());
                        if let Some(t) = tasks.get_mut(&key) {
                            if t.state == v1::TaskState::TaskRunning {
                                t.state = v1::TaskState::TaskKilled;
                                let killed = status(&key.0, &key.1, &agent_id, v1::TaskState::TaskKilled);
                                out.push(killed.clone());
                                unacked.push(killed);
                            }
                        }
                    }
                    Some(v1::master_message::Message::AckUpdate(a)) => {
                        if let Some(pos) = unacked.iter().position(|s| s.uuid == a.uuid) {
                            let acked = unacked.remove(pos);
                            let terminal = acked.state != v1::TaskState::TaskRunning as i32;
                            if terminal && tasks.remove(&(a.framework_id, a.task_id)).is_some() {
                                self.fleet.tasks.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Some(v1::master_message::Message::Ping(p)) => {
                        let _ = tx.try_send(v1::AgentMessage {
                            message: Some(v1::agent_message::Message::Pong(v1::Pong { nonce: p.nonce })),
                        });
                    }
                    _ => {}
                }
                for s in out {
                    let m = v1::AgentMessage {
                        message: Some(v1::agent_message::Message::StatusUpdate(v1::StatusUpdate {
                            status: Some(s),
                        })),
                    };
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            }
            // Like real agents: spread re-registrations after a failover.
            let pause = rand::rng().random_range(20..200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// What a simulated framework does with offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keep every offer (never accept or decline): for watching offers arrive.
    Hold,
    /// Launch `per_agent` long tasks on each agent once, then hold.
    Populate {
        /// Tasks per agent.
        per_agent: usize,
    },
    /// Launch up to `per_offer` short tasks from every offer, as fast as offers come.
    Churn {
        /// Most tasks launched from one offer.
        per_offer: usize,
    },
}

/// Each simulated task asks for this much.
pub const TASK_CPUS: f64 = 0.01;
/// Memory of each simulated task, in MiB.
pub const TASK_MEM: f64 = 1.0;

#[derive(Default)]
pub(crate) struct FrameworkState {
    /// The first time an offer of each leader term arrived.
    pub(crate) first_offer: Mutex<HashMap<u64, Instant>>,
    /// When each task's launch was accepted (for accept-to-RUNNING latency).
    pub(crate) accepted_at: Mutex<HashMap<String, Instant>>,
    /// Accept-to-RUNNING latencies, in microseconds.
    pub(crate) latencies: Mutex<Vec<u64>>,
    /// Accept call latencies (until the launch is committed), in microseconds.
    pub(crate) accept_latencies: Mutex<Vec<u64>>,
    pub(crate) launched: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) finished: AtomicU64,
    /// Accepts the master refused.
    pub(crate) refused: AtomicU64,
    /// Acknowledgements sent and not answered yet.
    pub(crate) acks_pending: AtomicU64,
}

impl FrameworkState {
    /// Its counts so far.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            launched: self.launched.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            acks_pending: self.acks_pending.load(Ordering::Relaxed),
        }
    }
}

/// A simulated framework.
pub struct SimFramework {
    state: Arc<FrameworkState>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Counters of a simulated framework.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Tasks whose launch was committed.
    pub launched: u64,
    /// Tasks reported RUNNING.
    pub running: u64,
    /// Tasks reported FINISHED.
    pub finished: u64,
    /// Launches the master refused.
    pub refused: u64,
    /// Acknowledgements in flight.
    pub acks_pending: u64,
}

impl SimFramework {
    /// Subscribe a simulated framework `name` to `masters` and run it in `mode`.
    pub fn start(masters: &[String], name: &str, mode: Mode) -> SimFramework {
        let state = Arc::new(FrameworkState::default());
        let (stop, stopped) = watch::channel(false);
        let run = FrameworkRun {
            masters: Arc::new(Masters::new(masters.to_vec(), Duration::from_secs(5))),
            name: name.to_string(),
            mode,
            state: state.clone(),
            populated: Arc::new(Mutex::new(std::collections::HashSet::new())),
            calls: Arc::new(Semaphore::new(256)),
        };
        let handle = tokio::spawn(run.run(stopped));
        SimFramework { state, stop, handle }
    }

    /// A framework whose loop (run by `handle`, stopped through `stop`) counts into `state`.
    pub(crate) fn running(
        state: Arc<FrameworkState>,
        stop: watch::Sender<bool>,
        handle: JoinHandle<()>,
    ) -> SimFramework {
        SimFramework { state, stop, handle }
    }

    /// When the first offer made in a term above `term` arrived.
    pub fn first_offer_after_term(&self, term: u64) -> Option<Instant> {
        lock(&self.state.first_offer)
            .iter()
            .filter(|(t, _)| **t > term)
            .map(|(_, at)| *at)
            .min()
    }

    /// Its counts so far.
    pub fn counts(&self) -> Counts {
        self.state.counts()
    }

    /// Take the accept-to-RUNNING latencies recorded so far (microseconds).
    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.state.latencies))
    }

    /// Take the latencies of Accept calls (until the launch was committed) recorded so far
    /// (microseconds).
    pub fn take_accept_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.state.accept_latencies))
    }

    /// Stop the framework and wait for its loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

#[derive(Clone)]
struct FrameworkRun {
    masters: Arc<Masters>,
    name: String,
    mode: Mode,
    state: Arc<FrameworkState>,
    populated: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Bounds the scheduler calls in flight.
    calls: Arc<Semaphore>,
}

/// The sum of the scalar resources named `name` (0 if none).
pub fn scalar(resources: &[v1::Resource], name: &str) -> f64 {
    resources
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| match r.value {
            Some(v1::resource::Value::Scalar(v)) => Some(v),
            _ => None,
        })
        .sum()
}

impl FrameworkRun {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut framework_id = String::new();
        let mut seq = 0u64;
        loop {
            if *stopped.borrow() {
                return;
            }
            let request = v1::SubscribeRequest {
                framework: Some(v1::FrameworkInfo {
                    framework_id: framework_id.clone(),
                    name: self.name.clone(),
                    failover_timeout_seconds: 3600.0,
                    ..Default::default()
                }),
                suppressed: false,
            };
            let subscribed = self
                .masters
                .on_leader(Duration::from_secs(5), |ch| {
                    let r = request.clone();
                    async move {
                        SchedulerClient::new(ch)
                            .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
                            .subscribe(r)
                            .await
                    }
                })
                .await;
            let Ok(events) = subscribed else { continue };
            let mut events = events.into_inner();
            let mut header = None;
            let mut acks = None;
            loop {
                let next = tokio::select! {
                    e = tokio::time::timeout(LEADER_SILENCE, events.next()) => e,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let ev = match next {
                    Ok(Some(Ok(ev))) => ev,
                    Ok(Some(Err(status))) => {
                        tracing::warn!(framework = %self.name, %status, "event stream failed; re-subscribing");
                        break;
                    }
                    Ok(None) => {
                        tracing::warn!(framework = %self.name, "event stream ended; re-subscribing");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(framework = %self.name, "leader silent; re-subscribing");
                        break;
                    }
                };
                match ev.event {
                    Some(v1::event::Event::Subscribed(s)) => {
                        framework_id = s.framework_id.clone();
                        let h = v1::CallHeader {
                            framework_id: s.framework_id,
                            stream_id: s.stream_id,
                        };
                        acks = Some(self.spawn_acker(h.clone()));
                        header = Some(h);
                    }
                    Some(v1::event::Event::Offers(o)) => {
                        let now = Instant::now();
                        for offer in o.offers {
                            lock(&self.state.first_offer).entry(offer.leader_term).or_insert(now);
                            if let Some(h) = &header {
                                self.on_offer(h, offer, &mut seq);
                            }
                        }
                    }
                    Some(v1::event::Event::Update(u)) => {
                        if let (Some(s), Some(acks)) = (u.status, &acks) {
                            self.on_update(acks, s);
                        }
                    }
                    _ => {}
                }
            }
            let pause = rand::rng().random_range(20..200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn on_offer(&self, header: &v1::CallHeader, offer: v1::Offer, seq: &mut u64) {
        let fit = ((scalar(&offer.resources, "cpus") / TASK_CPUS + 1e-6).floor() as usize)
            .min((scalar(&offer.resources, "mem") / TASK_MEM + 1e-6).floor() as usize);
        let count = match self.mode {
            Mode::Hold => return,
            Mode::Populate { per_agent } => {
                if !lock(&self.populated).insert(offer.agent_id.clone()) {
                    return;
                }
                per_agent.min(fit)
            }
            Mode::Churn { per_offer } => fit.min(per_offer),
        };
        if count == 0 {
            return;
        }
        let tasks: Vec<v1::TaskInfo> = (0..count)
            .map(|_| {
                *seq += 1;
                let id = format!("{}-{}", self.name, seq);
                v1::TaskInfo {
                    task_id: id.clone(),
                    name: id,
                    agent_id: offer.agent_id.clone(),
                    resources: vec![
                        v1::Resource {
                            name: "cpus".into(),
                            value: Some(v1::resource::Value::Scalar(TASK_CPUS)),
                        },
                        v1::Resource {
                            name: "mem".into(),
                            value: Some(v1::resource::Value::Scalar(TASK_MEM)),
                        },
                    ],
                    command: Some(v1::CommandInfo {
                        argv: vec!["true".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let request = v1::AcceptRequest {
            header: Some(header.clone()),
            offer_ids: vec![offer.offer_id],
            operations: vec![v1::Operation {
                operation: Some(v1::operation::Operation::Launch(v1::LaunchOperation {
                    tasks: tasks.clone(),
                })),
            }],
            filters: Some(v1::Filters {
                refuse_seconds: Some(0.0),
            }),
        };
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.calls.clone().acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            {
                let mut at = lock(&this.state.accepted_at);
                for t in &tasks {
                    at.insert(t.task_id.clone(), started);
                }
            }
            let result = this
                .masters
                .on_leader(Duration::from_secs(5), |ch| {
                    let r = request.clone();
                    async move { SchedulerClient::new(ch).accept(r).await }
                })
                .await;
            match result {
                Ok(_) => {
                    lock(&this.state.accept_latencies).push(started.elapsed().as_micros() as u64);
                    this.state.launched.fetch_add(tasks.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    if this.state.refused.fetch_add(1, Ordering::Relaxed) < 3 {
                        tracing::warn!(framework = %this.name, code = ?e.code(), message = e.message(), "accept refused");
                    }
                    let mut at = lock(&this.state.accepted_at);
                    for t in &tasks {
                        at.remove(&t.task_id);
                    }
                    // Populate that agent from its next offer instead.
                    if let Some(t) = tasks.first() {
                        lock(&this.populated).remove(&t.agent_id);
                    }
                }
            }
        });
    }

    fn on_update(&self, acks: &mpsc::Sender<v1::Acknowledgement>, s: v1::TaskStatus) {
        let now = Instant::now();
        if s.state == v1::TaskState::TaskRunning as i32 {
            self.state.running.fetch_add(1, Ordering::Relaxed);
            let at = lock(&self.state.accepted_at).remove(&s.task_id);
            if let Some(at) = at {
                lock(&self.state.latencies).push(now.duration_since(at).as_micros() as u64);
            }
        } else if s.state == v1::TaskState::TaskFinished as i32 {
            self.state.finished.fetch_add(1, Ordering::Relaxed);
            lock(&self.state.accepted_at).remove(&s.task_id);
        }
        if s.uuid.is_empty() {
            return;
        }
        self.state.acks_pending.fetch_add(1, Ordering::Relaxed);
        let ack = v1::Acknowledgement {
            agent_id: s.agent_id,
            task_id: s.task_id,
            uuid: s.uuid,
        };
        // As the SDK does: a full queue drops the ack, and the master resends the update.
        if acks.try_send(ack).is_err() {
            self.state.acks_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Acknowledge the updates of subscription `header` as they are queued, as the SDK
    /// does: one call at a time, each carrying what queued up while the last was in flight.
    fn spawn_acker(&self, header: v1::CallHeader) -> mpsc::Sender<v1::Acknowledgement> {
        let (tx, mut rx) = mpsc::channel::<v1::Acknowledgement>(ACK_QUEUE);
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut rx, ACKS_PER_CALL).await {
                let n = batch.len() as u64;
                let request = v1::AcknowledgeRequest {
                    header: Some(header.clone()),
                    acks: batch,
                    ..Default::default()
                };
                let _ = this
                    .masters
                    .on_leader(Duration::from_secs(5), |ch| {
                        let r = request.clone();
                        async move { SchedulerClient::new(ch).acknowledge(r).await }
                    })
                    .await;
                this.state.acks_pending.fetch_sub(n, Ordering::Relaxed);
            }
        });
        tx
    }
}

/// Log the simulation's warnings (refused accepts, broken streams) to stderr for the bench
/// binaries; `RUST_LOG` overrides the default level, `warn`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The `p`th percentile of latencies in microseconds, sorted, in milliseconds (NaN for none).
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_us.len() as f64 - 1.0)).round() as usize;
    sorted_us[rank.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// The `p`th percentile of sorted values (NaN for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A series of a `/metrics` body: the values of `name` on lines whose labels contain
/// `label` (`""`: any), summed; None if there is none.
pub fn metric(body: &str, name: &str, label: &str) -> Option<f64> {
    let mut values = body
        .lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{') && l.contains(label))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .peekable();
    values.peek()?;
    values.sum()
}

/// Resident memory of process `pid` in MiB, from `/proc/<pid>/status`.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Extra flags for every master of a benchmark, from `CORRAL_BENCH_MASTER_ARGS` (space
/// separated), to compare settings such as `--heartbeat-interval-ms` with the same command.
pub fn master_args() -> Vec<&'static str> {
    let raw = std::env::var("CORRAL_BENCH_MASTER_ARGS").unwrap_or_default();
    raw.split_whitespace()
        .map(|a| &*Box::leak(a.to_string().into_boxed_str()))
        .collect()
}

//! Leader-only soft state and subsystems (STYLE.md 5).
//!
//! Everything here can be rebuilt from the replicated state, so none of it is replicated:
//! connected agent and framework streams, outstanding offers, decline filters, suppressed
//! frameworks, timers. [`run_leadership`] creates a fresh [`Soft`] when this master becomes
//! leader of a term and drops it when leadership is lost; dropping it closes every stream,
//! so agents and frameworks go and find the new leader.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use corral_proto::convert::resources_to_wire;
use corral_proto::resources::Resources;
use corral_proto::v1;
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tonic::Status;

use crate::allocator::{allocate, AgentView, FrameworkView};
use crate::node::Shared;
use crate::state::{AgentState, ClusterState, FrameworkState};
use crate::types::Outcome;

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
/// How often unacknowledged status updates are sent to frameworks again.
pub const STATUS_RESEND_INTERVAL: Duration = Duration::from_secs(10);
/// A task still STAGING this long after its launch was committed is sent to its agent
/// again (launches are idempotent by task id on the agent), and then at this interval.
/// This delivers a committed launch whatever happened to its first RunTask: the Accept
/// that committed it timed out (the entry committed later), the agent's stream was full
/// or broke, the leader changed in between.
pub const STAGING_RESEND_AFTER: Duration = Duration::from_secs(5);

pub type AgentTx = mpsc::Sender<Result<v1::MasterMessage, Status>>;
pub type FrameworkTx = mpsc::Sender<Result<v1::Event, Status>>;

pub struct AgentSession {
    pub session: u64,
    pub tx: AgentTx,
    /// The agent's resources as it registered them (its part of the cluster total).
    pub resources: Resources,
}

pub struct FrameworkSession {
    pub stream_id: String,
    /// Live events: offers, rescinds, new updates, heartbeats. Never waits: a framework
    /// that lets [`FRAMEWORK_STREAM_CAPACITY`] of them pile up is dropped.
    pub tx: FrameworkTx,
    /// Unacknowledged updates sent again, at the pace the framework reads them (see
    /// [`FrameworkEvents`]); however many there are, they cannot overflow the live channel.
    resend_tx: mpsc::Sender<v1::Event>,
    /// Set while a resend to this session runs, so that there is one at a time.
    resending: Arc<AtomicBool>,
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
    live: mpsc::Receiver<Result<v1::Event, Status>>,
    resent: mpsc::Receiver<v1::Event>,
    /// Dropped with the stream: tells the session's watcher the framework is gone.
    _gone: oneshot::Sender<()>,
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

/// Capacity of a session's channel of resent updates. The resender waits for room, so
/// this only bounds how far it runs ahead of the framework.
pub const RESEND_CAPACITY: usize = 256;
/// Tasks looked at per read of the state while resending: bounds how long apply waits.
const RESEND_SCAN: usize = 1024;

pub struct OfferRecord {
    pub framework_id: String,
    pub agent_id: String,
    pub resources: Resources,
    pub created: Instant,
}

/// How long committing a launch should take (an Accept call, from the check of its offers
/// to the launch committed): the commit pipeline's latency, which every write of the
/// cluster shares. The number of launches allowed in flight adapts to keep it this short
/// (see [`Launches`]).
pub const LAUNCH_COMMIT_TARGET: Duration = Duration::from_millis(40);
/// Bounds of the adaptive limit on launches in flight (tasks).
pub const MIN_LAUNCHES_IN_FLIGHT: usize = 32;
pub const MAX_LAUNCHES_IN_FLIGHT: usize = 16_384;
/// The limit a new leader starts from.
const INITIAL_LAUNCHES_IN_FLIGHT: usize = 256;
/// The limit is reconsidered at most this often, and only on this many launches.
const LIMIT_WINDOW: Duration = Duration::from_millis(250);
const LIMIT_WINDOW_SAMPLES: usize = 16;
/// Commit latencies kept per window (a longer window keeps every other one).
const LIMIT_WINDOW_CAP: usize = 4096;
/// A launch whose first status has not come within this time stops counting towards the
/// limit (its agent may have died; the agent timeouts deal with it), so that lost agents
/// cannot hold back every other launch.
pub const LAUNCH_TTL: Duration = Duration::from_secs(5);

/// Launches in flight (accepted, not yet reported on by their agent) and the adaptive
/// limit on them: offers wait while the limit is reached. Every launch turns into Raft
/// commits (the launch, its status updates, their acknowledgements); offering faster than
/// they complete only lengthens the queues, which under load is all of a launch's latency.
///
/// The limit follows the latency of committing launches, additive increase and
/// multiplicative decrease, as a TCP sender follows its round-trip time: while the 90th
/// percentile stays under [`LAUNCH_COMMIT_TARGET`] and the limit is what holds offers
/// back, it grows by an eighth; when the percentile is over the target it shrinks by a
/// quarter. The cluster so runs at the rate it commits, with each launch waiting a few
/// commit rounds, on a small machine or a large one. The signal is the master's own
/// pipeline, not how long agents take to start tasks: slow-starting tasks only keep their
/// place in flight (for [`LAUNCH_TTL`] at most), and the limit grows to make room.
pub struct Launches {
    started: HashMap<(String, String), Instant>,
    /// Average tasks per Accept (exponentially weighted), to turn the room left into a
    /// number of agents to offer.
    per_accept: f64,
    limit: usize,
    /// Launch commit latencies (µs) since the window began.
    window: Vec<u32>,
    window_began: Instant,
    /// Whether the limit held offers back during the window.
    limited: bool,
}

impl Default for Launches {
    fn default() -> Self {
        Launches {
            started: HashMap::new(),
            per_accept: 0.0,
            limit: INITIAL_LAUNCHES_IN_FLIGHT,
            window: Vec::new(),
            window_began: Instant::now(),
            limited: false,
        }
    }
}

impl Launches {
    /// Tasks `task_ids` of `framework_id` were accepted.
    pub fn start<'a>(&mut self, framework_id: &str, task_ids: impl Iterator<Item = &'a str>, now: Instant) {
        let mut n = 0;
        for id in task_ids {
            self.started.insert((framework_id.to_string(), id.to_string()), now);
            n += 1;
        }
        if n > 0 {
            self.per_accept = if self.per_accept == 0.0 {
                n as f64
            } else {
                0.9 * self.per_accept + 0.1 * n as f64
            };
        }
    }

    /// The task's launch is over: its agent reported on it, or it was not committed.
    pub fn done(&mut self, framework_id: &str, task_id: &str) {
        self.started.remove(&(framework_id.to_string(), task_id.to_string()));
    }

    /// An Accept's launch was committed `took` after its offers were checked.
    pub fn committed(&mut self, took: Duration) {
        if self.window.len() == LIMIT_WINDOW_CAP {
            // Keep every other sample: the percentile stays, the memory is bounded.
            let mut i = 0;
            self.window.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
        self.window.push(took.as_micros().min(u32::MAX as u128) as u32);
    }

    /// Forget launches older than [`LAUNCH_TTL`].
    fn expire(&mut self, now: Instant) {
        self.started.retain(|_, at| now.duration_since(*at) < LAUNCH_TTL);
    }

    pub fn len(&self) -> usize {
        self.started.len()
    }

    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    /// The current limit on launches in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reconsider the limit from the window's latencies (see [`Launches`]).
    fn adapt(&mut self, now: Instant) {
        if now.duration_since(self.window_began) < LIMIT_WINDOW || self.window.len() < LIMIT_WINDOW_SAMPLES {
            return;
        }
        let rank = self.window.len() * 9 / 10;
        let (_, p90, _) = self.window.select_nth_unstable(rank);
        let p90 = Duration::from_micros(u64::from(*p90));
        if p90 > LAUNCH_COMMIT_TARGET {
            self.limit = (self.limit * 3 / 4).max(MIN_LAUNCHES_IN_FLIGHT);
        } else if self.limited {
            self.limit = (self.limit + (self.limit / 8).max(8)).min(MAX_LAUNCHES_IN_FLIGHT);
        }
        self.window.clear();
        self.window_began = now;
        self.limited = false;
    }

    /// How many agents one pass may offer: as many as the room left would take if each
    /// offer is accepted as the average one was (at least one while there is room).
    fn agents_to_offer(&mut self) -> usize {
        let room = self.limit.saturating_sub(self.started.len());
        if room == 0 {
            self.limited = true;
            return 0;
        }
        ((room as f64 / self.per_accept.max(1.0)) as usize).max(1)
    }
}

/// The agents touched since they were last looked at, handed out in random order one at a
/// time in O(1). A pass that may offer a few agents draws a few, however many thousands
/// are waiting (while agents register, or on a full pass, every agent is).
#[derive(Debug, Default)]
pub struct Touched {
    ids: Vec<String>,
    /// Agent id → its place in `ids`.
    index: HashMap<String, usize>,
}

impl Touched {
    pub fn insert(&mut self, agent_id: &str) {
        if !self.index.contains_key(agent_id) {
            self.index.insert(agent_id.to_string(), self.ids.len());
            self.ids.push(agent_id.to_string());
        }
    }

    #[cfg(test)]
    pub fn contains(&self, agent_id: &str) -> bool {
        self.index.contains_key(agent_id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn clear(&mut self) {
        self.ids.clear();
        self.index.clear();
    }

    /// Remove and return a member chosen uniformly at random.
    pub fn draw(&mut self, rng: &mut impl rand::Rng) -> Option<String> {
        if self.ids.is_empty() {
            return None;
        }
        let at = rng.random_range(0..self.ids.len());
        let id = self.ids.swap_remove(at);
        self.index.remove(&id);
        if let Some(moved) = self.ids.get(at) {
            if let Some(slot) = self.index.get_mut(moved) {
                *slot = at;
            }
        }
        Some(id)
    }
}

/// The leader's soft state for one term.
pub struct Soft {
    pub term: u64,
    pub agents: HashMap<String, AgentSession>,
    pub frameworks: HashMap<String, FrameworkSession>,
    pub offers: HashMap<String, OfferRecord>,
    /// Outstanding offered resources per agent.
    pub offered: HashMap<String, Resources>,
    /// Resources of accepted launches not yet committed, per agent: not free, not offered,
    /// not yet in the replicated `used`. Without this, the allocator would offer them again
    /// between an accept and its commit.
    pub launching: HashMap<String, Resources>,
    /// Framework → agent → until when that agent is not offered to that framework.
    pub filters: HashMap<String, HashMap<String, Instant>>,
    /// Outstanding offered resources per framework (the sum of its offers).
    pub offered_to: HashMap<String, Resources>,
    /// Agents whose free resources may have grown since the last pass: the candidates of
    /// the next incremental pass.
    pub dirty: Touched,
    /// Set when something other than an agent's free resources changed (a framework came or
    /// revived, tasks were killed in bulk): the next pass looks at every agent.
    pub full_pass: bool,
    /// The sum of every connected, active agent's resources: summed on every full pass,
    /// kept up to date between them as agents connect and go (a registration storm after a
    /// failover would otherwise sum ten thousand agents on every pass).
    total: Option<Resources>,
    pub suppressed: HashSet<String>,
    /// When this leader's term began (agents and frameworks must come back after it).
    pub since: Instant,
    /// When an agent's or framework's session with this leader ended.
    pub agent_gone_at: HashMap<String, Instant>,
    pub framework_gone_at: HashMap<String, Instant>,
    /// Timeouts being committed, so that each fires once.
    pub firing: HashSet<String>,
    /// Launches accepted and not yet reported on (the bound on offers).
    pub launches: Launches,
    /// Whether "every active agent is attached" was logged in this term.
    all_agents_back: bool,
    next_offer: u64,
    next_session: u64,
    last_resend: Instant,
    last_staging_resend: Instant,
    /// When retention was last considered, and whether a `CollectGarbage` is in flight.
    last_gc: Instant,
    collecting: bool,
}

impl Soft {
    pub fn new(term: u64) -> Self {
        Soft {
            term,
            agents: HashMap::new(),
            frameworks: HashMap::new(),
            offers: HashMap::new(),
            offered: HashMap::new(),
            launching: HashMap::new(),
            filters: HashMap::new(),
            offered_to: HashMap::new(),
            dirty: Touched::default(),
            full_pass: true,
            total: None,
            suppressed: HashSet::new(),
            since: Instant::now(),
            agent_gone_at: HashMap::new(),
            framework_gone_at: HashMap::new(),
            firing: HashSet::new(),
            launches: Launches::default(),
            all_agents_back: false,
            next_offer: 0,
            next_session: 0,
            last_resend: Instant::now(),
            last_staging_resend: Instant::now(),
            last_gc: Instant::now(),
            collecting: false,
        }
    }

    pub fn next_session(&mut self) -> u64 {
        self.next_session += 1;
        self.next_session
    }

    /// Remove an outstanding offer and return its resources to the agent's pool.
    pub fn take_offer(&mut self, offer_id: &str) -> Option<OfferRecord> {
        let offer = self.offers.remove(offer_id)?;
        if let Some(o) = self.offered.get_mut(&offer.agent_id) {
            *o = o.checked_sub(&offer.resources).unwrap_or_default();
        }
        if let Some(o) = self.offered_to.get_mut(&offer.framework_id) {
            *o = o.checked_sub(&offer.resources).unwrap_or_default();
        }
        self.dirty.insert(&offer.agent_id);
        Some(offer)
    }

    /// Record a new outstanding offer.
    fn add_offer(&mut self, offer_id: String, offer: OfferRecord) {
        let o = self.offered.entry(offer.agent_id.clone()).or_default();
        *o = o.checked_add(&offer.resources).unwrap_or_else(|_| o.clone());
        let o = self.offered_to.entry(offer.framework_id.clone()).or_default();
        *o = o.checked_add(&offer.resources).unwrap_or_else(|_| o.clone());
        self.offers.insert(offer_id, offer);
    }

    /// The agent's free resources may have grown (a task ended, an offer came back).
    pub fn touch_agent(&mut self, agent_id: &str) {
        self.dirty.insert(agent_id);
    }

    /// Attach an agent's session (replacing an older one of the same agent).
    pub fn add_agent(&mut self, agent_id: &str, session: AgentSession) {
        let added = session.resources.clone();
        if let Some(old) = self.agents.insert(agent_id.to_string(), session) {
            tracing::info!(%agent_id, "agent reconnected; replacing its old stream");
            self.adjust_total(|t| t.checked_sub(&old.resources).ok());
        }
        self.adjust_total(|t| t.checked_add(&added).ok());
        self.touch_agent(agent_id);
    }

    /// The one way an agent's session with this leader ends, whoever notices (its stream
    /// closed, it missed its pings, a message to it could not be queued): the session is
    /// removed, its offers rescinded and the moment recorded, so that the agent is marked
    /// unreachable only after the ping timeout from now. Returns the session, or None if
    /// the agent had none.
    pub fn end_agent_session(&mut self, agent_id: &str, now: Instant) -> Option<AgentSession> {
        let gone = self.agents.remove(agent_id)?;
        self.adjust_total(|t| t.checked_sub(&gone.resources).ok());
        self.agent_gone_at.insert(agent_id.to_string(), now);
        self.rescind_agent_offers(agent_id);
        Some(gone)
    }

    /// The one way a framework's session with this leader ends, whoever notices (its stream
    /// closed, or an event to it could not be queued): the session is removed, its offers
    /// dropped (there is no stream to rescind them on) and the moment recorded, so that its
    /// failover timeout counts from now. Returns the session, or None if it had none.
    pub fn end_framework_session(&mut self, framework_id: &str, now: Instant) -> Option<FrameworkSession> {
        let gone = self.frameworks.remove(framework_id)?;
        self.framework_gone_at.insert(framework_id.to_string(), now);
        self.drop_framework_offers(framework_id);
        Some(gone)
    }

    /// Update the cluster total; if it cannot be (it would not add up), the next pass sums
    /// it again.
    fn adjust_total(&mut self, f: impl FnOnce(&Resources) -> Option<Resources>) {
        self.total = self.total.as_ref().and_then(f);
    }

    /// Do not offer `agent_id` to `framework_id` until `until`.
    pub fn add_filter(&mut self, framework_id: &str, agent_id: &str, until: Instant) {
        self.filters
            .entry(framework_id.to_string())
            .or_default()
            .insert(agent_id.to_string(), until);
    }

    /// Whether `agent_id` is filtered for `framework_id` at `now`.
    fn is_filtered(&self, framework_id: &str, agent_id: &str, now: Instant) -> bool {
        self.filters
            .get(framework_id)
            .and_then(|f| f.get(agent_id))
            .is_some_and(|until| *until > now)
    }

    /// Reserve `r` on `agent_id` for a launch being committed.
    pub fn reserve_launch(&mut self, agent_id: &str, r: &Resources) {
        let e = self.launching.entry(agent_id.to_string()).or_default();
        *e = e.checked_add(r).unwrap_or_else(|_| e.clone());
    }

    /// Release a reservation once the launch is committed (then in `used`) or refused.
    pub fn release_launch(&mut self, agent_id: &str, r: &Resources) {
        if let Some(e) = self.launching.get_mut(agent_id) {
            *e = e.checked_sub(r).unwrap_or_default();
        }
        self.touch_agent(agent_id);
    }

    /// Drop every offer of `framework_id` (its stream is gone: no RESCIND to send).
    pub fn drop_framework_offers(&mut self, framework_id: &str) {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.framework_id == framework_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.take_offer(&id);
        }
    }

    /// Rescind every offer of `agent_id` (the agent went away).
    pub fn rescind_agent_offers(&mut self, agent_id: &str) {
        self.rescind_where(|o| o.agent_id == agent_id);
    }

    /// Rescind the offers matching `pred`: their resources return to the pool and their
    /// frameworks are told.
    fn rescind_where(&mut self, pred: impl Fn(&OfferRecord) -> bool) {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(o) = self.take_offer(&id) {
                self.send_framework(
                    &o.framework_id,
                    event(v1::event::Event::Rescind(v1::Rescind { offer_id: id })),
                );
            }
        }
    }

    /// Queue an event for a framework; a framework whose stream is full or closed is dropped
    /// (it will re-subscribe). Returns whether it was queued.
    pub fn send_framework(&mut self, framework_id: &str, ev: v1::Event) -> bool {
        let Some(s) = self.frameworks.get(framework_id) else {
            return false;
        };
        if s.tx.try_send(Ok(ev)).is_ok() {
            return true;
        }
        tracing::warn!(
            framework_id,
            "framework stream full or closed; dropping the subscription"
        );
        self.end_framework_session(framework_id, Instant::now());
        false
    }

    /// Queue a message for an agent, stamped with this leader's term.
    pub fn send_agent(&mut self, agent_id: &str, message: v1::master_message::Message) -> bool {
        let Some(s) = self.agents.get(agent_id) else {
            return false;
        };
        let msg = v1::MasterMessage {
            term: self.term,
            message: Some(message),
        };
        if s.tx.try_send(Ok(msg)).is_ok() {
            return true;
        }
        tracing::warn!(agent_id, "agent stream full or closed; dropping the connection");
        self.end_agent_session(agent_id, Instant::now());
        false
    }

    /// The term an offer id was made in (`O<term>-<seq>`), if it is one of ours.
    pub fn offer_term(offer_id: &str) -> Option<u64> {
        offer_id.strip_prefix('O')?.split_once('-')?.0.parse().ok()
    }

    fn new_offer_id(&mut self) -> String {
        self.next_offer += 1;
        format!("O{}-{}", self.term, self.next_offer)
    }
}

pub fn event(e: v1::event::Event) -> v1::Event {
    v1::Event { event: Some(e) }
}

/// Watch Raft and keep [`Soft`] in step with leadership. Runs for the life of the master.
///
/// Leadership is established only after a barrier: an empty entry of the new term,
/// committed and applied. Before it, the applied state may lack entries that were
/// committed under the previous leader (a restarted master can even resume its old term
/// at once from its stored vote, with its commit index behind); with it, the leader-only
/// subsystems and every read see everything acknowledged before (Raft's rule that a leader
/// commits an entry of its own term before it serves; Nomad's barrier on leadership).
pub async fn run_leadership(shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut metrics = shared.raft.metrics();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(shared.config.id),
                m.current_term,
            )
        };
        let current = shared
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.term);
        if leading && current != Some(term) {
            if current.is_some() {
                *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            let (elected, applied_then, log_then) = {
                let m = shared.raft.metrics().borrow().clone();
                (
                    Instant::now(),
                    m.last_applied.map_or(0, |l| l.index),
                    m.last_log_index.unwrap_or(0),
                )
            };
            match barrier(&shared).await {
                Ok(()) if shared.is_leader() && shared.raft.metrics().borrow().current_term == term => {
                    *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(Soft::new(term));
                    tracing::info!(
                        term,
                        barrier_ms = elected.elapsed().as_millis() as u64,
                        applied_at_election = applied_then,
                        log_at_election = log_then,
                        "leadership established: leader-only subsystems started"
                    );
                    tokio::spawn(run_allocator(shared.clone(), term, stop.clone()));
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::info!(term, error = %e, "leadership barrier not committed; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(BARRIER_RETRY) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
            continue;
        } else if !leading && current.is_some() {
            *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(term, "leadership lost: leader-only subsystems stopped");
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Pause before trying a leadership barrier again (no quorum yet).
const BARRIER_RETRY: Duration = Duration::from_millis(50);

/// Commit and apply an empty entry of the current term.
async fn barrier(shared: &Shared) -> Result<(), String> {
    let write = shared.raft.client_write(crate::types::Proposal::of(Vec::new()));
    match tokio::time::timeout(crate::node::WRITE_TIMEOUT, write).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not committed within {:?}", crate::node::WRITE_TIMEOUT)),
    }
}

/// The allocation loop of one leader term. A pass runs on every relevant event, events
/// arriving within [`PASS_COALESCE`] of each other sharing one pass; a pass looks only at
/// the agents whose free resources changed. Every `allocation_interval` a full pass looks
/// at every agent and runs the timers (filters, offer and agent/framework timeouts).
async fn run_allocator(shared: Shared, term: u64, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.allocation_interval;
    let notify: Arc<Notify> = shared.allocate_now.clone();
    let mut next_full = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_full) => {}
            _ = notify.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = tokio::time::Instant::now();
        let full = now >= next_full;
        if full {
            next_full = now + interval;
        }
        match allocation_pass(&shared, term, full) {
            Pass::Ended => {
                tracing::debug!(term, "allocator stopped with the term");
                return;
            }
            // Try again after the pause below.
            Pass::Held => notify.notify_one(),
            Pass::Done => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(PASS_COALESCE) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Offers also wait while more writes than this are queued for commit. Every offer turns into
/// launches, status updates and acknowledgements to commit; offering faster than they
/// commit only lengthens the queue, and with it every launch's latency. Waiting keeps the
/// queue short: the cluster runs at the rate it commits, with launches taking a few commit
/// rounds each.
pub const OFFER_HOLD_BACKLOG: usize = 1024;

/// What an allocation pass did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    Done,
    /// Offers were held back (commit backlog); the touched agents wait for the next pass.
    Held,
    /// This master no longer leads the term.
    Ended,
}

/// Events closer together than this share one allocation pass: under load a pass per
/// accept or status update would spend the leader's CPU re-deciding the same offers.
pub const PASS_COALESCE: Duration = Duration::from_millis(5);

/// One pass. A full pass expires filters and offers, resends unacknowledged updates when
/// due, fires timeouts and considers every agent; otherwise only the agents touched since
/// the last pass are offered.
pub fn allocation_pass(shared: &Shared, term: u64, full: bool) -> Pass {
    let state = shared.state.read();
    let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
    let Some(soft) = guard.as_mut().filter(|s| s.term == term) else {
        return Pass::Ended;
    };
    let now = Instant::now();
    let full = full || std::mem::take(&mut soft.full_pass);
    let mut due = Vec::new();
    if full {
        soft.launches.expire(now);
        soft.filters.retain(|_, agents| {
            agents.retain(|_, until| *until > now);
            !agents.is_empty()
        });
        if let Some(timeout) = shared.config.offer_timeout {
            soft.rescind_where(|o| now - o.created >= timeout);
        }
        if now - soft.last_resend >= STATUS_RESEND_INTERVAL {
            soft.last_resend = now;
            for (framework_id, session) in &soft.frameworks {
                start_resend(shared, framework_id, session);
            }
        }
        if now - soft.last_staging_resend >= STAGING_RESEND_AFTER {
            soft.last_staging_resend = now;
            resend_stale_launches(&state.app, soft, crate::node::now_ms());
        }
        due = due_timeouts(&state.app, soft, &shared.config, now);
        if now - soft.last_gc >= GC_INTERVAL && !soft.collecting {
            soft.last_gc = now;
            let gc = gc_command(&shared.config);
            let now_ms = crate::node::now_ms();
            if state.app.garbage_due(&gc, now_ms) {
                soft.collecting = true;
                let going = state
                    .app
                    .agents_due(gc.agent_gc_age_ms, now_ms)
                    .into_iter()
                    .filter(|id| {
                        state
                            .app
                            .agents
                            .get(id)
                            .is_some_and(|a| a.state == AgentState::Unreachable)
                    })
                    .collect();
                tokio::spawn(collect_garbage(shared.clone(), term, gc, going));
            }
        }
    }
    soft.launches.adapt(now);
    let room = soft.launches.agents_to_offer();
    let held = room == 0 || shared.commit_backlog() > OFFER_HOLD_BACKLOG;
    if held {
        // A full pass held back looks at every agent next time too.
        soft.full_pass |= full;
    } else {
        offer(&state.app, soft, full, now, room);
    }
    drop(guard);
    drop(state);
    for t in due {
        tokio::spawn(fire_timeout(shared.clone(), t));
    }
    if held {
        Pass::Held
    } else {
        Pass::Done
    }
}

/// How often the leader considers retention (a cheap look at every framework and agent;
/// a `CollectGarbage` is proposed only when it would remove something). Under full churn the
/// state holds at most the retained records plus what finishes in this time.
pub const GC_INTERVAL: Duration = Duration::from_secs(1);

/// The retention limits of this master's flags, as the command carries them.
pub fn gc_command(config: &crate::config::Config) -> v1::CollectGarbage {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    v1::CollectGarbage {
        max_completed_tasks_per_framework: config.max_completed_tasks_per_framework,
        completed_task_max_age_ms: config.completed_task_max_age.map_or(0, ms),
        max_completed_frameworks: config.max_completed_frameworks,
        agent_gc_age_ms: config.agent_gc_age.map_or(0, ms),
    }
}

/// Commit one `CollectGarbage`; then tell the frameworks of the tasks that went
/// TASK_GONE with agents that were unreachable too long (`going`).
async fn collect_garbage(shared: Shared, term: u64, gc: v1::CollectGarbage, going: Vec<String>) {
    let before = shared.state.read().app.retained();
    match shared.write(v1::command::Kind::CollectGarbage(gc)).await {
        Ok(Outcome::Applied) => {
            let after = shared.state.read().app.retained();
            tracing::debug!(?before, ?after, "retention applied");
            for agent_id in &going {
                tracing::warn!(%agent_id, "agent unreachable past --agent-gc-age: it is gone, its tasks TASK_GONE");
                forward_task_updates(&shared, agent_id);
            }
        }
        Ok(Outcome::Rejected(why)) => tracing::warn!(why, "retention refused"),
        Err(e) => tracing::debug!(error = %e.message(), "retention not committed"),
    }
    if let Some(soft) = shared.leader.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if soft.term == term {
            soft.collecting = false;
        }
    }
}

enum Timeout {
    AgentUnreachable(String),
    FrameworkFailover(String),
}

/// Agents and frameworks that stayed away too long (Mesos' agent ping / re-registration
/// timeouts and framework failover timeout). Time is this leader's: it counts from when
/// the session ended, or from the start of the term for ones that never came back to it.
fn due_timeouts(state: &ClusterState, soft: &mut Soft, config: &crate::config::Config, now: Instant) -> Vec<Timeout> {
    let mut due = Vec::new();
    let mut away = 0;
    for a in state
        .agents
        .values()
        .filter(|a| a.state == AgentState::Active && !soft.agents.contains_key(&a.id))
    {
        away += 1;
        let (since, limit) = match soft.agent_gone_at.get(&a.id) {
            Some(t) => (*t, config.agent_ping_timeout),
            None => (soft.since, config.agent_reregister_timeout),
        };
        if now.duration_since(since) > limit && soft.firing.insert(format!("agent/{}", a.id)) {
            due.push(Timeout::AgentUnreachable(a.id.clone()));
        }
    }
    if away == 0 && !soft.all_agents_back {
        soft.all_agents_back = true;
        tracing::info!(
            agents = soft.agents.len(),
            after = ?soft.since.elapsed(),
            "every active agent is attached to this leader"
        );
    }
    for f in state
        .frameworks
        .values()
        .filter(|f| f.state != FrameworkState::TornDown && !soft.frameworks.contains_key(&f.id))
    {
        let since = soft.framework_gone_at.get(&f.id).copied().unwrap_or(soft.since);
        if now.duration_since(since) > Duration::from_millis(f.failover_timeout_ms)
            && soft.firing.insert(format!("framework/{}", f.id))
        {
            due.push(Timeout::FrameworkFailover(f.id.clone()));
        }
    }
    due
}

async fn fire_timeout(shared: Shared, t: Timeout) {
    let key = match &t {
        Timeout::AgentUnreachable(id) => {
            tracing::warn!(agent_id = %id, "agent did not come back in time: marking it unreachable");
            let kind = v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: id.clone() });
            match shared.write(kind).await {
                Ok(_) => forward_task_updates(&shared, id),
                Err(e) => tracing::warn!(agent_id = %id, error = %e.message(), "could not mark the agent unreachable"),
            }
            format!("agent/{id}")
        }
        Timeout::FrameworkFailover(id) => {
            tracing::warn!(framework_id = %id, "framework did not come back within its failover timeout: tearing it down");
            if let Err(e) = crate::service::scheduler::teardown(&shared, id, "failover timeout expired").await {
                tracing::warn!(framework_id = %id, error = %e.message(), "teardown after failover timeout failed");
            }
            format!("framework/{id}")
        }
    };
    if let Some(soft) = shared.leader.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        soft.firing.remove(&key);
        soft.full_pass = true;
    }
    shared.allocate_now.notify_one();
}

/// Send again the launches committed at least [`STAGING_RESEND_AFTER`] ago whose agent has
/// reported nothing on them, if the agent is connected.
fn resend_stale_launches(state: &ClusterState, soft: &mut Soft, now_ms: i64) {
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
                framework: None,
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

/// Send the frameworks the latest unacknowledged update of each task on `agent_id`.
pub fn forward_task_updates(shared: &Shared, agent_id: &str) {
    let state = shared.state.read();
    let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
    let Some(soft) = guard.as_mut() else { return };
    for t in state.app.tasks_on(agent_id) {
        if let Some(u) = t.unacked.last() {
            soft.send_framework(
                &t.framework_id,
                event(v1::event::Event::Update(v1::Update {
                    status: Some(t.wire_status(u)),
                })),
            );
        }
    }
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

async fn resend(shared: Shared, framework_id: String, tx: mpsc::Sender<v1::Event>, running: Arc<AtomicBool>) {
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

/// Largest encoded Offers event sent to a framework: a pass over thousands of agents is split
/// into several events so that none comes near the gRPC message limit that frameworks decode.
const OFFER_EVENT_BYTES: usize = corral_proto::MAX_MESSAGE_BYTES / 8;

/// Split one pass's offers for a framework into events of at most `OFFER_EVENT_BYTES`.
fn offer_events(offers: Vec<v1::Offer>) -> Vec<Vec<v1::Offer>> {
    use prost::Message;
    let mut events = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for o in offers {
        let len = o.encoded_len() + 8;
        if !current.is_empty() && bytes + len > OFFER_EVENT_BYTES {
            events.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(o);
    }
    if !current.is_empty() {
        events.push(current);
    }
    events
}

/// Offer the free resources of at most `room` agents (the touched ones, or all on a full
/// pass); agents left over wait for the next pass.
fn offer(state: &ClusterState, soft: &mut Soft, full: bool, now: Instant, room: usize) {
    if soft.frameworks.is_empty() || soft.agents.is_empty() {
        soft.dirty.clear();
        return;
    }
    let active = |id: &str| state.agents.get(id).filter(|a| a.state == AgentState::Active);
    if full || soft.total.is_none() {
        // Summed from scratch: also catches an agent that is connected but no longer
        // active in the replicated state.
        let total = soft
            .agents
            .keys()
            .filter_map(|id| active(id))
            .fold(Resources::new(), |t, a| t.checked_add(&a.resources).unwrap_or(t));
        soft.total = Some(total);
    }
    if full {
        for id in soft.agents.keys() {
            soft.dirty.insert(id);
        }
    }
    let total = soft.total.clone().unwrap_or_default();
    // Touched agents drawn at random, as Mesos orders them, so no agent is always first in
    // line; only as many as the pass may offer are drawn and worked out, the others wait
    // for the next pass at no cost to this one.
    let mut rng = rand::rng();
    let mut agents: Vec<AgentView> = Vec::new();
    while agents.len() < room {
        let Some(id) = soft.dirty.draw(&mut rng) else {
            break;
        };
        if !soft.agents.contains_key(&id) {
            continue;
        }
        let Some(a) = active(&id) else {
            continue;
        };
        let free = (|| {
            let mut free = a.resources.checked_sub(&a.used).ok()?;
            if let Some(o) = soft.offered.get(&a.id) {
                free = free.checked_sub(o).ok()?;
            }
            if let Some(l) = soft.launching.get(&a.id) {
                free = free.checked_sub(l).ok()?;
            }
            crate::allocator::offerable(&free).then_some(free)
        })();
        if let Some(free) = free {
            agents.push(AgentView { id, free });
        }
    }
    if agents.is_empty() {
        return;
    }
    let frameworks: Vec<FrameworkView> = soft
        .frameworks
        .keys()
        .filter_map(|id| state.frameworks.get(id))
        .filter(|f| f.state == FrameworkState::Connected)
        .map(|f| {
            let used = state.framework_used.get(&f.id).cloned().unwrap_or_default();
            let allocation = match soft.offered_to.get(&f.id) {
                Some(offered) => used.checked_add(offered).unwrap_or(used),
                None => used,
            };
            // Whichever is smaller: the framework's filters or the candidate agents.
            let filtered = match soft.filters.get(&f.id) {
                None => HashSet::new(),
                Some(filters) if filters.len() <= agents.len() => filters
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(a, _)| a.clone())
                    .collect(),
                Some(_) => agents
                    .iter()
                    .filter(|a| soft.is_filtered(&f.id, &a.id, now))
                    .map(|a| a.id.clone())
                    .collect(),
            };
            FrameworkView {
                id: f.id.clone(),
                weight: state.weight(&f.role),
                allocation,
                active: !soft.suppressed.contains(&f.id),
                filtered,
            }
        })
        .collect();
    let decided = allocate(&total, &agents, &frameworks);
    let mut batches: HashMap<String, Vec<v1::Offer>> = HashMap::new();
    for d in decided {
        let framework_id = frameworks[d.framework].id.clone();
        let agent_id = agents[d.agent].id.clone();
        let Some(agent) = state.agents.get(&agent_id) else {
            continue;
        };
        let offer_id = soft.new_offer_id();
        let wire = v1::Offer {
            offer_id: offer_id.clone(),
            framework_id: framework_id.clone(),
            agent_id: agent_id.clone(),
            hostname: agent.hostname.clone(),
            resources: resources_to_wire(&d.resources),
            attributes: corral_proto::convert::attributes_to_wire(&agent.attributes),
            leader_term: soft.term,
        };
        soft.add_offer(
            offer_id,
            OfferRecord {
                framework_id: framework_id.clone(),
                agent_id,
                resources: d.resources,
                created: now,
            },
        );
        batches.entry(framework_id).or_default().push(wire);
    }
    for (f, offers) in batches {
        tracing::debug!(framework_id = %f, offers = offers.len(), "sending offers");
        for chunk in offer_events(offers) {
            if !soft.send_framework(&f, event(v1::event::Event::Offers(v1::Offers { offers: chunk }))) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(framework_failover_s: f64) -> ClusterState {
        let mut state = ClusterState::default();
        let commands = [
            v1::command::Kind::RegisterAgent(v1::RegisterAgent {
                agent_id: "a1".into(),
                info: Some(v1::AgentInfo {
                    hostname: "h1".into(),
                    resources: vec![v1::Resource {
                        name: "cpus".into(),
                        value: Some(v1::resource::Value::Scalar(4.0)),
                    }],
                    ..Default::default()
                }),
            }),
            v1::command::Kind::RegisterFramework(v1::RegisterFramework {
                framework_id: "f1".into(),
                info: Some(v1::FrameworkInfo {
                    name: "fw".into(),
                    failover_timeout_seconds: framework_failover_s,
                    ..Default::default()
                }),
            }),
        ];
        for kind in commands {
            let c = v1::Command {
                timestamp_ms: 1,
                kind: Some(kind),
            };
            assert_eq!(state.apply_command(&c), crate::types::Outcome::Applied);
        }
        state
    }

    fn config() -> crate::config::Config {
        use clap::Parser;
        crate::config::MasterArgs::try_parse_from([
            "corral-master",
            "--id",
            "1",
            "--data-dir",
            "/nonexistent",
            "--agent-ping-timeout",
            "2s",
            "--agent-reregister-timeout",
            "1s",
        ])
        .expect("flags parse")
        .validate()
        .expect("flags are valid")
    }

    /// Issue 17's session-end bug: a session dropped because its stream was full or closed
    /// recorded no end, so the timeout counted from the start of the term and fired at
    /// once in a term older than the timeout. No runtime needed: channels and clocks only.
    #[test]
    fn a_session_ended_by_a_failed_send_counts_its_timeout_from_then() {
        let state = state_with(4.0);
        let config = config();
        let mut soft = Soft::new(3);
        let now = Instant::now();
        // The term began 10 s ago: more than either timeout (the clock is monotonic since
        // boot, so not much further back).
        soft.since = now.checked_sub(Duration::from_secs(10)).expect("10 s after boot");

        let (session, events, _gone) = FrameworkSession::new("stream-1".into());
        soft.frameworks.insert("f1".into(), session);
        let (tx, rx) = mpsc::channel(4);
        soft.add_agent(
            "a1",
            AgentSession {
                session: 1,
                tx,
                resources: Resources::new(),
            },
        );
        assert!(
            due_timeouts(&state, &mut soft, &config, now).is_empty(),
            "both attached"
        );

        // Both streams close; the next message to each fails to queue and ends the session.
        drop(events);
        drop(rx);
        let heartbeat = event(v1::event::Event::Heartbeat(v1::Heartbeat {}));
        assert!(!soft.send_framework("f1", heartbeat));
        assert!(!soft.send_agent("a1", v1::master_message::Message::Ping(v1::Ping { nonce: 1 })));
        assert!(soft.frameworks.is_empty() && soft.agents.is_empty());
        let ended = Instant::now();

        let due = |soft: &mut Soft, at: Instant| -> Vec<String> {
            let mut due: Vec<String> = due_timeouts(&state, soft, &config, at)
                .into_iter()
                .map(|t| match t {
                    Timeout::AgentUnreachable(id) => format!("agent/{id}"),
                    Timeout::FrameworkFailover(id) => format!("framework/{id}"),
                })
                .collect();
            soft.firing.clear();
            due.sort();
            due
        };
        assert!(due(&mut soft, ended).is_empty(), "nothing is due when the sessions end");
        assert!(
            due(&mut soft, ended + Duration::from_millis(1500)).is_empty(),
            "the agent has its ping timeout (2 s) from the end of its session"
        );
        assert_eq!(due(&mut soft, ended + Duration::from_millis(2500)), ["agent/a1"]);
        assert_eq!(
            due(&mut soft, ended + Duration::from_millis(3500)),
            ["agent/a1"],
            "the framework has its failover timeout (4 s) from the end of its session"
        );
        assert_eq!(
            due(&mut soft, ended + Duration::from_millis(4500)),
            ["agent/a1", "framework/f1"]
        );
    }

    #[test]
    fn offer_ids_carry_the_term() {
        let mut s = Soft::new(7);
        let id = s.new_offer_id();
        assert_eq!(Soft::offer_term(&id), Some(7));
        assert_eq!(Soft::offer_term("garbage"), None);
        assert_eq!(Soft::offer_term("O-1"), None);
    }

    #[test]
    fn touched_agents_are_drawn_once_each_in_varying_order() {
        let mut t = Touched::default();
        for id in ["a", "b", "c", "b", "d", "a"] {
            t.insert(id);
        }
        assert_eq!(t.len(), 4);
        assert!(t.contains("c"));
        let mut rng = rand::rng();
        let mut drawn = Vec::new();
        while let Some(id) = t.draw(&mut rng) {
            assert!(!t.contains(&id), "{id} drawn but still a member");
            drawn.push(id);
        }
        assert!(t.is_empty());
        drawn.sort();
        assert_eq!(drawn, ["a", "b", "c", "d"]);
        // Touched again after being drawn: a member again.
        t.insert("b");
        assert!(t.contains("b"));

        // Every agent comes first sometimes: the order is random, not insertion order.
        let mut first = HashSet::new();
        for _ in 0..200 {
            let mut t = Touched::default();
            for id in ["a", "b", "c", "d"] {
                t.insert(id);
            }
            first.extend(t.draw(&mut rng));
        }
        assert_eq!(first.len(), 4, "first drawn: {first:?}");
    }

    #[test]
    fn the_launch_limit_follows_the_commit_latency() {
        let t0 = Instant::now();
        let mut l = Launches::default();
        let start = l.limit();
        // Room for the limit's worth of tasks, in offers of the average accept's size.
        l.start("f", ["a", "b", "c", "d"].into_iter(), t0);
        assert_eq!(l.len(), 4);
        assert_eq!(l.agents_to_offer(), (start - 4) / 4);
        // Fast commits, but the limit held nothing back: it stays.
        let fast = LAUNCH_COMMIT_TARGET / 4;
        for _ in 0..LIMIT_WINDOW_SAMPLES {
            l.committed(fast);
        }
        l.adapt(t0 + LIMIT_WINDOW);
        assert_eq!(l.limit(), start);
        // Fast commits while the limit held offers back: it grows.
        let ids: Vec<String> = (0..start).map(|i| format!("t{i}")).collect();
        l.start("f", ids.iter().map(String::as_str), t0);
        assert_eq!(l.agents_to_offer(), 0, "the limit is reached");
        for _ in 0..LIMIT_WINDOW_SAMPLES {
            l.committed(fast);
        }
        l.adapt(t0 + LIMIT_WINDOW * 2);
        let grown = l.limit();
        assert!(grown > start, "{grown} > {start}");
        // Too few samples or too soon: nothing changes.
        l.committed(LAUNCH_COMMIT_TARGET * 10);
        l.adapt(t0 + LIMIT_WINDOW * 3);
        assert_eq!(l.limit(), grown);
        // Slow commits (the 90th percentile over the target): it shrinks, down to the floor.
        for round in 4..40 {
            for _ in 0..LIMIT_WINDOW_SAMPLES {
                l.committed(LAUNCH_COMMIT_TARGET * 2);
            }
            l.adapt(t0 + LIMIT_WINDOW * round);
        }
        assert_eq!(l.limit(), MIN_LAUNCHES_IN_FLIGHT);
        // A launch reported on, or never committed, leaves; a stale one expires.
        l.done("f", "a");
        assert_eq!(l.len(), start + 3);
        l.expire(t0 + LAUNCH_TTL);
        assert!(l.is_empty(), "launches older than the TTL do not hold the limit");
    }

    fn heartbeat() -> v1::Event {
        event(v1::event::Event::Heartbeat(v1::Heartbeat {}))
    }

    fn update(task: &str) -> v1::Event {
        event(v1::event::Event::Update(v1::Update {
            status: Some(v1::TaskStatus {
                task_id: task.into(),
                ..Default::default()
            }),
        }))
    }

    /// Live events go first and never wait behind resent updates; resent updates are sent
    /// as the framework reads (the resender waits for room instead of overflowing the
    /// stream); the stream ends with the live channel; dropping it tells the watcher.
    #[tokio::test]
    async fn a_subscription_streams_live_events_first_and_resends_at_the_readers_pace() {
        use tokio_stream::StreamExt;
        let (session, mut events, mut gone) = FrameworkSession::new("s".into());
        // A resender with more to send than the channel holds.
        let resend_tx = session.resend_tx.clone();
        let resender = tokio::spawn(async move {
            for i in 0..RESEND_CAPACITY * 3 {
                if resend_tx.send(update(&format!("t{i}"))).await.is_err() {
                    return i;
                }
            }
            RESEND_CAPACITY * 3
        });
        while session.resend_tx.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(!resender.is_finished(), "the resender waits for the reader");
        session.tx.try_send(Ok(heartbeat())).unwrap();
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(first, heartbeat(), "a live event overtakes queued resends");
        let mut resent = 0;
        while resent < RESEND_CAPACITY * 3 {
            let ev = events.next().await.unwrap().unwrap();
            assert_eq!(ev, update(&format!("t{resent}")), "resent in order");
            resent += 1;
        }
        assert_eq!(resender.await.unwrap(), RESEND_CAPACITY * 3);
        assert!(gone.try_recv().is_err(), "the framework is still reading");
        // Leadership lost (the session dropped): the stream ends, queued resends or not.
        session.resend_tx.try_send(update("late")).unwrap();
        drop(session);
        assert!(events.next().await.is_none());
        drop(events);
        assert!(gone.await.is_err(), "dropping the stream tells the watcher");
    }

    #[test]
    fn a_large_offer_pass_is_split_into_bounded_events() {
        use prost::Message;
        let offers: Vec<v1::Offer> = (0..20_000)
            .map(|i| v1::Offer {
                offer_id: format!("O-3-{i}"),
                framework_id: "fw-0123456789abcdef".into(),
                agent_id: format!("agent-{i:08}-0123456789abcdef"),
                hostname: format!("host-{i}.rack-{}.example.internal", i % 40),
                leader_term: 3,
                ..Default::default()
            })
            .collect();
        let events = offer_events(offers.clone());
        assert!(events.len() > 1, "20,000 offers should not fit one event");
        for e in &events {
            let size = v1::Offers { offers: e.clone() }.encoded_len();
            assert!(size <= OFFER_EVENT_BYTES, "event of {size} bytes");
        }
        let flattened: Vec<v1::Offer> = events.into_iter().flatten().collect();
        assert_eq!(flattened, offers, "every offer is sent once, in order");
        assert!(offer_events(Vec::new()).is_empty());
    }
}

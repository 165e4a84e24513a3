//! Leader-only soft state and subsystems (STYLE.md 5).
//!
//! Everything here can be rebuilt from the replicated state, so none of it is replicated:
//! connected agent and framework streams, outstanding offers, decline filters, suppressed
//! frameworks, timers. [`run_leadership`] creates a fresh [`Soft`] when this master becomes
//! leader of a term and drops it when leadership is lost; dropping it closes every stream,
//! so agents and frameworks go and find the new leader.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::convert::resources_to_wire;
use corral_proto::resources::Resources;
use corral_proto::v1;
use openraft::ServerState;
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, watch, Notify};
use tonic::Status;

use crate::allocator::{allocate, AgentView, FrameworkView};
use crate::node::Shared;
use crate::state::{AgentState, ClusterState, FrameworkState};

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

pub type AgentTx = mpsc::Sender<Result<v1::MasterMessage, Status>>;
pub type FrameworkTx = mpsc::Sender<Result<v1::Event, Status>>;

pub struct AgentSession {
    pub session: u64,
    pub tx: AgentTx,
}

pub struct FrameworkSession {
    pub stream_id: String,
    pub tx: FrameworkTx,
}

pub struct OfferRecord {
    pub framework_id: String,
    pub agent_id: String,
    pub resources: Resources,
    pub created: Instant,
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
    /// (framework, agent) → until when that agent is not offered to that framework.
    pub filters: HashMap<(String, String), Instant>,
    pub suppressed: HashSet<String>,
    /// When this leader's term began (agents and frameworks must come back after it).
    pub since: Instant,
    /// When an agent's or framework's session with this leader ended.
    pub agent_gone_at: HashMap<String, Instant>,
    pub framework_gone_at: HashMap<String, Instant>,
    /// Timeouts being committed, so that each fires once.
    pub firing: HashSet<String>,
    next_offer: u64,
    next_session: u64,
    last_resend: Instant,
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
            suppressed: HashSet::new(),
            since: Instant::now(),
            agent_gone_at: HashMap::new(),
            framework_gone_at: HashMap::new(),
            firing: HashSet::new(),
            next_offer: 0,
            next_session: 0,
            last_resend: Instant::now(),
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
        Some(offer)
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
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.agent_id == agent_id)
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
        self.frameworks.remove(framework_id);
        self.drop_framework_offers(framework_id);
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
        self.agents.remove(agent_id);
        self.rescind_agent_offers(agent_id);
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
            *shared.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(Soft::new(term));
            tracing::info!(term, "leadership established: leader-only subsystems started");
            tokio::spawn(run_allocator(shared.clone(), term, stop.clone()));
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

/// The allocation loop of one leader term: a pass on every relevant event (batched by the
/// `Notify`) and at least every `--allocation-interval`.
async fn run_allocator(shared: Shared, term: u64, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.allocation_interval;
    let notify: Arc<Notify> = shared.allocate_now.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = notify.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !allocation_pass(&shared, term) {
            tracing::debug!(term, "allocator stopped with the term");
            return;
        }
    }
}

/// One pass: expire filters and offers, resend unacknowledged updates when due, then
/// offer free resources in DRF order. Returns false once the term is over.
pub fn allocation_pass(shared: &Shared, term: u64) -> bool {
    let state = shared.state.read();
    let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
    let Some(soft) = guard.as_mut().filter(|s| s.term == term) else {
        return false;
    };
    let now = Instant::now();
    soft.filters.retain(|_, until| *until > now);
    if let Some(timeout) = shared.config.offer_timeout {
        let expired: Vec<String> = soft
            .offers
            .iter()
            .filter(|(_, o)| now - o.created >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(o) = soft.take_offer(&id) {
                soft.send_framework(
                    &o.framework_id,
                    event(v1::event::Event::Rescind(v1::Rescind { offer_id: id })),
                );
            }
        }
    }
    if now - soft.last_resend >= STATUS_RESEND_INTERVAL {
        soft.last_resend = now;
        resend_unacked(&state.app, soft, None);
    }
    let due = due_timeouts(&state.app, soft, &shared.config, now);
    offer(&state.app, soft);
    drop(guard);
    drop(state);
    for t in due {
        tokio::spawn(fire_timeout(shared.clone(), t));
    }
    true
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
    for a in state
        .agents
        .values()
        .filter(|a| a.state == AgentState::Active && !soft.agents.contains_key(&a.id))
    {
        let (since, limit) = match soft.agent_gone_at.get(&a.id) {
            Some(t) => (*t, config.agent_ping_timeout),
            None => (soft.since, config.agent_reregister_timeout),
        };
        if now.duration_since(since) > limit && soft.firing.insert(format!("agent/{}", a.id)) {
            due.push(Timeout::AgentUnreachable(a.id.clone()));
        }
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

/// Send every unacknowledged update again (to one framework, or all connected ones).
pub fn resend_unacked(state: &ClusterState, soft: &mut Soft, only: Option<&str>) {
    let connected: Vec<String> = match only {
        Some(f) => vec![f.to_string()],
        None => soft.frameworks.keys().cloned().collect(),
    };
    let connected: HashSet<String> = connected.into_iter().collect();
    let mut events = Vec::new();
    for t in state
        .tasks
        .values()
        .filter(|t| !t.unacked.is_empty() && connected.contains(&t.framework_id))
    {
        for u in &t.unacked {
            events.push((t.framework_id.clone(), t.wire_status(u)));
        }
    }
    for (f, status) in events {
        soft.send_framework(&f, event(v1::event::Event::Update(v1::Update { status: Some(status) })));
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

fn offer(state: &ClusterState, soft: &mut Soft) {
    if soft.frameworks.is_empty() || soft.agents.is_empty() {
        return;
    }
    let active_agents: Vec<&crate::state::AgentRecord> = soft
        .agents
        .keys()
        .filter_map(|id| state.agents.get(id))
        .filter(|a| a.state == AgentState::Active)
        .collect();
    let total = active_agents
        .iter()
        .fold(Resources::new(), |t, a| t.checked_add(&a.resources).unwrap_or(t));
    let mut agents: Vec<AgentView> = active_agents
        .iter()
        .filter_map(|a| {
            let offered = soft.offered.get(&a.id).cloned().unwrap_or_default();
            let launching = soft.launching.get(&a.id).cloned().unwrap_or_default();
            let free = a
                .resources
                .checked_sub(&a.used)
                .ok()?
                .checked_sub(&offered)
                .ok()?
                .checked_sub(&launching)
                .ok()?;
            Some(AgentView { id: a.id.clone(), free })
        })
        .collect();
    // Agents in random order, as Mesos does, so no agent is always first in line.
    agents.shuffle(&mut rand::rng());
    let mut offered_to: HashMap<&str, Resources> = HashMap::new();
    for o in soft.offers.values() {
        let e = offered_to.entry(o.framework_id.as_str()).or_default();
        *e = e.checked_add(&o.resources).unwrap_or_else(|_| e.clone());
    }
    let mut filtered: HashMap<&str, HashSet<String>> = HashMap::new();
    for (f, a) in soft.filters.keys() {
        filtered.entry(f.as_str()).or_default().insert(a.clone());
    }
    let frameworks: Vec<FrameworkView> = soft
        .frameworks
        .keys()
        .filter_map(|id| state.frameworks.get(id))
        .filter(|f| f.state == FrameworkState::Connected)
        .map(|f| {
            let used = state.framework_used.get(&f.id).cloned().unwrap_or_default();
            let offered = offered_to.get(f.id.as_str()).cloned().unwrap_or_default();
            FrameworkView {
                id: f.id.clone(),
                weight: state.weight(&f.role),
                allocation: used.checked_add(&offered).unwrap_or(used),
                active: !soft.suppressed.contains(&f.id),
                filtered: filtered.remove(f.id.as_str()).unwrap_or_default(),
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
        let o = soft.offered.entry(agent_id.clone()).or_default();
        *o = o.checked_add(&d.resources).unwrap_or_else(|_| o.clone());
        soft.offers.insert(
            offer_id,
            OfferRecord {
                framework_id: framework_id.clone(),
                agent_id,
                resources: d.resources,
                created: Instant::now(),
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

    #[test]
    fn offer_ids_carry_the_term() {
        let mut s = Soft::new(7);
        let id = s.new_offer_id();
        assert_eq!(Soft::offer_term(&id), Some(7));
        assert_eq!(Soft::offer_term("garbage"), None);
        assert_eq!(Soft::offer_term("O-1"), None);
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

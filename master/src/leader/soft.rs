//! The leader's soft state: sessions, offers, filters, reservations; rebuilt each term.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use corral_proto::resources::Resources;
use corral_proto::v1;

use super::*;

/// An offer outstanding with a framework.
pub struct OfferRecord {
    /// The framework it was made to.
    pub framework_id: String,
    /// The agent whose resources it holds.
    pub agent_id: String,
    /// What it holds.
    pub resources: Resources,
    /// When it was made (offer timeout).
    pub created: Instant,
}

/// The agents touched since they were last looked at, handed out in random order one at a
/// time in O(1). A pass that may offer a few agents draws a few, however many thousands
/// are waiting (while agents register, or on a full pass, every agent is).
#[derive(Debug, Default)]
pub struct Touched {
    pub(super) ids: Vec<String>,
    /// Agent id → its place in `ids`.
    pub(super) index: HashMap<String, usize>,
}

impl Touched {
    /// Mark `agent_id` touched (once, however often it is called).
    pub fn insert(&mut self, agent_id: &str) {
        if !self.index.contains_key(agent_id) {
            self.index.insert(agent_id.to_string(), self.ids.len());
            self.ids.push(agent_id.to_string());
        }
    }

    /// Whether `agent_id` is touched.
    #[cfg(test)]
    pub fn contains(&self, agent_id: &str) -> bool {
        self.index.contains_key(agent_id)
    }

    /// How many agents are touched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No agent is touched.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forget every touched agent.
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
    /// The term this soft state belongs to.
    pub term: u64,
    /// Attached agents, by id.
    pub agents: HashMap<String, AgentSession>,
    /// Subscribed frameworks, by id.
    pub frameworks: HashMap<String, FrameworkSession>,
    /// Outstanding offers, by offer id.
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
    pub(super) total: Option<Resources>,
    /// Frameworks that asked for no offers.
    pub suppressed: HashSet<String>,
    /// When this leader's term began (agents and frameworks must come back after it).
    pub since: Instant,
    /// When an agent's or framework's session with this leader ended.
    pub agent_gone_at: HashMap<String, Instant>,
    /// When each framework's session ended in this term (its failover timeout counts from it).
    pub framework_gone_at: HashMap<String, Instant>,
    /// Timeouts being committed, so that each fires once.
    pub firing: HashSet<String>,
    /// Launches accepted and not yet reported on (the bound on offers).
    pub launches: Launches,
    /// Whether "every active agent is attached" was logged in this term.
    pub(super) all_agents_back: bool,
    pub(super) next_offer: u64,
    pub(super) next_session: u64,
    pub(super) last_resend: Instant,
    pub(super) last_staging_resend: Instant,
    /// When retention was last considered, and whether a `CollectGarbage` is in flight.
    pub(super) last_gc: Instant,
    pub(super) collecting: bool,
    /// Allocation passes run in this term, their total time and the last one's.
    pub passes: PassTimes,
}

/// How long allocation passes take (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassTimes {
    /// Passes run.
    pub count: u64,
    /// Their total time, in seconds.
    pub total_seconds: f64,
    /// The last one's, in seconds.
    pub last_seconds: f64,
}

impl PassTimes {
    /// A pass took `took`.
    pub fn record(&mut self, took: std::time::Duration) {
        self.count += 1;
        self.total_seconds += took.as_secs_f64();
        self.last_seconds = took.as_secs_f64();
    }
}

impl Soft {
    /// The empty soft state of a new term.
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
            passes: PassTimes::default(),
        }
    }

    /// A number for a new agent attachment, never used before in this term.
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
    pub(super) fn add_offer(&mut self, offer_id: String, offer: OfferRecord) {
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
    pub(super) fn adjust_total(&mut self, f: impl FnOnce(&Resources) -> Option<Resources>) {
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
    pub(super) fn is_filtered(&self, framework_id: &str, agent_id: &str, now: Instant) -> bool {
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
    pub(super) fn rescind_where(&mut self, pred: impl Fn(&OfferRecord) -> bool) {
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

    pub(super) fn new_offer_id(&mut self) -> String {
        self.next_offer += 1;
        format!("O{}-{}", self.term, self.next_offer)
    }
}

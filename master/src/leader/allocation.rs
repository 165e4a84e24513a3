//! The allocation loop: DRF passes that turn free resources into offers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use corral_proto::convert::resources_to_wire;
use corral_proto::resources::Resources;
use corral_proto::v1;

use crate::allocator::{allocate, AgentView, FrameworkView};
use crate::node::Shared;
use crate::state::{AgentState, ClusterState, FrameworkState};

use super::*;

/// Offers also wait while more writes than this are queued for commit. Every offer turns into
/// launches, status updates and acknowledgements to commit; offering faster than they
/// commit only lengthens the queue, and with it every launch's latency. Waiting keeps the
/// queue short: the cluster runs at the rate it commits, with launches taking a few commit
/// rounds each.
pub const OFFER_HOLD_BACKLOG: usize = 1024;

/// What an allocation pass did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// Offers were made (or there was nothing to offer).
    Done,
    /// Offers were held back (commit backlog); the touched agents wait for the next pass.
    Held,
}

/// Events closer together than this share one allocation pass: under load a pass per
/// accept or status update would spend the leader's CPU re-deciding the same offers.
pub const PASS_COALESCE: Duration = Duration::from_millis(5);

/// One pass. A full pass expires filters and offers, resends unacknowledged updates when
/// due, fires timeouts and considers every agent; otherwise only the agents touched since
/// the last pass are offered.
/// Run by the term's loop (`run_term`), which owns `soft`; `me` is the term's handle, for
/// the writes it starts.
pub(super) fn allocation_pass(shared: &Shared, me: &Leader, soft: &mut Soft, full: bool) -> Pass {
    let state = shared.state.read();
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
            resend_stale_launches(&state.app, soft, corral_proto::time::now_ms());
        }
        due = due_timeouts(&state.app, soft, &shared.config, now);
        if now - soft.last_gc >= GC_INTERVAL && !soft.collecting {
            soft.last_gc = now;
            let gc = gc_command(&shared.config);
            let now_ms = corral_proto::time::now_ms();
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
                tokio::spawn(collect_garbage(shared.clone(), me.clone(), gc, going));
            }
        }
    }
    soft.launches.adapt(now);
    let room = soft.launches.agents_to_offer();
    let held = room == 0 || shared.writer.backlog() > OFFER_HOLD_BACKLOG;
    if held {
        // A full pass held back looks at every agent next time too.
        soft.full_pass |= full;
    } else {
        offer(&state.app, soft, full, now, room);
    }
    drop(state);
    for t in due {
        tokio::spawn(fire_timeout(shared.clone(), me.clone(), t));
    }
    if held {
        Pass::Held
    } else {
        Pass::Done
    }
}

/// Largest encoded Offers event sent to a framework: a pass over thousands of agents is split
/// into several events so that none comes near the gRPC message limit that frameworks decode.
pub(super) const OFFER_EVENT_BYTES: usize = corral_proto::MAX_MESSAGE_BYTES / 8;

/// Split one pass's offers for a framework into events of at most `OFFER_EVENT_BYTES`.
pub(super) fn offer_events(offers: Vec<v1::Offer>) -> Vec<Vec<v1::Offer>> {
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
pub(super) fn offer(state: &ClusterState, soft: &mut Soft, full: bool, now: Instant, room: usize) {
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

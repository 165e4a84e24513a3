//! Timers: retention (`CollectGarbage`), agent and framework timeouts.

use std::time::{Duration, Instant};

use corral_proto::v1;

use crate::node::Shared;
use crate::raft::types::Outcome;
use crate::state::{AgentState, ClusterState, FrameworkState};

use super::*;

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
pub(super) async fn collect_garbage(shared: Shared, me: Leader, gc: v1::CollectGarbage, going: Vec<String>) {
    let before = shared.state.read().app.retained();
    match shared.write(v1::command::Kind::CollectGarbage(gc)).await {
        Ok(Outcome::Applied) => {
            let after = shared.state.read().app.retained();
            tracing::debug!(?before, ?after, "retention applied");
            for agent_id in &going {
                tracing::warn!(%agent_id, "agent unreachable past --agent-gc-age: it is gone, its tasks TASK_GONE");
                forward_task_updates(&me, agent_id).await;
            }
        }
        Ok(Outcome::Rejected(why)) => tracing::warn!(why, "retention refused"),
        Err(e) => tracing::debug!(error = %e, "retention not committed"),
    }
    // A term that has ended has no collection to clear.
    let _ = me.tell(|_, soft| soft.collecting = false).await;
}

pub(super) enum Timeout {
    AgentUnreachable(String),
    FrameworkFailover(String),
}

/// Agents and frameworks that stayed away too long (Mesos' agent ping / re-registration
/// timeouts and framework failover timeout). Time is this leader's: it counts from when
/// the session ended, or from the start of the term for ones that never came back to it.
pub(super) fn due_timeouts(
    state: &ClusterState,
    soft: &mut Soft,
    config: &crate::config::Config,
    now: Instant,
) -> Vec<Timeout> {
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

pub(super) async fn fire_timeout(shared: Shared, me: Leader, t: Timeout) {
    let key = match &t {
        Timeout::AgentUnreachable(id) => {
            tracing::warn!(agent_id = %id, "agent did not come back in time: marking it unreachable");
            let kind = v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: id.clone() });
            match shared.write(kind).await {
                Ok(_) => forward_task_updates(&me, id).await,
                Err(e) => tracing::warn!(agent_id = %id, error = %e, "could not mark the agent unreachable"),
            }
            format!("agent/{id}")
        }
        Timeout::FrameworkFailover(id) => {
            tracing::warn!(framework_id = %id, "framework did not come back within its failover timeout: tearing it down");
            match super::teardown(&shared, &me, id, "failover timeout expired").await {
                Ok(Outcome::Applied) => {}
                Ok(Outcome::Rejected(why)) => {
                    tracing::warn!(framework_id = %id, why, "teardown after failover timeout refused")
                }
                Err(e) => tracing::warn!(framework_id = %id, error = %e, "teardown after failover timeout failed"),
            }
            format!("framework/{id}")
        }
    };
    let _ = me
        .tell(move |_, soft| {
            soft.firing.remove(&key);
            soft.full_pass = true;
        })
        .await;
    shared.allocate_now.notify_one();
}

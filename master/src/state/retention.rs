//! Retention: what `CollectGarbage` removes, when it is due, and the derived indexes
//! (finished tasks by age, unacknowledged updates by age) that find it.

use std::collections::BTreeSet;

use corral_proto::v1;

use super::digest::Key;
use crate::raft::types::Outcome;

use super::*;

impl ClusterState {
    /// Retention: remove what the limits of `c` no longer keep, at `now` (the command's
    /// timestamp). Deterministic, like every apply: the limits travel in the command.
    pub(super) fn apply_collect_garbage(&mut self, c: &v1::CollectGarbage, now: i64) -> Outcome {
        if c.agent_gc_age_ms < 0 || c.completed_task_max_age_ms < 0 {
            return Outcome::Rejected("ages must not be negative".into());
        }
        self.collect_agents(c.agent_gc_age_ms, now);
        self.collect_frameworks(c.max_completed_frameworks);
        let cutoff = (c.completed_task_max_age_ms > 0).then(|| now.saturating_sub(c.completed_task_max_age_ms));
        let max = usize::try_from(c.max_completed_tasks_per_framework).unwrap_or(usize::MAX);
        let mut doomed = Vec::new();
        for (framework_id, finished) in &self.completed {
            let over = finished.len().saturating_sub(max);
            for (i, (ts, task_id)) in finished.iter().enumerate() {
                if i < over || cutoff.is_some_and(|c| *ts < c) {
                    doomed.push((framework_id.clone(), task_id.clone()));
                } else {
                    break;
                }
            }
        }
        for key in doomed {
            self.collect_task(&key);
        }
        Outcome::Applied
    }

    /// Agents unreachable for `age` are gone, their unfinished tasks TASK_GONE; gone agents
    /// without tasks after `age` are removed. An agent's age counts from the first
    /// `CollectGarbage` that found it away.
    pub(super) fn collect_agents(&mut self, age: i64, now: i64) {
        let away: BTreeSet<String> = self
            .agents
            .values()
            .filter(|a| matches!(a.state, AgentState::Unreachable | AgentState::Gone))
            .map(|a| a.id.clone())
            .collect();
        let since = &mut self.retention.unreachable_since;
        since.retain(|id, _| away.contains(id));
        for id in &away {
            since.entry(id.clone()).or_insert(now);
        }
        for id in self.agents_due(age, now) {
            let state = self.agents.get(&id).map(|a| a.state);
            if state == Some(AgentState::Unreachable) {
                self.mark_agent(&id);
                if let Some(a) = self.agents.get_mut(&id) {
                    a.state = AgentState::Gone;
                }
                self.end_tasks_of(
                    &id,
                    v1::TaskState::TaskGone,
                    v1::Reason::AgentRemoved,
                    "the agent was unreachable too long and is gone",
                    now,
                );
                self.remove_executors_of_agent(&id);
            } else if self.agent_tasks.get(&id).is_none_or(BTreeSet::is_empty) {
                self.mark_agent(&id);
                self.agents.remove(&id);
                self.agent_tasks.remove(&id);
                self.retention.unreachable_since.remove(&id);
                self.retention.collected_agents += 1;
            }
        }
    }

    /// Torn-down frameworks beyond `max`, oldest first, are removed with their tasks once
    /// every task of theirs has ended.
    pub(super) fn collect_frameworks(&mut self, max: u64) {
        let mut torn: Vec<(i64, String)> = self
            .frameworks
            .values()
            .filter(|f| f.state == FrameworkState::TornDown)
            .map(|f| (f.disconnected_at_ms.unwrap_or(f.registered_at_ms), f.id.clone()))
            .collect();
        let over = torn.len().saturating_sub(usize::try_from(max).unwrap_or(usize::MAX));
        torn.sort();
        for (_, id) in torn.into_iter().take(over) {
            if self.framework_used.get(&id).is_some_and(|u| !u.is_empty()) {
                continue; // tasks still running: kept until they end
            }
            let tasks: Vec<(String, String)> = self
                .tasks
                .range((id.clone(), String::new())..)
                .take_while(|((f, _), _)| *f == id)
                .map(|(k, _)| k.clone())
                .collect();
            if tasks
                .iter()
                .any(|k| self.tasks.get(k).is_some_and(|t| !t.is_terminal()))
            {
                continue;
            }
            for key in tasks {
                self.collect_task(&key);
            }
            self.mark_framework(&id);
            self.frameworks.remove(&id);
            self.framework_used.remove(&id);
            self.completed.remove(&id);
            self.retention.collected_frameworks += 1;
        }
    }

    /// Remove one task record (finished: retention never removes a running task).
    pub(super) fn collect_task(&mut self, key: &(String, String)) {
        self.mark(Key::Task(key.clone()));
        let Some(t) = self.tasks.remove(key) else { return };
        debug_assert!(t.is_terminal(), "retention removes only finished tasks");
        if let Some(set) = self.agent_tasks.get_mut(&t.agent_id) {
            set.remove(key);
            if set.is_empty() {
                self.agent_tasks.remove(&t.agent_id);
            }
        }
        if let Some(set) = self.completed.get_mut(&key.0) {
            set.remove(&(t.status.timestamp_ms, key.1.clone()));
            if set.is_empty() {
                self.completed.remove(&key.0);
            }
        }
        self.staging.remove(key);
        for u in &t.unacked {
            self.unindex_unacked(&key.0, &(u.timestamp_ms, key.1.clone(), u.uuid.clone()));
        }
        self.retention.collected_tasks += 1;
        self.retention.dropped_updates += t.unacked.len() as u64;
    }

    /// Whether a `CollectGarbage` with limits `c` at `now` would change anything: what the
    /// leader checks before proposing one. Costs one look per framework and agent.
    pub fn garbage_due(&self, c: &v1::CollectGarbage, now: i64) -> bool {
        let max = usize::try_from(c.max_completed_tasks_per_framework).unwrap_or(usize::MAX);
        let cutoff = (c.completed_task_max_age_ms > 0).then(|| now.saturating_sub(c.completed_task_max_age_ms));
        let tasks = self.completed.values().any(|finished| {
            finished.len() > max || cutoff.is_some_and(|c| finished.first().is_some_and(|(ts, _)| *ts < c))
        });
        let torn = self
            .frameworks
            .values()
            .filter(|f| f.state == FrameworkState::TornDown)
            .count();
        let away = self
            .agents
            .values()
            .filter(|a| matches!(a.state, AgentState::Unreachable | AgentState::Gone))
            .count();
        let agents =
            away != self.retention.unreachable_since.len() || !self.agents_due(c.agent_gc_age_ms, now).is_empty();
        tasks || torn as u64 > c.max_completed_frameworks || agents
    }

    /// The agents a `CollectGarbage` with agent GC age `age` at `now` would act on: the
    /// unreachable ones that become gone, and the gone ones without tasks that are removed.
    pub fn agents_due(&self, age: i64, now: i64) -> Vec<String> {
        if age == 0 {
            return Vec::new();
        }
        self.retention
            .unreachable_since
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) >= age)
            .filter(|(id, _)| match self.agents.get(*id).map(|a| a.state) {
                Some(AgentState::Unreachable) => true,
                Some(AgentState::Gone) => self.agent_tasks.get(*id).is_none_or(BTreeSet::is_empty),
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Records retained now: agents, frameworks, tasks, finished tasks.
    pub fn retained(&self) -> [usize; 4] {
        [
            self.agents.len(),
            self.frameworks.len(),
            self.tasks.len(),
            self.completed.values().map(BTreeSet::len).sum(),
        ]
    }

    /// Index a new unacknowledged update of `framework_id`, dropping the framework's oldest
    /// when it holds more than [`MAX_UNACKED_PER_FRAMEWORK`].
    pub(super) fn index_unacked(&mut self, framework_id: &str, key: (i64, String, Vec<u8>)) {
        let set = self.unacked.entry(framework_id.to_string()).or_default();
        set.insert(key);
        if set.len() <= MAX_UNACKED_PER_FRAMEWORK {
            return;
        }
        let Some((_, task_id, uuid)) = set.pop_first() else {
            return;
        };
        self.mark_task(framework_id, &task_id);
        if let Some(t) = self.tasks.get_mut(&(framework_id.to_string(), task_id)) {
            t.unacked.retain(|u| u.uuid != uuid);
        }
        self.retention.dropped_updates += 1;
    }

    pub(super) fn unindex_unacked(&mut self, framework_id: &str, key: &(i64, String, Vec<u8>)) {
        if let Some(set) = self.unacked.get_mut(framework_id) {
            set.remove(key);
            if set.is_empty() {
                self.unacked.remove(framework_id);
            }
        }
    }

    /// Rebuild the derived indexes (after a restore).
    pub(super) fn reindex(&mut self) {
        self.rebuild_digests();
        self.agent_tasks.clear();
        self.framework_used.clear();
        self.staging.clear();
        self.completed.clear();
        self.unacked.clear();
        for (key, t) in &self.tasks {
            for u in &t.unacked {
                self.unacked
                    .entry(key.0.clone())
                    .or_default()
                    .insert((u.timestamp_ms, key.1.clone(), u.uuid.clone()));
            }
            if t.is_terminal() {
                self.completed
                    .entry(key.0.clone())
                    .or_default()
                    .insert((t.status.timestamp_ms, key.1.clone()));
            }
            if t.state() == v1::TaskState::TaskStaging {
                self.staging.insert(key.clone());
            }
            self.agent_tasks
                .entry(t.agent_id.clone())
                .or_default()
                .insert(key.clone());
            if !t.is_terminal() {
                let u = self.framework_used.entry(t.framework_id.clone()).or_default();
                *u = u.checked_add(&t.resources).unwrap_or_else(|_| u.clone());
            }
        }
        for e in self.agents.values().flat_map(|a| a.executors.values()) {
            let u = self.framework_used.entry(e.framework_id.clone()).or_default();
            *u = u.checked_add(&e.resources).unwrap_or_else(|_| u.clone());
        }
    }
}

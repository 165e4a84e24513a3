//! The invariants apply keeps (S1, the indexes), checked after every command in debug
//! and test builds.

use std::collections::{BTreeMap, BTreeSet};

use corral_proto::resources::Resources;
use corral_proto::v1;
use openraft::LogId;

use super::*;

impl ClusterState {
    /// Check the invariants that apply must keep: every agent's `used` is the sum of its
    /// non-terminal tasks and within its resources (S1); the task index matches the tasks.
    /// Run after every command in debug and test builds.
    pub fn validate(&self) -> Result<(), String> {
        // No clones of keys: debug builds run this after every entry, at any size of state.
        let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
        for (key, t) in &self.tasks {
            if !self.agents.contains_key(&t.agent_id) {
                return Err(format!(
                    "task {}/{} on unknown agent {}",
                    t.framework_id, t.task_id, t.agent_id
                ));
            }
            if !t.is_terminal() {
                let u = used.entry(&t.agent_id).or_default();
                *u = u.checked_add(&t.resources).map_err(|e| e.to_string())?;
            }
            let indexed = self.agent_tasks.get(&t.agent_id).is_some_and(|s| s.contains(key));
            if !indexed {
                return Err(format!(
                    "task {}/{} missing from the agent index",
                    t.framework_id, t.task_id
                ));
            }
        }
        let staging = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state() == v1::TaskState::TaskStaging)
            .map(|(k, _)| k);
        if !staging.eq(self.staging.iter()) {
            return Err("the index of STAGING tasks does not match the tasks".into());
        }
        let finished = self.tasks.iter().filter(|(_, t)| t.is_terminal()).count();
        if self.completed.values().map(BTreeSet::len).sum::<usize>() != finished {
            return Err("the index of finished tasks does not match the tasks".into());
        }
        let mut unacked: BTreeMap<String, BTreeSet<(i64, String, Vec<u8>)>> = BTreeMap::new();
        for ((f, id), t) in &self.tasks {
            for u in &t.unacked {
                unacked
                    .entry(f.clone())
                    .or_default()
                    .insert((u.timestamp_ms, id.clone(), u.uuid.clone()));
            }
        }
        if unacked != self.unacked {
            return Err("the index of unacknowledged updates does not match the tasks".into());
        }
        if let Some((f, set)) = unacked.iter().find(|(_, set)| set.len() > MAX_UNACKED_PER_FRAMEWORK) {
            return Err(format!("framework {f} holds {} unacknowledged updates", set.len()));
        }
        for (f, set) in &self.completed {
            for (ts, id) in set {
                let t = self
                    .tasks
                    .get(&(f.clone(), id.clone()))
                    .ok_or_else(|| format!("finished task {f}/{id} is not in the state"))?;
                if !t.is_terminal() || t.status.timestamp_ms != *ts {
                    return Err(format!("finished task {f}/{id} is indexed wrongly"));
                }
            }
        }
        let mut by_framework: BTreeMap<&str, Resources> = BTreeMap::new();
        for t in self.tasks.values().filter(|t| !t.is_terminal()) {
            let u = by_framework.entry(&t.framework_id).or_default();
            *u = u.checked_add(&t.resources).map_err(|e| e.to_string())?;
        }
        for a in self.agents.values() {
            for ((f, eid), e) in &a.executors {
                if *f != e.framework_id || *eid != e.executor_id {
                    return Err(format!("executor {f}/{eid} on agent {} is keyed wrongly", a.id));
                }
                let u = by_framework.entry(&e.framework_id).or_default();
                *u = u.checked_add(&e.resources).map_err(|e| e.to_string())?;
                let u = used.entry(&a.id).or_default();
                *u = u.checked_add(&e.resources).map_err(|e| e.to_string())?;
            }
        }
        for (f, u) in &self.framework_used {
            if by_framework.remove(f.as_str()).unwrap_or_default() != *u {
                return Err(format!("framework {f} allocation {u} does not match its tasks"));
            }
        }
        if let Some((f, u)) = by_framework.into_iter().find(|(_, u)| !u.is_empty()) {
            return Err(format!("framework {f} holds {u} not counted in its allocation"));
        }
        for a in self.agents.values() {
            let expected = used.remove(a.id.as_str()).unwrap_or_default();
            if a.used != expected {
                return Err(format!(
                    "agent {} used {} but its tasks and executors hold {}",
                    a.id, a.used, expected
                ));
            }
            if !a.resources.contains(&a.used) {
                return Err(format!(
                    "agent {} over-committed: used {} of {} (S1)",
                    a.id, a.used, a.resources
                ));
            }
        }
        Ok(())
    }
}

impl ClusterState {
    /// Panic if an invariant is broken after applying `batch` (a bug: replicas must stop
    /// rather than diverge further).
    pub(super) fn check_after(&self, log_id: &LogId<u64>, batch: &v1::CommandBatch) {
        if let Err(e) = self.validate() {
            let kinds: Vec<_> = batch
                .commands
                .iter()
                .filter_map(|c| c.kind.as_ref().map(kind_name))
                .collect();
            panic!("cluster state invariant broken by entry {log_id} ({kinds:?}): {e}");
        }
    }
}

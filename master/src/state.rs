//! The replicated cluster state and its deterministic apply.
//!
//! Apply decodes a [`Proposal`], re-checks every rule (the leader checked before proposing,
//! but a stale or buggy leader must not be able to corrupt the state), mutates, and returns
//! one [`Outcome`] per command. It reads no clock, draws no random number and does no I/O:
//! time arrives as the leader's `timestamp_ms` inside the command.
//!
//! Every collection is ordered (`BTreeMap`, or `imbl::OrdMap` for the two that grow with the
//! cluster), so the serialized state is canonical and its SHA-256, the **state hash**, is
//! equal on every master that applied the same entries (S3).
//!
//! Tasks and agents are persistent (copy-on-write) B-trees: a snapshot takes a
//! [`SnapshotView`] in O(1) under the state's read lock and encodes it afterwards, while
//! apply goes on; a node is copied only when apply changes it while a view still shares it.

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;

use corral_proto::resources::Resources;
use corral_proto::v1;
use corral_raft_store::StateMachine;
use openraft::LogId;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{record_digest, Digests, Key};
use crate::types::{ApplyResult, CorralRaft, Outcome, Proposal};
use crate::validate;

/// The role of frameworks that name none.
pub const DEFAULT_ROLE: &str = "*";

/// Highest role weight accepted (in units).
pub const MAX_WEIGHT: f64 = 1_000_000.0;
/// Longest role name accepted.
pub const MAX_ROLE_LEN: usize = 128;
/// Format version of the snapshot encoding written by this build. Version 2 adds
/// [`Retention`]; version 1 snapshots are still read ([`StateV1`]).
const SNAPSHOT_FORMAT: u8 = 2;

/// Most unacknowledged status updates kept per task; older non-terminal ones are dropped
/// first (the framework still gets the latest state).
pub const MAX_UNACKED_PER_TASK: usize = 16;

/// Most unacknowledged status updates kept per framework (a framework that stops
/// acknowledging must not grow the state without bound): past it the framework's oldest
/// update is dropped and counted in [`Retention::dropped_updates`]. The framework still
/// learns every task's state by reconciling.
pub const MAX_UNACKED_PER_FRAMEWORK: usize = 50_000;

/// The state every master replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Role → weight in thousandths (DRF weights; roles not listed weigh 1).
    pub weights: BTreeMap<String, u64>,
    pub agents: OrdMap<String, AgentRecord>,
    pub frameworks: BTreeMap<String, FrameworkRecord>,
    /// Tasks by (framework id, task id), terminal ones included while retained: a retained
    /// task id is never launched again in its framework (S2).
    pub tasks: OrdMap<(String, String), TaskRecord>,
    /// Commands applied and rejected since the cluster began (diagnostics, part of the hash).
    pub applied_commands: u64,
    pub rejected_commands: u64,
    /// What retention watches and has removed (DESIGN.md "Retention").
    pub retention: Retention,
    /// Derived index: the tasks of each agent. Not serialized; rebuilt on restore.
    #[serde(skip)]
    pub agent_tasks: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Derived: resources of each framework's non-terminal tasks (its DRF allocation).
    #[serde(skip)]
    pub framework_used: BTreeMap<String, Resources>,
    /// Derived index: tasks still in TASK_STAGING (launched, nothing heard from their agent).
    #[serde(skip)]
    pub staging: BTreeSet<(String, String)>,
    /// Derived index: each framework's finished tasks, oldest first, by the timestamp of
    /// their final status (then id): what retention removes first.
    #[serde(skip)]
    pub completed: BTreeMap<String, BTreeSet<(i64, String)>>,
    /// Derived index: each framework's unacknowledged updates, oldest first, by (timestamp,
    /// task id, uuid): what [`MAX_UNACKED_PER_FRAMEWORK`] drops first.
    #[serde(skip)]
    pub unacked: BTreeMap<String, BTreeSet<(i64, String, Vec<u8>)>>,
    /// Derived: the records' digests behind the state hash, kept current by apply.
    #[serde(skip)]
    digests: Digests,
}

/// The replicated part of retention: part of the state hash, changed only by
/// `CollectGarbage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// When a `CollectGarbage` first found each agent unreachable (or gone): the agent's GC
    /// age counts from there.
    pub unreachable_since: BTreeMap<String, i64>,
    /// Records removed since the cluster began.
    pub collected_tasks: u64,
    pub collected_frameworks: u64,
    pub collected_agents: u64,
    /// Unacknowledged status updates removed with their task or over
    /// [`MAX_UNACKED_PER_FRAMEWORK`].
    pub dropped_updates: u64,
}

/// The replicated fields of a [`ClusterState`] at one applied index, in the order the
/// snapshot encoding writes them (the same bytes as serializing the state itself).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    weights: BTreeMap<String, u64>,
    agents: OrdMap<String, AgentRecord>,
    frameworks: BTreeMap<String, FrameworkRecord>,
    tasks: OrdMap<(String, String), TaskRecord>,
    applied_commands: u64,
    rejected_commands: u64,
    retention: Retention,
}

impl SnapshotView {
    /// Write the snapshot encoding (format byte, then the postcard body) to `out`.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&[SNAPSHOT_FORMAT])?;
        // postcard reports a failed write as a full buffer; keep the I/O error itself
        // (a full disk must say so).
        let mut keeper = KeepError { out, error: None };
        match postcard::to_io(self, &mut keeper) {
            Ok(_) => Ok(()),
            Err(e) => Err(keeper.error.take().unwrap_or_else(|| std::io::Error::other(e))),
        }
    }
}

/// A writer that remembers the first error of the writer it wraps.
struct KeepError<'a> {
    out: &'a mut dyn std::io::Write,
    error: Option<std::io::Error>,
}

impl std::io::Write for KeepError<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf).inspect_err(|e| {
            self.error
                .get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A version 1 snapshot: the state before [`Retention`].
#[derive(Deserialize)]
struct StateV1 {
    weights: BTreeMap<String, u64>,
    agents: BTreeMap<String, AgentRecord>,
    frameworks: BTreeMap<String, FrameworkRecord>,
    tasks: BTreeMap<(String, String), TaskRecord>,
    applied_commands: u64,
    rejected_commands: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Active,
    Unreachable,
    Draining,
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub resources: Resources,
    pub attributes: Vec<(String, String)>,
    pub isolation: bool,
    pub state: AgentState,
    /// Sum of the resources of the agent's non-terminal tasks; never above `resources` (S1).
    pub used: Resources,
    pub registered_at_ms: i64,
    pub updated_at_ms: i64,
    /// This record's part of the state hash (see [`crate::digest`]); derived, not replicated.
    #[serde(skip)]
    pub(crate) digest: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameworkState {
    Connected,
    Disconnected,
    TornDown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub user: String,
    pub hostname: String,
    pub failover_timeout_ms: u64,
    pub state: FrameworkState,
    pub registered_at_ms: i64,
    pub disconnected_at_ms: Option<i64>,
    /// This record's part of the state hash (see [`crate::digest`]); derived, not replicated.
    #[serde(skip)]
    pub(crate) digest: u128,
}

/// One status of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub state: i32,
    pub message: String,
    pub reason: i32,
    pub source: i32,
    pub exit_code: Option<i32>,
    pub uuid: Vec<u8>,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub framework_id: String,
    pub task_id: String,
    pub name: String,
    pub agent_id: String,
    pub resources: Resources,
    /// The TaskInfo as launched (protobuf), sent again to an agent that lacks the task.
    pub info: Vec<u8>,
    pub status: StatusRecord,
    /// Updates the framework has not acknowledged yet, oldest first; resent by the leader.
    pub unacked: Vec<StatusRecord>,
    pub launched_at_ms: i64,
    /// This record's part of the state hash (see [`crate::digest`]); derived, not replicated.
    #[serde(skip)]
    pub(crate) digest: u128,
}

impl TaskRecord {
    pub fn state(&self) -> v1::TaskState {
        v1::TaskState::try_from(self.status.state).unwrap_or(v1::TaskState::Unspecified)
    }

    pub fn is_terminal(&self) -> bool {
        is_terminal(self.state())
    }

    /// The TaskInfo as launched.
    pub fn task_info(&self) -> Option<v1::TaskInfo> {
        v1::TaskInfo::decode(self.info.as_slice()).ok()
    }

    /// A status as the wire carries it.
    pub fn wire_status(&self, s: &StatusRecord) -> v1::TaskStatus {
        v1::TaskStatus {
            task_id: self.task_id.clone(),
            state: s.state,
            message: s.message.clone(),
            agent_id: self.agent_id.clone(),
            framework_id: self.framework_id.clone(),
            uuid: s.uuid.clone(),
            exit_code: s.exit_code,
            reason: s.reason,
            source: s.source,
            timestamp_ms: s.timestamp_ms,
        }
    }
}

/// Terminal states: the task's resources are free again and it never changes state after.
pub fn is_terminal(state: v1::TaskState) -> bool {
    use v1::TaskState::*;
    matches!(
        state,
        TaskFinished | TaskFailed | TaskKilled | TaskError | TaskLost | TaskDropped | TaskGone
    )
}

/// Why a weight is not acceptable; the message names the field.
pub fn validate_weight(field: &str, role: &str, weight: f64) -> Result<u64, String> {
    if role.is_empty() || role.len() > MAX_ROLE_LEN || role.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{field}.role: {} is not a valid role name (1 to {MAX_ROLE_LEN} printable characters, no spaces)",
            corral_proto::quote(role)
        ));
    }
    if !weight.is_finite() || weight <= 0.0 {
        return Err(format!(
            "{field}.weight: must be a finite number greater than 0, got {weight}"
        ));
    }
    if weight > MAX_WEIGHT {
        return Err(format!("{field}.weight: {weight} is over the maximum of {MAX_WEIGHT}"));
    }
    let milli = (weight * 1000.0).round() as u64;
    if milli == 0 {
        return Err(format!("{field}.weight: {weight} rounds to 0 at 0.001 precision"));
    }
    Ok(milli)
}

impl ClusterState {
    /// Apply one command. Deterministic; re-validates everything.
    pub fn apply_command(&mut self, command: &v1::Command) -> Outcome {
        use v1::command::Kind;
        let now = command.timestamp_ms;
        let outcome = match &command.kind {
            Some(Kind::SetWeights(set)) => self.apply_set_weights(set),
            Some(Kind::RegisterAgent(c)) => self.apply_register_agent(&c.agent_id, c.info.as_ref(), now, true),
            Some(Kind::ReregisterAgent(c)) => {
                let was = self.agents.get(&c.agent_id).map(|a| a.state);
                let outcome = self.apply_register_agent(&c.agent_id, c.info.as_ref(), now, false);
                // Only an agent that was marked unreachable has tasks to reconcile.
                if outcome == Outcome::Applied && was == Some(AgentState::Unreachable) {
                    self.reconcile_returning_agent(&c.agent_id, &c.tasks, now);
                }
                outcome
            }
            Some(Kind::MarkAgentUnreachable(c)) => self.apply_unreachable(&c.agent_id, now),
            Some(Kind::RegisterFramework(c)) => self.apply_register_framework(&c.framework_id, c.info.as_ref(), now),
            Some(Kind::UpdateFramework(c)) => self.apply_update_framework(c.info.as_ref()),
            Some(Kind::DisconnectFramework(c)) => {
                self.set_framework_state(&c.framework_id, FrameworkState::Disconnected, now)
            }
            Some(Kind::TeardownFramework(c)) => {
                self.set_framework_state(&c.framework_id, FrameworkState::TornDown, now)
            }
            Some(Kind::LaunchTasks(c)) => self.apply_launch(c, now),
            Some(Kind::UpdateStatuses(c)) => self.apply_statuses(&c.statuses),
            Some(Kind::AcknowledgeStatuses(c)) => self.apply_acks(&c.acks),
            Some(Kind::CollectGarbage(c)) => self.apply_collect_garbage(c, now),
            Some(other) => Outcome::Rejected(format!(
                "command {} is not handled by this master version",
                kind_name(other)
            )),
            // An unknown oneof member: written by a newer master. Refusing it (the same way on
            // every master of this version) keeps the replicas identical.
            None => Outcome::Rejected("unknown command kind (written by a newer master?)".into()),
        };
        match outcome {
            Outcome::Applied => self.applied_commands += 1,
            Outcome::Rejected(_) => self.rejected_commands += 1,
        }
        self.settle_digests();
        outcome
    }

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
                    "agent {} used {} but its tasks hold {}",
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

    fn apply_register_agent(&mut self, id: &str, info: Option<&v1::AgentInfo>, now: i64, new: bool) -> Outcome {
        if let Err(e) = validate::id("agent_id", id) {
            return Outcome::Rejected(e);
        }
        let Some(info) = info else {
            return Outcome::Rejected("info: missing".into());
        };
        let resources = match validate::agent_info("info", info) {
            Ok(r) => r,
            Err(e) => return Outcome::Rejected(e),
        };
        let attributes = info
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect();
        self.mark_agent(id);
        match (self.agents.get_mut(id), new) {
            (Some(_), true) => Outcome::Rejected(format!("agent_id: {id} is already registered")),
            (None, false) => Outcome::Rejected(format!("agent_id: {id} is not known")),
            (Some(a), false) => {
                if !resources.contains(&a.used) {
                    return Outcome::Rejected(format!(
                        "info.resources: {resources} cannot hold the {} its tasks use",
                        a.used
                    ));
                }
                a.hostname = info.hostname.clone();
                a.address = info.address.clone();
                a.resources = resources;
                a.attributes = attributes;
                a.isolation = info.isolation;
                a.state = AgentState::Active;
                a.updated_at_ms = now;
                Outcome::Applied
            }
            (None, true) => {
                self.agents.insert(
                    id.to_string(),
                    AgentRecord {
                        id: id.to_string(),
                        hostname: info.hostname.clone(),
                        address: info.address.clone(),
                        resources,
                        attributes,
                        isolation: info.isolation,
                        state: AgentState::Active,
                        used: Resources::new(),
                        registered_at_ms: now,
                        updated_at_ms: now,
                        digest: 0,
                    },
                );
                Outcome::Applied
            }
        }
    }

    fn apply_register_framework(&mut self, id: &str, info: Option<&v1::FrameworkInfo>, now: i64) -> Outcome {
        if let Err(e) = validate::id("framework_id", id) {
            return Outcome::Rejected(e);
        }
        let Some(info) = info else {
            return Outcome::Rejected("info: missing".into());
        };
        if let Err(e) = validate::framework_info("info", info) {
            return Outcome::Rejected(e);
        }
        if self.frameworks.contains_key(id) {
            return Outcome::Rejected(format!("framework_id: {id} is already registered"));
        }
        self.mark_framework(id);
        self.frameworks.insert(
            id.to_string(),
            FrameworkRecord {
                id: id.to_string(),
                name: info.name.clone(),
                role: if info.role.is_empty() {
                    DEFAULT_ROLE.to_string()
                } else {
                    info.role.clone()
                },
                user: info.user.clone(),
                hostname: info.hostname.clone(),
                failover_timeout_ms: (info.failover_timeout_seconds * 1000.0) as u64,
                state: FrameworkState::Connected,
                registered_at_ms: now,
                disconnected_at_ms: None,
                digest: 0,
            },
        );
        Outcome::Applied
    }

    fn apply_update_framework(&mut self, info: Option<&v1::FrameworkInfo>) -> Outcome {
        let Some(info) = info else {
            return Outcome::Rejected("info: missing".into());
        };
        if let Err(e) = validate::framework_info("info", info) {
            return Outcome::Rejected(e);
        }
        self.mark_framework(&info.framework_id);
        match self.frameworks.get_mut(&info.framework_id) {
            None => Outcome::Rejected(format!("info.framework_id: {} is not known", info.framework_id)),
            Some(f) if f.state == FrameworkState::TornDown => {
                Outcome::Rejected(format!("info.framework_id: {} was torn down", info.framework_id))
            }
            Some(f) => {
                f.name = info.name.clone();
                f.failover_timeout_ms = (info.failover_timeout_seconds * 1000.0) as u64;
                f.state = FrameworkState::Connected;
                f.disconnected_at_ms = None;
                Outcome::Applied
            }
        }
    }

    fn set_framework_state(&mut self, id: &str, state: FrameworkState, now: i64) -> Outcome {
        self.mark_framework(id);
        match self.frameworks.get_mut(id) {
            None => Outcome::Rejected(format!("framework_id: {id} is not known")),
            Some(f) if f.state == FrameworkState::TornDown => {
                Outcome::Rejected(format!("framework_id: {id} was torn down"))
            }
            Some(f) => {
                f.state = state;
                f.disconnected_at_ms = (state != FrameworkState::Connected).then_some(now);
                Outcome::Applied
            }
        }
    }

    fn apply_launch(&mut self, c: &v1::LaunchTasks, now: i64) -> Outcome {
        match self.frameworks.get(&c.framework_id) {
            None => return Outcome::Rejected(format!("framework_id: {} is not known", c.framework_id)),
            Some(f) if f.state == FrameworkState::TornDown => {
                return Outcome::Rejected(format!("framework_id: {} was torn down", c.framework_id))
            }
            Some(_) => {}
        }
        let (each, total) = match validate::launch("tasks", &c.agent_id, &c.tasks) {
            Ok(v) => v,
            Err(e) => return Outcome::Rejected(e),
        };
        for (i, t) in c.tasks.iter().enumerate() {
            if self.tasks.contains_key(&(c.framework_id.clone(), t.task_id.clone())) {
                return Outcome::Rejected(format!("tasks[{i}].task_id: {:?} was already launched (S2)", t.task_id));
            }
        }
        self.mark_agent(&c.agent_id);
        for t in &c.tasks {
            self.mark_task(&c.framework_id, &t.task_id);
        }
        let Some(agent) = self.agents.get_mut(&c.agent_id) else {
            return Outcome::Rejected(format!("agent_id: {} is not known", c.agent_id));
        };
        if agent.state != AgentState::Active {
            return Outcome::Rejected(format!("agent_id: {} is not active", c.agent_id));
        }
        // S1, re-checked here whatever the leader checked: the agent must hold it all.
        let used = match agent.used.checked_add(&total) {
            Ok(u) if agent.resources.contains(&u) => u,
            _ => {
                return Outcome::Rejected(format!(
                    "launch would over-commit agent {}: {} used + {} asked > {} (S1)",
                    c.agent_id, agent.used, total, agent.resources
                ))
            }
        };
        agent.used = used;
        let fw_used = self.framework_used.entry(c.framework_id.clone()).or_default();
        *fw_used = fw_used.checked_add(&total).unwrap_or_else(|_| fw_used.clone());
        let index = self.agent_tasks.entry(c.agent_id.clone()).or_default();
        for (t, resources) in c.tasks.iter().zip(each) {
            let key = (c.framework_id.clone(), t.task_id.clone());
            index.insert(key.clone());
            self.staging.insert(key.clone());
            let status = StatusRecord {
                state: v1::TaskState::TaskStaging as i32,
                message: String::new(),
                reason: 0,
                source: v1::Source::Master as i32,
                exit_code: None,
                uuid: Vec::new(),
                timestamp_ms: now,
            };
            self.tasks.insert(
                key,
                TaskRecord {
                    framework_id: c.framework_id.clone(),
                    task_id: t.task_id.clone(),
                    name: t.name.clone(),
                    agent_id: c.agent_id.clone(),
                    resources,
                    info: t.encode_to_vec(),
                    status,
                    unacked: Vec::new(),
                    launched_at_ms: now,
                    digest: 0,
                },
            );
        }
        Outcome::Applied
    }

    /// Apply task status updates. Each is checked on its own: an update for an unknown task,
    /// from the wrong agent, a duplicate (same uuid) or one after a terminal state is
    /// skipped. Rejected only if no update at all could be applied and one was invalid.
    fn apply_statuses(&mut self, statuses: &[v1::TaskStatus]) -> Outcome {
        let mut problems = Vec::new();
        for (i, s) in statuses.iter().enumerate() {
            if let Err(e) = self.apply_status(s) {
                problems.push(format!("statuses[{i}]: {e}"));
            }
        }
        if !problems.is_empty() && problems.len() == statuses.len() {
            return Outcome::Rejected(problems.join("; "));
        }
        Outcome::Applied
    }

    fn apply_status(&mut self, s: &v1::TaskStatus) -> Result<(), String> {
        let key = (s.framework_id.clone(), s.task_id.clone());
        self.mark(Key::Task(key.clone()));
        let Some(task) = self.tasks.get_mut(&key) else {
            return Err(format!("task {}/{} is not known", s.framework_id, s.task_id));
        };
        if task.agent_id != s.agent_id {
            return Err(format!(
                "task {} runs on agent {}, not {}",
                s.task_id, task.agent_id, s.agent_id
            ));
        }
        let new_state = v1::TaskState::try_from(s.state).map_err(|_| format!("unknown task state {}", s.state))?;
        if new_state == v1::TaskState::Unspecified {
            return Err("state: unspecified".into());
        }
        // Only the master decides that a task is unreachable, gone or unknown (a task an
        // agent could park in UNREACHABLE would never be reconciled).
        if s.source == v1::Source::Agent as i32
            && matches!(
                new_state,
                v1::TaskState::TaskUnreachable
                    | v1::TaskState::TaskGone
                    | v1::TaskState::TaskUnknown
                    | v1::TaskState::TaskStaging
            )
        {
            return Err(format!(
                "state: {} is decided by the master, not reported by agents",
                new_state.as_str_name()
            ));
        }
        if !s.uuid.is_empty() && (task.status.uuid == s.uuid || task.unacked.iter().any(|u| u.uuid == s.uuid)) {
            return Ok(()); // a retry of an update already applied
        }
        if task.is_terminal() {
            return Ok(()); // a terminal state is final
        }
        let record = StatusRecord {
            state: s.state,
            message: s.message.chars().take(validate::MAX_TEXT_LEN).collect(),
            reason: s.reason,
            source: s.source,
            exit_code: s.exit_code,
            uuid: s.uuid.clone(),
            timestamp_ms: s.timestamp_ms,
        };
        let becomes_terminal = is_terminal(new_state);
        task.status = record.clone();
        let mut unindex = None;
        let mut index = None;
        if !record.uuid.is_empty() {
            if task.unacked.len() >= MAX_UNACKED_PER_TASK {
                let old = task.unacked.remove(0);
                unindex = Some((old.timestamp_ms, s.task_id.clone(), old.uuid));
            }
            index = Some((record.timestamp_ms, s.task_id.clone(), record.uuid.clone()));
            task.unacked.push(record);
        }
        let resources = task.resources.clone();
        let agent_id = task.agent_id.clone();
        if let Some(old) = unindex {
            self.unindex_unacked(&s.framework_id, &old);
        }
        if let Some(new) = index {
            self.index_unacked(&s.framework_id, new);
        }
        if becomes_terminal {
            self.completed
                .entry(s.framework_id.clone())
                .or_default()
                .insert((s.timestamp_ms, s.task_id.clone()));
            self.mark_agent(&agent_id);
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                // Cannot fail while S1's bookkeeping holds (validate() checks it).
                agent.used = agent.used.checked_sub(&resources).unwrap_or_default();
            }
            if let Some(u) = self.framework_used.get_mut(&s.framework_id) {
                *u = u.checked_sub(&resources).unwrap_or_default();
            }
        }
        // Agents never report STAGING, and the master's own updates are not STAGING either.
        self.staging.remove(&key);
        Ok(())
    }

    /// A status the master produces itself. Its uuid is derived from what the command holds,
    /// so every replica makes the same one (apply draws no random numbers).
    fn master_status(
        task: &TaskRecord,
        state: v1::TaskState,
        reason: v1::Reason,
        message: &str,
        exit_code: Option<i32>,
        now: i64,
    ) -> v1::TaskStatus {
        let digest = Sha256::digest(format!("{}/{}/{}/{now}", task.framework_id, task.task_id, state as i32));
        v1::TaskStatus {
            task_id: task.task_id.clone(),
            state: state as i32,
            message: message.to_string(),
            agent_id: task.agent_id.clone(),
            framework_id: task.framework_id.clone(),
            uuid: digest[..16].to_vec(),
            exit_code,
            reason: reason as i32,
            source: v1::Source::Master as i32,
            timestamp_ms: now,
        }
    }

    /// The agent has been silent too long: it is unreachable and so are its tasks.
    fn apply_unreachable(&mut self, agent_id: &str, now: i64) -> Outcome {
        self.mark_agent(agent_id);
        match self.agents.get_mut(agent_id) {
            None => return Outcome::Rejected(format!("agent_id: {agent_id} is not known")),
            Some(a) if a.state != AgentState::Active => {
                return Outcome::Rejected(format!("agent_id: {agent_id} is not active"))
            }
            Some(a) => a.state = AgentState::Unreachable,
        }
        self.end_tasks_of(
            agent_id,
            v1::TaskState::TaskUnreachable,
            v1::Reason::AgentUnreachable,
            "the agent is unreachable",
            now,
        );
        Outcome::Applied
    }

    /// Give every unfinished task of `agent_id` the master-made status `state`.
    fn end_tasks_of(&mut self, agent_id: &str, state: v1::TaskState, reason: v1::Reason, message: &str, now: i64) {
        let statuses: Vec<v1::TaskStatus> = self
            .tasks_on(agent_id)
            .filter(|t| !t.is_terminal())
            .map(|t| Self::master_status(t, state, reason, message, None, now))
            .collect();
        for s in &statuses {
            let _ = self.apply_status(s);
        }
    }

    /// An agent came back: its UNREACHABLE tasks take the state it reports, or are LOST.
    fn reconcile_returning_agent(&mut self, agent_id: &str, inventory: &[v1::TaskRecord], now: i64) {
        let reported: BTreeMap<(String, String), &v1::TaskRecord> = inventory
            .iter()
            .filter_map(|r| {
                r.task
                    .as_ref()
                    .map(|t| ((r.framework_id.clone(), t.task_id.clone()), r))
            })
            .collect();
        let statuses: Vec<v1::TaskStatus> = self
            .tasks_on(agent_id)
            .filter(|t| t.state() == v1::TaskState::TaskUnreachable)
            .map(|t| match reported.get(&(t.framework_id.clone(), t.task_id.clone())) {
                Some(r) => {
                    let state = v1::TaskState::try_from(r.state).unwrap_or(v1::TaskState::TaskRunning);
                    let state = if state == v1::TaskState::TaskStaging {
                        v1::TaskState::TaskRunning
                    } else {
                        state
                    };
                    Self::master_status(
                        t,
                        state,
                        v1::Reason::Reconciliation,
                        "the agent is back",
                        r.exit_code,
                        now,
                    )
                }
                None => Self::master_status(
                    t,
                    v1::TaskState::TaskLost,
                    v1::Reason::Reconciliation,
                    "the agent came back without this task",
                    None,
                    now,
                ),
            })
            .collect();
        for s in &statuses {
            let _ = self.apply_status(s);
        }
    }

    fn apply_acks(&mut self, acks: &[v1::StatusAck]) -> Outcome {
        for a in acks {
            self.mark_task(&a.framework_id, &a.task_id);
            let mut acked = None;
            if let Some(t) = self.tasks.get_mut(&(a.framework_id.clone(), a.task_id.clone())) {
                if let Some(i) = t.unacked.iter().position(|u| u.uuid == a.uuid) {
                    let u = t.unacked.remove(i);
                    acked = Some((u.timestamp_ms, a.task_id.clone(), u.uuid));
                }
            }
            if let Some(key) = acked {
                self.unindex_unacked(&a.framework_id, &key);
            }
        }
        Outcome::Applied
    }

    /// Index a new unacknowledged update of `framework_id`, dropping the framework's oldest
    /// when it holds more than [`MAX_UNACKED_PER_FRAMEWORK`].
    fn index_unacked(&mut self, framework_id: &str, key: (i64, String, Vec<u8>)) {
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

    fn unindex_unacked(&mut self, framework_id: &str, key: &(i64, String, Vec<u8>)) {
        if let Some(set) = self.unacked.get_mut(framework_id) {
            set.remove(key);
            if set.is_empty() {
                self.unacked.remove(framework_id);
            }
        }
    }

    /// Retention: remove what the limits of `c` no longer keep, at `now` (the command's
    /// timestamp). Deterministic, like every apply: the limits travel in the command.
    fn apply_collect_garbage(&mut self, c: &v1::CollectGarbage, now: i64) -> Outcome {
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
    fn collect_agents(&mut self, age: i64, now: i64) {
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
    fn collect_frameworks(&mut self, max: u64) {
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
    fn collect_task(&mut self, key: &(String, String)) {
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

    /// Rebuild the derived indexes (after a restore).
    fn reindex(&mut self) {
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
    }

    /// The tasks of one agent.
    pub fn tasks_on(&self, agent_id: &str) -> impl Iterator<Item = &TaskRecord> {
        self.agent_tasks
            .get(agent_id)
            .into_iter()
            .flatten()
            .filter_map(|k| self.tasks.get(k))
    }

    /// Non-terminal task counts by state name, for `corral status`.
    pub fn task_counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for t in self.tasks.values() {
            *out.entry(t.state().as_str_name().to_string()).or_insert(0) += 1;
        }
        out
    }

    fn apply_set_weights(&mut self, set: &v1::SetWeights) -> Outcome {
        let mut checked = Vec::with_capacity(set.weights.len());
        for (i, w) in set.weights.iter().enumerate() {
            let weight = w.weight_milli as f64 / 1000.0;
            match validate_weight(&format!("weights[{i}]"), &w.role, weight) {
                Ok(_) => checked.push((w.role.clone(), w.weight_milli)),
                Err(e) => return Outcome::Rejected(e),
            }
        }
        self.weights.extend(checked);
        Outcome::Applied
    }

    /// The weight of `role` (1 when not set).
    pub fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).map_or(1.0, |&m| m as f64 / 1000.0)
    }

    /// The canonical encoding of the state (snapshots and the hash).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serializing maps of plain data into a Vec cannot fail.
        self.snapshot_view()
            .write_to(&mut out)
            .expect("cluster state serializes");
        out
    }

    /// A consistent copy of the replicated part of the state, cheap to take (the big maps
    /// are shared, not copied) and independent of later applies.
    pub fn snapshot_view(&self) -> SnapshotView {
        SnapshotView {
            weights: self.weights.clone(),
            agents: self.agents.clone(),
            frameworks: self.frameworks.clone(),
            tasks: self.tasks.clone(),
            applied_commands: self.applied_commands,
            rejected_commands: self.rejected_commands,
            retention: self.retention.clone(),
        }
    }

    /// Decode [`ClusterState::encode`] output.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&SNAPSHOT_FORMAT, body)) => {
                let mut state: ClusterState = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                state.reindex();
                Ok(state)
            }
            Some((1, body)) => {
                let old: StateV1 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                let mut state = ClusterState {
                    weights: old.weights,
                    agents: old.agents.into_iter().collect(),
                    frameworks: old.frameworks,
                    tasks: old.tasks.into_iter().collect(),
                    applied_commands: old.applied_commands,
                    rejected_commands: old.rejected_commands,
                    ..Default::default()
                };
                state.reindex();
                Ok(state)
            }
            Some((v, _)) => Err(format!(
                "snapshot format {v} is newer than this master understands ({SNAPSHOT_FORMAT})"
            )),
            None => Err("empty snapshot".into()),
        }
    }

    /// The state hash (hex SHA-256): equal on masters that applied the same entries (S3).
    /// Costs the same whatever the size of the state (see [`crate::digest`]).
    pub fn hash(&self) -> String {
        let sums = self.digests.sums();
        if cfg!(debug_assertions) {
            assert_eq!(
                sums,
                self.full_digest_sums(),
                "the incremental state digest missed a change"
            );
        }
        crate::digest::state_hash(
            SNAPSHOT_FORMAT,
            &(
                &self.weights,
                self.applied_commands,
                self.rejected_commands,
                &self.retention,
            ),
            sums,
        )
    }

    /// The digest of the record `key` names as last settled, if the record exists.
    fn digest_of(&self, key: &Key) -> Option<u128> {
        match key {
            Key::Agent(id) => self.agents.get(id).map(|r| r.digest),
            Key::Framework(id) => self.frameworks.get(id).map(|r| r.digest),
            Key::Task(k) => self.tasks.get(k).map(|r| r.digest),
        }
    }

    /// Compute the digest of the record `key` names from its content, store it in the
    /// record and return it.
    fn refresh_digest(&mut self, key: &Key) -> Option<u128> {
        match key {
            Key::Agent(id) => self.agents.get_mut(id).map(|r| {
                r.digest = record_digest(0, r);
                r.digest
            }),
            Key::Framework(id) => self.frameworks.get_mut(id).map(|r| {
                r.digest = record_digest(1, r);
                r.digest
            }),
            Key::Task(k) => self.tasks.get_mut(k).map(|r| {
                r.digest = record_digest(2, r);
                r.digest
            }),
        }
    }

    /// The digest sums computed from every record's content.
    fn full_digest_sums(&self) -> [u128; 3] {
        let sum = |it: &mut dyn Iterator<Item = u128>| it.fold(0u128, u128::wrapping_add);
        [
            sum(&mut self.agents.values().map(|r| record_digest(0, r))),
            sum(&mut self.frameworks.values().map(|r| record_digest(1, r))),
            sum(&mut self.tasks.values().map(|r| record_digest(2, r))),
        ]
    }

    /// Compute and store every record's digest (after a restore), and the sums.
    fn rebuild_digests(&mut self) {
        let mut sums = [0u128; 3];
        // Persistent maps have no `values_mut`: rebuild them (this runs once per restore).
        self.agents = std::mem::take(&mut self.agents)
            .into_iter()
            .map(|(id, mut r)| {
                r.digest = record_digest(0, &r);
                sums[0] = sums[0].wrapping_add(r.digest);
                (id, r)
            })
            .collect();
        for r in self.frameworks.values_mut() {
            r.digest = record_digest(1, r);
            sums[1] = sums[1].wrapping_add(r.digest);
        }
        self.tasks = std::mem::take(&mut self.tasks)
            .into_iter()
            .map(|(key, mut r)| {
                r.digest = record_digest(2, &r);
                sums[2] = sums[2].wrapping_add(r.digest);
                (key, r)
            })
            .collect();
        self.digests.reset(sums);
    }

    /// About to change the record `key` names: take its digest out of the sums.
    fn mark(&mut self, key: Key) {
        let mut digests = std::mem::take(&mut self.digests);
        digests.mark(key.clone(), || self.digest_of(&key));
        self.digests = digests;
    }

    fn mark_agent(&mut self, id: &str) {
        self.mark(Key::Agent(id.to_string()));
    }

    fn mark_framework(&mut self, id: &str) {
        self.mark(Key::Framework(id.to_string()));
    }

    fn mark_task(&mut self, framework_id: &str, task_id: &str) {
        self.mark(Key::Task((framework_id.to_string(), task_id.to_string())));
    }

    /// The command is done: the changed records' digests join the sums again.
    fn settle_digests(&mut self) {
        let mut digests = std::mem::take(&mut self.digests);
        digests.settle(|key| self.refresh_digest(key));
        self.digests = digests;
    }
}

/// The name of a command kind, for logs and errors.
pub fn kind_name(kind: &v1::command::Kind) -> &'static str {
    use v1::command::Kind;
    match kind {
        Kind::SetWeights(_) => "SetWeights",
        Kind::RegisterAgent(_) => "RegisterAgent",
        Kind::ReregisterAgent(_) => "ReregisterAgent",
        Kind::MarkAgentUnreachable(_) => "MarkAgentUnreachable",
        Kind::RemoveAgent(_) => "RemoveAgent",
        Kind::DrainAgent(_) => "DrainAgent",
        Kind::RegisterFramework(_) => "RegisterFramework",
        Kind::UpdateFramework(_) => "UpdateFramework",
        Kind::DisconnectFramework(_) => "DisconnectFramework",
        Kind::TeardownFramework(_) => "TeardownFramework",
        Kind::LaunchTasks(_) => "LaunchTasks",
        Kind::UpdateStatuses(_) => "UpdateStatuses",
        Kind::AcknowledgeStatuses(_) => "AcknowledgeStatuses",
        Kind::CollectGarbage(_) => "CollectGarbage",
    }
}

impl StateMachine<CorralRaft> for ClusterState {
    type Decoded = v1::CommandBatch;

    fn decode(_log_id: &LogId<u64>, data: &Proposal) -> Result<v1::CommandBatch, String> {
        data.decode().map_err(|e| e.to_string())
    }

    fn apply_cost(batch: &v1::CommandBatch) -> usize {
        batch
            .commands
            .iter()
            .map(|c| match &c.kind {
                Some(v1::command::Kind::LaunchTasks(l)) => l.tasks.len().max(1),
                Some(v1::command::Kind::UpdateStatuses(u)) => u.statuses.len().max(1),
                Some(v1::command::Kind::AcknowledgeStatuses(a)) => a.acks.len().max(1),
                Some(v1::command::Kind::ReregisterAgent(r)) => r.tasks.len().max(1),
                _ => 1,
            })
            .sum()
    }

    fn apply(&mut self, log_id: &LogId<u64>, batch: v1::CommandBatch) -> ApplyResult {
        let outcomes = batch.commands.iter().map(|c| self.apply_command(c)).collect();
        // Debug and test builds check every invariant after each entry (it walks the whole
        // state, so not after each command: a test cluster must keep its heartbeats).
        if cfg!(debug_assertions) {
            self.check_after(log_id, &batch);
        }
        ApplyResult { outcomes }
    }

    type SnapshotView = SnapshotView;

    fn snapshot_view(&self) -> SnapshotView {
        ClusterState::snapshot_view(self)
    }

    fn write_snapshot(view: &SnapshotView, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        view.write_to(out)
    }

    fn restore(bytes: &[u8]) -> Result<Self, String> {
        Self::decode(bytes)
    }
}

impl ClusterState {
    /// Panic if an invariant is broken after applying `batch` (a bug: replicas must stop
    /// rather than diverge further).
    fn check_after(&self, log_id: &LogId<u64>, batch: &v1::CommandBatch) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(role: &str, milli: u64) -> v1::Command {
        v1::Command {
            timestamp_ms: 1,
            kind: Some(v1::command::Kind::SetWeights(v1::SetWeights {
                weights: vec![v1::RoleWeight {
                    role: role.into(),
                    weight_milli: milli,
                }],
            })),
        }
    }

    #[test]
    fn weights_apply_and_hash_is_deterministic() {
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        for s in [&mut a, &mut b] {
            assert_eq!(s.apply_command(&set("prod", 2000)), Outcome::Applied);
            assert_eq!(s.apply_command(&set("dev", 500)), Outcome::Applied);
        }
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.weight("prod"), 2.0);
        assert_eq!(a.weight("other"), 1.0);
        b.apply_command(&set("dev", 600));
        assert_ne!(a.hash(), b.hash());
        assert_eq!(ClusterState::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn apply_rechecks_what_the_leader_checked() {
        let mut s = ClusterState::default();
        let before = s.weights.clone();
        assert!(matches!(s.apply_command(&set("prod", 0)), Outcome::Rejected(m) if m.contains("weights[0].weight")));
        assert!(matches!(s.apply_command(&set("", 1000)), Outcome::Rejected(m) if m.contains("weights[0].role")));
        assert!(matches!(
            s.apply_command(&v1::Command {
                timestamp_ms: 0,
                kind: None
            }),
            Outcome::Rejected(_)
        ));
        assert_eq!(s.weights, before);
        assert_eq!(s.rejected_commands, 3);
    }

    #[test]
    fn weight_validation_names_the_field() {
        assert_eq!(validate_weight("w", "prod", 2.5), Ok(2500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12, 0.0001] {
            let e = validate_weight("weights[0]", "prod", bad).unwrap_err();
            assert!(e.starts_with("weights[0].weight"), "{bad}: {e}");
        }
        assert!(validate_weight("w", "a b", 1.0).unwrap_err().starts_with("w.role"));
    }

    fn cmd(kind: v1::command::Kind) -> v1::Command {
        v1::Command {
            timestamp_ms: 7,
            kind: Some(kind),
        }
    }

    fn scalar(name: &str, v: f64) -> v1::Resource {
        v1::Resource {
            name: name.into(),
            value: Some(v1::resource::Value::Scalar(v)),
        }
    }

    fn cluster_with_agent(cpus: f64, mem: f64) -> ClusterState {
        let mut s = ClusterState::default();
        let info = v1::AgentInfo {
            hostname: "h1".into(),
            resources: vec![scalar("cpus", cpus), scalar("mem", mem)],
            ..Default::default()
        };
        let reg = v1::RegisterAgent {
            agent_id: "a1".into(),
            info: Some(info),
        };
        assert_eq!(
            s.apply_command(&cmd(v1::command::Kind::RegisterAgent(reg))),
            Outcome::Applied
        );
        let fw = v1::FrameworkInfo {
            name: "fw".into(),
            ..Default::default()
        };
        let reg = v1::RegisterFramework {
            framework_id: "f1".into(),
            info: Some(fw),
        };
        assert_eq!(
            s.apply_command(&cmd(v1::command::Kind::RegisterFramework(reg))),
            Outcome::Applied
        );
        s
    }

    fn launch(tasks: &[(&str, f64)]) -> v1::command::Kind {
        let tasks = tasks
            .iter()
            .map(|(id, cpus)| v1::TaskInfo {
                task_id: id.to_string(),
                agent_id: "a1".into(),
                resources: vec![scalar("cpus", *cpus)],
                command: Some(v1::CommandInfo {
                    argv: vec!["true".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        v1::command::Kind::LaunchTasks(v1::LaunchTasks {
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            tasks,
        })
    }

    fn status(task: &str, state: v1::TaskState, uuid: u8) -> v1::command::Kind {
        v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
            statuses: vec![v1::TaskStatus {
                task_id: task.into(),
                framework_id: "f1".into(),
                agent_id: "a1".into(),
                state: state as i32,
                uuid: vec![uuid],
                ..Default::default()
            }],
        })
    }

    fn finish_at(task: &str, state: v1::TaskState, uuid: u8, at_ms: i64) -> v1::command::Kind {
        v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
            statuses: vec![v1::TaskStatus {
                task_id: task.into(),
                framework_id: "f1".into(),
                agent_id: "a1".into(),
                state: state as i32,
                uuid: vec![uuid],
                timestamp_ms: at_ms,
                ..Default::default()
            }],
        })
    }

    fn gc(max_tasks: u64, max_age_ms: i64, max_frameworks: u64, agent_age_ms: i64) -> v1::command::Kind {
        v1::command::Kind::CollectGarbage(v1::CollectGarbage {
            max_completed_tasks_per_framework: max_tasks,
            completed_task_max_age_ms: max_age_ms,
            max_completed_frameworks: max_frameworks,
            agent_gc_age_ms: agent_age_ms,
        })
    }

    fn at(now: i64, kind: v1::command::Kind) -> v1::Command {
        v1::Command {
            timestamp_ms: now,
            kind: Some(kind),
        }
    }

    #[test]
    fn retention_keeps_the_newest_finished_tasks_and_ids_free_up_after_it() {
        let mut s = cluster_with_agent(100.0, 1024.0);
        let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        let launch_all: Vec<(&str, f64)> = ids.iter().map(|i| (i.as_str(), 1.0)).collect();
        assert_eq!(s.apply_command(&cmd(launch(&launch_all))), Outcome::Applied);
        // Finished in reverse order of their ids: retention goes by finish time.
        for (i, id) in ids.iter().enumerate() {
            let t = 1000 - i as i64;
            s.apply_command(&cmd(finish_at(id, v1::TaskState::TaskFinished, i as u8, t)));
        }
        s.apply_command(&cmd(launch(&[("running", 1.0)])));
        assert!(s.garbage_due(
            &v1::CollectGarbage {
                max_completed_tasks_per_framework: 3,
                max_completed_frameworks: 50,
                ..Default::default()
            },
            2000
        ));
        assert_eq!(s.apply_command(&at(2000, gc(3, 0, 50, 0))), Outcome::Applied);
        let kept: Vec<&str> = s.tasks.keys().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            kept,
            ["running", "t0", "t1", "t2"],
            "the newest three finished tasks and the running one"
        );
        assert_eq!(s.retention.collected_tasks, 7);
        assert_eq!(
            s.retention.dropped_updates, 7,
            "their unacknowledged updates went with them"
        );
        assert_eq!(s.validate(), Ok(()));
        assert!(!s.garbage_due(
            &v1::CollectGarbage {
                max_completed_tasks_per_framework: 3,
                max_completed_frameworks: 50,
                ..Default::default()
            },
            2000
        ));
        // S2 holds for every retained task; a collected id may be launched again.
        let r = s.apply_command(&cmd(launch(&[("t1", 1.0)])));
        assert!(matches!(&r, Outcome::Rejected(m) if m.contains("S2")), "{r:?}");
        assert_eq!(s.apply_command(&cmd(launch(&[("t9", 1.0)]))), Outcome::Applied);
        // Age: finished before now - age goes, however few.
        assert_eq!(s.apply_command(&at(2000, gc(1000, 1000, 50, 0))), Outcome::Applied);
        let kept: Vec<&str> = s.tasks.keys().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            kept,
            ["running", "t0", "t9"],
            "t1 (999) and t2 (998) finished before 2000 - 1000"
        );
        assert_eq!(s.validate(), Ok(()));
    }

    fn statuses(updates: impl Iterator<Item = (String, Vec<u8>, i64)>) -> v1::command::Kind {
        v1::command::Kind::UpdateStatuses(v1::UpdateStatuses {
            statuses: updates
                .map(|(task, uuid, at_ms)| v1::TaskStatus {
                    task_id: task,
                    framework_id: "f1".into(),
                    agent_id: "a1".into(),
                    state: v1::TaskState::TaskRunning as i32,
                    uuid,
                    timestamp_ms: at_ms,
                    ..Default::default()
                })
                .collect(),
        })
    }

    #[test]
    fn unacknowledged_updates_are_bounded_per_framework_oldest_dropped_first() {
        let mut s = cluster_with_agent(1_000_000.0, 1_000_000.0);
        // Enough tasks that each holds fewer than the per-task bound and the framework
        // holds more than its own: 4,000 tasks x 13 updates = 52,000 > 50,000.
        let tasks: Vec<String> = (0..4000).map(|i| format!("t{i:04}")).collect();
        for chunk in tasks.chunks(500) {
            let l: Vec<(&str, f64)> = chunk.iter().map(|t| (t.as_str(), 1.0)).collect();
            assert_eq!(s.apply_command(&cmd(launch(&l))), Outcome::Applied);
        }
        let per_task = 13;
        assert!(per_task < MAX_UNACKED_PER_TASK && tasks.len() * per_task > MAX_UNACKED_PER_FRAMEWORK);
        // Round r gives every task an update stamped r: round 0 is the oldest.
        for round in 0..per_task {
            let updates = tasks
                .iter()
                .map(|t| (t.clone(), format!("{t}-{round}").into_bytes(), round as i64));
            assert_eq!(s.apply_command(&cmd(statuses(updates))), Outcome::Applied);
        }
        let held: usize = s.tasks.values().map(|t| t.unacked.len()).sum();
        assert_eq!(held, MAX_UNACKED_PER_FRAMEWORK);
        let dropped = tasks.len() * per_task - MAX_UNACKED_PER_FRAMEWORK;
        assert_eq!(s.retention.dropped_updates, dropped as u64);
        // The 2,000 dropped are round 0's first 2,000 tasks (oldest stamp, then task id).
        for (i, t) in tasks.iter().enumerate() {
            let first = &s.tasks[&("f1".to_string(), t.clone())].unacked[0];
            let expect_round = if i < dropped { 1 } else { 0 };
            assert_eq!(first.uuid, format!("{t}-{expect_round}").into_bytes(), "{t}");
        }
        assert_eq!(s.validate(), Ok(()));
        // Acknowledging frees room: the next update drops nothing.
        let ack = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
            acks: vec![v1::StatusAck {
                framework_id: "f1".into(),
                task_id: tasks[3999].clone(),
                uuid: format!("{}-0", tasks[3999]).into_bytes(),
            }],
        });
        assert_eq!(s.apply_command(&cmd(ack)), Outcome::Applied);
        let one = std::iter::once((tasks[0].clone(), b"late".to_vec(), 99));
        assert_eq!(s.apply_command(&cmd(statuses(one))), Outcome::Applied);
        assert_eq!(s.retention.dropped_updates, dropped as u64);
        assert_eq!(s.validate(), Ok(()));
        // The index is derived: a restored replica rebuilds the same one.
        assert_eq!(ClusterState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn a_snapshot_view_is_the_state_when_taken_whatever_apply_does_next() {
        let mut s = cluster_with_agent(100.0, 1024.0);
        s.apply_command(&cmd(launch(&[("a", 1.0), ("b", 1.0)])));
        let before = s.clone();
        let view = s.snapshot_view();
        s.apply_command(&cmd(status("a", v1::TaskState::TaskFinished, 1)));
        s.apply_command(&cmd(launch(&[("c", 1.0)])));
        let mut bytes = Vec::new();
        view.write_to(&mut bytes).unwrap();
        assert_eq!(bytes, before.encode(), "the view encodes the state as it was");
        assert_eq!(ClusterState::decode(&bytes).unwrap(), before);
        assert_ne!(bytes, s.encode());
    }

    #[test]
    fn retention_removes_old_torn_down_frameworks_once_their_tasks_ended() {
        let mut s = cluster_with_agent(100.0, 1024.0);
        s.apply_command(&cmd(launch(&[("t", 1.0)])));
        for f in ["f2", "f3"] {
            let reg = v1::RegisterFramework {
                framework_id: f.into(),
                info: Some(v1::FrameworkInfo {
                    name: f.into(),
                    ..Default::default()
                }),
            };
            s.apply_command(&cmd(v1::command::Kind::RegisterFramework(reg)));
        }
        for (f, t) in [("f1", 10), ("f2", 20), ("f3", 30)] {
            let down = v1::command::Kind::TeardownFramework(v1::TeardownFramework { framework_id: f.into() });
            s.apply_command(&at(t, down));
        }
        // Keep one: f2 goes (f1 is older but still has a running task), f3 stays.
        s.apply_command(&at(100, gc(1000, 0, 1, 0)));
        assert!(s.frameworks.contains_key("f1") && !s.frameworks.contains_key("f2") && s.frameworks.contains_key("f3"));
        s.apply_command(&cmd(status("t", v1::TaskState::TaskKilled, 1)));
        s.apply_command(&at(100, gc(1000, 0, 1, 0)));
        assert_eq!(s.frameworks.keys().collect::<Vec<_>>(), ["f3"]);
        assert!(s.tasks.is_empty(), "f1's finished task went with it");
        assert_eq!(s.retention.collected_frameworks, 2);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn agents_unreachable_too_long_are_gone_then_removed() {
        let mut s = cluster_with_agent(100.0, 1024.0);
        s.apply_command(&cmd(launch(&[("t", 1.0)])));
        let mark = v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: "a1".into() });
        s.apply_command(&at(1000, mark));
        // The first GC notes when it saw the agent away; the age counts from there.
        s.apply_command(&at(5000, gc(1000, 0, 50, 10_000)));
        assert_eq!(s.retention.unreachable_since.get("a1"), Some(&5000));
        s.apply_command(&at(14_999, gc(1000, 0, 50, 10_000)));
        assert_eq!(s.agents["a1"].state, AgentState::Unreachable);
        s.apply_command(&at(15_000, gc(1000, 0, 50, 10_000)));
        assert_eq!(s.agents["a1"].state, AgentState::Gone);
        let t = &s.tasks[&("f1".to_string(), "t".to_string())];
        assert_eq!(t.state(), v1::TaskState::TaskGone);
        assert_eq!(t.unacked.last().map(|u| u.state), Some(v1::TaskState::TaskGone as i32));
        // Its task finished, so it is kept only as long as finished tasks are; then the agent goes.
        s.apply_command(&at(16_000, gc(0, 0, 50, 10_000)));
        assert!(s.tasks.is_empty());
        assert!(
            s.agents.contains_key("a1"),
            "removed only by a GC that finds it without tasks"
        );
        s.apply_command(&at(16_000, gc(0, 0, 50, 10_000)));
        assert!(!s.agents.contains_key("a1"));
        assert!(s.retention.unreachable_since.is_empty());
        assert_eq!(s.retention.collected_agents, 1);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn version_1_snapshots_are_read() {
        let mut s = cluster_with_agent(4.0, 1024.0);
        s.apply_command(&cmd(launch(&[("t1", 1.0)])));
        let mut old = vec![1u8];
        old.extend(
            postcard::to_allocvec(&(
                &s.weights,
                &s.agents,
                &s.frameworks,
                &s.tasks,
                s.applied_commands,
                s.rejected_commands,
            ))
            .unwrap(),
        );
        let back = ClusterState::decode(&old).unwrap();
        assert_eq!(back.tasks, s.tasks);
        assert_eq!(back.validate(), Ok(()));
        assert_eq!(back.hash(), s.hash());
    }

    #[test]
    fn launch_refuses_over_commit_and_reused_task_ids() {
        let mut s = cluster_with_agent(4.0, 1024.0);
        assert_eq!(
            s.apply_command(&cmd(launch(&[("t1", 1.0), ("t2", 2.0)]))),
            Outcome::Applied
        );
        assert_eq!(s.agents["a1"].used.scalar_milli("cpus"), 3000);
        // S1: 3 + 2 > 4, even though the leader (a buggy one) proposed it.
        let r = s.apply_command(&cmd(launch(&[("t3", 2.0)])));
        assert!(matches!(&r, Outcome::Rejected(m) if m.contains("over-commit")), "{r:?}");
        assert!(!s.tasks.contains_key(&("f1".into(), "t3".into())));
        // S2: a task id is launched once, even after it finished.
        s.apply_command(&cmd(status("t1", v1::TaskState::TaskFinished, 1)));
        let r = s.apply_command(&cmd(launch(&[("t1", 0.5)])));
        assert!(matches!(&r, Outcome::Rejected(m) if m.contains("S2")), "{r:?}");
        // Unknown framework or agent.
        let mut bad = launch(&[("t9", 0.5)]);
        if let v1::command::Kind::LaunchTasks(l) = &mut bad {
            l.framework_id = "nope".into();
        }
        assert!(matches!(s.apply_command(&cmd(bad)), Outcome::Rejected(_)));
    }

    #[test]
    fn statuses_free_resources_once_and_acks_clear_them() {
        let mut s = cluster_with_agent(4.0, 1024.0);
        s.apply_command(&cmd(launch(&[("t1", 1.0)])));
        s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 1)));
        s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 1))); // retry: ignored
        let t = &s.tasks[&("f1".to_string(), "t1".to_string())];
        assert_eq!(t.state(), v1::TaskState::TaskRunning);
        assert_eq!(t.unacked.len(), 1);
        s.apply_command(&cmd(status("t1", v1::TaskState::TaskFailed, 2)));
        assert_eq!(s.agents["a1"].used, Resources::new());
        // After a terminal state nothing changes the task any more.
        s.apply_command(&cmd(status("t1", v1::TaskState::TaskRunning, 3)));
        let t = &s.tasks[&("f1".to_string(), "t1".to_string())];
        assert_eq!(t.state(), v1::TaskState::TaskFailed);
        assert_eq!(t.unacked.len(), 2);
        let ack = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
            acks: vec![v1::StatusAck {
                framework_id: "f1".into(),
                task_id: "t1".into(),
                uuid: vec![1],
            }],
        });
        s.apply_command(&cmd(ack));
        assert_eq!(s.tasks[&("f1".to_string(), "t1".to_string())].unacked.len(), 1);
        // An update for a task that does not exist is rejected.
        assert!(matches!(
            s.apply_command(&cmd(status("zz", v1::TaskState::TaskRunning, 9))),
            Outcome::Rejected(_)
        ));
    }

    #[test]
    fn unreachable_agents_and_their_return_are_deterministic() {
        let mut replicas = [cluster_with_agent(4.0, 1024.0), cluster_with_agent(4.0, 1024.0)];
        for s in replicas.iter_mut() {
            s.apply_command(&cmd(launch(&[("kept", 1.0), ("gone", 1.0)])));
            s.apply_command(&cmd(status("kept", v1::TaskState::TaskRunning, 1)));
            s.apply_command(&cmd(status("gone", v1::TaskState::TaskRunning, 2)));
            let mark = v1::command::Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: "a1".into() });
            assert_eq!(s.apply_command(&cmd(mark)), Outcome::Applied);
            assert_eq!(s.agents["a1"].state, AgentState::Unreachable);
            assert!(s.tasks.values().all(|t| t.state() == v1::TaskState::TaskUnreachable));
            // The agent returns with one of the two tasks still running.
            let inventory = vec![v1::TaskRecord {
                framework_id: "f1".into(),
                task: Some(v1::TaskInfo {
                    task_id: "kept".into(),
                    ..Default::default()
                }),
                state: v1::TaskState::TaskRunning as i32,
                exit_code: None,
            }];
            let info = v1::AgentInfo {
                hostname: "h1".into(),
                resources: vec![scalar("cpus", 4.0), scalar("mem", 1024.0)],
                ..Default::default()
            };
            let back = v1::command::Kind::ReregisterAgent(v1::ReregisterAgent {
                agent_id: "a1".into(),
                info: Some(info),
                tasks: inventory,
            });
            assert_eq!(s.apply_command(&cmd(back)), Outcome::Applied);
            assert_eq!(
                s.tasks[&("f1".to_string(), "kept".to_string())].state(),
                v1::TaskState::TaskRunning
            );
            assert_eq!(
                s.tasks[&("f1".to_string(), "gone".to_string())].state(),
                v1::TaskState::TaskLost
            );
            assert_eq!(
                s.agents["a1"].used.scalar_milli("cpus"),
                1000,
                "the lost task's resources are free"
            );
        }
        // Master-made updates (uuids included) are the same on every replica.
        assert_eq!(replicas[0].hash(), replicas[1].hash());
    }

    #[test]
    fn restore_rebuilds_the_agent_index() {
        let mut s = cluster_with_agent(4.0, 1024.0);
        s.apply_command(&cmd(launch(&[("t1", 1.0), ("t2", 1.0)])));
        let back = ClusterState::decode(&s.encode()).unwrap();
        assert_eq!(back.tasks_on("a1").count(), 2);
        assert_eq!(back.validate(), Ok(()));
        assert_eq!(back.hash(), s.hash());
    }

    #[test]
    fn newer_snapshot_formats_are_refused() {
        let mut bytes = ClusterState::default().encode();
        bytes[0] = SNAPSHOT_FORMAT + 1;
        assert!(ClusterState::decode(&bytes).unwrap_err().contains("newer"));
    }

    /// A launch of a task with 20 labels and 20 environment variables, built with the maps
    /// filled in `order`.
    fn launch_with_maps(order: &[usize]) -> v1::command::Kind {
        let mut labels = BTreeMap::new();
        let mut environment = BTreeMap::new();
        for &i in order {
            labels.insert(format!("label-{i}"), format!("value-{i}"));
            environment.insert(format!("VAR_{i}"), format!("{i}"));
        }
        v1::command::Kind::LaunchTasks(v1::LaunchTasks {
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            tasks: vec![v1::TaskInfo {
                task_id: "mapped".into(),
                agent_id: "a1".into(),
                resources: vec![scalar("cpus", 1.0)],
                command: Some(v1::CommandInfo {
                    argv: vec!["true".into()],
                    environment,
                    ..Default::default()
                }),
                labels,
                ..Default::default()
            }],
        })
    }

    /// The state hash after launching the task of [`launch_with_maps`].
    fn hash_with_maps(order: &[usize]) -> String {
        let mut s = cluster_with_agent(4.0, 1024.0);
        assert_eq!(s.apply_command(&cmd(launch_with_maps(order))), Outcome::Applied);
        s.hash()
    }

    /// Set in the child process of `maps_hash_the_same_in_any_order_and_in_any_process`.
    const HASH_CHILD_ENV: &str = "CORRAL_STATE_HASH_CHILD";

    /// S3 for records with maps: a map's encoding (and so the state hash) depends neither
    /// on the order its entries were inserted in nor on the process (a HashMap's iteration
    /// order differs between processes; prost maps are BTreeMaps for this reason).
    #[test]
    fn maps_hash_the_same_in_any_order_and_in_any_process() {
        let forward: Vec<usize> = (0..20).collect();
        let backward: Vec<usize> = (0..20).rev().collect();
        let shuffled: Vec<usize> = (0..20).map(|i| (i * 7) % 20).collect();
        let here = hash_with_maps(&forward);
        if std::env::var_os(HASH_CHILD_ENV).is_some() {
            println!("hash={here}");
            return;
        }
        assert_eq!(hash_with_maps(&backward), here);
        assert_eq!(hash_with_maps(&shuffled), here);
        // The same state built in another process: the test binary, run on this test.
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "state::tests::maps_hash_the_same_in_any_order_and_in_any_process",
                "--nocapture",
            ])
            .env(HASH_CHILD_ENV, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let theirs = stdout
            .lines()
            .find_map(|l| l.strip_prefix("hash="))
            .unwrap_or_else(|| panic!("the child printed no hash: {stdout}"));
        assert_eq!(theirs, here, "another process hashes the same state differently");
    }

    /// Every kind of command, in a random order over a small universe of agents,
    /// frameworks and tasks: after each one the invariants hold (S1 and the indexes) and
    /// the incremental digest equals a recomputation from every record; a restored copy
    /// has the same hash.
    #[test]
    fn random_commands_keep_the_invariants_and_the_hash() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("CORRAL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("CORRAL_TEST_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut s = ClusterState::default();
        let mut replica = ClusterState::default();
        let mut views: Option<(i64, SnapshotView, String)> = None;
        let agents = ["a1", "a2", "a3"];
        let frameworks = ["f1", "f2", "f3"];
        let states = [
            v1::TaskState::TaskRunning,
            v1::TaskState::TaskFinished,
            v1::TaskState::TaskFailed,
            v1::TaskState::TaskKilled,
        ];
        for step in 0..3000i64 {
            let agent = agents[rng.random_range(0..agents.len())].to_string();
            let framework = frameworks[rng.random_range(0..frameworks.len())].to_string();
            let task = format!("t{}", rng.random_range(0..40));
            let info = v1::AgentInfo {
                hostname: format!("h-{agent}"),
                resources: vec![scalar("cpus", 4.0), scalar("mem", 1024.0)],
                ..Default::default()
            };
            use v1::command::Kind;
            let kind = match rng.random_range(0..40) {
                0..=2 => Kind::RegisterAgent(v1::RegisterAgent {
                    agent_id: agent,
                    info: Some(info),
                }),
                3..=5 => Kind::ReregisterAgent(v1::ReregisterAgent {
                    tasks: s
                        .tasks_on(&agent)
                        .filter(|_| rng.random_bool(0.5))
                        .map(|t| v1::TaskRecord {
                            framework_id: t.framework_id.clone(),
                            task: Some(v1::TaskInfo {
                                task_id: t.task_id.clone(),
                                ..Default::default()
                            }),
                            state: v1::TaskState::TaskRunning as i32,
                            exit_code: None,
                        })
                        .collect(),
                    agent_id: agent,
                    info: Some(info),
                }),
                6 => Kind::MarkAgentUnreachable(v1::MarkAgentUnreachable { agent_id: agent }),
                7..=8 => Kind::RegisterFramework(v1::RegisterFramework {
                    framework_id: framework,
                    info: Some(v1::FrameworkInfo {
                        name: "fw".into(),
                        ..Default::default()
                    }),
                }),
                9 => Kind::UpdateFramework(v1::UpdateFramework {
                    info: Some(v1::FrameworkInfo {
                        framework_id: framework,
                        name: format!("fw{step}"),
                        ..Default::default()
                    }),
                }),
                10 => Kind::DisconnectFramework(v1::DisconnectFramework {
                    framework_id: framework,
                }),
                11 if rng.random_bool(0.1) => Kind::TeardownFramework(v1::TeardownFramework {
                    framework_id: framework,
                }),
                11..=20 => Kind::LaunchTasks(v1::LaunchTasks {
                    tasks: vec![v1::TaskInfo {
                        task_id: task,
                        agent_id: agent.clone(),
                        resources: vec![scalar("cpus", 0.5)],
                        command: Some(v1::CommandInfo {
                            argv: vec!["true".into()],
                            environment: (0..rng.random_range(0..6))
                                .map(|i| (format!("V{}", rng.random_range(0..20)), format!("{i}")))
                                .collect(),
                            ..Default::default()
                        }),
                        labels: (0..rng.random_range(0..6))
                            .map(|i| (format!("l{}", rng.random_range(0..20)), format!("{i}")))
                            .collect(),
                        ..Default::default()
                    }],
                    framework_id: framework,
                    agent_id: agent,
                }),
                21..=32 => Kind::UpdateStatuses(v1::UpdateStatuses {
                    statuses: vec![v1::TaskStatus {
                        task_id: task,
                        framework_id: framework,
                        agent_id: agent,
                        state: states[rng.random_range(0..states.len())] as i32,
                        uuid: vec![rng.random_range(0..8)],
                        timestamp_ms: step,
                        ..Default::default()
                    }],
                }),
                33..=34 => Kind::CollectGarbage(v1::CollectGarbage {
                    max_completed_tasks_per_framework: rng.random_range(0..8),
                    completed_task_max_age_ms: rng.random_range(0..200),
                    max_completed_frameworks: rng.random_range(0..3),
                    agent_gc_age_ms: rng.random_range(0..200),
                }),
                _ => Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses {
                    acks: vec![v1::StatusAck {
                        framework_id: framework,
                        task_id: task,
                        uuid: vec![rng.random_range(0..8)],
                    }],
                }),
            };
            let c = at(step, kind);
            // A replica fed the command after a trip through its wire encoding, as a follower
            // gets it: it must reach the same state and hash.
            let wire = v1::Command::decode(c.encode_to_vec().as_slice()).expect("decodes");
            s.apply_command(&c);
            replica.apply_command(&wire);
            assert_eq!(s.digests.sums(), s.full_digest_sums(), "step {step}");
            assert_eq!(s.validate(), Ok(()), "step {step}");
            // A snapshot view taken now still encodes this state after later commands
            // changed the shared trees.
            if step % 250 == 0 {
                if let Some((at_step, view, then)) = views.take() {
                    let mut bytes = Vec::new();
                    view.write_to(&mut bytes).unwrap();
                    let restored = ClusterState::decode(&bytes).unwrap();
                    assert_eq!(restored.hash(), then, "the view of step {at_step}");
                }
                views = Some((step, s.snapshot_view(), s.hash()));
            }
        }
        assert!(
            s.tasks.len() as u64 + s.retention.collected_tasks > 10,
            "the sequence launched tasks"
        );
        assert!(s.retention.collected_tasks > 0, "the sequence collected tasks");
        assert_eq!(replica.hash(), s.hash(), "a replica fed the encoded commands diverged");
        let back = ClusterState::decode(&s.encode()).unwrap();
        assert_eq!(back.hash(), s.hash());
    }
}

//! The replicated cluster state and its deterministic apply.
//!
//! Apply decodes a [`Proposal`](crate::raft::types::Proposal), re-checks every rule (the
//! leader checked before proposing, but a stale or buggy leader must not be able to corrupt
//! the state), mutates, and returns one [`Outcome`](crate::raft::types::Outcome) per
//! command. It reads no clock, draws no random number and does no I/O: time arrives as the
//! leader's `timestamp_ms` inside the command.
//!
//! Every collection is ordered (`BTreeMap`, or `imbl::OrdMap` for the two that grow with the
//! cluster), so the serialized state is canonical and its SHA-256, the **state hash**, is
//! equal on every master that applied the same entries (S3).
//!
//! Tasks and agents are persistent (copy-on-write) B-trees: a snapshot takes a
//! [`SnapshotView`] in O(1) under the state's read lock and encodes it afterwards, while
//! apply goes on; a node is copied only when apply changes it while a view still shares it.

//! # Layout
//! - `records`: agents, frameworks, tasks and their statuses;
//! - `apply`: the one match over commands ([`ClusterState::apply_command`]);
//! - `retention`: `CollectGarbage` and the indexes that find what it removes;
//! - `invariants`: what apply keeps true ([`ClusterState::validate`]);
//! - [`digest`]: the state hash, kept current by apply (S3);
//! - `snapshot`: the snapshot encoding and openraft's state machine.

mod apply;
pub mod changes;
pub mod digest;
mod invariants;
mod records;
mod retention;
mod snapshot;
#[cfg(test)]
mod tests;

pub use apply::validate_weight;
pub use records::*;
pub use snapshot::SnapshotView;

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;

use corral_proto::resources::Resources;
use corral_proto::v1;
use serde::{Deserialize, Serialize};

use digest::Digests;

/// The role of frameworks that name none.
pub const DEFAULT_ROLE: &str = "*";

/// Highest role weight accepted (in units).
pub const MAX_WEIGHT: f64 = 1_000_000.0;
/// Longest role name accepted.
pub const MAX_ROLE_LEN: usize = 128;

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
    /// Agents, by id.
    pub agents: OrdMap<String, AgentRecord>,
    /// Frameworks, by id.
    pub frameworks: BTreeMap<String, FrameworkRecord>,
    /// Tasks by (framework id, task id), terminal ones included while retained: a retained
    /// task id is never launched again in its framework (S2).
    pub tasks: OrdMap<(String, String), TaskRecord>,
    /// Commands applied and rejected since the cluster began (diagnostics, part of the hash).
    pub applied_commands: u64,
    /// Commands refused at apply (they change nothing but this count).
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
    /// Torn-down frameworks removed by retention.
    pub collected_frameworks: u64,
    /// Gone agents removed by retention.
    pub collected_agents: u64,
    /// Unacknowledged status updates removed with their task or over
    /// [`MAX_UNACKED_PER_FRAMEWORK`].
    pub dropped_updates: u64,
}

impl ClusterState {
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

    /// The weight of `role` (1 when not set).
    pub fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).map_or(1.0, |&m| m as f64 / 1000.0)
    }
}

/// Whether this master version applies `command`'s kind. `apply_command` refuses the others
/// (deterministically), but a committed one halts apply before it gets there
/// (`StateMachine::decode`): a newer master may apply it.
pub fn handled(command: &v1::Command) -> bool {
    use v1::command::Kind;
    !matches!(
        command.kind,
        None | Some(Kind::RemoveAgent(_)) | Some(Kind::DrainAgent(_))
    )
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
        Kind::ExecutorExited(_) => "ExecutorExited",
    }
}

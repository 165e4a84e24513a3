//! The records of the replicated state: agents, frameworks, tasks and their statuses.

use corral_proto::resources::Resources;
use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};

/// Where an agent stands with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    /// Registered and reachable: its resources are offered.
    Active,
    /// Out of touch past its timeout: its tasks are TASK_UNREACHABLE until it returns.
    Unreachable,
    /// Being drained: no new offers.
    Draining,
    /// Removed for good: its tasks are TASK_GONE.
    Gone,
}

/// An agent of the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Its id, given by the master at first registration.
    pub id: String,
    /// The hostname it registered with.
    pub hostname: String,
    /// The address of its HTTP endpoint.
    pub address: String,
    /// Its total resources.
    pub resources: Resources,
    /// Its attributes (`name`, `value`).
    pub attributes: Vec<(String, String)>,
    /// Whether it runs tasks in cgroups with limits.
    pub isolation: bool,
    /// Where it stands with the cluster.
    pub state: AgentState,
    /// Sum of the resources of the agent's non-terminal tasks and of its executors; never
    /// above `resources` (S1).
    pub used: Resources,
    /// What the agent advertised it can do beyond command tasks (`AgentInfo.capabilities`).
    pub capabilities: Vec<String>,
    /// The executors running on the agent, by (framework id, executor id).
    pub executors: std::collections::BTreeMap<(String, String), ExecutorRecord>,
    /// When it first registered (leader's clock, ms since the epoch).
    pub registered_at_ms: i64,
    /// When its record last changed (leader's clock).
    pub updated_at_ms: i64,
    /// This record's part of the state hash (see [`crate::digest`]); derived, not replicated.
    #[serde(skip)]
    pub(crate) digest: u128,
}

/// The capability an agent advertises when it runs tasks with an ExecutorInfo.
pub const CAPABILITY_EXECUTORS: &str = "EXECUTORS";

impl AgentRecord {
    /// Whether the agent advertised `capability`.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// A framework's executor on one agent, from the launch of its first task until it ends:
/// what it holds counts in the agent's `used` and the framework's DRF allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    /// The framework it runs tasks for.
    pub framework_id: String,
    /// Its id, unique within the framework on its agent.
    pub executor_id: String,
    /// The ExecutorInfo as first launched (protobuf): later tasks must name the same.
    pub info: Vec<u8>,
    /// What it holds on its agent, beside its tasks.
    pub resources: Resources,
    /// When the launch that started it was committed (leader's clock).
    pub launched_at_ms: i64,
}

/// Where a framework stands with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameworkState {
    /// Subscribed.
    Connected,
    /// Its stream is gone; its failover timeout runs.
    Disconnected,
    /// Ended: its tasks were killed; kept for a while by retention.
    TornDown,
}

/// A framework of the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkRecord {
    /// Its id, given by the master at first subscription.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The role its resources count against (DRF shares and weights are per role).
    pub role: String,
    /// The user its tasks run as.
    pub user: String,
    /// The host it subscribed from.
    pub hostname: String,
    /// How long it may stay away before it is torn down.
    pub failover_timeout_ms: u64,
    /// Where it stands with the cluster.
    pub state: FrameworkState,
    /// When it first subscribed (leader's clock).
    pub registered_at_ms: i64,
    /// When its stream was last lost, while it is disconnected.
    pub disconnected_at_ms: Option<i64>,
    /// The principal that registered it (see [`crate::acl`]); empty for an anonymous one.
    pub principal: String,
    /// This record's part of the state hash (see [`crate::digest`]); derived, not replicated.
    #[serde(skip)]
    pub(crate) digest: u128,
}

impl FrameworkRecord {
    /// What an agent is told of the framework with each of its tasks.
    pub fn wire_info(&self) -> v1::FrameworkInfo {
        v1::FrameworkInfo {
            framework_id: self.id.clone(),
            name: self.name.clone(),
            role: self.role.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            failover_timeout_seconds: self.failover_timeout_ms as f64 / 1000.0,
            labels: Default::default(),
            principal: self.principal.clone(),
        }
    }
}

/// One status of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The task state (`v1::TaskState`).
    pub state: i32,
    /// A human-readable explanation.
    pub message: String,
    /// Why (`v1::Reason`).
    pub reason: i32,
    /// Who reported it (`v1::Source`).
    pub source: i32,
    /// The exit code, when the task's process ended.
    pub exit_code: Option<i32>,
    /// The update's id, which its acknowledgement names (empty for the master's own).
    pub uuid: Vec<u8>,
    /// When it was reported (ms since the epoch).
    pub timestamp_ms: i64,
}

/// A task of the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The framework that launched it.
    pub framework_id: String,
    /// Its id, unique within the framework while it is retained (S2).
    pub task_id: String,
    /// Its name.
    pub name: String,
    /// The agent it runs on.
    pub agent_id: String,
    /// What it uses on that agent.
    pub resources: Resources,
    /// The TaskInfo as launched (protobuf), sent again to an agent that lacks the task.
    pub info: Vec<u8>,
    /// Its latest status.
    pub status: StatusRecord,
    /// Updates the framework has not acknowledged yet, oldest first; resent by the leader.
    pub unacked: Vec<StatusRecord>,
    /// When its launch was committed (leader's clock).
    pub launched_at_ms: i64,
    /// This record's part of the state hash (see [`crate::digest`]); derived, not replicated.
    #[serde(skip)]
    pub(crate) digest: u128,
}

impl TaskRecord {
    /// Its latest state.
    pub fn state(&self) -> v1::TaskState {
        v1::TaskState::try_from(self.status.state).unwrap_or(v1::TaskState::Unspecified)
    }

    /// Whether its latest state is terminal.
    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
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

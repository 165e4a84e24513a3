//! The records of the replicated state: agents, frameworks, tasks and their statuses.

use corral_proto::resources::Resources;
use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};

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

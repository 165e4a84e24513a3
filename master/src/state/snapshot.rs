//! The snapshot encoding: a view taken under the lock in O(1), encoded after it; the
//! version 1 encoding still read.

use std::collections::BTreeMap;

use imbl::OrdMap;

use corral_proto::resources::Resources;
use corral_proto::v1;
use corral_raft_store::StateMachine;
use openraft::LogId;
use serde::{Deserialize, Serialize};

use crate::raft::types::{ApplyResult, CorralRaft, Proposal};

use super::*;

/// Format version of the snapshot encoding written by this build. Version 2 added
/// [`Retention`], version 3 each framework's principal, version 4 each agent's capabilities
/// and executors; versions 1 to 3 are still read ([`StateV1`], [`StateV2`], [`StateV3`]).
pub(super) const SNAPSHOT_FORMAT: u8 = 4;

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

/// An agent record before capabilities and executors (versions 1 to 3).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct AgentRecordV3 {
    id: String,
    hostname: String,
    address: String,
    resources: Resources,
    attributes: Vec<(String, String)>,
    isolation: bool,
    state: AgentState,
    used: Resources,
    registered_at_ms: i64,
    updated_at_ms: i64,
}

impl From<AgentRecordV3> for AgentRecord {
    fn from(a: AgentRecordV3) -> Self {
        AgentRecord {
            id: a.id,
            hostname: a.hostname,
            address: a.address,
            resources: a.resources,
            attributes: a.attributes,
            isolation: a.isolation,
            state: a.state,
            used: a.used,
            // Registered before capabilities: it runs command tasks only, until it
            // registers again and says otherwise.
            capabilities: Vec::new(),
            executors: BTreeMap::new(),
            registered_at_ms: a.registered_at_ms,
            updated_at_ms: a.updated_at_ms,
            digest: 0,
        }
    }
}

#[cfg(test)]
impl From<&AgentRecord> for AgentRecordV3 {
    fn from(a: &AgentRecord) -> Self {
        AgentRecordV3 {
            id: a.id.clone(),
            hostname: a.hostname.clone(),
            address: a.address.clone(),
            resources: a.resources.clone(),
            attributes: a.attributes.clone(),
            isolation: a.isolation,
            state: a.state,
            used: a.used.clone(),
            registered_at_ms: a.registered_at_ms,
            updated_at_ms: a.updated_at_ms,
        }
    }
}

fn upgrade_agents(agents: impl IntoIterator<Item = (String, AgentRecordV3)>) -> OrdMap<String, AgentRecord> {
    agents.into_iter().map(|(k, a)| (k, AgentRecord::from(a))).collect()
}

/// A version 3 snapshot: agents without capabilities and executors.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StateV3 {
    weights: BTreeMap<String, u64>,
    agents: BTreeMap<String, AgentRecordV3>,
    frameworks: BTreeMap<String, FrameworkRecord>,
    tasks: OrdMap<(String, String), TaskRecord>,
    applied_commands: u64,
    rejected_commands: u64,
    retention: Retention,
}

/// A version 1 snapshot: the state before [`Retention`].
#[derive(Deserialize)]
struct StateV1 {
    weights: BTreeMap<String, u64>,
    agents: BTreeMap<String, AgentRecordV3>,
    frameworks: BTreeMap<String, FrameworkRecordV2>,
    tasks: BTreeMap<(String, String), TaskRecord>,
    applied_commands: u64,
    rejected_commands: u64,
}

/// A framework record before principals (versions 1 and 2).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct FrameworkRecordV2 {
    id: String,
    name: String,
    role: String,
    user: String,
    hostname: String,
    failover_timeout_ms: u64,
    state: FrameworkState,
    registered_at_ms: i64,
    disconnected_at_ms: Option<i64>,
}

impl From<FrameworkRecordV2> for FrameworkRecord {
    fn from(f: FrameworkRecordV2) -> Self {
        FrameworkRecord {
            id: f.id,
            name: f.name,
            role: f.role,
            user: f.user,
            hostname: f.hostname,
            failover_timeout_ms: f.failover_timeout_ms,
            state: f.state,
            registered_at_ms: f.registered_at_ms,
            disconnected_at_ms: f.disconnected_at_ms,
            // Registered before principals were recorded: anonymous.
            principal: String::new(),
            digest: 0,
        }
    }
}

#[cfg(test)]
impl From<&FrameworkRecord> for FrameworkRecordV2 {
    fn from(f: &FrameworkRecord) -> Self {
        FrameworkRecordV2 {
            id: f.id.clone(),
            name: f.name.clone(),
            role: f.role.clone(),
            user: f.user.clone(),
            hostname: f.hostname.clone(),
            failover_timeout_ms: f.failover_timeout_ms,
            state: f.state,
            registered_at_ms: f.registered_at_ms,
            disconnected_at_ms: f.disconnected_at_ms,
        }
    }
}

fn upgrade(frameworks: BTreeMap<String, FrameworkRecordV2>) -> BTreeMap<String, FrameworkRecord> {
    frameworks.into_iter().map(|(k, f)| (k, f.into())).collect()
}

/// A version 2 snapshot: frameworks without principals.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StateV2 {
    weights: BTreeMap<String, u64>,
    agents: BTreeMap<String, AgentRecordV3>,
    frameworks: BTreeMap<String, FrameworkRecordV2>,
    tasks: OrdMap<(String, String), TaskRecord>,
    applied_commands: u64,
    rejected_commands: u64,
    retention: Retention,
}

impl ClusterState {
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
            Some((3, body)) => {
                let old: StateV3 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                let mut state = ClusterState {
                    weights: old.weights,
                    agents: upgrade_agents(old.agents),
                    frameworks: old.frameworks,
                    tasks: old.tasks,
                    applied_commands: old.applied_commands,
                    rejected_commands: old.rejected_commands,
                    retention: old.retention,
                    ..Default::default()
                };
                state.reindex();
                Ok(state)
            }
            Some((2, body)) => {
                let old: StateV2 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                let mut state = ClusterState {
                    weights: old.weights,
                    agents: upgrade_agents(old.agents),
                    frameworks: upgrade(old.frameworks),
                    tasks: old.tasks,
                    applied_commands: old.applied_commands,
                    rejected_commands: old.rejected_commands,
                    retention: old.retention,
                    ..Default::default()
                };
                state.reindex();
                Ok(state)
            }
            Some((1, body)) => {
                let old: StateV1 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                let mut state = ClusterState {
                    weights: old.weights,
                    agents: upgrade_agents(old.agents),
                    frameworks: upgrade(old.frameworks),
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
}

impl StateMachine<CorralRaft> for ClusterState {
    type Decoded = v1::CommandBatch;

    /// A batch this master cannot apply as written (undecodable, or holding a command of a
    /// kind it does not handle: written by a newer master) is an error, and the store then
    /// stops this master's Raft: applying the rest and skipping that command would leave
    /// this replica different from the masters that understood it (a rolling upgrade
    /// must upgrade every master before the leader proposes a new kind).
    fn decode(log_id: &LogId<u64>, data: &Proposal) -> Result<v1::CommandBatch, String> {
        let batch = data.decode().map_err(|e| e.to_string())?;
        if let Some((i, c)) = batch.commands.iter().enumerate().find(|(_, c)| !super::handled(c)) {
            let kind = c.kind.as_ref().map_or("of an unknown kind", super::kind_name);
            tracing::error!(
                index = log_id.index,
                command = i,
                kind,
                "a committed command this master cannot apply: stopping its apply (upgrade this master)"
            );
            return Err(format!(
                "command {i} ({kind}) is not handled by this master version; it was written by a newer master"
            ));
        }
        Ok(batch)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_2_snapshot_reads_with_anonymous_frameworks() {
        let framework = FrameworkRecordV2 {
            id: "fw-1".into(),
            name: "old".into(),
            role: "*".into(),
            user: "u".into(),
            hostname: "h".into(),
            failover_timeout_ms: 1000,
            state: FrameworkState::Connected,
            registered_at_ms: 5,
            disconnected_at_ms: None,
        };
        let old = StateV2 {
            weights: BTreeMap::from([("r".to_string(), 2000)]),
            agents: BTreeMap::new(),
            frameworks: BTreeMap::from([("fw-1".to_string(), framework)]),
            tasks: OrdMap::new(),
            applied_commands: 7,
            rejected_commands: 1,
            retention: Retention::default(),
        };
        let mut bytes = vec![2u8];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        let state = ClusterState::decode(&bytes).unwrap();
        let f = &state.frameworks["fw-1"];
        assert_eq!((f.name.as_str(), f.principal.as_str()), ("old", ""));
        assert_eq!(state.applied_commands, 7);
        // And it is written back in the current format, which reads the same.
        let again = ClusterState::decode(&state.encode()).unwrap();
        assert_eq!(again.frameworks["fw-1"], state.frameworks["fw-1"]);
    }

    #[test]
    fn a_version_3_snapshot_reads_with_agents_that_run_command_tasks_only() {
        let agent = AgentRecordV3 {
            id: "a1".into(),
            hostname: "h1".into(),
            address: "127.0.0.1:1".into(),
            resources: Resources::scalar("cpus", 4000).unwrap(),
            attributes: vec![("rack".into(), "r1".into())],
            isolation: false,
            state: AgentState::Active,
            used: Resources::new(),
            registered_at_ms: 3,
            updated_at_ms: 4,
        };
        let old = StateV3 {
            weights: BTreeMap::new(),
            agents: BTreeMap::from([("a1".to_string(), agent)]),
            frameworks: BTreeMap::new(),
            tasks: OrdMap::new(),
            applied_commands: 2,
            rejected_commands: 0,
            retention: Retention::default(),
        };
        let mut bytes = vec![3u8];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        let state = ClusterState::decode(&bytes).unwrap();
        let a = &state.agents["a1"];
        assert_eq!((a.hostname.as_str(), a.registered_at_ms), ("h1", 3));
        assert!(a.capabilities.is_empty() && a.executors.is_empty());
        assert!(!a.can(CAPABILITY_EXECUTORS));
        let again = ClusterState::decode(&state.encode()).unwrap();
        assert_eq!(again.agents["a1"], state.agents["a1"]);
        assert_eq!(again.hash(), state.hash());
    }
}

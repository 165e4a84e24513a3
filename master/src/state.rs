//! The replicated cluster state and its deterministic apply.
//!
//! Apply decodes a [`Proposal`], re-checks every rule (the leader checked before proposing,
//! but a stale or buggy leader must not be able to corrupt the state), mutates, and returns
//! one [`Outcome`] per command. It reads no clock, draws no random number and does no I/O:
//! time arrives as the leader's `timestamp_ms` inside the command.
//!
//! Every collection is a `BTreeMap`, so the serialized state is canonical and its SHA-256,
//! the **state hash**, is equal on every master that applied the same entries (S3).

use std::collections::BTreeMap;

use corral_proto::v1;
use corral_raft_store::StateMachine;
use openraft::LogId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::{ApplyResult, CorralRaft, Outcome, Proposal};

/// Highest role weight accepted (in units).
pub const MAX_WEIGHT: f64 = 1_000_000.0;
/// Longest role name accepted.
pub const MAX_ROLE_LEN: usize = 128;
/// Format version of the snapshot encoding written by this build.
const SNAPSHOT_FORMAT: u8 = 1;

/// The state every master replicates. Agents, frameworks and tasks join it with the
/// issue that brings them; role weights are the first replicated write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Role → weight in thousandths (DRF weights; roles not listed weigh 1).
    pub weights: BTreeMap<String, u64>,
    /// Commands applied and rejected since the cluster began (diagnostics, part of the hash).
    pub applied_commands: u64,
    pub rejected_commands: u64,
}

/// Why a weight is not acceptable; the message names the field.
pub fn validate_weight(field: &str, role: &str, weight: f64) -> Result<u64, String> {
    if role.is_empty() || role.len() > MAX_ROLE_LEN || role.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{field}.role: {role:?} is not a valid role name (1 to {MAX_ROLE_LEN} printable characters, no spaces)"
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
        let outcome = match &command.kind {
            Some(Kind::SetWeights(set)) => self.apply_set_weights(set),
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
        outcome
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
        let mut out = vec![SNAPSHOT_FORMAT];
        // Serializing maps of plain data into a Vec cannot fail.
        postcard::to_io(self, &mut out).expect("cluster state serializes");
        out
    }

    /// Decode [`ClusterState::encode`] output.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&SNAPSHOT_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!(
                "snapshot format {v} is newer than this master understands ({SNAPSHOT_FORMAT})"
            )),
            None => Err("empty snapshot".into()),
        }
    }

    /// Hex SHA-256 of the canonical encoding.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.encode());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn kind_name(kind: &v1::command::Kind) -> &'static str {
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
    }
}

impl StateMachine<CorralRaft> for ClusterState {
    fn apply(&mut self, _log_id: &LogId<u64>, data: &Proposal) -> ApplyResult {
        ApplyResult {
            outcomes: data.batch.commands.iter().map(|c| self.apply_command(c)).collect(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.encode()
    }

    fn restore(bytes: &[u8]) -> Result<Self, String> {
        Self::decode(bytes)
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

    #[test]
    fn newer_snapshot_formats_are_refused() {
        let mut bytes = ClusterState::default().encode();
        bytes[0] = SNAPSHOT_FORMAT + 1;
        assert!(ClusterState::decode(&bytes).unwrap_err().contains("newer"));
    }
}

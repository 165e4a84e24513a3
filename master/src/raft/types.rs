//! The openraft type configuration of the master and what travels in its log.

use std::io::Cursor;

use corral_proto::v1;
use prost::Message;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Corral's Raft types: entries carry a [`Proposal`], apply returns an [`ApplyResult`].
    pub CorralRaft: D = Proposal, R = ApplyResult
);

/// Node ids are the masters' `--id`.
pub type NodeId = u64;
/// The openraft handle of a master.
pub type Raft = openraft::Raft<CorralRaft>;

/// What one Raft entry carries: a batch of replicated commands (group commit), encoded as
/// the protobuf `corral.v1.CommandBatch` so that a newer master reads an older one's log.
///
/// The batch stays encoded from the moment the leader proposes it until a master applies
/// it: the log store, replication and the follower's log only copy bytes, and each master
/// decodes an entry once, to apply it ([`Proposal::decode`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Proposal {
    /// The encoded `CommandBatch`.
    pub batch: Vec<u8>,
}

impl Proposal {
    /// A proposal of `commands`, in order.
    pub fn of(commands: Vec<v1::Command>) -> Self {
        Proposal {
            batch: v1::CommandBatch { commands }.encode_to_vec(),
        }
    }

    /// The commands. A batch that does not decode is corruption or a bug, never skipped:
    /// the store turns the error into a storage error, which stops the node (STYLE.md 8).
    pub fn decode(&self) -> Result<v1::CommandBatch, prost::DecodeError> {
        v1::CommandBatch::decode(self.batch.as_slice())
    }
}

impl Serialize for Proposal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.batch)
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Proposal;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a protobuf corral.v1.CommandBatch")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Proposal, E> {
                Ok(Proposal { batch: v.to_vec() })
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Proposal, E> {
                Ok(Proposal { batch: v })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Proposal, A::Error> {
                // Self-describing formats (JSON) may present bytes as a sequence.
                let mut batch = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    batch.push(b);
                }
                Ok(Proposal { batch })
            }
        }
        deserializer.deserialize_bytes(Visit)
    }
}

/// The outcome of one command of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Refused by a safety or validity check at apply time; the state is unchanged.
    Rejected(String),
}

/// What applying one entry produced: one outcome per command of its batch (none for blank
/// and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// One outcome per command, in order.
    pub outcomes: Vec<Outcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_survives_the_log_encoding() {
        let cmd = v1::Command {
            timestamp_ms: 42,
            kind: Some(v1::command::Kind::SetWeights(v1::SetWeights {
                weights: vec![v1::RoleWeight {
                    role: "prod".into(),
                    weight_milli: 2000,
                }],
            })),
        };
        let p = Proposal::of(vec![cmd.clone()]);
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), p);
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(serde_json::from_slice::<Proposal>(&json).unwrap(), p);
        assert_eq!(p.decode().unwrap().commands, vec![cmd]);
        // Garbage is an error, not an empty batch.
        assert!(Proposal {
            batch: vec![0xff, 0xff]
        }
        .decode()
        .is_err());
    }
}

//! Raft: what the log carries, peer traffic, elections, and the write path.
//!
//! - [`types`]: the openraft type configuration and the log's payload ([`types::Proposal`]);
//! - [`network`]: peer traffic over tonic, client and server, on the masters' one port;
//! - [`election`]: when this master stands for election (sooner than openraft's own timer);
//! - [`keepalive`]: a leader whose core waits on a slow disk still vouches for itself;
//! - [`stages`]: where a write's time goes, hop by hop;
//! - [`write`](mod@write): group commit ([`write::Writer`]) and the typed [`write::WriteError`].
//!
//! Nothing here knows the services or the leader's soft state.

pub mod election;
pub mod keepalive;
pub mod network;
pub mod stages;
pub mod types;
pub mod write;

use types::{NodeId, Raft};

/// The leader `raft` knows of, with its address.
pub fn leader_of(raft: &Raft) -> Option<(NodeId, String)> {
    let m = raft.metrics();
    let m = m.borrow();
    let id = m.current_leader?;
    let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
    Some((id, addr))
}

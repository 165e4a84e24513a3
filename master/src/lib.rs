//! Corral master: one replica of the cluster's replicated state.
//!
//! # Layout
//! - [`config`]: flags and their validation;
//! - [`types`]: the openraft type configuration and what the log carries ([`types::Proposal`]);
//! - [`state`]: the replicated cluster state and its deterministic apply;
//! - [`digest`]: the state hash, kept current by apply (S3);
//! - [`network`]: Raft peer traffic over tonic (client and server);
//! - [`node`]: a running master: store, Raft, services, start-up and shutdown;
//! - [`commit`]: group commit, many concurrent writes in one Raft entry;
//! - `service::operator`: the operator API (`corral status`, members, weights);
//! - `http`: `/health`, `/metrics`, `/state`, `/redirect` on the same port as gRPC.
//!
//! A write's path:
//!
//! ```text
//! client ──gRPC──▶ any master ──not leader──▶ UNAVAILABLE + corral-leader: <addr> ──▶ client retries there
//!                      │ leader
//!                      ▼
//!                 validate ──▶ commit queue ──batch──▶ raft.client_write(Proposal) ──▶ log on a majority (sled, fsynced)
//!                                                                   │ committed
//!                                                                   ▼
//!                 reply ◀── Outcome ◀── ClusterState::apply (every master, deterministic)
//! ```

pub mod allocator;
pub mod commit;
pub mod config;
pub mod digest;
pub mod leader;
pub mod network;
pub mod node;
pub mod service;
pub mod state;
pub mod types;
pub mod validate;

mod http;

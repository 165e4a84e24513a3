//! Corral master: one replica of the cluster's replicated state, and, on the elected
//! leader, the allocator and the streams of every agent and framework.
//!
//! # Layout
//!
//! | room | what lives there |
//! | --- | --- |
//! | [`node`] | start-up, serving the one port (gRPC and HTTP), shutdown |
//! | [`raft`] | the log's types, peer traffic, elections, the write path ([`raft::write::Writer`], [`raft::write::WriteError`]) |
//! | [`state`] | the replicated state: records, `apply` (the one match over commands), retention, invariants, digest, snapshots |
//! | [`leader`] | leader-only soft state of one term, owned by that term's loop and reached through its [`leader::Leader`] handle: sessions, offers, launch flow control, allocation passes, timers, delivery |
//! | [`service`] | the APIs: `scheduler` (frameworks), `agents`, `operator`, `http`: decode → validate → ask the leader → map the error |
//! | [`acl`] | who a caller is (certificate or bearer token) and what the `--acl-file` lets it do |
//! | [`allocator`] | DRF order and placement, pure functions |
//! | [`validate`] | every request field and its limit, named |
//! | [`limits`] | every limit, grouped, and the relations between them checked at compile time |
//! | [`config`] | flags and their checks |
//!
//! Dependencies point one way: `service` → `leader` → `state`, `raft`. Nothing under
//! `leader/`, `state/` or `raft/` names a service (`.ci/run` checks it).
//!
//! # The leader's soft state
//!
//! While this master leads a term, one task (`leader::run_term`) owns that term's
//! [`leader::Soft`]: the agent and framework streams, offers, filters, reservations and
//! timers. It runs the allocation passes and timers itself, and between them the jobs the
//! services send through the term's [`leader::Leader`] handle (`ask` for an answer, `tell`
//! to change something), one at a time. A service never holds the soft state across a Raft
//! write: it asks, writes, and asks again, and if the term ended meanwhile the handle fails
//! and the caller gets the redirect ([`node::Shared::not_leading`]).
//!
//! # A launch, end to end
//!
//! ```text
//! framework ──Accept──▶ service::scheduler::accept
//!     check_header (ask the term's loop): subscribed to this leader, current stream id
//!     validate::launch_request: every field, sizes, resources
//!     ask the term's loop: take the offers, reserve their resources on the agent, count
//!                   the launch in flight (leader::launches)
//!     S2 pre-check: no retained task with this id
//!     Launch::run ──▶ raft::write::Writer::write(LaunchTasks)
//!                       group commit: one Raft entry for many commands
//!                       ──▶ appended and fsynced on a majority ──▶ committed
//!                     state::apply on every master: S1 (no over-commit), S2 again,
//!                       tasks recorded TASK_STAGING
//!     tell the term's loop: release the reservation; ask it: RunTask on the agent's
//!                   stream (leader::sessions)
//! ◀── AcceptResponse { launched_task_ids }
//! leader::delivery: a task still STAGING 5 s after its commit is sent to its agent again
//! ```
//!
//! # A status update, end to end
//!
//! ```text
//! agent ──AgentMessage::Status (its Connect stream)──▶ service::agents::serve_agent
//!     submit_statuses ──▶ Writer::submit(UpdateStatuses)   (pipelined, in arrival order)
//!     state::apply: the task's state, kept unacknowledged for its framework
//!     finish_statuses (tells the term's loop): Event::Update on the framework's stream
//!                      (leader::delivery), AckUpdate to the agent (it may forget it now)
//! framework ──Acknowledge──▶ service::scheduler::acknowledge
//!     Writer::write(AcknowledgeStatuses) ──▶ state::apply drops the update
//! leader::delivery::resend: unacknowledged updates go out again every 10 s, and to a
//!     framework that re-subscribes (after a failover too)
//! ```
//!
//! A follower answers every leader-only call with UNAVAILABLE and the leader's address in
//! the `corral-leader` metadata key; clients follow it (`corral_proto::client`).

#![warn(missing_docs)]

pub mod acl;
pub mod allocator;
pub mod config;
pub mod leader;
pub mod limits;
pub mod node;
pub mod raft;
pub mod service;
pub mod state;
pub mod validate;

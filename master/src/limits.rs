//! Every limit of the master in one index, grouped by what it bounds, and the relations
//! between limits checked at compile time: a change that breaks one (an SDK that batches
//! more acknowledgements than the master takes, a command larger than a gRPC message) does
//! not build.
//!
//! Each limit lives beside the code it bounds; this module names them and holds no value
//! of its own.
//!
//! - **What a client may send** (checked before anything is proposed; INVALID_ARGUMENT
//!   naming the field): ids, text, argv and environment, labels, attributes, per-call list
//!   counts and encoded sizes in [`crate::validate`] (`MAX_*`); resources in
//!   [`corral_proto::convert::MAX_RESOURCE_ENTRIES`] and [`corral_proto::resources`];
//!   weights per call [`crate::service::operator::MAX_WEIGHTS_PER_CALL`]; role names
//!   [`crate::state::MAX_ROLE_LEN`]; weights [`crate::state::MAX_WEIGHT`]; every message
//!   [`corral_proto::MAX_MESSAGE_BYTES`].
//! - **The Raft log**: one command [`crate::raft::write::MAX_COMMAND_BYTES`]; a batch
//!   [`crate::raft::write::MAX_BATCH_COMMANDS`] and [`crate::raft::write::MAX_BATCH_BYTES`];
//!   writes in flight [`crate::raft::write::MAX_IN_FLIGHT`]; the commit queue
//!   [`crate::raft::write::QUEUE_CAPACITY`]; follower lag
//!   [`crate::raft::write::MAX_FOLLOWER_LAG`]; snapshots
//!   [`crate::node::SNAPSHOT_EVERY_ENTRIES`], [`crate::node::SNAPSHOT_EVERY_MIB`] and
//!   [`crate::node::LOG_KEPT_BEHIND_SNAPSHOT`].
//! - **The replicated state**: unacknowledged updates
//!   [`crate::state::MAX_UNACKED_PER_TASK`] and [`crate::state::MAX_UNACKED_PER_FRAMEWORK`];
//!   retention defaults in [`crate::config`].
//! - **The leader's queues**: jobs [`crate::leader::JOB_QUEUE`] (and
//!   [`crate::leader::JOBS_PER_TURN`] per turn); launches in flight
//!   [`crate::leader::MIN_LAUNCHES_IN_FLIGHT`] to
//!   [`crate::leader::MAX_LAUNCHES_IN_FLIGHT`]; offers held back
//!   [`crate::leader::OFFER_HOLD_BACKLOG`]; resends
//!   [`crate::leader::RESEND_CAPACITY`]; session streams
//!   [`crate::leader::STREAM_CAPACITY`] and
//!   [`crate::leader::FRAMEWORK_STREAM_CAPACITY`].
//! - **The services**: agent registrations and status updates in flight
//!   ([`crate::service::agents::MAX_REGISTRATIONS_IN_FLIGHT`],
//!   [`crate::service::agents::MAX_STATUS_IN_FLIGHT`],
//!   [`crate::service::agents::MAX_STATUS_BATCH`]); pages of listings
//!   ([`crate::service::operator::DEFAULT_PAGE_RECORDS`],
//!   [`crate::service::operator::MAX_PAGE_RECORDS`],
//!   [`crate::service::operator::MAX_PAGE_BYTES`]).

use corral_proto::MAX_MESSAGE_BYTES;

use crate::leader::{JOBS_PER_TURN, JOB_QUEUE, MAX_LAUNCHES_IN_FLIGHT, MIN_LAUNCHES_IN_FLIGHT};
use crate::raft::write;
use crate::service::{agents, operator};
use crate::{node, state, validate};

// The SDK never batches more than the master takes in one call.
const _: () = assert!(corral_proto::scheduler::ACKS_PER_CALL <= validate::MAX_ACKS_PER_CALL);
// A full Acknowledge call fits one message: two ids and a uuid per acknowledgement, with
// room for the framing.
const _: () = assert!(
    validate::MAX_ACKS_PER_CALL * (2 * validate::MAX_ID_LEN + validate::MAX_UUID_LEN + 16) + 4096 <= MAX_MESSAGE_BYTES
);
// A command, with its batch and entry framing, fits one Raft message.
const _: () = assert!(write::MAX_COMMAND_BYTES + 64 * 1024 <= MAX_MESSAGE_BYTES);
// A page of a listing fits one message.
const _: () = assert!(operator::MAX_PAGE_BYTES + 64 * 1024 <= MAX_MESSAGE_BYTES);
const _: () = assert!(operator::DEFAULT_PAGE_RECORDS <= operator::MAX_PAGE_RECORDS);
// One accept always fits the launch window, even at its smallest after a slow commit.
const _: () = assert!(MIN_LAUNCHES_IN_FLIGHT <= MAX_LAUNCHES_IN_FLIGHT);
const _: () = assert!(validate::MAX_TASKS_PER_ACCEPT <= MAX_LAUNCHES_IN_FLIGHT);
// A batch of status updates fits the updates allowed in flight.
const _: () = assert!(agents::MAX_STATUS_BATCH <= agents::MAX_STATUS_IN_FLIGHT);
// A turn of the leader's loop takes at most a queue's worth of jobs.
const _: () = assert!(JOBS_PER_TURN <= JOB_QUEUE);
// The per-task bound of unacknowledged updates is below the per-framework one.
const _: () = assert!(state::MAX_UNACKED_PER_TASK <= state::MAX_UNACKED_PER_FRAMEWORK);
// The log kept behind a snapshot is shorter than the distance between snapshots, so a
// purge always has something to remove.
const _: () = assert!(node::LOG_KEPT_BEHIND_SNAPSHOT < node::SNAPSHOT_EVERY_ENTRIES);
const _: () = assert!(
    crate::config::MIN_SNAPSHOT_EVERY_ENTRIES <= node::SNAPSHOT_EVERY_ENTRIES
        && node::SNAPSHOT_EVERY_ENTRIES <= crate::config::MAX_SNAPSHOT_EVERY_ENTRIES
);
const _: () = assert!(
    crate::config::MIN_SNAPSHOT_EVERY_MIB <= node::SNAPSHOT_EVERY_MIB
        && node::SNAPSHOT_EVERY_MIB <= crate::config::MAX_SNAPSHOT_EVERY_MIB
);
// A snapshot by size is due after at least one largest entry.
const _: () = assert!(write::MAX_BATCH_BYTES as u64 <= crate::config::MIN_SNAPSHOT_EVERY_MIB << 20);

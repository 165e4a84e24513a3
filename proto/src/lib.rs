//! Corral's wire API (`corral.v1`), exact resource arithmetic, and the client side of the
//! protocol shared by the master, the agent, the CLI and frameworks.
//!
//! # Layout
//! - [`v1`]: the generated `corral.v1` messages and the tonic clients and servers of the
//!   `Scheduler`, `Agents`, `Operator` and `Raft` services (from `proto/corral/v1/*.proto`);
//! - [`resources`]: resources in exact milli-units and range sets; text form and checks;
//!   [`convert`] maps them to and from the wire;
//! - [`codec`]: the gRPC codec (prost, with malformed bodies as INVALID_ARGUMENT);
//! - [`client`]: leader following (redirects, retry with backoff and jitter) for every client;
//! - [`scheduler`]: the framework SDK: the `Scheduler` trait and run loop, the `Driver`
//!   and its bounded call queue, the acknowledger, and the placement policies (data
//!   locality, delay scheduling);
//! - [`time`]: duration flags, wall-clock milliseconds, final task states;
//! - [`logging`]: the binaries' log set-up (plain text off a terminal, or JSON lines);
//! - [`watch`]: watch events as JSON (`corral watch --json`, the master's `/events`);
//! - [`LEADER_METADATA_KEY`]: how a follower points a client at the leader.

#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod convert;
pub mod executor;
pub mod http;
pub mod logging;
pub mod mesos;
pub mod resources;
pub mod scheduler;
pub mod time;
pub mod tls;
pub mod watch;

/// The generated `corral.v1` API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("corral.v1");
}

/// gRPC metadata key in which a follower answering `UNAVAILABLE` names the leader's
/// address (`host:port`). Clients redirect on the status code and this key, never on error
/// text (STYLE.md 7).
pub const LEADER_METADATA_KEY: &str = "corral-leader";

/// Largest gRPC message any Corral service accepts or sends, in bytes. Bounds the memory a
/// single request can claim on a master or an agent.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The sandbox of a task on its agent, relative to the agent's work dir (the path its
/// `/files` endpoints take): `frameworks/<fid>/tasks/<tid>` for a command task, or
/// `frameworks/<fid>/executors/<eid>` (empty `executor_id`: a command task) for a task its
/// framework's executor runs, whose output is the executor's.
pub fn sandbox_dir(framework_id: &str, task_id: &str, executor_id: &str) -> String {
    if executor_id.is_empty() {
        format!("frameworks/{framework_id}/tasks/{task_id}")
    } else {
        format!("frameworks/{framework_id}/executors/{executor_id}")
    }
}

/// Largest message between a framework and one of its executors, either way (the master
/// and the agent both check it).
pub const MAX_FRAMEWORK_MESSAGE_BYTES: usize = 256 * 1024;

/// Longest prefix of a client's value quoted back in an error message or a log line.
pub const QUOTE_CHARS: usize = 32;

/// `value` as it may appear in an error or a log line: at most [`QUOTE_CHARS`] characters
/// of it, escaped (`{:?}`), and its length when it was cut. Errors never echo a whole value
/// back: a 1 MiB id would not fit in the response's metadata.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

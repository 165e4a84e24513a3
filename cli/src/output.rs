//! How the CLI shows things: one-line errors, tables and JSON. Every command prints
//! through these, so `--json` output and tables look the same across commands.

use corral_proto::v1;
use serde_json::{json, Value};
use tonic::{Code, Status};

/// Why a command failed, which decides the exit code: 2 for a usage error (a flag or
/// argument the CLI refuses before asking the cluster), 1 for everything else (the cluster
/// refused, could not be reached, or a task failed to run).
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong; the message names the flag.
    Usage(String),
    /// The cluster refused or could not be reached.
    Cluster(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Cluster(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Cluster(m) => f.write_str(m),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Cluster(message)
    }
}

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// One line for a failed call: what the cluster said, without transport noise.
pub fn describe(status: &Status) -> String {
    let what = match status.code() {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        _ => "failed",
    };
    format!("{what}: {}", status.message())
}

/// Resources in their text form (`cpus:1;mem:512`); invalid ones (never sent by a master)
/// are shown as empty.
pub fn resources_text(list: &[v1::Resource]) -> String {
    corral_proto::convert::resources_from_wire("resources", list)
        .map(|r| r.to_string())
        .unwrap_or_default()
}

/// A JSON array, or a table of `columns`.
pub fn print_rows(json: bool, rows: Vec<Value>, columns: &[&str]) {
    if json {
        println!("{}", Value::Array(rows));
        return;
    }
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| rows.iter().map(|r| cell(&r[*c]).len()).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for r in &rows {
        println!("{}", line(columns.iter().map(|c| cell(&r[*c])).collect()));
    }
}

pub fn member_json(m: &v1::MemberStatus) -> Value {
    json!({
        "id": m.id,
        "address": m.address,
        "role": m.role,
        "voter": m.voter,
        "last_log_index": m.last_log_index,
        "applied_index": m.applied_index,
        "state_hash": m.state_hash,
    })
}

pub fn print_members(members: &[v1::MemberStatus], json: bool) {
    if json {
        println!("{}", Value::Array(members.iter().map(member_json).collect()));
        return;
    }
    println!(
        "{:<4} {:<24} {:<12} {:<6} {:>10} {:>10}  STATE HASH",
        "ID", "ADDRESS", "ROLE", "VOTER", "LAST LOG", "APPLIED"
    );
    for m in members {
        let hash = if m.state_hash.len() > 16 {
            &m.state_hash[..16]
        } else {
            &m.state_hash
        };
        println!(
            "{:<4} {:<24} {:<12} {:<6} {:>10} {:>10}  {hash}",
            m.id,
            m.address,
            m.role,
            if m.voter { "yes" } else { "no" },
            m.last_log_index,
            m.applied_index
        );
    }
}

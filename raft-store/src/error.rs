//! Errors of the sled store.
//!
//! Two families are kept apart (STYLE.md, rule 11): [`StoreError::WrongNode`],
//! [`StoreError::WrongCluster`] and [`StoreError::UnsupportedFormat`] mean the data dir
//! cannot be used by this process at all and the binary should exit; everything else is an
//! I/O or corruption failure of an otherwise valid store.

use std::path::PathBuf;

/// An error opening, reading or writing a sled-backed Raft store.
// Each variant's message says what its fields are.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or internal error (its reports of corruption become
    /// [`StoreError::Corrupt`]).
    #[error("sled: {0}")]
    Sled(sled::Error),

    /// A file of the store (the sled data file, a snapshot file) could not be written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),

    /// A stored record could not be encoded or decoded.
    #[error("{what}: {source}")]
    Codec {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },

    /// A stored record carries a format version this build does not know.
    #[error("{what}: unsupported format version {version} (this build reads up to {supported})")]
    UnsupportedFormat {
        what: &'static str,
        version: u8,
        supported: u8,
    },

    /// The data dir was written by another node.
    #[error("data dir {dir} belongs to node {found}, not node {expected}")]
    WrongNode { dir: PathBuf, expected: u64, found: u64 },

    /// The data dir was written for another cluster.
    #[error("data dir {dir} belongs to cluster {found:?}, not cluster {expected:?}")]
    WrongCluster {
        dir: PathBuf,
        expected: String,
        found: String,
    },

    /// The stored log or metadata breaks an invariant of the store (a hole in the log,
    /// entries out of order, applied beyond the log...). Never expected; means corruption.
    #[error("corrupt store: {0}")]
    Corrupt(String),

    /// The application state machine rejected a snapshot.
    #[error("snapshot rejected by the state machine: {0}")]
    Snapshot(String),

    /// A log entry over [`crate::MAX_ENTRY_BYTES`]: the application must split its commands.
    #[error(
        "log entry {index} is {bytes} bytes, over the limit of {} bytes",
        crate::MAX_ENTRY_BYTES
    )]
    EntryTooLarge { index: u64, bytes: usize },

    /// The background flusher thread is gone (the store is shutting down).
    #[error("log flusher stopped")]
    FlusherStopped,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { at, .. } => StoreError::Corrupt(match at {
                Some(at) => format!("the sled files are damaged or truncated (sled found corrupt data at {at:?})"),
                None => "the sled files are damaged or truncated (sled found corrupt data)".into(),
            }),
            other => StoreError::Sled(other),
        }
    }
}

impl StoreError {
    /// As the `sled::Error` that the flusher's write jobs return.
    pub(crate) fn into_sled(self) -> sled::Error {
        match self {
            StoreError::Sled(e) => e,
            StoreError::Io(e) => sled::Error::Io(e),
            other => sled::Error::Io(std::io::Error::other(other)),
        }
    }

    /// True when the data dir is damaged (a missing or corrupt snapshot, a log that breaks
    /// its invariants or does not decode): the node cannot start from it, and the operator
    /// restores it from the other members.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt(_) | StoreError::Codec { .. } | StoreError::Snapshot(_)
        )
    }

    /// True when the data dir belongs to another node or cluster, or was written by a newer
    /// format: the process must not use it and should exit rather than retry.
    pub fn is_fatal_environment(&self) -> bool {
        matches!(
            self,
            StoreError::WrongNode { .. } | StoreError::WrongCluster { .. } | StoreError::UnsupportedFormat { .. }
        )
    }
}

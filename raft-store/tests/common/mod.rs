//! A tiny key-value state machine to exercise the store in tests and benches.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use corral_raft_store::openraft::{self, LogId};
use corral_raft_store::{Identity, LogStore, Options, SmStore, StateMachine, StoreError};

openraft::declare_raft_types!(
    /// Test config: payloads are `key=value` strings, responses the previous value.
    pub TestConfig: D = String, R = String
);

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
    pub applied: u64,
}

impl StateMachine<TestConfig> for Kv {
    type Decoded = (String, String);

    fn decode(_log_id: &LogId<u64>, data: &String) -> Result<(String, String), String> {
        let (k, v) = data.split_once('=').unwrap_or((data.as_str(), ""));
        Ok((k.to_string(), v.to_string()))
    }

    fn apply(&mut self, _log_id: &LogId<u64>, (k, v): (String, String)) -> String {
        self.applied += 1;
        self.map.insert(k, v).unwrap_or_default()
    }

    type SnapshotView = Kv;

    fn snapshot_view(&self) -> Kv {
        self.clone()
    }

    fn write_snapshot(view: &Kv, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(out, view).map_err(std::io::Error::other)
    }

    fn restore(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

pub type Stores = (LogStore<TestConfig>, SmStore<TestConfig, Kv>);

pub fn open_node(dir: &Path, node_id: u64) -> Result<Stores, StoreError> {
    let identity = Identity {
        node_id,
        cluster: "test".into(),
    };
    // Small log generations, so that the tests start and retire many of them.
    let options = Options {
        log_generation_bytes: 16 * 1024,
        ..Options::default()
    };
    corral_raft_store::open(dir, &identity, &options)
}

//! openraft's own storage conformance suite against the sled store.

mod common;

use common::{open_node, Kv, TestConfig};
use corral_raft_store::openraft::testing::{StoreBuilder, Suite};
use corral_raft_store::openraft::{AnyError, StorageError, StorageIOError};
use corral_raft_store::{LogStore, SmStore};

struct SledBuilder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, SmStore<TestConfig, Kv>, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<TestConfig>, SmStore<TestConfig, Kv>), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open_node(dir.path(), 0).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}

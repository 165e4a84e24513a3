//! store: open: a data dir refuses another node or cluster; oversized entries are refused.

mod common;

use common::{open_node, Kv, TestConfig};
use corral_raft_store::openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use corral_raft_store::openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use corral_raft_store::{Identity, Options, StoreError, MAX_ENTRY_BYTES};

#[tokio::test]
async fn store_open_refuses_data_dir_of_another_node_or_cluster() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open_node(dir.path(), 1).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
    }
    match open_node(dir.path(), 2) {
        Err(
            e @ StoreError::WrongNode {
                expected: 2, found: 1, ..
            },
        ) => {
            assert!(e.is_fatal_environment());
            assert!(e.to_string().contains("belongs to node 1, not node 2"), "{e}");
        }
        other => panic!("expected WrongNode, got {:?}", other.map(|_| ())),
    }
    let other_cluster = Identity {
        node_id: 1,
        cluster: "elsewhere".into(),
    };
    let res = corral_raft_store::open::<TestConfig, Kv>(dir.path(), &other_cluster, &Options::default());
    assert!(
        matches!(res, Err(StoreError::WrongCluster { .. })),
        "{:?}",
        res.map(|_| ())
    );

    // The rightful owner still opens it, with its vote intact.
    let (mut log, _sm) = open_node(dir.path(), 1).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
}

#[tokio::test]
async fn store_append_refuses_entry_over_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open_node(dir.path(), 1).unwrap();
    let big = Entry::<TestConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal("x".repeat(MAX_ENTRY_BYTES + 1)),
    };
    let err = log.blocking_append([big]).await.unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        None,
        "nothing was appended"
    );
}

//! Durable log appends on the sled store, against the disk's own fsync floor.
//!
//! `cargo bench -p corral-raft-store --bench log_append`
//!
//! - `fsync_floor/write_4k_fdatasync`: write one 4 KiB block + fdatasync, in the same
//!   directory the store uses: the least any durable append can cost on this disk.
//! - `durable_append/batch/{1,64,512}`: one `append` of that many 256-byte entries, timed
//!   until openraft's callback says they are durable. Throughput is reported in entries.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;

use common::{open_node, TestConfig};
use corral_raft_store::openraft::storage::RaftLogStorageExt;
use corral_raft_store::openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const ENTRY_BYTES: usize = 256;

fn fsync_floor(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("floor"))
        .unwrap();
    let block = vec![7u8; 4096];
    let mut group = c.benchmark_group("fsync_floor");
    let mut offset = 0u64;
    group.bench_function("write_4k_fdatasync", |b| {
        b.iter(|| {
            file.write_all_at(&block, offset).unwrap();
            offset = (offset + 4096) % (64 * 1024 * 1024);
            file.sync_data().unwrap();
        })
    });
    group.finish();
    std::io::stdout().flush().ok();
}

fn durable_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let (mut log, _sm) = open_node(dir.path(), 1).unwrap();
    let payload = "x".repeat(ENTRY_BYTES);
    let mut next = 1u64;
    let mut group = c.benchmark_group("durable_append");
    for batch in [1u64, 64, 512] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                let entries: Vec<Entry<TestConfig>> = (next..next + batch)
                    .map(|i| Entry {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                        payload: EntryPayload::Normal(payload.clone()),
                    })
                    .collect();
                next += batch;
                rt.block_on(log.blocking_append(entries)).unwrap();
            })
        });
    }
    group.finish();
}

/// Where to put the files: `CORRAL_BENCH_DIR` if set (to measure a particular disk), else the
/// target directory, which is on the same disk as the project rather than a tmpfs.
fn bench_dir() -> std::path::PathBuf {
    std::env::var_os("CORRAL_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

criterion_group!(benches, fsync_floor, durable_append);
criterion_main!(benches);

//! store: crash: SIGKILL during durable appends and purges.
//!
//! A child process (this test binary re-run on its ignored `crash_child` entry point) appends
//! entries and prints `durable <first> <last> <term>` once each batch is durable, and
//! `purged <index>` once a purge returned. The parent SIGKILLs it at a random report, reopens
//! the store and checks that every reported entry is intact and the store is consistent.
//! Reproduce a run with `CORRAL_TEST_SEED=<seed>` (the seed is printed on failure).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{open_node, TestConfig};
use corral_raft_store::openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use corral_raft_store::openraft::RaftSnapshotBuilder;
use corral_raft_store::openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "CORRAL_CRASH_CHILD_DIR";
const ROUNDS: usize = 24;
const NODE: u64 = 1;

fn payload(index: u64, term: u64) -> String {
    // About 256 bytes, derived from the entry's position so the parent can check it.
    format!("k{index}={term}:{}", "v".repeat(240))
}

fn entry(index: u64, term: u64) -> Entry<TestConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, NODE), index),
        payload: EntryPayload::Normal(payload(index, term)),
    }
}

/// The child: append forever, reporting what is durable, purging now and then.
#[test]
#[ignore = "entry point of the crash test's child process"]
fn crash_child() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("run by the crash test with its data dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (mut log, mut sm) = open_node(dir.as_ref(), NODE).expect("open store");
        let mut out = std::io::stdout().lock();
        let term = log.read_vote().await.unwrap().map_or(0, |v| v.leader_id.term) + 1;
        log.save_vote(&Vote::new(term, NODE)).await.unwrap();
        writeln!(out, "vote {term}").unwrap();
        let state = log.get_log_state().await.unwrap();
        let mut next = state.last_log_id.map_or(1, |l| l.index + 1);
        let mut seed_rng = rand::rngs::StdRng::seed_from_u64(next);
        loop {
            let n = seed_rng.random_range(1..=64u64);
            log.blocking_append((next..next + n).map(|i| entry(i, term)))
                .await
                .unwrap();
            writeln!(out, "durable {next} {} {term}", next + n - 1).unwrap();
            out.flush().unwrap();
            next += n;
            if seed_rng.random_ratio(1, 20) && next > 200 {
                let upto = next - 100;
                let id = log.try_get_log_entries(upto..=upto).await.unwrap()[0].log_id;
                // As openraft does: purge only behind a durable snapshot (a store whose log
                // is purged past its snapshot refuses to open).
                let (applied, _) = sm.applied_state().await.unwrap();
                let from = applied.map_or(0, |l| l.index + 1);
                let entries = log.try_get_log_entries(from..=upto).await.unwrap();
                sm.apply(entries).await.unwrap();
                sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
                log.purge(id).await.unwrap();
                writeln!(out, "purged {upto}").unwrap();
                out.flush().unwrap();
            }
            if seed_rng.random_ratio(1, 4) {
                log.save_committed(Some(LogId::new(CommittedLeaderId::new(term, NODE), next - 1)))
                    .await
                    .unwrap();
            }
        }
    });
}

#[derive(Default)]
struct Reports {
    durable: Vec<(u64, u64, u64)>,
    purged: u64,
    vote_term: u64,
    count: usize,
}

#[test]
fn store_crash_sigkill_keeps_every_durable_entry() {
    let seed: u64 = std::env::var("CORRAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test seed: {seed} (set CORRAL_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut all = Reports::default();
    let mut most_generations = 0;
    let rt = tokio::runtime::Runtime::new().unwrap();

    for round in 0..ROUNDS {
        // Kill at a random report: early ones hit start-up and vote saving, later ones
        // appends and purges in flight.
        let kill_at = rng.random_range(1..=120usize);
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let stdout = child.stdout.take().unwrap();
        let reports = Arc::new(Mutex::new(Reports::default()));
        let reader = {
            let reports = reports.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let mut r = reports.lock().unwrap();
                    match words.as_slice() {
                        ["durable", a, b, t] => {
                            r.durable
                                .push((a.parse().unwrap(), b.parse().unwrap(), t.parse().unwrap()))
                        }
                        ["purged", i] => r.purged = i.parse().unwrap(),
                        ["vote", t] => r.vote_term = t.parse().unwrap(),
                        _ => continue,
                    }
                    r.count += 1;
                    if r.count == kill_at {
                        // SAFETY: kill(2) on our own child's pid; it is not reaped before
                        // wait() below, so the pid cannot have been reused.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            })
        };
        // The child runs until killed: a bounded wait guards against a hang.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "seed {seed} round {round}: child never reached report {kill_at}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        reader.join().unwrap();
        assert!(
            !status.success(),
            "seed {seed} round {round}: child exited on its own: {status}"
        );
        let r = std::mem::take(&mut *reports.lock().unwrap());
        all.durable.extend(r.durable);
        all.purged = all.purged.max(r.purged);
        all.vote_term = all.vote_term.max(r.vote_term);

        // Reopen and check.
        rt.block_on(async {
            let (mut log, _sm) =
                open_node(dir.path(), NODE).unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen failed: {e}"));
            let summary = log
                .verify()
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            most_generations = most_generations.max(log.generations());
            let purged = summary.last_purged.map_or(0, |p| p.index);
            assert!(
                purged >= all.purged,
                "seed {seed} round {round}: purge to {} lost ({summary:?})",
                all.purged
            );
            let vote = log.read_vote().await.unwrap().map_or(0, |v| v.leader_id.term);
            assert!(
                vote >= all.vote_term,
                "seed {seed} round {round}: vote {} lost, found {vote}",
                all.vote_term
            );
            for &(first, last, term) in &all.durable {
                let first = first.max(purged + 1);
                if first > last {
                    continue;
                }
                let got = log.try_get_log_entries(first..=last).await.unwrap();
                assert_eq!(
                    got.len() as u64,
                    last - first + 1,
                    "seed {seed} round {round}: entries {first}..={last} missing"
                );
                for e in got {
                    assert_eq!(
                        e.log_id.leader_id.term, term,
                        "seed {seed} round {round}: entry {} term",
                        e.log_id.index
                    );
                    match e.payload {
                        EntryPayload::Normal(p) => assert_eq!(p, payload(e.log_id.index, term)),
                        other => panic!("seed {seed} round {round}: entry {} payload {other:?}", e.log_id.index),
                    }
                }
            }
        });
    }
    let reported: u64 = all.durable.iter().map(|(a, b, _)| b - a + 1).sum();
    assert!(reported > 0, "seed {seed}: no entry was ever reported durable");
    // The kills must have hit a log spread over several generations (starting new ones and
    // retiring old ones), not one sled database only.
    assert!(
        most_generations > 1,
        "seed {seed}: the log never spanned more than one generation"
    );
    eprintln!(
        "crash test: {ROUNDS} kills, {reported} durable entries checked, purged up to {}, up to {most_generations} log generations",
        all.purged
    );
}

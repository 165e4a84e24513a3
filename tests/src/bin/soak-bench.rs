//! Soak: a cluster at steady full churn for a long time, with a leader SIGKILL every few
//! minutes, to show that memory and disk stay bounded (retention) and latency does not grow.
//! Every minute it prints and appends to a CSV: the leader's resident memory, its data dir's
//! size on disk, its snapshot's size, the records it retains, tasks/s and accept-to-RUNNING
//! p99 over the minute; after each leader kill, the time until the first offer of the new
//! leader reached a framework. At the end it judges the last half of the run.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/soak-bench [--minutes 30] [--agents 1000] [--frameworks 50] \
//!     [--kill-every-minutes 5] [--tasks-per-offer 4] [--csv soak.csv]
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_tests::sim::{percentile_ms, rss_mib, Fleet, Mode, SimFramework};
use corral_tests::Cluster;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    minutes: u64,
    agents: usize,
    frameworks: usize,
    kill_every: u64,
    per_offer: usize,
    csv: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        minutes: 30,
        agents: 1000,
        frameworks: 50,
        kill_every: 5,
        per_offer: 4,
        csv: "soak.csv".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--minutes" => a.minutes = number()?.max(1),
            "--agents" => a.agents = number()?.max(1) as usize,
            "--frameworks" => a.frameworks = number()?.max(1) as usize,
            "--kill-every-minutes" => a.kill_every = number()?,
            "--tasks-per-offer" => a.per_offer = number()?.max(1) as usize,
            "--csv" => a.csv = value.clone(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Bytes a directory takes on disk (allocated blocks: sled's segment file is sparse).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            disk_bytes(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

/// How often the leader's RSS and data dir are sampled. A minute's figures are the means of
/// its samples: the log grows and is purged once per snapshot (every 32 MiB of log, a few
/// seconds at full churn), so a single sample a minute would land anywhere on that
/// sawtooth.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The current leader's RSS and data-dir size, in MiB (None while there is no leader).
async fn sample_leader(cluster: &Cluster, ids: &[u64]) -> Option<(f64, f64)> {
    let leader = cluster.leader_among(ids).await?;
    let m = &cluster.masters[&leader];
    let rss = m.pid().and_then(rss_mib)?;
    Some((rss, disk_bytes(&m.data_dir) as f64 / (1024.0 * 1024.0)))
}

/// The mean, lowest and highest of some samples (NaN when there are none).
fn mean_and_range(v: impl Iterator<Item = f64>) -> (f64, (f64, f64)) {
    let (n, sum, lo, hi) = v.fold((0usize, 0.0, f64::MAX, f64::MIN), |(n, sum, lo, hi), x| {
        (n + 1, sum + x, lo.min(x), hi.max(x))
    });
    if n == 0 {
        return (f64::NAN, (f64::NAN, f64::NAN));
    }
    (sum / n as f64, (lo, hi))
}

struct Minute {
    minute: u64,
    /// Means of the samples taken each second of the minute.
    rss_mib: f64,
    data_dir_mib: f64,
    /// The lowest and highest sample of the minute.
    rss_range: (f64, f64),
    dir_range: (f64, f64),
    snapshot_mib: f64,
    tasks: f64,
    tasks_per_s: f64,
    p99_ms: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    corral_tests::until_interrupted(soak()).await;
}

async fn soak() {
    corral_tests::sim::init_logging();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak-bench: {e}");
            std::process::exit(2);
        }
    };
    let mut csv = match std::fs::File::create(&args.csv) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("soak-bench: --csv {}: {e}", args.csv);
            std::process::exit(2);
        }
    };
    let _ = writeln!(
        csv,
        "minute,leader_rss_mib,leader_rss_min_mib,leader_rss_max_mib,data_dir_mib,data_dir_min_mib,data_dir_max_mib,snapshot_mib,retained_tasks,tasks_per_s,p99_ms,leader,term,dir_m1_mib,dir_m2_mib,dir_m3_mib"
    );
    let mut cluster = Cluster::start_with(3, &corral_tests::sim::master_args());
    let ids = [1, 2, 3];
    cluster.wait_leader(&ids, Duration::from_secs(30)).await;
    let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
    let fleet = Fleet::start(&masters, args.agents, "cpus:8;mem:16384", true);
    let fws: Vec<SimFramework> = (0..args.frameworks)
        .map(|i| {
            SimFramework::start(
                &masters,
                &format!("soak{i}"),
                Mode::Churn {
                    per_offer: args.per_offer,
                },
            )
        })
        .collect();
    let finished = |fws: &[SimFramework]| fws.iter().map(|f| f.counts().finished).sum::<u64>();
    println!(
        "soak: 3 masters, {} agents, {} frameworks, {} min, leader SIGKILL every {} min",
        args.agents, args.frameworks, args.minutes, args.kill_every
    );
    println!(
        "{:>6} | {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8}",
        "minute", "RSS MiB", "dir MiB", "snap MiB", "tasks", "tasks/s", "p99 ms"
    );
    let start = Instant::now();
    let mut rows: Vec<Minute> = Vec::new();
    let mut failovers: Vec<Duration> = Vec::new();
    // Leader changes beyond the kills' are spurious elections (a follower that stood
    // against a live leader under load).
    let first_term = match cluster.leader_among(&ids).await {
        Some(l) => cluster.status_of(l).await.map_or(0, |s| s.term),
        None => 0,
    };
    let mut last_term = first_term;
    let mut last_finished = finished(&fws);
    for minute in 1..=args.minutes {
        let until = start + Duration::from_secs(60 * minute);
        let mut killed = false;
        let mut samples: Vec<(f64, f64)> = Vec::new();
        let mut next_sample = Instant::now();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if Instant::now() >= next_sample {
                next_sample += SAMPLE_EVERY;
                if let Some(sample) = sample_leader(&cluster, &ids).await {
                    samples.push(sample);
                }
            }
            let kill_due = args.kill_every > 0 && minute % args.kill_every == 0 && !killed;
            if kill_due && until.saturating_duration_since(Instant::now()) < Duration::from_secs(30) {
                killed = true;
                let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
                let term = cluster.status_of(leader).await.map_or(0, |s| s.term);
                let at = Instant::now();
                cluster.kill(leader);
                let first = loop {
                    if let Some(t) = fws.iter().filter_map(|f| f.first_offer_after_term(term)).min() {
                        break Some(t);
                    }
                    if at.elapsed() > Duration::from_secs(30) {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                match first {
                    Some(t) => {
                        let took = t.saturating_duration_since(at);
                        println!(
                            "  leader {leader} killed: first new offer after {} ms",
                            took.as_millis()
                        );
                        failovers.push(took);
                    }
                    None => println!("  leader {leader} killed: no new offer within 30 s"),
                }
                cluster.restart(leader);
            }
        }
        let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
        let term = cluster.status_of(leader).await.map_or(0, |s| s.term);
        last_term = term;
        let m = &cluster.masters[&leader];
        let (rss, rss_range) = mean_and_range(samples.iter().map(|s| s.0));
        let (dir, dir_range) = mean_and_range(samples.iter().map(|s| s.1));
        let snap = std::fs::metadata(m.data_dir.join("snapshots/current.snap"))
            .map_or(0.0, |s| s.len() as f64 / (1024.0 * 1024.0));
        let body = cluster
            .http_get(leader, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let tasks = corral_tests::sim::metric(&body, "corral_retained_records", "kind=\"tasks\"").unwrap_or(f64::NAN);
        let now_finished = finished(&fws);
        let tasks_per_s = (now_finished - last_finished) as f64 / 60.0;
        last_finished = now_finished;
        // Every master's data dir at the minute's end: the leader's figure moves between
        // these when a kill hands the lead to another master.
        let dirs: Vec<f64> = ids
            .iter()
            .map(|id| disk_bytes(&cluster.masters[id].data_dir) as f64 / (1024.0 * 1024.0))
            .collect();
        let mut lat: Vec<u64> = fws.iter().flat_map(|f| f.take_latencies()).collect();
        lat.sort_unstable();
        let row = Minute {
            minute,
            rss_mib: rss,
            data_dir_mib: dir,
            rss_range,
            dir_range,
            snapshot_mib: snap,
            tasks,
            tasks_per_s,
            p99_ms: percentile_ms(&lat, 99.0),
        };
        println!(
            "{:>6} | {:>9.0} {:>9.1} {:>9.2} {:>9.0} | {:>8.0} {:>8.1} | leader {leader} (term {term}), dirs {:.0}/{:.0}/{:.0} MiB",
            row.minute,
            row.rss_mib,
            row.data_dir_mib,
            row.snapshot_mib,
            row.tasks,
            row.tasks_per_s,
            row.p99_ms,
            dirs[0],
            dirs[1],
            dirs[2]
        );
        let _ = writeln!(
            csv,
            "{},{:.1},{:.1},{:.1},{:.2},{:.2},{:.2},{:.3},{},{:.1},{:.2},{leader},{term},{:.1},{:.1},{:.1}",
            row.minute,
            row.rss_mib,
            row.rss_range.0,
            row.rss_range.1,
            row.data_dir_mib,
            row.dir_range.0,
            row.dir_range.1,
            row.snapshot_mib,
            row.tasks,
            row.tasks_per_s,
            row.p99_ms,
            dirs[0],
            dirs[1],
            dirs[2]
        );
        rows.push(row);
    }
    // The last half: within ±10 % of its mean, and p99 not growing.
    let half = &rows[rows.len() / 2..];
    let spread = |f: &dyn Fn(&Minute) -> f64| {
        let v: Vec<f64> = half.iter().map(f).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (mean, (lo / mean - 1.0) * 100.0, (hi / mean - 1.0) * 100.0)
    };
    let (rss, rss_lo, rss_hi) = spread(&|m| m.rss_mib);
    let (dir, dir_lo, dir_hi) = spread(&|m| m.data_dir_mib);
    let third = (half.len() / 3).max(1);
    let p99 = |rows: &[Minute]| rows.iter().map(|m| m.p99_ms).sum::<f64>() / rows.len() as f64;
    println!();
    println!(
        "last {} minutes: leader RSS {rss:.0} MiB ({rss_lo:+.1} % / {rss_hi:+.1} %), data dir {dir:.1} MiB ({dir_lo:+.1} % / {dir_hi:+.1} %)",
        half.len()
    );
    let lowest = |f: &dyn Fn(&Minute) -> f64| half.iter().map(f).fold(f64::MAX, f64::min);
    let highest = |f: &dyn Fn(&Minute) -> f64| half.iter().map(f).fold(f64::MIN, f64::max);
    println!(
        "single samples in those minutes: leader RSS {:.0}-{:.0} MiB, data dir {:.1}-{:.1} MiB (the snapshot cycle's sawtooth)",
        lowest(&|m| m.rss_range.0),
        highest(&|m| m.rss_range.1),
        lowest(&|m| m.dir_range.0),
        highest(&|m| m.dir_range.1)
    );
    println!(
        "p99: {:.1} ms in the first third of them, {:.1} ms in the last",
        p99(&half[..third]),
        p99(&half[half.len() - third..])
    );
    // Each kill ends a term; a split vote costs a term more without a leader change.
    println!(
        "terms: {first_term} at the start, {last_term} at the end, {} leader kills",
        failovers.len()
    );
    if let Some(worst) = failovers.iter().max() {
        println!(
            "failovers: {}, slowest first new offer {} ms",
            failovers.len(),
            worst.as_millis()
        );
    }
    println!("rows written to {}", args.csv);
    for f in fws {
        f.stop().await;
    }
    fleet.stop().await;
}

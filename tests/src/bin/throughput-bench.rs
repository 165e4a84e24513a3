//! End-to-end throughput: real masters, simulated agents that report RUNNING then FINISHED
//! at once, and simulated frameworks that accept every offer with as many small tasks as fit.
//! For each (agents, frameworks) pair it prints tasks/s through the whole lifecycle (accept →
//! launch committed → RUNNING → FINISHED → acknowledged), accept-to-RUNNING latency, Raft
//! entries/s and command bytes/s (from the leader's `/metrics`), and master resident memory.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/throughput-bench [--masters 3] [--seconds 20] [--tasks-per-offer 4] [--tls off|on|both] \
//!     [--configs 100x10,1000x50,10000x100] [--mesos-frameworks K] [--mesos-via leader|follower]
//! ```
//!
//! Frameworks launch at most `--tasks-per-offer` tasks per offer, which bounds the tasks in
//! flight (about agents x tasks-per-offer): latency then measures the pipeline, not a queue.

use std::time::{Duration, Instant};

use corral_tests::sim::{percentile_ms, rss_mib, Fleet, Mode, SimFramework};
use corral_tests::Cluster;

/// The simulated fleet allocates like a server does; the system allocator would make the
/// simulator, not the masters, the bottleneck on a small machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    masters: u64,
    seconds: u64,
    configs: Vec<(usize, usize)>,
    per_offer: usize,
    /// Run each configuration without TLS, with mutual TLS, or both (one after the other).
    tls: Vec<bool>,
    /// Frameworks on the Mesos HTTP API (JSON) beside the gRPC ones, in the same run.
    mesos: usize,
    /// Whether they talk to the leader or (relayed) to a follower.
    mesos_via_follower: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        masters: 3,
        seconds: 20,
        configs: vec![(100, 10), (1000, 50), (10_000, 100)],
        per_offer: 4,
        tls: vec![false],
        mesos: 0,
        mesos_via_follower: false,
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
            "--masters" => a.masters = number()?,
            "--seconds" => a.seconds = number()?.max(1),
            "--tasks-per-offer" => a.per_offer = number()?.max(1) as usize,
            "--mesos-frameworks" => a.mesos = number()? as usize,
            "--mesos-via" => {
                a.mesos_via_follower = match value.as_str() {
                    "leader" => false,
                    "follower" => true,
                    _ => return Err(format!("--mesos-via: {value:?} is not leader or follower")),
                }
            }
            "--tls" => {
                a.tls = match value.as_str() {
                    "off" => vec![false],
                    "on" => vec![true],
                    "both" => vec![false, true],
                    _ => return Err(format!("--tls: {value:?} is not off, on or both")),
                }
            }
            "--configs" => {
                a.configs = value
                    .split(',')
                    .map(|pair| {
                        let (n, m) = pair
                            .split_once('x')
                            .ok_or_else(|| format!("--configs: {pair:?} is not AGENTSxFRAMEWORKS"))?;
                        let n = n.parse().map_err(|_| format!("--configs: bad agent count {n:?}"))?;
                        let m = m.parse().map_err(|_| format!("--configs: bad framework count {m:?}"))?;
                        Ok((n, m))
                    })
                    .collect::<Result<_, String>>()?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.masters != 3 && a.masters != 5 {
        return Err("--masters: 3 or 5".into());
    }
    Ok(a)
}

/// The leader's write counters: (entries, commands, command bytes).
async fn write_counters(address: &str) -> Option<(u64, u64, u64)> {
    let (code, body) = corral_proto::http::get(
        address,
        corral_proto::tls::Role::Master,
        "/metrics",
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    if code != 200 {
        return None;
    }
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((
        value("corral_write_commit_seconds_count")?,
        value("corral_write_commands_total")?,
        value("corral_write_command_bytes_total")?,
    ))
}

struct Row {
    tls: bool,
    /// The frameworks' API: gRPC (`corral.v1`) or Mesos HTTP/JSON.
    api: &'static str,
    agents: usize,
    frameworks: usize,
    tasks_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    accept_p50_ms: f64,
    accept_p99_ms: f64,
    entries_per_s: f64,
    commands_per_s: f64,
    bytes_per_s: f64,
    rss_mib: f64,
    refused: u64,
}

/// A group of frameworks of one API: (finished, refused) so far.
fn totals(group: &[SimFramework]) -> (u64, u64) {
    group.iter().fold((0, 0), |(f, r), c| {
        let n = c.counts();
        (f + n.finished, r + n.refused)
    })
}

/// Sorted latencies of a group: (accept to RUNNING, accept call).
fn latencies(group: &[SimFramework]) -> (Vec<u64>, Vec<u64>) {
    let mut lat: Vec<u64> = group.iter().flat_map(|f| f.take_latencies()).collect();
    lat.sort_unstable();
    let mut accept: Vec<u64> = group.iter().flat_map(|f| f.take_accept_latencies()).collect();
    accept.sort_unstable();
    (lat, accept)
}

async fn leader_address(cluster: &Cluster, ids: &[u64]) -> String {
    let id = cluster.wait_leader(ids, Duration::from_secs(30)).await;
    cluster.masters[&id].address.clone()
}

async fn run(args: &Args, agents: usize, frameworks: usize) -> Result<Vec<Row>, String> {
    let cluster = Cluster::start_with(args.masters, &corral_tests::sim::master_args());
    let ids: Vec<u64> = (1..=args.masters).collect();
    let first = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
    let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
    let fleet = Fleet::start(&masters, agents, "cpus:8;mem:16384", true);
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleet.registered_after_term(0).0 < agents {
        if Instant::now() > deadline {
            return Err(format!("{agents} agents did not register in time"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fws: Vec<SimFramework> = (0..frameworks)
        .map(|i| {
            SimFramework::start(
                &masters,
                &format!("churn{i}"),
                Mode::Churn {
                    per_offer: args.per_offer,
                },
            )
        })
        .collect();
    // A Mesos framework knows one master: the leader, or a follower that relays.
    let mesos_master = match ids.iter().find(|id| (**id != first) == args.mesos_via_follower) {
        Some(id) => cluster.masters[id].address.clone(),
        None => cluster.masters[&first].address.clone(),
    };
    let mesos: Vec<SimFramework> = (0..args.mesos)
        .map(|i| corral_tests::sim_mesos::start(&mesos_master, &format!("mesos{i}"), args.per_offer))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    latencies(&fws);
    latencies(&mesos);
    let leader = leader_address(&cluster, &ids).await;
    let before = write_counters(&leader).await.ok_or("no /metrics from the leader")?;
    let (g0, m0, t0) = (totals(&fws), totals(&mesos), Instant::now());
    let mut peak_rss: f64 = 0.0;
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for m in cluster.masters.values() {
            if let Some(rss) = m.pid().and_then(rss_mib) {
                peak_rss = peak_rss.max(rss);
            }
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    let (g1, m1) = (totals(&fws), totals(&mesos));
    let after_leader = leader_address(&cluster, &ids).await;
    let after = write_counters(&after_leader)
        .await
        .ok_or("no /metrics from the leader")?;
    if after_leader != leader {
        return Err("the leader changed during the measurement".into());
    }
    let mut rows = Vec::new();
    for (api, group, b, a, count) in [
        ("grpc", &fws, g0, g1, frameworks),
        ("mesos", &mesos, m0, m1, args.mesos),
    ] {
        if count == 0 {
            continue;
        }
        let (lat, accept) = latencies(group);
        rows.push(Row {
            tls: false,
            api,
            agents,
            frameworks: count,
            tasks_per_s: a.0.saturating_sub(b.0) as f64 / dt,
            p50_ms: percentile_ms(&lat, 50.0),
            p99_ms: percentile_ms(&lat, 99.0),
            accept_p50_ms: percentile_ms(&accept, 50.0),
            accept_p99_ms: percentile_ms(&accept, 99.0),
            entries_per_s: after.0.saturating_sub(before.0) as f64 / dt,
            commands_per_s: after.1.saturating_sub(before.1) as f64 / dt,
            bytes_per_s: after.2.saturating_sub(before.2) as f64 / dt,
            rss_mib: peak_rss,
            refused: a.1.saturating_sub(b.1),
        });
    }
    for f in fws {
        f.stop().await;
    }
    for f in mesos {
        f.stop().await;
    }
    fleet.stop().await;
    drop(cluster);
    Ok(rows)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Interrupted, the benchmark drops its clusters, and with them their masters.
    corral_tests::until_interrupted(bench()).await;
}

async fn bench() {
    corral_tests::sim::init_logging();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("throughput-bench: {e}");
            std::process::exit(2);
        }
    };
    let mut rows = Vec::new();
    for &(n, m) in &args.configs {
        for &tls in &args.tls {
            // The harness reads it for each cluster it starts (corral_tests::tls_mode).
            if tls {
                std::env::set_var("CORRAL_TEST_TLS", "1");
            } else {
                std::env::remove_var("CORRAL_TEST_TLS");
            }
            let mode = if tls { "mutual TLS" } else { "plaintext" };
            eprintln!("running {n} agents x {m} frameworks for {} s, {mode} ...", args.seconds);
            match run(&args, n, m).await {
                Ok(run) => rows.extend(run.into_iter().map(|row| Row { tls, ..row })),
                Err(e) => eprintln!("  {n} x {m} ({mode}): {e}"),
            }
        }
    }
    println!();
    println!(
        "{} masters, {} s window, tasks of 0.01 cpu / 1 MiB; lifecycle = accept -> launch committed -> RUNNING -> FINISHED (acked)",
        args.masters, args.seconds
    );
    println!("latency: accept call to RUNNING received (p50, p99); accept: the Accept call alone (launch committed)");
    println!("api: grpc = corral.v1 frameworks, mesos = Mesos v1 HTTP/JSON frameworks in the same run; entries, commands, KiB/s and RSS are the cluster's");
    println!(
        "{:>3} {:>5} {:>7} {:>5} | {:>9} | {:>9} {:>9} | {:>10} {:>10} | {:>9} {:>10} {:>10} | {:>9} | {:>8}",
        "tls",
        "api",
        "agents",
        "fws",
        "tasks/s",
        "p50 ms",
        "p99 ms",
        "accept p50",
        "accept p99",
        "entries/s",
        "commands/s",
        "KiB/s",
        "RSS MiB",
        "refused"
    );
    for r in rows {
        println!(
            "{:>3} {:>5} {:>7} {:>5} | {:>9.0} | {:>9.1} {:>9.1} | {:>10.1} {:>10.1} | {:>9.0} {:>10.0} {:>10.0} | {:>9.0} | {:>8}",
            if r.tls { "on" } else { "off" },
            r.api,
            r.agents,
            r.frameworks,
            r.tasks_per_s,
            r.p50_ms,
            r.p99_ms,
            r.accept_p50_ms,
            r.accept_p99_ms,
            r.entries_per_s,
            r.commands_per_s,
            r.bytes_per_s / 1024.0,
            r.rss_mib,
            r.refused
        );
    }
}

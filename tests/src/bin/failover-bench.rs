//! Failover benchmark: time from SIGKILL of the leader to a new leader accepting writes,
//! over many failovers with the default timeouts; then whether the leader
//! changes spuriously while idle and under a write load.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/failover-bench [--rounds 20] [--masters 3] [--idle-secs 60] [--load-secs 60] [--tls off|on|both]
//! ```

use std::time::{Duration, Instant};

use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use corral_tests::sim::percentile;
use corral_tests::Cluster;

/// The simulated fleet allocates like a server does; the system allocator would make the
/// simulator, not the masters, the bottleneck on a small machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    rounds: usize,
    masters: u64,
    idle_secs: u64,
    load_secs: u64,
    /// Without TLS, with mutual TLS, or both (one cluster each, one after the other).
    tls: Vec<bool>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 20,
        masters: 3,
        idle_secs: 60,
        load_secs: 60,
        tls: vec![false],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--tls" {
            a.tls = match value.as_str() {
                "off" => vec![false],
                "on" => vec![true],
                "both" => vec![false, true],
                _ => return Err(format!("--tls: {value:?} is not off, on or both")),
            };
            continue;
        }
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--rounds" => a.rounds = n as usize,
            "--masters" => a.masters = n,
            "--idle-secs" => a.idle_secs = n,
            "--load-secs" => a.load_secs = n,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.masters < 3 || a.rounds == 0 {
        return Err("--masters must be at least 3 and --rounds at least 1".into());
    }
    Ok(a)
}

/// One write attempt straight at `addr`, no retries and no redirects.
async fn try_write(addr: &str, i: u64) -> Result<(), ()> {
    let channel = corral_proto::client::channel(addr, Duration::from_millis(300)).map_err(|_| ())?;
    let weights = vec![v1::WeightInfo {
        role: "bench".into(),
        weight: i as f64,
    }];
    let mut client = OperatorClient::new(channel);
    match tokio::time::timeout(
        Duration::from_millis(400),
        client.set_weights(v1::SetWeightsRequest { weights }),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        _ => Err(()),
    }
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<34} n={:<3} median={:>7.1} ms  p99={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms[0],
        ms[ms.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Interrupted, the benchmark drops its clusters, and with them their masters.
    corral_tests::until_interrupted(bench()).await;
}

async fn bench() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("failover-bench: {e}");
            std::process::exit(2);
        }
    };
    for &tls in &args.tls {
        // The harness reads it for each cluster it starts (corral_tests::tls_mode).
        if tls {
            std::env::set_var("CORRAL_TEST_TLS", "1");
        } else {
            std::env::remove_var("CORRAL_TEST_TLS");
        }
        println!("== {} ==", if tls { "mutual TLS" } else { "plaintext" });
        run(&args, tls).await;
    }
}

async fn run(args: &Args, tls: bool) {
    let ids: Vec<u64> = (1..=args.masters).collect();
    let mut cluster = Cluster::start(args.masters);
    let mut to_write = Vec::new();
    let mut seq = 0u64;
    for round in 0..args.rounds {
        let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
        // Make sure the cluster is settled: a write goes through before the kill.
        seq += 1;
        cluster
            .set_weight(&cluster.client(), "bench", seq as f64, Duration::from_secs(10))
            .await
            .expect("write before kill");
        let survivors: Vec<String> = ids
            .iter()
            .filter(|&&i| i != leader)
            .map(|&i| cluster.address(i).to_string())
            .collect();
        let killed = Instant::now();
        cluster.kill(leader);
        let accepted = loop {
            seq += 1;
            let mut done = None;
            for addr in &survivors {
                if try_write(addr, seq).await.is_ok() {
                    done = Some(killed.elapsed());
                    break;
                }
            }
            if let Some(d) = done {
                break d;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "round {round}: no leader accepted writes in 30 s"
            );
        };
        println!(
            "round {round:>2}: killed leader {leader}; a new leader accepted a write after {:>6.1} ms",
            accepted.as_secs_f64() * 1000.0
        );
        to_write.push(accepted.as_secs_f64() * 1000.0);
        cluster.restart(leader);
        let new = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
        let applied = cluster.member(new).await.expect("leader answers").applied_index;
        cluster.wait_converged(&ids, applied, Duration::from_secs(30)).await;
    }
    println!();
    println!(
        "failover with {} masters, default timeouts, {} rounds, {}:",
        args.masters,
        args.rounds,
        if tls { "mutual TLS" } else { "plaintext" }
    );
    summary("SIGKILL -> new leader accepts writes", to_write);

    for (phase, secs, load) in [("idle", args.idle_secs, false), ("write load", args.load_secs, true)] {
        if secs == 0 {
            continue;
        }
        let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
        let term_before = cluster.status_of(leader).await.expect("status").term;
        let until = Instant::now() + Duration::from_secs(secs);
        let mut writes = 0u64;
        let client = cluster.client();
        while Instant::now() < until {
            if load {
                seq += 1;
                if cluster
                    .set_weight(&client, "load", seq as f64, Duration::from_secs(5))
                    .await
                    .is_ok()
                {
                    writes += 1;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let status = cluster.status_of(leader).await.expect("status");
        let same = status.leader.as_ref().map(|l| l.id) == Some(leader) && status.term == term_before;
        println!(
            "{phase:<10} {secs:>3} s: term {term_before} -> {}, leader {} -> {}{}",
            status.term,
            leader,
            status.leader.map_or("none".to_string(), |l| l.id.to_string()),
            if load {
                format!(", {writes} writes ({:.0}/s)", writes as f64 / secs as f64)
            } else {
                String::new()
            },
        );
        println!(
            "{phase:<10} spurious leader change: {}",
            if same { "none" } else { "YES" }
        );
    }
}

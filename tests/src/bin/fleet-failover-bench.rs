//! Failover with a fleet: 3 real masters, simulated agents (the real protocol, no processes)
//! and a simulated framework. For each SIGKILL of the leader it measures the time to
//! (a) a new leader, (b) every agent re-registered with it, (c) the first offer it made
//! reaching the framework. Then the same with a large fleet holding many tasks: the time
//! from the kill to every agent re-registered.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/fleet-failover-bench [--rounds 20] [--agents 100] \
//!     [--big-agents 10000] [--big-tasks-per-agent 10] [--big-rounds 3]
//! ```

use std::time::{Duration, Instant};

use corral_proto::client::Channel;
use corral_proto::v1::operator_client::OperatorClient;
use corral_tests::sim::percentile;
use corral_tests::sim::{rss_mib, Fleet, Mode, SimFramework};
use corral_tests::Cluster;

/// The simulated fleet allocates like a server does; the system allocator would make the
/// simulator, not the masters, the bottleneck on a small machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    rounds: usize,
    agents: usize,
    big_agents: usize,
    big_tasks_per_agent: usize,
    big_rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 20,
        agents: 100,
        big_agents: 10_000,
        big_tasks_per_agent: 10,
        big_rounds: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--rounds" => a.rounds = n,
            "--agents" => a.agents = n,
            "--big-agents" => a.big_agents = n,
            "--big-tasks-per-agent" => a.big_tasks_per_agent = n,
            "--big-rounds" => a.big_rounds = n,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn summary(name: &str, mut ms: Vec<f64>) {
    if ms.is_empty() {
        return;
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<40} n={:<3} median={:>7.1} ms  p99={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms[0],
        ms[ms.len() - 1]
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory of process `pid` in MiB.
/// Poll until `check` gives a value, or panic after `deadline`.
async fn until<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct Round {
    leader: Duration,
    agents: Duration,
    offer: Option<Duration>,
}

/// Operator clients of every master, on connections that outlive a master's restart.
type Probes = std::collections::BTreeMap<u64, OperatorClient<Channel>>;

fn probes(cluster: &Cluster) -> Probes {
    cluster
        .masters
        .keys()
        .map(|&id| {
            let channel = corral_proto::client::channel(cluster.address(id), Duration::from_millis(500))
                .expect("a master address is a valid endpoint");
            (id, OperatorClient::new(channel))
        })
        .collect()
}

/// A cluster, its simulated fleet and framework, and the probes of its masters.
struct Bench {
    cluster: Cluster,
    probes: Probes,
    fleet: Fleet,
    framework: SimFramework,
    agents: usize,
}

impl Bench {
    /// Kill the leader `rounds` times, printing each round as `label N`.
    async fn series(&mut self, rounds: usize, patience: Duration, label: &str) -> Rounds {
        let mut out = Rounds::default();
        for round in 0..rounds {
            let r = failover(self, patience).await;
            out.push(&format!("{label} {round:>2}"), &r);
        }
        out
    }

    async fn stop(self) {
        self.framework.stop().await;
        self.fleet.stop().await;
    }
}

/// Kill the leader once and time (a), (b) and (c).
async fn failover(bench: &mut Bench, patience: Duration) -> Round {
    let Bench {
        cluster,
        probes,
        fleet,
        framework,
        agents: n,
    } = bench;
    let n = *n;
    let ids = [1, 2, 3];
    let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
    // Fail over a cluster at rest: every update acknowledged and the masters caught up.
    until(Duration::from_secs(120), "the framework's acknowledgements", || {
        (framework.counts().acks_pending == 0).then_some(())
    })
    .await;
    let applied = cluster.member(leader).await.map(|m| m.applied_index).unwrap_or(0);
    cluster.wait_converged(&ids, applied, Duration::from_secs(60)).await;
    let old_term = fleet.newest_term();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    let killed = Instant::now();
    cluster.kill(leader);
    // (a) a surviving master says it leads. Asked over connections opened before the kill,
    // all survivors at once: a fresh connection per probe to a master busy with thousands
    // of re-registering agents measured the probe, not the election.
    let new_leader = {
        let mut asking = tokio::task::JoinSet::new();
        for id in &survivors {
            let client = probes[id].clone();
            asking.spawn(async move {
                loop {
                    if let Ok(m) = client.clone().member(corral_proto::v1::MemberRequest {}).await {
                        if m.into_inner().role == "leader" {
                            return Instant::now();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        let first = tokio::time::timeout(patience, asking.join_next()).await;
        asking.abort_all();
        match first {
            Ok(Some(Ok(at))) => at.saturating_duration_since(killed),
            _ => panic!("no new leader within {patience:?}"),
        }
    };
    // (b) every agent registered in a newer term (the time is the last registration's).
    let last = until(patience, "every agent to re-register", || {
        let (count, last) = fleet.registered_after_term(old_term);
        (count == n).then_some(last).flatten()
    })
    .await;
    // (c) the first offer of a newer term reached the framework.
    let offer = tokio::time::timeout(patience, async {
        loop {
            if let Some(at) = framework.first_offer_after_term(old_term) {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .ok();
    cluster.restart(leader);
    let new = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
    let applied = cluster.member(new).await.map(|m| m.applied_index).unwrap_or(0);
    cluster.wait_converged(&ids, applied, Duration::from_secs(60)).await;
    Round {
        leader: new_leader,
        agents: last.saturating_duration_since(killed),
        offer: offer.map(|at| at.saturating_duration_since(killed)),
    }
}

/// The three measurements of a series of failovers.
#[derive(Default)]
struct Rounds {
    leader: Vec<f64>,
    agents: Vec<f64>,
    offer: Vec<f64>,
}

impl Rounds {
    fn push(&mut self, label: &str, r: &Round) {
        println!(
            "{label}: leader {:>6.1} ms  agents {:>7.1} ms  offer {}",
            ms(r.leader),
            ms(r.agents),
            r.offer.map_or("none".to_string(), |d| format!("{:>7.1} ms", ms(d)))
        );
        self.leader.push(ms(r.leader));
        self.agents.push(ms(r.agents));
        self.offer.extend(r.offer.map(ms));
    }

    fn print(self, title: &str) {
        println!();
        println!("{title}");
        summary("(a) SIGKILL -> new leader", self.leader);
        summary("(b) SIGKILL -> all agents re-registered", self.agents);
        summary("(c) SIGKILL -> first new offer delivered", self.offer);
    }
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
            eprintln!("fleet-failover-bench: {e}");
            std::process::exit(2);
        }
    };
    if args.rounds > 0 {
        let cluster = Cluster::start_with(3, &corral_tests::sim::master_args());
        cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30)).await;
        let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
        let probes = probes(&cluster);
        let fleet = Fleet::start(&masters, args.agents, "cpus:8;mem:16384", false);
        let framework = SimFramework::start(&masters, "hold", Mode::Hold);
        until(Duration::from_secs(60), "the fleet to register", || {
            (fleet.registered_after_term(0).0 == args.agents).then_some(())
        })
        .await;
        until(Duration::from_secs(30), "a first offer", || {
            framework.first_offer_after_term(0)
        })
        .await;
        let mut bench = Bench {
            cluster,
            probes,
            fleet,
            framework,
            agents: args.agents,
        };
        let rounds = bench.series(args.rounds, Duration::from_secs(30), "round").await;
        rounds.print(&format!(
            "3 masters, {} simulated agents, {} failovers:",
            args.agents, args.rounds
        ));
        bench.stop().await;
    }
    if args.big_rounds > 0 && args.big_agents > 0 {
        let cluster = Cluster::start_with(3, &corral_tests::sim::master_args());
        cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30)).await;
        let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
        let probes = probes(&cluster);
        let started = Instant::now();
        let fleet = Fleet::start(&masters, args.big_agents, "cpus:1;mem:1024", false);
        until(Duration::from_secs(300), "the big fleet to register", || {
            (fleet.registered_after_term(0).0 == args.big_agents).then_some(())
        })
        .await;
        println!(
            "\n{} agents registered in {:.1} s",
            args.big_agents,
            started.elapsed().as_secs_f64()
        );
        let want = (args.big_agents * args.big_tasks_per_agent) as u64;
        let framework = SimFramework::start(
            &masters,
            "fill",
            Mode::Populate {
                per_agent: args.big_tasks_per_agent,
            },
        );
        let filling = Instant::now();
        let mut last_print = Instant::now();
        until(Duration::from_secs(900), "the tasks to run", || {
            let c = framework.counts();
            if last_print.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "  filling: {} launched, {} running, {} accepts refused",
                    c.launched, c.running, c.refused
                );
                last_print = Instant::now();
            }
            (c.running >= want && fleet.tasks() >= want).then_some(())
        })
        .await;
        println!(
            "{want} tasks launched and RUNNING in {:.1} s",
            filling.elapsed().as_secs_f64()
        );
        for (id, m) in &cluster.masters {
            if let Some(rss) = m.pid().and_then(rss_mib) {
                println!("master {id} resident memory: {rss:.0} MiB");
            }
        }
        let mut bench = Bench {
            cluster,
            probes,
            fleet,
            framework,
            agents: args.big_agents,
        };
        let rounds = bench
            .series(args.big_rounds, Duration::from_secs(120), "big round")
            .await;
        rounds.print(&format!(
            "3 masters, {} simulated agents holding {want} tasks, {} failovers:",
            args.big_agents, args.big_rounds
        ));
        bench.stop().await;
    }
}

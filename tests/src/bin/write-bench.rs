//! Durable-write benchmark, side by side with etcd: 3 Corral masters and, when `etcd` is on
//! the PATH (Debian's `etcd-server`), a 3-member etcd cluster, both on loopback on this
//! machine, measured in interleaved blocks so that both see the same machine.
//!
//! Each block measures, for each system in turn (the order alternates between blocks):
//! - **sequential**: one client writes one value at a time to the leader (Corral
//!   `Operator.SetWeights`, etcd `KV.Put`), each write durable on a majority before it
//!   is answered; latency percentiles;
//! - **concurrent**: `--clients` clients (32) do the same, each on its own connection and
//!   key; writes per second, and the servers' CPU time per write (every member's, from
//!   `/proc`).
//!
//! Before the blocks it measures the disk itself: a small `pwrite` + `fdatasync` (the floor
//! under any durable append here). For every sequential block it also prints the servers'
//! context switches per write, by thread group (from `/proc/<pid>/task`): how many times a
//! write makes some thread block and wake again, which on a 2-core machine is where a
//! write's time goes. Corral's blocks add the leader's hop-by-hop counters from `/metrics`.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/write-bench [--blocks 3] [--seconds 3] [--clients 32]
//! ```
//!
//! etcd runs with heartbeat 30 ms and election timeout 150 ms; Corral with its defaults.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use corral_tests::sim::{metric, percentile};
use corral_tests::{free_port, Cluster};
use tonic::transport::{Channel, Endpoint};

/// The clients allocate like a server does; the system allocator would make the clients,
/// not the servers, the bottleneck on a small machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    blocks: usize,
    seconds: u64,
    clients: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        blocks: 3,
        seconds: 3,
        clients: 32,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--blocks" => a.blocks = n as usize,
            "--seconds" => a.seconds = n,
            "--clients" => a.clients = n as usize,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.blocks == 0 || a.seconds == 0 || a.clients == 0 {
        return Err("--blocks, --seconds and --clients must be at least 1".into());
    }
    Ok(a)
}

/// etcd's v3 messages this bench uses, written from etcd's API reference (`etcdserverpb`):
/// field names and numbers as etcd defines them, only the fields read or set here.
mod etcdpb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
    }
}

/// One unary etcd call.
async fn etcd_call<Req, Resp>(channel: Channel, path: &'static str, req: Req) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc.unary(tonic::Request::new(req), path, codec).await?.into_inner())
}

/// A 3-member etcd cluster on loopback; killed and removed on drop.
struct Etcd {
    children: Vec<Child>,
    clients: Vec<String>,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> std::io::Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            children: Vec::new(),
            clients: Vec::new(),
            dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(etcd.dir.path().join(format!("e{i}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(etcd.dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "write-bench",
                ])
                .args(["--heartbeat-interval", "30", "--election-timeout", "150"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            etcd.children.push(child);
            etcd.clients.push(format!("127.0.0.1:{client}"));
        }
        Ok(etcd)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The leader's client address, once a leader is elected.
    async fn leader(&self, deadline: Duration) -> Result<String, String> {
        let until = Instant::now() + deadline;
        loop {
            for addr in &self.clients {
                let Ok(channel) = connect(addr).await else { continue };
                let status: Result<etcdpb::StatusResponse, _> =
                    etcd_call(channel, "/etcdserverpb.Maintenance/Status", etcdpb::StatusRequest {}).await;
                if let Ok(s) = status {
                    if s.leader != 0 && s.header.as_ref().map(|h| h.member_id) == Some(s.leader) {
                        return Ok(addr.clone());
                    }
                }
            }
            if Instant::now() > until {
                return Err(format!("no etcd leader within {deadline:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plaintext connection of its own (a client each, as separate processes would have).
async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Corral,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Corral => "corral",
            System::Etcd => "etcd",
        }
    }
}

/// One durable write of client `client`'s key.
async fn write(system: System, channel: &Channel, client: usize, seq: u64) -> Result<(), tonic::Status> {
    match system {
        System::Corral => {
            let weights = vec![v1::WeightInfo {
                role: format!("bench{client}"),
                weight: (seq % 1000 + 1) as f64,
            }];
            OperatorClient::new(channel.clone())
                .set_weights(v1::SetWeightsRequest { weights })
                .await
                .map(|_| ())
        }
        System::Etcd => {
            let req = etcdpb::PutRequest {
                key: format!("bench{client}").into_bytes(),
                value: seq.to_string().into_bytes(),
            };
            etcd_call::<_, etcdpb::PutResponse>(channel.clone(), "/etcdserverpb.KV/Put", req)
                .await
                .map(|_| ())
        }
    }
}

/// CPU time (user + system) of these processes so far, in microseconds.
fn cpu_us(pids: &[u32]) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces), from field 3 on.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) * 1_000_000 / ticks)
        })
        .sum()
}

/// What this machine's disk itself takes to make a small write durable: `pwrite` of 300
/// bytes (a sequential write's log entry is about that size) and `fdatasync`, 1,000 times at
/// successive offsets of a file in the temp dir (where the masters' data dirs are), as the
/// median in µs. Once into space allocated beforehand (as etcd's WAL preallocates its
/// segments), once at the end of a growing file (as sled's files grow), which also makes
/// the file system commit the new size. The floor under any durable append on this disk;
/// `None` if the probe could not run.
fn disk_floor_us() -> Option<(f64, f64)> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    const WRITES: usize = 1000;
    const ENTRY: [u8; 300] = [7; 300];
    let probe = |preallocate: bool| -> Option<f64> {
        let file = tempfile::tempfile().ok()?;
        if preallocate {
            let len = i64::try_from(WRITES * ENTRY.len()).ok()?;
            // SAFETY: a valid open descriptor, offset and length in range.
            if unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } != 0 {
                return None;
            }
            file.sync_all().ok()?;
        }
        let mut took = Vec::with_capacity(WRITES);
        for i in 0..WRITES {
            let at = Instant::now();
            file.write_all_at(&ENTRY, (i * ENTRY.len()) as u64).ok()?;
            file.sync_data().ok()?;
            took.push(at.elapsed().as_secs_f64() * 1e6);
        }
        Some(median(took))
    };
    Some((probe(true)?, probe(false)?))
}

/// Context switches so far (voluntary and involuntary) of every thread of these processes,
/// by thread group: the thread's name without its trailing digits ("raft-1" and "raft-2"
/// are "raft-", "sled-io-12" is "sled-io-"). Every switch is a hand-off or a wait: a thread
/// that blocked (on a lock, a channel, the disk) and was woken again, or was preempted.
/// Threads that ended between two readings take their counts with them.
fn switches(pids: &[u32]) -> BTreeMap<String, u64> {
    let mut groups = BTreeMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let (Ok(comm), Ok(status)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let count = |field: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let n = count("voluntary_ctxt_switches:") + count("nonvoluntary_ctxt_switches:");
            let group = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
            *groups.entry(group).or_insert(0) += n;
        }
    }
    groups
}

/// The context switches per write between two [`switches`] readings: the total over every
/// process, then the groups with at least one switch per write, busiest first.
fn switch_line(processes: usize, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, writes: f64) -> String {
    let mut groups: Vec<(&str, f64)> = after
        .iter()
        .map(|(g, n)| {
            let d = n.saturating_sub(before.get(g).copied().unwrap_or(0));
            (g.as_str(), d as f64 / writes.max(1.0))
        })
        .collect();
    let total: f64 = groups.iter().map(|(_, n)| n).sum();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = groups
        .iter()
        .filter(|(_, n)| *n >= 1.0)
        .map(|(g, n)| format!("{g} {n:.1}"))
        .collect();
    format!(
        "context switches per write, all {processes} processes: {total:.1} ({})",
        parts.join(", ")
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 50.0)
}

struct Target {
    system: System,
    leader: String,
    pids: Vec<u32>,
    /// Every member's address, the leader's first (Corral: for `/metrics`).
    members: Vec<String>,
}

/// The Corral masters' `/metrics` (the leader's first), read before and after a measure.
async fn read_metrics(masters: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in masters {
        match corral_tests::http_request(m, "GET", "/metrics", b"").await {
            Some((200, body)) => out.push(body),
            _ => out.push(String::new()),
        }
    }
    out
}

/// Where the Corral leader's writes went between two readings of every master's
/// `/metrics` (leader first), hop by hop, as lines to print. `writes` is the number of
/// client writes, `client_mean_us` their mean latency (sequential only).
fn hop_lines(before: &[String], after: &[String], writes: f64, client_mean_us: Option<f64>) -> Vec<String> {
    let delta = |i: usize, name: &str| -> f64 {
        let read = |bodies: &[String]| bodies.get(i).and_then(|b| metric(b, name, "")).unwrap_or(0.0);
        read(after) - read(before)
    };
    let followers = 1..before.len().min(after.len());
    let mean_us = |seconds: f64, count: f64| if count > 0.0 { seconds / count * 1e6 } else { 0.0 };
    let flushes = delta(0, "corral_raft_log_flushes_total");
    // The leader's mean time of one hop, from its "<name>_seconds_total" and "<name>_total"
    // (or a histogram's "_sum" and "_count").
    let hop = |seconds: &str, count: &str| mean_us(delta(0, seconds), delta(0, count));
    let queued = hop("corral_write_queued_seconds_total", "corral_write_queued_total");
    let commit = hop("corral_write_commit_seconds_sum", "corral_write_commit_seconds_count");
    let durable = hop(
        "corral_raft_log_append_wait_seconds_total",
        "corral_raft_log_appends_total",
    );
    let rpc = hop("corral_raft_append_rpc_seconds_total", "corral_raft_append_rpc_total");
    let (served_s, served_n) = followers.clone().fold((0.0, 0.0), |(s, n), i| {
        (
            s + delta(i, "corral_raft_append_served_seconds_total"),
            n + delta(i, "corral_raft_append_served_total"),
        )
    });
    let apply = hop("corral_raft_apply_seconds_total", "corral_raft_apply_calls_total");
    // Apply runs that waited for the leader's own flush (its entries commit on the
    // followers' flushes and its own in parallel), and the mean wait over all runs.
    let gate_wait = hop(
        "corral_raft_apply_durable_wait_seconds_total",
        "corral_raft_apply_calls_total",
    );
    let calls = delta(0, "corral_raft_apply_calls_total");
    let gated = if calls > 0.0 {
        delta(0, "corral_raft_apply_durable_waits_total") / calls * 100.0
    } else {
        0.0
    };
    let per_flush = |name: &str| mean_us(delta(0, name), flushes);
    let mut lines = vec![format!(
        "leader log: {:.2} flushes/write; per flush: sled write {:.0} µs (flusher thread), sled flush {:.0} µs, fdatasync {:.0} µs",
        flushes / writes.max(1.0),
        per_flush("corral_raft_log_write_seconds_total"),
        per_flush("corral_raft_log_flush_sled_seconds_total"),
        per_flush("corral_raft_log_flush_sync_seconds_total"),
    )];
    let front = client_mean_us.map_or(String::new(), |c| {
        format!(
            "client {c:.0} = gRPC, hand-offs and reply {:.0} + ",
            c - queued - commit
        )
    });
    lines.push(format!(
        "per write, means in µs: {front}queued {queued:.0} + entry proposed to applied {commit:.0}"
    ));
    lines.push(format!(
        "  within it: leader's durable append {durable:.0}, beside the AppendEntries round trip {rpc:.0}, of which the follower served {:.0}; then apply {apply:.0}, which waited for the leader's flush in {gated:.0}% of runs ({gate_wait:.0} µs per run)",
        mean_us(served_s, served_n),
    ));
    lines
}

/// Sequential writes for `secs`: latencies in ms, sorted.
async fn sequential(t: &Target, secs: u64) -> Result<Vec<f64>, String> {
    let channel = connect(&t.leader).await.map_err(|e| e.to_string())?;
    let mut lat = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        let at = Instant::now();
        write(t.system, &channel, 0, seq)
            .await
            .map_err(|e| format!("{} write: {e}", t.system.name()))?;
        lat.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

/// `clients` concurrent writers for `secs`: writes per second and server CPU µs per write.
async fn concurrent(t: &Target, clients: usize, secs: u64) -> Result<(f64, f64), String> {
    let mut channels = Vec::new();
    for _ in 0..clients {
        channels.push(connect(&t.leader).await.map_err(|e| e.to_string())?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_us(&t.pids);
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut writers = tokio::task::JoinSet::new();
    for (c, channel) in channels.into_iter().enumerate() {
        let (done, failed, system) = (done.clone(), failed.clone(), t.system);
        writers.spawn(async move {
            let mut seq = 0;
            while Instant::now() < until {
                seq += 1;
                match write(system, &channel, c + 1, seq).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_us(&t.pids).saturating_sub(cpu_before) as f64;
    let (n, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if failed > 0 {
        return Err(format!("{}: {failed} of {} writes failed", t.system.name(), n + failed));
    }
    Ok((n as f64 / took, cpu / n.max(1) as f64))
}

#[derive(Default)]
struct Results {
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    writes_per_s: Vec<f64>,
    cpu_us_per_write: Vec<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    corral_tests::until_interrupted(bench()).await;
}

async fn bench() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("write-bench: {e}");
            std::process::exit(2);
        }
    };
    let cluster = Cluster::start(3);
    let ids = [1, 2, 3];
    let leader = cluster.wait_leader(&ids, Duration::from_secs(30)).await;
    let mut members = vec![cluster.address(leader).to_string()];
    members.extend(
        ids.iter()
            .filter(|id| **id != leader)
            .map(|id| cluster.address(*id).to_string()),
    );
    let mut targets = vec![Target {
        system: System::Corral,
        leader: cluster.address(leader).to_string(),
        pids: ids.iter().filter_map(|id| cluster.masters[id].pid()).collect(),
        members,
    }];
    let etcd_on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("etcd").is_file()));
    let etcd = if etcd_on_path {
        let etcd = match Etcd::start() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("write-bench: starting etcd: {e}");
                std::process::exit(1);
            }
        };
        match etcd.leader(Duration::from_secs(30)).await {
            Ok(leader) => targets.push(Target {
                system: System::Etcd,
                leader,
                pids: etcd.pids(),
                members: Vec::new(),
            }),
            Err(e) => {
                eprintln!("write-bench: {e}");
                std::process::exit(1);
            }
        }
        Some(etcd)
    } else {
        println!("etcd is not on the PATH (Debian: apt-get install etcd-server): Corral alone");
        None
    };
    println!(
        "write-bench: 3 Corral masters{}, {} blocks of {} s per measure, {} concurrent clients",
        if etcd.is_some() { " and 3 etcd members" } else { "" },
        args.blocks,
        args.seconds,
        args.clients
    );
    match disk_floor_us() {
        Some((preallocated, growing)) => println!(
            "this disk: pwrite of 300 bytes + fdatasync, median {preallocated:.0} µs into preallocated space, {growing:.0} µs at the end of a growing file"
        ),
        None => println!("this disk: the pwrite + fdatasync probe could not run"),
    }
    // Warm up: connections, page cache, allocator, both systems' first elections settled.
    for t in &targets {
        if let Err(e) = sequential(t, 1).await {
            eprintln!("write-bench: warm-up: {e}");
            std::process::exit(1);
        }
    }
    let mut results: Vec<Results> = targets.iter().map(|_| Results::default()).collect();
    for block in 0..args.blocks {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if block % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            let t = &targets[i];
            let before = read_metrics(&t.members).await;
            let switched = switches(&t.pids);
            let lat = match sequential(t, args.seconds).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("write-bench: {e}");
                    std::process::exit(1);
                }
            };
            let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
            println!(
                "block {block}: {:<6} sequential  {:>6} writes  p50 {p50:>6.3} ms  p99 {p99:>6.3} ms",
                t.system.name(),
                lat.len()
            );
            println!(
                "         {}",
                switch_line(t.pids.len(), &switched, &switches(&t.pids), lat.len() as f64)
            );
            if t.system == System::Corral {
                let after = read_metrics(&t.members).await;
                let mean_us = lat.iter().sum::<f64>() / lat.len().max(1) as f64 * 1000.0;
                for line in hop_lines(&before, &after, lat.len() as f64, Some(mean_us)) {
                    println!("         {line}");
                }
            }
            results[i].p50_ms.push(p50);
            results[i].p99_ms.push(p99);
        }
        for &i in &order {
            let t = &targets[i];
            let before = read_metrics(&t.members).await;
            let (rate, cpu) = match concurrent(t, args.clients, args.seconds).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("write-bench: {e}");
                    std::process::exit(1);
                }
            };
            println!(
                "block {block}: {:<6} {} clients  {rate:>8.0} writes/s  server CPU {cpu:>5.0} µs/write",
                t.system.name(),
                args.clients
            );
            if t.system == System::Corral {
                let after = read_metrics(&t.members).await;
                let writes = rate * args.seconds as f64;
                for line in hop_lines(&before, &after, writes, None) {
                    println!("         {line}");
                }
            }
            results[i].writes_per_s.push(rate);
            results[i].cpu_us_per_write.push(cpu);
        }
    }
    println!();
    println!("medians over {} blocks:", args.blocks);
    println!(
        "{:<8} {:>14} {:>14} {:>16} {:>18}",
        "", "seq p50 ms", "seq p99 ms", "writes/s", "CPU µs/write"
    );
    let medians: Vec<(f64, f64, f64, f64)> = results
        .iter()
        .map(|r| {
            (
                median(r.p50_ms.clone()),
                median(r.p99_ms.clone()),
                median(r.writes_per_s.clone()),
                median(r.cpu_us_per_write.clone()),
            )
        })
        .collect();
    for (t, m) in targets.iter().zip(&medians) {
        println!(
            "{:<8} {:>14.3} {:>14.3} {:>16.0} {:>18.0}",
            t.system.name(),
            m.0,
            m.1,
            m.2,
            m.3
        );
    }
    if let [c, e] = medians.as_slice() {
        println!(
            "corral ÷ etcd: sequential p50 {:.2} (target ≤ 0.90), {} clients writes/s {:.2} (target ≥ 1.20), CPU per write {:.2}",
            c.0 / e.0,
            args.clients,
            c.2 / e.2,
            c.3 / e.3
        );
    }
    drop(etcd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_grouped_by_thread_name_and_counted_per_write() {
        let before = BTreeMap::from([("raft-".to_string(), 100), ("sled-io-".to_string(), 50)]);
        let after = BTreeMap::from([
            ("raft-".to_string(), 400),
            ("sled-io-".to_string(), 950),
            ("tokio-rt-worker".to_string(), 20),
        ]);
        // 300 writes: raft- 1.0, sled-io- 3.0, tokio-rt-worker 0.07 (under one, not listed).
        assert_eq!(
            switch_line(3, &before, &after, 300.0),
            "context switches per write, all 3 processes: 4.1 (sled-io- 3.0, raft- 1.0)"
        );
    }

    #[test]
    fn this_process_threads_are_read_under_their_names() {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name("probe-7".into())
            .spawn(move || {
                let _ = started.send(());
                // Blocks (a context switch) until the reading is done.
                let _ = wait.recv();
            })
            .expect("spawn a thread");
        running.recv().expect("the probe thread started");
        let groups = switches(&[std::process::id()]);
        let _ = done.send(());
        probe.join().expect("the probe thread ends");
        assert!(groups.contains_key("probe-"), "{groups:?}");
        assert!(groups.values().sum::<u64>() > 0, "{groups:?}");
    }
}

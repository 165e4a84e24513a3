//! `corral local`: three masters and two agents in one process, for trying Corral out.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use corral_master::config::Config as MasterConfig;
use corral_master::node::Master;
use corral_proto::resources::{Resources, Value, MILLI};

/// Masters listen on 5050, 5051, 5052 when those are free (so `corral run` finds them with
/// its default `--masters`), else on free ports.
const PREFERRED_PORTS: [u16; 3] = [5050, 5051, 5052];

fn ports(n: usize) -> Vec<u16> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).map(|l| l.local_addr().map(|a| a.port()));
    if PREFERRED_PORTS.iter().all(|&p| free(p).is_ok()) {
        return PREFERRED_PORTS[..n].to_vec();
    }
    (0..n).filter_map(|_| free(0).ok().and_then(Result::ok)).collect()
}

/// Each agent's share of the machine.
fn agent_resources(agents: u32) -> Resources {
    let detected = corral_agent::detect::detect(std::path::Path::new("/tmp"));
    let mut r = Resources::new();
    let share = |name: &str| (detected.scalar_milli(name) / agents as u64).max(MILLI / 10);
    let _ = r.insert_new("cpus", Value::Scalar(share("cpus")));
    let _ = r.insert_new("mem", Value::Scalar(share("mem")));
    r
}

pub async fn run(masters: u32, agents: u32, data_dir: Option<PathBuf>) -> Result<(), String> {
    if masters == 0 || masters > 7 {
        return Err("--masters: between 1 and 7".into());
    }
    if agents > 16 {
        return Err("--agents: at most 16".into());
    }
    let temp = match &data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("corral-local-")
                .tempdir()
                .map_err(|e| format!("temp dir: {e}"))?,
        ),
    };
    let root = data_dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default());
    let ports = ports(masters as usize);
    if ports.len() != masters as usize {
        return Err("could not find free ports for the masters".into());
    }
    let peers: std::collections::BTreeMap<u64, String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .collect();
    let list = peers.values().cloned().collect::<Vec<_>>().join(",");
    let mut running = Vec::new();
    for (id, addr) in &peers {
        let config = MasterConfig {
            id: *id,
            listen: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
            advertise: addr.clone(),
            peers: Some(peers.clone()),
            data_dir: root.join(format!("master-{id}")),
            cluster: corral_master::config::DEFAULT_CLUSTER.to_string(),
            election_timeout: Duration::from_millis(90),
            heartbeat_interval: Duration::from_millis(30),
            agent_ping_timeout: Duration::from_secs(15),
            agent_reregister_timeout: Duration::from_secs(120),
            allocation_interval: Duration::from_secs(1),
            offer_timeout: None,
            snapshot_every_entries: corral_master::node::SNAPSHOT_EVERY_ENTRIES,
            snapshot_every_bytes: corral_master::node::SNAPSHOT_EVERY_MIB << 20,
            max_completed_tasks_per_framework: corral_master::config::DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK,
            completed_task_max_age: None,
            max_completed_frameworks: corral_master::config::DEFAULT_MAX_COMPLETED_FRAMEWORKS,
            agent_gc_age: Some(corral_master::config::DEFAULT_AGENT_GC_AGE),
            // On loopback only, in one process: no TLS, no ACL.
            tls: None,
            acl_file: None,
        };
        running.push(Master::start(config).await.map_err(|e| format!("master {id}: {e}"))?);
    }
    let mut agent_handles = Vec::new();
    for i in 1..=agents {
        let config = corral_agent::Config {
            masters: peers.values().cloned().collect(),
            listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            work_dir: root.join(format!("agent-{i}")),
            resources: agent_resources(agents),
            attributes: vec![("agent".into(), i.to_string())],
            hostname: format!("local-agent-{i}"),
            kill_grace: Duration::from_secs(3),
            gc_delay: corral_agent::config::DEFAULT_GC_DELAY,
            gc_disk_headroom: corral_agent::config::DEFAULT_GC_DISK_HEADROOM,
            cluster: corral_master::config::DEFAULT_CLUSTER.to_string(),
            // Local agents run tasks as you, whoever you are.
            allow_root_tasks: true,
            tls: None,
        };
        agent_handles.push(
            corral_agent::Agent::start(config)
                .await
                .map_err(|e| format!("agent {i}: {e:#}"))?,
        );
    }
    println!("corral local: {masters} masters and {agents} agents are running (Ctrl-C to stop)");
    println!("  masters: {list}");
    println!("  data:    {}", root.display());
    if ports.as_slice() == &PREFERRED_PORTS[..masters as usize] {
        println!("  try:     corral run -- echo hello");
    } else {
        println!("  try:     CORRAL_MASTERS={list} corral run -- echo hello");
    }
    // Until Ctrl-C, or until a master's Raft stops (a storage error): a local cluster with a
    // dead master would look alive while it could no longer keep its promises.
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let failed = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = check.tick() => {
                if let Some((id, why)) = running
                    .iter()
                    .find_map(|m| m.shared.raft_failure().map(|why| (m.shared.config.id, why)))
                {
                    break Some(format!("master {id}: raft stopped: {why}"));
                }
            }
        }
    };
    println!("stopping");
    for a in agent_handles {
        a.shutdown(true).await;
    }
    for m in running {
        m.shutdown().await;
    }
    drop(temp);
    match failed {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

//! `corral-master` flags (DESIGN.md), validated once, up front, with errors naming the flag.

use corral_proto::time::parse_duration;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Fewest entries between snapshots accepted (a snapshot per entry would rebuild the whole
/// state on every write).
pub const MIN_SNAPSHOT_EVERY_ENTRIES: u64 = 10;
/// Most entries between snapshots accepted (the log, and a restart's replay, stay bounded).
pub const MAX_SNAPSHOT_EVERY_ENTRIES: u64 = 1_000_000;

/// Smallest log growth, in MiB, between snapshots accepted (`--snapshot-every-mib`).
pub const MIN_SNAPSHOT_EVERY_MIB: u64 = 1;
/// Largest log growth, in MiB, between snapshots accepted: the data dir stays bounded.
pub const MAX_SNAPSHOT_EVERY_MIB: u64 = 16 * 1024;

/// Finished tasks kept per framework by default (Mesos' `--max_completed_tasks_per_framework`).
pub const DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK: u64 = 1000;
/// Torn-down frameworks kept by default (Mesos' `--max_completed_frameworks`).
pub const DEFAULT_MAX_COMPLETED_FRAMEWORKS: u64 = 50;
/// How long an agent may stay unreachable by default before it is gone (two weeks, Mesos'
/// `--registry_max_agent_age`).
pub const DEFAULT_AGENT_GC_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Default cluster name recorded in every data dir.
pub const DEFAULT_CLUSTER: &str = "corral";

/// Command-line flags; each can also be set as `CORRAL_<FLAG>` in the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "corral-master",
    version,
    about = "A Corral master: one replica of the cluster's replicated state"
)]
pub struct MasterArgs {
    /// This master's Raft node id (a positive integer, unique in the cluster, stable for life).
    #[arg(long, env = "CORRAL_ID")]
    pub id: u64,

    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "CORRAL_LOG_FORMAT", default_value = "text")]
    pub log_format: corral_proto::logging::LogFormat,

    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "CORRAL_LISTEN", default_value = "127.0.0.1:5050")]
    pub listen: SocketAddr,

    /// Address the other masters and clients use to reach this one (default: --listen, or
    /// this master's entry in --peers).
    #[arg(long, env = "CORRAL_ADVERTISE")]
    pub advertise: Option<String>,

    /// Initial voters, this master included: `1=host:port,2=host:port,3=host:port`. Used only
    /// on an empty data dir; every initial master must be given the same list.
    #[arg(long, env = "CORRAL_PEERS")]
    pub peers: Option<String>,

    /// Directory of this master's Raft log, snapshots and identity.
    #[arg(long, env = "CORRAL_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Election timeout t. A follower that hears no leader for t plus one heartbeat interval
    /// (the lease) plus a fresh random 0.1t..0.5t asks the other voters and, if a majority
    /// miss the leader too, stands for election; an undecided candidate stands again after
    /// a fresh 0.75t..1.5t (see the master's `election` module).
    #[arg(long, env = "CORRAL_ELECTION_TIMEOUT_MS", default_value_t = 90)]
    pub election_timeout_ms: u64,

    /// How often the leader sends heartbeats.
    #[arg(long, env = "CORRAL_HEARTBEAT_INTERVAL_MS", default_value_t = 30)]
    pub heartbeat_interval_ms: u64,

    /// An agent silent this long is marked unreachable (e.g. `15s`, `500ms`, `2m`).
    #[arg(long, env = "CORRAL_AGENT_PING_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub agent_ping_timeout: Duration,

    /// After a leader change, how long agents have to re-register before they are marked
    /// unreachable.
    #[arg(long, env = "CORRAL_AGENT_REREGISTER_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub agent_reregister_timeout: Duration,

    /// Longest time between two allocation passes.
    #[arg(long, env = "CORRAL_ALLOCATION_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub allocation_interval: Duration,

    /// Rescind offers not used within this time (`0s`: never).
    #[arg(long, env = "CORRAL_OFFER_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub offer_timeout: Duration,

    /// Log entries between two snapshots; the log is purged behind each snapshot (keeping
    /// up to 500 entries, and at most a fifth of this, for lagging followers). Lower means
    /// smaller data dirs and faster restarts, higher means fewer snapshot builds. Each
    /// master draws its own point in [N, 1.5 N) after every snapshot, so that the masters
    /// do not all build at once.
    #[arg(long, env = "CORRAL_SNAPSHOT_EVERY_ENTRIES", default_value_t = crate::node::SNAPSHOT_EVERY_ENTRIES)]
    pub snapshot_every_entries: u64,

    /// MiB of log (encoded entries) between two snapshots, whichever of this and
    /// --snapshot-every-entries comes first. Bounds the log on disk however large the
    /// entries are: under full churn group-committed entries are tens of KiB each. Each
    /// master snapshots at a point drawn anew in [N, 1.5 N) MiB, so that masters do not all
    /// build at once.
    #[arg(long, env = "CORRAL_SNAPSHOT_EVERY_MIB", default_value_t = crate::node::SNAPSHOT_EVERY_MIB)]
    pub snapshot_every_mib: u64,

    /// Finished tasks kept per framework (the newest); older ones are removed from the
    /// replicated state, and their ids may then be launched again.
    #[arg(long, env = "CORRAL_MAX_COMPLETED_TASKS_PER_FRAMEWORK", default_value_t = DEFAULT_MAX_COMPLETED_TASKS_PER_FRAMEWORK)]
    pub max_completed_tasks_per_framework: u64,

    /// Finished tasks older than this are removed whatever their number (`0s`: no age limit).
    #[arg(long, env = "CORRAL_COMPLETED_TASK_MAX_AGE", default_value = "0s", value_parser = parse_duration)]
    pub completed_task_max_age: Duration,

    /// Torn-down frameworks kept (the newest), with their finished tasks.
    #[arg(long, env = "CORRAL_MAX_COMPLETED_FRAMEWORKS", default_value_t = DEFAULT_MAX_COMPLETED_FRAMEWORKS)]
    pub max_completed_frameworks: u64,

    /// An agent unreachable this long is gone (its tasks TASK_GONE), and removed once it has
    /// no tasks left (`0s`: never).
    #[arg(long, env = "CORRAL_AGENT_GC_AGE", default_value = "336h", value_parser = parse_duration)]
    pub agent_gc_age: Duration,

    /// Name of the cluster, recorded in the data dir; a master refuses a data dir of another
    /// cluster, and masters refuse Raft traffic from another cluster.
    #[arg(long, env = "CORRAL_CLUSTER_NAME", default_value = DEFAULT_CLUSTER)]
    pub cluster_name: String,

    /// `--tls-ca`, `--tls-cert`, `--tls-key`.
    #[command(flatten)]
    pub tls: corral_proto::tls::TlsArgs,

    /// Serve plaintext on a non-loopback --listen address. Without TLS a master refuses to:
    /// anyone who can reach the port could speak Raft, register agents and run commands.
    #[arg(long, env = "CORRAL_INSECURE")]
    pub insecure: bool,

    /// Principals and their permissions (TOML; see the README's "Access control"). Without
    /// it, every authenticated client may do everything.
    #[arg(long, env = "CORRAL_ACL_FILE")]
    pub acl_file: Option<PathBuf>,
}

/// Parse `--peers`: `id=host:port,...` with unique ids and addresses.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    let mut addresses = BTreeSet::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("--peers: {entry:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--peers: {entry:?}: id {id:?} is not a positive integer"))?;
        if id == 0 {
            return Err(format!("--peers: {entry:?}: ids start at 1"));
        }
        let addr = addr.trim();
        valid_address(addr).map_err(|e| format!("--peers: {entry:?}: {e}"))?;
        if !addresses.insert(addr.to_string()) {
            return Err(format!("--peers: address {addr} is given twice"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("--peers: duplicate id {id}"));
        }
    }
    if peers.is_empty() {
        return Err("--peers: no peers given".into());
    }
    Ok(peers)
}

fn valid_address(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("address {addr:?} is not host:port")),
    }
}

/// The validated configuration of a master.
#[derive(Debug, Clone)]
pub struct Config {
    /// This master's Raft node id.
    pub id: u64,
    /// Where it listens (gRPC and HTTP on one port).
    pub listen: SocketAddr,
    /// The address the other masters, agents and frameworks reach it at.
    pub advertise: String,
    /// Initial voters, when given.
    pub peers: Option<BTreeMap<u64, String>>,
    /// Where the Raft log, snapshots and metadata live.
    pub data_dir: PathBuf,
    /// The cluster's name; peers of another cluster are refused.
    pub cluster: String,
    /// Silence from the leader after which a follower stands for election.
    pub election_timeout: Duration,
    /// How often the leader sends AppendEntries when it has nothing else to send.
    pub heartbeat_interval: Duration,
    /// How long a disconnected agent has to come back before it is unreachable.
    pub agent_ping_timeout: Duration,
    /// How long after a failover agents have to re-register before they are unreachable.
    pub agent_reregister_timeout: Duration,
    /// Time between full allocation passes (and timer checks).
    pub allocation_interval: Duration,
    /// How long an offer stands before it is rescinded (None: until used or declined).
    pub offer_timeout: Option<Duration>,
    /// Log entries between snapshots.
    pub snapshot_every_entries: u64,
    /// Log bytes between snapshots.
    pub snapshot_every_bytes: u64,
    /// Finished tasks kept per framework.
    pub max_completed_tasks_per_framework: u64,
    /// None: no age limit.
    pub completed_task_max_age: Option<Duration>,
    /// Torn-down frameworks kept.
    pub max_completed_frameworks: u64,
    /// None: agents are never collected.
    pub agent_gc_age: Option<Duration>,
    /// Mutual TLS for every connection, when set.
    pub tls: Option<corral_proto::tls::TlsFiles>,
    /// The ACL file, re-read on SIGHUP.
    pub acl_file: Option<PathBuf>,
}

impl MasterArgs {
    /// Check every flag and the rules between them.
    pub fn validate(self) -> Result<Config, String> {
        if self.id == 0 {
            return Err("--id: must be a positive integer".into());
        }
        let peers = self.peers.as_deref().map(parse_peers).transpose()?;
        if let Some(peers) = &peers {
            if !peers.contains_key(&self.id) {
                return Err(format!("--peers: does not include this master's --id {}", self.id));
            }
        }
        let own_peer_addr = peers.as_ref().and_then(|p| p.get(&self.id).cloned());
        let advertise = match (&self.advertise, &own_peer_addr) {
            (Some(a), Some(p)) if a != p => {
                return Err(format!(
                    "--advertise {a} differs from this master's address {p} in --peers"
                ));
            }
            (Some(a), _) => a.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) if self.listen.ip().is_unspecified() => {
                return Err("--advertise: required when --listen is a wildcard address".into());
            }
            (None, None) => self.listen.to_string(),
        };
        valid_address(&advertise).map_err(|e| format!("--advertise: {e}"))?;
        if self.heartbeat_interval_ms < 5 {
            return Err("--heartbeat-interval-ms: must be at least 5".into());
        }
        if self.election_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(format!(
                "--election-timeout-ms ({}) must be at least twice --heartbeat-interval-ms ({})",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.allocation_interval.is_zero() {
            return Err("--allocation-interval: must be greater than 0".into());
        }
        if self.cluster_name.is_empty() || self.cluster_name.len() > 64 {
            return Err("--cluster-name: must be 1 to 64 characters".into());
        }
        if !(MIN_SNAPSHOT_EVERY_ENTRIES..=MAX_SNAPSHOT_EVERY_ENTRIES).contains(&self.snapshot_every_entries) {
            return Err(format!(
                "--snapshot-every-entries: must be between {MIN_SNAPSHOT_EVERY_ENTRIES} and {MAX_SNAPSHOT_EVERY_ENTRIES}"
            ));
        }
        if !(MIN_SNAPSHOT_EVERY_MIB..=MAX_SNAPSHOT_EVERY_MIB).contains(&self.snapshot_every_mib) {
            return Err(format!(
                "--snapshot-every-mib: must be between {MIN_SNAPSHOT_EVERY_MIB} and {MAX_SNAPSHOT_EVERY_MIB}"
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("--data-dir: must not be empty".into());
        }
        let tls = self.tls.files().map_err(|e| e.to_string())?;
        corral_proto::tls::check_listen("--listen", self.listen, tls.is_some(), self.insecure)?;
        Ok(Config {
            id: self.id,
            listen: self.listen,
            advertise,
            peers,
            data_dir: self.data_dir,
            cluster: self.cluster_name,
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            agent_ping_timeout: self.agent_ping_timeout,
            agent_reregister_timeout: self.agent_reregister_timeout,
            allocation_interval: self.allocation_interval,
            offer_timeout: (!self.offer_timeout.is_zero()).then_some(self.offer_timeout),
            snapshot_every_entries: self.snapshot_every_entries,
            snapshot_every_bytes: self.snapshot_every_mib << 20,
            max_completed_tasks_per_framework: self.max_completed_tasks_per_framework,
            completed_task_max_age: (!self.completed_task_max_age.is_zero()).then_some(self.completed_task_max_age),
            max_completed_frameworks: self.max_completed_frameworks,
            agent_gc_age: (!self.agent_gc_age.is_zero()).then_some(self.agent_gc_age),
            tls,
            acl_file: self.acl_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["corral-master", "--id", "1", "--data-dir", "/tmp/x"];
        argv.extend_from_slice(extra);
        MasterArgs::try_parse_from(argv).map_err(|e| e.to_string())?.validate()
    }

    #[test]
    fn duration_flags_take_the_shared_syntax() {
        let c = args(&["--agent-ping-timeout", "1.5s"]).unwrap();
        assert_eq!(c.agent_ping_timeout, Duration::from_millis(1500));
        let e = args(&["--agent-ping-timeout", "5d"]).unwrap_err();
        assert!(e.contains("unknown unit") && e.contains("--agent-ping-timeout"), "{e}");
    }

    #[test]
    fn peers_rules() {
        let p = parse_peers("1=a:1, 2=b:2,3=c:3").unwrap();
        assert_eq!(p.len(), 3);
        assert!(parse_peers("1=a:1,1=b:2").unwrap_err().contains("duplicate id 1"));
        assert!(parse_peers("1=a:1,2=a:1").unwrap_err().contains("given twice"));
        assert!(parse_peers("1:a:1").unwrap_err().contains("not id=host:port"));
        assert!(parse_peers("x=a:1").unwrap_err().contains("not a positive integer"));
        assert!(parse_peers("1=a").unwrap_err().contains("not host:port"));
        assert!(parse_peers("0=a:1").unwrap_err().contains("start at 1"));
    }

    #[test]
    fn cross_field_rules() {
        let c = args(&["--peers", "1=h1:5050,2=h2:5050"]).unwrap();
        assert_eq!(c.advertise, "h1:5050");
        assert!(args(&["--peers", "2=h2:5050"])
            .unwrap_err()
            .contains("does not include"));
        assert!(args(&["--peers", "1=h1:5050", "--advertise", "h9:1"])
            .unwrap_err()
            .contains("differs"));
        assert!(args(&["--listen", "0.0.0.0:5050"]).unwrap_err().contains("--advertise"));
        let open = args(&["--listen", "0.0.0.0:5050", "--advertise", "h1:5050"]).unwrap_err();
        assert!(
            open.contains("will not serve plaintext") && open.contains("--insecure"),
            "{open}"
        );
        assert!(args(&["--listen", "0.0.0.0:5050", "--advertise", "h1:5050", "--insecure"]).is_ok());
        assert!(args(&["--election-timeout-ms", "50", "--heartbeat-interval-ms", "40"])
            .unwrap_err()
            .contains("at least twice"));
        assert!(args(&["--bogus"]).is_err());
        assert_eq!(args(&[]).unwrap().advertise, "127.0.0.1:5050");
    }
}

//! `corral-agent` flags (DESIGN.md), validated once, up front.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use corral_proto::resources::Resources;

/// How long finished sandboxes are kept by default (Mesos' `--gc_delay`: one week).
pub const DEFAULT_GC_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The fraction of the work dir's disk kept free by default (Mesos' `--gc_disk_headroom`).
pub const DEFAULT_GC_DISK_HEADROOM: f64 = 0.1;

/// Command-line flags; each can also be set as `CORRAL_<FLAG>` in the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "corral-agent",
    version,
    about = "A Corral agent: runs tasks for the leading master"
)]
pub struct AgentArgs {
    /// Masters to contact (any of them; the agent follows the leader): host:port,...
    #[arg(long, env = "CORRAL_MASTERS", default_value = "127.0.0.1:5050")]
    pub masters: String,

    /// Address of the agent's own HTTP endpoint (/health, /state).
    #[arg(long, env = "CORRAL_LISTEN", default_value = "127.0.0.1:5051")]
    pub listen: SocketAddr,

    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "CORRAL_LOG_FORMAT", default_value = "text")]
    pub log_format: corral_proto::logging::LogFormat,

    /// Directory for task sandboxes and the agent's checkpoints.
    #[arg(long, env = "CORRAL_WORK_DIR")]
    pub work_dir: PathBuf,

    /// Resources to offer, e.g. `cpus:4;mem:8192;disk:20000;ports:[31000-32000]`
    /// (default: detected from the machine).
    #[arg(long, env = "CORRAL_RESOURCES")]
    pub resources: Option<String>,

    /// Attributes for placement, e.g. `rack:r1;zone:a`.
    #[arg(long, env = "CORRAL_ATTRIBUTES", default_value = "")]
    pub attributes: String,

    /// Hostname reported to the masters (default: this machine's).
    #[arg(long, env = "CORRAL_HOSTNAME")]
    pub hostname: Option<String>,

    /// Grace period between SIGTERM and SIGKILL when a task is killed, in milliseconds.
    #[arg(long, env = "CORRAL_KILL_GRACE_PERIOD_MS", default_value_t = 3000)]
    pub kill_grace_period_ms: u64,

    /// How long a finished task's sandbox is kept (e.g. `168h`, `30m`, `2s`); sooner
    /// removed as the disk fills (see --gc-disk-headroom).
    #[arg(long, env = "CORRAL_GC_DELAY", default_value = "168h", value_parser = corral_proto::time::parse_duration)]
    pub gc_delay: Duration,

    /// Fraction of the work dir's disk to keep free: finished sandboxes are kept
    /// `gc_delay × max(0, 1 − headroom − disk usage)`, as in Mesos.
    #[arg(long, env = "CORRAL_GC_DISK_HEADROOM", default_value_t = DEFAULT_GC_DISK_HEADROOM)]
    pub gc_disk_headroom: f64,

    /// The cluster's name: with TLS, the masters' certificates must be of this cluster.
    #[arg(long, env = "CORRAL_CLUSTER_NAME", default_value = "corral")]
    pub cluster_name: String,

    /// `--tls-ca`, `--tls-cert`, `--tls-key`.
    #[command(flatten)]
    pub tls: corral_proto::tls::TlsArgs,

    /// Run tasks whose framework's user is root (an agent running as root refuses them by
    /// default, and runs every other task as its framework's user).
    #[arg(long, env = "CORRAL_ALLOW_ROOT_TASKS")]
    pub allow_root_tasks: bool,

    /// Serve plaintext on a non-loopback --listen address. Without TLS an agent refuses to:
    /// its endpoint serves the tasks' sandboxes.
    #[arg(long, env = "CORRAL_INSECURE")]
    pub insecure: bool,
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Masters to contact (any of them; the agent finds the leader).
    pub masters: Vec<String>,
    /// Address of the agent's HTTP endpoint (`/health`, `/state`).
    pub listen: SocketAddr,
    /// Where sandboxes and checkpoints live.
    pub work_dir: PathBuf,
    /// Resources offered to the cluster.
    pub resources: Resources,
    /// Attributes (`name`, `value`) frameworks can place by.
    pub attributes: Vec<(String, String)>,
    /// The hostname the agent registers with.
    pub hostname: String,
    /// Default time between SIGTERM and SIGKILL when a task is killed.
    pub kill_grace: Duration,
    /// Finished sandboxes are kept this long at most.
    pub gc_delay: Duration,
    /// Fraction of the disk to keep free (0 to 1).
    pub gc_disk_headroom: f64,
    /// The cluster's name (the role names peers' certificates must carry).
    pub cluster: String,
    /// Whether tasks may run as root.
    pub allow_root_tasks: bool,
    /// The agent's TLS identity, if any: its endpoint serves TLS only, its calls use it.
    pub tls: Option<corral_proto::tls::TlsFiles>,
}

/// Parse `name:value;name:value`.
pub fn parse_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (k, v) = entry
            .split_once(':')
            .ok_or_else(|| format!("--attributes: {entry:?} is not name:value"))?;
        if k.trim().is_empty() {
            return Err(format!("--attributes: {entry:?} has an empty name"));
        }
        if out.iter().any(|(n, _): &(String, String)| n == k.trim()) {
            return Err(format!("--attributes: {:?} is given twice", k.trim()));
        }
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

impl AgentArgs {
    /// Check every flag; the error names the flag.
    pub fn validate(self) -> Result<Config, String> {
        let masters = corral_proto::client::parse_masters(&self.masters).map_err(|e| format!("--masters: {e}"))?;
        let resources = match &self.resources {
            Some(text) => Resources::parse(text).map_err(|e| format!("--resources: {e}"))?,
            None => crate::detect::detect(&self.work_dir),
        };
        if !crate::detect::has_compute(&resources) {
            return Err("--resources: an agent needs some cpus or mem to offer".into());
        }
        let hostname = match self.hostname {
            Some(h) if !h.trim().is_empty() => h,
            Some(_) => return Err("--hostname: must not be empty".into()),
            None => crate::detect::hostname(),
        };
        if self.work_dir.as_os_str().is_empty() {
            return Err("--work-dir: must not be empty".into());
        }
        let tls = self.tls.files().map_err(|e| e.to_string())?;
        corral_proto::tls::check_listen("--listen", self.listen, tls.is_some(), self.insecure)?;
        if !(0.0..=1.0).contains(&self.gc_disk_headroom) {
            return Err(format!(
                "--gc-disk-headroom: must be between 0 and 1, got {}",
                self.gc_disk_headroom
            ));
        }
        Ok(Config {
            masters,
            listen: self.listen,
            work_dir: self.work_dir,
            resources,
            attributes: parse_attributes(&self.attributes)?,
            hostname,
            kill_grace: Duration::from_millis(self.kill_grace_period_ms),
            gc_delay: self.gc_delay,
            gc_disk_headroom: self.gc_disk_headroom,
            cluster: self.cluster_name,
            allow_root_tasks: self.allow_root_tasks,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes() {
        assert_eq!(
            parse_attributes("rack:r1; zone:a").unwrap(),
            vec![("rack".into(), "r1".into()), ("zone".into(), "a".into())]
        );
        assert!(parse_attributes("rack").is_err());
        assert!(parse_attributes("a:1;a:2").unwrap_err().contains("twice"));
        assert!(parse_attributes("").unwrap().is_empty());
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["corral-agent", "--work-dir", "/tmp/w"];
            argv.extend_from_slice(extra);
            AgentArgs::try_parse_from(argv).unwrap().validate()
        };
        assert!(parse(&["--resources", "cpus:-1"])
            .unwrap_err()
            .starts_with("--resources"));
        assert!(parse(&["--resources", "ports:[1-2]"])
            .unwrap_err()
            .contains("cpus or mem"));
        assert!(parse(&["--masters", ""]).unwrap_err().starts_with("--masters"));
        assert!(parse(&["--resources", "cpus:2;mem:512"]).is_ok());
        assert!(parse(&["--resources", "cpus:2", "--gc-disk-headroom", "1.5"])
            .unwrap_err()
            .starts_with("--gc-disk-headroom"));
        assert!(AgentArgs::try_parse_from(["corral-agent", "--work-dir", "/w", "--gc-delay", "2x"]).is_err());
        let open = parse(&["--resources", "cpus:2", "--listen", "0.0.0.0:5051"]).unwrap_err();
        assert!(
            open.starts_with("--listen 0.0.0.0:5051") && open.contains("--insecure"),
            "{open}"
        );
        assert!(parse(&["--resources", "cpus:2", "--listen", "0.0.0.0:5051", "--insecure"]).is_ok());
    }
}

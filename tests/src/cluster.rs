//! Real `corral-master` and `corral-agent` processes on free loopback ports with temp
//! data dirs: start, SIGKILL, SIGSTOP/SIGCONT, restart and add each one. Every process is
//! killed when the [`Cluster`] drops; on a panicking test, the logs are printed.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corral_proto::client::Masters;
use corral_proto::tls::Role;
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;

use tonic::Status;

use crate::{wait_for, Framework};

/// Cluster tests in one test binary run one at a time: each starts several masters with
/// tight timeouts, and on a 2-core machine two clusters at once would starve each other's
/// heartbeats.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where the Corral binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORRAL_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe.parent().expect("executable in a directory");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of Corral binary `name`, or a panic that says how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` (which builds it) or build it with `cargo build --bins`, or set CORRAL_BIN_DIR",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released for the child to take).
/// Never the same port twice in one test process: once released, the kernel may hand a port
/// out again at once, and a cluster then got one address for two masters (seen in CI).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether the scenario tests run with mutual TLS on every connection
/// (`CORRAL_TEST_TLS=1`): the harness makes a PKI per cluster with `corral tls`, gives each
/// master `m<id>`'s certificate, every agent `agent`'s, the CLI `ops`'s (a client's), and
/// this process `sim`'s (an agent's and a client's: its simulated agents and frameworks).
pub fn tls_mode() -> bool {
    std::env::var("CORRAL_TEST_TLS").is_ok_and(|v| v == "1")
}

/// Masters a test may add beyond those it starts get certificates too, up to this id.
const TLS_MAX_MASTER_ID: u64 = 9;

fn make_test_pki(dir: &Path) {
    let d = path_str(dir).to_string();
    let run = |args: &[&str]| {
        let out = Command::new(binary("corral"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run corral tls");
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["tls", "ca", "create", "--dir", &d]);
    let mut certs: Vec<(String, &str)> = (1..=TLS_MAX_MASTER_ID).map(|id| (format!("m{id}"), "master")).collect();
    certs.push(("agent".into(), "agent"));
    certs.push(("ops".into(), "client"));
    for (name, role) in &certs {
        run(&["tls", "cert", "create", "--dir", &d, "--role", role, "--name", name]);
    }
    // This process's identity: its simulated agents attach as agents, its frameworks and
    // waits are clients, so its certificate carries both roles (`corral tls` makes one
    // role per certificate; the test makes this one itself).
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("the test CA");
    let ca_key = rcgen::KeyPair::from_pem(&read("ca-key.pem")).expect("the CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("the CA");
    let names = [Role::Agent, Role::Client].map(|r| corral_proto::tls::role_name(r, "corral"));
    let mut params = rcgen::CertificateParams::new(names.to_vec()).expect("names");
    params.distinguished_name.push(rcgen::DnType::CommonName, "sim");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, &issuer).expect("signed");
    std::fs::write(dir.join("sim.pem"), cert.pem()).expect("write sim.pem");
    std::fs::write(dir.join("sim-key.pem"), key.serialize_pem()).expect("write sim-key.pem");
}

fn tls_files(dir: &Path, name: &str) -> corral_proto::tls::TlsFiles {
    corral_proto::tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let f = tls_files(dir, name);
    vec![
        "--tls-ca".into(),
        path_str(&f.ca).into(),
        "--tls-cert".into(),
        path_str(&f.cert).into(),
        "--tls-key".into(),
        path_str(&f.key).into(),
    ]
}

/// One master process of the cluster.
pub struct MasterProc {
    /// Its node id.
    pub id: u64,
    /// Its address (127.0.0.1 and a free port).
    pub address: String,
    /// Its data dir (a temp dir).
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
    /// Passed again on restart; None for masters added with `members add`.
    peers: Option<String>,
    /// Flags of this master alone (after the cluster's), kept for restarts.
    own_args: Vec<String>,
}

impl MasterProc {
    /// Whether its process runs (not killed, not exited).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// One agent process.
pub struct AgentProc {
    /// Its name in the cluster (`agent-1`, ...).
    pub name: String,
    /// Its work dir (a temp dir).
    pub work_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    stopped: bool,
}

impl AgentProc {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl MasterProc {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A set of masters (and agents) on this machine.
pub struct Cluster {
    /// The masters, by node id.
    pub masters: BTreeMap<u64, MasterProc>,
    /// The agents, by name.
    pub agents: BTreeMap<String, AgentProc>,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Whether agents started from now on get `--allow-root-tasks` (the tests run as root;
    /// true unless a test turns it off).
    pub agents_allow_root: bool,
    /// Channels for [`Cluster::member`], by address: kept, so that a poll of every master
    /// is not a TCP (and TLS) handshake per master per poll.
    member_channels: Mutex<BTreeMap<String, corral_proto::client::Channel>>,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Start `n` masters (ids 1..=n) forming one cluster.
    pub fn start(n: u64) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Start `n` masters with extra flags for every one (`{id}` in a flag is replaced by
    /// each master's id).
    pub fn start_with(n: u64, extra_args: &[&str]) -> Cluster {
        Self::start_prepared(n, extra_args, |_, _, _| {})
    }

    /// Start `n` masters with extra flags, after `prepare(id, data_dir, address)` has had
    /// the chance to fill each master's data dir (a test's seeded state).
    pub fn start_prepared(n: u64, extra_args: &[&str], prepare: impl Fn(u64, &Path, &str)) -> Cluster {
        Self::start_shaped(n, extra_args, prepare, |_| Vec::new())
    }

    /// Start `n` masters with extra flags for every one, and `own(id)`'s flags for each
    /// (a master that should rarely win an election gets a longer election timeout, say).
    pub fn start_with_own(n: u64, extra_args: &[&str], own: impl Fn(u64) -> Vec<String>) -> Cluster {
        Self::start_shaped(n, extra_args, |_, _, _| {}, own)
    }

    fn start_shaped(
        n: u64,
        extra_args: &[&str],
        prepare: impl Fn(u64, &Path, &str),
        own: impl Fn(u64) -> Vec<String>,
    ) -> Cluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().expect("temp dir");
        let addresses: BTreeMap<u64, String> = (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let peers = addresses
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        if tls_mode() {
            make_test_pki(&dir.path().join("pki"));
            extra_args.extend(tls_args(&dir.path().join("pki"), "m{id}"));
            let files = tls_files(&dir.path().join("pki"), "sim");
            let client = corral_proto::tls::ClientTls::load(&files, "corral").expect("the test PKI's client files");
            // After the cluster's turn is ours: the client identity is process-wide.
            corral_proto::tls::set_client(Some(client));
        } else {
            // A test that wants TLS of its own sets it after the cluster started.
            corral_proto::tls::set_client(None);
        }
        let mut cluster = Cluster {
            masters: BTreeMap::new(),
            agents: BTreeMap::new(),
            dir,
            extra_args,
            agents_allow_root: true,
            member_channels: Mutex::default(),
            _turn: turn,
        };
        for (id, address) in addresses {
            prepare(id, &cluster.dir.path().join(format!("master-{id}")), &address);
            cluster.add_process(id, address, Some(peers.clone()), own(id));
        }
        eprintln!("cluster: started {n} masters: {}", cluster.masters_arg());
        cluster
    }

    fn add_process(&mut self, id: u64, address: String, peers: Option<String>, own_args: Vec<String>) {
        let data_dir = self.dir.path().join(format!("master-{id}"));
        let log = self.dir.path().join(format!("master-{id}.log"));
        let mut m = MasterProc {
            id,
            address,
            data_dir,
            log,
            child: None,
            stopped: false,
            peers,
            own_args,
        };
        spawn(&mut m, &self.extra_args);
        self.masters.insert(id, m);
    }

    /// Start master `id` on an empty data dir without `--peers`: it waits to be added with
    /// `corral members add`.
    pub fn start_standalone(&mut self, id: u64) -> String {
        let address = format!("127.0.0.1:{}", free_port());
        self.add_process(id, address.clone(), None, Vec::new());
        address
    }

    /// Every master address, comma-separated (for `--masters`).
    pub fn masters_arg(&self) -> String {
        self.masters
            .values()
            .map(|m| m.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address of master `id`.
    pub fn address(&self, id: u64) -> &str {
        &self.masters[&id].address
    }

    /// A leader-following client of the running masters.
    pub fn client(&self) -> Masters {
        let addrs = self
            .masters
            .values()
            .filter(|m| m.is_running())
            .map(|m| m.address.clone())
            .collect();
        Masters::new(addrs, Duration::from_secs(2))
    }

    /// SIGKILL master `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let m = self.masters.get_mut(&id).expect("known master");
        if let Some(mut child) = m.child.take() {
            if m.stopped {
                signal(&child, libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        m.stopped = false;
        eprintln!("cluster: killed master {id}");
    }

    /// SIGSTOP master `id` (it keeps its sockets but answers nothing).
    pub fn pause(&mut self, id: u64) {
        let m = self.masters.get_mut(&id).expect("known master");
        signal(m.child.as_ref().expect("running"), libc::SIGSTOP);
        m.stopped = true;
        eprintln!("cluster: paused master {id}");
    }

    /// SIGCONT master `id`.
    pub fn resume(&mut self, id: u64) {
        let m = self.masters.get_mut(&id).expect("known master");
        signal(m.child.as_ref().expect("running"), libc::SIGCONT);
        m.stopped = false;
        eprintln!("cluster: resumed master {id}");
    }

    /// Start master `id` again on its data dir (after a kill).
    pub fn restart(&mut self, id: u64) {
        let extra = self.extra_args.clone();
        let m = self.masters.get_mut(&id).expect("known master");
        assert!(m.child.is_none(), "master {id} is still running");
        spawn(m, &extra);
        eprintln!("cluster: restarted master {id}");
    }

    /// Master `id`'s exit status, if its process has ended (it is then no longer running).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let m = self.masters.get_mut(&id).expect("known master");
        let status = m.child.as_mut()?.try_wait().expect("try_wait on a child")?;
        m.child = None;
        m.stopped = false;
        eprintln!("cluster: master {id} exited: {status}");
        Some(status)
    }

    /// Wait until master `id` exits on its own; its exit status.
    pub async fn wait_exit(&mut self, id: u64, deadline: Duration) -> std::process::ExitStatus {
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exited(id) {
                return status;
            }
            assert!(
                Instant::now() < give_up,
                "master {id} still running after {deadline:?}; log:\n{}",
                self.log_tail(id, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start master `id` again on an empty data dir and without `--peers`, after it was
    /// removed from the cluster: the README's recovery of a damaged master. Its old data dir
    /// is moved to `<data dir>.damaged`.
    pub fn restart_empty(&mut self, id: u64) {
        let extra = self.extra_args.clone();
        let m = self.masters.get_mut(&id).expect("known master");
        assert!(m.child.is_none(), "master {id} is still running");
        let aside = m.data_dir.with_extension("damaged");
        let _ = std::fs::remove_dir_all(&aside);
        if m.data_dir.exists() {
            std::fs::rename(&m.data_dir, &aside).expect("move the damaged data dir away");
        }
        m.peers = None;
        spawn(m, &extra);
        eprintln!("cluster: restarted master {id} on an empty data dir");
    }

    /// The HTTP status and body of `GET path` on master `id` (None if it does not answer);
    /// over HTTPS with this process's client identity in TLS mode ([`tls_mode`]).
    pub async fn http_get(&self, id: u64, path: &str) -> Option<(u16, String)> {
        if !tls_mode() {
            return http_request(self.address(id), "GET", path, b"").await;
        }
        let (config, name) = corral_proto::tls::client()?.rustls(Role::Master);
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.address(id)).await.ok()?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.ok()?;
            http_exchange(tls, self.address(id), "GET", path, &[], b"").await
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
    }

    /// Forget master `id` after killing it (it was removed from the cluster).
    pub fn discard(&mut self, id: u64) {
        self.kill(id);
        self.masters.remove(&id);
    }

    /// Master `id`'s own view, or the error.
    pub async fn member(&self, id: u64) -> Result<v1::MemberStatus, Status> {
        member_on(self.member_channel(id)?).await
    }

    /// The kept channel to master `id`. It speaks with the process's client identity
    /// ([`corral_proto::tls::set_client`]) as it was when the channel was first made.
    fn member_channel(&self, id: u64) -> Result<corral_proto::client::Channel, Status> {
        let address = self.address(id).to_string();
        let mut channels = self.member_channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&address) {
            return Ok(c.clone());
        }
        let c = corral_proto::client::channel(&address, Duration::from_millis(500))?;
        channels.insert(address, c.clone());
        Ok(c)
    }

    /// Every one of `ids`' status, asked at once (so that the answers describe nearly the
    /// same moment while something writes); None if any does not answer.
    pub async fn members_at_once(&self, ids: &[u64]) -> Option<Vec<v1::MemberStatus>> {
        let mut calls = Vec::new();
        for id in ids {
            let channel = self.member_channel(*id).ok()?;
            calls.push(tokio::spawn(member_on(channel)));
        }
        let mut seen = Vec::new();
        for call in calls {
            seen.push(call.await.ok()?.ok()?);
        }
        Some(seen)
    }

    /// The one of `among` that says it is leader, asked once (None if none or several do).
    /// Masters that do not answer are skipped.
    pub async fn leader_among(&self, among: &[u64]) -> Option<u64> {
        let mut leaders = Vec::new();
        for id in among {
            if let Ok(m) = self.member(*id).await {
                if m.role == "leader" {
                    leaders.push(*id);
                }
            }
        }
        match leaders.as_slice() {
            [leader] => Some(*leader),
            _ => None,
        }
    }

    /// Wait until exactly one of `among` is leader and all of them name it; returns its id.
    pub async fn wait_leader(&self, among: &[u64], deadline: Duration) -> u64 {
        let what = format!("one leader agreed by masters {among:?}");
        wait_for(deadline, &what, || async {
            let mut leaders = Vec::new();
            for id in among {
                let Ok(m) = self.member(*id).await else { return None };
                if m.role == "leader" {
                    leaders.push(*id);
                }
            }
            let [leader] = leaders.as_slice() else { return None };
            let leader_addr = self.address(*leader).to_string();
            // Every member must name the same leader (read from /health through Status).
            for id in among {
                let status = self.status_of(*id).await?;
                if status.leader.map(|l| l.address) != Some(leader_addr.clone()) {
                    return None;
                }
            }
            Some(*leader)
        })
        .await
    }

    /// Master `id`'s answer to `Status`.
    pub async fn status_of(&self, id: u64) -> Option<v1::StatusResponse> {
        let channel = corral_proto::client::channel(self.address(id), Duration::from_secs(2)).ok()?;
        let mut client = OperatorClient::new(channel);
        let call = client.status(v1::StatusRequest {});
        tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .ok()?
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// Wait until every one of `ids` has applied the same index with the same state hash, at
    /// least `min_index`; returns (index, hash).
    pub async fn wait_converged(&self, ids: &[u64], min_index: u64, deadline: Duration) -> (u64, String) {
        let what = format!("masters {ids:?} at the same applied index (>= {min_index}) and state hash");
        wait_for(deadline, &what, || async {
            let seen = self.members_at_once(ids).await?;
            let first = &seen[0];
            let same = seen
                .iter()
                .all(|m| m.applied_index == first.applied_index && m.state_hash == first.state_hash);
            (same && first.applied_index >= min_index).then(|| (first.applied_index, first.state_hash.clone()))
        })
        .await
    }

    /// Set a role weight through the leader.
    pub async fn set_weight(
        &self,
        client: &Masters,
        role: &str,
        weight: f64,
        deadline: Duration,
    ) -> Result<(), Status> {
        client
            .on_leader(deadline, |ch| {
                let weights = vec![v1::WeightInfo {
                    role: role.to_string(),
                    weight,
                }];
                async move {
                    OperatorClient::new(ch)
                        .set_weights(v1::SetWeightsRequest { weights })
                        .await
                }
            })
            .await
            .map(|_| ())
    }

    /// The role weights, read from the leader.
    pub async fn weights(&self, client: &Masters, deadline: Duration) -> Result<BTreeMap<String, f64>, Status> {
        let r = client
            .on_leader(deadline, |ch| async move {
                OperatorClient::new(ch).get_weights(v1::GetWeightsRequest {}).await
            })
            .await?;
        Ok(r.into_inner().weights.into_iter().collect())
    }

    /// Start an agent named `name` (also its hostname) offering `resources`.
    pub fn start_agent(&mut self, name: &str, resources: &str, attributes: &str) {
        self.start_agent_with(name, resources, attributes, &[]);
    }

    /// Start an agent as [`Cluster::start_agent`] does, with extra flags.
    pub fn start_agent_with(&mut self, name: &str, resources: &str, attributes: &str, extra: &[&str]) {
        let work_dir = self.dir.path().join(format!("agent-{name}"));
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let args = vec![
            "--masters".to_string(),
            self.masters_arg(),
            // A port of its own for life: executors find a restarted agent where they left
            // it (MESOS_AGENT_ENDPOINT), as on a real host.
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--work-dir".into(),
            path_str(&work_dir).to_string(),
            "--hostname".into(),
            name.to_string(),
            "--resources".into(),
            resources.to_string(),
            "--attributes".into(),
            attributes.to_string(),
            "--kill-grace-period-ms".into(),
            "1000".into(),
        ];
        let root = self.agents_allow_root.then(|| "--allow-root-tasks".to_string());
        let tls = if tls_mode() {
            tls_args(&self.dir.path().join("pki"), "agent")
        } else {
            Vec::new()
        };
        let args = args
            .into_iter()
            .chain(root)
            .chain(tls)
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let mut a = AgentProc {
            name: name.to_string(),
            work_dir,
            log,
            args,
            child: None,
            stopped: false,
        };
        spawn_agent(&mut a);
        self.agents.insert(name.to_string(), a);
    }

    /// SIGKILL agent `name` (its tasks keep running).
    pub fn kill_agent(&mut self, name: &str) {
        let a = self.agents.get_mut(name).expect("known agent");
        if let Some(mut child) = a.child.take() {
            if a.stopped {
                signal(&child, libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        a.stopped = false;
    }

    /// Start agent `name` again on its work dir (it must have been stopped or killed).
    pub fn restart_agent(&mut self, name: &str) {
        let a = self.agents.get_mut(name).expect("known agent");
        assert!(a.child.is_none(), "agent {name} is still running");
        spawn_agent(a);
    }

    /// SIGSTOP agent `name` (its tasks, under their own supervisors, keep running).
    pub fn pause_agent(&mut self, name: &str) {
        let a = self.agents.get_mut(name).expect("known agent");
        signal(a.child.as_ref().expect("running"), libc::SIGSTOP);
        a.stopped = true;
    }

    /// SIGCONT agent `name`.
    pub fn resume_agent(&mut self, name: &str) {
        let a = self.agents.get_mut(name).expect("known agent");
        signal(a.child.as_ref().expect("running"), libc::SIGCONT);
        a.stopped = false;
    }

    /// The sandbox of a task on agent `name`.
    pub fn sandbox(&self, agent: &str, framework_id: &str, task_id: &str) -> PathBuf {
        self.agents[agent]
            .work_dir
            .join("frameworks")
            .join(framework_id)
            .join("tasks")
            .join(task_id)
    }

    /// Wait until `n` agents are registered and connected to the leader.
    pub async fn wait_agents(&self, n: usize, deadline: Duration) -> Vec<v1::AgentSummary> {
        let client = self.client();
        wait_for(deadline, &format!("{n} connected agents"), || async {
            let agents =
                corral_proto::client::list_all(&client, Duration::from_secs(2), v1::ListAgentsRequest::default())
                    .await
                    .ok()?;
            let connected: Vec<_> = agents.into_iter().filter(|a| a.connected).collect();
            (connected.len() >= n).then_some(connected)
        })
        .await
    }

    /// The tasks the leader knows (every page).
    pub async fn tasks(&self) -> Result<Vec<v1::TaskSummary>, Status> {
        corral_proto::client::list_all(&self.client(), Duration::from_secs(5), v1::ListTasksRequest::default()).await
    }

    /// Subscribe a test framework.
    pub async fn framework(&self, name: &str, role: &str) -> Framework {
        Framework::subscribe(
            self.client(),
            v1::FrameworkInfo {
                name: name.into(),
                role: role.into(),
                failover_timeout_seconds: 60.0,
                ..Default::default()
            },
        )
        .await
        .expect("subscribe")
    }

    /// A `corral` command for this cluster: its masters, and in TLS mode ([`tls_mode`]) the
    /// client certificate, in its environment.
    pub fn corral(&self) -> Command {
        let mut cmd = Command::new(binary("corral"));
        if tls_mode() {
            let f = tls_files(&self.dir.path().join("pki"), "ops");
            cmd.env("CORRAL_TLS_CA", &f.ca)
                .env("CORRAL_TLS_CERT", &f.cert)
                .env("CORRAL_TLS_KEY", &f.key);
        }
        cmd.env("CORRAL_MASTERS", self.masters_arg());
        cmd
    }

    /// Run the `corral` CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.corral()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run corral")
    }

    /// The last lines of master `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.masters[&id].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn spawn_agent(a: &mut AgentProc) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .expect("open agent log");
    let child = Command::new(binary("corral-agent"))
        .args(&a.args)
        .env(
            "RUST_LOG",
            std::env::var("CORRAL_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn corral-agent");
    a.child = Some(child);
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we have not reaped, so it cannot be reused.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

fn spawn(m: &mut MasterProc, extra: &[String]) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.log)
        .expect("open master log");
    let mut cmd = Command::new(binary("corral-master"));
    cmd.arg("--id")
        .arg(m.id.to_string())
        .arg("--listen")
        .arg(&m.address)
        .arg("--data-dir")
        .arg(&m.data_dir)
        // `{id}` in a flag becomes the master's id (its own certificate, say).
        .args(extra.iter().map(|a| a.replace("{id}", &m.id.to_string())))
        .args(&m.own_args)
        .env(
            "RUST_LOG",
            std::env::var("CORRAL_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(p) = &m.peers {
        cmd.arg("--peers").arg(p);
    }
    m.child = Some(cmd.spawn().expect("spawn corral-master"));
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            if let Some(mut child) = a.child.take() {
                if a.stopped {
                    signal(&child, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            // Tasks outlive their agent by design: kill whatever the agent started.
            kill_tasks_under(&a.work_dir);
        }
        let ids: Vec<u64> = self.masters.keys().copied().collect();
        for id in &ids {
            let m = self.masters.get_mut(id).expect("known");
            if let Some(mut child) = m.child.take() {
                if m.stopped {
                    signal(&child, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(keep) = std::env::var_os("CORRAL_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for m in self.masters.values() {
                let _ = std::fs::copy(&m.log, keep.join(format!("master-{}.log", m.id)));
            }
            for a in self.agents.values() {
                let _ = std::fs::copy(&a.log, keep.join(format!("agent-{}.log", a.name)));
            }
        }
        if std::thread::panicking() {
            for id in ids {
                eprintln!("---- master {id} log (last 40 lines) ----\n{}", self.log_tail(id, 40));
            }
            for a in self.agents.values() {
                let text = std::fs::read_to_string(&a.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "---- agent {} log (last 30 lines) ----\n{}",
                    a.name,
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

/// One HTTP/1.1 request to `address` with `body`; the status code and body of the answer,
/// or None if the connection failed or no answer came within 5 s.
pub async fn http_request(address: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    http_request_with(address, method, path, &[], body).await
}

/// [`http_request`] with extra `headers`. A body the server refuses before it has all been
/// sent (over a size limit) still gets the server's answer.
pub async fn http_request_with(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        http_exchange(stream, address, method, path, headers, body).await
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// One HTTP/1.1 request on `stream`, and its answer.
async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    // A reset after the answer (the server closed with the body unread) keeps what came.
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Some((code, body))
}

/// The virtualenv with pymesos (made by `tests/python/setup-pymesos.sh`, which `.ci/run`
/// runs first; made here if missing).
pub fn pymesos_python() -> PathBuf {
    let venv = std::env::var_os("CORRAL_PYMESOS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("pymesos-venv"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/setup-pymesos.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&venv)
        .output()
        .expect("run setup-pymesos.sh");
    assert!(
        out.status.success(),
        "could not make the pymesos virtualenv at {}: {}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    venv.join("bin/python")
}

/// The data of a chunked HTTP/1.1 body (as far as it is whole).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A temp dir path helper for tests that run a binary by hand.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Kill the process groups of every task (and its supervisor) that an agent checkpointed
/// under `work_dir`.
fn kill_tasks_under(work_dir: &Path) {
    let Ok(frameworks) = std::fs::read_dir(work_dir.join("meta/frameworks")) else {
        return;
    };
    for f in frameworks.flatten() {
        let Ok(tasks) = std::fs::read_dir(f.path().join("tasks")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            // The supervisor first (so it records nothing more), then the task's own group.
            for field in ["supervisor_pid", "pid"] {
                if let Some(pid) = v[field].as_u64() {
                    // SAFETY: kill(2) on a process group our agent started; no memory involved.
                    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                }
            }
        }
    }
}

/// One master's status over `channel`, bounded (a paused master does not answer).
async fn member_on(channel: corral_proto::client::Channel) -> Result<v1::MemberStatus, Status> {
    let mut client = OperatorClient::new(channel);
    let call = client.member(v1::MemberRequest {});
    match tokio::time::timeout(Duration::from_millis(700), call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("member query timed out")),
    }
}

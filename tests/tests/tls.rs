//! tls: a cluster whose every connection is mutual TLS 1.3, with certificates made by
//! `corral tls`, and what it refuses: plaintext, another CA's certificate, a client or agent
//! certificate speaking Raft, a client certificate attaching as an agent.
//!
//! The test process itself speaks TLS with a client certificate (the harness's clients use
//! `corral_proto::client::channel`), so these tests live in their own binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use corral_proto::tls::{ClientTls, TlsFiles};
use corral_proto::v1;
use corral_tests::{binary, Cluster};

const T: Duration = Duration::from_secs(30);

fn corral(args: &[&str]) -> Output {
    let out = Command::new(binary("corral"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run corral");
    assert!(
        out.status.success(),
        "corral {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA in `dir` and certificates `(role, name)` signed by it.
fn make_pki(dir: &Path, certs: &[(&str, &str)]) {
    let d = dir.to_str().unwrap();
    corral(&["tls", "ca", "create", "--dir", d]);
    for (role, name) in certs {
        corral(&["tls", "cert", "create", "--dir", d, "--role", role, "--name", name]);
    }
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

fn tls_flags(f: &TlsFiles) -> Vec<String> {
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    vec![
        "--tls-ca".into(),
        p(&f.ca),
        "--tls-cert".into(),
        p(&f.cert),
        "--tls-key".into(),
        p(&f.key),
    ]
}

/// A TLS channel to `addr` as `identity` (cert and key files), trusting `ca`.
fn channel_as(addr: &str, ca: &Path, identity: &TlsFiles) -> tonic::transport::Channel {
    let tls = ClientTls::load(
        &TlsFiles {
            ca: ca.to_path_buf(),
            ..identity.clone()
        },
        "corral",
    )
    .expect("client TLS files");
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.tonic(corral_proto::tls::Role::Master))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

fn forged_raft() -> v1::RaftRequest {
    v1::RaftRequest {
        cluster: "corral".into(),
        target: 1,
        payload: vec![0xff; 64],
    }
}

/// Three TLS masters and two TLS agents run `corral run` through three leader failovers;
/// plaintext, another CA's client, and certificates of the wrong role are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_runs_tasks_through_failovers_and_refuses_strangers() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_pki(
        dir,
        &[
            ("master", "m1"),
            ("master", "m2"),
            ("master", "m3"),
            ("agent", "a1"),
            ("agent", "a2"),
            ("client", "ops"),
        ],
    );
    let stranger_pki = tempfile::tempdir().unwrap();
    make_pki(stranger_pki.path(), &[("client", "mallory"), ("master", "fake")]);

    // This process's own calls (the harness's waits) are a client's.
    corral_proto::tls::set_client(Some(ClientTls::load(&files(dir, "ops"), "corral").unwrap()));

    let master_flags = tls_flags(&files(dir, "m{id}"));
    let flags: Vec<&str> = master_flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, &flags);
    let mut leader = cluster.wait_leader(&[1, 2, 3], T).await;
    for name in ["a1", "a2"] {
        let f = tls_flags(&files(dir, name));
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        cluster.start_agent_with(name, "cpus:2;mem:1024", "", &f);
    }
    cluster.wait_agents(2, T).await;

    let client_flags = tls_flags(&files(dir, "ops"));
    let run = |cluster: &Cluster, word: &str| {
        let mut args: Vec<String> = vec![
            "--masters".into(),
            cluster.masters_arg(),
            "--timeout-secs".into(),
            "20".into(),
        ];
        args.extend(client_flags.iter().cloned());
        args.extend(["run".into(), "--".into(), "echo".into(), word.into()]);
        let out = Command::new(binary("corral"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run corral");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && stdout.contains(word),
            "corral run over TLS: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&cluster, "hello-over-tls");
    for round in 1..=3 {
        cluster.kill(leader);
        let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        let next = cluster.wait_leader(&rest, T).await;
        cluster.restart(leader);
        run(&cluster, &format!("after-failover-{round}"));
        leader = next;
    }

    let addr = cluster.address(leader).to_string();
    // Plaintext: the TLS port does not speak it.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let answer = v1::operator_client::OperatorClient::new(plain)
        .status(v1::StatusRequest {})
        .await;
    assert!(answer.is_err(), "a plaintext call was answered: {answer:?}");

    // A client certificate of another CA (the master's CA trusted, so the refusal is the
    // master's): the handshake fails.
    let mallory = channel_as(&addr, &dir.join("ca.pem"), &files(stranger_pki.path(), "mallory"));
    let answer = v1::operator_client::OperatorClient::new(mallory)
        .status(v1::StatusRequest {})
        .await;
    assert!(answer.is_err(), "another CA's client was answered: {answer:?}");

    // A server with another CA's master certificate is not taken for a master: the
    // harness's client refuses it (its CA is not ours).
    let ours = channel_as(&addr, stranger_pki.path().join("ca.pem").as_path(), &files(dir, "ops"));
    let answer = v1::operator_client::OperatorClient::new(ours)
        .status(v1::StatusRequest {})
        .await;
    assert!(answer.is_err(), "a master of another CA was trusted: {answer:?}");

    // Our own client and agent certificates speaking Raft, as the attacker sent it.
    for who in ["ops", "a1"] {
        let channel = channel_as(&addr, &dir.join("ca.pem"), &files(dir, who));
        let mut raft = v1::raft_client::RaftClient::new(channel);
        let appended = raft.append_entries(forged_raft()).await.unwrap_err();
        assert_eq!(appended.code(), tonic::Code::PermissionDenied, "{who}: {appended:?}");
        assert!(appended.message().contains("master certificate"), "{appended:?}");
        let voted = raft.vote(forged_raft()).await.unwrap_err();
        assert_eq!(voted.code(), tonic::Code::PermissionDenied, "{who}: {voted:?}");
    }
    // A master's certificate gets past the role check to the Raft checks (here: the
    // undecodable payload).
    let channel = channel_as(&addr, &dir.join("ca.pem"), &files(dir, "m1"));
    let mut forged = forged_raft();
    forged.target = leader;
    let answer = v1::raft_client::RaftClient::new(channel)
        .append_entries(forged)
        .await
        .unwrap_err();
    assert_eq!(answer.code(), tonic::Code::InvalidArgument, "{answer:?}");

    // A client certificate attaching as an agent.
    let channel = channel_as(&addr, &dir.join("ca.pem"), &files(dir, "ops"));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let attached = v1::agents_client::AgentsClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(attached.code(), tonic::Code::PermissionDenied, "{attached:?}");
    assert!(attached.message().contains("agent certificate"), "{attached:?}");

    // The cluster is unharmed: every master agrees.
    cluster.wait_converged(&[1, 2, 3], 1, T).await;
}

/// A master given only some of the TLS flags, or a file that is not PEM, exits 2 saying
/// which.
#[test]
fn tls_bad_flags_stop_a_master_at_start() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), &[("master", "m1")]);
    let data = tempfile::tempdir().unwrap();
    let master = |extra: &[&str]| {
        Command::new(binary("corral-master"))
            .args([
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--advertise",
                "127.0.0.1:1",
                "--data-dir",
            ])
            .arg(data.path())
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run corral-master")
    };
    let ca = pki.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = master(&["--tls-ca", ca]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"), "{out:?}");
    let out = master(&["--tls-ca", ca, "--tls-cert", ca, "--tls-key", ca]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.pem"), "{out:?}");
}

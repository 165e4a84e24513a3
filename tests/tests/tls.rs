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
        .tls_config(tls.tonic(corral_proto::tls::Role::Master, std::time::Duration::from_secs(5)))
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

    let master_flags = tls_flags(&files(dir, "m{id}"));
    let flags: Vec<&str> = master_flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, &flags);
    // After the cluster's turn is ours: the client identity is process-wide.
    corral_proto::tls::set_client(Some(ClientTls::load(&files(dir, "ops"), "corral").unwrap()));
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
    // A framework's own executor: it reaches its agent on the agent's loopback executor
    // endpoint (plain HTTP, as executors speak) while the agent's own port is TLS only.
    let exe = binary("test-executor");
    let mut fw = cluster.framework("tls-executor", "*").await;
    let offer = fw.next_offers(T).await.remove(0);
    let task = corral_tests::Framework::executor_task("t1", &offer.agent_id, 0.5, "e1", &[exe.to_str().unwrap()]);
    fw.accept(vec![offer.offer_id], vec![task], 0.0).await.unwrap();
    fw.wait_state("t1", v1::TaskState::TaskRunning, T).await;
    fw.message(&offer.agent_id, "e1", b"finish:t1").await.unwrap();
    fw.wait_state("t1", v1::TaskState::TaskFinished, T).await;
    fw.teardown().await.unwrap();
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

/// A master or agent told to listen beyond loopback without TLS refuses to start, in one
/// line saying how to set TLS up, unless given --insecure.
#[test]
fn tls_a_non_loopback_listen_without_tls_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(binary("corral-master"))
        .args([
            "--id",
            "1",
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            "127.0.0.1:1",
            "--data-dir",
        ])
        .arg(data.path())
        .stdin(Stdio::null())
        .output()
        .expect("run corral-master");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("corral tls ca create") && err.contains("--insecure"),
        "{err}"
    );
    let out = Command::new(binary("corral-agent"))
        .args([
            "--masters",
            "127.0.0.1:1",
            "--listen",
            "0.0.0.0:0",
            "--resources",
            "cpus:1",
            "--work-dir",
        ])
        .arg(data.path().join("agent"))
        .stdin(Stdio::null())
        .output()
        .expect("run corral-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("--tls-ca") && err.contains("--insecure"), "{err}");
}

/// `corral` as `identity` (and with `token`, if any) against `masters`; its output,
/// whatever its exit status.
fn corral_as(masters: &str, identity: &TlsFiles, token: Option<&str>, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec!["--masters".into(), masters.into(), "--timeout-secs".into(), "20".into()];
    all.extend(tls_flags(identity));
    if let Some(t) = token {
        all.extend(["--token".to_string(), t.to_string()]);
    }
    all.extend(args.iter().map(|a| a.to_string()));
    Command::new(binary("corral"))
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .expect("run corral")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The token line `corral acl token create` prints first, and its ACL lines.
fn new_token(name: &str) -> (String, String) {
    let out = corral(&["acl", "token", "create", name]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let token = printed.lines().next().unwrap().trim().to_string();
    let lines: String = printed
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    (token, lines)
}

/// A subscribe to `addr` as `identity` (with `token`), for framework `info`.
async fn subscribe_as(
    addr: &str,
    ca: &Path,
    identity: &TlsFiles,
    token: Option<&str>,
    info: v1::FrameworkInfo,
) -> Result<(String, tonic::Streaming<v1::Event>), tonic::Status> {
    let mut request = tonic::Request::new(v1::SubscribeRequest {
        framework: Some(info),
        suppressed: false,
    });
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut events = v1::scheduler_client::SchedulerClient::new(channel_as(addr, ca, identity))
        .subscribe(request)
        .await?
        .into_inner();
    use tokio_stream::StreamExt;
    let first = tokio::time::timeout(T, events.next())
        .await
        .expect("SUBSCRIBED in time")
        .expect("an event")?;
    match first.event {
        Some(v1::event::Event::Subscribed(s)) => Ok((s.framework_id, events)),
        other => panic!("first event is not SUBSCRIBED: {other:?}"),
    }
}

/// With an ACL file, each principal gets what its entry grants and nothing more: roles,
/// users, teardown of its own frameworks only, read-only operators; agents are no clients;
/// tasks never run as root on an agent that does not allow it; no token or key is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_grants_each_principal_only_its_permissions() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_pki(
        dir,
        &[
            ("master", "m1"),
            ("agent", "a1"),
            ("client", "ops"),
            ("client", "alice"),
        ],
    );
    let (batch_token, batch_lines) = new_token("batch");
    let acl = dir.join("acl.toml");
    std::fs::write(
        &acl,
        format!(
            "[principals.ops]\noperator = \"write\"\nteardown = \"any\"\nregister_roles = [\"*\"]\nrun_as_users = [\"*\"]\n\n\
             [principals.alice]\noperator = \"read\"\nregister_roles = [\"alice\"]\nrun_as_users = [\"nobody\"]\n\n\
             {batch_lines}register_roles = [\"batch\"]\nrun_as_users = [\"nobody\"]\n"
        ),
    )
    .unwrap();
    let mut flags = tls_flags(&files(dir, "m1"));
    flags.extend(["--acl-file".to_string(), acl.to_str().unwrap().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(1, &flags);
    // After the cluster's turn is ours: the client identity is process-wide.
    corral_proto::tls::set_client(Some(ClientTls::load(&files(dir, "ops"), "corral").unwrap()));
    cluster.wait_leader(&[1], T).await;
    // An agent that refuses root tasks (the tests run as root).
    cluster.agents_allow_root = false;
    let f = tls_flags(&files(dir, "a1"));
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    cluster.start_agent_with("a1", "cpus:2;mem:1024", "", &f);
    cluster.wait_agents(1, T).await;
    let masters = cluster.masters_arg();
    let addr = cluster.address(1).to_string();
    let ca = dir.join("ca.pem");
    let (ops, alice, agent) = (files(dir, "ops"), files(dir, "alice"), files(dir, "a1"));
    let mut said = Vec::new();

    // A token without register_roles for role prod.
    let out = corral_as(
        &masters,
        &alice,
        Some(&batch_token),
        &["run", "--role", "prod", "--user", "nobody", "--", "true"],
    );
    said.push(text(&out));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("register_roles \\\"prod\\\"") || text(&out).contains("register_roles \"prod\""),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("batch"), "{}", text(&out));

    // Its own role, as nobody: runs, as nobody.
    let out = corral_as(
        &masters,
        &alice,
        None,
        &["run", "--role", "alice", "--user", "nobody", "--", "id", "-un"],
    );
    said.push(text(&out));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nobody"),
        "{}",
        text(&out)
    );
    // A user not in its run_as_users.
    let out = corral_as(
        &masters,
        &alice,
        None,
        &["run", "--role", "alice", "--user", "root", "--", "true"],
    );
    said.push(text(&out));
    assert!(
        !out.status.success() && text(&out).contains("run_as_users"),
        "{}",
        text(&out)
    );

    // Root, even for a principal that may ask for it: the agent refuses.
    let out = corral_as(&masters, &ops, None, &["run", "--user", "root", "--", "true"]);
    said.push(text(&out));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--allow-root-tasks"), "{}", text(&out));

    // A read operator removing a master; an agent certificate writing weights.
    let out = corral_as(&masters, &alice, None, &["members", "remove", "1"]);
    said.push(text(&out));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("operator write") && text(&out).contains("alice"),
        "{}",
        text(&out)
    );
    let out = corral_as(&masters, &alice, None, &["frameworks"]);
    assert!(out.status.success(), "a read operator lists: {}", text(&out));
    let out = corral_as(&masters, &agent, None, &["weights", "set", "r", "2"]);
    said.push(text(&out));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("operator write") && text(&out).contains("a1"),
        "{}",
        text(&out)
    );
    let out = corral_as(&masters, &ops, Some("corral_not-a-token"), &["frameworks"]);
    said.push(text(&out));
    assert!(
        !out.status.success() && text(&out).contains("bearer token"),
        "{}",
        text(&out)
    );

    // The HTTP endpoints that show the cluster's state ask for operator read, as the gRPC
    // reads do; /health stays open.
    let http = |target: &'static str, token: Option<String>| {
        let addr = addr.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let opened = corral_proto::http::open(&addr, corral_proto::tls::Role::Master, target, &headers, T)
                .await
                .unwrap();
            let body = opened.body.read_to_end(64 * 1024).await.unwrap_or_default();
            (opened.status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (code, _) = http("/state", None).await;
    assert_eq!(code, 200, "ops reads /state");
    let (code, body) = http("/state", Some(batch_token.clone())).await;
    said.push(body.clone());
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("operator read") && body.contains("batch"), "{body}");
    let (code, body) = http("/ui/api/view", Some(batch_token.clone())).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = http("/health", Some(batch_token.clone())).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http("/metrics", Some("corral_not-a-token".into())).await;
    said.push(body.clone());
    assert_eq!(code, 401, "{body}");
    // An agent's certificate reads nothing as a client.
    corral_proto::tls::set_client(Some(ClientTls::load(&agent, "corral").unwrap()));
    let (code, body) = http("/metrics", None).await;
    corral_proto::tls::set_client(Some(ClientTls::load(&ops, "corral").unwrap()));
    assert_eq!(code, 403, "{body}");

    // alice's framework: another principal with teardown = own may not take it over
    // (subscribe as it) or tear it down; ops (teardown = any) may.
    let info = v1::FrameworkInfo {
        name: "alice's".into(),
        role: "alice".into(),
        user: "nobody".into(),
        failover_timeout_seconds: 60.0,
        ..Default::default()
    };
    let (alice_fw, _events) = subscribe_as(&addr, &ca, &alice, None, info.clone()).await.unwrap();
    let stolen = v1::FrameworkInfo {
        framework_id: alice_fw.clone(),
        role: "batch".into(),
        ..info.clone()
    };
    let refused = subscribe_as(&addr, &ca, &ops, Some(&batch_token), stolen)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("teardown") && refused.message().contains("batch"),
        "{refused:?}"
    );
    let out = corral_as(
        &masters,
        &ops,
        Some(&batch_token),
        &["frameworks", "teardown", &alice_fw],
    );
    said.push(text(&out));
    assert!(
        !out.status.success() && text(&out).contains("teardown"),
        "{}",
        text(&out)
    );
    let out = corral_as(&masters, &ops, None, &["frameworks", "teardown", &alice_fw]);
    assert!(out.status.success(), "{}", text(&out));
    let torn = subscribe_as(
        &addr,
        &ca,
        &alice,
        None,
        v1::FrameworkInfo {
            framework_id: alice_fw.clone(),
            ..info
        },
    )
    .await
    .unwrap_err();
    assert_eq!(torn.code(), tonic::Code::FailedPrecondition, "{torn:?}");

    // No token, key or secret in any log line or error message.
    let mut logs = said.join("\n");
    logs.push_str(&cluster.masters[&1].log_text());
    logs.push_str(&cluster.agents["a1"].log_text());
    assert!(!logs.is_empty());
    let hex = batch_token.trim_start_matches("corral_");
    assert!(!logs.contains(hex), "the token appears in a log or message");
    for name in ["m1", "a1", "ops", "alice", "ca"] {
        let key = std::fs::read_to_string(dir.join(format!("{name}-key.pem"))).unwrap();
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            !logs.contains(&body[..40]),
            "{name}'s private key appears in a log or message"
        );
    }
}

/// A certificate of our own CA that has expired is refused like a stranger's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_an_expired_certificate_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_pki(dir, &[("master", "m1"), ("client", "ops")]);
    // An expired client certificate, signed by the cluster's CA.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client.corral.corral".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "old");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("old.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("old-key.pem"), key.serialize_pem()).unwrap();

    let flags = tls_flags(&files(dir, "m1"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(1, &flags);
    // After the cluster's turn is ours: the client identity is process-wide.
    corral_proto::tls::set_client(Some(ClientTls::load(&files(dir, "ops"), "corral").unwrap()));
    cluster.wait_leader(&[1], T).await;
    let addr = cluster.address(1).to_string();
    let old = channel_as(&addr, &dir.join("ca.pem"), &files(dir, "old"));
    let answer = v1::operator_client::OperatorClient::new(old)
        .status(v1::StatusRequest {})
        .await;
    assert!(answer.is_err(), "an expired certificate was answered: {answer:?}");
    // The same call with a valid certificate is answered.
    let ok = channel_as(&addr, &dir.join("ca.pem"), &files(dir, "ops"));
    v1::operator_client::OperatorClient::new(ok)
        .status(v1::StatusRequest {})
        .await
        .expect("a valid certificate is answered");
}

/// The certificate the server at `addr` (of `role`) presents, DER.
async fn presented(addr: &str, role: corral_proto::tls::Role) -> Vec<u8> {
    let tls = corral_proto::tls::client().expect("client TLS set");
    let (config, name) = tls.rustls(role);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    corral_proto::tls::parse_certs(&std::fs::read(path).unwrap()).unwrap()[0]
        .as_ref()
        .to_vec()
}

/// New certificates copied over the old files are taken on SIGHUP, by masters and agents,
/// without a restart: a running task keeps running, new connections get the new
/// certificates, and new tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_rotated_certificates_are_taken_on_sighup_and_tasks_keep_running() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    let names = [
        ("master", "m1"),
        ("master", "m2"),
        ("master", "m3"),
        ("agent", "a1"),
        ("client", "ops"),
    ];
    make_pki(dir, &names);
    let flags = tls_flags(&files(dir, "m{id}"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, &flags);
    // After the cluster's turn is ours: the client identity is process-wide.
    corral_proto::tls::set_client(Some(ClientTls::load(&files(dir, "ops"), "corral").unwrap()));
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    let f = tls_flags(&files(dir, "a1"));
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    cluster.start_agent_with("a1", "cpus:2;mem:1024", "", &f);
    let agents = cluster.wait_agents(1, T).await;
    let agent_addr = agents[0].address.clone();

    let mut fw = cluster.framework("long", "*").await;
    let offers = fw.next_offers(T).await;
    let task = corral_tests::Framework::task("sleeper", &offers[0].agent_id, 0.1, 32.0, &["sleep", "120"]);
    fw.accept(vec![offers[0].offer_id.clone()], vec![task], 0.0)
        .await
        .unwrap();
    fw.wait_state("sleeper", v1::TaskState::TaskRunning, T).await;
    // It wants nothing more: the agent's other resources go to the runs below.
    let header = fw.header.clone();
    fw.call(|mut c| {
        let header = Some(header.clone());
        async move { c.suppress(v1::SuppressRequest { header }).await }
    })
    .await
    .unwrap();
    let held: Vec<String> = fw
        .watch(Duration::from_millis(300))
        .await
        .into_iter()
        .map(|o| o.offer_id)
        .collect();
    if !held.is_empty() {
        fw.decline(held, 3600.0).await.unwrap();
    }
    let before_master = presented(cluster.address(leader), corral_proto::tls::Role::Master).await;
    let _before_agent = presented(&agent_addr, corral_proto::tls::Role::Agent).await;

    // New keys and certificates from the same CA, copied over the files in use.
    let fresh = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dir.join(f), fresh.path().join(f)).unwrap();
    }
    let fd = fresh.path().to_str().unwrap();
    for (role, name) in names {
        corral(&["tls", "cert", "create", "--dir", fd, "--role", role, "--name", name]);
        for file in [format!("{name}.pem"), format!("{name}-key.pem")] {
            std::fs::copy(fresh.path().join(&file), dir.join(&file)).unwrap();
        }
    }
    let new_master = pem_der(&dir.join(format!("m{leader}.pem")));
    let new_agent = pem_der(&dir.join("a1.pem"));
    assert_ne!(new_master, before_master);
    let pids: Vec<u32> = cluster
        .masters
        .values()
        .filter_map(|m| m.pid())
        .chain(cluster.agents["a1"].pid())
        .collect();
    for pid in pids {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }
    corral_tests::wait_for(
        T,
        "the leader and the agent to present their new certificates",
        || async {
            (presented(cluster.address(leader), corral_proto::tls::Role::Master).await == new_master
                && presented(&agent_addr, corral_proto::tls::Role::Agent).await == new_agent)
                .then_some(())
        },
    )
    .await;

    // The task kept running; the cluster still runs new tasks and reads their output (an
    // HTTP call to the agent, over its new certificate).
    let tasks = cluster.tasks().await.unwrap();
    let sleeper = tasks.iter().find(|t| t.task_id == "sleeper").expect("the task");
    assert_eq!(sleeper.state, v1::TaskState::TaskRunning as i32, "{sleeper:?}");
    let out = corral_as(
        &cluster.masters_arg(),
        &files(dir, "ops"),
        None,
        &["run", "--", "echo", "after-rotation"],
    );
    assert!(
        out.status.success() && text(&out).contains("after-rotation"),
        "{}",
        text(&out)
    );
    let out = corral_as(
        &cluster.masters_arg(),
        &files(dir, "ops"),
        None,
        &["logs", "--framework", &fw.id, "sleeper"],
    );
    assert!(out.status.success(), "corral logs over TLS: {}", text(&out));
    cluster.wait_converged(&[1, 2, 3], 1, T).await;
}

/// The Mesos HTTP APIs through a follower act as the caller, not as the relaying master:
/// the follower names the client's certificate to the leader, which checks the ACL for it
/// (a master's own certificate may do everything; a client's claim to be relayed is not
/// believed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_the_mesos_apis_through_a_follower_act_as_the_caller() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_pki(
        dir,
        &[
            ("master", "m1"),
            ("master", "m2"),
            ("master", "m3"),
            ("client", "ops"),
            ("client", "alice"),
        ],
    );
    let acl = dir.join("acl.toml");
    std::fs::write(
        &acl,
        "[principals.ops]\noperator = \"write\"\nteardown = \"any\"\nregister_roles = [\"*\"]\nrun_as_users = [\"*\"]\n\n\
         [principals.alice]\noperator = \"read\"\nregister_roles = [\"alice\"]\nrun_as_users = [\"nobody\"]\n",
    )
    .unwrap();
    let mut flags = tls_flags(&files(dir, "m{id}"));
    flags.extend(["--acl-file".to_string(), acl.to_str().unwrap().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(3, &flags);
    let (ops, alice) = (files(dir, "ops"), files(dir, "alice"));
    corral_proto::tls::set_client(Some(ClientTls::load(&ops, "corral").unwrap()));
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let addr = cluster.address(follower).to_string();
    let post = |path: &'static str, body: String, extra: Option<(&'static str, &'static str)>| {
        let addr = addr.clone();
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(extra);
            let opened = corral_proto::http::request(
                &addr,
                corral_proto::tls::Role::Master,
                "POST",
                path,
                &headers,
                body.as_bytes(),
                T,
            )
            .await
            .unwrap();
            let status = opened.status;
            let text = opened.body.read_to_end(64 * 1024).await.unwrap_or_default();
            (status, String::from_utf8_lossy(&text).into_owned())
        }
    };
    let weights = r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"r","weight":2.0}]}}"#;
    let prod = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"nobody","name":"p","role":"prod"}}}"#;

    // alice reads, but may not write weights nor register role prod, through the follower.
    corral_proto::tls::set_client(Some(ClientTls::load(&alice, "corral").unwrap()));
    let (code, body) = post("/api/v1", r#"{"type":"GET_STATE"}"#.into(), None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = post("/api/v1", weights.into(), None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("operator write") && body.contains("alice"), "{body}");
    let (code, body) = post("/api/v1/scheduler", prod.into(), None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("register_roles") && body.contains("alice"), "{body}");
    // Claiming to be relayed for ops is not believed from a client certificate.
    let (code, body) = post("/api/v1", weights.into(), Some(("x-corral-on-behalf-of", "ops"))).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("alice"), "{body}");

    // ops may.
    corral_proto::tls::set_client(Some(ClientTls::load(&ops, "corral").unwrap()));
    let (code, body) = post("/api/v1", weights.into(), None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = post("/api/v1", r#"{"type":"GET_WEIGHTS"}"#.into(), None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"role\":\"r\""), "{body}");
}

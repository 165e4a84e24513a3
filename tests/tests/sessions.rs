//! How a session's end is timed: a framework (or agent) whose session ends gets its whole
//! timeout from that moment, however the leader noticed the end.

use std::time::{Duration, Instant};

use corral_proto::v1;
use corral_tests::sim::Fleet;
use corral_tests::{wait_for, Cluster, Framework};

const FAILOVER: Duration = Duration::from_secs(5);

async fn framework_state(cluster: &Cluster, id: &str) -> Option<v1::FrameworkState> {
    let all: Vec<v1::FrameworkSummary> = corral_proto::client::list_all(
        &cluster.client(),
        Duration::from_secs(5),
        v1::ListFrameworksRequest::default(),
    )
    .await
    .ok()?;
    all.into_iter()
        .find(|f| f.framework_id == id)
        .and_then(|f| v1::FrameworkState::try_from(f.state).ok())
}

/// Issue 17's session-end bug, end to end: a framework that stops reading its stream is
/// dropped when the stream fills, in a term older than its failover timeout. It must be
/// torn down a whole failover timeout after that, not at the next timer tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_p1_a_framework_dropped_for_a_full_stream_keeps_its_failover_timeout() {
    // Offers that time out after 50 ms are rescinded and made again: a steady flow of
    // events to a framework that does not read them.
    let cluster = Cluster::start_with(1, &["--offer-timeout", "50ms", "--allocation-interval", "10ms"]);
    cluster.wait_leader(&[1], Duration::from_secs(15)).await;
    let term_began = Instant::now();
    let masters: Vec<String> = cluster.masters_arg().split(',').map(str::to_string).collect();
    let fleet = Fleet::start(&masters, 300, "cpus:8;mem:16384", true);
    cluster.wait_agents(300, Duration::from_secs(60)).await;
    // The bug needs a term older than the failover timeout when the stream breaks: time
    // itself is the condition here.
    tokio::time::sleep_until((term_began + FAILOVER + Duration::from_secs(1)).into()).await;

    let fw = Framework::subscribe(
        cluster.client(),
        v1::FrameworkInfo {
            name: "never-reads".into(),
            failover_timeout_seconds: FAILOVER.as_secs_f64(),
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    // Not pumped from here on: its events pile up until the master drops the session.
    let subscribed = Instant::now();
    let dropped = loop {
        let log = cluster.log_tail(1, 1_000_000);
        if log.contains("framework stream full or closed; dropping the subscription") {
            break Instant::now();
        }
        assert!(
            subscribed.elapsed() < Duration::from_secs(180),
            "the master did not drop the full stream in 180 s; its log ends:\n{}",
            cluster.log_tail(1, 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("the stream filled in {:?}", dropped - subscribed);
    // Found by polling the log: the drop happened at most a poll earlier.
    let dropped_at_latest = dropped;
    eprintln!("dropped {:?} into the term", dropped - term_began);
    assert!(
        dropped - term_began > FAILOVER,
        "the term is older than the failover timeout"
    );

    // Kept (disconnected, not torn down) until its failover timeout has passed.
    let keep_until = dropped_at_latest + FAILOVER - Duration::from_secs(1);
    while Instant::now() < keep_until {
        let state = framework_state(&cluster, &fw.id).await;
        assert_ne!(
            state,
            Some(v1::FrameworkState::FrameworkTornDown),
            "torn down {:?} after its session ended, within its failover timeout of {FAILOVER:?}",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(Duration::from_secs(15), "the framework to be torn down", || async {
        (framework_state(&cluster, &fw.id).await == Some(v1::FrameworkState::FrameworkTornDown)).then_some(())
    })
    .await;
    eprintln!("torn down {:?} after its session ended", dropped.elapsed());
    fleet.stop().await;
}

async fn agent_state(cluster: &Cluster, id: &str) -> Option<v1::AgentState> {
    let all: Vec<v1::AgentSummary> = corral_proto::client::list_all(
        &cluster.client(),
        Duration::from_secs(5),
        v1::ListAgentsRequest::default(),
    )
    .await
    .ok()?;
    all.into_iter()
        .find(|a| a.agent_id == id)
        .and_then(|a| v1::AgentState::try_from(a.state).ok())
}

async fn channel_to(cluster: &Cluster) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.address(1)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the master")
}

const PING_TIMEOUT: Duration = Duration::from_secs(8);

/// The same for an agent: one that stops reading its stream (it still talks, so it never
/// misses a ping) is dropped when the stream fills, and is marked unreachable only a ping
/// timeout later, not at once (the re-registration timeout of the term's start has long
/// passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_p1_an_agent_dropped_for_a_full_stream_keeps_its_ping_timeout() {
    use corral_proto::v1::agents_client::AgentsClient;
    use tokio_stream::StreamExt;

    let ping = format!("{}s", PING_TIMEOUT.as_secs());
    let cluster = Cluster::start_with(1, &["--agent-ping-timeout", &ping, "--agent-reregister-timeout", "1s"]);
    cluster.wait_leader(&[1], Duration::from_secs(15)).await;
    let term_began = Instant::now();

    // A hand-made agent: it registers, reads its registration, then only writes.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let register = v1::AgentMessage {
        message: Some(v1::agent_message::Message::Register(v1::Register {
            info: Some(v1::AgentInfo {
                hostname: "deaf".into(),
                address: "127.0.0.1:1".into(),
                resources: vec![
                    v1::Resource {
                        name: "cpus".into(),
                        value: Some(v1::resource::Value::Scalar(4.0)),
                    },
                    v1::Resource {
                        name: "mem".into(),
                        value: Some(v1::resource::Value::Scalar(4096.0)),
                    },
                ],
                version: "test".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    tx.send(register).await.expect("queue the registration");
    let mut inbound = AgentsClient::new(channel_to(&cluster).await)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    let agent_id = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .expect("an answer to the registration")
            .expect("the stream is open")
            .expect("registered");
        if let Some(v1::master_message::Message::Registered(r)) = msg.message {
            break r.agent_id;
        }
    };
    // It keeps talking (so it never misses a ping) from here on, and never reads again.
    let talker = tokio::spawn(async move {
        loop {
            let pong = v1::AgentMessage {
                message: Some(v1::agent_message::Message::Pong(v1::Pong { nonce: 0 })),
            };
            if tx.send(pong).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // A task that stays STAGING on it (the agent never answers), then kills of it: each
    // one is a message to the agent, until its stream is full.
    let mut fw = cluster.framework("killer", "*").await;
    let offer = fw.next_offers(Duration::from_secs(20)).await.remove(0);
    assert_eq!(offer.agent_id, agent_id);
    let task = Framework::task("stuck", &agent_id, 0.1, 16.0, &["true"]);
    fw.accept(vec![offer.offer_id], vec![task], 0.0).await.expect("launch");
    let header = fw.header.clone();
    let scheduler = corral_proto::v1::scheduler_client::SchedulerClient::new(channel_to(&cluster).await);
    let full = "agent stream full or closed; dropping the connection";
    let mut sent = 0;
    while !cluster.log_tail(1, 1_000_000).contains(full) {
        assert!(sent < 1_000_000, "the agent's stream never filled after {sent} kills");
        let mut kills = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let req = v1::KillRequest {
                header: Some(header.clone()),
                task_id: "stuck".into(),
                ..Default::default()
            };
            let mut c = scheduler.clone();
            kills.spawn(async move { c.kill(req).await.map(|_| ()) });
        }
        while let Some(r) = kills.join_next().await {
            r.expect("kill task").expect("kill");
        }
        sent += 64;
    }
    let dropped = Instant::now();
    eprintln!("dropped after {sent} kills, {:?} into the term", dropped - term_began);
    assert!(
        dropped - term_began > Duration::from_secs(2),
        "the term is older than the re-registration timeout"
    );

    let keep_until = dropped + PING_TIMEOUT - Duration::from_secs(2);
    while Instant::now() < keep_until {
        let state = agent_state(&cluster, &agent_id).await;
        assert_eq!(
            state,
            Some(v1::AgentState::AgentActive),
            "{:?} after its session ended, within its ping timeout of {PING_TIMEOUT:?}",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(
        Duration::from_secs(20),
        "the agent to be marked unreachable",
        || async { (agent_state(&cluster, &agent_id).await == Some(v1::AgentState::AgentUnreachable)).then_some(()) },
    )
    .await;
    eprintln!("unreachable {:?} after its session ended", dropped.elapsed());
    talker.abort();
}

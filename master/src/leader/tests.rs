use std::collections::HashSet;
use std::time::{Duration, Instant};

use corral_proto::resources::Resources;
use corral_proto::v1;
use tokio::sync::mpsc;

use super::*;
use crate::state::ClusterState;

fn state_with(framework_failover_s: f64) -> ClusterState {
    let mut state = ClusterState::default();
    let commands = [
        v1::command::Kind::RegisterAgent(v1::RegisterAgent {
            agent_id: "a1".into(),
            info: Some(v1::AgentInfo {
                hostname: "h1".into(),
                resources: vec![v1::Resource {
                    name: "cpus".into(),
                    value: Some(v1::resource::Value::Scalar(4.0)),
                }],
                ..Default::default()
            }),
        }),
        v1::command::Kind::RegisterFramework(v1::RegisterFramework {
            framework_id: "f1".into(),
            info: Some(v1::FrameworkInfo {
                name: "fw".into(),
                failover_timeout_seconds: framework_failover_s,
                ..Default::default()
            }),
        }),
    ];
    for kind in commands {
        let c = v1::Command {
            timestamp_ms: 1,
            kind: Some(kind),
        };
        assert_eq!(state.apply_command(&c), crate::raft::types::Outcome::Applied);
    }
    state
}

fn config() -> crate::config::Config {
    use clap::Parser;
    crate::config::MasterArgs::try_parse_from([
        "corral-master",
        "--id",
        "1",
        "--data-dir",
        "/nonexistent",
        "--agent-ping-timeout",
        "2s",
        "--agent-reregister-timeout",
        "1s",
    ])
    .expect("flags parse")
    .validate()
    .expect("flags are valid")
}

/// Issue 17's session-end bug: a session dropped because its stream was full or closed
/// recorded no end, so the timeout counted from the start of the term and fired at
/// once in a term older than the timeout. No runtime needed: channels and clocks only.
#[test]
fn a_session_ended_by_a_failed_send_counts_its_timeout_from_then() {
    let state = state_with(4.0);
    let config = config();
    let mut soft = Soft::new(3);
    let now = Instant::now();
    // The term began 10 s ago: more than either timeout (the clock is monotonic since
    // boot, so not much further back).
    soft.since = now.checked_sub(Duration::from_secs(10)).expect("10 s after boot");

    let (session, events, _gone) = FrameworkSession::new("stream-1".into());
    soft.frameworks.insert("f1".into(), session);
    let (tx, rx) = mpsc::channel(4);
    soft.add_agent(
        "a1",
        AgentSession {
            session: 1,
            tx,
            resources: Resources::new(),
        },
    );
    assert!(
        due_timeouts(&state, &mut soft, &config, now).is_empty(),
        "both attached"
    );

    // Both streams close; the next message to each fails to queue and ends the session.
    drop(events);
    drop(rx);
    let heartbeat = event(v1::event::Event::Heartbeat(v1::Heartbeat {}));
    assert!(!soft.send_framework("f1", heartbeat));
    assert!(!soft.send_agent("a1", v1::master_message::Message::Ping(v1::Ping { nonce: 1 })));
    assert!(soft.frameworks.is_empty() && soft.agents.is_empty());
    let ended = Instant::now();

    let due = |soft: &mut Soft, at: Instant| -> Vec<String> {
        let mut due: Vec<String> = due_timeouts(&state, soft, &config, at)
            .into_iter()
            .map(|t| match t {
                Timeout::AgentUnreachable(id) => format!("agent/{id}"),
                Timeout::FrameworkFailover(id) => format!("framework/{id}"),
            })
            .collect();
        soft.firing.clear();
        due.sort();
        due
    };
    assert!(due(&mut soft, ended).is_empty(), "nothing is due when the sessions end");
    assert!(
        due(&mut soft, ended + Duration::from_millis(1500)).is_empty(),
        "the agent has its ping timeout (2 s) from the end of its session"
    );
    assert_eq!(due(&mut soft, ended + Duration::from_millis(2500)), ["agent/a1"]);
    assert_eq!(
        due(&mut soft, ended + Duration::from_millis(3500)),
        ["agent/a1"],
        "the framework has its failover timeout (4 s) from the end of its session"
    );
    assert_eq!(
        due(&mut soft, ended + Duration::from_millis(4500)),
        ["agent/a1", "framework/f1"]
    );
}

#[test]
fn offer_ids_carry_the_term() {
    let mut s = Soft::new(7);
    let id = s.new_offer_id();
    assert_eq!(Soft::offer_term(&id), Some(7));
    assert_eq!(Soft::offer_term("garbage"), None);
    assert_eq!(Soft::offer_term("O-1"), None);
}

#[test]
fn touched_agents_are_drawn_once_each_in_varying_order() {
    let mut t = Touched::default();
    for id in ["a", "b", "c", "b", "d", "a"] {
        t.insert(id);
    }
    assert_eq!(t.len(), 4);
    assert!(t.contains("c"));
    let mut rng = rand::rng();
    let mut drawn = Vec::new();
    while let Some(id) = t.draw(&mut rng) {
        assert!(!t.contains(&id), "{id} drawn but still a member");
        drawn.push(id);
    }
    assert!(t.is_empty());
    drawn.sort();
    assert_eq!(drawn, ["a", "b", "c", "d"]);
    // Touched again after being drawn: a member again.
    t.insert("b");
    assert!(t.contains("b"));

    // Every agent comes first sometimes: the order is random, not insertion order.
    let mut first = HashSet::new();
    for _ in 0..200 {
        let mut t = Touched::default();
        for id in ["a", "b", "c", "d"] {
            t.insert(id);
        }
        first.extend(t.draw(&mut rng));
    }
    assert_eq!(first.len(), 4, "first drawn: {first:?}");
}

#[test]
fn the_launch_limit_follows_the_commit_latency() {
    let t0 = Instant::now();
    let mut l = Launches::default();
    let start = l.limit();
    // Room for the limit's worth of tasks, in offers of the average accept's size.
    l.start("f", ["a", "b", "c", "d"].into_iter(), t0);
    assert_eq!(l.len(), 4);
    assert_eq!(l.agents_to_offer(), (start - 4) / 4);
    // Fast commits, but the limit held nothing back: it stays.
    let fast = LAUNCH_COMMIT_TARGET / 4;
    for _ in 0..LIMIT_WINDOW_SAMPLES {
        l.committed(fast);
    }
    l.adapt(t0 + LIMIT_WINDOW);
    assert_eq!(l.limit(), start);
    // Fast commits while the limit held offers back: it grows.
    let ids: Vec<String> = (0..start).map(|i| format!("t{i}")).collect();
    l.start("f", ids.iter().map(String::as_str), t0);
    assert_eq!(l.agents_to_offer(), 0, "the limit is reached");
    for _ in 0..LIMIT_WINDOW_SAMPLES {
        l.committed(fast);
    }
    l.adapt(t0 + LIMIT_WINDOW * 2);
    let grown = l.limit();
    assert!(grown > start, "{grown} > {start}");
    // Too few samples or too soon: nothing changes.
    l.committed(LAUNCH_COMMIT_TARGET * 10);
    l.adapt(t0 + LIMIT_WINDOW * 3);
    assert_eq!(l.limit(), grown);
    // Slow commits (the 90th percentile over the target): it shrinks, down to the floor.
    for round in 4..40 {
        for _ in 0..LIMIT_WINDOW_SAMPLES {
            l.committed(LAUNCH_COMMIT_TARGET * 2);
        }
        l.adapt(t0 + LIMIT_WINDOW * round);
    }
    assert_eq!(l.limit(), MIN_LAUNCHES_IN_FLIGHT);
    // A launch reported on, or never committed, leaves; a stale one expires.
    l.done("f", "a");
    assert_eq!(l.len(), start + 3);
    l.expire(t0 + LAUNCH_TTL);
    assert!(l.is_empty(), "launches older than the TTL do not hold the limit");
}

fn heartbeat() -> v1::Event {
    event(v1::event::Event::Heartbeat(v1::Heartbeat {}))
}

fn update(task: &str) -> v1::Event {
    event(v1::event::Event::Update(v1::Update {
        status: Some(v1::TaskStatus {
            task_id: task.into(),
            ..Default::default()
        }),
    }))
}

/// Live events go first and never wait behind resent updates; resent updates are sent
/// as the framework reads (the resender waits for room instead of overflowing the
/// stream); the stream ends with the live channel; dropping it tells the watcher.
#[tokio::test]
async fn a_subscription_streams_live_events_first_and_resends_at_the_readers_pace() {
    use tokio_stream::StreamExt;
    let (session, mut events, mut gone) = FrameworkSession::new("s".into());
    // A resender with more to send than the channel holds.
    let resend_tx = session.resend_tx.clone();
    let resender = tokio::spawn(async move {
        for i in 0..RESEND_CAPACITY * 3 {
            if resend_tx.send(update(&format!("t{i}"))).await.is_err() {
                return i;
            }
        }
        RESEND_CAPACITY * 3
    });
    while session.resend_tx.capacity() > 0 {
        tokio::task::yield_now().await;
    }
    assert!(!resender.is_finished(), "the resender waits for the reader");
    session.tx.try_send(Ok(heartbeat())).unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first, heartbeat(), "a live event overtakes queued resends");
    let mut resent = 0;
    while resent < RESEND_CAPACITY * 3 {
        let ev = events.next().await.unwrap().unwrap();
        assert_eq!(ev, update(&format!("t{resent}")), "resent in order");
        resent += 1;
    }
    assert_eq!(resender.await.unwrap(), RESEND_CAPACITY * 3);
    assert!(gone.try_recv().is_err(), "the framework is still reading");
    // Leadership lost (the session dropped): the stream ends, queued resends or not.
    session.resend_tx.try_send(update("late")).unwrap();
    drop(session);
    assert!(events.next().await.is_none());
    drop(events);
    assert!(gone.await.is_err(), "dropping the stream tells the watcher");
}

#[test]
fn a_large_offer_pass_is_split_into_bounded_events() {
    use prost::Message;
    let offers: Vec<v1::Offer> = (0..20_000)
        .map(|i| v1::Offer {
            offer_id: format!("O-3-{i}"),
            framework_id: "fw-0123456789abcdef".into(),
            agent_id: format!("agent-{i:08}-0123456789abcdef"),
            hostname: format!("host-{i}.rack-{}.example.internal", i % 40),
            leader_term: 3,
            ..Default::default()
        })
        .collect();
    let events = offer_events(offers.clone());
    assert!(events.len() > 1, "20,000 offers should not fit one event");
    for e in &events {
        let size = v1::Offers { offers: e.clone() }.encoded_len();
        assert!(size <= OFFER_EVENT_BYTES, "event of {size} bytes");
    }
    let flattened: Vec<v1::Offer> = events.into_iter().flatten().collect();
    assert_eq!(flattened, offers, "every offer is sent once, in order");
    assert!(offer_events(Vec::new()).is_empty());
}

//! mesos: the Mesos v1 Scheduler HTTP API on real masters. A scheduler written with
//! pymesos's `MesosSchedulerDriver` (used unchanged; `tests/python/pymesos_scheduler.py`)
//! pointed at a follower tours the API and survives three leader kills; a Rust client
//! speaks `application/x-protobuf`; bad input gets the right status and a message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::mesos::media;
use corral_proto::mesos::recordio;
use corral_proto::mesos::v1 as m;
use corral_proto::mesos::v1::master as mm;
use corral_proto::mesos::v1::scheduler as ms;
use corral_proto::tls::Role;
use corral_tests::{path_str, wait_for, Cluster};
use prost::Message;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const PATH: &str = "/api/v1/scheduler";

/// The pymesos scheduler script, killed when dropped.
struct Script {
    child: Child,
    work: tempfile::TempDir,
}

impl Script {
    fn start(master: &str, mode: &str) -> Script {
        let python = corral_tests::pymesos_python();
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
        let work = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(work.path().join("stderr.log")).expect("script log");
        let child = Command::new(&python)
            .arg(here.join("pymesos_scheduler.py"))
            .args([master, path_str(work.path()), mode])
            .arg(&python)
            .arg(here.join("pymesos_executor.py"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the pymesos scheduler");
        Script { child, work }
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.work.path().join("events.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["kind"] == kind).collect()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Everything it wrote, for a failure message.
    fn say(&self) -> String {
        let stderr = std::fs::read_to_string(self.file("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let events = std::fs::read_to_string(self.file("events.log")).unwrap_or_default();
        format!(
            "events:\n{events}\nstderr (last 40 lines, newest first):\n{}",
            tail.join("\n")
        )
    }

    /// Wait for an event of `kind`, failing early if the script ended otherwise.
    async fn wait_event(&mut self, deadline: Duration, kind: &str) -> Value {
        let what = format!("the pymesos scheduler's {kind:?} event");
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(e) = self.of_kind(kind).pop() {
                return e;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the pymesos scheduler exited ({status}) before {what}\n{}", self.say());
            }
            assert!(Instant::now() < give_up, "timed out waiting for {what}\n{}", self.say());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let give_up = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < give_up,
                "the pymesos scheduler did not exit\n{}",
                self.say()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pymesos scheduler ----\n{}", self.say());
        }
    }
}

/// The last state each task reached, from the script's update events (reconciliation
/// answers included).
fn last_states(events: &[Value]) -> BTreeMap<String, String> {
    let mut states = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "update") {
        states.insert(
            e["task_id"].as_str().unwrap_or_default().to_string(),
            e["state"].as_str().unwrap_or_default().to_string(),
        );
    }
    states
}

fn updates<'a>(events: &'a [Value], task: &str, state: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "update" && e["task_id"] == task && e["state"] == state)
        .collect()
}

/// The leader's `/state` tasks of `framework_id`.
async fn state_tasks(cluster: &Cluster, leader: u64, framework_id: &str) -> Option<Vec<Value>> {
    let (200, body) = cluster.http_get(leader, "/state?tasks_limit=5000").await? else {
        return None;
    };
    let state: Value = serde_json::from_str(&body).ok()?;
    Some(
        state["tasks"]
            .as_array()?
            .iter()
            .filter(|t| t["framework_id"] == framework_id)
            .cloned()
            .collect(),
    )
}

/// A framework's state in the leader's `/state`.
async fn framework_state(cluster: &Cluster, leader: u64, framework_id: &str) -> Option<String> {
    let (200, body) = cluster.http_get(leader, "/state").await? else {
        return None;
    };
    let state: Value = serde_json::from_str(&body).ok()?;
    state["frameworks"]
        .as_array()?
        .iter()
        .find(|f| f["framework_id"] == framework_id)
        .and_then(|f| f["state"].as_str().map(str::to_string))
}

fn followers(leader: u64) -> Vec<u64> {
    [1, 2, 3].into_iter().filter(|id| *id != leader).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_scheduler_p1_a_pymesos_scheduler_on_a_follower_runs_tasks_executors_kills_and_messages() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("a1", "cpus:4;mem:2048", "");
    cluster.wait_agents(1, T).await;
    let follower = followers(leader)[0];
    let mut script = Script::start(cluster.address(follower), "tour");
    let registered = script.wait_event(T, "registered").await;
    let framework_id = registered["framework_id"].as_str().unwrap().to_string();
    assert!(framework_id.starts_with("fw-"), "{registered}");
    script.wait_event(Duration::from_secs(60), "done").await;
    let events = script.events();
    // Command tasks: one finished, one killed once running; the executor's task finished by
    // the executor; the reconciliation answered.
    assert!(
        !updates(&events, "cmd-1", "TASK_FINISHED").is_empty(),
        "{}",
        script.say()
    );
    assert!(
        !updates(&events, "sleep-1", "TASK_RUNNING").is_empty(),
        "{}",
        script.say()
    );
    assert!(
        !updates(&events, "sleep-1", "TASK_KILLED").is_empty(),
        "{}",
        script.say()
    );
    let exe = updates(&events, "exe-1", "TASK_FINISHED");
    assert!(
        exe.iter().any(|e| e["source"] == "SOURCE_EXECUTOR"),
        "exe-1 finished by its executor: {exe:?}"
    );
    let reconciled = script.of_kind("reconciled");
    assert!(
        reconciled
            .iter()
            .any(|e| e["task_id"] == "cmd-1" && e["state"] == "TASK_FINISHED"),
        "{reconciled:?}"
    );
    // Updates that need an acknowledgement carry a uuid; a reconciliation answer none.
    assert!(updates(&events, "cmd-1", "TASK_FINISHED")
        .iter()
        .any(|e| e["uuid"].is_string() && e["reason"] != "REASON_RECONCILIATION"));
    assert!(events
        .iter()
        .filter(|e| e["kind"] == "update" && e["reason"] == "REASON_RECONCILIATION")
        .all(|e| e["uuid"].is_null()));
    let messages: Vec<String> = script
        .of_kind("message")
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    for text in ["launched:exe-1", "echo:hello"] {
        assert!(messages.iter().any(|m| m == text), "{text:?} not among {messages:?}");
    }
    // pymesos's operator driver read the cluster through the same follower.
    let operator = script.wait_event(T, "operator").await;
    assert_eq!(operator["healthy"], true, "{operator}");
    assert_eq!(operator["version"], "1.11.0", "{operator}");
    assert!(
        operator["frameworks"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == framework_id.as_str())),
        "{operator}"
    );
    for task in ["cmd-1", "sleep-1", "exe-1"] {
        assert!(
            operator["completed_tasks"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == task)),
            "{task} not among the completed tasks: {operator}"
        );
    }
    assert_eq!(operator["agents"].as_array().map(Vec::len), Some(1), "{operator}");
    assert!(
        operator["roles"].as_array().is_some_and(|r| r.iter().any(|r| r == "*")),
        "{operator}"
    );
    // pymesos acknowledged every update: the master holds none unacknowledged.
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    wait_for(T, "every update of the pymesos framework acknowledged", || async {
        let tasks = state_tasks(&cluster, leader, &framework_id).await?;
        (tasks.len() == 3 && tasks.iter().all(|t| t["unacknowledged_updates"] == 0)).then_some(())
    })
    .await;
    // `corral frameworks` lists it beside gRPC frameworks.
    let out = cluster.cli(&["frameworks", "--json"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&framework_id) && listed.contains("pymesos-tour"),
        "{listed}"
    );
    // A second driver subscribes as the same framework, then tears it down.
    std::fs::write(script.file("continue"), b"").unwrap();
    let again = script.wait_event(T, "registered-again").await;
    assert_eq!(again["framework_id"], framework_id.as_str());
    let status = script.wait_exit(T).await;
    assert!(
        status.success(),
        "the pymesos scheduler failed: {status}\n{}",
        script.say()
    );
    assert_eq!(script.of_kind("registered").len(), 1);
    wait_for(T, "the framework torn down", || async {
        let state = framework_state(&cluster, leader, &framework_id).await?;
        (state == "FRAMEWORK_TORN_DOWN").then_some(())
    })
    .await;
    for id in [1, 2, 3] {
        let log = cluster.masters[&id].log_text();
        assert!(!log.contains("panicked"), "master {id} panicked:\n{log}");
    }
}

/// A cluster whose master [`PINNED`] waits much longer before it stands for election, so
/// that it stays a follower while 1 or 2 is up: a framework pinned to it keeps its master
/// through every kill of the leader. Returns the cluster and its leader.
async fn cluster_with_a_pinned_follower() -> (Cluster, u64) {
    let mut cluster = Cluster::start_with_own(3, &[], |id| {
        if id == PINNED {
            vec!["--election-timeout-ms".into(), "1000".into()]
        } else {
            Vec::new()
        }
    });
    let mut leader = cluster.wait_leader(&[1, 2, 3], T).await;
    if leader == PINNED {
        // Only when 1 and 2 were both too slow to start: let one of them lead.
        cluster.kill(PINNED);
        leader = cluster.wait_leader(&[1, 2], T).await;
        cluster.restart(PINNED);
        cluster.wait_converged(&[1, 2, 3], 0, T).await;
    }
    (cluster, leader)
}

/// The master the pinned tests' frameworks know.
const PINNED: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_scheduler_p1_a_pymesos_scheduler_pinned_to_a_follower_survives_three_leader_kills() {
    let (mut cluster, _) = cluster_with_a_pinned_follower().await;
    cluster.start_agent("a1", "cpus:4;mem:2048", "");
    cluster.wait_agents(1, T).await;
    let mut script = Script::start(cluster.address(PINNED), "failover");
    let registered = script.wait_event(T, "registered").await;
    let framework_id = registered["framework_id"].as_str().unwrap().to_string();
    let finished = |script: &Script, after: f64| {
        let events = script.events();
        let launched_after: BTreeSet<String> = events
            .iter()
            .filter(|e| e["kind"] == "launch" && e["at"].as_f64().unwrap_or(0.0) > after)
            .flat_map(|e| e["tasks"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        launched_after
            .iter()
            .filter(|t| !updates(&events, t, "TASK_FINISHED").is_empty())
            .count()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let mut since = 0.0;
    for round in 1..=3 {
        wait_for(
            T,
            &format!("round {round}: tasks finishing before the kill"),
            || async { (finished(&script, since) >= 2).then_some(()) },
        )
        .await;
        let leader = cluster.wait_leader(&[1, 2, 3], T).await;
        assert_ne!(leader, PINNED, "round {round}: the pinned master leads");
        since = now();
        cluster.kill(leader);
        eprintln!("round {round}: killed leader {leader}");
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        cluster.wait_leader(&others, T).await;
        wait_for(T, &format!("round {round}: the framework re-registered"), || async {
            (script.of_kind("reregistered").len() >= round).then_some(())
        })
        .await;
        wait_for(
            T,
            &format!("round {round}: new tasks finished after the kill"),
            || async { (finished(&script, since) >= 2).then_some(()) },
        )
        .await;
        cluster.restart(leader);
        cluster.wait_converged(&[1, 2, 3], 0, T).await;
    }
    std::fs::write(script.file("stop"), b"").unwrap();
    let status = script.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "the pymesos scheduler failed: {status}\n{}",
        script.say()
    );
    let events = script.events();
    // One framework throughout.
    assert_eq!(script.of_kind("registered").len(), 1, "{}", script.say());
    for e in script.of_kind("reregistered") {
        assert_eq!(e["framework_id"], framework_id.as_str(), "{e}");
    }
    // Every task launched finished, and ran exactly once (a task the master never launched
    // was launched again under the same id, and ran then).
    let launched: BTreeSet<String> = events
        .iter()
        .filter(|e| e["kind"] == "launch")
        .flat_map(|e| e["tasks"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    assert!(launched.len() >= 6, "{launched:?}");
    let states = last_states(&events);
    for t in &launched {
        assert_eq!(
            states.get(t).map(String::as_str),
            Some("TASK_FINISHED"),
            "task {t} did not finish\n{}",
            script.say()
        );
    }
    let runs = std::fs::read_to_string(script.file("runs.log")).unwrap_or_default();
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    for line in runs.lines() {
        *ran.entry(line.trim()).or_default() += 1;
    }
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    let ran: BTreeSet<String> = ran.keys().map(|s| s.to_string()).collect();
    assert_eq!(ran, launched, "the tasks that ran are the tasks launched");
}

/// POST a call to `address`'s scheduler API over HTTP/1.0 (an answer's body ends with the
/// connection): the status, the headers, and the body as it comes.
async fn post(address: &str, headers: &[(&str, &str)], body: &[u8]) -> corral_proto::http::Opened {
    corral_proto::http::request(address, Role::Master, "POST", PATH, headers, body, T)
        .await
        .unwrap_or_else(|e| panic!("POST {PATH} to {address}: {e}"))
}

/// POST and read the whole answer: status and text.
async fn call(address: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let answer = post(address, headers, body).await;
    let status = answer.status;
    let text = answer.body.read_to_end(1 << 20).await.unwrap_or_default();
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// A subscription's events, decoded from its RecordIO stream as they come.
struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<Option<ms::Event>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Events {
    fn read(body: corral_proto::http::Body, media: &'static str) -> Events {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            use tokio_stream::StreamExt;
            let mut body = body;
            let mut records = recordio::Reader::new(1 << 20);
            while let Some(Ok(chunk)) = body.next().await {
                records.feed(&chunk);
                while let Ok(Some(record)) = records.next_record() {
                    let ev = if media == media::PROTOBUF {
                        ms::Event::decode(record.as_slice()).expect("a protobuf event")
                    } else {
                        corral_proto::mesos::json::decode("mesos.v1.scheduler.Event", &record).expect("a JSON event")
                    };
                    let _ = tx.send(Some(ev));
                }
            }
            let _ = tx.send(None);
        });
        Events { rx, reader }
    }

    /// The next event that is not a heartbeat (None: the stream ended).
    async fn next(&mut self) -> Option<ms::Event> {
        loop {
            let ev = tokio::time::timeout(T, self.rx.recv())
                .await
                .expect("an event within the deadline")
                .flatten()?;
            if ev.r#type != Some(ms::event::Type::Heartbeat as i32) {
                return Some(ev);
            }
        }
    }

    /// Events until one for which `f` says Some.
    async fn until<R>(&mut self, what: &str, mut f: impl FnMut(&ms::Event) -> Option<R>) -> R {
        loop {
            let ev = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before {what}"));
            if let Some(r) = f(&ev) {
                return r;
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

fn subscribe_call(name: &str, framework_id: Option<&str>) -> ms::Call {
    ms::Call {
        framework_id: framework_id.map(|v| m::FrameworkId { value: v.into() }),
        r#type: Some(ms::call::Type::Subscribe as i32),
        subscribe: Some(ms::call::Subscribe {
            framework_info: m::FrameworkInfo {
                user: user(),
                name: name.into(),
                id: framework_id.map(|v| m::FrameworkId { value: v.into() }),
                failover_timeout: Some(30.0),
                ..Default::default()
            },
            suppressed_roles: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Subscribe over protobuf: the stream id and the events.
async fn subscribe_protobuf(address: &str, call: &ms::Call) -> (String, Events) {
    let headers = [("content-type", media::PROTOBUF), ("accept", media::PROTOBUF)];
    let answer = post(address, &headers, &call.encode_to_vec()).await;
    assert_eq!(answer.status, 200, "SUBSCRIBE answered {}", answer.status);
    assert_eq!(answer.header("content-type"), Some(media::PROTOBUF));
    let stream_id = answer.header("mesos-stream-id").expect("a Mesos-Stream-Id").to_string();
    (stream_id, Events::read(answer.body, media::PROTOBUF))
}

fn framework(id: &str) -> Option<m::FrameworkId> {
    Some(m::FrameworkId { value: id.into() })
}

/// An ACCEPT of `offer` launching one command task (`task_id`, 0.1 cpu) running `command`.
fn launch_call(fid: &str, offer: &m::Offer, task_id: &str, command: &str) -> ms::Call {
    let task = m::TaskInfo {
        name: task_id.into(),
        task_id: m::TaskId { value: task_id.into() },
        agent_id: offer.agent_id.clone(),
        resources: vec![m::Resource {
            name: "cpus".into(),
            r#type: m::value::Type::Scalar as i32,
            scalar: Some(m::value::Scalar { value: 0.1 }),
            ..Default::default()
        }],
        command: Some(m::CommandInfo {
            value: Some(command.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    ms::Call {
        framework_id: framework(fid),
        r#type: Some(ms::call::Type::Accept as i32),
        accept: Some(ms::call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![m::offer::Operation {
                r#type: Some(m::offer::operation::Type::Launch as i32),
                launch: Some(m::offer::operation::Launch { task_infos: vec![task] }),
            }],
            filters: None,
        }),
        ..Default::default()
    }
}

async fn protobuf_call(address: &str, stream_id: &str, call: &ms::Call) -> (u16, String) {
    let headers = [("content-type", media::PROTOBUF), ("mesos-stream-id", stream_id)];
    self::call(address, &headers, &call.encode_to_vec()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_scheduler_p1_a_protobuf_client_launches_acknowledges_and_tears_down() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("a1", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let address = cluster.address(followers(leader)[0]).to_string();
    let (stream_id, mut events) = subscribe_protobuf(&address, &subscribe_call("proto", None)).await;
    let subscribed = events.until("SUBSCRIBED", |e| e.subscribed.clone()).await;
    let fid = subscribed.framework_id.value.clone();
    assert!(subscribed.heartbeat_interval_seconds.unwrap_or(0.0) > 0.0);
    let info = subscribed.master_info.expect("master_info");
    assert_eq!(info.address.as_ref().and_then(|a| a.ip.as_deref()), Some("127.0.0.1"));
    assert_eq!(info.ip, u32::from_le_bytes([127, 0, 0, 1]));
    let offer = events
        .until("an offer", |e| {
            e.offers.as_ref().and_then(|o| o.offers.first().cloned())
        })
        .await;
    assert_eq!(offer.framework_id.value, fid);
    let accept = launch_call(&fid, &offer, "p-1", "exit 0");
    assert_eq!(protobuf_call(&address, &stream_id, &accept).await.0, 202);
    // Each update acknowledged as it comes, until FINISHED.
    loop {
        let status = events
            .until("an update of p-1", |e| e.update.as_ref().map(|u| u.status.clone()))
            .await;
        assert_eq!(status.task_id.value, "p-1");
        let uuid = status.uuid.clone().expect("an update to acknowledge carries a uuid");
        let ack = ms::Call {
            framework_id: framework(&fid),
            r#type: Some(ms::call::Type::Acknowledge as i32),
            acknowledge: Some(ms::call::Acknowledge {
                agent_id: status.agent_id.clone().expect("the update names its agent"),
                task_id: status.task_id.clone(),
                uuid,
            }),
            ..Default::default()
        };
        assert_eq!(protobuf_call(&address, &stream_id, &ack).await.0, 202);
        if status.state == m::TaskState::TaskFinished as i32 {
            break;
        }
    }
    // As in Mesos, an ACCEPT's outcome is its tasks': the same task id again is an error
    // (S2), a new one on the used offer is dropped; neither needs acknowledging.
    let (code, text) = protobuf_call(&address, &stream_id, &accept).await;
    assert_eq!(code, 202, "{text}");
    let reused = events
        .until("p-1 refused", |e| e.update.as_ref().map(|u| u.status.clone()))
        .await;
    assert_eq!(reused.state, m::TaskState::TaskError as i32, "{reused:?}");
    assert!(
        reused.message.as_deref().unwrap_or_default().contains("task_id"),
        "{reused:?}"
    );
    assert!(reused.uuid.is_none(), "{reused:?}");
    let mut stale = accept.clone();
    if let Some(launch) = stale.accept.as_mut().and_then(|a| a.operations[0].launch.as_mut()) {
        launch.task_infos[0].task_id.value = "p-2".into();
    }
    assert_eq!(protobuf_call(&address, &stream_id, &stale).await.0, 202);
    let dropped = events
        .until("p-2 dropped", |e| e.update.as_ref().map(|u| u.status.clone()))
        .await;
    assert_eq!(dropped.task_id.value, "p-2");
    assert_eq!(dropped.state, m::TaskState::TaskDropped as i32, "{dropped:?}");
    assert_eq!(dropped.reason, Some(m::task_status::Reason::InvalidOffers as i32));
    assert!(dropped.uuid.is_none(), "a dropped launch needs no acknowledgement");
    assert!(
        dropped.message.as_deref().unwrap_or_default().contains("offer"),
        "{dropped:?}"
    );
    wait_for(T, "the acknowledgements applied", || async {
        let tasks = state_tasks(&cluster, leader, &fid).await?;
        (tasks.len() == 1 && tasks[0]["unacknowledged_updates"] == 0).then_some(())
    })
    .await;
    // UPDATE_FRAMEWORK: a new name is taken, a new role refused (a framework's for life).
    let mut info = subscribe_call("proto-renamed", Some(&fid))
        .subscribe
        .unwrap()
        .framework_info;
    info.failover_timeout = Some(60.0);
    let update = |info: m::FrameworkInfo| ms::Call {
        framework_id: framework(&fid),
        r#type: Some(ms::call::Type::UpdateFramework as i32),
        update_framework: Some(ms::call::UpdateFramework {
            framework_info: info,
            suppressed_roles: Vec::new(),
        }),
        ..Default::default()
    };
    let (code, text) = protobuf_call(&address, &stream_id, &update(info.clone())).await;
    assert_eq!(code, 202, "{text}");
    wait_for(T, "the framework renamed", || async {
        let (_, body) = cluster.http_get(leader, "/state").await?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let f = v["frameworks"]
            .as_array()?
            .iter()
            .find(|f| f["framework_id"] == fid.as_str())?
            .clone();
        (f["name"] == "proto-renamed" && f["failover_timeout_seconds"] == 60.0).then_some(())
    })
    .await;
    let (code, text) = protobuf_call(
        &address,
        &stream_id,
        &update(m::FrameworkInfo {
            role: Some("other".into()),
            ..info
        }),
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("update_framework.framework_info.role"), "{text}");
    // SUPPRESS, then REVIVE: offers come again; SHUTDOWN of an executor that does not run is
    // dropped, as in Mesos.
    let plain = |kind: ms::call::Type| ms::Call {
        framework_id: framework(&fid),
        r#type: Some(kind as i32),
        ..Default::default()
    };
    assert_eq!(
        protobuf_call(&address, &stream_id, &plain(ms::call::Type::Suppress))
            .await
            .0,
        202
    );
    assert_eq!(
        protobuf_call(&address, &stream_id, &plain(ms::call::Type::Revive))
            .await
            .0,
        202
    );
    events
        .until("an offer (the framework is revived)", |e| e.offers.clone())
        .await;
    let shutdown = ms::Call {
        shutdown: Some(ms::call::Shutdown {
            executor_id: m::ExecutorId { value: "none".into() },
            agent_id: offer.agent_id.clone(),
        }),
        ..plain(ms::call::Type::Shutdown)
    };
    assert_eq!(protobuf_call(&address, &stream_id, &shutdown).await.0, 202);
    let teardown = plain(ms::call::Type::Teardown);
    assert_eq!(protobuf_call(&address, &stream_id, &teardown).await.0, 202);
    // The stream ends with the framework.
    while events.next().await.is_some() {}
    wait_for(T, "the framework torn down", || async {
        (framework_state(&cluster, leader, &fid).await? == "FRAMEWORK_TORN_DOWN").then_some(())
    })
    .await;
}

/// The leader's state hash and applied index, read when they are still.
async fn hash(cluster: &Cluster, leader: u64) -> String {
    let (_, body) = cluster.http_get(leader, "/state").await.expect("/state");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["state_hash"].as_str().unwrap_or_default().to_string()
}

/// A refused call: what it is, its headers and body, the status and a word of the message.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

fn json_call(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_scheduler_p2_bad_calls_get_the_right_status_and_a_message_and_change_nothing() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    let follower = cluster.address(followers(leader)[0]).to_string();
    let json = [("content-type", media::JSON)];
    let before = hash(&cluster, leader).await;
    let ten_mib = vec![b' '; 10 << 20];
    let subscribe = |extra: Value| {
        let mut call =
            serde_json::json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": user(), "name": "bad"}}});
        if let (Some(base), Some(more)) = (call["subscribe"]["framework_info"].as_object_mut(), extra.as_object()) {
            base.extend(more.clone());
        }
        json_call(call)
    };
    let cases: Vec<Case> = vec![
        ("no media type", vec![], b"{}".to_vec(), 415, "Content-Type"),
        (
            "text",
            vec![("content-type", "text/plain")],
            b"{}".to_vec(),
            415,
            "text/plain",
        ),
        (
            "malformed JSON",
            json.to_vec(),
            b"{not json".to_vec(),
            400,
            "malformed JSON",
        ),
        (
            "malformed protobuf",
            vec![("content-type", media::PROTOBUF)],
            vec![0xff, 0xff, 0xff],
            400,
            "malformed protobuf",
        ),
        (
            "unknown type",
            json.to_vec(),
            json_call(serde_json::json!({"type": "NOPE"})),
            400,
            "type",
        ),
        (
            "wrong JSON type",
            json.to_vec(),
            json_call(serde_json::json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": 5}})),
            400,
            "framework_info",
        ),
        (
            "subscribe missing",
            json.to_vec(),
            json_call(serde_json::json!({"type": "SUBSCRIBE"})),
            400,
            "subscribe: missing",
        ),
        (
            "no framework id",
            json.to_vec(),
            json_call(serde_json::json!({"type": "DECLINE", "decline": {"offer_ids": []}})),
            400,
            "framework_id: missing",
        ),
        (
            "accept missing",
            json.to_vec(),
            json_call(serde_json::json!({"type": "ACCEPT", "framework_id": {"value": "fw-1"}})),
            400,
            "accept: missing",
        ),
        (
            "no offers",
            json.to_vec(),
            json_call(
                serde_json::json!({"type": "ACCEPT", "framework_id": {"value": "fw-1"}, "accept": {"offer_ids": []}}),
            ),
            400,
            "accept.offer_ids",
        ),
        (
            "two roles",
            json.to_vec(),
            subscribe(serde_json::json!({"roles": ["a", "b"]})),
            400,
            "subscribe.framework_info.roles",
        ),
        (
            "empty name",
            json.to_vec(),
            subscribe(serde_json::json!({"name": ""})),
            400,
            "subscribe.framework_info.name",
        ),
        (
            "stream id on subscribe",
            vec![("content-type", media::JSON), ("mesos-stream-id", "x")],
            subscribe(serde_json::json!({})),
            400,
            "Mesos-Stream-Id",
        ),
        (
            "unknown framework",
            json.to_vec(),
            subscribe(serde_json::json!({"id": {"value": "fw-nope"}})),
            404,
            "fw-nope",
        ),
        (
            "call before SUBSCRIBE",
            vec![("content-type", media::JSON), ("mesos-stream-id", "s")],
            json_call(serde_json::json!({"type": "REVIVE", "framework_id": {"value": "fw-nope"}})),
            403,
            "not subscribed",
        ),
        ("10 MiB body", json.to_vec(), ten_mib, 413, "body"),
    ];
    for address in [follower.as_str(), cluster.address(leader)] {
        for (what, headers, body, code, needle) in &cases {
            let (got, text) = corral_tests::http_request_with(address, "POST", PATH, headers, body)
                .await
                .unwrap_or_else(|| panic!("{what} via {address}: no answer"));
            assert_eq!(got, *code, "{what} via {address}: {text}");
            assert!(
                text.contains(needle),
                "{what} via {address}: {text:?} does not name {needle:?}"
            );
        }
        let (got, _) = corral_tests::http_request(address, "GET", PATH, b"")
            .await
            .expect("an answer");
        assert_eq!(got, 405, "GET {PATH}");
    }
    assert_eq!(hash(&cluster, leader).await, before, "refused calls changed the state");

    // A subscribed framework: its calls need its current stream id.
    let sub = subscribe_call("twice", None);
    let (first_stream, mut first) = subscribe_protobuf(&follower, &sub).await;
    let fid = first
        .until("SUBSCRIBED", |e| e.subscribed.clone())
        .await
        .framework_id
        .value;
    let revive = ms::Call {
        framework_id: framework(&fid),
        r#type: Some(ms::call::Type::Revive as i32),
        ..Default::default()
    };
    assert_eq!(protobuf_call(&follower, &first_stream, &revive).await.0, 202);
    let (code, text) = protobuf_call(&follower, "not-the-stream", &revive).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("Mesos-Stream-Id"), "{text}");
    let (code, text) = call(&follower, &[("content-type", media::PROTOBUF)], &revive.encode_to_vec()).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("Mesos-Stream-Id: missing"), "{text}");
    // A second SUBSCRIBE of the same framework replaces the first: the first stream gets
    // an ERROR saying so and ends, and its stream id no longer works.
    let (second_stream, mut second) = subscribe_protobuf(&follower, &subscribe_call("twice", Some(&fid))).await;
    second.until("SUBSCRIBED again", |e| e.subscribed.clone()).await;
    let error = first.until("the first stream's ERROR", |e| e.error.clone()).await;
    assert!(error.message.contains("replaced"), "{error:?}");
    assert!(first.next().await.is_none(), "the replaced stream ends");
    let (code, _) = protobuf_call(&follower, &first_stream, &revive).await;
    assert_eq!(code, 403);
    assert_eq!(protobuf_call(&follower, &second_stream, &revive).await.0, 202);
    for id in [1, 2, 3] {
        let log = cluster.masters[&id].log_text();
        assert!(!log.contains("panicked"), "master {id} panicked:\n{log}");
    }
}

/// An operator call to `address`: the status and the decoded response (None for an empty
/// body or a refusal).
async fn operator(address: &str, media_type: &'static str, call: &mm::Call) -> (u16, Option<mm::Response>, String) {
    let body = if media_type == media::PROTOBUF {
        call.encode_to_vec()
    } else {
        corral_proto::mesos::json::encode("mesos.v1.master.Call", call).expect("a call encodes")
    };
    let headers = [("content-type", media_type), ("accept", media_type)];
    let answer = corral_proto::http::request(address, Role::Master, "POST", "/api/v1", &headers, &body, T)
        .await
        .unwrap_or_else(|e| panic!("POST /api/v1 to {address}: {e}"));
    let status = answer.status;
    let bytes = answer.body.read_to_end(64 << 20).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status != 200 || bytes.is_empty() {
        return (status, None, text);
    }
    let response = if media_type == media::PROTOBUF {
        mm::Response::decode(bytes.as_slice()).expect("a protobuf response")
    } else {
        corral_proto::mesos::json::decode("mesos.v1.master.Response", &bytes).expect("a JSON response")
    };
    (status, Some(response), text)
}

fn operator_call(kind: mm::call::Type) -> mm::Call {
    mm::Call {
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_operator_p1_state_weights_roles_and_teardown_through_a_follower() {
    use mm::call::Type as C;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    cluster.start_agent("a1", "cpus:4;mem:2048", "rack:r1");
    let agent = cluster.wait_agents(1, T).await.remove(0);
    let mut fw = cluster.framework("grpc-fw", "*").await;
    let offer = fw.next_offers(T).await.remove(0);
    fw.accept(
        vec![offer.offer_id.clone()],
        vec![corral_tests::Framework::task(
            "long",
            &offer.agent_id,
            0.5,
            64.0,
            &["sleep", "600"],
        )],
        0.0,
    )
    .await
    .expect("accept");
    fw.wait_state("long", corral_proto::v1::TaskState::TaskRunning, T).await;
    let follower = cluster.address(followers(leader)[0]).to_string();

    let (code, health, _) = operator(&follower, media::JSON, &operator_call(C::GetHealth)).await;
    assert_eq!(code, 200);
    assert_eq!(health.and_then(|r| r.get_health).map(|h| h.healthy), Some(true));
    let (_, version, _) = operator(&follower, media::PROTOBUF, &operator_call(C::GetVersion)).await;
    assert_eq!(
        version.and_then(|r| r.get_version).map(|v| v.version_info.version),
        Some("1.11.0".to_string())
    );

    // GET_STATE, in both encodings, is the leader's view.
    for media_type in [media::PROTOBUF, media::JSON] {
        let (code, state, text) = operator(&follower, media_type, &operator_call(C::GetState)).await;
        assert_eq!(code, 200, "{text}");
        let state = state.and_then(|r| r.get_state).expect("get_state");
        let agents = state.get_agents.expect("get_agents").agents;
        assert_eq!(agents.len(), 1);
        assert_eq!(
            agents[0].agent_info.id.as_ref().map(|i| i.value.as_str()),
            Some(agent.agent_id.as_str())
        );
        assert!(agents[0].active);
        assert!(agents[0].agent_info.attributes.iter().any(|a| a.name == "rack"));
        let cpus = |r: &[m::Resource]| {
            r.iter()
                .filter(|r| r.name == "cpus")
                .filter_map(|r| r.scalar.as_ref())
                .map(|s| s.value)
                .sum::<f64>()
        };
        assert_eq!(cpus(&agents[0].total_resources), 4.0);
        assert_eq!(cpus(&agents[0].allocated_resources), 0.5);
        let frameworks = state.get_frameworks.expect("get_frameworks").frameworks;
        let grpc = frameworks
            .iter()
            .find(|f| f.framework_info.id.as_ref().map(|i| i.value.as_str()) == Some(fw.id.as_str()))
            .expect("the gRPC framework listed");
        assert!(grpc.connected, "{grpc:?}");
        assert_eq!(cpus(&grpc.allocated_resources), 0.5);
        let tasks = state.get_tasks.expect("get_tasks").tasks;
        assert!(
            tasks
                .iter()
                .any(|t| t.task_id.value == "long" && t.state == m::TaskState::TaskRunning as i32),
            "{tasks:?}"
        );
    }

    // Weights: set through the follower, read back, refused when invalid.
    let update = mm::Call {
        r#type: Some(C::UpdateWeights as i32),
        update_weights: Some(mm::call::UpdateWeights {
            weight_infos: vec![m::WeightInfo {
                weight: 2.5,
                role: Some("batch".into()),
            }],
        }),
        ..Default::default()
    };
    let (code, _, text) = operator(&follower, media::JSON, &update).await;
    assert_eq!(code, 200, "{text}");
    let (_, weights, _) = operator(&follower, media::JSON, &operator_call(C::GetWeights)).await;
    let weights = weights.and_then(|r| r.get_weights).expect("get_weights").weight_infos;
    assert!(
        weights
            .iter()
            .any(|w| w.role.as_deref() == Some("batch") && w.weight == 2.5),
        "{weights:?}"
    );
    let (_, roles, _) = operator(&follower, media::JSON, &operator_call(C::GetRoles)).await;
    let roles = roles.and_then(|r| r.get_roles).expect("get_roles").roles;
    assert!(roles.iter().any(|r| r.name == "batch" && r.weight == 2.5), "{roles:?}");
    assert!(
        roles
            .iter()
            .any(|r| r.name == "*" && r.frameworks.iter().any(|f| f.value == fw.id)),
        "{roles:?}"
    );
    let mut bad = update.clone();
    if let Some(u) = bad.update_weights.as_mut() {
        u.weight_infos[0].weight = -1.0;
    }
    let (code, _, text) = operator(&follower, media::JSON, &bad).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("weight"), "{text}");
    // An answer of any size comes whole through the follower (here about 80 KiB).
    let many = mm::Call {
        r#type: Some(C::UpdateWeights as i32),
        update_weights: Some(mm::call::UpdateWeights {
            weight_infos: (0..1000)
                .map(|i| m::WeightInfo {
                    weight: 1.5,
                    role: Some(format!("a-role-with-a-long-name-to-make-the-answer-large-{i:04}")),
                })
                .collect(),
        }),
        ..Default::default()
    };
    let (code, _, text) = operator(&follower, media::PROTOBUF, &many).await;
    assert_eq!(code, 200, "{text}");
    let (code, weights, text) = operator(&follower, media::JSON, &operator_call(C::GetWeights)).await;
    assert!(text.len() > 64 << 10, "{} bytes", text.len());
    let weights = weights.and_then(|r| r.get_weights).expect("get_weights").weight_infos;
    assert_eq!((code, weights.len()), (200, 1001));
    let (code, _, text) = operator(&follower, media::JSON, &operator_call(C::GetFlags)).await;
    assert_eq!(code, 501, "{text}");
    assert!(text.contains("GET_FLAGS"), "{text}");

    // Mesos' /master/state, from a follower, is the leader's.
    for path in ["/master/state", "/state.json"] {
        let (code, body) = cluster.http_get(followers(leader)[0], path).await.expect("an answer");
        assert_eq!(code, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["version"], "1.11.0");
        assert_eq!(v["leader"], format!("master@{}", cluster.address(leader)));
        assert_eq!(v["slaves"][0]["id"], agent.agent_id.as_str());
        assert_eq!(v["slaves"][0]["resources"]["cpus"], 4.0);
        assert_eq!(v["slaves"][0]["used_resources"]["cpus"], 0.5);
        let framework = v["frameworks"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["id"] == fw.id.as_str()).cloned())
            .expect("the framework in /master/state");
        assert_eq!(framework["tasks"][0]["id"], "long");
        assert_eq!(framework["tasks"][0]["state"], "TASK_RUNNING");
        assert_eq!(framework["tasks"][0]["slave_id"], agent.agent_id.as_str());
    }

    // TEARDOWN of a gRPC framework through the operator API.
    let teardown = mm::Call {
        r#type: Some(C::Teardown as i32),
        teardown: Some(mm::call::Teardown {
            framework_id: m::FrameworkId { value: fw.id.clone() },
        }),
        ..Default::default()
    };
    let (code, _, text) = operator(&follower, media::PROTOBUF, &teardown).await;
    assert_eq!(code, 200, "{text}");
    wait_for(T, "the torn-down framework's task killed", || async {
        let tasks = state_tasks(&cluster, leader, &fw.id).await?;
        tasks
            .iter()
            .any(|t| t["task_id"] == "long" && t["state"] == "TASK_KILLED")
            .then_some(())
    })
    .await;
    let (_, frameworks, _) = operator(&follower, media::JSON, &operator_call(C::GetFrameworks)).await;
    let frameworks = frameworks.and_then(|r| r.get_frameworks).expect("get_frameworks");
    assert!(frameworks
        .completed_frameworks
        .iter()
        .any(|f| f.framework_info.id.as_ref().map(|i| i.value.as_str()) == Some(fw.id.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_scheduler_p1_calls_in_flight_at_a_leader_kill_are_taken_by_the_new_leader() {
    let (mut cluster, leader) = cluster_with_a_pinned_follower().await;
    cluster.start_agent("a1", "cpus:2;mem:1024", "");
    cluster.wait_agents(1, T).await;
    let address = cluster.address(PINNED).to_string();
    let (stream_id, mut events) = subscribe_protobuf(&address, &subscribe_call("in-flight", None)).await;
    let fid = events
        .until("SUBSCRIBED", |e| e.subscribed.clone())
        .await
        .framework_id
        .value;
    let offer = events
        .until("an offer", |e| {
            e.offers.as_ref().and_then(|o| o.offers.first().cloned())
        })
        .await;
    let accept = launch_call(&fid, &offer, "g-1", "sleep 600");
    assert_eq!(protobuf_call(&address, &stream_id, &accept).await.0, 202);
    // Every update until RUNNING, none acknowledged yet.
    let mut unacked = Vec::new();
    loop {
        let status = events
            .until("an update of g-1", |e| e.update.as_ref().map(|u| u.status.clone()))
            .await;
        let running = status.state == m::TaskState::TaskRunning as i32;
        unacked.push(status);
        if running {
            break;
        }
    }
    cluster.kill(leader);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&others, T).await;
    while events.next().await.is_some() {}
    // The acknowledgements the framework was sending when its leader died, with the stream
    // id of that leader's subscription: taken by the new leader, before any re-subscription.
    for status in &unacked {
        let ack = ms::Call {
            framework_id: framework(&fid),
            r#type: Some(ms::call::Type::Acknowledge as i32),
            acknowledge: Some(ms::call::Acknowledge {
                agent_id: status.agent_id.clone().expect("an agent id"),
                task_id: status.task_id.clone(),
                uuid: status.uuid.clone().expect("a uuid"),
            }),
            ..Default::default()
        };
        let (code, text) = protobuf_call(&address, &stream_id, &ack).await;
        assert_eq!(code, 202, "{text}");
    }
    wait_for(T, "the acknowledgements applied by the new leader", || async {
        let tasks = state_tasks(&cluster, new_leader, &fid).await?;
        (tasks.len() == 1 && tasks[0]["unacknowledged_updates"] == 0).then_some(())
    })
    .await;
    // Any other call of the framework is dropped, not refused; a framework the cluster does
    // not know is refused all the same.
    let revive = ms::Call {
        framework_id: framework(&fid),
        r#type: Some(ms::call::Type::Revive as i32),
        ..Default::default()
    };
    assert_eq!(protobuf_call(&address, &stream_id, &revive).await.0, 202);
    let stranger = ms::Call {
        framework_id: framework("fw-stranger"),
        ..revive.clone()
    };
    assert_eq!(protobuf_call(&address, &stream_id, &stranger).await.0, 403);
    // The framework subscribes again through the same master; its task runs on.
    let (again, mut events) = subscribe_protobuf(&address, &subscribe_call("in-flight", Some(&fid))).await;
    assert_ne!(again, stream_id);
    let subscribed = events.until("SUBSCRIBED again", |e| e.subscribed.clone()).await;
    assert_eq!(subscribed.framework_id.value, fid);
    let tasks = state_tasks(&cluster, new_leader, &fid).await.expect("tasks");
    assert_eq!(tasks[0]["state"], "TASK_RUNNING");
    // Once subscribed, the old stream id is refused.
    assert_eq!(protobuf_call(&address, &stream_id, &revive).await.0, 403);
}

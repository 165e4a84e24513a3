//! `corral watch [--json]`: the cluster's changes as the leader applies them, one line
//! each (tasks, agents, frameworks, the leader), following the leader across failovers.

use std::io::Write;
use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use crate::output::{describe, Failure};

/// `corral watch`.
pub async fn run(masters: &Masters, deadline: Duration, json: bool) -> Result<(), Failure> {
    let mut first = true;
    loop {
        let opened = masters
            .on_leader(deadline, |ch| async move {
                corral_proto::limit_client!(OperatorClient::new(ch))
                    .watch(v1::WatchRequest {})
                    .await
            })
            .await;
        let mut events = match opened {
            Ok(r) => r.into_inner(),
            // The first time, say why and stop; later, the leader is changing: try again.
            Err(s) if first => return Err(describe(&s).into()),
            Err(s) => {
                eprintln!("corral: watch: {}; trying again", describe(&s));
                continue;
            }
        };
        first = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => print(&e, json)?,
                Err(s) => {
                    eprintln!("corral: watch: {}; watching again", describe(&s));
                    break;
                }
            }
        }
    }
}

fn print(e: &v1::WatchEvent, json: bool) -> Result<(), String> {
    let line = if json { to_json(e).to_string() } else { to_text(e) };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing the output: {e}"))
}

fn task_state(s: i32) -> &'static str {
    v1::TaskState::try_from(s).map_or("TASK_UNKNOWN", |s| s.as_str_name())
}

fn agent_state(s: i32) -> &'static str {
    v1::AgentState::try_from(s).map_or("AGENT_STATE_UNSPECIFIED", |s| s.as_str_name())
}

fn framework_state(s: i32) -> &'static str {
    v1::FrameworkState::try_from(s).map_or("FRAMEWORK_STATE_UNSPECIFIED", |s| s.as_str_name())
}

/// One line for a person.
fn to_text(e: &v1::WatchEvent) -> String {
    use v1::watch_event::Event;
    match &e.event {
        Some(Event::Task(t)) if t.removed => format!("task {}/{} removed", t.framework_id, t.task_id),
        Some(Event::Task(t)) => {
            let code = t.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
            format!(
                "task {}/{} {} on agent {}{code}",
                t.framework_id,
                t.task_id,
                task_state(t.state),
                t.agent_id
            )
        }
        Some(Event::Agent(a)) if a.removed => format!("agent {} ({}) removed", a.agent_id, a.hostname),
        Some(Event::Agent(a)) => format!("agent {} ({}) {}", a.agent_id, a.hostname, agent_state(a.state)),
        Some(Event::Framework(f)) if f.removed => format!("framework {} ({}) removed", f.framework_id, f.name),
        Some(Event::Framework(f)) => format!(
            "framework {} ({}, role {}) {}",
            f.framework_id,
            f.name,
            f.role,
            framework_state(f.state)
        ),
        Some(Event::Leader(l)) if l.leader_id == 0 => format!("no leader (term {})", l.term),
        Some(Event::Leader(l)) => format!("leader {} at {} (term {})", l.leader_id, l.address, l.term),
        None => "an event of a kind this corral does not know".to_string(),
    }
}

/// One JSON object per event: `kind` and the event's fields.
fn to_json(e: &v1::WatchEvent) -> Value {
    use v1::watch_event::Event;
    let body = match &e.event {
        Some(Event::Task(t)) => json!({
            "kind": "task", "framework_id": t.framework_id, "task_id": t.task_id,
            "agent_id": t.agent_id, "state": task_state(t.state), "exit_code": t.exit_code,
            "removed": t.removed,
        }),
        Some(Event::Agent(a)) => json!({
            "kind": "agent", "agent_id": a.agent_id, "hostname": a.hostname,
            "state": agent_state(a.state), "removed": a.removed,
        }),
        Some(Event::Framework(f)) => json!({
            "kind": "framework", "framework_id": f.framework_id, "name": f.name, "role": f.role,
            "state": framework_state(f.state), "removed": f.removed,
        }),
        Some(Event::Leader(l)) => json!({
            "kind": "leader", "leader_id": l.leader_id, "address": l.address, "term": l.term,
        }),
        None => json!({"kind": "unknown"}),
    };
    let mut body = body;
    body["index"] = json!(e.index);
    body
}

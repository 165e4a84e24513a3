//! `corral watch [--json]`: the cluster's changes as the leader applies them, one line
//! each (tasks, agents, frameworks, the leader), following the leader across failovers.

use std::io::Write;
use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::v1;
use corral_proto::v1::operator_client::OperatorClient;
use tokio_stream::StreamExt;

use corral_proto::watch::{agent_state, framework_state, task_state};

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
    let line = if json {
        corral_proto::watch::to_json(e).to_string()
    } else {
        to_text(e)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing the output: {e}"))
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

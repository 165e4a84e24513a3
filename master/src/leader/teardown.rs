//! Ending a framework: the teardown a framework asks for, or its failover timeout.

use corral_proto::v1;

use crate::node::Shared;
use crate::raft::types::Outcome;
use crate::raft::write::WriteError;

use super::event;

/// Tear a framework down: commit it, kill its tasks, end its stream. The outcome is apply's
/// (a framework already torn down is refused).
pub async fn teardown(shared: &Shared, framework_id: &str, why: &str) -> Result<Outcome, WriteError> {
    let kind = v1::command::Kind::TeardownFramework(v1::TeardownFramework {
        framework_id: framework_id.to_string(),
    });
    if let Outcome::Rejected(r) = shared.write(kind).await? {
        return Ok(Outcome::Rejected(r));
    }
    let tasks: Vec<(String, String)> = {
        let state = shared.state.read();
        state
            .app
            .tasks
            .range((framework_id.to_string(), String::new())..)
            .take_while(|((f, _), _)| f == framework_id)
            .filter(|(_, t)| !t.is_terminal())
            .map(|(_, t)| (t.agent_id.clone(), t.task_id.clone()))
            .collect()
    };
    let mut guard = shared.leader.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(soft) = guard.as_mut() {
        for (agent_id, task_id) in tasks {
            soft.send_agent(
                &agent_id,
                v1::master_message::Message::KillTask(v1::KillTask {
                    framework_id: framework_id.to_string(),
                    task_id,
                    kill_grace_period_ms: 0,
                }),
            );
        }
        soft.send_framework(
            framework_id,
            event(v1::event::Event::Error(v1::Error {
                message: format!("framework torn down: {why}"),
            })),
        );
        soft.end_framework_session(framework_id, std::time::Instant::now());
        soft.suppressed.remove(framework_id);
        soft.full_pass = true;
    }
    tracing::info!(framework_id, why, "framework torn down");
    Ok(Outcome::Applied)
}

//! Ending a framework: the teardown a framework asks for, or its failover timeout.

use corral_proto::v1;

use crate::node::Shared;
use crate::raft::types::Outcome;
use crate::raft::write::WriteError;

use super::{event, Leader};

/// Tear a framework down: commit it, kill its tasks, end its stream (through `leader`'s
/// loop). The outcome is apply's (a framework already torn down is refused).
pub async fn teardown(shared: &Shared, leader: &Leader, framework_id: &str, why: &str) -> Result<Outcome, WriteError> {
    let kind = v1::command::Kind::TeardownFramework(v1::TeardownFramework {
        framework_id: framework_id.to_string(),
    });
    if let Outcome::Rejected(r) = shared.write(kind).await? {
        return Ok(Outcome::Rejected(r));
    }
    let (id, why) = (framework_id.to_string(), why.to_string());
    let ended = leader
        .tell(move |shared, soft| {
            let framework_id = id;
            let state = shared.state.read();
            let tasks = state
                .app
                .tasks
                .range((framework_id.clone(), String::new())..)
                .take_while(|((f, _), _)| *f == framework_id)
                .filter(|(_, t)| !t.is_terminal());
            for (_, t) in tasks {
                soft.send_agent(
                    &t.agent_id,
                    v1::master_message::Message::KillTask(v1::KillTask {
                        framework_id: framework_id.clone(),
                        task_id: t.task_id.clone(),
                        kill_grace_period_ms: 0,
                    }),
                );
            }
            // Its executors: SHUTDOWN, then killed after their grace period (the agents
            // report their ends, which frees what they hold).
            let hosts = state
                .app
                .agents
                .values()
                .filter(|a| a.executors.keys().any(|(f, _)| *f == framework_id));
            for a in hosts {
                soft.send_agent(
                    &a.id,
                    v1::master_message::Message::ShutdownFramework(v1::ShutdownFramework {
                        framework_id: framework_id.clone(),
                    }),
                );
            }
            soft.send_framework(
                &framework_id,
                event(v1::event::Event::Error(v1::Error {
                    message: format!("framework torn down: {why}"),
                })),
            );
            soft.end_framework_session(&framework_id, std::time::Instant::now());
            soft.suppressed.remove(&framework_id);
            soft.full_pass = true;
            tracing::info!(%framework_id, why, "framework torn down");
        })
        .await;
    if ended.is_err() {
        tracing::warn!(
            framework_id,
            "framework torn down, but leadership was lost before its tasks were sent a kill"
        );
    }
    Ok(Outcome::Applied)
}

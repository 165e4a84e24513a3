//! The agent's link to the leading master: register (with the task inventory), then obey
//! commands until the stream breaks, then find the leader again. A leader that goes silent
//! (partition, SIGSTOP) is noticed by the missing pings, not only by a TCP reset.

use std::time::Duration;

use corral_proto::client::Masters;
use corral_proto::convert::resources_to_wire;
use corral_proto::v1;
use corral_proto::v1::agents_client::AgentsClient;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::config::Config;
use crate::tasks::Tasks;

/// No message from the leader for this long (it pings every 5 s) means it is gone.
pub const LEADER_SILENCE: Duration = Duration::from_secs(12);
/// How long one round of looking for the leader may take before starting over.
const FIND_LEADER: Duration = Duration::from_secs(5);
/// Capacity of the outbound stream to the master.
const OUTBOUND_CAPACITY: usize = 4096;

fn register_message(config: &Config, tasks: &Tasks) -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(v1::agent_message::Message::Register(v1::Register {
            agent_id: tasks.agent_id(),
            info: Some(v1::AgentInfo {
                hostname: config.hostname.clone(),
                address: config.listen.to_string(),
                resources: resources_to_wire(&config.resources),
                attributes: corral_proto::convert::attributes_to_wire(&config.attributes),
                version: env!("CARGO_PKG_VERSION").to_string(),
                isolation: tasks.isolation(),
                capabilities: tasks.capabilities(),
            }),
            tasks: tasks.inventory(),
            last_seen_term: tasks.max_term(),
        })),
    }
}

/// Stay attached to the leader until `shutdown`.
pub async fn run(config: Config, tasks: Tasks, mut shutdown: watch::Receiver<bool>) {
    let masters = Masters::new(config.masters.clone(), Duration::from_secs(5));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let register = register_message(&config, &tasks);
        let attempt = masters
            .on_leader(FIND_LEADER, |channel| {
                let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
                let _ = tx.try_send(register.clone());
                async move {
                    let mut client = corral_proto::limit_client!(AgentsClient::new(channel));
                    let response = client.attach(ReceiverStream::new(rx)).await?;
                    Ok((response.into_inner(), tx))
                }
            })
            .await;
        let (mut inbound, tx) = match attempt {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e.message(), "no leader to attach to; retrying");
                continue;
            }
        };
        let mut attached = false;
        loop {
            let next = tokio::select! {
                m = tokio::time::timeout(LEADER_SILENCE, inbound.next()) => m,
                _ = shutdown.wait_for(|s| *s) => { tasks.set_link(None); return; }
            };
            let msg = match next {
                Err(_) => {
                    tracing::warn!("leader silent for {LEADER_SILENCE:?}; looking for a new one");
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(status))) => {
                    tracing::info!(code = ?status.code(), message = status.message(), "master stream ended");
                    break;
                }
                Ok(Some(Ok(m))) => m,
            };
            if !tasks.accept_term(msg.term) {
                tracing::info!(
                    term = msg.term,
                    newest = tasks.max_term(),
                    "ignoring a command from an older leader term"
                );
                continue;
            }
            match msg.message {
                Some(v1::master_message::Message::Registered(r)) => {
                    tasks.set_agent_id(&r.agent_id);
                    tasks.set_link(Some(tx.clone()));
                    attached = true;
                    tracing::info!(agent_id = %r.agent_id, term = msg.term, "registered with the leader");
                }
                Some(v1::master_message::Message::RunTask(r)) => {
                    if let Some(task) = r.task {
                        tasks.launch(r.framework_id, task, r.framework.unwrap_or_default());
                    }
                }
                Some(v1::master_message::Message::KillTask(k)) => {
                    tasks.kill(&k.framework_id, &k.task_id, k.kill_grace_period_ms)
                }
                Some(v1::master_message::Message::AckUpdate(a)) => {
                    tasks.acknowledged(&a.framework_id, &a.task_id, &a.uuid)
                }
                Some(v1::master_message::Message::Ping(p)) => {
                    let pong = v1::AgentMessage {
                        message: Some(v1::agent_message::Message::Pong(v1::Pong { nonce: p.nonce })),
                    };
                    let _ = tx.try_send(pong);
                }
                Some(v1::master_message::Message::ShutdownFramework(s)) => {
                    for (f, t, _, _) in tasks.running() {
                        if f == s.framework_id {
                            tasks.kill(&f, &t, 0);
                        }
                    }
                    tasks.shutdown_executors_of(&s.framework_id);
                }
                Some(v1::master_message::Message::AckExecutorEnded(a)) => {
                    tasks.executor_end_acknowledged(&a.framework_id, &a.executor_id)
                }
                Some(v1::master_message::Message::FrameworkMessage(fm)) => {
                    tasks.framework_message(&fm.framework_id, &fm.executor_id, fm.data)
                }
                Some(v1::master_message::Message::ShutdownExecutor(s)) => {
                    tasks.shutdown_executor(&s.framework_id, &s.executor_id)
                }
                None => {}
            }
        }
        tasks.set_link(None);
        if attached {
            tracing::info!("detached from the leader; re-registering");
        }
        // Spread re-registrations after a failover so they do not arrive as one burst.
        let pause = rand::rng().random_range(20..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

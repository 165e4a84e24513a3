//! The executor SDK: an [`Executor`] trait and a driver, like the Mesos executor driver,
//! speaking the Mesos v1 Executor HTTP API (protobuf) to the agent that started the
//! executor (`MESOS_AGENT_ENDPOINT`).
//!
//! [`run`] subscribes, calls the executor's callbacks as events arrive, and keeps the
//! tasks and status updates the agent has not acknowledged: when the subscription breaks
//! (the agent restarted) it subscribes again with them, so nothing sent is lost. The
//! [`ExecutorDriver`] handed to every callback sends status updates and messages; a
//! SHUTDOWN (or [`ExecutorDriver::stop`]) ends the run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::mesos::v1 as m;
use crate::mesos::v1::executor as me;
use crate::mesos::{convert, media, recordio};
use crate::v1;

/// How long to keep trying to re-subscribe after the agent went away.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Largest event read.
const MAX_EVENT_BYTES: usize = 16 << 20;
/// Largest response head read.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// What an executor does with events. Every method gets the [`ExecutorDriver`] to act with.
pub trait Executor: Send {
    /// Subscribed for the first time.
    fn registered(&mut self, _driver: &ExecutorDriver, _executor: &v1::ExecutorInfo, _agent_id: &str) {}
    /// Subscribed again (the agent restarted).
    fn reregistered(&mut self, _driver: &ExecutorDriver) {}
    /// Run `task`; report on it with [`ExecutorDriver::send_status`].
    fn launch(&mut self, driver: &ExecutorDriver, task: v1::TaskInfo);
    /// Kill task `task_id` and report it TASK_KILLED.
    fn kill(&mut self, driver: &ExecutorDriver, task_id: &str);
    /// A message from the framework.
    fn message(&mut self, _driver: &ExecutorDriver, _data: &[u8]) {}
    /// The agent asks the executor to end (its process group is killed after the grace
    /// period); the run ends after this returns.
    fn shutdown(&mut self, _driver: &ExecutorDriver) {}
    /// The agent reported an error.
    fn error(&mut self, _driver: &ExecutorDriver, _message: &str) {}
}

/// Why [`run`] ended without SHUTDOWN or stop.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A variable the agent sets is missing: not started by an agent.
    #[error("environment variable {0} is not set (is this process started by a Corral or Mesos agent?)")]
    Environment(&'static str),
    /// The agent refused the subscription.
    #[error("the agent refused the subscription: {0}")]
    Refused(String),
    /// The agent stayed away longer than [`RECOVERY_TIMEOUT`].
    #[error("the agent did not come back within {0:?}")]
    AgentGone(Duration),
}

/// What the executor has sent or received that the agent has not acknowledged.
#[derive(Default)]
struct Unacknowledged {
    tasks: BTreeMap<String, m::TaskInfo>,
    updates: BTreeMap<Vec<u8>, m::TaskStatus>,
}

enum Call {
    Update(m::TaskStatus),
    Message(Vec<u8>),
    Stop,
}

/// The handle an executor acts with.
#[derive(Clone)]
pub struct ExecutorDriver {
    tx: mpsc::UnboundedSender<Call>,
    pending: Arc<Mutex<Unacknowledged>>,
    agent_id: Arc<Mutex<String>>,
}

impl ExecutorDriver {
    /// Report `state` of task `task_id` (with a fresh uuid); resent until acknowledged.
    pub fn send_status(&self, task_id: &str, state: v1::TaskState, message: &str) {
        let uuid = rand::random::<[u8; 16]>().to_vec();
        let status = m::TaskStatus {
            task_id: m::TaskId { value: task_id.into() },
            state: convert::task_state_to_mesos(state as i32) as i32,
            message: (!message.is_empty()).then(|| message.to_string()),
            source: Some(m::task_status::Source::Executor as i32),
            uuid: Some(uuid.clone()),
            timestamp: Some(crate::time::now_ms() as f64 / 1000.0),
            agent_id: Some(m::AgentId {
                value: self.agent_id.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            }),
            ..Default::default()
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .updates
            .insert(uuid, status.clone());
        let _ = self.tx.send(Call::Update(status));
    }

    /// Send `data` to the framework (best effort).
    pub fn send_message(&self, data: Vec<u8>) {
        let _ = self.tx.send(Call::Message(data));
    }

    /// End the run.
    pub fn stop(&self) {
        let _ = self.tx.send(Call::Stop);
    }
}

/// Where the agent is and who this executor is, from the environment the agent set.
struct Identity {
    endpoint: String,
    framework_id: String,
    executor_id: String,
}

fn env(name: &'static str) -> Result<String, ExecutorError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(ExecutorError::Environment(name))
}

impl Identity {
    fn call(&self, kind: me::call::Type) -> me::Call {
        me::Call {
            executor_id: m::ExecutorId {
                value: self.executor_id.clone(),
            },
            framework_id: m::FrameworkId {
                value: self.framework_id.clone(),
            },
            r#type: Some(kind as i32),
            ..Default::default()
        }
    }
}

/// An HTTP/1.1 POST of `call` (protobuf); returns the status code, the headers (lower case)
/// and the reader positioned at the body.
async fn post(endpoint: &str, call: &me::Call) -> std::io::Result<(u16, Vec<(String, String)>, BufReader<TcpStream>)> {
    let body = call.encode_to_vec();
    let mut stream = TcpStream::connect(endpoint).await?;
    let head = format!(
        "POST /api/v1/executor HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: {p}\r\nAccept: {p}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        p = media::PROTOBUF
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    let mut reader = BufReader::new(stream);
    let mut status = 0u16;
    let mut headers = Vec::new();
    let mut read = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await?;
        read += n;
        if n == 0 || read > MAX_HEAD_BYTES {
            return Err(std::io::Error::other("the agent's answer has no complete head"));
        }
        let line = line.trim_end();
        if status == 0 {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))?;
        } else if line.is_empty() {
            break;
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers, reader))
}

/// The body of a refused call, as text (bounded).
async fn error_text(reader: &mut BufReader<TcpStream>) -> String {
    let mut text = Vec::new();
    let _ = reader.take(4096).read_to_end(&mut text).await;
    String::from_utf8_lossy(&text).trim().to_string()
}

/// Read one chunk of a chunked body: None at its end.
async fn chunk(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    if size > MAX_EVENT_BYTES {
        return Err(std::io::Error::other("chunk over the event limit"));
    }
    if size == 0 {
        return Ok(None);
    }
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data).await?;
    data.truncate(size);
    Ok(Some(data))
}

/// Run `executor` until SHUTDOWN or [`ExecutorDriver::stop`]; returns the executor.
pub async fn run<E: Executor>(mut executor: E) -> Result<E, ExecutorError> {
    let id = Arc::new(Identity {
        endpoint: env("MESOS_AGENT_ENDPOINT")?,
        framework_id: env("MESOS_FRAMEWORK_ID")?,
        executor_id: env("MESOS_EXECUTOR_ID")?,
    });
    let (tx, mut calls) = mpsc::unbounded_channel();
    let driver = ExecutorDriver {
        tx,
        pending: Arc::default(),
        agent_id: Arc::default(),
    };
    let mut subscribed_once = false;
    let mut away_since: Option<Instant> = None;
    loop {
        if let Some(since) = away_since {
            if since.elapsed() > RECOVERY_TIMEOUT {
                return Err(ExecutorError::AgentGone(RECOVERY_TIMEOUT));
            }
        }
        let mut call = id.call(me::call::Type::Subscribe);
        {
            let pending = driver.pending.lock().unwrap_or_else(|p| p.into_inner());
            call.subscribe = Some(me::call::Subscribe {
                unacknowledged_tasks: pending.tasks.values().cloned().collect(),
                unacknowledged_updates: pending
                    .updates
                    .values()
                    .map(|s| me::call::Update { status: s.clone() })
                    .collect(),
            });
        }
        let mut reader = match post(&id.endpoint, &call).await {
            Ok((200, _, reader)) => reader,
            Ok((code, _, mut reader)) if (400..500).contains(&code) => {
                let text = error_text(&mut reader).await;
                return Err(ExecutorError::Refused(format!("{code}: {text}")));
            }
            Ok((code, _, _)) => {
                tracing::warn!(code, "the agent could not take the subscription; retrying");
                away_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::info!(error = %e, "agent not reachable; retrying");
                away_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut records = recordio::Reader::new(MAX_EVENT_BYTES);
        let ended = loop {
            tokio::select! {
                c = chunk(&mut reader) => {
                    let data = match c {
                        Ok(Some(d)) => d,
                        Ok(None) => break "the agent closed the subscription".to_string(),
                        Err(e) => break e.to_string(),
                    };
                    records.feed(&data);
                    loop {
                        let record = match records.next_record() {
                            Ok(Some(r)) => r,
                            Ok(None) => break,
                            Err(e) => return Err(ExecutorError::Refused(e.to_string())),
                        };
                        let Ok(ev) = me::Event::decode(record.as_slice()) else {
                            tracing::warn!("undecodable event skipped");
                            continue;
                        };
                        if dispatch(&mut executor, &driver, ev, &mut subscribed_once) {
                            return Ok(executor);
                        }
                    }
                }
                Some(c) = calls.recv() => match c {
                    Call::Stop => return Ok(executor),
                    Call::Update(status) => {
                        let mut call = id.call(me::call::Type::Update);
                        call.update = Some(me::call::Update { status });
                        send_call(&id, call).await;
                    }
                    Call::Message(data) => {
                        let mut call = id.call(me::call::Type::Message);
                        call.message = Some(me::call::Message { data });
                        send_call(&id, call).await;
                    }
                },
            }
        };
        tracing::info!(reason = %ended, "subscription to the agent ended; subscribing again");
        away_since = Some(Instant::now());
    }
}

/// Send a call; a refusal is logged (an update is kept and resent at the next subscription).
async fn send_call(id: &Identity, call: me::Call) {
    match post(&id.endpoint, &call).await {
        Ok((202, _, _)) => {}
        Ok((code, _, mut reader)) => {
            let text = error_text(&mut reader).await;
            tracing::warn!(code, %text, "the agent refused a call");
        }
        Err(e) => tracing::warn!(error = %e, "call not delivered; updates are resent when subscribing again"),
    }
}

/// Handle one event; true when the run must end (SHUTDOWN).
fn dispatch<E: Executor>(executor: &mut E, driver: &ExecutorDriver, ev: me::Event, subscribed_once: &mut bool) -> bool {
    let kind = ev.r#type.and_then(|t| me::event::Type::try_from(t).ok());
    match kind {
        Some(me::event::Type::Subscribed) => {
            let Some(s) = ev.subscribed else { return false };
            let agent_id = s.agent_info.id.map(|a| a.value).unwrap_or_default();
            *driver.agent_id.lock().unwrap_or_else(|p| p.into_inner()) = agent_id.clone();
            if *subscribed_once {
                executor.reregistered(driver);
            } else {
                *subscribed_once = true;
                match convert::executor_from_mesos("executor_info", &s.executor_info) {
                    Ok(info) => executor.registered(driver, &info, &agent_id),
                    Err(e) => executor.error(driver, &e),
                }
            }
        }
        Some(me::event::Type::Launch) => {
            let Some(l) = ev.launch else { return false };
            driver
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .tasks
                .insert(l.task.task_id.value.clone(), l.task.clone());
            match convert::task_from_mesos("task", &l.task) {
                Ok(task) => executor.launch(driver, task),
                Err(e) => executor.error(driver, &e),
            }
        }
        Some(me::event::Type::Kill) => {
            if let Some(k) = ev.kill {
                executor.kill(driver, &k.task_id.value);
            }
        }
        Some(me::event::Type::Acknowledged) => {
            if let Some(a) = ev.acknowledged {
                let mut pending = driver.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.updates.remove(&a.uuid);
                pending.tasks.remove(&a.task_id.value);
            }
        }
        Some(me::event::Type::Message) => {
            if let Some(m) = ev.message {
                executor.message(driver, &m.data);
            }
        }
        Some(me::event::Type::Error) => {
            if let Some(e) = ev.error {
                executor.error(driver, &e.message);
            }
        }
        Some(me::event::Type::Shutdown) => {
            executor.shutdown(driver);
            return true;
        }
        Some(me::event::Type::Heartbeat)
        | Some(me::event::Type::LaunchGroup)
        | Some(me::event::Type::Unknown)
        | None => {}
    }
    false
}

//! A simulated framework on the Mesos v1 Scheduler HTTP API (JSON), for the benchmarks: it
//! churns tasks as [`crate::sim::SimFramework`] does in `Mode::Churn`, but the way a Mesos
//! framework does (pymesos, mesos-go): a SUBSCRIBE stream of RecordIO-framed JSON events,
//! and one HTTP/1.1 POST per call on kept-alive connections, one acknowledgement per call.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::mesos::v1 as m;
use corral_proto::mesos::v1::scheduler as ms;
use corral_proto::mesos::{json, media, recordio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_stream::StreamExt;

use crate::sim::{lock, FrameworkState, SimFramework, TASK_CPUS, TASK_MEM};

const PATH: &str = "/api/v1/scheduler";
const CALL: &str = "mesos.v1.scheduler.Call";
const EVENT: &str = "mesos.v1.scheduler.Event";
/// Calls in flight at once, each on a connection of its own (kept alive between calls).
const CONNECTIONS: usize = 8;
/// Longest answer head read.
const MAX_HEAD: usize = 16 << 10;

/// One kept-alive HTTP/1.1 connection to a master.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(address: &str) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(tcp),
        })
    }

    /// POST `body` as a JSON call with `stream_id`: the answer's status and text.
    async fn post(&mut self, address: &str, stream_id: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: {address}\r\nContent-Type: {}\r\nMesos-Stream-Id: {stream_id}\r\nContent-Length: {}\r\n\r\n",
            media::JSON,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).await?;
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut status = None;
        let mut length = 0usize;
        let mut read = 0usize;
        loop {
            let mut line = String::new();
            let n = self.stream.read_line(&mut line).await?;
            read += n;
            if n == 0 || read > MAX_HEAD {
                return Err(bad("no answer head"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| bad("content-length"))?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked answers to calls are not expected"));
                }
            }
        }
        let mut rest = vec![0u8; length];
        self.stream.read_exact(&mut rest).await?;
        let status = status.ok_or_else(|| bad("no status"))?;
        Ok((status, String::from_utf8_lossy(&rest).into_owned()))
    }
}

/// Start a simulated Mesos HTTP framework `name` through master `address` (any master: a
/// follower relays), churning up to `per_offer` tasks from every offer. Read and stop it as
/// any simulated framework.
pub fn start(address: &str, name: &str, per_offer: usize) -> SimFramework {
    let state = Arc::new(FrameworkState::default());
    let (stop, stopped) = watch::channel(false);
    let run = Run {
        address: address.to_string(),
        name: name.to_string(),
        per_offer,
        state: state.clone(),
        pool: Arc::new(Mutex::new(Vec::new())),
        calls: Arc::new(Semaphore::new(CONNECTIONS)),
    };
    let handle = tokio::spawn(run.run(stopped));
    SimFramework::running(state, stop, handle)
}

#[derive(Clone)]
struct Run {
    address: String,
    name: String,
    per_offer: usize,
    state: Arc<FrameworkState>,
    /// Idle kept-alive connections.
    pool: Arc<Mutex<Vec<Conn>>>,
    /// Bounds the calls in flight.
    calls: Arc<Semaphore>,
}

impl Run {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut framework_id: Option<String> = None;
        let mut seq = 0u64;
        loop {
            if *stopped.borrow() {
                return;
            }
            let call = ms::Call {
                framework_id: framework_id.clone().map(|value| m::FrameworkId { value }),
                r#type: Some(ms::call::Type::Subscribe as i32),
                subscribe: Some(ms::call::Subscribe {
                    framework_info: m::FrameworkInfo {
                        user: "root".into(),
                        name: self.name.clone(),
                        id: framework_id.clone().map(|value| m::FrameworkId { value }),
                        failover_timeout: Some(3600.0),
                        ..Default::default()
                    },
                    suppressed_roles: Vec::new(),
                }),
                ..Default::default()
            };
            let body = json::encode(CALL, &call).expect("a call of our definitions encodes");
            let headers = [("content-type", media::JSON), ("accept", media::JSON)];
            let opened = corral_proto::http::request(
                &self.address,
                corral_proto::tls::Role::Master,
                "POST",
                PATH,
                &headers,
                &body,
                Duration::from_secs(10),
            )
            .await;
            let opened = match opened {
                Ok(o) if o.status == 200 => o,
                Ok(o) => {
                    tracing::warn!(framework = %self.name, status = o.status, "subscribe refused");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(framework = %self.name, error = %e, "subscribe failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let stream_id = opened.header("mesos-stream-id").unwrap_or_default().to_string();
            let mut body = opened.body;
            let mut records = recordio::Reader::new(corral_proto::MAX_MESSAGE_BYTES);
            'stream: loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let Some(Ok(chunk)) = chunk else { break };
                records.feed(&chunk);
                loop {
                    let record = match records.next_record() {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(framework = %self.name, error = %e, "bad event stream");
                            break 'stream;
                        }
                    };
                    let Ok(ev) = json::decode::<ms::Event>(EVENT, &record) else {
                        tracing::warn!(framework = %self.name, "an event that is not JSON");
                        break 'stream;
                    };
                    if let Some(s) = ev.subscribed {
                        framework_id = Some(s.framework_id.value);
                    }
                    let Some(fid) = framework_id.clone() else { continue };
                    if let Some(offers) = ev.offers {
                        for offer in offers.offers {
                            self.on_offer(&fid, &stream_id, offer, &mut seq);
                        }
                    }
                    if let Some(update) = ev.update {
                        self.on_update(&fid, &stream_id, update.status);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send `call` on a pooled connection; its status and text, or None if the connection
    /// failed.
    async fn call(&self, stream_id: &str, call: ms::Call) -> Option<(u16, String)> {
        let _permit = self.calls.clone().acquire_owned().await.ok()?;
        let body = json::encode(CALL, &call).ok()?;
        let pooled = lock(&self.pool).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn::open(&self.address).await.ok()?,
        };
        let status = conn.post(&self.address, stream_id, &body).await.ok()?;
        lock(&self.pool).push(conn);
        Some(status)
    }

    fn on_offer(&self, framework_id: &str, stream_id: &str, offer: m::Offer, seq: &mut u64) {
        let scalar = |name: &str| -> f64 {
            offer
                .resources
                .iter()
                .filter(|r| r.name == name)
                .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
                .sum()
        };
        let fit = ((scalar("cpus") / TASK_CPUS + 1e-6).floor() as usize)
            .min((scalar("mem") / TASK_MEM + 1e-6).floor() as usize);
        let count = fit.min(self.per_offer);
        let resource = |name: &str, value: f64| m::Resource {
            name: name.into(),
            r#type: m::value::Type::Scalar as i32,
            scalar: Some(m::value::Scalar { value }),
            ..Default::default()
        };
        let tasks: Vec<m::TaskInfo> = (0..count)
            .map(|_| {
                *seq += 1;
                let id = format!("{}-{}", self.name, seq);
                m::TaskInfo {
                    name: id.clone(),
                    task_id: m::TaskId { value: id },
                    agent_id: offer.agent_id.clone(),
                    resources: vec![resource("cpus", TASK_CPUS), resource("mem", TASK_MEM)],
                    command: Some(m::CommandInfo {
                        value: Some("true".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let call = ms::Call {
            framework_id: Some(m::FrameworkId {
                value: framework_id.to_string(),
            }),
            r#type: Some(ms::call::Type::Accept as i32),
            accept: Some(ms::call::Accept {
                offer_ids: vec![offer.id],
                operations: vec![m::offer::Operation {
                    r#type: Some(m::offer::operation::Type::Launch as i32),
                    launch: Some(m::offer::operation::Launch {
                        task_infos: tasks.clone(),
                    }),
                }],
                filters: Some(m::Filters {
                    refuse_seconds: Some(0.0),
                }),
            }),
            ..Default::default()
        };
        let (this, stream_id) = (self.clone(), stream_id.to_string());
        tokio::spawn(async move {
            let started = Instant::now();
            {
                let mut at = lock(&this.state.accepted_at);
                for t in &tasks {
                    at.insert(t.task_id.value.clone(), started);
                }
            }
            match this.call(&stream_id, call).await {
                Some((202, _)) => {
                    lock(&this.state.accept_latencies).push(started.elapsed().as_micros() as u64);
                    this.state.launched.fetch_add(tasks.len() as u64, Ordering::Relaxed);
                }
                other => {
                    if this.state.refused.fetch_add(1, Ordering::Relaxed) < 3 {
                        tracing::warn!(framework = %this.name, status = ?other, "accept refused");
                    }
                    let mut at = lock(&this.state.accepted_at);
                    for t in &tasks {
                        at.remove(&t.task_id.value);
                    }
                }
            }
        });
    }

    fn on_update(&self, framework_id: &str, stream_id: &str, s: m::TaskStatus) {
        let now = Instant::now();
        if s.state == m::TaskState::TaskRunning as i32 {
            self.state.running.fetch_add(1, Ordering::Relaxed);
            if let Some(at) = lock(&self.state.accepted_at).remove(&s.task_id.value) {
                lock(&self.state.latencies).push(now.duration_since(at).as_micros() as u64);
            }
        } else if s.state == m::TaskState::TaskFinished as i32 {
            self.state.finished.fetch_add(1, Ordering::Relaxed);
            lock(&self.state.accepted_at).remove(&s.task_id.value);
        } else if s.state == m::TaskState::TaskDropped as i32 || s.state == m::TaskState::TaskError as i32 {
            // An accept whose offer was gone: 202, then this.
            self.state.refused.fetch_add(1, Ordering::Relaxed);
            lock(&self.state.accepted_at).remove(&s.task_id.value);
        }
        let (Some(uuid), Some(agent_id)) = (s.uuid, s.agent_id) else {
            return;
        };
        let call = ms::Call {
            framework_id: Some(m::FrameworkId {
                value: framework_id.to_string(),
            }),
            r#type: Some(ms::call::Type::Acknowledge as i32),
            acknowledge: Some(ms::call::Acknowledge {
                agent_id,
                task_id: s.task_id,
                uuid,
            }),
            ..Default::default()
        };
        self.state.acks_pending.fetch_add(1, Ordering::Relaxed);
        let (this, stream_id) = (self.clone(), stream_id.to_string());
        tokio::spawn(async move {
            let _ = this.call(&stream_id, call).await;
            this.state.acks_pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

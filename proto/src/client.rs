//! The client side of leader following, shared by the CLI, the agent and the framework SDK.
//!
//! Any master can be asked. A follower answers a leader-only call with `UNAVAILABLE` and, when
//! it knows the leader, the leader's address in the [`LEADER_METADATA_KEY`] metadata; the
//! client goes there directly. With no hint (no leader yet, master down) it tries the next
//! master, and after a whole round backs off exponentially with jitter, until its deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use crate::v1;
use crate::v1::operator_client::OperatorClient;
use crate::LEADER_METADATA_KEY;

/// First pause after a round of masters that all failed.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest pause between rounds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long to wait for a TCP connection to one master.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Most redirects followed in a row without a round of backoff (guards against two masters
/// pointing at each other during an election).
const MAX_REDIRECTS_PER_ROUND: usize = 8;

/// The status a master answers when a leader-only call reaches a non-leader.
pub fn not_leader(leader: Option<&str>) -> Status {
    match leader {
        Some(addr) => {
            let mut status = Status::unavailable(format!("not the leader; the leader is {addr}"));
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert(LEADER_METADATA_KEY, value);
            }
            status
        }
        None => Status::unavailable("no leader is elected at the moment; retry shortly"),
    }
}

/// The leader address a redirect carries, if `status` is one.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA_KEY)?
        .to_str()
        .ok()
        .map(str::to_string)
}

/// Parse a `host:port,host:port` master list.
pub fn parse_masters(list: &str) -> Result<Vec<String>, String> {
    let masters: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if masters.is_empty() {
        return Err("the master list is empty".into());
    }
    for m in &masters {
        match m.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("master address {m:?} is not host:port")),
        }
    }
    Ok(masters)
}

/// A channel to a master: every call carries this process's bearer token, if it has one
/// ([`set_token`]).
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Puts `authorization: Bearer <token>` on every call. Its `Debug` does not show the token.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<token>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The token set by [`set_token`]; `None` until it is called (then `CORRAL_TOKEN` is used).
static TOKEN: std::sync::RwLock<Option<Option<MetadataValue<Ascii>>>> = std::sync::RwLock::new(None);

fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, String> {
    let t = token.trim();
    let bad = || "the token must be printable ASCII without spaces".to_string();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let mut v: MetadataValue<Ascii> = format!("Bearer {t}").parse().map_err(|_| bad())?;
    v.set_sensitive(true);
    Ok(v)
}

/// Send `token` as `authorization: Bearer` on every channel made from now on (`None`: no
/// token). Until it is called, a process sends `CORRAL_TOKEN` from its environment, if
/// set. The error says why a token cannot be sent (not printable ASCII), without it.
pub fn set_token(token: Option<&str>) -> Result<(), String> {
    let value = token.map(bearer_value).transpose()?;
    *TOKEN.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
    Ok(())
}

fn current_token() -> Option<MetadataValue<Ascii>> {
    if let Some(set) = TOKEN.read().unwrap_or_else(|p| p.into_inner()).clone() {
        return set;
    }
    let from_env = std::env::var("CORRAL_TOKEN").ok().filter(|t| !t.is_empty());
    match from_env.as_deref().map(bearer_value) {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            tracing::warn!(reason = %e, "CORRAL_TOKEN is not sent");
            None
        }
        None => None,
    }
}

/// A lazily connected channel to the master at `addr` with Corral's limits, over TLS when
/// this process has set its client TLS ([`crate::tls::set_client`]), with its bearer token
/// when it has set one ([`set_token`]).
pub fn channel(addr: &str, request_timeout: Duration) -> Result<Channel, Status> {
    let tls = crate::tls::client();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad master address {addr:?}: {e}")))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.tonic(crate::tls::Role::Master, CONNECT_TIMEOUT))
            .map_err(|e| Status::invalid_argument(format!("TLS for {addr:?}: {e}")))?;
    }
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(request_timeout)
        .tcp_nodelay(true)
        // Notice a master that vanished without closing the connection (partition, pause).
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        Bearer(current_token()),
    ))
}

/// A client of the master quorum: remembers channels and the last known leader.
pub struct Masters {
    masters: Vec<String>,
    request_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
}

impl Masters {
    /// Clients of `masters` (addresses, any of them), each call bounded by `request_timeout`.
    pub fn new(masters: Vec<String>, request_timeout: Duration) -> Self {
        Masters {
            masters,
            request_timeout,
            channels: Mutex::default(),
            leader: Mutex::default(),
        }
    }

    /// The configured master addresses.
    pub fn addresses(&self) -> &[String] {
        &self.masters
    }

    /// The channel to `addr`, created once and reused.
    pub fn channel_to(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = channel(addr, self.request_timeout)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn remember_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Run `call` against the leader, following redirects and retrying other masters until
    /// `deadline` passes. Errors other than "not the leader / unreachable" return at once.
    pub async fn on_leader<T, F, Fut>(&self, deadline: Duration, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let give_up = Instant::now() + deadline;
        let mut backoff = BACKOFF_START;
        let mut last_error = Status::unavailable("no master could be reached");
        loop {
            // The last known leader first, then every master once.
            let last = self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut queue: Vec<String> = last.iter().cloned().collect();
            queue.extend(self.masters.iter().filter(|m| Some(*m) != last.as_ref()).cloned());
            let mut redirects = 0;
            let mut i = 0;
            while i < queue.len() {
                let addr = queue[i].clone();
                i += 1;
                if Instant::now() >= give_up {
                    return Err(deadline_error(last_error, deadline));
                }
                let attempt = call(self.channel_to(&addr)?);
                let outcome = tokio::time::timeout(give_up.saturating_duration_since(Instant::now()), attempt).await;
                let status = match outcome {
                    Ok(Ok(v)) => {
                        self.remember_leader(Some(addr));
                        return Ok(v);
                    }
                    Ok(Err(status)) => status,
                    Err(_) => return Err(deadline_error(last_error, deadline)),
                };
                if !retryable(&status) {
                    return Err(status);
                }
                tracing::debug!(master = %addr, code = ?status.code(), message = status.message(), "master call retry");
                if let Some(hint) = leader_hint(&status) {
                    if redirects < MAX_REDIRECTS_PER_ROUND && hint != addr {
                        redirects += 1;
                        queue.insert(i, hint);
                    }
                }
                self.remember_leader(None);
                last_error = status;
            }
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            let pause = backoff + Duration::from_millis(jitter);
            if Instant::now() + pause >= give_up {
                return Err(deadline_error(last_error, deadline));
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Whether another master (or the same one later) might answer differently: not the leader,
/// unreachable (tonic reports connection failures as UNAVAILABLE), or too slow (a paused
/// master: the per-request timeout cancels the call). Decided by code, never by text.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
    )
}

fn deadline_error(last: Status, deadline: Duration) -> Status {
    Status::unavailable(format!(
        "no leader answered within {deadline:?}; last error: {}",
        last.message()
    ))
}

/// The limits every Corral gRPC client applies to a generated client type.
/// A paged list call of the operator API (see `ListTasksRequest` in operator.proto).
pub trait Paged: Clone {
    /// One page of the answer.
    type Page;
    /// What a page lists.
    type Record;
    /// Ask for the page after `token`.
    fn set_token(&mut self, token: String);
    /// A page's records and the token of the next page (empty on the last).
    fn split(page: Self::Page) -> (Vec<Self::Record>, String);
    /// Make the call.
    fn call(
        client: OperatorClient<Channel>,
        req: Self,
    ) -> impl Future<Output = Result<tonic::Response<Self::Page>, Status>> + Send;
}

macro_rules! paged {
    ($req:ty, $page:ty, $record:ty, $field:ident, $method:ident) => {
        impl Paged for $req {
            type Page = $page;
            type Record = $record;
            fn set_token(&mut self, token: String) {
                self.page_token = token;
            }
            fn split(page: $page) -> (Vec<$record>, String) {
                (page.$field, page.next_page_token)
            }
            async fn call(mut client: OperatorClient<Channel>, req: Self) -> Result<tonic::Response<$page>, Status> {
                client.$method(req).await
            }
        }
    };
}

paged!(
    v1::ListTasksRequest,
    v1::ListTasksResponse,
    v1::TaskSummary,
    tasks,
    list_tasks
);
paged!(
    v1::ListAgentsRequest,
    v1::ListAgentsResponse,
    v1::AgentSummary,
    agents,
    list_agents
);
paged!(
    v1::ListFrameworksRequest,
    v1::ListFrameworksResponse,
    v1::FrameworkSummary,
    frameworks,
    list_frameworks
);

/// Every record the leader lists for `request` (its filters), page by page, each handed to
/// `each` as it arrives; `each` returns false to stop early. Each page is a call of its own,
/// retried on another master within `deadline` like any call.
pub async fn for_each<R: Paged>(
    masters: &Masters,
    deadline: Duration,
    mut request: R,
    mut each: impl FnMut(R::Record) -> bool,
) -> Result<(), Status> {
    loop {
        let page = masters
            .on_leader(deadline, |ch| {
                R::call(crate::limit_client!(OperatorClient::new(ch)), request.clone())
            })
            .await?
            .into_inner();
        let (records, next) = R::split(page);
        for r in records {
            if !each(r) {
                return Ok(());
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        request.set_token(next);
    }
}

/// Every record the leader lists for `request`, page by page.
pub async fn list_all<R: Paged>(masters: &Masters, deadline: Duration, request: R) -> Result<Vec<R::Record>, Status> {
    let mut out = Vec::new();
    for_each(masters, deadline, request, |r| {
        out.push(r);
        true
    })
    .await?;
    Ok(out)
}

/// Wrap a generated gRPC client so that it sends and accepts messages up to [`crate::MAX_MESSAGE_BYTES`].
#[macro_export]
macro_rules! limit_client {
    ($client:expr) => {
        $client
            .max_decoding_message_size($crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::MAX_MESSAGE_BYTES)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_sent_as_bearer_and_never_shown() {
        let v = bearer_value(" corral_abc ").unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer corral_abc");
        assert!(v.is_sensitive());
        assert!(bearer_value("a b").is_err() && bearer_value("").is_err() && bearer_value("é").is_err());
        let shown = format!("{:?}", Bearer(Some(v)));
        assert!(!shown.contains("abc"), "{shown}");
    }

    #[test]
    fn redirect_round_trip() {
        let s = not_leader(Some("10.0.0.2:5050"));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(leader_hint(&s).as_deref(), Some("10.0.0.2:5050"));
        assert_eq!(leader_hint(&not_leader(None)), None);
        assert_eq!(leader_hint(&Status::internal("x")), None);
    }

    #[test]
    fn master_lists() {
        assert_eq!(parse_masters("a:1, b:2").unwrap(), vec!["a:1", "b:2"]);
        assert!(parse_masters("").is_err());
        assert!(parse_masters("a").unwrap_err().contains("not host:port"));
        assert!(parse_masters("a:99999").is_err());
    }
}

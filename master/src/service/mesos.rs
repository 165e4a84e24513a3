//! The Mesos v1 Scheduler HTTP API, `POST /api/v1/scheduler`, on every master: existing
//! Mesos frameworks (pymesos, mesos-go, the Java and C++ v1 drivers) run unchanged.
//!
//! Bodies are `application/json` (Mesos' JSON) or `application/x-protobuf`. SUBSCRIBE
//! answers `200 OK` with a chunked stream of RecordIO-framed events and the subscription's
//! `Mesos-Stream-Id`; every other call carries that header and answers `202 Accepted`.
//! Refusals are plain text naming the problem: 400 for a malformed call, 401/403 for the
//! ACL, 403 for a call without the framework's current stream id, 413 for a body over
//! [`MAX_CALL_BYTES`], 415/406 for other media types, 503 while no leader can be reached.
//!
//! HTTP and gRPC frameworks are one kind of framework: each call is the `corral.v1`
//! Scheduler call of the same name ([`SchedulerService`]), run on the leader, so there is
//! one offer, one DRF order and one replicated state. As in Mesos, a call's outcome that
//! depends on the moment (an offer already gone, a task id taken) is not a refusal of the
//! call: an ACCEPT that cannot launch answers 202 and its tasks are reported TASK_DROPPED
//! (TASK_ERROR when they are invalid) on the stream; a KILL of an unknown task answers with
//! a reconciliation (TASK_UNKNOWN); MESSAGE and SHUTDOWN to an executor that is not there
//! are dropped.
//!
//! **Any master serves it.** A follower relays each call, and the SUBSCRIBE stream, to the
//! leader (waiting up to [`RELAY_HOLD`] for one to be elected) instead of redirecting: a
//! Mesos client knows one address and, after a 307, would stay on the leader's, and retry
//! it forever once that leader died. When the leader dies the relayed stream ends, the
//! client subscribes again through the same master and gets the new leader. The cost is one
//! more hop per call through a follower (see the README's "Running an existing Mesos
//! framework"). A relayed request carries [`RELAYED`] and is never relayed again.
//!
//! **The failover window.** A client's call in flight when the leader dies reaches the new
//! leader before the client has subscribed to it. For [`FAILOVER_GRACE`] after a leader
//! takes office, a call of a framework that the replicated state holds but that has not
//! subscribed to this leader yet is answered 202: an ACKNOWLEDGE is applied (it needs no
//! session), anything else is dropped, as calls to a dying Mesos master are lost (offers of
//! the old leader are void anyway, and the framework's re-subscription reconciles). Without
//! this, such a call would fail, and pymesos's driver stops at a failed call made from its
//! event loop.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use corral_proto::mesos::convert;
use corral_proto::mesos::media::{Media, MAX_CALL_BYTES};
use corral_proto::mesos::v1::scheduler as ms;
use corral_proto::mesos::{json, recordio};
use corral_proto::v1;
use corral_proto::v1::scheduler_server::Scheduler as _;
use prost::Message as _;
use tonic::{Code, Request, Status};

use crate::acl::{Principal, ON_BEHALF_OF};
use crate::leader::{event, Leader};
use crate::node::Shared;
use crate::raft::types::Outcome;
use crate::service::scheduler::{EventStream, SchedulerService};
use crate::service::ui::RELAYED;
use crate::state::FrameworkState;

/// The route's path.
pub const PATH: &str = "/api/v1/scheduler";

/// The header naming a framework's subscription (lower case, as HTTP/2 and our HTTP client
/// spell it; HTTP/1 header names are case-insensitive).
pub const STREAM_ID: &str = "mesos-stream-id";

/// How long a call waits for a leader to reach: an election (about 0.3 s) and a leader that
/// just died and is still named (up to 3 heartbeats). Below pymesos's 10 s call timeout.
pub const RELAY_HOLD: Duration = Duration::from_secs(6);

/// How long one relay attempt waits for the leader's answer to start.
pub const RELAY_ATTEMPT: Duration = Duration::from_secs(3);

/// Pause between relay attempts (a dead leader refuses connections at once).
const RELAY_RETRY: Duration = Duration::from_millis(100);

/// How long after a leader takes office calls of frameworks not yet subscribed to it are
/// answered 202 (see the module's "The failover window").
pub const FAILOVER_GRACE: Duration = Duration::from_secs(10);

const CALL: &str = "mesos.v1.scheduler.Call";
const EVENT: &str = "mesos.v1.scheduler.Event";

pub(crate) fn router(shared: Shared) -> Router {
    Router::new().route(PATH, post(scheduler)).with_state(shared)
}

pub(crate) fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::debug!(status = status.as_u16(), %message, "mesos api call refused");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// A Corral refusal as the HTTP status Mesos clients expect.
pub(crate) fn refuse_status(s: &Status) -> Response {
    let code = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(code, s.message())
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// The call's type, or None for a missing or unknown one.
fn call_type(call: &ms::Call) -> Option<ms::call::Type> {
    call.r#type
        .and_then(|t| ms::call::Type::try_from(t).ok())
        .filter(|t| *t != ms::call::Type::Unknown)
}

/// What Mesos checks of a call before it looks at any state: the framework id of every
/// call but SUBSCRIBE, and the payload its type needs, each refusal naming the field.
fn check_call(call: &ms::Call, kind: ms::call::Type) -> Result<(), String> {
    use ms::call::Type as T;
    let payload = |present: bool, field: &str| {
        if present {
            Ok(())
        } else {
            Err(format!("{field}: missing for a {} call", kind.as_str_name()))
        }
    };
    if kind != T::Subscribe {
        match &call.framework_id {
            None => return Err(format!("framework_id: missing for a {} call", kind.as_str_name())),
            Some(id) => crate::validate::id("framework_id.value", &id.value)?,
        }
    }
    match kind {
        T::Subscribe => payload(call.subscribe.is_some(), "subscribe"),
        T::Accept => {
            payload(call.accept.is_some(), "accept")?;
            if call.accept.as_ref().is_some_and(|a| a.offer_ids.is_empty()) {
                return Err("accept.offer_ids: at least one offer is required".into());
            }
            Ok(())
        }
        T::Decline => payload(call.decline.is_some(), "decline"),
        T::Kill => payload(call.kill.is_some(), "kill"),
        T::Shutdown => payload(call.shutdown.is_some(), "shutdown"),
        T::Acknowledge => payload(call.acknowledge.is_some(), "acknowledge"),
        T::Reconcile => payload(call.reconcile.is_some(), "reconcile"),
        T::Message => payload(call.message.is_some(), "message"),
        T::UpdateFramework => payload(call.update_framework.is_some(), "update_framework"),
        _ => Ok(()),
    }
}

/// A Mesos API request read: its headers, body, media type, decoded call and caller.
pub(crate) struct Received<T> {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as it came (relayed as is).
    pub body: Bytes,
    /// Its media type.
    pub media: Media,
    /// The call.
    pub call: T,
    /// Who made it.
    pub principal: Principal,
}

/// Read a Mesos API call of type `T` (message `full_name`) and identify its caller, or the
/// refusal: 413 over [`MAX_CALL_BYTES`], 415 for another media type, 400 when it does not
/// decode, 401 for an unknown token.
pub(crate) async fn receive<T: prost::Message + Default>(
    shared: &Shared,
    request: axum::extract::Request,
    full_name: &str,
) -> Result<Received<T>, Response> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_CALL_BYTES).await.map_err(|_| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: over the limit of {MAX_CALL_BYTES} bytes for a call"),
        )
    })?;
    let headers = parts.headers;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media = Media::of_request(content_type).map_err(|why| refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, why))?;
    let call = match media {
        Media::Json => json::decode(full_name, &body)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("malformed JSON call: {e}")))?,
        Media::Protobuf => T::decode(body.as_ref())
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("malformed protobuf call: {e}")))?,
    };
    let certs = parts
        .extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs);
    let principal = shared
        .access
        .identify_http(&headers, certs.as_deref().map(Vec::as_slice))
        .map_err(|s| refuse_status(&s))?;
    Ok(Received {
        headers,
        body,
        media,
        call,
        principal,
    })
}

/// `POST /api/v1/scheduler`.
async fn scheduler(State(shared): State<Shared>, request: axum::extract::Request) -> Response {
    let Received {
        headers,
        body,
        media,
        call,
        principal,
    } = match receive::<ms::Call>(&shared, request, CALL).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Some(kind) = call_type(&call) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "type: missing or not a known call type (SUBSCRIBE, TEARDOWN, ACCEPT, DECLINE, REVIVE, KILL, SHUTDOWN, ACKNOWLEDGE, RECONCILE, MESSAGE, REQUEST, SUPPRESS, UPDATE_FRAMEWORK, ...)",
        );
    };
    if let Err(why) = check_call(&call, kind) {
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    let call_to = Call {
        principal: &principal,
        headers: &headers,
        body: &body,
        path: PATH,
    };
    lead_or_relay(&shared, call_to, |leader| {
        serve(&shared, leader, principal.clone(), &headers, media, call, kind)
    })
    .await
}

/// A Mesos API call as it came, for relaying it.
pub(crate) struct Call<'a> {
    /// Who made it (identified here; the leader is told, see [`Access::identify_http`]).
    ///
    /// [`Access::identify_http`]: crate::acl::Access::identify_http
    pub principal: &'a Principal,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its body.
    pub body: &'a Bytes,
    /// Its path.
    pub path: &'static str,
}

/// Serve a Mesos API call with `serve` if this master leads, else relay it to the leader,
/// waiting up to [`RELAY_HOLD`] for one that answers (see the module doc).
pub(crate) async fn lead_or_relay<F, Fut>(shared: &Shared, call: Call<'_>, serve: F) -> Response
where
    F: FnOnce(Leader) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let deadline = Instant::now() + RELAY_HOLD;
    loop {
        if let Ok(leader) = shared.leading() {
            return serve(leader).await;
        }
        if let Some(by) = call.headers.get(RELAYED) {
            // Relayed to a master that no longer leads: the relaying master tries again.
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "master {} is not the leader (relayed by master {})",
                    shared.config.id,
                    corral_proto::quote(&String::from_utf8_lossy(by.as_bytes()))
                ),
            );
        }
        let leader = shared.leader().filter(|(id, _)| *id != shared.config.id);
        if let Some((id, address)) = leader {
            if let Some(answer) = relay(shared, &call, id, &address).await {
                return answer;
            }
        }
        if Instant::now() >= deadline {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no leader could be reached within {RELAY_HOLD:?} (master {} is not the leader); try again",
                    shared.config.id
                ),
            );
        }
        tokio::time::sleep(RELAY_RETRY).await;
    }
}

/// Relay the call to the leader at `address` and pass its answer on as it comes. None when
/// the leader did not answer or no longer leads (it has not taken the call): the caller
/// tries again once a leader is known.
async fn relay(shared: &Shared, call: &Call<'_>, leader_id: u64, address: &str) -> Option<Response> {
    let Call {
        principal,
        headers,
        body,
        path,
    } = *call;
    let me = shared.config.id.to_string();
    let on_behalf = shared.access.relayed_name(headers, principal);
    let mut sent: Vec<(&str, &str)> = vec![(RELAYED, me.as_str())];
    for name in ["content-type", "accept", "authorization", STREAM_ID] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            sent.push((name, v));
        }
    }
    if let Some(name) = on_behalf.as_deref() {
        sent.push((ON_BEHALF_OF, name));
    }
    let opened = corral_proto::http::request(
        address,
        corral_proto::tls::Role::Master,
        "POST",
        path,
        &sent,
        body,
        RELAY_ATTEMPT,
    )
    .await;
    let opened = match opened {
        Ok(o) if o.status != StatusCode::SERVICE_UNAVAILABLE.as_u16() => o,
        Ok(_) => {
            tracing::debug!(leader = leader_id, "leader no longer leads; relaying again");
            return None;
        }
        Err(e) => {
            tracing::debug!(leader = leader_id, error = %e, "leader did not answer a relayed call; relaying again");
            return None;
        }
    };
    // Passed on as it comes: a SUBSCRIBE's stream, or an answer of any size (GET_STATE). Once
    // the head has come the leader has taken the call: it is never sent again.
    let status = StatusCode::from_u16(opened.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from_stream(opened.body));
    *response.status_mut() = status;
    for name in ["content-type", STREAM_ID] {
        let value = opened.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        if let Some(v) = value.and_then(|v| header::HeaderValue::from_str(v).ok()) {
            if let Ok(n) = header::HeaderName::from_bytes(name.as_bytes()) {
                response.headers_mut().insert(n, v);
            }
        }
    }
    Some(response)
}

/// Whether a call's framework may call now.
enum Subscription {
    /// Subscribed to this leader with the stream the call names.
    Current,
    /// Subscribed with another stream.
    OtherStream,
    /// Known, not subscribed to this leader yet, within [`FAILOVER_GRACE`] of its start.
    Grace,
    /// Not subscribed to this leader.
    None,
}

/// Serve `call` on the leader of `leader`'s term.
async fn serve(
    shared: &Shared,
    leader: Leader,
    principal: Principal,
    headers: &HeaderMap,
    media: Media,
    call: ms::Call,
    kind: ms::call::Type,
) -> Response {
    use ms::call::Type as T;
    let svc = SchedulerService::new(shared.clone());
    if kind == T::Subscribe {
        return subscribe(shared, &svc, principal, headers, media, call).await;
    }
    let framework_id = call.framework_id.as_ref().map(|f| f.value.clone()).unwrap_or_default();
    let Some(stream_id) = headers.get(STREAM_ID).and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "Mesos-Stream-Id: missing; every call but SUBSCRIBE carries the id its SUBSCRIBE answered with",
        );
    };
    let (fid, sid) = (framework_id.clone(), stream_id.clone());
    let subscription = leader
        .ask(move |shared, soft| match soft.frameworks.get(&fid) {
            Some(s) if s.stream_id == sid => Subscription::Current,
            Some(_) => Subscription::OtherStream,
            None => {
                let known = shared
                    .state
                    .read()
                    .app
                    .frameworks
                    .get(&fid)
                    .is_some_and(|f| f.state != FrameworkState::TornDown);
                if known && soft.since.elapsed() < FAILOVER_GRACE && !soft.framework_gone_at.contains_key(&fid) {
                    Subscription::Grace
                } else {
                    Subscription::None
                }
            }
        })
        .await;
    match subscription {
        Err(_) => return refuse_status(&shared.not_leading()),
        Ok(Subscription::Current) => {}
        Ok(Subscription::OtherStream) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Mesos-Stream-Id: {} is not the current subscription of framework {framework_id}",
                    corral_proto::quote(&stream_id)
                ),
            )
        }
        Ok(Subscription::None) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "framework_id: {} is not subscribed; SUBSCRIBE first",
                    corral_proto::quote(&framework_id)
                ),
            )
        }
        Ok(Subscription::Grace) => return during_failover(shared, &framework_id, call, kind).await,
    }
    let header = v1::CallHeader {
        framework_id: framework_id.clone(),
        stream_id,
    };
    let done = match kind {
        T::Subscribe => unreachable!("SUBSCRIBE is served above"),
        T::Teardown => svc
            .teardown(Request::new(v1::TeardownRequest { header: Some(header) }))
            .await
            .map(drop),
        T::Accept => return accept(shared, &svc, &leader, header, call.accept.unwrap_or_default()).await,
        T::Decline => {
            let d = call.decline.unwrap_or_default();
            svc.decline(Request::new(v1::DeclineRequest {
                header: Some(header),
                offer_ids: d.offer_ids.into_iter().map(|o| o.value).collect(),
                filters: d.filters.map(filters),
            }))
            .await
            .map(drop)
        }
        T::Revive => svc
            .revive(Request::new(v1::ReviveRequest { header: Some(header) }))
            .await
            .map(drop),
        T::Suppress => svc
            .suppress(Request::new(v1::SuppressRequest { header: Some(header) }))
            .await
            .map(drop),
        T::Kill => {
            let k = call.kill.unwrap_or_default();
            let grace = k
                .kill_policy
                .and_then(|p| p.grace_period)
                .map_or(0, |d| u64::try_from(d.nanoseconds / 1_000_000).unwrap_or(0));
            let agent_id = k.agent_id.map(|a| a.value).unwrap_or_default();
            let killed = svc
                .kill(Request::new(v1::KillRequest {
                    header: Some(header.clone()),
                    task_id: k.task_id.value.clone(),
                    agent_id: agent_id.clone(),
                    kill_grace_period_ms: grace,
                }))
                .await;
            match killed {
                // As Mesos: a kill of a task the master does not know is answered with a
                // reconciliation of that task (TASK_UNKNOWN on the stream).
                Err(s) if s.code() == Code::NotFound => svc
                    .reconcile(Request::new(v1::ReconcileRequest {
                        header: Some(header),
                        tasks: vec![v1::ReconcileTask {
                            task_id: k.task_id.value,
                            agent_id,
                        }],
                    }))
                    .await
                    .map(drop),
                other => other.map(drop),
            }
        }
        T::Shutdown => {
            let s = call.shutdown.unwrap_or_default();
            best_effort(
                svc.shutdown(Request::new(v1::ShutdownRequest {
                    header: Some(header),
                    agent_id: s.agent_id.value,
                    executor_id: s.executor_id.value,
                }))
                .await
                .map(drop),
            )
        }
        T::Acknowledge => {
            let a = call.acknowledge.unwrap_or_default();
            svc.acknowledge(Request::new(v1::AcknowledgeRequest {
                header: Some(header),
                agent_id: a.agent_id.value,
                task_id: a.task_id.value,
                uuid: a.uuid,
                acks: Vec::new(),
            }))
            .await
            .map(drop)
        }
        T::Reconcile => {
            let r = call.reconcile.unwrap_or_default();
            svc.reconcile(Request::new(v1::ReconcileRequest {
                header: Some(header),
                tasks: r
                    .tasks
                    .into_iter()
                    .map(|t| v1::ReconcileTask {
                        task_id: t.task_id.value,
                        agent_id: t.agent_id.map(|a| a.value).unwrap_or_default(),
                    })
                    .collect(),
            }))
            .await
            .map(drop)
        }
        T::Message => {
            let m = call.message.unwrap_or_default();
            best_effort(
                svc.message(Request::new(v1::MessageRequest {
                    header: Some(header),
                    agent_id: m.agent_id.value,
                    executor_id: m.executor_id.value,
                    data: m.data,
                }))
                .await
                .map(drop),
            )
        }
        T::UpdateFramework => {
            let u = call.update_framework.unwrap_or_default();
            update_framework(shared, &leader, &principal, &framework_id, u).await
        }
        // Corral has no resource requests, inverse offers or offer operations other than
        // LAUNCH: accepted and ignored, as the issue of these calls expects no answer.
        T::Request
        | T::AcceptInverseOffers
        | T::DeclineInverseOffers
        | T::AcknowledgeOperationStatus
        | T::ReconcileOperations
        | T::Unknown => Ok(()),
    };
    match done {
        Ok(()) => accepted(),
        Err(s) => refuse_status(&s),
    }
}

/// MESSAGE and SHUTDOWN reach an executor only if it runs and its agent is attached now; as
/// in Mesos, one that does not is dropped, not refused.
fn best_effort(done: Result<(), Status>) -> Result<(), Status> {
    match done {
        Err(s) if matches!(s.code(), Code::NotFound | Code::Unavailable) => {
            tracing::debug!(reason = %s.message(), "scheduler call to an executor dropped");
            Ok(())
        }
        other => other,
    }
}

/// A Mesos decline filter, as a Mesos master takes it: a negative or not-a-number
/// `refuse_seconds` is the default (5 s), a longer one than Corral keeps is that longest
/// ([`crate::validate::MAX_REFUSE_SECONDS`], a year) rather than a refusal: frameworks
/// decline "for ever" with huge values.
fn filters(f: corral_proto::mesos::v1::Filters) -> v1::Filters {
    let refuse = f.refuse_seconds.map(|s| {
        if s.is_nan() || s < 0.0 {
            crate::validate::DEFAULT_REFUSE_SECONDS
        } else {
            s.min(crate::validate::MAX_REFUSE_SECONDS)
        }
    });
    v1::Filters { refuse_seconds: refuse }
}

/// A call of a framework that has not subscribed to this leader yet, in the failover
/// window: an ACKNOWLEDGE is applied, anything else dropped (see the module doc).
async fn during_failover(shared: &Shared, framework_id: &str, call: ms::Call, kind: ms::call::Type) -> Response {
    if let Some(a) = call.acknowledge.filter(|_| kind == ms::call::Type::Acknowledge) {
        let req = v1::AcknowledgeRequest {
            agent_id: a.agent_id.value,
            task_id: a.task_id.value,
            uuid: a.uuid,
            ..Default::default()
        };
        let acks = match crate::service::scheduler::acknowledgements(framework_id, req) {
            Ok(acks) => acks,
            Err(s) => return refuse_status(&s),
        };
        let kind = v1::command::Kind::AcknowledgeStatuses(v1::AcknowledgeStatuses { acks });
        return match shared.write(kind).await {
            Ok(Outcome::Applied) => accepted(),
            Ok(Outcome::Rejected(why)) => refuse(StatusCode::CONFLICT, why),
            Err(e) => refuse_status(&Status::from(e)),
        };
    }
    tracing::info!(%framework_id, call = kind.as_str_name(), "call of a framework not yet subscribed to this new leader dropped");
    accepted()
}

/// SUBSCRIBE: the framework's events as a RecordIO stream.
async fn subscribe(
    shared: &Shared,
    svc: &SchedulerService,
    principal: Principal,
    headers: &HeaderMap,
    media: Media,
    call: ms::Call,
) -> Response {
    const FIELD: &str = "subscribe.framework_info";
    if headers.contains_key(STREAM_ID) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Mesos-Stream-Id: a SUBSCRIBE must not carry one (it is the answer's)",
        );
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let answer = match Media::answer(accept, media) {
        Ok(m) => m,
        Err(why) => return refuse(StatusCode::NOT_ACCEPTABLE, why),
    };
    let sub = call.subscribe.unwrap_or_default();
    let mut info = match convert::framework_from_mesos(FIELD, &sub.framework_info) {
        Ok(info) => info,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    // A Mesos master without authentication takes the principal a framework names for
    // itself (Marathon, say, always names one). Corral records who subscribed instead: an
    // anonymous caller's claim is not checked, and not kept. (With an ACL, an anonymous
    // caller may do nothing anyway; an identified one must name itself or nobody.)
    if principal.name.is_empty() && !info.principal.is_empty() {
        tracing::debug!(claimed = %info.principal, "an anonymous framework names a principal; ignored");
        info.principal.clear();
    }
    if let Some(id) = call.framework_id {
        if info.framework_id.is_empty() {
            info.framework_id = id.value;
        } else if info.framework_id != id.value {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("framework_id: differs from {FIELD}.id"),
            );
        }
    }
    let req = v1::SubscribeRequest {
        framework: Some(info),
        suppressed: !sub.suppressed_roles.is_empty(),
    };
    let mut events = match svc.subscribe_as(principal, req, FIELD).await {
        Ok(events) => events,
        Err(s) => return refuse_status(&s),
    };
    // The first event is SUBSCRIBED: its stream id goes in the answer's header.
    let first = tokio_stream::StreamExt::next(&mut events).await;
    let Some(Ok(v1::Event {
        event: Some(v1::event::Event::Subscribed(subscribed)),
    })) = first
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the subscription ended before it began (the leader changed); subscribe again",
        );
    };
    let stream_id = subscribed.stream_id.clone();
    let master = (shared.config.id, shared.config.advertise.clone());
    let mut stream = MesosEvents {
        events,
        media: answer,
        master,
        first: None,
        ended: false,
    };
    stream.first = Some(stream.frame(&v1::Event {
        event: Some(v1::event::Event::Subscribed(subscribed)),
    }));
    let Ok(stream_header) = header::HeaderValue::from_str(&stream_id) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "stream id is not a header value");
    };
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(answer.name()));
    response.headers_mut().insert(STREAM_ID, stream_header);
    response
}

/// ACCEPT: the LAUNCH operations' tasks launched on the offers. Answers 202 once the launch
/// is committed or refused; a refusal is reported on the stream, task by task (see the
/// module doc). A call that cannot be read as Corral tasks is refused (400).
async fn accept(
    shared: &Shared,
    svc: &SchedulerService,
    leader: &Leader,
    header: v1::CallHeader,
    a: ms::call::Accept,
) -> Response {
    use corral_proto::mesos::v1::offer::operation::Type as Op;
    let mut tasks = Vec::new();
    for (i, op) in a.operations.iter().enumerate() {
        match op.r#type.and_then(|t| Op::try_from(t).ok()) {
            Some(Op::Launch) => {
                let Some(launch) = &op.launch else {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        format!("accept.operations[{i}].launch: missing for a LAUNCH operation"),
                    );
                };
                for (j, t) in launch.task_infos.iter().enumerate() {
                    match convert::task_from_mesos(&format!("accept.operations[{i}].launch.task_infos[{j}]"), t) {
                        Ok(t) => tasks.push(t),
                        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
                    }
                }
            }
            Some(other) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "accept.operations[{i}].type: {} is not supported (Corral runs LAUNCH operations only)",
                        other.as_str_name()
                    ),
                )
            }
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("accept.operations[{i}].type: missing or unknown"),
                )
            }
        }
    }
    let framework_id = header.framework_id.clone();
    let offer_ids: Vec<String> = a.offer_ids.into_iter().map(|o| o.value).collect();
    let filters = a.filters.map(filters);
    // Tasks that cannot run anywhere, or reuse an id (S2), are the tasks' fault: TASK_ERROR,
    // and the offers go back (declined) as the ACCEPT used them.
    if let Err(why) = invalid_tasks(shared, &framework_id, &tasks) {
        let decline = v1::DeclineRequest {
            header: Some(header),
            offer_ids,
            filters,
        };
        if let Err(s) = svc.decline(Request::new(decline)).await {
            tracing::debug!(%framework_id, error = %s.message(), "offers of an invalid accept not declined");
        }
        return report(
            shared,
            leader,
            &framework_id,
            tasks,
            v1::TaskState::TaskError,
            v1::Reason::TaskInvalid,
            why,
        )
        .await;
    }
    let operations = if tasks.is_empty() {
        Vec::new()
    } else {
        vec![v1::Operation {
            operation: Some(v1::operation::Operation::Launch(v1::LaunchOperation {
                tasks: tasks.clone(),
            })),
        }]
    };
    let done = svc
        .accept(Request::new(v1::AcceptRequest {
            header: Some(header),
            offer_ids,
            operations,
            filters,
        }))
        .await;
    match done {
        Ok(_) => accepted(),
        Err(refused) if tasks.is_empty() => refuse_status(&refused),
        // The offers are gone (used, rescinded, of an earlier leader), or the launch could
        // not be committed: the tasks were not launched.
        Err(refused) => {
            let why = refused.message().to_string();
            report(
                shared,
                leader,
                &framework_id,
                tasks,
                v1::TaskState::TaskDropped,
                v1::Reason::InvalidOffers,
                why,
            )
            .await
        }
    }
}

/// Why `tasks` cannot be launched whatever the offers: invalid, or an id the framework
/// used already (S2; apply checks again).
fn invalid_tasks(shared: &Shared, framework_id: &str, tasks: &[v1::TaskInfo]) -> Result<(), String> {
    const FIELD: &str = "accept.operations.launch.task_infos";
    let Some(first) = tasks.first() else {
        return Ok(());
    };
    crate::validate::launch_request(FIELD, &first.agent_id, tasks)?;
    let state = shared.state.read();
    match tasks.iter().position(|t| {
        state
            .app
            .tasks
            .contains_key(&(framework_id.to_string(), t.task_id.clone()))
    }) {
        Some(i) => Err(format!(
            "{FIELD}[{i}].task_id: {} was already used by this framework",
            corral_proto::quote(&tasks[i].task_id)
        )),
        None => Ok(()),
    }
}

/// Tell the framework that `tasks` were not launched, as updates in `state` with `why`
/// (no uuid: nothing to acknowledge), and answer the ACCEPT with 202.
async fn report(
    shared: &Shared,
    leader: &Leader,
    framework_id: &str,
    tasks: Vec<v1::TaskInfo>,
    state: v1::TaskState,
    reason: v1::Reason,
    why: String,
) -> Response {
    tracing::debug!(%framework_id, state = state.as_str_name(), %why, "accepted tasks not launched");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let framework_id = framework_id.to_string();
    let sent = leader
        .ask(move |_, soft| {
            for t in tasks {
                let status = v1::TaskStatus {
                    task_id: t.task_id,
                    state: state as i32,
                    message: why.clone(),
                    agent_id: t.agent_id,
                    framework_id: framework_id.clone(),
                    reason: reason as i32,
                    source: v1::Source::Master as i32,
                    timestamp_ms: now_ms,
                    ..Default::default()
                };
                soft.send_framework(
                    &framework_id,
                    event(v1::event::Event::Update(v1::Update { status: Some(status) })),
                );
            }
        })
        .await;
    match sent {
        Ok(()) => accepted(),
        Err(_) => refuse_status(&shared.not_leading()),
    }
}

/// UPDATE_FRAMEWORK: a new name or failover timeout (Corral keeps a framework's role and
/// user for life), and suppression by `suppressed_roles`.
async fn update_framework(
    shared: &Shared,
    leader: &Leader,
    principal: &Principal,
    framework_id: &str,
    u: ms::call::UpdateFramework,
) -> Result<(), Status> {
    const FIELD: &str = "update_framework.framework_info";
    let mut info = convert::framework_from_mesos(FIELD, &u.framework_info).map_err(Status::invalid_argument)?;
    if info.framework_id != framework_id {
        return Err(Status::invalid_argument(format!(
            "{FIELD}.id: must be the call's framework_id"
        )));
    }
    crate::validate::framework_request(FIELD, &info).map_err(Status::invalid_argument)?;
    {
        let state = shared.state.read();
        let Some(f) = state.app.frameworks.get(framework_id) else {
            return Err(Status::not_found(format!("framework_id: {framework_id} is not known")));
        };
        let role = if info.role.is_empty() {
            crate::state::DEFAULT_ROLE
        } else {
            info.role.as_str()
        };
        if role != f.role {
            return Err(Status::invalid_argument(format!(
                "{FIELD}.role: a framework's role cannot change (it is {})",
                corral_proto::quote(&f.role)
            )));
        }
        if info.user != f.user {
            return Err(Status::invalid_argument(format!(
                "{FIELD}.user: a framework's user cannot change (it is {})",
                corral_proto::quote(&f.user)
            )));
        }
        principal.teardown(framework_id, &f.principal)?;
        info.principal = f.principal.clone();
        info.role = f.role.clone();
    }
    let kind = v1::command::Kind::UpdateFramework(v1::UpdateFramework { info: Some(info) });
    if let Outcome::Rejected(why) = shared.write(kind).await? {
        return Err(Status::failed_precondition(why));
    }
    let (id, suppress) = (framework_id.to_string(), !u.suppressed_roles.is_empty());
    leader
        .ask(move |_, soft| {
            if suppress {
                soft.suppressed.insert(id);
            } else if soft.suppressed.remove(&id) {
                soft.full_pass = true;
            }
        })
        .await
        .map_err(|_| shared.not_leading())?;
    shared.allocate_now.notify_one();
    Ok(())
}

/// A subscription's events as Mesos events, RecordIO-framed in the media type asked for.
/// Ends when the subscription does (replaced, torn down, or the leader's term ended).
struct MesosEvents {
    events: EventStream,
    media: Media,
    /// This master (id, address), for SUBSCRIBED's `master_info`.
    master: (u64, String),
    /// SUBSCRIBED, framed, to send first.
    first: Option<Bytes>,
    /// An error ended the stream (sent as an ERROR event).
    ended: bool,
}

impl MesosEvents {
    fn frame(&self, ev: &v1::Event) -> Bytes {
        let ev = convert::scheduler_event_to_mesos(ev, (self.master.0, &self.master.1));
        let bytes = match self.media {
            Media::Protobuf => ev.encode_to_vec(),
            // Encoding a message of our own definitions cannot fail; an empty record keeps
            // the stream in step if it ever did.
            Media::Json => json::encode(EVENT, &ev).unwrap_or_default(),
        };
        Bytes::from(recordio::frame(&bytes))
    }
}

impl tokio_stream::Stream for MesosEvents {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.events).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(ev))) => Poll::Ready(Some(Ok(self.frame(&ev)))),
            Poll::Ready(Some(Err(status))) => {
                self.ended = true;
                let error = v1::Event {
                    event: Some(v1::event::Event::Error(v1::Error {
                        message: status.message().to_string(),
                    })),
                };
                Poll::Ready(Some(Ok(self.frame(&error))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decline_filters_are_taken_as_a_mesos_master_takes_them() {
        let f = |s: f64| {
            filters(corral_proto::mesos::v1::Filters {
                refuse_seconds: Some(s),
            })
            .refuse_seconds
        };
        assert_eq!(f(2.5), Some(2.5));
        assert_eq!(f(-1.0), Some(crate::validate::DEFAULT_REFUSE_SECONDS));
        assert_eq!(f(f64::NAN), Some(crate::validate::DEFAULT_REFUSE_SECONDS));
        assert_eq!(f(1e12), Some(crate::validate::MAX_REFUSE_SECONDS));
        assert_eq!(f(f64::INFINITY), Some(crate::validate::MAX_REFUSE_SECONDS));
        let none = filters(corral_proto::mesos::v1::Filters { refuse_seconds: None });
        assert_eq!(none.refuse_seconds, None);
    }
}

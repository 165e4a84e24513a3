//! The Mesos v1 Executor HTTP API: `POST /api/v1/executor`, bodies in
//! `application/json` (Mesos' JSON) or `application/x-protobuf`.
//!
//! SUBSCRIBE answers `200 OK` with a chunked stream of RecordIO-framed events in the media
//! type the executor accepts; UPDATE, MESSAGE and HEARTBEAT answer `202 Accepted`. A
//! refused call gets a 4xx and a plain-text message naming the problem: 400 for a
//! malformed call, 403 for a call before SUBSCRIBE, 404 for an executor that does not run
//! here, 406/415 for media types other than those two, 413 for a body over
//! [`MAX_CALL_BYTES`].

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use corral_proto::mesos::media::{self, Media};
use corral_proto::mesos::v1::executor as me;
use corral_proto::mesos::{json, recordio};
use prost::Message;

use crate::tasks::{CallError, Subscription, Tasks, HEARTBEAT_INTERVAL};

/// Largest call body accepted.
pub const MAX_CALL_BYTES: usize = media::MAX_CALL_BYTES;

/// The route's path.
pub const PATH: &str = "/api/v1/executor";

const CALL: &str = "mesos.v1.executor.Call";
const EVENT: &str = "mesos.v1.executor.Event";

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::debug!(status = status.as_u16(), %message, "executor call refused");
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}

fn call_error(e: CallError) -> Response {
    let status = match e {
        CallError::Invalid(_) => StatusCode::BAD_REQUEST,
        CallError::UnknownExecutor(_) => StatusCode::NOT_FOUND,
        CallError::NotSubscribed(_) => StatusCode::FORBIDDEN,
    };
    refuse(status, e.to_string())
}

/// `POST /api/v1/executor`.
pub async fn handle(State(tasks): State<Tasks>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let request = match Media::of_request(content_type) {
        Ok(m) => m,
        Err(why) => return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, why),
    };
    let call: me::Call = match request {
        Media::Json => match json::decode(CALL, &body) {
            Ok(c) => c,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("malformed JSON call: {e}")),
        },
        Media::Protobuf => match me::Call::decode(body.as_ref()) {
            Ok(c) => c,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("malformed protobuf call: {e}")),
        },
    };
    if call.framework_id.value.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "framework_id: missing");
    }
    if call.executor_id.value.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "executor_id: missing");
    }
    let key = (call.framework_id.value.clone(), call.executor_id.value.clone());
    let kind = call.r#type.and_then(|t| me::call::Type::try_from(t).ok());
    match kind {
        Some(me::call::Type::Subscribe) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let answer = match Media::answer(accept, request) {
                Ok(m) => m,
                Err(why) => return refuse(StatusCode::NOT_ACCEPTABLE, why),
            };
            let Some(subscribe) = call.subscribe else {
                return refuse(StatusCode::BAD_REQUEST, "subscribe: missing for a SUBSCRIBE call");
            };
            // Unacknowledged updates are checkpointed (fsync) while subscribing.
            let t = tasks.clone();
            let subscribed = tokio::task::spawn_blocking(move || t.subscribe(&key, subscribe)).await;
            match subscribed {
                Ok(Ok(s)) => stream(s, answer),
                Ok(Err(e)) => call_error(e),
                Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("subscription failed: {e}")),
            }
        }
        Some(me::call::Type::Update) => {
            let Some(update) = call.update else {
                return refuse(StatusCode::BAD_REQUEST, "update: missing for an UPDATE call");
            };
            let t = tasks.clone();
            match tokio::task::spawn_blocking(move || t.executor_update(&key, &update.status)).await {
                Ok(Ok(())) => StatusCode::ACCEPTED.into_response(),
                Ok(Err(e)) => call_error(e),
                Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("update failed: {e}")),
            }
        }
        Some(me::call::Type::Message) => {
            let Some(message) = call.message else {
                return refuse(StatusCode::BAD_REQUEST, "message: missing for a MESSAGE call");
            };
            match tasks.executor_message(&key, message.data) {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(e) => call_error(e),
            }
        }
        Some(me::call::Type::Heartbeat) => match tasks.check_subscribed(&key) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(e) => call_error(e),
        },
        Some(me::call::Type::Unknown) | None => refuse(
            StatusCode::BAD_REQUEST,
            "type: missing or not a known call type (SUBSCRIBE, UPDATE, MESSAGE, HEARTBEAT)",
        ),
    }
}

/// The answer to SUBSCRIBE: the subscription's events, RecordIO-framed, with HEARTBEAT
/// between them.
fn stream(s: Subscription, answer: Media) -> Response {
    let events = Events {
        sub: s,
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL),
        media: answer,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, answer.name())
        .body(Body::from_stream(events))
        .unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A subscription's events as framed bytes; ends when the agent closes the subscription.
struct Events {
    sub: Subscription,
    heartbeat: tokio::time::Interval,
    media: Media,
}

impl Events {
    fn frame(&self, ev: &me::Event) -> Bytes {
        let bytes = match self.media {
            Media::Protobuf => ev.encode_to_vec(),
            // Encoding a message of our own definitions cannot fail; an empty record keeps
            // the stream in step if it ever did.
            Media::Json => json::encode(EVENT, ev).unwrap_or_default(),
        };
        Bytes::from(recordio::frame(&bytes))
    }
}

impl futures_core::Stream for Events {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.sub.events.poll_recv(cx) {
            Poll::Ready(Some(ev)) => return Poll::Ready(Some(Ok(self.frame(&ev)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.heartbeat.poll_tick(cx).is_ready() {
            let hb = me::Event {
                r#type: Some(me::event::Type::Heartbeat as i32),
                ..Default::default()
            };
            return Poll::Ready(Some(Ok(self.frame(&hb))));
        }
        Poll::Pending
    }
}

//! `POST /v1/publish`: publishing over HTTP for services that would rather not speak Redis.
//!
//! Authenticated with a service API key (`Authorization: Bearer <key>`, compared in constant
//! time). The body is one publish or an array of them; a batch is validated as a whole before
//! anything is sent, then published in one Redis round trip.

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use roomcast_publisher::{
    Room,
    wire::{self, EventNameError},
};
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::{backend::BusError, errors::ErrorCode, http, metrics, state::Shared};

/// One publish in a request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    tenant: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    user: Option<String>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// The event id, chosen by the publisher: an idempotency key (a retry with the same id
    /// within `ROOMCAST_PUBLISH_DEDUPE_WINDOW` is published once). Absent: a new UUIDv7.
    #[serde(default)]
    id: Option<String>,
}

/// The public API routes.
pub fn router(gw: Shared) -> Router {
    Router::new().route("/v1/publish", post(publish).fallback(only_post)).with_state(gw)
}

/// Any other method on `/v1/publish`: 405 with the JSON error every client-visible error has.
async fn only_post() -> Response {
    let mut response = http::error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "use POST");
    response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    response
}

fn fail(status: StatusCode, code: ErrorCode, message: impl AsRef<str>) -> Response {
    metrics::publish("http", Err(code));
    http::error(status, code, message.as_ref())
}

async fn publish(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    if !gw.api_keys.is_enabled() {
        return fail(StatusCode::NOT_FOUND, ErrorCode::NotFound, "the publish API is disabled: set ROOMCAST_API_KEY");
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if !presented.is_some_and(|key| gw.api_keys.accepts(key.as_bytes())) {
        metrics::publish("http", Err(ErrorCode::Unauthorized));
        let mut response = http::error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong API key");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }

    let config = &gw.config;
    // Room for every item's payload plus its envelope fields.
    let limit = config.publish_max_batch.saturating_mul(config.publish_max_payload.saturating_add(1024));
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return fail(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, format!("body over {limit} bytes"));
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(_) => return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, "body is not UTF-8"),
    };
    let (requests, single) = match text.trim_start().as_bytes().first() {
        Some(b'[') => (serde_json::from_str::<Vec<PublishRequest>>(text), false),
        _ => (serde_json::from_str::<PublishRequest>(text).map(|r| vec![r]), true),
    };
    let requests = match requests {
        Ok(r) if r.is_empty() => return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, "empty batch"),
        Ok(r) => r,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidPayload,
                format!("expected {{tenant, project|channel|user, event, data}} or an array of them: {e}"),
            );
        }
    };
    if requests.len() > config.publish_max_batch {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("{} publishes in one batch; the limit is {}", requests.len(), config.publish_max_batch),
        );
    }

    let mut envelopes = Vec::with_capacity(requests.len());
    // Deduplicated by id when the publisher chose ids (generated ones are unique anyway).
    let mut dedupe = None;
    let mut ids = Vec::with_capacity(requests.len());
    for (i, request) in requests.into_iter().enumerate() {
        let at = |msg: String| if single { msg } else { format!("item {i}: {msg}") };
        let room = match target(&request) {
            Ok(room) => room,
            Err(msg) => return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, at(msg)),
        };
        if let Err(e) = wire::validate_event_name(&request.event) {
            let msg = match e {
                EventNameError::Reserved(name) => format!("event name {name:?} is reserved"),
                EventNameError::Malformed => e.to_string(),
            };
            return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidEvent, at(msg));
        }
        let data = request.data.unwrap_or_else(|| RawValue::NULL.to_owned());
        if data.get().len() > config.publish_max_payload {
            let msg = format!("data is {} bytes; the limit is {}", data.get().len(), config.publish_max_payload);
            return fail(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, at(msg));
        }
        let id = match request.id {
            Some(id) => match roomcast_publisher::validate_id(&id) {
                Ok(()) => {
                    dedupe = Some(config.publish_dedupe_window);
                    id
                }
                Err(e) => return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, at(format!("id: {e}"))),
            },
            None => wire::new_event_id(),
        };
        ids.push((id.clone(), room.to_string()));
        envelopes.push(wire::event_envelope(&room, &request.event, data, id, wire::now_ms()).into());
    }

    let count = envelopes.len();
    match gw.bus.publish(envelopes, dedupe).await {
        Ok(replicas) => {
            for _ in 0..count {
                metrics::publish("http", Ok(()));
            }
            let receipts: Vec<_> = ids
                .into_iter()
                .zip(replicas)
                .map(|((id, room), p)| {
                    let mut receipt = json!({ "id": id, "room": room, "replicas": p.replicas });
                    if let (Some(offset), Some(epoch)) = (p.offset, p.epoch) {
                        receipt["offset"] = json!(offset);
                        receipt["epoch"] = json!(epoch);
                    }
                    if p.duplicate {
                        receipt["duplicate"] = json!(true);
                    }
                    receipt
                })
                .collect();
            let body = if single {
                let mut receipt = receipts.into_iter().next().unwrap_or_default();
                receipt["ok"] = json!(true);
                receipt
            } else {
                json!({ "ok": true, "receipts": receipts })
            };
            Json(body).into_response()
        }
        Err(BusError::Unavailable(why)) => {
            fail(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, format!("nothing was published: {why}"))
        }
        Err(BusError::Uncertain(why)) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Timeout,
            format!("{why}: the events may or may not have been published"),
        ),
    }
}

/// The room a request names: its tenant, and at most one of project, channel or user.
fn target(request: &PublishRequest) -> Result<Room, String> {
    let room = match (&request.project, &request.channel, &request.user) {
        (None, None, None) => Room::tenant(&request.tenant),
        (Some(p), None, None) => Room::project(&request.tenant, p),
        (None, Some(c), None) => Room::channel(&request.tenant, c),
        (None, None, Some(u)) => Room::user(&request.tenant, u),
        _ => return Err("name at most one of project, channel and user".into()),
    };
    room.map_err(|e| format!("invalid id: {e}"))
}

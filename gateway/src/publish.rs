//! `POST /v1/publish`: publishing over HTTP for services that would rather not speak Redis.
//!
//! Authenticated with a service API key (`Authorization: Bearer <key>`, compared in constant
//! time). The body is one publish or an array of them; a batch is validated as a whole before
//! anything is sent, then published in one Redis round trip.

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use roomcast_publisher::{
    Room,
    wire::{self, EventNameError},
};
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use crate::{
    backend::{BusError, Published},
    errors::{ClientError, ErrorCode},
    http, metrics,
    state::Shared,
};

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
    /// A socket id live delivery skips (the socket.io emitter's `except`): the client whose
    /// action caused the publish, told through its RPC's `socket`.
    #[serde(default)]
    except: Option<String>,
}

/// The publish endpoint's path.
pub const PUBLISH_PATH: &str = "/v1/publish";

/// The publish route of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new().route(PUBLISH_PATH, post(publish).fallback(http::only_post)).with_state(gw)
}

fn fail(status: StatusCode, code: ErrorCode, message: impl AsRef<str>) -> Response {
    metrics::publish("http", Err(code));
    http::error(status, code, message.as_ref())
}

async fn publish(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => {
            metrics::publish("http", Err(refused.code()));
            return refused.into_response();
        }
    };

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

    // A tenant-scoped key refuses the whole batch when any item is for another tenant.
    if let Some((i, request)) = requests.iter().enumerate().find(|(_, r)| !scope.allows(&r.tenant)) {
        let item = if single { String::new() } else { format!("item {i}: ") };
        let message = format!("{item}this API key may not act for tenant {:?}", request.tenant);
        return fail(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message);
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
                other => other.to_string(),
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
        if let Some(except) = &request.except
            && !(1..=64).contains(&except.len())
        {
            let msg = "except: a Socket.IO socket id (1 to 64 characters)".to_owned();
            return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, at(msg));
        }
        ids.push((id.clone(), room.to_string()));
        let mut envelope = wire::event_envelope(&room, &request.event, data, id, wire::now_ms());
        if let wire::Envelope::Event(e) = &mut envelope {
            e.except = request.except;
        }
        envelopes.push(envelope.into());
    }

    let outcome = gw.bus.publish(envelopes, dedupe).await;
    let (status, body) = answer(ids, outcome, single);
    (status, Json(body)).into_response()
}

/// The answer to a publish request: per event, its receipt or why it failed.
///
/// 200 when every event was published. Otherwise the answer is an error, and a batch's
/// carries every item's outcome in `receipts` (`{ ok: true, … }` or `{ ok: false, error }`),
/// so a publisher retries only what failed: 503 `unavailable` when what failed certainly was
/// not published, 504 `timeout` when any outcome is unknown.
fn answer(
    ids: Vec<(String, String)>,
    outcome: Result<Vec<Result<Published, BusError>>, BusError>,
    single: bool,
) -> (StatusCode, Value) {
    let results = match outcome {
        Ok(results) => results,
        // Nothing was sent: every event failed the same way.
        Err(e) => ids.iter().map(|_| Err(e.clone())).collect(),
    };
    let uncertain = results.iter().any(|r| matches!(r, Err(BusError::Uncertain(_))));
    let failed = results.iter().filter(|r| r.is_err()).count();
    for result in &results {
        metrics::publish("http", result.as_ref().map(|_| ()).map_err(|e| e.code()));
    }
    let items: Vec<Value> = ids
        .into_iter()
        .zip(results)
        .map(|((id, room), result)| match result {
            Ok(p) => {
                let mut receipt = json!({ "ok": true, "id": id, "room": room, "replicas": p.replicas });
                if let (Some(offset), Some(epoch)) = (p.offset, p.epoch) {
                    receipt["offset"] = json!(offset);
                    receipt["epoch"] = json!(epoch);
                }
                if p.duplicate {
                    receipt["duplicate"] = json!(true);
                }
                receipt
            }
            Err(BusError::Unavailable(why)) => {
                let error = ClientError::new(ErrorCode::Unavailable, format!("not published: {why}"));
                json!({ "ok": false, "id": id, "room": room, "error": error })
            }
            Err(BusError::Uncertain(why)) => {
                let message = format!("{why}: it may or may not have been published; retry with the same id");
                json!({ "ok": false, "id": id, "room": room, "error": ClientError::new(ErrorCode::Timeout, message) })
            }
        })
        .collect();
    let total = items.len();
    let (status, code, message) = if failed == 0 {
        (StatusCode::OK, None, String::new())
    } else if uncertain {
        (
            StatusCode::GATEWAY_TIMEOUT,
            Some(ErrorCode::Timeout),
            "Redis did not answer in time: the events may or may not have been published".to_owned(),
        )
    } else if failed == total {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(ErrorCode::Unavailable),
            "nothing was published: Redis is unavailable".to_owned(),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(ErrorCode::Unavailable),
            format!("{failed} of {total} events were not published; see receipts"),
        )
    };
    if single {
        let mut item = items.into_iter().next().unwrap_or_default();
        if let Some(error) = item.get("error").cloned() {
            // A single publish answers like any error: `{ ok: false, error }`.
            return (status, json!({ "ok": false, "error": error }));
        }
        item["ok"] = json!(true);
        return (status, item);
    }
    match code {
        None => (status, json!({ "ok": true, "receipts": items })),
        Some(code) => (status, json!({ "ok": false, "error": ClientError::new(code, message), "receipts": items })),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("e{i}"), "tenant:t".to_owned())).collect()
    }

    fn ok(offset: u64) -> Result<Published, BusError> {
        Ok(Published { replicas: 1, offset: Some(offset), epoch: Some("E".into()), duplicate: false })
    }

    #[test]
    fn a_batch_says_per_event_what_happened_so_only_failures_are_retried() {
        let (status, body) = answer(ids(2), Ok(vec![ok(1), ok(2)]), false);
        assert_eq!(
            (status, body["ok"].clone(), body["receipts"][1]["offset"].clone()),
            (StatusCode::OK, json!(true), json!(2))
        );

        let refused = Err(BusError::Unavailable("Redis refused the publish".into()));
        let (status, body) = answer(ids(2), Ok(vec![ok(1), refused.clone()]), false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!((body["receipts"][0]["ok"].clone(), body["receipts"][1]["ok"].clone()), (json!(true), json!(false)));
        assert_eq!(body["receipts"][1]["error"]["code"], "unavailable");

        let unknown = Err(BusError::Uncertain("Redis did not answer in time".into()));
        let (status, body) = answer(ids(3), Ok(vec![ok(1), refused, unknown]), false);
        assert_eq!((status, body["error"]["code"].clone()), (StatusCode::GATEWAY_TIMEOUT, json!("timeout")));
        assert_eq!(body["receipts"][2]["error"]["code"], "timeout");

        let (status, body) = answer(ids(2), Err(BusError::Unavailable("Redis is not connected".into())), false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["receipts"].as_array().unwrap().iter().all(|r| r["ok"] == false));
    }

    #[test]
    fn a_single_publish_answers_with_its_receipt_or_its_error() {
        let (status, body) = answer(ids(1), Ok(vec![ok(7)]), true);
        assert_eq!((status, body["ok"].clone(), body["offset"].clone()), (StatusCode::OK, json!(true), json!(7)));
        let (status, body) = answer(ids(1), Ok(vec![Err(BusError::Uncertain("x".into()))]), true);
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!((body["ok"].clone(), body["error"]["code"].clone()), (json!(false), json!("timeout")));
        assert!(body.get("receipts").is_none());
    }
}

//! The control API: `POST /v1/disconnect` ends sockets on every replica — a tenant's, a user's,
//! a room's, or one socket — and answers with how many it reached.
//!
//! The instruction travels as a control envelope on the room's channel (PROTOCOL.md), so it
//! reaches exactly the replicas with a member of that room (a user's sockets are all in their
//! user room, a tenant's in the tenant room); each acknowledges what it did, and the answer
//! waits for those acknowledgements for up to [`CONTROL_WAIT`].

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use roomcast_publisher::{
    Room,
    wire::{self, ControlEnvelope, ControlOp},
};
use serde::Deserialize;
use serde_json::json;

use crate::{backend::BusError, errors::ErrorCode, http, metrics, state::Shared};

/// The disconnect endpoint's path.
pub const DISCONNECT_PATH: &str = "/v1/disconnect";

/// How long an answer waits for the replicas' acknowledgements.
pub const CONTROL_WAIT: Duration = Duration::from_secs(2);

/// The largest request body.
const MAX_BODY: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    reconnect: bool,
}

/// The control routes of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new().route(DISCONNECT_PATH, post(disconnect).fallback(http::only_post)).with_state(gw)
}

fn fail(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    metrics::control("disconnect", code.as_str());
    http::error(status, code, message)
}

async fn disconnect(State(gw): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => {
            metrics::control("disconnect", refused.code().as_str());
            return refused.into_response();
        }
    };
    let Ok(bytes): Result<Bytes, _> = axum::body::to_bytes(body, MAX_BODY).await else {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            &format!("body over {MAX_BODY} bytes (or not received whole)"),
        );
    };
    let request: DisconnectRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("expected {{tenant, user|project|channel, socket, reason, message, reconnect}}: {e}");
            return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let room = match (&request.user, &request.project, &request.channel) {
        (None, None, None) => Room::tenant(&request.tenant),
        (Some(u), None, None) => Room::user(&request.tenant, u),
        (None, Some(p), None) => Room::project(&request.tenant, p),
        (None, None, Some(c)) => Room::channel(&request.tenant, c),
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRoom,
                "name at most one of user, project and channel",
            );
        }
    };
    let room = match room {
        Ok(room) => room,
        Err(e) => return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, &format!("invalid id: {e}")),
    };
    if !scope.allows(&request.tenant) {
        let message = format!("this API key may not act for tenant {:?}", request.tenant);
        return fail(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message);
    }
    let control = ControlEnvelope {
        v: wire::VERSION,
        id: wire::new_event_id(),
        room: room.to_string(),
        op: ControlOp::Disconnect,
        socket: request.socket,
        reason: request.reason,
        message: request.message,
        reconnect: request.reconnect,
    };
    if let Err(e) = control.validate() {
        return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &e.to_string());
    }
    match gw.bus.control(control, CONTROL_WAIT).await {
        Ok(receipt) => {
            metrics::control("disconnect", "ok");
            let body = json!({
                "ok": true,
                "room": room.to_string(),
                "sockets": receipt.sockets,
                "replicas": receipt.replicas,
                "of": receipt.of,
                "complete": receipt.replicas >= receipt.of,
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e @ BusError::Unavailable(_)) => {
            fail(StatusCode::SERVICE_UNAVAILABLE, e.code(), "not sent: Redis is unavailable")
        }
        Err(e @ BusError::Uncertain(_)) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            e.code(),
            "Redis did not answer in time: the sockets may or may not have been disconnected; retrying is safe",
        ),
    }
}

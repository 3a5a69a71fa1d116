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
    wire::{self, ControlEnvelope, ControlOp, Revocation, RevocationError},
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    backend::{BusError, ControlReceipt},
    errors::ErrorCode,
    http, metrics,
    state::Shared,
};

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

/// The revoke endpoint's path.
pub const REVOKE_PATH: &str = "/v1/revoke";

/// The join endpoint's path.
pub const JOIN_PATH: &str = "/v1/join";

/// The leave endpoint's path.
pub const LEAVE_PATH: &str = "/v1/leave";

/// The control routes of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new()
        .route(DISCONNECT_PATH, post(disconnect).fallback(http::only_post))
        .route(REVOKE_PATH, post(revoke).fallback(http::only_post))
        .route(JOIN_PATH, post(join).fallback(http::only_post))
        .route(LEAVE_PATH, post(leave).fallback(http::only_post))
        .with_state(gw)
}

/// Whose sockets, and the room they join or leave.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket: Option<String>,
    room: TargetRoom,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRoom {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

/// `POST /v1/join`: a tenant's, a user's or a room's sockets (or one socket) join a project or
/// channel room on every replica, whatever their tokens grant.
async fn join(State(gw): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    move_sockets(gw, headers, body, ControlOp::Join).await
}

/// `POST /v1/leave`: the same sockets leave the room, even one their tokens grant.
async fn leave(State(gw): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    move_sockets(gw, headers, body, ControlOp::Leave).await
}

async fn move_sockets(gw: Shared, headers: HeaderMap, body: axum::body::Body, op: ControlOp) -> Response {
    let name = if op == ControlOp::Join { "join" } else { "leave" };
    let fail = |status: StatusCode, code: ErrorCode, message: &str| {
        metrics::control(name, code.as_str());
        http::error(status, code, message)
    };
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => {
            metrics::control(name, refused.code().as_str());
            return refused.into_response();
        }
    };
    let Ok(bytes): Result<Bytes, _> = axum::body::to_bytes(body, MAX_BODY).await else {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, &format!("body over {MAX_BODY} bytes"));
    };
    let request: MoveRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("expected {{tenant, user|project|channel, socket, room: {{project|channel}}}}: {e}");
            return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let whose = match (&request.user, &request.project, &request.channel) {
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
    let target = match (&request.room.project, &request.room.channel) {
        (Some(p), None) => Room::project(&request.tenant, p),
        (None, Some(c)) => Room::channel(&request.tenant, c),
        _ => return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, "room names either a project or a channel"),
    };
    let (whose, target) = match (whose, target) {
        (Ok(whose), Ok(target)) => (whose, target),
        (Err(e), _) | (_, Err(e)) => {
            return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, &format!("invalid id: {e}"));
        }
    };
    if !scope.allows(&request.tenant) {
        let message = format!("this API key may not act for tenant {:?}", request.tenant);
        return fail(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message);
    }
    let control = ControlEnvelope {
        v: wire::VERSION,
        id: wire::new_event_id(),
        room: whose.to_string(),
        op,
        socket: request.socket,
        reason: None,
        message: None,
        reconnect: false,
        revocation: None,
        until: None,
        target: Some(target.to_string()),
    };
    if let Err(e) = control.validate() {
        return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &e.to_string());
    }
    match gw.bus.control(control, CONTROL_WAIT).await {
        Ok(receipt) => {
            metrics::control(name, "ok");
            let body = json!({
                "ok": true,
                "room": whose.to_string(),
                "target": target.to_string(),
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
            "Redis did not answer in time: it may or may not have been applied; retrying is safe",
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    tenant: String,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    user: Option<String>,
    /// Seconds since the Unix epoch; default now.
    #[serde(default)]
    before: Option<u64>,
}

/// `POST /v1/revoke`: a token by `jti`, or every token of a user issued before a time. Recorded
/// in the shared list first (every replica refuses such tokens within a second), then sent to
/// the replicas holding the tenant's (or user's) sockets, which refuse them at once and
/// disconnect the sockets holding one.
async fn revoke(State(gw): State<Shared>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let fail = |status: StatusCode, code: ErrorCode, message: &str| {
        metrics::control("revoke", code.as_str());
        http::error(status, code, message)
    };
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => {
            metrics::control("revoke", refused.code().as_str());
            return refused.into_response();
        }
    };
    let Ok(bytes): Result<Bytes, _> = axum::body::to_bytes(body, MAX_BODY).await else {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, &format!("body over {MAX_BODY} bytes"));
    };
    let request: RevokeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("expected {{tenant, jti}} or {{tenant, user, before?}}: {e}");
            return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let now_ms = wire::now_ms();
    let before = match (&request.user, request.before) {
        (Some(_), None) => Some(now_ms / 1000),
        (_, before) => before,
    };
    let revocation = Revocation { tenant: request.tenant, jti: request.jti, user: request.user, before };
    if let Err(e) = revocation.validate(now_ms) {
        return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &e.to_string());
    }
    let Ok(room) = revocation.room() else {
        return fail(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &RevocationError::Id.to_string());
    };
    if !scope.allows(&revocation.tenant) {
        let message = format!("this API key may not act for tenant {:?}", revocation.tenant);
        return fail(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message);
    }
    // Kept as long as a token revoked now can be valid: ROOMCAST_MAX_TOKEN_LIFETIME plus the
    // leeway, plus the skew `before` may have.
    let until = wire::revocation_until(now_ms, gw.config.max_token_lifetime + gw.config.jwt_leeway);
    let per_tenant = gw.config.max_revocations_per_tenant;
    match gw.bus.record_revocation(&revocation, until, now_ms, per_tenant).await {
        Ok(true) => {}
        Ok(false) => {
            let message = format!(
                "tenant {:?} has {per_tenant} revocations in force (ROOMCAST_MAX_REVOCATIONS_PER_TENANT): \
                 revoke by user to cover many tokens at once",
                revocation.tenant
            );
            return fail(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRevocations, &message);
        }
        Err(e) => {
            tracing::warn!(error = %e, "revocation not recorded");
            let (status, message) = match e {
                BusError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "not revoked: Redis is unavailable"),
                BusError::Uncertain(_) => {
                    (StatusCode::GATEWAY_TIMEOUT, "Redis did not answer in time: retry (revoking twice is harmless)")
                }
            };
            return fail(status, e.code(), message);
        }
    }
    // This replica holds it at once, whatever happens next.
    gw.revocations.add(&revocation, until);
    metrics::revocations(gw.revocations.len());
    let control = ControlEnvelope {
        v: wire::VERSION,
        id: wire::new_event_id(),
        room: room.to_string(),
        op: ControlOp::Revoke,
        socket: None,
        reason: None,
        message: None,
        reconnect: false,
        revocation: Some(revocation.clone()),
        until: Some(until),
        target: None,
    };

    // Recorded: every replica refuses the token within a second (and disconnects its sockets);
    // this makes the replicas holding its sockets do so now, and counts them.
    let (receipt, complete) = match gw.bus.control(control, CONTROL_WAIT).await {
        Ok(receipt) => (receipt, receipt.replicas >= receipt.of),
        Err(e) => {
            // Not sent: this replica's own sockets would wait for no envelope and the sync sees
            // nothing new here; the others act on the list within a second.
            tracing::warn!(error = %e, "revocation recorded but not sent; replicas act on it within a second");
            let sockets = gw.delivery.disconnect_revoked(&revocation).await;
            (ControlReceipt { sockets, replicas: 1, of: 1 }, false)
        }
    };
    metrics::control("revoke", "ok");
    let body = json!({
        "ok": true,
        "room": room.to_string(),
        "until": until,
        "sockets": receipt.sockets,
        "replicas": receipt.replicas,
        "of": receipt.of,
        "complete": complete,
    });
    (StatusCode::OK, Json(body)).into_response()
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
        revocation: None,
        until: None,
        target: None,
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

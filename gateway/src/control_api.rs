//! The control API: `POST /v1/disconnect` ends sockets on every replica — a tenant's, a user's,
//! a room's, or one socket — `/v1/join` and `/v1/leave` move them between rooms, `/v1/revoke`
//! revokes tokens; each answers with how many sockets it reached.
//!
//! The instruction travels as a control envelope on the room's channel (PROTOCOL.md), so it
//! reaches exactly the replicas with a member of that room (a user's sockets are all in their
//! user room, a tenant's in the tenant room); each acknowledges what it did, and the answer
//! waits for those acknowledgements for up to [`CONTROL_WAIT`].

use std::time::Duration;

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
    wire::{self, ControlEnvelope, ControlOp, Revocation, RevocationError},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;

use crate::{
    api_keys::KeyScope,
    backend::{BusError, ControlReceipt},
    errors::ErrorCode,
    http::{self, Refusal},
    metrics,
    state::Shared,
};

/// The disconnect endpoint's path.
pub const DISCONNECT_PATH: &str = "/v1/disconnect";

/// The revoke endpoint's path.
pub const REVOKE_PATH: &str = "/v1/revoke";

/// The join endpoint's path.
pub const JOIN_PATH: &str = "/v1/join";

/// The leave endpoint's path.
pub const LEAVE_PATH: &str = "/v1/leave";

/// How long an answer waits for the replicas' acknowledgements.
pub const CONTROL_WAIT: Duration = Duration::from_secs(2);

/// The largest request body.
const MAX_BODY: usize = 4096;

/// The control routes of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new()
        .route(DISCONNECT_PATH, post(disconnect).fallback(http::only_post))
        .route(REVOKE_PATH, post(revoke).fallback(http::only_post))
        .route(JOIN_PATH, post(join).fallback(http::only_post))
        .route(LEAVE_PATH, post(leave).fallback(http::only_post))
        .with_state(gw)
}

/// The answer to a control request of `op`, counted in `roomcast_control_requests_total`.
fn answer(op: &'static str, result: Result<serde_json::Value, Refusal>) -> Response {
    match result {
        Ok(body) => {
            metrics::control(op, "ok");
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(refused) => {
            metrics::control(op, refused.code().as_str());
            refused.into_response()
        }
    }
}

/// The request's key scope (as `authorized` found it) and its JSON body (`shape` says what
/// was expected).
async fn read<T: DeserializeOwned>(
    authorized: Result<KeyScope, Refusal>,
    body: Body,
    shape: &str,
) -> Result<(KeyScope, T), Refusal> {
    let scope = authorized?;
    let Ok(bytes): Result<Bytes, _> = axum::body::to_bytes(body, MAX_BODY).await else {
        let message = format!("body over {MAX_BODY} bytes (or not received whole)");
        return Err(Refusal::Answer(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, message));
    };
    let request = serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::bad(ErrorCode::InvalidPayload, format!("expected {shape}: {e}")))?;
    Ok((scope, request))
}

/// Sends `control` and waits for the replicas: the answer with what it reached (and `extra`).
async fn send(gw: &Shared, control: ControlEnvelope, extra: serde_json::Value) -> Result<serde_json::Value, Refusal> {
    control.validate().map_err(|e| Refusal::bad(ErrorCode::InvalidPayload, e.to_string()))?;
    let room = control.room.clone();
    match gw.bus.control(control, CONTROL_WAIT).await {
        Ok(receipt) => Ok(receipt_body(&room, receipt, receipt.replicas >= receipt.of, extra)),
        Err(e @ BusError::Unavailable(_)) => {
            Err(Refusal::Answer(StatusCode::SERVICE_UNAVAILABLE, e.code(), "not sent: Redis is unavailable".into()))
        }
        Err(e @ BusError::Uncertain(_)) => Err(Refusal::Answer(
            StatusCode::GATEWAY_TIMEOUT,
            e.code(),
            "Redis did not answer in time: it may or may not have been applied; retrying is safe".into(),
        )),
    }
}

/// `{ ok, room, sockets, replicas, of, complete }` and the fields of `extra`.
fn receipt_body(room: &str, receipt: ControlReceipt, complete: bool, extra: serde_json::Value) -> serde_json::Value {
    let mut body = json!({
        "ok": true,
        "room": room,
        "sockets": receipt.sockets,
        "replicas": receipt.replicas,
        "of": receipt.of,
        "complete": complete,
    });
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

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

async fn disconnect(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    disconnect_as(&gw, key_scope(&gw, &headers), body).await
}

/// The request's API key scope.
fn key_scope(gw: &Shared, headers: &HeaderMap) -> Result<KeyScope, Refusal> {
    http::authorize(gw, headers).map_err(Refusal::Key)
}

/// `POST /v1/disconnect` for a caller `authorized` by other means (the console's token).
pub(crate) async fn disconnect_as(gw: &Shared, authorized: Result<KeyScope, Refusal>, body: Body) -> Response {
    answer("disconnect", disconnect_sockets(gw, authorized, body).await)
}

/// `POST /v1/leave` for a caller `authorized` by other means (the console's token).
pub(crate) async fn leave_as(gw: &Shared, authorized: Result<KeyScope, Refusal>, body: Body) -> Response {
    answer("leave", move_sockets(gw, authorized, body, ControlOp::Leave).await)
}

async fn disconnect_sockets(
    gw: &Shared,
    authorized: Result<KeyScope, Refusal>,
    body: Body,
) -> Result<serde_json::Value, Refusal> {
    let shape = "{tenant, user|project|channel, socket, reason, message, reconnect}";
    let (scope, request): (_, DisconnectRequest) = read(authorized, body, shape).await?;
    let room = http::named_room(
        &request.tenant,
        request.project.as_deref(),
        request.channel.as_deref(),
        request.user.as_deref(),
    )?;
    http::tenant_allowed(&scope, &request.tenant)?;
    let control = ControlEnvelope {
        socket: request.socket,
        reason: request.reason,
        message: request.message,
        reconnect: request.reconnect,
        ..ControlEnvelope::new(&room, ControlOp::Disconnect)
    };
    send(gw, control, json!({})).await
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
async fn join(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    answer("join", move_sockets(&gw, key_scope(&gw, &headers), body, ControlOp::Join).await)
}

/// `POST /v1/leave`: the same sockets leave the room, even one their tokens grant.
async fn leave(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    leave_as(&gw, key_scope(&gw, &headers), body).await
}

async fn move_sockets(
    gw: &Shared,
    authorized: Result<KeyScope, Refusal>,
    body: Body,
    op: ControlOp,
) -> Result<serde_json::Value, Refusal> {
    let shape = "{tenant, user|project|channel, socket, room: {project|channel}}";
    let (scope, request): (_, MoveRequest) = read(authorized, body, shape).await?;
    let whose = http::named_room(
        &request.tenant,
        request.project.as_deref(),
        request.channel.as_deref(),
        request.user.as_deref(),
    )?;
    let target = match (&request.room.project, &request.room.channel) {
        (Some(p), None) => Room::project(&request.tenant, p),
        (None, Some(c)) => Room::channel(&request.tenant, c),
        _ => return Err(Refusal::bad(ErrorCode::InvalidRoom, "room names either a project or a channel")),
    }
    .map_err(|e| Refusal::bad(ErrorCode::InvalidRoom, format!("invalid id: {e}")))?;
    http::tenant_allowed(&scope, &request.tenant)?;
    let control = ControlEnvelope {
        socket: request.socket,
        target: Some(target.to_string()),
        ..ControlEnvelope::new(&whose, op)
    };
    send(gw, control, json!({ "target": target.to_string() })).await
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
async fn revoke(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    answer("revoke", revoke_tokens(&gw, &headers, body).await)
}

async fn revoke_tokens(gw: &Shared, headers: &HeaderMap, body: Body) -> Result<serde_json::Value, Refusal> {
    let (scope, request): (_, RevokeRequest) =
        read(key_scope(gw, headers), body, "{tenant, jti} or {tenant, user, before?}").await?;
    let now_ms = wire::now_ms();
    let before = match (&request.user, request.before) {
        (Some(_), None) => Some(now_ms / 1000),
        (_, before) => before,
    };
    let revocation = Revocation { tenant: request.tenant, jti: request.jti, user: request.user, before };
    revocation.validate(now_ms).map_err(|e| Refusal::bad(ErrorCode::InvalidPayload, e.to_string()))?;
    let room =
        revocation.room().map_err(|_| Refusal::bad(ErrorCode::InvalidPayload, RevocationError::Id.to_string()))?;
    http::tenant_allowed(&scope, &revocation.tenant)?;
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
            return Err(Refusal::Answer(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRevocations, message));
        }
        Err(e) => {
            tracing::warn!(error = %e, "revocation not recorded");
            let (status, message) = match e {
                BusError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "not revoked: Redis is unavailable"),
                BusError::Uncertain(_) => {
                    (StatusCode::GATEWAY_TIMEOUT, "Redis did not answer in time: retry (revoking twice is harmless)")
                }
            };
            return Err(Refusal::Answer(status, e.code(), message.into()));
        }
    }
    // This replica holds it at once, whatever happens next.
    gw.revocations.add(&revocation, until);
    let control = ControlEnvelope {
        revocation: Some(revocation.clone()),
        until: Some(until),
        ..ControlEnvelope::new(&room, ControlOp::Revoke)
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
    Ok(receipt_body(&room.to_string(), receipt, complete, json!({ "until": until })))
}

//! Client-visible error codes and disconnect reasons.
//!
//! Clients branch on these strings, so they are part of the public contract: a code is never
//! renamed, only added. The README's error table lists the same codes (a test checks that it
//! does). Where they appear:
//!
//! - `connect_error`: the Socket.IO error's `message` is the code (`err.message === "token_expired"`).
//! - acks: `{ "ok": false, "error": { "code": "...", "message": "..." } }`.
//! - `roomcast:disconnect`: `{ "code": "...", "message": "...", "reconnect": bool }`, emitted just
//!   before the server ends a connection.

use std::fmt;

use serde::Serialize;

/// A stable, client-visible error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token in `auth.token`, an `Authorization: Bearer` header or the `token` query parameter.
    TokenMissing,
    /// The token cannot be verified: malformed, bad signature, unknown `kid`, disallowed
    /// algorithm, wrong `iss`/`aud`, not yet valid (`nbf`), or no `exp`.
    TokenInvalid,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The token is genuine but does not grant this: no usable tenant/user claim at connect,
    /// a room outside the token's projects/channels, or a refresh for another user.
    Forbidden,
    /// A project or channel id that is empty, too long or has characters outside the id set.
    InvalidRoom,
    /// The socket is already in the maximum number of project and channel rooms.
    TooManyRooms,
    /// The event's payload has the wrong shape: not an object, a missing or mistyped field.
    InvalidPayload,
    /// The event name is not one the gateway handles.
    UnknownEvent,
    /// The socket sent operations faster than they are applied; wait for acks before sending more.
    RateLimited,
    /// The gateway is shutting down; reconnect (to another replica).
    ServerShutdown,
    /// HTTP only: no endpoint at this path (or the publish API is disabled).
    NotFound,
    /// HTTP only: missing or wrong API key.
    Unauthorized,
    /// HTTP only: the endpoint exists but not for this method (the `Allow` header lists them).
    MethodNotAllowed,
    /// Publishing: the event name is reserved (`connect`, `typing`, `presence:*`, `auth:*`,
    /// `roomcast:*`, …) or malformed.
    InvalidEvent,
    /// Publishing: the payload (or the batch) is over the configured limit.
    PayloadTooLarge,
    /// Redis is unreachable: a publish did not reach other replicas (a client's typing still
    /// reached members on its own replica).
    Unavailable,
    /// Publishing: Redis did not answer in time, so whether the event was published is unknown.
    Timeout,
    /// An HTTP request (a Socket.IO handshake included) whose target and headers are over
    /// `ROOMCAST_MAX_HEADER_BYTES`.
    HeadersTooLarge,
    /// At connect: the user or the tenant already has the most concurrent connections allowed
    /// cluster-wide (`ROOMCAST_MAX_CONNECTIONS_PER_USER`, `ROOMCAST_MAX_CONNECTIONS_PER_TENANT`).
    TooManyConnections,
    /// Disconnect reason: a backend disconnected the socket through the control API; `reason`
    /// carries the application's own code.
    Disconnected,
    /// The token was revoked (by `jti`, or every token of the user issued before a time): at
    /// connect, at `auth:refresh`, and as the disconnect reason of a socket holding one.
    TokenRevoked,
    /// `POST /v1/revoke`: the tenant has `ROOMCAST_MAX_REVOCATIONS_PER_TENANT` revocations in
    /// force.
    TooManyRevocations,
    /// RPC: the backend did not answer by `ROOMCAST_RPC_TIMEOUT`; it may still have acted.
    RpcTimeout,
    /// RPC: the backend could not be reached, failed (5xx), or answered outside the format.
    RpcUnavailable,
    /// RPC: the backend refused the call; its own error is in `error.backend`.
    RpcRejected,
}

impl ErrorCode {
    /// Every code, in the order of the README table.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::TokenMissing,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::InvalidRoom,
        ErrorCode::TooManyRooms,
        ErrorCode::InvalidPayload,
        ErrorCode::UnknownEvent,
        ErrorCode::RateLimited,
        ErrorCode::ServerShutdown,
        ErrorCode::NotFound,
        ErrorCode::Unauthorized,
        ErrorCode::MethodNotAllowed,
        ErrorCode::InvalidEvent,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::HeadersTooLarge,
        ErrorCode::TooManyConnections,
        ErrorCode::Disconnected,
        ErrorCode::TokenRevoked,
        ErrorCode::TooManyRevocations,
        ErrorCode::RpcTimeout,
        ErrorCode::RpcUnavailable,
        ErrorCode::RpcRejected,
    ];

    /// The code as clients see it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TokenMissing => "token_missing",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Disconnected => "disconnected",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::TooManyRevocations => "too_many_revocations",
            ErrorCode::RpcTimeout => "rpc_timeout",
            ErrorCode::RpcUnavailable => "rpc_unavailable",
            ErrorCode::RpcRejected => "rpc_rejected",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client receives in an ack: a stable code and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people. Never contains a token or a secret.
    pub message: String,
    /// `rate_limited`: how long to wait before trying again, in ms.
    #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `rpc_rejected`: the backend's own error, passed through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Box<BackendError>>,
}

impl ClientError {
    /// An error with `code` and an explanation.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError { code, message: message.into(), retry_after_ms: None, backend: None }
    }

    /// `rate_limited`, to try again after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        // Rounded up: trying again after a rounded-down wait would be refused again.
        let ms = u64::try_from(retry_after.as_micros().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
        ClientError { code: ErrorCode::RateLimited, message: message.into(), retry_after_ms: Some(ms), backend: None }
    }

    /// The ack payload carrying this error: `{ ok: false, error: { code, message } }`.
    pub fn ack(&self) -> serde_json::Value {
        serde_json::json!({ "ok": false, "error": self })
    }
}

/// A backend's refusal of an RPC, passed to the client under `error.backend` of
/// `rpc_rejected` (README, "RPC").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BackendError {
    /// The backend's own code.
    pub code: String,
    /// For people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Anything else the backend wants the client to have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Why the server ended a connection, sent as `roomcast:disconnect` right before it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The token expired without an `auth:refresh`. The client must get a new token before it
    /// reconnects, so the server sends a Socket.IO disconnect and the client does not reconnect
    /// on its own.
    TokenExpired,
    /// The replica is shutting down. The server closes the transport, so `socket.io-client`
    /// reconnects by itself and the load balancer sends it to another replica.
    ServerShutdown,
    /// The socket kept sending more than its rate limits allow (`ROOMCAST_RATE_*`) for longer
    /// than `ROOMCAST_RATE_LIMIT_DISCONNECT`. A Socket.IO disconnect: a client stuck in a loop
    /// does not reconnect on its own and resume the flood.
    RateLimited,
    /// A backend disconnected the socket (the control API); whether the client may reconnect
    /// on its own is the backend's call.
    Disconnected {
        /// Sent to the client as `reconnect`.
        reconnect: bool,
    },
    /// The socket's token was revoked; it needs a new token (not the same one) to reconnect.
    TokenRevoked,
}

impl DisconnectReason {
    /// The error code naming this reason.
    pub fn code(self) -> ErrorCode {
        match self {
            DisconnectReason::TokenExpired => ErrorCode::TokenExpired,
            DisconnectReason::ServerShutdown => ErrorCode::ServerShutdown,
            DisconnectReason::RateLimited => ErrorCode::RateLimited,
            DisconnectReason::Disconnected { .. } => ErrorCode::Disconnected,
            DisconnectReason::TokenRevoked => ErrorCode::TokenRevoked,
        }
    }

    /// Whether the client should reconnect without user action.
    pub fn reconnect(self) -> bool {
        match self {
            DisconnectReason::ServerShutdown => true,
            DisconnectReason::Disconnected { reconnect } => reconnect,
            DisconnectReason::TokenExpired | DisconnectReason::RateLimited | DisconnectReason::TokenRevoked => false,
        }
    }

    /// The `roomcast:disconnect` payload.
    pub fn payload(self) -> serde_json::Value {
        let message = match self {
            DisconnectReason::TokenExpired => "token expired; connect again with a fresh token",
            DisconnectReason::ServerShutdown => "this replica is shutting down; reconnecting",
            DisconnectReason::RateLimited => "too many events for too long; slow down before connecting again",
            DisconnectReason::Disconnected { .. } => "disconnected by the application",
            DisconnectReason::TokenRevoked => "token revoked; connect again with a new token",
        };
        serde_json::json!({ "code": self.code(), "message": message, "reconnect": self.reconnect() })
    }
}

/// Name of the event announcing a server-initiated disconnect.
pub const DISCONNECT_EVENT: &str = "roomcast:disconnect";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_as_str_agree() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::from(code.as_str()));
        }
    }

    #[test]
    fn ack_shape() {
        let ack = ClientError::new(ErrorCode::Forbidden, "no").ack();
        assert_eq!(ack, serde_json::json!({"ok": false, "error": {"code": "forbidden", "message": "no"}}));
        let ack = ClientError::rate_limited("slow", std::time::Duration::from_micros(1500)).ack();
        let error = serde_json::json!({"code": "rate_limited", "message": "slow", "retryAfterMs": 2});
        assert_eq!(ack, serde_json::json!({"ok": false, "error": error}));
    }
}

//! Typing indicators sent by clients: `typing` `{ channel, typing }`.
//!
//! The indicator is emitted to the channel's members on this replica at once, then published
//! (tagged with this replica's id, so it is not delivered here a second time) to reach the
//! other replicas. If Redis is down the local members still see it and the sender gets an
//! `unavailable` error ack instead of a silent loss.

use roomcast_publisher::{
    Room,
    wire::{self, Envelope, TypingEnvelope},
};
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;

use crate::{
    conn::Conn,
    errors::{ClientError, ErrorCode},
    metrics,
    state::Shared,
};

/// Handles a client's `typing` event.
pub async fn on_typing(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Value, ClientError> {
    let payload = payload?;
    let invalid =
        || ClientError::new(ErrorCode::InvalidPayload, "payload must be { channel: \"<id>\", typing: true|false }");
    let channel = payload.get("channel").and_then(Value::as_str).ok_or_else(invalid)?;
    let typing = payload.get("typing").and_then(Value::as_bool).ok_or_else(invalid)?;
    let identity = conn.identity();
    let room = Room::channel(&identity.tenant, channel)
        .map_err(|e| ClientError::new(ErrorCode::InvalidRoom, format!("channel id: {e}")))?;
    let name = room.to_string();
    if !socket.rooms().iter().any(|r| *r == name) {
        return Err(ClientError::new(ErrorCode::Forbidden, "join the channel before typing in it"));
    }
    let envelope = TypingEnvelope {
        v: wire::VERSION,
        room: name,
        user: identity.user.clone(),
        typing,
        ts: wire::now_ms(),
        origin: Some(gw.delivery.node_id().to_owned()),
    };
    if gw.delivery.emit_typing(&envelope).await.is_err() {
        return Err(ClientError::new(ErrorCode::InvalidRoom, "not a channel"));
    }
    match gw.bus.publish(vec![Envelope::Typing(envelope)]).await {
        Ok(_) => {
            metrics::publish("client_typing", Ok(()));
            Ok(json!({ "ok": true }))
        }
        Err(e) => {
            metrics::publish("client_typing", Err(ErrorCode::Unavailable));
            Err(ClientError::new(ErrorCode::Unavailable, format!("shown on this replica only: {e}")))
        }
    }
}

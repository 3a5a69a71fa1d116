//! `typing`: a client shows or stops its typing indicator in a channel (see [`crate::typing`]).

use roomcast_publisher::Room;
use serde_json::Value;

use super::payloads::{self, Ack, TYPING_SHAPE};
use crate::{
    backend::BusError,
    conn::Conn,
    envelope::Envelope,
    errors::{ClientError, ErrorCode},
    metrics,
    state::Shared,
};

/// `typing` `{ channel, typing }`.
pub(super) async fn typing(gw: &Shared, conn: &Conn, payload: Result<Value, ClientError>) -> Result<Ack, ClientError> {
    let payloads::Typing { channel, typing } = payloads::parse(payload, TYPING_SHAPE)?;
    let identity = conn.identity();
    let room = Room::channel(&identity.tenant, &channel)
        .map_err(|e| ClientError::new(ErrorCode::InvalidRoom, format!("channel id: {e}")))?;
    let name = room.to_string();
    if !conn.is_in(&name) {
        return Err(ClientError::new(ErrorCode::Forbidden, "join the channel before typing in it"));
    }
    conn.set_typing(&name, typing);
    if !gw.throttle.admit(&name, &identity.user, typing) {
        metrics::publish("client_typing", Ok(()));
        return Ok(Ack::Typing { throttled: Some(true) });
    }
    broadcast(gw, name, identity.user.clone(), typing).await
}

/// Stops the socket's indicator in `room` if it showed one (it left the channel or disconnected).
pub(super) async fn stop(gw: &Shared, conn: &Conn, room: &str) {
    if conn.set_typing(room, false) {
        let user = conn.identity().user.clone();
        gw.throttle.admit(room, &user, false);
        let _ = broadcast(gw, room.to_owned(), user, false).await;
    }
}

async fn broadcast(gw: &Shared, room: String, user: String, typing: bool) -> Result<Ack, ClientError> {
    let envelope = Envelope::typing(room, user, typing, gw.delivery.node_id());
    gw.delivery.deliver_originated(&envelope).await;
    let published = gw.bus.publish(vec![envelope], None).await;
    match published.and_then(|mut all| all.pop().unwrap_or(Err(BusError::Unavailable(String::new())))) {
        Ok(_) => {
            metrics::publish("client_typing", Ok(()));
            Ok(Ack::Typing { throttled: None })
        }
        Err(e) => {
            metrics::publish("client_typing", Err(ErrorCode::Unavailable));
            Err(ClientError::new(ErrorCode::Unavailable, format!("shown on this replica only: {e}")))
        }
    }
}

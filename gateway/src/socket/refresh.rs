//! `auth:refresh`: a live socket swaps its token for a fresher one.

use roomcast_publisher::Room;
use serde_json::Value;
use socketioxide::extract::SocketRef;

use super::{
    payloads::{self, Ack, REFRESH_SHAPE},
    rooms::leave_room,
};
use crate::{
    conn::Conn,
    errors::{ClientError, ErrorCode},
    expiry, metrics,
    state::Shared,
};

/// `auth:refresh` `{ token }`: swaps the socket's token for a fresher one of the same user.
/// Rooms the new token no longer grants are left, and listed in the ack. A refusal is a
/// `token.refresh_failed` lifecycle event.
pub(super) async fn refresh(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let result = swap(socket, gw, conn, payload).await;
    if let (Err(error), Some(lifecycle)) = (&result, &gw.lifecycle) {
        let identity = conn.identity();
        // An observer is nobody the application hears about.
        if !identity.observer {
            lifecycle.refresh_failed(&identity.tenant, &identity.user, error.code);
        }
    }
    result
}

async fn swap(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let payloads::Refresh { token } =
        payloads::parse(payload, REFRESH_SHAPE).inspect_err(|_| metrics::auth_refresh("invalid_payload"))?;
    let current = conn.identity();
    // Rooms a connect proxy adds count at connect only.
    // Proxy-only mode: the session's cookie goes along, as at connect.
    let cookie = gw.config.proxy_only().then(|| super::session_cookie(&socket.req_parts().headers)).flatten();
    let fresh = if current.observer {
        super::observed(gw, &token)
    } else {
        super::verified(gw, &token, true, cookie.as_deref()).await.map(|(identity, _)| identity)
    }
    .inspect_err(|e| metrics::auth_refresh(e.code.as_str()))?;
    if fresh.tenant != current.tenant || fresh.user != current.user {
        metrics::auth_refresh("forbidden");
        return Err(ClientError::new(ErrorCode::Forbidden, "the new token is for another user or tenant"));
    }
    let exp = fresh.exp;
    let mut left = Vec::new();
    for name in conn.rooms() {
        let Some(room) = Room::parse(&name) else {
            continue;
        };
        // A room a backend put the socket in stays whatever the token grants.
        if !fresh.grants(&room) && !conn.granted_by_backend(&name) {
            leave_room(socket, gw, conn, &room).await;
            left.push(name.to_string());
        }
    }
    conn.set_identity(fresh);
    // Revoked while the rooms were being left: the revocation's room scan may have seen the old
    // identity. Either it is held by now or its scan sees the new one (as at connect).
    if !current.observer && gw.revocations.is_revoked(&conn.identity(), roomcast_publisher::wire::now_ms()) {
        metrics::auth_refresh(ErrorCode::TokenRevoked.as_str());
        crate::conn::disconnect(socket.clone(), crate::errors::DisconnectReason::TokenRevoked);
        return Err(ClientError::new(ErrorCode::TokenRevoked, "this token was revoked; get a new one"));
    }
    expiry::schedule(gw, socket.id, conn, exp);
    metrics::auth_refresh("ok");
    tracing::debug!(exp, left = left.len(), "token refreshed");
    Ok(Ack::Refreshed { exp, left })
}

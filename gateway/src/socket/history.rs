//! `history` `{ project | channel, after?, limit? }`: a joined room's retained events, answered
//! as `GET /v1/history` answers a backend, so a client can render a room's latest activity (or
//! page through it) without a store of its own.

use serde_json::Value;

use super::payloads::{self, Ack, HISTORY_SHAPE};
use crate::{
    conn::Conn,
    errors::{ClientError, ErrorCode},
    state::Shared,
};

pub(super) async fn history(gw: &Shared, conn: &Conn, payload: Result<Value, ClientError>) -> Result<Ack, ClientError> {
    let request: payloads::History = payloads::parse(payload, HISTORY_SHAPE)?;
    // Rooms the socket is in: what it may read is what it receives.
    let room = super::rooms::allowed_room(&request.room, &conn.identity(), conn)?;
    let name = room.to_string();
    if !conn.is_in(&name) {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("join {name} to read its history")));
    }
    let Some(store) = gw.history.as_ref() else {
        return Err(ClientError::new(ErrorCode::NotFound, "history is off (ROOMCAST_HISTORY_SIZE=0)"));
    };
    let retained = gw.config.history_size as u64;
    let limit = request.limit.unwrap_or((crate::history_api::DEFAULT_LIMIT as u64).min(retained));
    if limit == 0 || limit > retained {
        return Err(ClientError::new(ErrorCode::InvalidPayload, format!("limit must be 1 to {retained}")));
    }
    let read = crate::history_api::read(store, &name, request.after, limit as usize)
        .await
        .map_err(|why| ClientError::new(ErrorCode::Unavailable, why))?;
    let mut body = match read {
        Value::Object(body) => body,
        _ => serde_json::Map::new(),
    };
    body.remove("ok");
    Ok(Ack::History(body))
}

//! The presence events clients send: `presence:list` and `presence:update`.

use roomcast_publisher::Room;
use serde_json::Value;

use super::{
    payloads::{self, Ack, PRESENCE_LIST_SHAPE, PRESENCE_UPDATE_SHAPE, ROOM_SHAPE},
    rooms::allowed_room,
};
use crate::{
    conn::Conn,
    errors::{ClientError, ErrorCode},
    presence::{Status, tracked},
    state::Shared,
};

/// `retryAfterMs` when the tenant's presence changes are backed up.
pub(super) const BACKED_UP_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Users per `presence:list` page unless the client asks for fewer or more.
const DEFAULT_PAGE: u64 = 100;

/// `presence:list` `{ project | channel, offset?, limit? }` → `{ ok, room, users, total, next }`.
///
/// Anyone whose token grants the room may list it (the same check as `join`), so a client can
/// see who is there before joining. Pages are at most `ROOMCAST_PRESENCE_PAGE_MAX` users;
/// `next` is the offset of the following page, or null.
pub(super) async fn list(gw: &Shared, conn: &Conn, payload: Result<Value, ClientError>) -> Result<Ack, ClientError> {
    let request: payloads::PresenceList = payloads::parse(payload, PRESENCE_LIST_SHAPE)?;
    let room = allowed_room(&request.room, &conn.identity(), conn)?;
    if conn.barred_by_backend(&room.to_string()) {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("the application removed this socket from {room}")));
    }
    let offset = request.offset.unwrap_or(0);
    let max = gw.config.presence_page_max;
    let limit = request.limit.unwrap_or(DEFAULT_PAGE.min(max)).clamp(1, max);
    let page = gw
        .presence
        .list(&room, offset, limit)
        .await
        .map_err(|e| ClientError::new(ErrorCode::Unavailable, format!("presence is unavailable: {e}")))?;
    let next = (offset + (page.users.len() as u64) < page.total).then(|| offset + page.users.len() as u64);
    Ok(Ack::PresencePage { room: room.to_string(), users: page.users, total: page.total, next })
}

/// `room:occupancy` `{ project | channel }`: how many connections and distinct users a room the
/// socket may join has, cluster-wide, without listing them.
pub(super) async fn occupancy(
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let request: payloads::Leave = payloads::parse(payload, ROOM_SHAPE)?;
    let room = allowed_room(&request.room, &conn.identity(), conn)?;
    if conn.barred_by_backend(&room.to_string()) {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("the application removed this socket from {room}")));
    }
    let o = gw
        .presence
        .occupancy(&room)
        .await
        .map_err(|e| ClientError::new(ErrorCode::Unavailable, format!("occupancy is unavailable: {e}")))?;
    Ok(Ack::Occupancy { room: room.to_string(), connections: o.connections, users: o.users })
}

/// `presence:update` `{ status: "online" | "away" }`: the socket's status in every project and
/// channel room it is in; members see `presence:update` where the user's status changed.
pub(super) fn update(gw: &Shared, conn: &Conn, payload: Result<Value, ClientError>) -> Result<Ack, ClientError> {
    let request: payloads::PresenceUpdate = payloads::parse(payload, PRESENCE_UPDATE_SHAPE)?;
    let status = Status::parse(&request.status)?;
    conn.set_status(status);
    let user = conn.identity().user.clone();
    let mut backed_up = false;
    for name in conn.rooms() {
        if let Some(room) = Room::parse(&name).filter(tracked) {
            backed_up |= gw.presence.status_changed(&room, &user, status).is_err();
        }
    }
    if backed_up {
        // Kept on this socket; sending it again once the backlog drains publishes it.
        return Err(ClientError::rate_limited(
            "presence changes of this tenant are backed up; send the status again later",
            BACKED_UP_RETRY,
        ));
    }
    Ok(Ack::Status { status: status.as_str() })
}

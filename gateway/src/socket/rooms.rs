//! `join` and `leave`: the client's way in and out of project and channel rooms.

use std::future::Future;

use roomcast_publisher::{Room, RoomKind};
use serde_json::Value;
use socketioxide::extract::SocketRef;

use super::{
    debug_pause,
    payloads::{self, Ack, JOIN_SHAPE, ROOM_SHAPE, RoomRef},
    typing,
};
use crate::{
    auth::Identity,
    bus::BusError,
    conn::{self, Conn, Turns},
    delivery::RoomControl,
    errors::{ClientError, DisconnectReason, ErrorCode},
    metrics,
    recovery::{Since, recovering_room},
    rooms::Membership,
    state::Shared,
};

pub(super) async fn join(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let identity = conn.identity();
    let request: payloads::Join = payloads::parse(payload, JOIN_SHAPE)?;
    let room = match allowed_room(&request.room, &identity, conn) {
        Ok(room) => room,
        Err(e) if e.code == ErrorCode::Forbidden => asked_room(gw, socket, &request.room, &identity, e).await?,
        Err(e) => return Err(e),
    };
    if conn.barred_by_backend(&room.to_string()) {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("the application removed this socket from {room}")));
    }
    let since = match request.since {
        Some(since) if since.epoch.is_empty() || since.epoch.len() > 64 => {
            return Err(ClientError::new(ErrorCode::InvalidPayload, JOIN_SHAPE));
        }
        Some(since) => Some(Since { offset: since.offset, epoch: since.epoch }),
        None => None,
    };
    let name = room.to_string();
    // Joining a room the socket is already in answers like a first join (position, and a
    // replay when `since` asks for one), without counting the member twice.
    let new = !conn.is_in(&name);
    // An observer is not presence: it neither waits for the presence queue nor enters it.
    let present = new && !identity.observer;
    if present && !gw.presence.has_room(&room) {
        return Err(ClientError::rate_limited(
            "presence changes of this tenant are backed up; join again later",
            super::presence::BACKED_UP_RETRY,
        ));
    }
    let generation = if new {
        let generation = enter(conn, &gw.membership, &room, gw.config.max_rooms_per_socket).await?;
        debug_pause(gw).await;
        generation
    } else {
        gw.membership.generation(&name)
    };
    let attached = gw.delivery.sequencer().attach(socket.id, &name, since, generation).await;
    if present {
        gw.presence.entered(&room, &identity.user, conn.status());
    }
    let (offset, epoch) = attached.position.map(|p| (p.offset, p.epoch)).unzip();
    Ok(Ack::Joined { room: name, recovered: attached.recovered, offset, epoch })
}

pub(super) async fn leave(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let request: payloads::Leave = payloads::parse(payload, ROOM_SHAPE)?;
    let room = allowed_room(&request.room, &conn.identity(), conn)?;
    leave_room(socket, gw, conn, &room).await;
    Ok(Ack::Left { room: room.to_string() })
}

/// The room a request names, authorized against the token or what a backend granted the
/// socket (control `join`).
pub(super) fn allowed_room(request: &RoomRef, identity: &Identity, conn: &Conn) -> Result<Room, ClientError> {
    let room = named_room(request, &identity.tenant)?;
    if identity.grants(&room) || conn.granted_by_backend(&room.to_string()) {
        Ok(room)
    } else {
        Err(not_granted(&room))
    }
}

/// A room the token does not grant, if the subscribe proxy allows it (then it counts as a
/// backend's grant: it stays across refreshes); `refused` when there is no subscribe proxy.
async fn asked_room(
    gw: &Shared,
    socket: &SocketRef,
    request: &RoomRef,
    identity: &Identity,
    refused: ClientError,
) -> Result<Room, ClientError> {
    let Some(rpc) = gw.rpc.as_ref().filter(|rpc| rpc.settings().backends.subscribe_proxy.is_some()) else {
        return Err(refused);
    };
    let room = named_room(request, &identity.tenant)?;
    let name = room.to_string();
    let kind = crate::rpc::Kind::Subscribe { room: &name };
    let admitted = rpc.admit(&identity.tenant, kind).map_err(super::rpc::client_error)?;
    let sender = crate::rpc::Identity::of(identity);
    match rpc.call(&admitted, kind, "join", &Value::Null, Some(sender), socket.id.as_str()).await {
        Ok(_) => {
            if let Some(conn) = super::conn_of(socket) {
                conn.granted_by_backend_now(&name);
            }
            Ok(room)
        }
        Err(crate::rpc::RpcError::Rejected(backend)) => {
            let message = format!("the application refused this join ({})", backend.code);
            Err(ClientError { backend: Some(Box::new(backend)), ..ClientError::new(ErrorCode::Forbidden, message) })
        }
        Err(e) => Err(super::rpc::client_error(e)),
    }
}

/// The room a request names, authorized against the token alone (what [`allowed_room`] does
/// for a socket no backend granted anything).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn requested_room(request: &RoomRef, identity: &Identity) -> Result<Room, ClientError> {
    let room = named_room(request, &identity.tenant)?;
    if identity.grants(&room) { Ok(room) } else { Err(not_granted(&room)) }
}

/// The project or channel room of `tenant` a request names.
fn named_room(request: &RoomRef, tenant: &str) -> Result<Room, ClientError> {
    let invalid = |msg: &str| ClientError::new(ErrorCode::InvalidPayload, msg);
    let (kind, id) = match (&request.project, &request.channel) {
        (Some(p), None) => (RoomKind::Project, p),
        (None, Some(c)) => (RoomKind::Channel, c),
        (Some(_), Some(_)) => return Err(invalid("name either a project or a channel, not both")),
        (None, None) => return Err(invalid("payload needs a \"project\" or a \"channel\" field")),
    };
    let Some(id) = id else { return Err(invalid("the room id must be a string")) };
    match kind {
        RoomKind::Project => Room::project(tenant, id),
        _ => Room::channel(tenant, id),
    }
    .map_err(|e| ClientError::new(ErrorCode::InvalidRoom, format!("{} id: {e}", kind.as_str())))
}

fn not_granted(room: &Room) -> ClientError {
    let (kind, id) = (room.kind().as_str(), room.id().unwrap_or_default());
    ClientError::new(ErrorCode::Forbidden, format!("token does not grant {kind} {id:?}"))
}

/// Records `socket`'s entry into `room` (the caller checked it is not there yet) and
/// subscribes the bus if it is the room's first local member; resolves once the bus confirmed,
/// with the room's membership generation (see [`crate::rooms::Entered::generation`]). The socket itself is
/// put in the room by [`crate::recovery::Sequencer::attach`], which orders history and live
/// events for it.
pub(super) async fn enter(
    conn: &Conn,
    membership: &Membership,
    room: &Room,
    max_rooms: u32,
) -> Result<u64, ClientError> {
    if conn.explicit_room_count() >= max_rooms as usize {
        return Err(ClientError::new(
            ErrorCode::TooManyRooms,
            format!("a socket may be in at most {max_rooms} project and channel rooms; leave one first"),
        ));
    }
    let name = room.to_string();
    // Recorded before anything else: from here on the disconnect cleanup will undo it.
    if !conn.enter(&name) {
        return Err(ClientError::new(ErrorCode::Unavailable, "the connection is closing"));
    }
    metrics::room_joined(room.kind());
    let entered = membership.enter(&name);
    confirm(entered.subscribed).await;
    Ok(entered.generation)
}

/// Puts `socket` in `room` now, if it is not there and not closing, and returns the bus
/// confirmation to await. For the automatic rooms, which need no history position.
pub(super) fn enter_now(
    socket: &SocketRef,
    conn: &Conn,
    membership: &Membership,
    room: &Room,
) -> Option<impl Future<Output = Result<(), BusError>> + Send + 'static + use<>> {
    let name = room.to_string();
    if !conn.enter(&name) {
        return None;
    }
    let entered = membership.enter(&name);
    socket.join(name);
    metrics::room_joined(room.kind());
    Some(entered.subscribed)
}

/// Waits for a subscription confirmation. A failure does not undo the join: the bus keeps the
/// subscription as wanted and re-applies it when it recovers, and local delivery works meanwhile.
pub(super) async fn confirm(subscribed: impl Future<Output = Result<(), BusError>>) {
    if let Err(e) = subscribed.await {
        static UNCONFIRMED: crate::logging::Throttled = crate::logging::Throttled::new(crate::logging::WARN_EVERY);
        if let Some(held) = UNCONFIRMED.check() {
            tracing::warn!(error = %e, similar_since = held, "room subscription not confirmed yet");
        }
    }
}

/// Takes the socket out of `room` (idempotent), with what leaving means beyond the room itself:
/// the last local member unsubscribes the bus and makes this replica forget what it delivered
/// there (it means nothing to members who come later); the user's presence there ends (after
/// the grace period) and their typing indicator stops. The one path out of a room, whether the
/// client asked, a refresh narrowed its grants or it disconnected.
pub(super) async fn leave_room(socket: &SocketRef, gw: &Shared, conn: &Conn, room: &Room) {
    let name = room.to_string();
    socket.leave(recovering_room(&name));
    gw.delivery.sequencer().detach(socket.id, &name).await;
    // Roomcast's record, not `socket.rooms()` (see the disconnect handler).
    if !conn.exit(&name) {
        return;
    }
    socket.leave(name.clone());
    conn.left_backend_room(&name);
    metrics::room_left(room.kind());
    if let Some(unsubscribed) = gw.membership.exit(&name) {
        gw.delivery.sequencer().forget_room(&name).await;
        if let Err(e) = unsubscribed.await {
            tracing::warn!(error = %e, "room unsubscription not confirmed");
        }
    }
    let identity = conn.identity();
    if !identity.observer {
        gw.presence.left(room, &identity.user);
        typing::stop(gw, conn, &name).await;
    }
}

/// Control `join` and `leave` (see [`RoomControl`]): a backend's decision, carried out in the
/// socket's turn like the socket's own operations.
#[derive(Debug)]
pub(crate) struct BackendControl(pub std::sync::Weak<crate::state::GatewayState>);

impl RoomControl for BackendControl {
    fn schedule(&self, socket: SocketRef, room: Room, join: bool) -> bool {
        let (Some(gw), Some(conn)) = (self.0.upgrade(), super::conn_of(&socket)) else { return false };
        // A console observer is not the application's to move.
        if conn.is_closed() || conn.identity().observer {
            return false;
        }
        let name = room.to_string();
        // A leave is decided now, not when its turn comes: the socket cannot join again by
        // itself from this instant. Only rooms the token grants need barring (others it could
        // not join anyway); when too many are barred the socket is disconnected instead.
        if !join && conn.identity().grants(&room) && !conn.bar(&name) {
            tracing::info!(sid = %socket.id, "disconnecting a socket a backend removed from too many rooms");
            conn::disconnect(socket, DisconnectReason::Disconnected { reconnect: true });
            return true;
        }
        // Backend operations wait beside the client's own, with room of their own, bounded.
        if conn.turns.pending() >= super::MAX_PENDING_OPERATIONS + MAX_PENDING_BACKEND {
            if join {
                return false;
            }
            // Cannot wait its turn: the connection ends rather than stay in the room.
            tracing::info!(sid = %socket.id, "disconnecting a socket with too many operations waiting to leave a room");
            conn::disconnect(socket, DisconnectReason::Disconnected { reconnect: true });
            return true;
        }
        let ticket = Turns::ticket(&conn);
        tokio::spawn(async move {
            let _turn = ticket.wait().await;
            if conn.is_closed() {
                return;
            }
            if join {
                backend_join(&socket, &gw, &conn, &room).await;
            } else {
                backend_leave(&socket, &gw, &conn, &room).await;
            }
        });
        true
    }
}

/// Operations a backend may have waiting on one socket beyond the client's own.
const MAX_PENDING_BACKEND: u64 = 224;

/// A backend's join: a client's join without the token check and without history; the socket
/// is told with `roomcast:joined`.
pub(super) async fn backend_join(socket: &SocketRef, gw: &Shared, conn: &Conn, room: &Room) {
    let name = room.to_string();
    if conn.is_in(&name) {
        // Already there (by its token or an earlier join): it now stays across refreshes.
        conn.granted_by_backend_now(&name);
        return;
    }
    if !gw.presence.has_room(room) {
        tracing::warn!(room = %name, "a backend's join was dropped: the tenant's presence changes are backed up");
        return;
    }
    let generation = match enter(conn, &gw.membership, room, gw.config.max_rooms_per_socket).await {
        Ok(generation) => generation,
        Err(e) => {
            tracing::info!(room = %name, code = %e.code, "a backend's join was refused");
            return;
        }
    };
    conn.granted_by_backend_now(&name);
    let attached = gw.delivery.sequencer().attach(socket.id, &name, None, generation).await;
    gw.presence.entered(room, &conn.identity().user, conn.status());
    let (offset, epoch) = attached.position.map(|p| (p.offset, p.epoch)).unzip();
    let notice = serde_json::json!({ "room": name, "offset": offset, "epoch": epoch });
    if socket.emit(JOINED_EVENT, &notice).is_ok() {
        metrics::emitted(JOINED_EVENT, 1);
    }
}

/// A backend's leave (barred already, see [`BackendControl`]): the client's leave, whatever the
/// token grants; the socket is told with `roomcast:left` when it was in the room.
async fn backend_leave(socket: &SocketRef, gw: &Shared, conn: &Conn, room: &Room) {
    let name = room.to_string();
    let was_in = conn.is_in(&name);
    leave_room(socket, gw, conn, room).await;
    if was_in && socket.emit(LEFT_EVENT, &serde_json::json!({ "room": name })).is_ok() {
        metrics::emitted(LEFT_EVENT, 1);
    }
}

/// Sent to a socket a backend made join a room.
const JOINED_EVENT: &str = "roomcast:joined";
/// Sent to a socket a backend made leave a room.
const LEFT_EVENT: &str = "roomcast:left";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use serde_json::json;

    fn identity() -> Identity {
        Identity {
            tenant: "t1".into(),
            user: "u1".into(),
            projects: Scope::Only(vec!["p1".into()]),
            channels: Scope::All,
            publish: Scope::Only(Vec::new()),
            exp: 0,
            jti: None,
            iat: None,
            claims: None,
            observer: false,
        }
    }

    #[test]
    fn requests_are_validated_then_authorized() {
        let id = identity();
        let requested = |v: Value| {
            let request: payloads::Leave = payloads::parse(Ok(v), ROOM_SHAPE)?;
            requested_room(&request.room, &id)
        };
        let code = |v: Value| requested(v).unwrap_err().code;
        assert_eq!(requested(json!({"project": "p1"})).unwrap().to_string(), "tenant:t1:project:p1");
        assert_eq!(requested(json!({"channel": "any"})).unwrap().to_string(), "tenant:t1:channel:any");
        assert_eq!(code(json!({"project": "p2"})), ErrorCode::Forbidden);
        assert_eq!(code(json!({"project": "p1:x"})), ErrorCode::InvalidRoom);
        assert_eq!(code(json!({"channel": ""})), ErrorCode::InvalidRoom);
        assert_eq!(code(json!({"project": 7})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"project": "p1", "channel": "c"})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"project": "p1", "channel": null})), ErrorCode::InvalidPayload, "both named");
        assert_eq!(code(json!({"project": null})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!("p1")), ErrorCode::InvalidPayload);
        assert_eq!(code(Value::Null), ErrorCode::InvalidPayload);
    }
}

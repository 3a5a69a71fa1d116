//! Which rooms a socket is in: authorizing `join`/`leave`, recording them in the socket's
//! [`Conn`], and counting local members per room so the bus is subscribed exactly while a room
//! has members on this replica.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use futures_util::{FutureExt, future::Shared};
use roomcast_publisher::{Room, RoomKind};
use serde_json::Value;
use socketioxide::extract::SocketRef;

use crate::{
    auth::Identity,
    bus::{BoxFuture, Bus, BusError},
    conn::Conn,
    errors::{ClientError, ErrorCode},
    metrics,
};

/// Local members per room, and the bus subscriptions that follow from them.
pub struct Membership {
    /// Room name → its local members. A std mutex: held only to update the count and to
    /// *issue* the bus call, never across an await, which keeps the bus calls for one room in
    /// the order the counts changed.
    counts: Mutex<HashMap<String, Local>>,
    /// Numbers each period during which a room has local members (see [`Entered::generation`]).
    generations: std::sync::atomic::AtomicU64,
    bus: Arc<dyn Bus>,
    /// Forgets a room's delivery sequence when its last local member leaves.
    delivery: Arc<crate::delivery::Delivery>,
}

/// One room's local members.
struct Local {
    members: u32,
    generation: u64,
    /// The confirmation of the subscription the first member started: every later member
    /// waits for it too, so no join reads the room's history position before Redis delivers
    /// the room's events here.
    subscribed: Shared<BoxFuture<'static, Result<(), BusError>>>,
}

/// The outcome of [`Membership::enter`].
pub struct Entered<F> {
    /// The room's current membership period on this replica: it changes each time the room
    /// gets a first local member again, so delivery state kept from an earlier period (when
    /// the replica was not subscribed) is recognised as stale.
    pub generation: u64,
    /// Resolves once the bus delivers the room's events here.
    pub subscribed: F,
}

impl<F> std::fmt::Debug for Entered<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("rooms", &self.room_count()).finish_non_exhaustive()
    }
}

impl Membership {
    /// A registry driving `bus`.
    pub fn new(bus: Arc<dyn Bus>, delivery: Arc<crate::delivery::Delivery>) -> Self {
        Membership { counts: Mutex::new(HashMap::new()), generations: Default::default(), bus, delivery }
    }

    /// A local socket entered `room`.
    pub fn enter(&self, room: &str) -> Entered<impl Future<Output = Result<(), BusError>> + Send + 'static + use<>> {
        let mut counts = self.lock();
        match counts.get_mut(room) {
            Some(local) => {
                local.members += 1;
                Entered { generation: local.generation, subscribed: local.subscribed.clone() }
            }
            None => {
                let subscribed = self.bus.subscribe(room).shared();
                let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                counts.insert(room.to_owned(), Local { members: 1, generation, subscribed: subscribed.clone() });
                Entered { generation, subscribed }
            }
        }
    }

    /// A local socket left `room`.
    pub fn exit(&self, room: &str) -> impl Future<Output = Result<(), BusError>> + Send + 'static + use<> {
        let unsubscribe = {
            let mut counts = self.lock();
            match counts.get_mut(room) {
                Some(local) if local.members > 1 => {
                    local.members -= 1;
                    None
                }
                Some(_) => {
                    counts.remove(room);
                    Some(self.bus.unsubscribe(room))
                }
                None => None,
            }
        };
        let (delivery, room) = (self.delivery.clone(), room.to_owned());
        async move {
            match unsubscribe {
                Some(confirmed) => {
                    delivery.forget_room(&room).await;
                    confirmed.await
                }
                None => Ok(()),
            }
        }
    }

    /// Number of rooms with at least one local member.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    /// The current membership period of `room` (0: no local member).
    pub fn generation(&self, room: &str) -> u64 {
        self.lock().get(room).map_or(0, |local| local.generation)
    }

    /// Local members of `room`.
    pub fn members(&self, room: &str) -> u32 {
        self.lock().get(room).map_or(0, |local| local.members)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The room a `join`/`leave` payload names, authorized against `identity`.
///
/// The payload is `{ "project": "<id>" }` or `{ "channel": "<id>" }`. The tenant always comes
/// from the token, so a client can never name a room of another tenant.
pub fn requested_room(payload: &Value, identity: &Identity) -> Result<Room, ClientError> {
    let invalid = |msg: &str| ClientError::new(ErrorCode::InvalidPayload, msg);
    let Some(obj) = payload.as_object() else {
        return Err(invalid("payload must be an object: { project: \"<id>\" } or { channel: \"<id>\" }"));
    };
    let (kind, id) = match (obj.get("project"), obj.get("channel")) {
        (Some(p), None) => (RoomKind::Project, p),
        (None, Some(c)) => (RoomKind::Channel, c),
        (Some(_), Some(_)) => return Err(invalid("name either a project or a channel, not both")),
        (None, None) => {
            return Err(invalid("payload needs a \"project\" or a \"channel\" field"));
        }
    };
    let Some(id) = id.as_str() else {
        return Err(invalid("the room id must be a string"));
    };
    let room = match kind {
        RoomKind::Project => Room::project(&identity.tenant, id),
        _ => Room::channel(&identity.tenant, id),
    }
    .map_err(|e| ClientError::new(ErrorCode::InvalidRoom, format!("{} id: {e}", kind.as_str())))?;
    let allowed = match kind {
        RoomKind::Project => identity.projects.allows(id),
        _ => identity.channels.allows(id),
    };
    if !allowed {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("token does not grant {} {id:?}", kind.as_str())));
    }
    Ok(room)
}

/// Records `socket`'s entry into `room` (the caller checked it is not there yet) and
/// subscribes the bus if it is the room's first local member; resolves once the bus confirmed,
/// with the room's membership generation (see [`Entered::generation`]). The socket itself is
/// put in the room by [`crate::delivery::Delivery::attach`], which orders history and live
/// events for it.
pub async fn enter(conn: &Conn, membership: &Membership, room: &Room, max_rooms: u32) -> Result<u64, ClientError> {
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
pub fn enter_now(
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
pub async fn confirm(subscribed: impl Future<Output = Result<(), BusError>>) {
    if let Err(e) = subscribed.await {
        tracing::warn!(error = %e, "room subscription not confirmed yet");
    }
}

/// Takes `socket` out of `room` as far as membership goes (idempotent), unsubscribing the bus
/// if it was the last local member. `false` if Roomcast's record says it was not in the room.
pub async fn exit(socket: &SocketRef, conn: &Conn, membership: &Membership, room: &Room) -> bool {
    let name = room.to_string();
    if !conn.exit(&name) {
        return false;
    }
    socket.leave(name.clone());
    metrics::room_left(room.kind());
    if let Err(e) = membership.exit(&name).await {
        tracing::warn!(error = %e, "room unsubscription not confirmed");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Scope, bus::memory::MemoryBus};
    use serde_json::json;

    fn identity() -> Identity {
        Identity {
            tenant: "t1".into(),
            user: "u1".into(),
            projects: Scope::Only(vec!["p1".into()]),
            channels: Scope::All,
            exp: 0,
        }
    }

    #[test]
    fn requests_are_validated_then_authorized() {
        let id = identity();
        let code = |v: Value| requested_room(&v, &id).unwrap_err().code;
        assert_eq!(requested_room(&json!({"project": "p1"}), &id).unwrap().to_string(), "tenant:t1:project:p1");
        assert_eq!(requested_room(&json!({"channel": "any"}), &id).unwrap().to_string(), "tenant:t1:channel:any");
        assert_eq!(code(json!({"project": "p2"})), ErrorCode::Forbidden);
        assert_eq!(code(json!({"project": "p1:x"})), ErrorCode::InvalidRoom);
        assert_eq!(code(json!({"channel": ""})), ErrorCode::InvalidRoom);
        assert_eq!(code(json!({"project": 7})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"project": "p1", "channel": "c"})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!("p1")), ErrorCode::InvalidPayload);
        assert_eq!(code(Value::Null), ErrorCode::InvalidPayload);
    }

    #[tokio::test]
    async fn the_bus_is_subscribed_exactly_while_a_room_has_local_members() {
        let delivery = Arc::new(crate::delivery::Delivery::new("test".into(), 1024, std::time::Duration::from_secs(6)));
        let bus = Arc::new(MemoryBus::new(delivery.clone(), None));
        let m = Membership::new(bus.clone(), delivery);
        let first = m.enter("r");
        let second = m.enter("r");
        assert_eq!(first.generation, second.generation, "one membership period");
        second.subscribed.await.unwrap();
        assert!(bus.is_subscribed("r"));
        m.exit("r").await.unwrap();
        assert!(bus.is_subscribed("r"), "one member is still here");
        m.exit("r").await.unwrap();
        assert!(!bus.is_subscribed("r"));
        m.exit("r").await.unwrap();
        assert_eq!((m.room_count(), bus.subscription_count()), (0, 0));
    }
}

//! Local delivery: an envelope that reached this replica, from whichever bus, is checked and
//! emitted to the sockets here that are in its room.
//!
//! Publishers are untrusted: an envelope with an unknown version, a room that is not a
//! canonical name, a reserved event name or an oversized payload is dropped and counted,
//! never emitted.

use std::sync::Arc;

use roomcast_publisher::{
    Room, RoomKind,
    wire::{self, ControlEnvelope, ControlOp, Revocation},
};
use serde::Serialize;
use socketioxide::extract::SocketRef;

use crate::{
    backend::{BoxFuture, ControlAck},
    bus::Inbound,
    envelope::{Envelope, EventEnvelope, PresenceAction, PresenceEnvelope, Typing},
    errors::DisconnectReason,
    history::History,
    local::Local,
    metrics, presence,
    recovery::Sequencer,
    revocations::{self, Revocations},
    typing::{Indicators, Show},
};

/// The payload clients receive for a typing indicator.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingPayload<'a> {
    /// Channel id (not the room name).
    pub channel: &'a str,
    /// Who is typing.
    pub user_id: &'a str,
    /// Started or stopped.
    pub typing: bool,
    /// How long the indicator lasts without a refresh.
    pub ttl_ms: u64,
}

/// The protocol edge's part in a backend moving sockets between rooms (control `join` and
/// `leave`): a client's own join or leave, without the token check, in the socket's turn.
pub trait RoomControl: std::fmt::Debug + Send + Sync + 'static {
    /// Schedules `socket` to join (`join`) or leave `room` after the operations it already
    /// sent; `false` when it cannot (closing, or too many operations waiting).
    fn schedule(&self, socket: SocketRef, room: Room, join: bool) -> bool;
}

/// Why an inbound envelope was dropped; a bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON, or not an envelope.
    Malformed,
    /// A format version this replica does not speak.
    Version,
    /// The room is not a canonical room name (or not the channel's room).
    Room,
    /// A reserved or malformed event name.
    EventName,
    /// `data` over the payload limit.
    TooLarge,
    /// A typing indicator for something other than a channel, or with a bad user id.
    Typing,
    /// A presence change for a room without presence, or with a bad user id or status.
    Presence,
    /// A control envelope with an invalid field (reason, message, socket, id).
    Control,
}

impl Rejection {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Version => "version",
            Rejection::Room => "room",
            Rejection::EventName => "event_name",
            Rejection::TooLarge => "too_large",
            Rejection::Typing => "typing",
            Rejection::Presence => "presence",
            Rejection::Control => "control",
        }
    }
}

/// Emits envelopes to this replica's sockets.
#[derive(Debug)]
pub struct Delivery {
    /// The local sockets.
    local: Local,
    /// Orders events published with history (see [`crate::recovery`]).
    sequencer: Arc<Sequencer>,
    /// This replica's id: typing indicators it originated were already delivered here.
    node_id: Arc<str>,
    /// Largest `data` accepted, in bytes.
    max_payload: usize,
    /// Typing indicators shown to this replica's members.
    indicators: Indicators,
    /// Revoked tokens: revoke envelopes add to them.
    revocations: Arc<Revocations>,
    /// Set by the protocol edge once it is attached (see [`Delivery::set_room_control`]).
    room_control: std::sync::OnceLock<Arc<dyn RoomControl>>,
}

impl Delivery {
    /// Lets control `join` and `leave` envelopes reach the sockets (the protocol edge calls it
    /// once; until then they reach none).
    pub fn set_room_control(&self, control: Arc<dyn RoomControl>) {
        let _ = self.room_control.set(control);
    }

    /// Disconnects the local sockets holding a token `revocation` revokes, with `token_revoked`;
    /// returns how many. Only its room can hold them (every socket is in its tenant's and its
    /// user's room).
    pub async fn disconnect_revoked(&self, revocation: &Revocation) -> u64 {
        let Ok(room) = revocation.room() else { return 0 };
        let pick = |s: &socketioxide::extract::SocketRef| {
            s.extensions
                .get::<Arc<crate::conn::Conn>>()
                .is_some_and(|conn| revocations::revokes(revocation, &conn.identity()))
        };
        let none = serde_json::Map::new();
        self.local.disconnect_room(&room.to_string(), &pick, DisconnectReason::TokenRevoked, &none).await
    }

    /// A delivery for replica `node_id` to `local`'s sockets, recovering from `history`.
    pub fn new(
        local: Local,
        history: Option<Arc<dyn History>>,
        node_id: Arc<str>,
        max_payload: usize,
        typing_ttl: std::time::Duration,
        revocations: Arc<Revocations>,
    ) -> Self {
        Delivery {
            revocations,
            room_control: std::sync::OnceLock::new(),
            sequencer: Arc::new(Sequencer::new(local.clone(), history)),
            local,
            node_id,
            max_payload,
            indicators: Indicators::new(typing_ttl),
        }
    }

    /// This replica's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The sequencer of events published with history: joins attach through it.
    pub fn sequencer(&self) -> &Arc<Sequencer> {
        &self.sequencer
    }

    /// The local sockets.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Parses and delivers an envelope received as JSON on `channel_room`'s channel; for a
    /// control envelope, what this replica did (to acknowledge).
    pub async fn deliver_json(&self, channel_room: &str, json: &str) -> Option<ControlAck> {
        match Envelope::from_json(json) {
            Ok(envelope) if envelope.room() == channel_room => self.deliver(&envelope).await,
            Ok(_) => {
                metrics::bus_rejected(Rejection::Room.as_str());
                None
            }
            Err(_) => {
                metrics::bus_rejected(Rejection::Malformed.as_str());
                None
            }
        }
    }

    /// Delivers `envelope`, received from the bus, to the local members of its room; for a
    /// control envelope, what this replica did (to acknowledge).
    pub async fn deliver(&self, envelope: &Envelope) -> Option<ControlAck> {
        self.deliver_from(envelope, true).await
    }

    /// Delivers `envelope`, originated on this replica, to the local members of its room.
    pub async fn deliver_originated(&self, envelope: &Envelope) {
        self.deliver_from(envelope, false).await;
    }

    async fn deliver_from(&self, envelope: &Envelope, from_bus: bool) -> Option<ControlAck> {
        let result = match envelope {
            Envelope::Event(event) => self.deliver_event(event).await.map(|()| None),
            Envelope::Typing(typing) => self.deliver_typing(typing, from_bus).await.map(|()| None),
            Envelope::Presence(presence) => self.deliver_presence(presence).await.map(|()| None),
            Envelope::Control(control) => self.deliver_control(control).await.map(Some),
        };
        match result {
            Ok(ack) => ack,
            Err(rejection) => {
                metrics::bus_rejected(rejection.as_str());
                tracing::debug!(room = envelope.room(), reason = rejection.as_str(), "dropped an inbound envelope");
                None
            }
        }
    }

    /// Acts on a control envelope for the room's local sockets.
    async fn deliver_control(&self, c: &ControlEnvelope) -> Result<ControlAck, Rejection> {
        if c.v != wire::VERSION {
            return Err(Rejection::Version);
        }
        Room::parse(&c.room).ok_or(Rejection::Room)?;
        c.validate().map_err(|_| Rejection::Control)?;
        let sockets = match c.op {
            ControlOp::Disconnect => {
                let mut extra = serde_json::Map::new();
                if let Some(reason) = &c.reason {
                    extra.insert("reason".into(), reason.clone().into());
                }
                if let Some(message) = &c.message {
                    extra.insert("message".into(), message.clone().into());
                }
                let reason = DisconnectReason::Disconnected { reconnect: c.reconnect };
                let only = c.socket.as_deref();
                let pick = |s: &socketioxide::extract::SocketRef| {
                    only.is_none_or(|sid| s.id.as_str() == sid) && !crate::conn::is_observer(s)
                };
                self.local.disconnect_room(&c.room, &pick, reason, &extra).await
            }
            ControlOp::Revoke => {
                // Only the shape the gateway sends: the revocation, valid, on its own room.
                let now = wire::now_ms();
                let revocation = c.revocation.as_ref().filter(|r| r.validate(now).is_ok()).ok_or(Rejection::Control)?;
                let until =
                    c.until.filter(|u| Revocation::validate_until(*u, now).is_ok()).ok_or(Rejection::Control)?;
                if revocation.room().map(|room| room.to_string()).ok().as_deref() != Some(c.room.as_str()) {
                    return Err(Rejection::Control);
                }
                self.revocations.add(revocation, until);
                self.disconnect_revoked(revocation).await
            }
            ControlOp::Join | ControlOp::Leave => {
                let target = c.target.as_deref().and_then(Room::parse).ok_or(Rejection::Control)?;
                let Some(control) = self.room_control.get() else { return Err(Rejection::Control) };
                let join = c.op == ControlOp::Join;
                let only = c.socket.as_deref();
                let mut scheduled = 0;
                for socket in self.local.sockets_in(&c.room) {
                    if only.is_none_or(|sid| socket.id.as_str() == sid)
                        && control.schedule(socket, target.clone(), join)
                    {
                        scheduled += 1;
                    }
                }
                scheduled
            }
            _ => return Err(Rejection::Control),
        };
        Ok(ControlAck { room: c.room.clone(), id: c.id.clone(), sockets, node: self.node_id.to_string() })
    }

    async fn deliver_event(&self, e: &EventEnvelope) -> Result<(), Rejection> {
        if e.v != wire::VERSION {
            return Err(Rejection::Version);
        }
        Room::parse(&e.room).ok_or(Rejection::Room)?;
        wire::validate_event_name(&e.event).map_err(|_| Rejection::EventName)?;
        if e.data.get().len() > self.max_payload {
            return Err(Rejection::TooLarge);
        }
        if e.offset.is_some() && e.epoch.is_some() {
            self.sequencer.sequence(e).await;
        } else {
            // Published without history: live only, nothing to order against.
            self.local.emit_event_except(e, None).await;
        }
        Ok(())
    }

    async fn deliver_typing(&self, typing: &Typing, from_bus: bool) -> Result<(), Rejection> {
        let t = &typing.indicator;
        if t.v != wire::VERSION {
            return Err(Rejection::Version);
        }
        if from_bus && typing.origin.as_deref() == Some(&*self.node_id) {
            // Originated here and already delivered to local sockets before it was published.
            return Ok(());
        }
        let room = Room::parse(&t.room).ok_or(Rejection::Room)?;
        if room.kind() != RoomKind::Channel || roomcast_publisher::validate_id(&t.user).is_err() {
            return Err(Rejection::Typing);
        }
        match self.indicators.observe(&t.room, &t.user, t.typing) {
            Show::Nothing => {}
            Show::On { refresh } => self.emit_typing(&room, &t.user, true, refresh).await,
            Show::Off => self.emit_typing(&room, &t.user, false, false).await,
        }
        Ok(())
    }

    /// Emits `typing` to the channel's local members, except the typer's own sockets.
    async fn emit_typing(&self, room: &Room, user: &str, typing: bool, volatile: bool) {
        let (Some(channel), Ok(user_room)) = (room.id(), Room::user(room.tenant_id(), user)) else {
            return;
        };
        let ttl_ms = self.indicators.ttl().as_millis() as u64;
        let payload = TypingPayload { channel, user_id: user, typing, ttl_ms };
        // A refresh that does not get through changes nothing the client shows: volatile.
        self.local.emit_to_room(room.to_string(), Some(user_room.to_string()), "typing", &payload, volatile).await;
        metrics::delivered("typing", self.local.members(&room.to_string()));
    }

    /// Turns off, for local members, the indicators whose TTL ran out. Runs for the gateway's life.
    pub async fn expire_typing(&self) {
        loop {
            for (room, user) in self.indicators.expired().await {
                if let Some(room) = Room::parse(&room) {
                    metrics::typing_expired();
                    self.emit_typing(&room, &user, false, false).await;
                }
            }
        }
    }

    async fn deliver_presence(&self, p: &PresenceEnvelope) -> Result<(), Rejection> {
        if p.v != wire::VERSION {
            return Err(Rejection::Version);
        }
        let room = Room::parse(&p.room).ok_or(Rejection::Room)?;
        if !presence::tracked(&room) || roomcast_publisher::validate_id(&p.user).is_err() {
            return Err(Rejection::Presence);
        }
        let (kind, id) = presence::room_field(&room);
        let mut payload = serde_json::Map::new();
        payload.insert(kind.to_owned(), id.into());
        payload.insert("userId".to_owned(), p.user.clone().into());
        if p.action != PresenceAction::Leave {
            let status = p.status.as_deref().unwrap_or("online");
            if presence::Status::parse(status).is_err() {
                return Err(Rejection::Presence);
            }
            payload.insert("status".to_owned(), status.into());
        }
        if let Some(since) = p.since {
            payload.insert("since".to_owned(), since.into());
        }
        self.local.emit_to_room(p.room.clone(), None, p.action.event(), &payload, false).await;
        metrics::delivered("presence", self.local.members(&p.room));
        Ok(())
    }
}

impl Inbound for Delivery {
    fn deliver<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Option<ControlAck>> {
        Box::pin(Delivery::deliver(self, envelope))
    }

    fn deliver_json<'a>(&'a self, room: &'a str, json: &'a str) -> BoxFuture<'a, Option<ControlAck>> {
        Box::pin(Delivery::deliver_json(self, room, json))
    }

    fn hold<'a>(
        &'a self,
        wanted: &'a (dyn Fn(&str) -> bool + Send + Sync),
        seeding: bool,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.sequencer.hold(wanted, seeding))
    }

    fn catch_up(&self, rooms: Vec<String>) {
        self.sequencer.spawn_catch_up(rooms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bus::memory::MemoryBus, rooms::Membership};
    use socketioxide::SocketIo;

    /// A delivery from Redis can arrive after the shutdown closed the server; socketioxide's
    /// `SocketIo::within` panics then ("default namespace not found").
    #[tokio::test]
    async fn deliveries_after_the_server_closed_are_dropped() {
        let (bus, _) = MemoryBus::new(None);
        let (_layer, io) = SocketIo::new_layer();
        io.ns("/", async |_: socketioxide::extract::SocketRef| {});
        let local = Local::new(
            io.clone(),
            Arc::new(Membership::new(Arc::new(bus))),
            crate::local::Pace::half_of(1 << 20, 1024),
        );
        let delivery =
            Delivery::new(local, None, "n1".into(), 1024, std::time::Duration::from_secs(6), Default::default());
        io.close().await;

        let room = "tenant:t1:channel:c1";
        let event = r#"{"type":"event","v":1,"id":"e1","room":"tenant:t1:channel:c1","event":"x","data":{},"ts":1}"#;
        let typing = r#"{"type":"typing","v":1,"room":"tenant:t1:channel:c1","user":"u1","typing":true,"ts":1}"#;
        for json in [event, typing] {
            delivery.deliver_json(room, json).await;
        }
        assert!(delivery.local().root().is_none());
    }
}

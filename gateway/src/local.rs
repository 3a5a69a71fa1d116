//! This replica's sockets, as the domain core reaches them: by room or by socket id, to emit to,
//! count, or move between rooms. The only place below the protocol edge that holds the
//! Socket.IO server; the core never holds a socket handle.

use std::sync::Arc;

use roomcast_publisher::wire::EventEnvelope;
use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{
    BroadcastError, SocketError, SocketIo, extract::SocketRef, operators::BroadcastOperators, socket::Sid,
};

use crate::{
    logging::{Throttled, WARN_EVERY},
    metrics,
    rooms::Membership,
};

/// The second argument of every published event a client receives.
#[derive(Debug, Serialize)]
pub struct EventMeta<'a> {
    /// Canonical room name.
    pub room: &'a str,
    /// The publisher's event id.
    pub id: &'a str,
    /// Publish time, ms since the Unix epoch.
    pub ts: u64,
    /// The event's offset in the room (with history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The room history's epoch (with history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    /// The user who published it from a client (`publish`); absent for backend publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
}

impl<'a> EventMeta<'a> {
    /// The meta of `e`.
    pub fn of(e: &'a EventEnvelope) -> Self {
        EventMeta {
            room: &e.room,
            id: &e.id,
            ts: e.ts,
            offset: e.offset,
            epoch: e.epoch.as_deref(),
            from: e.from.as_deref(),
        }
    }
}

/// The local sockets: the Socket.IO server and the local member counts.
#[derive(Debug, Clone)]
pub struct Local {
    io: SocketIo,
    membership: Arc<Membership>,
    pace: Pace,
}

/// When a long run of emits to one socket (a recovery replay) waits for its buffer to drain:
/// above half of either slow-consumer bound, so a replay never makes a healthy client a slow
/// consumer.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Half of `ROOMCAST_CLIENT_BUFFER_BYTES`.
    pub bytes: usize,
    /// Half of `ROOMCAST_CLIENT_BUFFER`.
    pub packets: usize,
}

impl Pace {
    /// Half of the slow-consumer bounds `bytes` and `packets`.
    pub fn half_of(bytes: usize, packets: usize) -> Pace {
        Pace { bytes: bytes / 2, packets: packets / 2 }
    }
}

impl Local {
    /// The sockets of `io`, whose room memberships `membership` counts; replays pace themselves
    /// by `pace`.
    pub fn new(io: SocketIo, membership: Arc<Membership>, pace: Pace) -> Self {
        Local { io, membership, pace }
    }

    /// Waits until socket `sid`'s send buffer is below the pace marks, so that the emits that
    /// follow do not overflow it; gives up after a while (a client that does not read is the
    /// slow-consumer policy's and the heartbeat's to evict) or when the socket is gone.
    pub async fn wait_for_room(&self, sid: Sid) {
        /// Longer than a healthy client needs to read half a buffer, shorter than a join ack
        /// should take.
        const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        while let Some(socket) = self.socket(sid) {
            if (socket.buffered_bytes() <= self.pace.bytes && socket.buffered_packets() <= self.pace.packets)
                || tokio::time::Instant::now() >= deadline
            {
                return;
            }
            drop(socket);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Broadcast operators on the root namespace; `None` once the shutdown closed the server.
    /// (socketioxide's `SocketIo::within` panics when the namespace is gone, which a delivery
    /// racing the drain would hit.)
    pub fn root(&self) -> Option<BroadcastOperators> {
        self.io.of("/")
    }

    /// The socket `sid`, if it is still connected here.
    pub fn socket(&self, sid: Sid) -> Option<SocketRef> {
        self.root()?.get_socket(sid)
    }

    /// The local sockets in `room`.
    pub fn sockets_in(&self, room: &str) -> Vec<SocketRef> {
        self.root().map(|root| root.within(room.to_owned()).sockets()).unwrap_or_default()
    }

    /// Puts socket `sid` in `rooms`, if it is still connected.
    pub fn join(&self, sid: Sid, rooms: Vec<String>) {
        if let Some(socket) = self.socket(sid) {
            socket.join(rooms);
        }
    }

    /// Takes socket `sid` out of `room`, if it is still connected.
    pub fn leave(&self, sid: Sid, room: String) {
        if let Some(socket) = self.socket(sid) {
            socket.leave(room);
        }
    }

    /// Disconnects `room`'s local sockets that `pick` chooses for `reason`, adding `extra` to
    /// their `roomcast:disconnect`; returns how many it reached.
    pub async fn disconnect_room(
        &self,
        room: &str,
        pick: &(dyn Fn(&SocketRef) -> bool + Sync),
        reason: crate::errors::DisconnectReason,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> u64 {
        let Some(root) = self.root() else { return 0 };
        let mut reached = 0;
        for socket in root.within(room.to_owned()).sockets() {
            if !pick(&socket) {
                continue;
            }
            crate::conn::disconnect_with(socket, reason, extra);
            reached += 1;
            if reached % 256 == 0 {
                // A tenant-wide disconnect may reach tens of thousands: let other tasks run.
                tokio::task::yield_now().await;
            }
        }
        reached
    }

    /// Emits `event` with `payload` to `room`'s local members, except those in room `except`.
    /// `volatile`: a socket whose buffer is full just misses it (nothing is counted).
    pub async fn emit_to_room<T: Serialize + ?Sized>(
        &self,
        room: String,
        except: Option<String>,
        event: &str,
        payload: &T,
        volatile: bool,
    ) {
        let Some(root) = self.root() else { return };
        let to = root.within(room);
        let to = match except {
            Some(room) => to.except(room),
            None => to,
        };
        let to = if volatile { to.volatile() } else { to };
        note_emit_errors(to.emit(event, payload).await);
    }

    /// Local members of `room`.
    pub fn members(&self, room: &str) -> u64 {
        u64::from(self.membership.members(room))
    }

    /// Emits `e` to its room's local members, except those in room `except` and the socket the
    /// envelope excludes (`e.except`).
    pub async fn emit_event_except(&self, e: &EventEnvelope, except: Option<String>) {
        let meta = EventMeta::of(e);
        let args: (&RawValue, &EventMeta<'_>) = (&e.data, &meta);
        match e.except.as_deref().and_then(|sid| sid.parse::<Sid>().ok()) {
            // Only if that socket is here; socketioxide excludes rooms, not sockets, so the
            // room's other members get it one by one (an encode each).
            Some(sid) if self.socket(sid).is_some_and(|s| s.rooms().iter().any(|r| *r == e.room)) => {
                let skipped: Vec<Sid> =
                    except.map(|room| self.sockets_in(&room).iter().map(|s| s.id).collect()).unwrap_or_default();
                for socket in self.sockets_in(&e.room) {
                    if socket.id != sid && !skipped.contains(&socket.id) {
                        self.emit_to_socket(socket.id, e);
                    }
                }
            }
            _ => self.emit_to_room(e.room.clone(), except, &e.event, &args, false).await,
        }
        metrics::delivered("event", self.members(&e.room));
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        metrics::delivery_latency(now_us.saturating_sub(e.ts.saturating_mul(1000)));
    }

    /// Emits `e` to socket `sid` (if it is still connected, and not the socket `e` excludes:
    /// that one never gets it, live, while recovering or on a replay).
    pub fn emit_to_socket(&self, sid: Sid, e: &EventEnvelope) {
        if e.except.as_deref().is_some_and(|except| except == sid.as_str()) {
            return;
        }
        let Some(socket) = self.socket(sid) else { return };
        let meta = EventMeta::of(e);
        let args: (&RawValue, &EventMeta<'_>) = (&e.data, &meta);
        // A closed socket is just disconnecting; only a full buffer loses the event for it.
        if let Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)) = socket.emit(&e.event, &args) {
            metrics::client_buffer_full(1);
        }
    }
}

/// Counts sockets a broadcast skipped. A full send buffer means the client reads slower than
/// events arrive: the event is lost for that socket, so it is counted (and, with room offsets,
/// the client sees the gap). Closed sockets are just disconnecting and not counted.
fn note_emit_errors(result: Result<(), BroadcastError>) {
    static BUFFER_FULL: Throttled = Throttled::new(WARN_EVERY);
    static FAILED: Throttled = Throttled::new(WARN_EVERY);
    match result {
        Ok(()) => {}
        Err(BroadcastError::Socket(errors)) => {
            let full = errors.iter().filter(|e| matches!(e, SocketError::InternalChannelFull)).count();
            if full > 0 {
                metrics::client_buffer_full(full as u64);
                if let Some(held) = BUFFER_FULL.check() {
                    tracing::warn!(
                        sockets = full,
                        similar_since = held,
                        "dropped an event for sockets whose send buffer is full (roomcast_client_buffer_full_total counts them all)"
                    );
                }
            }
        }
        Err(error) => {
            if let Some(held) = FAILED.check() {
                tracing::warn!(%error, similar_since = held, "local broadcast failed");
            }
        }
    }
}

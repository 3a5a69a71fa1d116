//! Lifecycle events for backends: `user.online`/`offline`, `room.occupied`/`vacated`,
//! `member.joined`/`left`, `token.refresh_failed` and `connection.refused` (the types and their
//! JSON are the publisher crate's, `roomcast_publisher::events`; PROTOCOL.md "Lifecycle events").
//!
//! Exactly once per transition, cluster-wide: presence already decides each transition in one
//! atomic step (the Redis scripts, or the memory store's lock), so that same step records the
//! event. On Redis it goes into the room's *outbox* (a list in the room's slot) and is returned
//! to the replica that ran the script, which appends it to the event log and then removes it
//! from the outbox; a replica that dies in between leaves it there for its reaper, which
//! forwards a dead replica's outbox entries room by room (the rooms stay in the replica's room
//! set until then). A user's connections are presence in their user room, so `user.online` and
//! `user.offline` get the grace period and the crash reaping of every room.
//!
//! The event log ([`EventLog`]) is a capped Redis Stream (`{prefix}:{events}`, the stream sink
//! backends may read with their own consumer group) or, on a single node, a bounded buffer in
//! memory. Webhooks ([`webhook`]) are delivered from it through a consumer group per URL, so a
//! batch a replica could not deliver is retried by it, or claimed by another replica when it
//! died. Every event carries a unique id; delivery is at least once (receivers dedupe by id).
//! What the cap trims before a sink read it is counted (`roomcast_events_dropped_total`).

pub mod memory;
pub mod redis;
pub mod webhook;

use std::{sync::Arc, time::Duration};

use roomcast_publisher::{Room, RoomKind, events::types};

use crate::{
    backend::{BoxFuture, BusError},
    errors::ErrorCode,
    limits::{Rate, SharedBucket},
};

/// Events taken from the log for one consumer: `(entry id, event JSON)` in log order, and how
/// many events this consumer's group lost to the cap before reading them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Log entry ids (what [`EventLog::ack`] takes) with the event JSON.
    pub entries: Vec<(String, String)>,
    /// Events trimmed away before this group read them.
    pub dropped: u64,
}

/// Where lifecycle events are kept until every sink has them: the Redis Stream or memory.
///
/// A *group* is one sink (a webhook URL) reading the log at its own pace; a *consumer* is one
/// replica's reader in that group. Entries a consumer read stay pending until acknowledged.
pub trait EventLog: Send + Sync + 'static {
    /// Appends events (JSON, each with its id), trimming the log to its cap.
    fn append(&self, events: Vec<String>) -> BoxFuture<'static, Result<(), BusError>>;
    /// Creates `group` if it does not exist: at the log's end (a new sink starts with new
    /// events), or `from_start` (the group vanished with Redis' data: deliver what came since).
    fn subscribe(&self, group: &str, from_start: bool) -> BoxFuture<'static, Result<(), BusError>>;
    /// Up to `count` entries `group` has not read yet, now pending for `consumer`.
    fn read(&self, group: &str, consumer: &str, count: usize) -> BoxFuture<'static, Result<Batch, BusError>>;
    /// Up to `count` entries pending for another consumer of `group` for longer than `idle`
    /// (its replica died), now pending for `consumer`; `dropped` counts those trimmed meanwhile.
    /// Consumers of replicas long gone are forgotten on the way.
    fn claim(
        &self,
        group: &str,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> BoxFuture<'static, Result<Batch, BusError>>;
    /// Marks `ids` as still being worked on by `consumer` (so no one claims them); returns those
    /// the log still has (the cap may have trimmed some).
    fn keep(&self, group: &str, consumer: &str, ids: Vec<String>) -> BoxFuture<'static, Result<Vec<String>, BusError>>;
    /// `group` has delivered `ids`.
    fn ack(&self, group: &str, ids: Vec<String>) -> BoxFuture<'static, Result<(), BusError>>;
}

/// The event types a room's presence records: for a user's first and last connection in the
/// room, and for its first and last user. `None`: not recorded (not enabled, or not this kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomTypes {
    /// A user's first connection (`user.online` in a user room, `member.joined` in a project
    /// or channel room).
    pub first: Option<&'static str>,
    /// A user's last connection.
    pub last: Option<&'static str>,
    /// The room's first user.
    pub occupied: Option<&'static str>,
    /// The room's last user.
    pub vacated: Option<&'static str>,
}

impl RoomTypes {
    /// Whether the room records anything.
    pub fn any(&self) -> bool {
        self.first.is_some() || self.last.is_some() || self.occupied.is_some() || self.vacated.is_some()
    }
}

/// Most events of each kind a replica emits on its own (`connection.refused`,
/// `token.refresh_failed`, each its own budget) per second, and at once: a flood of refused
/// connections must not flood the sinks, nor silence the refresh failures. Beyond it they are
/// dropped and counted.
const DIRECT_RATE: Rate = Rate { per_second: 100.0, burst: 1_000 };
/// Direct events waiting to be appended; beyond it they are dropped and counted.
const DIRECT_QUEUE: usize = 1_000;

/// This replica's lifecycle events: which types are on, the log, and the queue of the events it
/// emits on its own. Shared by presence (through its store) and the protocol edge.
pub struct Lifecycle {
    enabled: Vec<&'static str>,
    log: Arc<dyn EventLog>,
    direct: tokio::sync::mpsc::Sender<String>,
    /// [`DIRECT_RATE`] for `connection.refused`, and for `token.refresh_failed`.
    budgets: [SharedBucket; 2],
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// Events of the `enabled` types (names from `types::ALL`) into `log`. Spawns the task that
    /// appends the direct events: call within a runtime.
    pub fn new(enabled: &[String], log: Arc<dyn EventLog>) -> Arc<Lifecycle> {
        let enabled = types::ALL.into_iter().filter(|t| enabled.iter().any(|e| e == t)).collect();
        let (direct, mut queued) = tokio::sync::mpsc::channel::<String>(DIRECT_QUEUE);
        let appender = log.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while queued.recv_many(&mut batch, 256).await > 0 {
                let events = std::mem::take(&mut batch);
                let kinds: Vec<String> = events.iter().map(|e| kind_of(e)).collect();
                match appender.append(events).await {
                    Ok(()) => kinds.iter().for_each(|kind| crate::metrics::event_emitted(kind)),
                    Err(e) => {
                        tracing::debug!(error = %e, "lifecycle events lost: the log is unavailable");
                        crate::metrics::events_dropped("log_unavailable", kinds.len() as u64);
                    }
                }
            }
        });
        let budgets = [SharedBucket::new(DIRECT_RATE), SharedBucket::new(DIRECT_RATE)];
        Arc::new(Lifecycle { enabled, log, direct, budgets })
    }

    fn on(&self, kind: &'static str) -> Option<&'static str> {
        self.enabled.contains(&kind).then_some(kind)
    }

    /// The log (the webhook dispatchers read it).
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    /// Whether users' connections are tracked as presence in their user rooms.
    pub fn tracks_users(&self) -> bool {
        self.on(types::USER_ONLINE).is_some() || self.on(types::USER_OFFLINE).is_some()
    }

    /// What `room`'s presence records.
    pub fn room_types(&self, room: &Room) -> RoomTypes {
        match room.kind() {
            RoomKind::User => RoomTypes {
                first: self.on(types::USER_ONLINE),
                last: self.on(types::USER_OFFLINE),
                ..RoomTypes::default()
            },
            RoomKind::Project | RoomKind::Channel => RoomTypes {
                first: self.on(types::MEMBER_JOINED),
                last: self.on(types::MEMBER_LEFT),
                occupied: self.on(types::ROOM_OCCUPIED),
                vacated: self.on(types::ROOM_VACATED),
            },
            RoomKind::Tenant => RoomTypes::default(),
        }
    }

    /// A connection was refused with `code`.
    pub fn connection_refused(&self, code: ErrorCode) {
        if let Some(kind) = self.on(types::CONNECTION_REFUSED) {
            self.direct(kind, None, None, code);
        }
    }

    /// A socket's `auth:refresh` was refused with `code`.
    pub fn refresh_failed(&self, tenant: &str, user: &str, code: ErrorCode) {
        if let Some(kind) = self.on(types::TOKEN_REFRESH_FAILED) {
            self.direct(kind, Some(tenant), Some(user), code);
        }
    }

    fn direct(&self, kind: &'static str, tenant: Option<&str>, user: Option<&str>, code: ErrorCode) {
        let budget = &self.budgets[usize::from(kind == types::TOKEN_REFRESH_FAILED)];
        if budget.take().is_err() {
            crate::metrics::events_dropped("rate_limited", 1);
            return;
        }
        let event = roomcast_publisher::events::Event {
            id: new_id(),
            kind: kind.to_owned(),
            ts: roomcast_publisher::wire::now_ms(),
            tenant: tenant.map(str::to_owned),
            user: user.map(str::to_owned),
            project: None,
            channel: None,
            code: Some(code.as_str().to_owned()),
        };
        let Ok(json) = serde_json::to_string(&event) else { return };
        if self.direct.try_send(json).is_err() {
            crate::metrics::events_dropped("queue_full", 1);
        }
    }
}

/// An event of `room`'s (a project or channel room's, or a user's in a user room), as JSON: what
/// the memory store records (the Redis scripts write the same from [`room_fields`]).
pub fn room_event(kind: &str, room: &Room, user: Option<&str>, ts: u64) -> String {
    let id = |k: RoomKind| (room.kind() == k).then(|| room.id().unwrap_or_default().to_owned());
    let event = roomcast_publisher::events::Event {
        id: new_id(),
        kind: kind.to_owned(),
        ts,
        tenant: Some(room.tenant_id().to_owned()),
        user: user.map(str::to_owned),
        project: id(RoomKind::Project),
        channel: id(RoomKind::Channel),
        code: None,
    };
    serde_json::to_string(&event).unwrap_or_default()
}

/// The `type` of an event's JSON (`other` if it has none): for the metrics.
pub fn kind_of(event: &str) -> String {
    serde_json::from_str::<roomcast_publisher::events::Event>(event).map_or_else(|_| "other".to_owned(), |e| e.kind)
}

/// A new event id (or the prefix of the ids one presence script makes): 128 random bits.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The JSON members naming `room` in its events: `,"tenant":…` and `,"project":…` or
/// `,"channel":…` (a user room's user is the event's own `user`).
pub fn room_fields(room: &Room) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut fields = format!(",\"tenant\":{}", quote(room.tenant_id()));
    if let (RoomKind::Project | RoomKind::Channel, Some(id)) = (room.kind(), room.id()) {
        fields.push_str(&format!(",\"{}\":{}", room.kind().as_str(), quote(id)));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_fields_name_the_room() {
        assert_eq!(room_fields(&Room::parse("tenant:a:project:p1").unwrap()), ",\"tenant\":\"a\",\"project\":\"p1\"");
        assert_eq!(room_fields(&Room::parse("tenant:a:channel:c").unwrap()), ",\"tenant\":\"a\",\"channel\":\"c\"");
        assert_eq!(room_fields(&Room::parse("tenant:a:user:u").unwrap()), ",\"tenant\":\"a\"");
    }

    /// The scripts' events (from `room_fields`) and the memory store's (`room_event`) read the same.
    #[test]
    fn both_ways_of_writing_a_room_event_agree() {
        use roomcast_publisher::events::Event;
        for name in ["tenant:a:project:p1", "tenant:a:channel:c", "tenant:a:user:u"] {
            let room = Room::parse(name).unwrap();
            let scripted =
                format!("{{\"id\":\"x\",\"type\":\"member.left\",\"ts\":7{},\"user\":\"u\"}}", room_fields(&room));
            let scripted: Event = serde_json::from_str(&scripted).unwrap();
            let mut memory: Event = serde_json::from_str(&room_event("member.left", &room, Some("u"), 7)).unwrap();
            memory.id = "x".into();
            assert_eq!(scripted, memory, "{name}");
        }
    }
}

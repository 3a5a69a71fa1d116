//! The boundary between the socket layer and cross-replica delivery.
//!
//! The socket layer never talks to Redis: it tells a [`Bus`] which rooms have local members
//! and hands it envelopes to publish. Whatever a bus receives for a subscribed room it reports
//! to the [`Inbound`] handler registered when it is started (the delivery, which emits it to
//! the local sockets): the bus knows the handler only as this trait, as centrifuge's broker
//! knows its node through `RegisterBrokerEventHandler`.
//!
//! - [`memory::MemoryBus`]: the single-node default and the fast test double. It keeps the
//!   subscription semantics of a networked bus (a publish reaches only subscribed rooms), so
//!   a membership bug shows in single-node tests too.
//! - [`redis::RedisBus`]: replicas share rooms through Redis pub/sub (sharded on a cluster).
//!
//! Published events reach local members only through the bus, never directly, so a replica
//! emits each event exactly once whether it published it or not.

pub mod memory;
pub mod redis;

use std::time::Duration;

use roomcast_publisher::wire::Revocation;

use crate::envelope::Envelope;

pub use crate::backend::{BoxFuture, BusError, ControlAck, ControlReceipt, Published};

/// What a bus reports to the replica: envelopes for subscribed rooms, and when live delivery
/// of rooms was interrupted (so they catch up from history).
pub trait Inbound: Send + Sync + 'static {
    /// An envelope published to a room this replica is subscribed to; for a control envelope,
    /// what this replica did, which the bus acknowledges to its sender.
    fn deliver<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Option<ControlAck>>;

    /// An envelope, as JSON, received on `room`'s channel (not yet parsed or checked); as
    /// [`Inbound::deliver`].
    fn deliver_json<'a>(&'a self, room: &'a str, json: &'a str) -> BoxFuture<'a, Option<ControlAck>>;

    /// Live delivery of the rooms `wanted` picks may have lost events from now on: hold their
    /// live events until [`Inbound::catch_up`] (rooms still being seeded are marked to catch up
    /// once seeded if `seeding`). Returns the rooms held.
    fn hold<'a>(
        &'a self,
        wanted: &'a (dyn Fn(&str) -> bool + Send + Sync),
        seeding: bool,
    ) -> BoxFuture<'a, Vec<String>>;

    /// Reads what `rooms` missed from history and delivers it, then what was held, in order.
    fn catch_up(&self, rooms: Vec<String>);
}

/// A page of a room index: the next cursor (empty at the end) and the rooms.
pub type RoomPage = (String, Vec<String>);

/// How often each replica records its rooms with members in the room indexes.
pub const ROOM_INDEX_REFRESH: Duration = Duration::from_secs(10);

/// How long a room stays in its tenant's index without a replica recording it again. Generous:
/// replicas' clocks score the entries (a replica this far behind would see its rooms pruned),
/// and the listing only shows rooms with someone in them anyway.
pub const ROOM_INDEX_TTL: Duration = Duration::from_secs(120);

/// How long a replica's status stays listed after its last report (replicas report every
/// [`STATUS_EVERY`]; the margin absorbs clock differences between replicas).
pub const STATUS_TTL: Duration = Duration::from_secs(15);

/// How often each replica reports its status.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The shared list of revocations as read: its version, and each revocation with its until (ms).
pub type RevocationList = (String, Vec<(Revocation, u64)>);

/// Cross-replica delivery, as seen by the socket layer.
///
/// Calls for one room must be made in order (the membership registry does): a `subscribe`
/// issued after an `unsubscribe` for the same room wins. The returned futures resolve once the
/// backend confirmed the change; the intent is recorded when the call is made, so a bus that is
/// down re-applies it when it comes back.
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering `room`'s envelopes to this replica (its first local member arrived).
    fn subscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>>;

    /// Stops delivering `room`'s envelopes to this replica (its last local member left).
    fn unsubscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>>;

    /// Publishes envelopes to every replica subscribed to their rooms, this one included, in
    /// one round trip; events go into their room's history (when history is on), typing and
    /// presence never do. With `dedupe` (and history), an event whose id was already published
    /// to its room within that window is not published again: its receipt is the first one's,
    /// marked `duplicate`. `Err` when nothing was sent; else one result per envelope, in order.
    fn publish(
        &self,
        envelopes: Vec<Envelope>,
        dedupe: Option<Duration>,
    ) -> BoxFuture<'static, Result<Vec<Result<Published, BusError>>, BusError>>;

    /// Sends `control` to every replica with a member of its room and waits up to `wait` for
    /// their acknowledgements: how many sockets it reached, on how many of how many replicas.
    fn control(
        &self,
        control: roomcast_publisher::wire::ControlEnvelope,
        wait: Duration,
    ) -> BoxFuture<'static, Result<ControlReceipt, BusError>>;

    /// Records `revocation` in the list every replica reads, until `until_ms` (ms since the Unix
    /// epoch), unless its tenant already has `per_tenant` of them (then `Ok(false)`).
    fn record_revocation(
        &self,
        revocation: &Revocation,
        until_ms: u64,
        now_ms: u64,
        per_tenant: u64,
    ) -> BoxFuture<'static, Result<bool, BusError>>;

    /// The revocations in force at `now_ms`, each with when it may be forgotten, and the list's
    /// version; `None` when the version is still `known` (nothing changed since that read).
    fn revocations(
        &self,
        known: Option<String>,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Option<RevocationList>, BusError>>;

    /// Records that this replica has members in project or channel `rooms` (at `now_ms`), in
    /// their tenants' room indexes; with `prune`, also forgets what no replica has recorded for
    /// [`ROOM_INDEX_TTL`].
    fn index_rooms(&self, rooms: Vec<String>, now_ms: u64, prune: bool) -> BoxFuture<'static, Result<(), BusError>>;

    /// A page of `tenant`'s indexed rooms whose name starts with `prefix` (a room name of the
    /// tenant, or its start; only the id characters), from `cursor` (empty first): the next
    /// cursor (empty at the end) and the rooms. A room may appear on two pages, a page may be
    /// empty before the end; `count` is a hint. `None` when `cursor` cannot be one this bus
    /// returns (Redis: not a number; memory: not a room of the tenant).
    fn indexed_rooms(
        &self,
        tenant: &str,
        prefix: &str,
        cursor: &str,
        count: u64,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Option<RoomPage>, BusError>>;

    /// Records replica `node`'s `status` (a JSON object) at `now_ms`, for the console's replica
    /// list; a replica that stops reporting drops off it after [`STATUS_TTL`].
    fn report_status(
        &self,
        node: &str,
        status: serde_json::Value,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<(), BusError>>;

    /// Every replica's last status reported within [`STATUS_TTL`] of `now_ms`, by replica id.
    fn statuses(&self, now_ms: u64) -> BoxFuture<'static, Result<Vec<(String, serde_json::Value)>, BusError>>;

    /// Why the bus cannot deliver right now, if it cannot; feeds `/readyz`.
    fn unavailable(&self) -> Option<&'static str>;
}

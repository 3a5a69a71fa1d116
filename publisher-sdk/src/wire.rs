//! The wire format between publishers and gateway replicas: what is sent on which Redis channel.
//!
//! `PROTOCOL.md` at the root of this crate describes the same format for publishers written in
//! other languages; the two must change together (a test builds raw commands from the
//! document and checks the gateway delivers them).
//!
//! One message is one JSON object (the [`Envelope`]), published to the room's channel:
//!
//! - channel: `{prefix}:{<room>}`, e.g. `roomcast:{tenant:t1:project:p1}`. The room name in braces
//!   is a Redis Cluster hash tag, so everything Roomcast stores for a room lives in one slot.
//! - standalone Redis: `PUBLISH channel envelope`; Redis Cluster: `SPUBLISH channel envelope`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::room::Room;

/// Version of the envelope format; receivers drop envelopes of other versions.
pub const VERSION: u8 = 1;

/// Channel and key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "roomcast";

/// Largest serialized `data` accepted by default, in bytes.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// Longest event name, in bytes.
pub const MAX_EVENT_LEN: usize = 128;

/// The Lua script that publishes an event with history (see [`HistoryPolicy`] and PROTOCOL.md).
pub const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// The Lua script that records a token revocation (see [`Revocation`] and PROTOCOL.md).
pub const REVOKE_SCRIPT: &str = include_str!("revoke.lua");

/// A token revocation, as stored in [`Keys::revocations`] (the member, JSON; the score is when
/// it may be forgotten) and carried by a revoke [`ControlEnvelope`]: the token of `tenant` with
/// `jti`, or every token of `tenant`'s `user` issued before `before`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The tenant.
    pub tenant: String,
    /// The token with this `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Every token of this user issued before `before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Seconds since the Unix epoch: the user's tokens with an earlier `iat`, or none, are
    /// revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// The longest token lifetime gateways accept (`ROOMCAST_MAX_TOKEN_LIFETIME` at most), in
/// seconds: revocations are kept about this long, at most.
pub const MAX_TOKEN_LIFETIME_S: u64 = 30 * 24 * 3600;

/// How far ahead of the receiver's clock a revocation's `before` may be, in seconds (clock skew
/// between a backend and the gateways).
pub const MAX_BEFORE_SKEW_S: u64 = 60;

/// How long past a token's lifetime plus leeway a revocation is kept: `before` may be this far
/// ahead of the clock.
pub fn revocation_until(now_ms: u64, lifetime_and_leeway: std::time::Duration) -> u64 {
    let ms = u64::try_from(lifetime_and_leeway.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(ms).saturating_add(MAX_BEFORE_SKEW_S * 1000)
}

/// Why a [`Revocation`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// Neither or both of `jti` and `user`, or `before` without `user`.
    #[error("name either jti, or user (and before)")]
    Shape,
    /// The tenant or user is not an id.
    #[error("tenant and user must be ids (1-128 of A-Z a-z 0-9 _ - . @ | + =)")]
    Id,
    /// The `jti` is not 1-256 visible ASCII characters.
    #[error("jti must be 1-256 visible ASCII characters")]
    Jti,
    /// `before` is more than [`MAX_BEFORE_SKEW_S`] ahead of the clock.
    #[error("before is in the future")]
    Before,
    /// Kept longer than a token can live ([`MAX_TOKEN_LIFETIME_S`] and a day).
    #[error("kept for longer than any token can live")]
    Until,
}

impl Revocation {
    /// Checks its shape, ids and `before` (against `now_ms`, the clock now).
    pub fn validate(&self, now_ms: u64) -> Result<(), RevocationError> {
        match (&self.jti, &self.user, self.before) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => return Err(RevocationError::Shape),
        }
        if [Some(&self.tenant), self.user.as_ref()].into_iter().flatten().any(|id| crate::validate_id(id).is_err()) {
            return Err(RevocationError::Id);
        }
        // A jti is whatever the identity provider chose (UUIDs, base64): any visible ASCII.
        if self.jti.as_ref().is_some_and(|j| !(1..=256).contains(&j.len()) || !j.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(RevocationError::Jti);
        }
        if self.before.is_some_and(|b| b > (now_ms / 1000).saturating_add(MAX_BEFORE_SKEW_S)) {
            return Err(RevocationError::Before);
        }
        Ok(())
    }

    /// Checks that `until_ms` (when it may be forgotten) is no later than a token can live.
    pub fn validate_until(until_ms: u64, now_ms: u64) -> Result<(), RevocationError> {
        let latest = now_ms.saturating_add((MAX_TOKEN_LIFETIME_S + 24 * 3600) * 1000);
        if until_ms > latest { Err(RevocationError::Until) } else { Ok(()) }
    }

    /// The room whose members' replicas must hear of it at once: the user's room for "issued
    /// before", else the tenant's room.
    pub fn room(&self) -> Result<Room, crate::IdError> {
        match &self.user {
            Some(user) => Room::user(&self.tenant, user),
            None => Room::tenant(&self.tenant),
        }
    }
}

/// The keys and arguments of [`REVOKE_SCRIPT`] recording `revocation` until `until_ms`, with at
/// most `per_tenant` revocations per tenant.
pub fn revoke_script_call(
    keys: &Keys,
    revocation: &Revocation,
    until_ms: u64,
    per_tenant: u64,
) -> (Vec<String>, Vec<String>) {
    let member = serde_json::to_string(revocation).unwrap_or_default();
    (
        vec![keys.revocations(), keys.revocation_counts(), keys.revocations_version()],
        vec![member, revocation.tenant.clone(), until_ms.to_string(), per_tenant.to_string(), new_event_id()],
    )
}

/// Events a room keeps for recovery unless configured otherwise.
pub const DEFAULT_HISTORY_SIZE: u32 = 100;

/// How long a room keeps an event for recovery unless configured otherwise.
pub const DEFAULT_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a room's offset and epoch live after its last publish: much longer than its
/// history, so a client that was away for long still learns it missed events (its offset is
/// behind) rather than meeting a new epoch.
pub const META_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How much history each room keeps for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Events kept per room.
    pub size: u32,
    /// Entries older than this are dropped; an idle room's history expires after it.
    pub ttl: std::time::Duration,
}

impl Default for HistoryPolicy {
    /// 100 events, 5 minutes: enough to ride out reconnects and replica restarts.
    fn default() -> Self {
        HistoryPolicy { size: DEFAULT_HISTORY_SIZE, ttl: DEFAULT_HISTORY_TTL }
    }
}

/// The keys and arguments of [`PUBLISH_SCRIPT`] publishing `envelope_json` (an event envelope
/// without offset and epoch) to `room` with `publish_command` (`PUBLISH` or `SPUBLISH`).
pub(crate) fn publish_script_call(
    keys: &Keys,
    room: &str,
    publish_command: &str,
    envelope_json: String,
    policy: HistoryPolicy,
    dedupe: Option<Dedupe<'_>>,
) -> (Vec<String>, Vec<String>) {
    let mut call = (
        vec![keys.meta(room), keys.history(room)],
        vec![
            keys.channel(room),
            publish_command.to_owned(),
            envelope_json,
            policy.size.max(1).to_string(),
            policy.ttl.as_millis().to_string(),
            new_epoch(),
            META_TTL.as_millis().to_string(),
        ],
    );
    if let Some(Dedupe { id, window }) = dedupe {
        call.0.push(keys.dedupe(room, id));
        call.1.push(window.as_millis().max(1).to_string());
    }
    call
}

/// Publishing idempotently: a publish whose event `id` was already published to the room within
/// `window` is not published again; the first publish's receipt is returned instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dedupe<'a> {
    /// The event id, the idempotency key.
    pub id: &'a str,
    /// How long the id is remembered.
    pub window: std::time::Duration,
}

/// A new random epoch: 16 hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0)
}

/// One message a publisher sends on a room's channel.
///
/// Serialized with a `"type"` tag (`"event"`, `"typing"` or `"control"`); parse with
/// [`Envelope::from_json`].
/// Gateway replicas also send each other messages on these channels (presence changes); those
/// are the gateway's own business, not part of this format, and a publisher must not send them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    /// An application event for the room's members.
    Event(EventEnvelope),
    /// A typing indicator for a channel room.
    Typing(TypingEnvelope),
    /// An instruction to the replicas about the room's sockets (the control API).
    Control(ControlEnvelope),
}

/// What a [`ControlEnvelope`] asks the replicas to do with the room's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlOp {
    /// Disconnect them: each receives `roomcast:disconnect` `{ code: "disconnected", reason,
    /// message, reconnect }`, then a Socket.IO disconnect.
    Disconnect,
    /// Revoke tokens ([`ControlEnvelope::revocation`], sent to [`Revocation::room`]): replicas
    /// refuse such tokens from now on (at connect and refresh) and disconnect the sockets holding
    /// one with `token_revoked`. Record it with [`REVOKE_SCRIPT`] first: replicas without a
    /// member of the room learn it from there.
    Revoke,
    /// Make them join the project or channel room [`ControlEnvelope::target`] (of the same
    /// tenant), whatever their tokens grant; each receives `roomcast:joined` `{ room, offset,
    /// epoch }`.
    Join,
    /// Make them leave the project or channel room [`ControlEnvelope::target`], even one their
    /// tokens grant; for the socket's life it may not join it again by itself. Each that was
    /// in it receives `roomcast:left` `{ room }`.
    Leave,
}

/// An instruction to every replica holding sockets of `room` (all of a tenant's: its tenant
/// room; all of a user's: the user room; one socket: `socket` with any room it is in).
/// Replicas acknowledge it in the hash [`Keys::control_acks`] (fields `replicas`, `sockets`), so
/// the sender can tell how many sockets it reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlEnvelope {
    /// Format version, [`VERSION`].
    pub v: u8,
    /// Unique id chosen by the sender; names the acknowledgements.
    pub id: String,
    /// Canonical room name; must match the channel it was published on.
    pub room: String,
    /// What to do.
    pub op: ControlOp,
    /// Only this socket (its Socket.IO id) of the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The application's reason code, passed to the client as `reason` (1-64 characters of
    /// `a-z 0-9 _ . : -`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A message for people, passed to the client (at most 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the client may reconnect on its own (default: no).
    #[serde(default)]
    pub reconnect: bool,
    /// Revoke: what is revoked; `room` is [`Revocation::room`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
    /// Revoke: when the revocation may be forgotten, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Join and leave: the project or channel room (canonical name), in `room`'s tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The longest [`ControlEnvelope::message`], in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 256;

/// Why a [`ControlEnvelope`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// `reason` is empty, too long or has characters outside `a-z 0-9 _ . : -`.
    #[error("reason must be 1-64 characters of a-z 0-9 _ . : -")]
    Reason,
    /// `message` is over [`MAX_CONTROL_MESSAGE`] bytes.
    #[error("message is over {MAX_CONTROL_MESSAGE} bytes")]
    Message,
    /// `socket` is not a Socket.IO id (1-64 characters of `A-Z a-z 0-9 _ -`).
    #[error("socket is not a Socket.IO id")]
    Socket,
    /// `id` is not an id (see [`crate::validate_id`]).
    #[error("id is not valid")]
    Id,
    /// Join and leave: `target` is missing, not a project or channel room, or of another
    /// tenant; other operations: `target` is set.
    #[error("target must be a project or channel room of the same tenant (join and leave only)")]
    Target,
}

impl ControlEnvelope {
    /// Instruction `op` for `room`'s sockets, with a fresh id and none of the optional fields.
    pub fn new(room: &Room, op: ControlOp) -> Self {
        ControlEnvelope {
            v: VERSION,
            id: new_event_id(),
            room: room.to_string(),
            op,
            socket: None,
            reason: None,
            message: None,
            reconnect: false,
            revocation: None,
            until: None,
            target: None,
        }
    }

    /// The revoke instruction for `revocation` (sent to [`Revocation::room`]), kept until
    /// `until_ms`.
    pub fn revoke(revocation: &Revocation, until_ms: u64) -> Result<Self, crate::IdError> {
        Ok(ControlEnvelope {
            revocation: Some(revocation.clone()),
            until: Some(until_ms),
            ..ControlEnvelope::new(&revocation.room()?, ControlOp::Revoke)
        })
    }

    /// Checks the fields a sender chooses.
    pub fn validate(&self) -> Result<(), ControlError> {
        crate::validate_id(&self.id).map_err(|_| ControlError::Id)?;
        match (self.op, &self.target) {
            (ControlOp::Join | ControlOp::Leave, Some(target)) => {
                let target = Room::parse(target).ok_or(ControlError::Target)?;
                let tenant = Room::parse(&self.room).map(|r| r.tenant_id().to_owned());
                let movable = matches!(target.kind(), crate::RoomKind::Project | crate::RoomKind::Channel);
                if !movable || tenant.as_deref() != Some(target.tenant_id()) {
                    return Err(ControlError::Target);
                }
            }
            (ControlOp::Join | ControlOp::Leave, None) | (_, Some(_)) => return Err(ControlError::Target),
            _ => {}
        }
        if let Some(reason) = &self.reason {
            let ok = (1..=64).contains(&reason.len())
                && reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
            if !ok {
                return Err(ControlError::Reason);
            }
        }
        if self.message.as_ref().is_some_and(|m| m.len() > MAX_CONTROL_MESSAGE) {
            return Err(ControlError::Message);
        }
        if let Some(socket) = &self.socket {
            let ok = (1..=64).contains(&socket.len())
                && socket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ControlError::Socket);
            }
        }
        Ok(())
    }
}

/// An application event: members receive `event` with `data` as first argument and
/// `{ room, id, ts }` as second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Format version, [`VERSION`].
    pub v: u8,
    /// Unique event id chosen by the publisher.
    pub id: String,
    /// Canonical room name; must match the channel it was published on.
    pub room: String,
    /// Socket.IO event name clients listen to.
    pub event: String,
    /// The payload, kept as raw JSON so replicas forward it without re-encoding.
    pub data: Box<RawValue>,
    /// Publish time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The event's position in the room (1, 2, …); absent when published without history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The room history's epoch; a new epoch means the history before it was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The user who published it from a client (`publish` over Socket.IO); clients see it in the
    /// meta. Absent for backend publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A Socket.IO socket id that live delivery skips (the emitter's `except`, a client's
    /// `except: "self"`). A replay from history does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
}

/// A typing indicator: members of the channel except the typing user's own sockets receive
/// `typing` `{ channel, userId, typing, ttlMs }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypingEnvelope {
    /// Format version, [`VERSION`].
    pub v: u8,
    /// Canonical name of a channel room.
    pub room: String,
    /// Who is typing: a user or a bot id.
    pub user: String,
    /// Started (`true`) or stopped (`false`) typing.
    pub typing: bool,
    /// Publish time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// The tag alone, read first so the body can be parsed straight into its struct (serde cannot
/// hand a raw `data` through an internally tagged enum).
#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: Kind,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Event,
    Typing,
    Control,
}

impl Envelope {
    /// Parses an envelope from its JSON text.
    pub fn from_json(json: &str) -> Result<Envelope, serde_json::Error> {
        let Tag { kind } = serde_json::from_str(json)?;
        Ok(match kind {
            Kind::Event => Envelope::Event(serde_json::from_str(json)?),
            Kind::Typing => Envelope::Typing(serde_json::from_str(json)?),
            Kind::Control => Envelope::Control(serde_json::from_str(json)?),
        })
    }

    /// The room the envelope is addressed to.
    pub fn room(&self) -> &str {
        match self {
            Envelope::Event(e) => &e.room,
            Envelope::Typing(t) => &t.room,
            Envelope::Control(c) => &c.room,
        }
    }

    /// The format version it declares.
    pub fn version(&self) -> u8 {
        match self {
            Envelope::Event(e) => e.v,
            Envelope::Typing(t) => t.v,
            Envelope::Control(c) => c.v,
        }
    }
}

/// Names of the Redis channels (and, later, keys) Roomcast uses under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys { prefix: DEFAULT_PREFIX.to_owned() }
    }
}

/// A prefix that would break channel names or hash tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix must be 1-64 characters without braces, colons or whitespace")]
pub struct InvalidPrefix;

impl Keys {
    /// Names under `prefix` (several deployments can share one Redis with distinct prefixes).
    pub fn new(prefix: impl Into<String>) -> Result<Keys, InvalidPrefix> {
        let prefix = prefix.into();
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && !prefix.chars().any(|c| c == '{' || c == '}' || c == ':' || c.is_whitespace() || c.is_control());
        if ok { Ok(Keys { prefix }) } else { Err(InvalidPrefix) }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel a room's envelopes are published on: `{prefix}:{<room>}`.
    pub fn channel(&self, room: &str) -> String {
        format!("{}:{{{room}}}", self.prefix)
    }

    /// A room's history position: `epoch` and last `offset` (hash).
    pub fn meta(&self, room: &str) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    /// A room's history (stream of envelopes, entry id `<offset>-0`).
    pub fn history(&self, room: &str) -> String {
        format!("{}:{{{room}}}:history", self.prefix)
    }

    /// Remembers that event `id` was published to `room` (idempotent publishing).
    pub fn dedupe(&self, room: &str, id: &str) -> String {
        format!("{}:{{{room}}}:dedupe:{id}", self.prefix)
    }

    /// The revocations in force (sorted set: member a [`Revocation`] as JSON, score when it may
    /// be forgotten, ms since the Unix epoch). `revocations` is a hash tag: the three keys of the
    /// list share one Redis Cluster slot.
    pub fn revocations(&self) -> String {
        format!("{}:{{revocations}}", self.prefix)
    }

    /// A tenant's rooms with members (sorted set: member the project or channel room's name,
    /// score when a replica last saw members there, ms), in the tenant room's slot.
    pub fn rooms_index(&self, tenant: &str) -> String {
        format!("{}:{{tenant:{tenant}}}:rooms", self.prefix)
    }

    /// Each gateway replica's last status for the console (hash: replica id → JSON with `at`,
    /// ms); written every few seconds, read by the console's replica list.
    pub fn replica_statuses(&self) -> String {
        format!("{}:{{replicas}}:status", self.prefix)
    }

    /// How many revocations each tenant has in [`Keys::revocations`] (hash: tenant → count).
    pub fn revocation_counts(&self) -> String {
        format!("{}:{{revocations}}:tenants", self.prefix)
    }

    /// The version of [`Keys::revocations`]: a fresh id each time it changes, so a replica reads
    /// the list again only when this differs from what it last read.
    pub fn revocations_version(&self) -> String {
        format!("{}:{{revocations}}:version", self.prefix)
    }

    /// Where the replicas acknowledge control envelope `id` sent to `room`: a hash with fields
    /// `replicas` (how many acted) and `sockets` (how many sockets they reached), kept a minute.
    pub fn control_acks(&self, room: &str, id: &str) -> String {
        format!("{}:{{{room}}}:acks:{id}", self.prefix)
    }

    /// The room a channel name belongs to, if it is one of ours.
    pub fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?.strip_suffix('}')
    }
}

/// Why an event name cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventNameError {
    /// Empty, longer than [`MAX_EVENT_LEN`] bytes, or with control characters.
    #[error("event name must be 1-{MAX_EVENT_LEN} bytes without control characters")]
    Malformed,
    /// A name Socket.IO or Roomcast gives its own meaning to.
    #[error("event name {0:?} is reserved")]
    Reserved(String),
}

/// Event names a publisher may not use: Socket.IO's own (`connect`, `connect_error`,
/// `disconnect`, `disconnecting`, `newListener`, `removeListener`) and Roomcast's (`typing`,
/// anything under `presence:`, `auth:` or `roomcast:`).
pub fn validate_event_name(name: &str) -> Result<(), EventNameError> {
    if name.is_empty() || name.len() > MAX_EVENT_LEN || name.chars().any(char::is_control) {
        return Err(EventNameError::Malformed);
    }
    const EXACT: &[&str] =
        &["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener", "typing"];
    const PREFIXES: &[&str] = &["presence:", "auth:", "roomcast:"];
    if EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(EventNameError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// Builds an event envelope; `data` is the already-serialized payload.
pub fn event_envelope(room: &Room, event: &str, data: Box<RawValue>, id: String, ts: u64) -> Envelope {
    Envelope::Event(EventEnvelope {
        v: VERSION,
        id,
        room: room.to_string(),
        event: event.to_owned(),
        data,
        ts,
        offset: None,
        epoch: None,
        from: None,
        except: None,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A new event id: a UUIDv7, so ids sort by publish time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_room_as_hash_tag() {
        let keys = Keys::default();
        assert_eq!(keys.channel("tenant:t1:project:p1"), "roomcast:{tenant:t1:project:p1}");
        assert_eq!(keys.room_of_channel("roomcast:{tenant:t1:project:p1}"), Some("tenant:t1:project:p1"));
        assert_eq!(keys.room_of_channel("other:{tenant:t1}"), None);
        assert_eq!(keys.room_of_channel("roomcastx:{tenant:t1}"), None);
        for bad in ["", "a:b", "a{b", "with space"] {
            assert_eq!(Keys::new(bad), Err(InvalidPrefix), "{bad:?}");
        }
    }

    #[test]
    fn reserved_and_malformed_event_names() {
        for reserved in [
            "connect",
            "disconnect",
            "connect_error",
            "typing",
            "presence:join",
            "auth:expiring",
            "roomcast:disconnect",
            "newListener",
        ] {
            assert!(matches!(validate_event_name(reserved), Err(EventNameError::Reserved(_))), "{reserved}");
        }
        for malformed in ["", "a\nb", &"e".repeat(MAX_EVENT_LEN + 1)] {
            assert_eq!(validate_event_name(malformed), Err(EventNameError::Malformed));
        }
        for ok in ["task.updated", "message:new", "presence", "typing-started", "Connect"] {
            assert_eq!(validate_event_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn envelopes_round_trip_with_raw_data() {
        let room = Room::project("t1", "p1").unwrap();
        let data = RawValue::from_string(r#"{"a": [1, 2]}"#.to_owned()).unwrap();
        let env = event_envelope(&room, "task.updated", data, "id-1".into(), 42);
        let json = serde_json::to_string(&env).unwrap();
        assert_eq!(
            json,
            r#"{"type":"event","v":1,"id":"id-1","room":"tenant:t1:project:p1","event":"task.updated","data":{"a": [1, 2]},"ts":42}"#
        );
        let Envelope::Event(back) = Envelope::from_json(&json).unwrap() else { panic!("not an event") };
        assert_eq!((back.room.as_str(), back.data.get()), ("tenant:t1:project:p1", r#"{"a": [1, 2]}"#));
        let typing = Envelope::from_json(
            r#"{"v":1,"room":"tenant:t:channel:c","user":"bot","typing":true,"ts":1,"type":"typing"}"#,
        )
        .unwrap();
        assert!(matches!(typing, Envelope::Typing(TypingEnvelope { typing: true, .. })));
        for bad in ["", "{}", r#"{"type":"other"}"#, r#"{"type":"event","v":1}"#, "[1]"] {
            assert!(Envelope::from_json(bad).is_err(), "{bad:?}");
        }
    }

    /// Envelopes arrive from any publisher: parsing must hold for any input.
    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn prop_any_text_parses_without_panicking(json in "\\PC{0,400}") {
                let _ = Envelope::from_json(&json);
            }

            #[test]
            fn prop_any_json_object_parses_without_panicking(
                fields in proptest::collection::vec(("[a-z]{1,6}", "\\PC{0,20}"), 0..8),
                kind in prop_oneof![Just("event"), Just("typing"), Just("other")],
            ) {
                let mut object = serde_json::Map::new();
                object.insert("type".into(), kind.into());
                for (k, v) in fields {
                    object.insert(k, v.into());
                }
                let _ = Envelope::from_json(&serde_json::Value::Object(object).to_string());
            }

            #[test]
            fn prop_events_round_trip_with_their_data_untouched(
                event in "[a-z.:]{1,20}",
                text in "\\PC{0,50}",
                n in any::<i64>(),
                ts in any::<u64>(),
            ) {
                let room = Room::channel("t", "c").unwrap();
                let data = serde_json::json!({ "text": text, "n": n, "list": [n, -1.5e300] }).to_string();
                let raw = RawValue::from_string(data.clone()).unwrap();
                let json = serde_json::to_string(&event_envelope(&room, &event, raw, "id".into(), ts)).unwrap();
                let Envelope::Event(back) = Envelope::from_json(&json).unwrap() else { panic!("not an event") };
                prop_assert_eq!(back.data.get(), data.as_str());
                prop_assert_eq!((back.event.as_str(), back.ts), (event.as_str(), ts));
            }
        }
    }
}

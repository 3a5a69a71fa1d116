//! Exactly once and in order, across reconnects and Redis blips.
//!
//! Events published with history carry their room's offset and epoch. Per room, this replica
//! remembers the last offset it delivered and checks every event against it:
//! - the next offset is delivered; an old one (a duplicate) is dropped;
//! - a jump (a message lost, e.g. the pub/sub reader lagged) puts the room in *catch-up*: live
//!   events are held while the missing range is read from history, then the range and the held
//!   events are delivered in order. So is every room after the Redis subscription was lost and
//!   restored. What history no longer has is announced to the room's sockets with
//!   `roomcast:resync` instead of being silently skipped.
//! - a room's sequence starts from a position read from history, never from whatever offset
//!   arrives first: the joins that find no sequence hold live events until their history reads
//!   answer; the last of them *seeds* the sequence with the lowest position read and releases
//!   the held events. An event published after the read but before Redis applied the
//!   subscription is then a jump like any other, caught up from history, instead of silently
//!   missing. (The automatic tenant and user rooms
//!   have no join and no position; their sequence starts at their first event.)
//!
//! A socket joining with `since: { offset, epoch }` gets the events it missed, exactly once and in
//! order, whichever replica it was on before. It enters the room at once but also a companion
//! room, `recovering:{room}`, that this replica's sequenced broadcasts skip while it recovers:
//! 1. every event this replica delivers to the room from then on is captured for it;
//! 2. history after `since` is read and replayed to it, then the captured events past the replay;
//! 3. history can be ahead of this replica (events already stored but still on their way here),
//!    so until this replica has delivered up to the socket's position, the sequencer feeds the
//!    socket directly, skipping what it already has; then it leaves the companion room and is an
//!    ordinary member.

use std::{collections::HashMap, sync::Arc};

use roomcast_publisher::wire::EventEnvelope;
use serde_json::json;
use socketioxide::socket::Sid;

use crate::{
    history::{History, Position},
    local::Local,
    metrics,
};

/// What this replica knows of one room's sequence.
#[derive(Debug, Default)]
struct RoomSequence {
    /// Epoch and offset of the last event delivered here (`None`: no event with an offset yet).
    epoch: Option<String>,
    last: u64,
    /// While catching up, or until a join seeds the sequence: live events held until the
    /// missing range was delivered.
    held: Option<Vec<EventEnvelope>>,
    /// Set while joins read the position of a room this replica has no sequence for; live
    /// events are held meanwhile (see [`Sequencer::attach`]).
    seeding: Option<Seeding>,
    /// The membership period the sequence belongs to (see [`crate::rooms::Entered::generation`]).
    generation: u64,
    /// Sockets recovering in this room (see the module docs).
    recovering: Vec<Recovering>,
}

/// Joins reading a new sequence's starting position.
#[derive(Debug, Default)]
struct Seeding {
    /// Joins still reading history.
    readers: usize,
    /// The lowest position they read: seeding from it delivers (or catches up) everything
    /// after *every* reader's position, and each reader is fed only what comes after its own.
    lowest: Option<Position>,
    /// The subscription was restored meanwhile: what it missed must be read from history
    /// once the sequence is seeded, even if no later event shows a gap.
    catch_up: bool,
}

/// `b` if lower than `a` in the same epoch (or `a` is unknown). Positions in different epochs
/// (history lost between two reads) keep the first.
fn lowest(a: Option<Position>, b: Option<&Position>) -> Option<Position> {
    match (a, b) {
        (None, b) => b.cloned(),
        (Some(a), Some(b)) if a.epoch == b.epoch && b.offset < a.offset => Some(b.clone()),
        (a, _) => a,
    }
}

/// A socket recovering in a room.
#[derive(Debug)]
struct Recovering {
    socket: Sid,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// History is being read: events delivered meanwhile are kept for it.
    Reading(Vec<EventEnvelope>),
    /// Replayed up to this position; fed directly until this replica has delivered it too.
    Feeding(Position),
}

/// The companion room of `room` holding its recovering sockets.
pub fn recovering_room(room: &str) -> String {
    format!("recovering:{room}")
}

impl RoomSequence {
    /// Forgets `socket`'s recovery in this room (it joins again, leaves or disconnects).
    fn retain_others(&mut self, socket: Sid) {
        self.recovering.retain(|r| r.socket != socket);
    }
}

/// Whether `e` comes after `p` for a socket at `p`.
fn after(p: &Position, e: &EventEnvelope) -> bool {
    match (&e.epoch, e.offset) {
        (Some(epoch), Some(offset)) if *epoch == p.epoch => offset > p.offset,
        // Another epoch: the room's history restarted, so this is new to the socket.
        _ => true,
    }
}

/// Lock shards of [`Sequences`]: rooms in different shards are sequenced, joined and caught up
/// in parallel.
const SEQUENCE_SHARDS: usize = 64;

/// Every room's sequence, behind one async lock per shard of rooms (held across the local emit
/// of an event of that room, never across Redis). A room's operations always take the same
/// shard, so they stay in order; no operation holds two shards.
#[derive(Debug)]
struct Sequences {
    shards: Box<[tokio::sync::Mutex<HashMap<String, RoomSequence>>]>,
}

impl Default for Sequences {
    fn default() -> Self {
        Sequences { shards: (0..SEQUENCE_SHARDS).map(|_| Default::default()).collect() }
    }
}

impl Sequences {
    /// The shard holding `room`.
    fn shard(&self, room: &str) -> &tokio::sync::Mutex<HashMap<String, RoomSequence>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(room);
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }
}

/// A client's `since`: the last offset it received in a room, and that room's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// Last offset received.
    pub offset: u64,
    /// The epoch it belongs to.
    pub epoch: String,
}

/// The outcome of entering a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// With `since`: whether every missed event was replayed.
    pub recovered: Option<bool>,
    /// Where the socket now stands: the last offset it was sent, and the epoch. `None` without
    /// history (or while history cannot be read).
    pub position: Option<Position>,
}

/// Whether `read` holds every event after `since`, up to the room's last offset.
fn covers(since: &Since, read: &crate::history::Read) -> bool {
    if since.epoch != read.position.epoch || since.offset > read.position.offset {
        return false;
    }
    let missing = read.position.offset - since.offset;
    read.events.len() as u64 == missing
        && read.events.iter().zip(since.offset + 1..).all(|(e, want)| e.offset == Some(want))
}

enum Verdict {
    Deliver,
    Duplicate,
    Hold,
    Gap,
}

fn verdict(seq: &RoomSequence, e: &EventEnvelope) -> Verdict {
    let offset = e.offset.unwrap_or(0);
    if seq.held.is_some() {
        return Verdict::Hold;
    }
    match &seq.epoch {
        None => Verdict::Deliver,
        Some(epoch) if Some(epoch) != e.epoch.as_ref() => {
            // The room's history was lost and restarted: its first event starts a new sequence.
            if offset == 1 { Verdict::Deliver } else { Verdict::Gap }
        }
        Some(_) if offset <= seq.last => Verdict::Duplicate,
        Some(_) if offset == seq.last + 1 => Verdict::Deliver,
        Some(_) => Verdict::Gap,
    }
}

/// Orders this replica's deliveries of events published with history: one `RoomSequence` per
/// room with local members, seeded by joins, advanced by live events, caught up from history
/// (see the module docs). The one owner of that state.
#[derive(Debug)]
pub struct Sequencer {
    rooms: Sequences,
    local: Local,
    history: Option<Arc<dyn History>>,
}

impl Sequencer {
    /// A sequencer emitting to `local`'s sockets and reading what was missed from `history`
    /// (without history, events are delivered as they come and joins cannot recover).
    pub fn new(local: Local, history: Option<Arc<dyn History>>) -> Self {
        Sequencer { rooms: Sequences::default(), local, history }
    }

    /// A live event with an offset reached this replica.
    pub async fn sequence(self: &Arc<Self>, e: &EventEnvelope) {
        let mut rooms = self.rooms.shard(&e.room).lock().await;
        if !rooms.contains_key(&e.room) && self.local.members(&e.room) == 0 {
            // In flight after the last member left: nobody to deliver to, and no sequence to
            // start (it would be stale when members come back).
            return;
        }
        let seq = rooms.entry(e.room.clone()).or_default();
        if self.advance(seq, e).await {
            drop(rooms);
            self.spawn_catch_up(vec![e.room.clone()]);
        }
    }

    /// Acts on `verdict` for `e`; `true` if the room must now catch up from history.
    async fn advance(&self, seq: &mut RoomSequence, e: &EventEnvelope) -> bool {
        match verdict(seq, e) {
            Verdict::Deliver => self.emit_sequenced(seq, e).await,
            Verdict::Duplicate => metrics::duplicate_dropped(),
            Verdict::Hold => seq.held.get_or_insert_with(Vec::new).push(e.clone()),
            Verdict::Gap => {
                tracing::info!(room = %e.room, after = seq.last, got = ?e.offset, "missed events; catching up from history");
                seq.held = Some(vec![e.clone()]);
                return true;
            }
        }
        false
    }

    async fn emit_sequenced(&self, seq: &mut RoomSequence, e: &EventEnvelope) {
        // Recovering sockets get it from the loop below, at most once.
        let skip = (!seq.recovering.is_empty()).then(|| recovering_room(&e.room));
        self.local.emit_event_except(e, skip).await;
        seq.epoch = e.epoch.clone();
        seq.last = e.offset.unwrap_or(seq.last);
        let here = Position { epoch: e.epoch.clone().unwrap_or_default(), offset: seq.last };
        seq.recovering.retain_mut(|r| match &mut r.stage {
            Stage::Reading(captured) => {
                captured.push(e.clone());
                true
            }
            Stage::Feeding(at) => {
                if after(at, e) {
                    self.local.emit_to_socket(r.socket, e);
                    *at = here.clone();
                }
                if at.epoch == here.epoch && at.offset <= here.offset {
                    // This replica has now delivered everything the socket has: an ordinary member.
                    self.local.leave(r.socket, recovering_room(&e.room));
                    false
                } else {
                    true
                }
            }
        });
    }

    /// Delivers `e` during a catch-up: skipped if already delivered, announced as a gap if
    /// history no longer has what came before it.
    async fn place(&self, room: &str, seq: &mut RoomSequence, e: &EventEnvelope) {
        let offset = e.offset.unwrap_or(0);
        let same_epoch = seq.epoch.is_none() || seq.epoch == e.epoch;
        if same_epoch && seq.epoch.is_some() && offset <= seq.last {
            return metrics::duplicate_dropped();
        }
        let expected = if same_epoch { seq.last + 1 } else { 1 };
        if seq.epoch.is_some() && offset != expected {
            let reason = if same_epoch { "gap" } else { "epoch_changed" };
            self.announce_resync(room, reason, e).await;
        }
        self.emit_sequenced(seq, e).await;
    }

    async fn announce_resync(&self, room: &str, reason: &'static str, next: &EventEnvelope) {
        metrics::resync(reason);
        tracing::warn!(room, reason, "events were lost beyond history; telling the room's sockets to resync");
        let payload =
            json!({ "room": room, "reason": reason, "epoch": next.epoch, "offset": next.offset.map(|o| o - 1) });
        self.local.emit_to_room(room.to_owned(), None, RESYNC_EVENT, &payload, false).await;
    }

    /// Holds live events of the rooms `wanted` picks that this replica delivered before, until
    /// [`Sequencer::spawn_catch_up`] replays what was missed; returns those rooms. Call it
    /// *before* their subscriptions are restored, and start the catch-up *after*: events
    /// published in between are then either in the history read or held. With `seeding`, rooms
    /// still being seeded are marked to catch up once seeded: only do that once their
    /// subscription is live, or the catch-up could read history before it is.
    pub async fn hold(&self, wanted: impl Fn(&str) -> bool, seeding: bool) -> Vec<String> {
        let mut held = Vec::new();
        for shard in &self.rooms.shards {
            let mut rooms = shard.lock().await;
            for (room, seq) in rooms.iter_mut().filter(|(room, _)| wanted(room)) {
                if let Some(state) = &mut seq.seeding {
                    // Not started yet: its seeding starts the catch-up.
                    state.catch_up |= seeding;
                } else if seq.epoch.is_some() && seq.held.is_none() {
                    seq.held = Some(Vec::new());
                    held.push(room.clone());
                }
            }
        }
        held
    }

    /// Reads what `rooms` missed from history and delivers it, then what was held, in order.
    pub fn spawn_catch_up(self: &Arc<Self>, rooms: Vec<String>) {
        if rooms.is_empty() {
            return;
        }
        metrics::catch_up(rooms.len());
        let this = self.clone();
        tokio::spawn(async move {
            for room in rooms {
                this.catch_up(&room).await;
            }
        });
    }

    async fn catch_up(self: &Arc<Self>, room: &str) {
        // (No socket waits for this: recovering sockets are fed by offset, so events the
        // catch-up delivers again never reach them twice.)
        let known = {
            let rooms = self.rooms.shard(room).lock().await;
            rooms.get(room).map(|seq| (seq.epoch.clone(), seq.last, seq.generation))
        };
        let Some((epoch, last, generation)) = known else { return };
        let read = match self.history.clone() {
            // Forgotten meanwhile (its members left): nothing delivered here to continue from,
            // and reading from offset 0 would replay the whole history to the room.
            _ if epoch.is_none() => Ok(None),
            Some(history) => {
                let limit = history.policy().size as usize;
                let first = history.read(room, last, limit).await;
                match first {
                    // The history restarted under a new epoch: all of it is new to us.
                    Ok(r) if epoch.as_ref() != Some(&r.position.epoch) => history.read(room, 0, limit).await,
                    other => other,
                }
                .map(Some)
            }
            None => Err(crate::backend::BusError::Unavailable("no history".into())),
        };
        let mut rooms = self.rooms.shard(room).lock().await;
        let Some(seq) = rooms.get_mut(room) else { return };
        if seq.generation != generation {
            // The room emptied and a new membership period started meanwhile: its first join
            // restarted the sequence and owns what is held now.
            return;
        }
        let held = seq.held.take().unwrap_or_default();
        match read {
            Ok(read) => {
                for e in read.iter().flat_map(|read| &read.events) {
                    self.place(room, seq, e).await;
                }
            }
            Err(error) => tracing::warn!(room, %error, "cannot read history to catch up; delivering what arrived"),
        }
        for e in &held {
            self.place(room, seq, e).await;
        }
        if seq.recovering.is_empty() && self.local.members(room) == 0 {
            // Its last member left during the catch-up: nothing here will deliver to it again,
            // and a stale position would make the next join's first event look like a gap.
            rooms.remove(room);
        }
    }

    /// This replica no longer has members in `room`: what it delivered before means nothing to
    /// members who come later, so its sequence is forgotten (or, while a catch-up or a join is
    /// using it, restarted).
    pub async fn forget_room(&self, room: &str) {
        let mut rooms = self.rooms.shard(room).lock().await;
        if self.local.members(room) > 0 {
            // A member came back before this ran: its join decided what the sequence is.
            return;
        }
        match rooms.get_mut(room) {
            Some(seq) if seq.held.is_none() && seq.recovering.is_empty() => {
                rooms.remove(room);
            }
            Some(seq) => {
                seq.epoch = None;
                seq.last = 0;
            }
            None => {}
        }
    }

    /// Puts `socket` in `room`, replaying what it missed since `since` (see the module docs).
    /// `generation` is the room's membership period: a sequence from an earlier one was kept
    /// while this replica was not subscribed, so the first join of the period starts it afresh
    /// (whichever of the period's joins gets here first, not the one that subscribed).
    pub async fn attach(self: &Arc<Self>, socket: Sid, room: &str, since: Option<Since>, generation: u64) -> Attached {
        let Some(history) = self.history.clone() else {
            self.local.join(socket, vec![room.to_owned()]);
            return Attached { recovered: since.map(|_| false), position: None };
        };
        // 1. In the room (and its companion), capturing what this replica delivers from now on.
        let reader = {
            let mut rooms = self.rooms.shard(room).lock().await;
            let seq = rooms.entry(room.to_owned()).or_default();
            seq.retain_others(socket);
            if seq.generation != generation {
                // A new membership period: nothing kept from the last one applies (its members
                // are gone, and what it held was published before the read below). A catch-up
                // still running for it sees the new generation and does nothing.
                seq.generation = generation;
                seq.epoch = None;
                seq.last = 0;
                seq.held = None;
                seq.seeding = None;
            }
            // Nothing delivered here yet: the sequence does not know where the room stands, so
            // it would accept any first offset. Hold live events until the reads below tell.
            if seq.epoch.is_none() && seq.held.is_none() && seq.seeding.is_none() {
                seq.held = Some(Vec::new());
                seq.seeding = Some(Seeding::default());
            }
            let reader = match &mut seq.seeding {
                Some(seeding) => {
                    seeding.readers += 1;
                    true
                }
                None => false,
            };
            self.local.join(socket, vec![room.to_owned(), recovering_room(room)]);
            seq.recovering.push(Recovering { socket, stage: Stage::Reading(Vec::new()) });
            reader
        };
        // 2. Read history; replay what `since` missed, if all of it is there.
        let limit = history.policy().size as usize;
        let after_offset = since.as_ref().map_or(u64::MAX, |s| s.offset);
        let (read_at, position, recovered) = match history.read(room, after_offset, limit).await {
            Ok(read) => {
                let recovered = since.as_ref().map(|s| covers(s, &read));
                let mut at = read.position.clone();
                if let (Some(true), Some(s)) = (recovered, &since) {
                    at.offset = s.offset;
                    for e in &read.events {
                        // A replay can be the whole history: paced by the socket's buffer, so a
                        // recovering client is not taken for a slow consumer.
                        self.local.wait_for_room(socket).await;
                        self.local.emit_to_socket(socket, e);
                        at.offset = e.offset.unwrap_or(at.offset);
                    }
                    metrics::replayed(read.events.len() as u64);
                }
                (Some(read.position), Some(at), recovered)
            }
            Err(error) => {
                static UNAVAILABLE: crate::logging::Throttled =
                    crate::logging::Throttled::new(crate::logging::WARN_EVERY);
                if let Some(held) = UNAVAILABLE.check() {
                    tracing::warn!(room, %error, similar_since = held, "history unavailable; joining without recovery");
                }
                (None, None, since.map(|_| false))
            }
        };
        // 3. The last reader seeds a new sequence; then what this replica delivered meanwhile,
        //    then feeding until it has caught up.
        let mut rooms = self.rooms.shard(room).lock().await;
        let seq = rooms.entry(room.to_owned()).or_default();
        let mut catch_up = false;
        if let (true, Some(seeding)) = (reader, &mut seq.seeding) {
            seeding.readers = seeding.readers.saturating_sub(1);
            seeding.lowest = lowest(seeding.lowest.take(), read_at.as_ref());
            if seeding.readers == 0 {
                catch_up = self.seed(seq).await;
            }
        }
        let mine = seq.recovering.iter().position(|r| r.socket == socket);
        let captured = match mine.map(|i| seq.recovering.swap_remove(i).stage) {
            Some(Stage::Reading(captured)) => captured,
            _ => Vec::new(),
        };
        let position = match position {
            // No history: nothing to order against. What was delivered while reading is still
            // the socket's; then it is an ordinary member.
            None => {
                for e in &captured {
                    self.local.emit_to_socket(socket, e);
                }
                self.local.leave(socket, recovering_room(room));
                None
            }
            Some(mut at) => {
                for e in &captured {
                    if after(&at, e) {
                        self.local.emit_to_socket(socket, e);
                        at = Position {
                            epoch: e.epoch.clone().unwrap_or_default(),
                            offset: e.offset.unwrap_or(at.offset),
                        };
                    }
                }
                let caught_up = seq.epoch.as_ref() == Some(&at.epoch) && seq.last >= at.offset;
                if caught_up {
                    self.local.leave(socket, recovering_room(room));
                } else {
                    seq.recovering.push(Recovering { socket, stage: Stage::Feeding(at.clone()) });
                }
                if let Some(recovered) = recovered {
                    metrics::recovery(recovered);
                }
                Some(at)
            }
        };
        drop(rooms);
        if catch_up {
            self.spawn_catch_up(vec![room.to_owned()]);
        }
        Attached { recovered, position }
    }

    /// Seeds a room's new sequence with the lowest position its joins read (none: history could
    /// not be read), then releases the events held meanwhile through the sequencer: an event
    /// that does not follow the position is a gap, caught up from history like any other.
    /// `true` if a catch-up must start.
    async fn seed(&self, seq: &mut RoomSequence) -> bool {
        let seeding = seq.seeding.take().unwrap_or_default();
        if let (None, Some(p)) = (&seq.epoch, seeding.lowest) {
            seq.epoch = Some(p.epoch);
            seq.last = p.offset;
        }
        let mut catch_up = false;
        for e in seq.held.take().unwrap_or_default() {
            catch_up |= self.advance(seq, &e).await;
        }
        if seeding.catch_up && seq.epoch.is_some() && !catch_up {
            seq.held = Some(Vec::new());
            catch_up = true;
        }
        catch_up
    }

    /// `socket` left `room` (or disconnected): stop recovering it there.
    pub async fn detach(&self, socket: Sid, room: &str) {
        let mut rooms = self.rooms.shard(room).lock().await;
        if let Some(seq) = rooms.get_mut(room) {
            seq.retain_others(socket);
        }
    }
}

/// Sent to a room's sockets when events were lost beyond what history keeps:
/// `{ room, reason: "gap" | "epoch_changed", epoch, offset }`. The app should refetch the state
/// the room's events describe.
pub const RESYNC_EVENT: &str = "roomcast:resync";

#[cfg(test)]
mod tests {
    use super::*;

    fn event(epoch: &str, offset: u64) -> EventEnvelope {
        EventEnvelope {
            v: roomcast_publisher::wire::VERSION,
            id: format!("e{offset}"),
            room: "tenant:t:project:p".into(),
            event: "x".into(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!()),
            ts: 0,
            offset: Some(offset),
            epoch: Some(epoch.into()),
            from: None,
            except: None,
        }
    }

    fn at(epoch: &str, last: u64) -> RoomSequence {
        RoomSequence { epoch: Some(epoch.into()), last, ..Default::default() }
    }

    fn name(v: Verdict) -> &'static str {
        match v {
            Verdict::Deliver => "deliver",
            Verdict::Duplicate => "duplicate",
            Verdict::Hold => "hold",
            Verdict::Gap => "gap",
        }
    }

    #[test]
    fn a_seeded_sequence_delivers_the_next_offset_and_treats_a_jump_as_a_gap() {
        let seq = at("E", 10);
        assert_eq!(name(verdict(&seq, &event("E", 11))), "deliver");
        assert_eq!(name(verdict(&seq, &event("E", 12))), "gap", "offset 11 was missed");
        assert_eq!(name(verdict(&seq, &event("E", 10))), "duplicate");
        assert_eq!(name(verdict(&seq, &event("E", 3))), "duplicate");
        assert_eq!(name(verdict(&seq, &event("F", 1))), "deliver", "a new epoch starts at 1");
        assert_eq!(name(verdict(&seq, &event("F", 4))), "gap", "a new epoch's first events were missed");
    }

    #[test]
    fn an_unseeded_sequence_accepts_any_first_offset_and_a_held_one_holds_everything() {
        assert_eq!(name(verdict(&RoomSequence::default(), &event("E", 57))), "deliver");
        let held = RoomSequence { held: Some(Vec::new()), ..at("E", 10) };
        assert_eq!(name(verdict(&held, &event("E", 11))), "hold");
    }

    fn delivery() -> Arc<Sequencer> {
        let (_layer, io) = socketioxide::SocketIo::new_layer();
        let bus = Arc::new(crate::bus::memory::MemoryBus::new(None).0);
        let membership = Arc::new(crate::rooms::Membership::new(bus));
        Arc::new(Sequencer::new(Local::new(io, membership, crate::local::Pace::half_of(1 << 20, 1024)), None))
    }

    fn seeding(held: Vec<EventEnvelope>, lowest: Option<Position>) -> RoomSequence {
        RoomSequence { held: Some(held), seeding: Some(Seeding { lowest, ..Default::default() }), ..Default::default() }
    }

    fn pos(epoch: &str, offset: u64) -> Option<Position> {
        Some(Position { epoch: epoch.into(), offset })
    }

    /// The lost-event-after-join race: the join read the room at offset 10, event 11 was
    /// published before the subscription took effect, and 12 arrived live while reading.
    #[tokio::test]
    async fn an_event_missed_between_the_read_and_the_subscription_is_a_gap() {
        let d = delivery();
        let mut seq = seeding(vec![event("E", 12), event("E", 13)], pos("E", 10));
        assert!(d.seed(&mut seq).await, "12 after 10 must be caught up from history");
        assert_eq!((seq.epoch.as_deref(), seq.last), (Some("E"), 10), "seeded with the read position");
        let held = seq.held.as_ref().map(|h| h.iter().map(|e| e.offset).collect::<Vec<_>>());
        assert_eq!(held, Some(vec![Some(12), Some(13)]));
        assert!(seq.seeding.is_none());
    }

    #[tokio::test]
    async fn events_held_while_reading_follow_the_read_position() {
        let d = delivery();
        let mut seq = seeding(vec![event("E", 10), event("E", 11), event("E", 12)], pos("E", 10));
        assert!(!d.seed(&mut seq).await);
        assert_eq!((seq.last, seq.held.is_none()), (12, true), "10 was in the read; 11 and 12 delivered");
    }

    #[tokio::test]
    async fn without_a_readable_history_the_held_events_are_delivered_as_they_came() {
        let d = delivery();
        let mut seq = seeding(vec![event("E", 40), event("E", 41)], None);
        assert!(!d.seed(&mut seq).await);
        assert_eq!((seq.epoch.as_deref(), seq.last, seq.held.is_none()), (Some("E"), 41, true));
    }

    /// Two joins read a new room at 10 and 11: seeding from 11 would drop 11 as a duplicate
    /// although the first join's ack says 10.
    #[test]
    fn concurrent_readers_seed_from_the_lowest_position() {
        assert_eq!(lowest(pos("E", 11), pos("E", 10).as_ref()), pos("E", 10));
        assert_eq!(lowest(pos("E", 10), pos("E", 11).as_ref()), pos("E", 10));
        assert_eq!(lowest(None, pos("E", 11).as_ref()), pos("E", 11));
        assert_eq!(lowest(pos("E", 11), None), pos("E", 11), "a failed read does not count");
        assert_eq!(lowest(pos("E", 11), pos("F", 1).as_ref()), pos("E", 11));
    }

    /// The subscription was restored while the room was being seeded: what it missed is read
    /// from history even though no later event shows a gap.
    #[tokio::test]
    async fn a_subscription_restored_during_seeding_catches_up_after_it() {
        let d = delivery();
        let mut seq = seeding(vec![], pos("E", 10));
        if let Some(s) = &mut seq.seeding {
            s.catch_up = true;
        }
        assert!(d.seed(&mut seq).await);
        assert_eq!((seq.last, seq.held.as_ref().map(Vec::len)), (10, Some(0)), "held from 10 until the catch-up");
    }

    /// The lock over one room's sequence is not a lock over every room's.
    #[tokio::test]
    async fn rooms_in_other_shards_are_not_blocked_by_a_busy_room() {
        let sequences = Sequences::default();
        let busy = sequences.shard("tenant:t:project:busy").lock().await;
        let other = (0..100)
            .map(|i| format!("tenant:t:project:p{i}"))
            .find(|room| !std::ptr::eq(sequences.shard(room), sequences.shard("tenant:t:project:busy")))
            .unwrap_or_else(|| unreachable!("100 rooms all in one of 64 shards"));
        assert!(sequences.shard(&other).try_lock().is_ok(), "{other} is free while the busy room is held");
        drop(busy);
    }

    #[test]
    fn a_replay_covers_since_only_if_every_offset_after_it_is_there() {
        let read = |events: Vec<EventEnvelope>, last: u64| crate::history::Read {
            position: Position { epoch: "E".into(), offset: last },
            events,
        };
        let since = Since { offset: 5, epoch: "E".into() };
        assert!(covers(&since, &read(vec![event("E", 6), event("E", 7)], 7)));
        assert!(!covers(&since, &read(vec![event("E", 7)], 7)), "6 expired from history");
        assert!(!covers(&Since { epoch: "F".into(), ..since.clone() }, &read(vec![], 5)), "another epoch");
        assert!(covers(&since, &read(vec![], 5)), "nothing missed");
    }
}

//! History on a single node, in memory, with the same bounds as in Redis.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use roomcast_publisher::wire::{self, EventEnvelope, HistoryPolicy};
use tokio::time::Instant;

use super::{History, Position, Read};
use crate::backend::Published;
use crate::backend::{BoxFuture, BusError};

#[derive(Debug)]
struct RoomLog {
    epoch: String,
    offset: u64,
    /// (offset, appended at, event), oldest first.
    events: VecDeque<(u64, Instant, EventEnvelope)>,
    /// Last publish or read.
    last_active: Instant,
    /// Whether anything was ever published here (else only read: joined, never published to).
    published: bool,
    /// Approximate bytes its events hold.
    bytes: usize,
}

/// How much a single node keeps in memory for history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Most rooms with a history entry (read or published).
    pub rooms: usize,
    /// Most bytes of retained events, all rooms together.
    pub bytes: usize,
}

impl Default for MemoryLimits {
    /// The options' defaults.
    fn default() -> Self {
        use crate::config::{DEFAULT_HISTORY_MAX_BYTES, DEFAULT_HISTORY_MAX_ROOMS};
        MemoryLimits { rooms: DEFAULT_HISTORY_MAX_ROOMS, bytes: DEFAULT_HISTORY_MAX_BYTES }
    }
}

#[derive(Debug, Default)]
struct Logs {
    rooms: HashMap<String, RoomLog>,
    bytes: usize,
    /// (room, event id) → the first publish's receipt, until it expires (idempotent publishes).
    published: HashMap<(String, String), (Instant, Published)>,
}

/// Remembered ids beyond which expired ones are swept on the next insert.
const DEDUPE_SWEEP_AT: usize = 10_000;

/// In-memory history.
#[derive(Debug)]
pub struct MemoryHistory {
    policy: HistoryPolicy,
    limits: MemoryLimits,
    /// A std mutex: appends and reads are short and never await.
    logs: Mutex<Logs>,
}

/// What an event costs beyond its text: the envelope struct, its strings' headers, the deque slot.
const EVENT_OVERHEAD: usize = 256;

fn event_bytes(e: &EventEnvelope) -> usize {
    e.data.get().len() + e.event.len() + e.room.len() + e.id.len() + EVENT_OVERHEAD
}

impl MemoryHistory {
    /// History kept within `policy`, all rooms together within `limits`.
    pub fn new(policy: HistoryPolicy, limits: MemoryLimits) -> Self {
        MemoryHistory { policy, limits, logs: Mutex::new(Logs::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `room`'s log, created (within the room limit) if new.
    fn log<'a>(&self, logs: &'a mut Logs, room: &str, now: Instant) -> &'a mut RoomLog {
        if !logs.rooms.contains_key(room) && logs.rooms.len() >= self.limits.rooms {
            self.evict(logs, now, room);
        }
        let log = logs.rooms.entry(room.to_owned()).or_insert_with(|| RoomLog {
            epoch: wire::new_epoch(),
            offset: 0,
            events: VecDeque::new(),
            last_active: now,
            published: false,
            bytes: 0,
        });
        log.last_active = now;
        log
    }

    /// Gives `event` its room's next offset and epoch and keeps it. With `dedupe`, an event id
    /// already appended to the room within that window is not appended again: the first
    /// publish's receipt is returned (marked `duplicate`), and the caller must not deliver it.
    pub fn append(&self, event: &mut EventEnvelope, replicas: u64, dedupe: Option<Duration>) -> Option<Published> {
        let now = Instant::now();
        let mut logs = self.lock();
        let key = dedupe.map(|window| ((event.room.clone(), event.id.clone()), window));
        if let Some((key, _)) = &key
            && let Some((until, first)) = logs.published.get(key)
            && *until > now
        {
            return Some(Published { duplicate: true, ..first.clone() });
        }
        let log = self.log(&mut logs, &event.room, now);
        log.offset += 1;
        log.published = true;
        event.offset = Some(log.offset);
        event.epoch = Some(log.epoch.clone());
        let size = event_bytes(event);
        log.events.push_back((log.offset, now, event.clone()));
        let mut freed = 0;
        while log.events.len() > self.policy.size as usize
            || log.events.front().is_some_and(|(_, at, _)| now.duration_since(*at) > self.policy.ttl)
        {
            if let Some((_, _, old)) = log.events.pop_front() {
                freed += event_bytes(&old);
            }
        }
        log.bytes = (log.bytes + size).saturating_sub(freed);
        let receipt =
            Published { replicas, offset: Some(log.offset), epoch: Some(log.epoch.clone()), duplicate: false };
        logs.bytes = (logs.bytes + size).saturating_sub(freed);
        if let Some((key, window)) = key {
            if logs.published.len() >= DEDUPE_SWEEP_AT {
                logs.published.retain(|_, (until, _)| *until > now);
            }
            logs.published.insert(key, (now + window, receipt));
        }
        if logs.bytes > self.limits.bytes {
            let room = event.room.clone();
            self.evict(&mut logs, now, &room);
        }
        None
    }

    /// Forgets rooms idle for longer than they would live in Redis: a room only read, once its
    /// history TTL passed; a published room, once its offset and epoch would have expired.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut logs = self.lock();
        logs.published.retain(|_, (until, _)| *until > now);
        self.drop_idle(&mut logs, now);
    }

    /// Forgets the rooms idle beyond [`MemoryHistory::idle_limit`], with their bytes.
    fn drop_idle(&self, logs: &mut Logs, now: Instant) {
        let Logs { rooms, bytes, .. } = logs;
        rooms.retain(|_, log| {
            let keep = now.duration_since(log.last_active) < self.idle_limit(log);
            if !keep {
                *bytes = bytes.saturating_sub(log.bytes);
            }
            keep
        });
    }

    fn idle_limit(&self, log: &RoomLog) -> Duration {
        if log.published { wire::META_TTL } else { self.policy.ttl }
    }

    /// Over a limit: forgets expired rooms, then rooms nobody published to (what clients'
    /// joins create: one tenant joining many names must not push out others' history), then
    /// the least recently active, down to 90 % of both limits (so the sort runs once per many
    /// new rooms, not once per room); never `keep`, the room being written. A room forgotten
    /// this way loses its history: its clients get `recovered: false`.
    fn evict(&self, logs: &mut Logs, now: Instant, keep: &str) {
        self.drop_idle(logs, now);
        let Logs { rooms, bytes, .. } = logs;
        let (room_target, byte_target) = (self.limits.rooms / 10 * 9, self.limits.bytes / 10 * 9);
        if rooms.len() <= room_target && *bytes <= byte_target {
            return;
        }
        let mut by_age: Vec<(bool, Instant, String)> = rooms
            .iter()
            .filter(|(r, _)| r.as_str() != keep)
            .map(|(r, l)| (l.published, l.last_active, r.clone()))
            .collect();
        by_age.sort_unstable();
        let mut evicted = 0u64;
        for (_, _, room) in by_age {
            if rooms.len() <= room_target && *bytes <= byte_target {
                break;
            }
            if let Some(log) = rooms.remove(&room) {
                *bytes = bytes.saturating_sub(log.bytes);
                evicted += 1;
            }
        }
        crate::metrics::history_evicted(evicted);
    }

    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let logs = self.lock();
        (logs.rooms.len(), logs.bytes)
    }
}

impl History for MemoryHistory {
    fn read(&self, room: &str, after: u64, limit: usize) -> BoxFuture<'static, Result<Read, BusError>> {
        let read = {
            let now = Instant::now();
            let mut logs = self.lock();
            let log = self.log(&mut logs, room, now);
            Read {
                position: Position { epoch: log.epoch.clone(), offset: log.offset },
                events: log
                    .events
                    .iter()
                    .filter(|(offset, at, _)| *offset > after && now.duration_since(*at) <= self.policy.ttl)
                    .take(limit)
                    .map(|(_, _, e)| e.clone())
                    .collect(),
            }
        };
        Box::pin(async move { Ok(read) })
    }

    fn policy(&self) -> HistoryPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(room: &str, data_len: usize) -> EventEnvelope {
        EventEnvelope {
            v: wire::VERSION,
            id: "id".into(),
            room: room.into(),
            event: "e".into(),
            data: RawValue::from_string(format!("\"{}\"", "x".repeat(data_len))).unwrap(),
            ts: 0,
            offset: None,
            epoch: None,
            from: None,
            except: None,
        }
    }

    fn history(rooms: usize, bytes: usize) -> MemoryHistory {
        let policy = HistoryPolicy { size: 100, ttl: Duration::from_secs(300) };
        MemoryHistory::new(policy, MemoryLimits { rooms, bytes })
    }

    /// Issue 14: joins on 160k distinct channel names kept ~1 KB each for a week.
    #[tokio::test(start_paused = true)]
    async fn rooms_only_read_are_bounded_and_forgotten_with_their_history() {
        let h = history(1_000, usize::MAX);
        for i in 0..50_000 {
            h.read(&format!("tenant:t:channel:c{i}"), 0, 10).await.unwrap();
        }
        assert!(h.usage().0 <= 1_000, "{:?}", h.usage());
        // The most recent rooms are the ones kept.
        let recent = h.read("tenant:t:channel:c49999", 0, 10).await.unwrap().position;
        assert_eq!(h.read("tenant:t:channel:c49999", 0, 10).await.unwrap().position, recent);

        let mut published = event("tenant:t:channel:news", 10);
        h.append(&mut published, 0, None);
        tokio::time::advance(Duration::from_secs(301)).await;
        h.sweep();
        assert_eq!(h.usage().0, 1, "only-read rooms go with the history TTL; the published one stays");
        tokio::time::advance(wire::META_TTL).await;
        h.sweep();
        assert_eq!(h.usage(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn joins_of_many_names_never_push_out_published_history() {
        let h = history(100, usize::MAX);
        for i in 0..50 {
            h.append(&mut event(&format!("tenant:a:channel:news{i}"), 10), 0, None);
        }
        for i in 0..10_000 {
            h.read(&format!("tenant:b:channel:junk{i}"), 0, 10).await.unwrap();
        }
        for i in 0..50 {
            let read = h.read(&format!("tenant:a:channel:news{i}"), 0, 10).await.unwrap();
            assert_eq!(read.events.len(), 1, "news{i} kept its history");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retained_bytes_stay_under_the_limit_and_the_active_room_keeps_its_history() {
        let h = history(usize::MAX, 1024 * 1024);
        for i in 0..2_000 {
            h.append(&mut event(&format!("tenant:t:channel:c{i}"), 4 * 1024), 0, None);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        for _ in 0..10 {
            h.append(&mut event("tenant:t:channel:hot", 100), 0, None);
        }
        let (_, bytes) = h.usage();
        assert!(bytes <= 1024 * 1024, "{bytes} bytes");
        let read = h.read("tenant:t:channel:hot", 0, 100).await.unwrap();
        assert_eq!((read.position.offset, read.events.len()), (10, 10));
        // The accounting matches what is held.
        let held: usize = h.lock().rooms.values().flat_map(|l| l.events.iter()).map(|(_, _, e)| event_bytes(e)).sum();
        assert_eq!(held, bytes);
    }
}

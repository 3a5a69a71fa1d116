//! History on a single node, in memory, with the same bounds as in Redis.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use roomcast_publisher::wire::{self, EventEnvelope, HistoryPolicy};
use tokio::time::Instant;

use super::{History, Position, Read};
use crate::backend::{BoxFuture, BusError};

#[derive(Debug)]
struct RoomLog {
    epoch: String,
    offset: u64,
    /// (offset, appended at, event), oldest first.
    events: VecDeque<(u64, Instant, EventEnvelope)>,
    last_publish: Instant,
}

/// In-memory history.
#[derive(Debug)]
pub struct MemoryHistory {
    policy: HistoryPolicy,
    /// A std mutex: appends and reads are short and never await.
    rooms: Mutex<HashMap<String, RoomLog>>,
}

impl MemoryHistory {
    /// History kept within `policy`.
    pub fn new(policy: HistoryPolicy) -> Self {
        MemoryHistory { policy, rooms: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomLog>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log<'a>(rooms: &'a mut HashMap<String, RoomLog>, room: &str) -> &'a mut RoomLog {
        rooms.entry(room.to_owned()).or_insert_with(|| RoomLog {
            epoch: wire::new_epoch(),
            offset: 0,
            events: VecDeque::new(),
            last_publish: Instant::now(),
        })
    }

    /// Gives `event` its room's next offset and epoch and keeps it.
    pub fn append(&self, event: &mut EventEnvelope) {
        let mut rooms = self.lock();
        let log = Self::log(&mut rooms, &event.room);
        log.offset += 1;
        event.offset = Some(log.offset);
        event.epoch = Some(log.epoch.clone());
        let now = Instant::now();
        log.last_publish = now;
        log.events.push_back((log.offset, now, event.clone()));
        while log.events.len() > self.policy.size as usize
            || log.events.front().is_some_and(|(_, at, _)| now.duration_since(*at) > self.policy.ttl)
        {
            log.events.pop_front();
        }
    }

    /// Forgets rooms idle for longer than their offset and epoch would live in Redis.
    pub fn forget_idle(&self, idle: Duration) {
        let now = Instant::now();
        self.lock().retain(|_, log| now.duration_since(log.last_publish) < idle);
    }
}

impl History for MemoryHistory {
    fn read(&self, room: &str, after: u64, limit: usize) -> BoxFuture<'static, Result<Read, BusError>> {
        let read = {
            let mut rooms = self.lock();
            let log = Self::log(&mut rooms, room);
            let now = Instant::now();
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

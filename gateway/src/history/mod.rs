//! Per-room history: every published event gets the room's next offset and is kept, bounded by
//! size and age, so clients and replicas that missed events can get them back.
//!
//! Publishing with history is the job of the bus (the Redis bus runs the publisher crate's
//! script, which assigns the offset, appends and publishes atomically; the memory bus appends to
//! [`memory::MemoryHistory`]). This module reads it back.

pub mod memory;
pub mod redis;

use roomcast_publisher::wire::{EventEnvelope, HistoryPolicy};

use crate::backend::{BoxFuture, BusError};

/// Where a room's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Changes when the history was lost (e.g. a Redis restart without persistence).
    pub epoch: String,
    /// The last offset assigned (0 before the first event).
    pub offset: u64,
}

/// A room's position and the events after an offset.
#[derive(Debug, Clone)]
pub struct Read {
    /// The room's position when read.
    pub position: Position,
    /// The retained events after the requested offset, in order.
    pub events: Vec<EventEnvelope>,
}

/// Reads rooms' history.
pub trait History: Send + Sync + 'static {
    /// `room`'s position and up to `limit` retained events after `after`, oldest first.
    /// A room without an epoch gets one.
    fn read(&self, room: &str, after: u64, limit: usize) -> BoxFuture<'static, Result<Read, BusError>>;

    /// The size and age limits events are kept within.
    fn policy(&self) -> HistoryPolicy;
}

impl std::fmt::Debug for dyn History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("policy", &self.policy()).finish()
    }
}

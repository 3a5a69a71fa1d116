//! The single-node bus: every member is local, so subscriptions are a set in memory.

use std::{collections::HashSet, sync::Mutex};

use super::{BoxFuture, Bus, BusError};

/// In-memory bus for a single replica.
#[derive(Debug, Default)]
pub struct MemoryBus {
    /// Rooms with local members; the only rooms a publish is delivered to.
    subscribed: Mutex<HashSet<String>>,
}

impl MemoryBus {
    /// A bus with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `room` is subscribed.
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.lock().contains(room)
    }

    /// Number of subscribed rooms.
    pub fn subscription_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Bus for MemoryBus {
    fn subscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        self.lock().insert(room.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        self.lock().remove(room);
        Box::pin(async { Ok(()) })
    }

    fn is_ready(&self) -> bool {
        true
    }
}

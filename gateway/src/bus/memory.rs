//! The single-node bus: every member is local, so subscriptions are a set in memory and a
//! publish is a direct delivery.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use roomcast_publisher::wire::Envelope;

use super::{BoxFuture, Bus, BusError};
use crate::delivery::Delivery;

/// In-memory bus for a single replica.
#[derive(Debug)]
pub struct MemoryBus {
    /// Rooms with local members; the only rooms a publish is delivered to.
    subscribed: Mutex<HashSet<String>>,
    delivery: Arc<Delivery>,
}

impl MemoryBus {
    /// A bus with no subscriptions, delivering through `delivery`.
    pub fn new(delivery: Arc<Delivery>) -> Self {
        MemoryBus { subscribed: Mutex::new(HashSet::new()), delivery }
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

    fn publish(&self, envelopes: Vec<Envelope>) -> BoxFuture<'static, Result<Vec<u64>, BusError>> {
        let reached: Vec<u64> = envelopes.iter().map(|e| u64::from(self.is_subscribed(e.room()))).collect();
        let delivery = self.delivery.clone();
        Box::pin(async move {
            for (envelope, reached) in envelopes.iter().zip(&reached) {
                if *reached == 1 {
                    delivery.deliver(envelope).await;
                }
            }
            Ok(reached)
        })
    }

    fn unavailable(&self) -> Option<&'static str> {
        None
    }
}

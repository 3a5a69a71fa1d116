//! The single-node bus: every member is local, so subscriptions are a set in memory and a
//! publish is a direct delivery.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use roomcast_publisher::wire::Envelope;

use super::{BoxFuture, Bus, BusError, Published};
use crate::{delivery::Delivery, history::memory::MemoryHistory};

/// In-memory bus for a single replica.
#[derive(Debug)]
pub struct MemoryBus {
    /// Rooms with local members; the only rooms a publish is delivered to.
    subscribed: Mutex<HashSet<String>>,
    delivery: Arc<Delivery>,
    history: Option<Arc<MemoryHistory>>,
    /// Held from appending an event to delivering it, so a room's events are delivered in
    /// offset order even when published concurrently.
    order: Arc<tokio::sync::Mutex<()>>,
}

impl MemoryBus {
    /// A bus with no subscriptions, delivering through `delivery` and keeping events in
    /// `history` (if any).
    pub fn new(delivery: Arc<Delivery>, history: Option<Arc<MemoryHistory>>) -> Self {
        MemoryBus { subscribed: Mutex::new(HashSet::new()), delivery, history, order: Default::default() }
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

    fn publish(&self, envelopes: Vec<Envelope>) -> BoxFuture<'static, Result<Vec<Published>, BusError>> {
        let reached: Vec<u64> = envelopes.iter().map(|e| u64::from(self.is_subscribed(e.room()))).collect();
        let (delivery, history, order) = (self.delivery.clone(), self.history.clone(), self.order.clone());
        Box::pin(async move {
            let _order = order.lock().await;
            let mut published = Vec::with_capacity(envelopes.len());
            for (mut envelope, replicas) in envelopes.into_iter().zip(reached) {
                let mut receipt = Published { replicas, offset: None, epoch: None };
                if let (Envelope::Event(event), Some(history)) = (&mut envelope, &history) {
                    history.append(event);
                    receipt.offset = event.offset;
                    receipt.epoch = event.epoch.clone();
                }
                if replicas == 1 {
                    delivery.deliver(&envelope).await;
                }
                published.push(receipt);
            }
            Ok(published)
        })
    }

    fn unavailable(&self) -> Option<&'static str> {
        None
    }
}

//! The single-node bus: every member is local, so subscriptions are a set in memory and a
//! publish is a direct delivery.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use crate::envelope::Envelope;
use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, Bus, BusError, Inbound, Published};
use crate::history::memory::MemoryHistory;

/// Publish calls waiting for the delivery task; a publisher beyond that waits its turn.
const QUEUE: usize = 1024;

/// One publish call: its envelopes with the replicas each reached, and where to answer.
struct Batch {
    envelopes: Vec<(Envelope, u64)>,
    done: oneshot::Sender<Vec<Published>>,
}

/// In-memory bus for a single replica.
#[derive(Debug)]
pub struct MemoryBus {
    /// Rooms with local members; the only rooms a publish is delivered to.
    subscribed: Mutex<HashSet<String>>,
    /// To the delivery task, which owns the order of appends and deliveries.
    queue: mpsc::Sender<Batch>,
}

/// The memory bus's delivery task, started with [`MemoryDelivery::run`].
pub struct MemoryDelivery {
    queue: mpsc::Receiver<Batch>,
    history: Option<Arc<MemoryHistory>>,
}

impl std::fmt::Debug for MemoryDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDelivery").field("history", &self.history).finish_non_exhaustive()
    }
}

impl MemoryBus {
    /// A bus with no subscriptions, keeping events in `history` (if any); publishes are
    /// delivered once the returned task runs.
    pub fn new(history: Option<Arc<MemoryHistory>>) -> (Self, MemoryDelivery) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (MemoryBus { subscribed: Mutex::new(HashSet::new()), queue: tx }, MemoryDelivery { queue: rx, history })
    }

    /// Whether `room` is subscribed.
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.lock().contains(room)
    }

    /// Number of subscribed rooms.
    #[cfg(test)]
    pub fn subscription_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryDelivery {
    /// Starts the task that appends each published event to history and delivers it to
    /// `inbound`, one publish at a time, so a room's events are delivered in offset order even
    /// when published concurrently. It ends when the bus is dropped.
    pub fn run(self, inbound: Arc<dyn Inbound>) {
        tokio::spawn(self.deliver(inbound));
    }

    async fn deliver(mut self, inbound: Arc<dyn Inbound>) {
        while let Some(Batch { envelopes, done }) = self.queue.recv().await {
            let mut published = Vec::with_capacity(envelopes.len());
            for (mut envelope, replicas) in envelopes {
                let mut receipt = Published { replicas, offset: None, epoch: None };
                if let (Envelope::Event(event), Some(history)) = (&mut envelope, &self.history) {
                    history.append(event);
                    receipt.offset = event.offset;
                    receipt.epoch = event.epoch.clone();
                }
                if replicas == 1 {
                    inbound.deliver(&envelope).await;
                }
                published.push(receipt);
            }
            // The publisher may have stopped waiting (its request was cancelled).
            let _ = done.send(published);
        }
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
        // Who is subscribed is decided when the call is made, as Redis decides at PUBLISH.
        let envelopes: Vec<(Envelope, u64)> = envelopes
            .into_iter()
            .map(|e| {
                let reached = u64::from(self.is_subscribed(e.room()));
                (e, reached)
            })
            .collect();
        let queue = self.queue.clone();
        Box::pin(async move {
            let stopped = || BusError::Unavailable("the delivery task stopped".into());
            let (done, receipts) = oneshot::channel();
            queue.send(Batch { envelopes, done }).await.map_err(|_| stopped())?;
            receipts.await.map_err(|_| stopped())
        })
    }

    fn unavailable(&self) -> Option<&'static str> {
        None
    }
}

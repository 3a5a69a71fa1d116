//! Local membership: how many of this replica's sockets are in each room, so the bus is
//! subscribed exactly while a room has members here. (Which rooms one socket is in is its
//! [`crate::conn::Conn`]'s; authorizing `join`/`leave` is the protocol edge's, the `socket` module.)

use roomcast_publisher::{Room, RoomKind};
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use futures_util::{FutureExt, future::Shared};

use crate::{
    bus::{BoxFuture, Bus, BusError},
    metrics,
};

/// Local members per room, and the bus subscriptions that follow from them.
pub struct Membership {
    /// Room name → its local members. A std mutex: held only to update the count (and the
    /// `roomcast_local_rooms` gauge) and to *issue* the bus call, never across an await, which
    /// keeps the bus calls for one room in the order the counts changed.
    counts: Mutex<HashMap<String, Local>>,
    /// Numbers each period during which a room has local members (see [`Entered::generation`]).
    generations: std::sync::atomic::AtomicU64,
    bus: Arc<dyn Bus>,
    /// Rooms that got a first local member since the room index was last told (bounded: beyond
    /// [`MAX_NEW_ROOMS`] they wait for the periodic refresh).
    new_rooms: Mutex<std::collections::HashSet<String>>,
}

/// Rooms waiting to be added to the room index between two flushes, at most.
const MAX_NEW_ROOMS: usize = 10_000;

/// Whether `room` belongs in its tenant's room index (project and channel rooms).
fn indexed(room: &str) -> bool {
    Room::parse(room).is_some_and(|r| matches!(r.kind(), RoomKind::Project | RoomKind::Channel))
}

/// One room's local members.
struct Local {
    members: u32,
    generation: u64,
    /// The confirmation of the subscription the first member started: every later member
    /// waits for it too, so no join reads the room's history position before Redis delivers
    /// the room's events here.
    subscribed: Shared<BoxFuture<'static, Result<(), BusError>>>,
}

/// The outcome of [`Membership::enter`].
pub struct Entered<F> {
    /// The room's current membership period on this replica: it changes each time the room
    /// gets a first local member again, so delivery state kept from an earlier period (when
    /// the replica was not subscribed) is recognised as stale.
    pub generation: u64,
    /// Resolves once the bus delivers the room's events here.
    pub subscribed: F,
}

impl<F> std::fmt::Debug for Entered<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("rooms", &self.room_count()).finish_non_exhaustive()
    }
}

impl Membership {
    /// A registry driving `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Membership {
            counts: Mutex::new(HashMap::new()),
            generations: Default::default(),
            bus,
            new_rooms: Mutex::default(),
        }
    }

    /// A local socket entered `room`.
    pub fn enter(&self, room: &str) -> Entered<impl Future<Output = Result<(), BusError>> + Send + 'static + use<>> {
        let mut counts = self.lock();
        match counts.get_mut(room) {
            Some(local) => {
                local.members += 1;
                Entered { generation: local.generation, subscribed: local.subscribed.clone() }
            }
            None => {
                // Listed in its tenant's room index at the next flush (see `Membership::new_rooms`).
                let mut new_rooms = self.new_rooms.lock().unwrap_or_else(|e| e.into_inner());
                if new_rooms.len() < MAX_NEW_ROOMS {
                    new_rooms.insert(room.to_owned());
                }
                drop(new_rooms);
                let subscribed = self.bus.subscribe(room).shared();
                let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                counts.insert(room.to_owned(), Local { members: 1, generation, subscribed: subscribed.clone() });
                metrics::local_rooms(counts.len());
                Entered { generation, subscribed }
            }
        }
    }

    /// A local socket left `room`. `Some` if it was the room's last local member here: the bus
    /// is being unsubscribed, and the future resolves once it confirmed.
    pub fn exit(&self, room: &str) -> Option<BoxFuture<'static, Result<(), BusError>>> {
        let mut counts = self.lock();
        match counts.get_mut(room) {
            Some(local) if local.members > 1 => {
                local.members -= 1;
                None
            }
            Some(_) => {
                counts.remove(room);
                metrics::local_rooms(counts.len());
                Some(self.bus.unsubscribe(room))
            }
            None => None,
        }
    }

    /// The project and channel rooms with local members (copied under the lock, filtered
    /// after: joins do not wait for the parsing).
    pub fn rooms(&self) -> Vec<String> {
        let all: Vec<String> = self.lock().keys().cloned().collect();
        all.into_iter().filter(|name| indexed(name)).collect()
    }

    /// The project and channel rooms that got a first local member since the last call.
    pub fn new_rooms(&self) -> Vec<String> {
        let taken = std::mem::take(&mut *self.new_rooms.lock().unwrap_or_else(|e| e.into_inner()));
        taken.into_iter().filter(|name| indexed(name)).collect()
    }

    /// Number of rooms with at least one local member.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    /// The current membership period of `room` (0: no local member).
    pub fn generation(&self, room: &str) -> u64 {
        self.lock().get(room).map_or(0, |local| local.generation)
    }

    /// Local members of `room`.
    pub fn members(&self, room: &str) -> u32 {
        self.lock().get(room).map_or(0, |local| local.members)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;

    #[tokio::test]
    async fn the_bus_is_subscribed_exactly_while_a_room_has_local_members() {
        let bus = Arc::new(MemoryBus::new(None).0);
        let m = Membership::new(bus.clone());
        let first = m.enter("r");
        let second = m.enter("r");
        assert_eq!(first.generation, second.generation, "one membership period");
        second.subscribed.await.unwrap();
        assert!(bus.is_subscribed("r"));
        assert!(m.exit("r").is_none());
        assert!(bus.is_subscribed("r"), "one member is still here");
        m.exit("r").expect("the last member left").await.unwrap();
        assert!(!bus.is_subscribed("r"));
        assert!(m.exit("r").is_none());
        assert_eq!((m.room_count(), bus.subscription_count()), (0, 0));
    }
}

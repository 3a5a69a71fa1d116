//! Presence on a single node: the same semantics as the Redis store, in memory.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use roomcast_publisher::{Room, wire};

use crate::envelope::{Envelope, PresenceAction, PresenceEnvelope};

use super::{
    Admission, ConnectionCaps, Held, HeldConnections, Occupancy, Page, PresenceStore, PresentUser, Status, envelope,
};
use crate::{
    bus::{BoxFuture, Bus, BusError},
    events::Lifecycle,
};

#[derive(Debug, Default)]
struct RoomPresence {
    /// user → (connections, status, since)
    users: HashMap<String, (u64, Status, u64)>,
    /// (since, user), for listing oldest first.
    order: BTreeSet<(u64, String)>,
    /// All users' connections together (occupancy in O(1)).
    connections: u64,
}

/// Connections per (tenant, user), per tenant, and each tenant's users with a connection.
type Connections = (HashMap<(String, String), u32>, HashMap<String, u32>, HashMap<String, u32>);

/// In-memory presence store; announces transitions through the (memory) bus.
pub struct MemoryPresence {
    rooms: Mutex<HashMap<String, RoomPresence>>,
    /// Connections of every gateway using the store: per (tenant, user), and per tenant.
    connections: Mutex<Connections>,
    bus: Arc<dyn Bus>,
    /// Gateways using the store (several on a `LocalCluster`).
    nodes: AtomicUsize,
    /// Where transitions are recorded as lifecycle events (`None`: no sink).
    lifecycle: Option<Arc<Lifecycle>>,
}

impl std::fmt::Debug for MemoryPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPresence").finish_non_exhaustive()
    }
}

impl MemoryPresence {
    /// A store announcing through `bus`, recording lifecycle events in `lifecycle`.
    pub fn new(bus: Arc<dyn Bus>, lifecycle: Option<Arc<Lifecycle>>) -> Self {
        MemoryPresence {
            rooms: Mutex::new(HashMap::new()),
            connections: Mutex::default(),
            bus,
            nodes: AtomicUsize::new(0),
            lifecycle,
        }
    }

    /// The lifecycle events of `room`'s transitions (`(a user's first or last connection,
    /// the room's first or last user)`), as the Redis scripts record them.
    fn events(&self, room: &str, user: &str, joined: bool, first_or_last: bool) -> Vec<String> {
        let (Some(lifecycle), Some(parsed)) = (&self.lifecycle, Room::parse(room)) else { return Vec::new() };
        let types = lifecycle.room_types(&parsed);
        let ts = wire::now_ms();
        let event = |kind: &str, user: Option<&str>| crate::events::room_event(kind, &parsed, user, ts);
        let (each, room_kind) = if joined { (types.first, types.occupied) } else { (types.last, types.vacated) };
        let mut out = Vec::new();
        if joined
            && first_or_last
            && let Some(kind) = room_kind
        {
            out.push(event(kind, None));
        }
        if let Some(kind) = each {
            out.push(event(kind, Some(user)));
        }
        if !joined
            && first_or_last
            && let Some(kind) = room_kind
        {
            out.push(event(kind, None));
        }
        out
    }

    /// Announces `envelope` (a project or channel room's; a user room has presence only for its
    /// lifecycle events) and records `events`.
    fn announce_and_record(
        &self,
        envelope: PresenceEnvelope,
        events: Vec<String>,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let announced = Room::parse(&envelope.room).filter(super::tracked).map(|_| self.announce(envelope));
        let recorded = match (&self.lifecycle, events.is_empty()) {
            (Some(lifecycle), false) => {
                for event in &events {
                    crate::metrics::event_emitted(&crate::events::kind_of(event));
                }
                Some(lifecycle.log().append(events))
            }
            _ => None,
        };
        Box::pin(async move {
            if let Some(recorded) = recorded {
                recorded.await?;
            }
            match announced {
                Some(announced) => announced.await,
                None => Ok(()),
            }
        })
    }

    /// One more gateway uses the store.
    pub fn add_node(&self) {
        self.nodes.fetch_add(1, Ordering::Relaxed);
    }

    fn announce(&self, envelope: PresenceEnvelope) -> BoxFuture<'static, Result<(), BusError>> {
        let published = self.bus.publish(vec![Envelope::Presence(envelope)], None);
        Box::pin(async move { published.await?.into_iter().collect::<Result<Vec<_>, _>>().map(|_| ()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomPresence>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PresenceStore for MemoryPresence {
    fn connect(
        &self,
        tenant: &str,
        user: &str,
        caps: ConnectionCaps,
    ) -> BoxFuture<'static, Result<Admission, BusError>> {
        let mut guard = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let (users, tenants, tenant_users) = &mut *guard;
        let key = (tenant.to_owned(), user.to_owned());
        let admission = if caps.per_user > 0 && users.get(&key).copied().unwrap_or(0) >= caps.per_user {
            Admission::UserFull
        } else if caps.per_tenant > 0 && tenants.get(tenant).copied().unwrap_or(0) >= caps.per_tenant {
            Admission::TenantFull
        } else {
            let n = users.entry(key).or_default();
            if *n == 0 {
                *tenant_users.entry(tenant.to_owned()).or_default() += 1;
            }
            *n += 1;
            *tenants.entry(tenant.to_owned()).or_default() += 1;
            Admission::Admitted
        };
        Box::pin(std::future::ready(Ok(admission)))
    }

    fn disconnect(&self, tenant: &str, user: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let mut guard = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let (users, tenants, tenant_users) = &mut *guard;
        let key = (tenant.to_owned(), user.to_owned());
        if let Some(n) = users.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                users.remove(&key);
                if let Some(u) = tenant_users.get_mut(tenant) {
                    *u = u.saturating_sub(1);
                    if *u == 0 {
                        tenant_users.remove(tenant);
                    }
                }
            }
            if let Some(t) = tenants.get_mut(tenant) {
                *t = t.saturating_sub(1);
                if *t == 0 {
                    tenants.remove(tenant);
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn reconcile_connections(&self, _held: HeldConnections) -> BoxFuture<'static, Result<(), BusError>> {
        // Memory never loses counts, and its gateways share one process.
        Box::pin(std::future::ready(Ok(())))
    }

    fn enter(&self, room: &str, user: &str, count: u32, status: Status) -> BoxFuture<'static, Result<(), BusError>> {
        let (joined, occupied) = {
            let mut rooms = self.lock();
            let presence = rooms.entry(room.to_owned()).or_default();
            let occupied = presence.users.is_empty();
            presence.connections += u64::from(count);
            let joined = match presence.users.get_mut(user) {
                Some((n, _, _)) => {
                    *n += u64::from(count);
                    None
                }
                None => {
                    let since = wire::now_ms();
                    presence.users.insert(user.to_owned(), (u64::from(count), status, since));
                    presence.order.insert((since, user.to_owned()));
                    Some(since)
                }
            };
            (joined, occupied)
        };
        match joined {
            Some(since) => self.announce_and_record(
                envelope(room, PresenceAction::Join, user, Some(status), Some(since)),
                self.events(room, user, true, occupied),
            ),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn exit(&self, room: &str, user: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let mut vacated = false;
        let left = {
            let mut rooms = self.lock();
            let Some(presence) = rooms.get_mut(room) else { return Box::pin(async { Ok(()) }) };
            if presence.users.contains_key(user) {
                presence.connections = presence.connections.saturating_sub(1);
            }
            let gone = match presence.users.get_mut(user) {
                Some((n, _, since)) if *n <= 1 => Some(*since),
                Some((n, _, _)) => {
                    *n -= 1;
                    None
                }
                None => None,
            };
            if let Some(since) = gone {
                presence.users.remove(user);
                presence.order.remove(&(since, user.to_owned()));
                if presence.users.is_empty() {
                    rooms.remove(room);
                    vacated = true;
                }
            }
            gone.is_some()
        };
        if left {
            self.announce_and_record(
                envelope(room, PresenceAction::Leave, user, None, None),
                self.events(room, user, false, vacated),
            )
        } else {
            Box::pin(async { Ok(()) })
        }
    }

    fn set_status(&self, room: &str, user: &str, status: Status) -> BoxFuture<'static, Result<(), BusError>> {
        let changed = {
            let mut rooms = self.lock();
            match rooms.get_mut(room).and_then(|p| p.users.get_mut(user)) {
                Some((_, current, _)) if *current != status => {
                    *current = status;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.announce(envelope(room, PresenceAction::Update, user, Some(status), None))
        } else {
            Box::pin(async { Ok(()) })
        }
    }

    fn list(&self, room: &str, offset: u64, limit: u64) -> BoxFuture<'static, Result<Page, BusError>> {
        let page = {
            let rooms = self.lock();
            match rooms.get(room) {
                None => Page { users: Vec::new(), total: 0 },
                Some(presence) => Page {
                    total: presence.users.len() as u64,
                    users: presence
                        .order
                        .iter()
                        .skip(offset as usize)
                        .take(limit as usize)
                        .filter_map(|(_, user)| {
                            presence.users.get(user).map(|(n, status, since)| PresentUser {
                                user_id: user.clone(),
                                status: status.as_str().to_owned(),
                                connections: *n,
                                since: *since,
                            })
                        })
                        .collect(),
                },
            }
        };
        Box::pin(async move { Ok(page) })
    }

    fn connected(&self, tenant: &str, user: Option<&str>) -> BoxFuture<'static, Result<Occupancy, BusError>> {
        let guard = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let (users, tenants, tenant_users) = &*guard;
        let occupancy = match user {
            Some(user) => {
                let n = users.get(&(tenant.to_owned(), user.to_owned())).copied().unwrap_or(0);
                Occupancy { connections: u64::from(n), users: u64::from(n > 0) }
            }
            None => Occupancy {
                connections: u64::from(tenants.get(tenant).copied().unwrap_or(0)),
                users: u64::from(tenant_users.get(tenant).copied().unwrap_or(0)),
            },
        };
        Box::pin(std::future::ready(Ok(occupancy)))
    }

    fn occupancy(&self, room: &str) -> BoxFuture<'static, Result<Occupancy, BusError>> {
        let occupancy = self
            .lock()
            .get(room)
            .map(|p| Occupancy { connections: p.connections, users: p.users.len() as u64 })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(occupancy)))
    }

    fn forget(&self, _room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    /// In memory nothing is lost and no operation fails, so there is never anything to reconcile.
    fn reconcile(&self, _held: Held) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn renew(&self) -> BoxFuture<'static, Result<bool, BusError>> {
        Box::pin(async { Ok(false) })
    }

    fn reap_dead(&self) -> BoxFuture<'static, Result<usize, BusError>> {
        Box::pin(async { Ok(0) })
    }

    fn release(&self) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    /// One process: nothing to lease, nobody else to watch.
    fn maintenance_interval(&self) -> Option<(Duration, Duration)> {
        None
    }

    fn shared(&self) -> bool {
        self.nodes.load(Ordering::Relaxed) > 1
    }
}

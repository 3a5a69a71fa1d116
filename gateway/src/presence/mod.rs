//! Who is in a project or channel room, cluster-wide: one entry per user however many tabs or
//! devices they have open, on whichever replicas.
//!
//! [`Presence`] is this replica's side. It counts local connections per (room, user) and
//! applies the leave grace period locally: when a user's *last* connection on this replica
//! leaves, the store is told only after the grace period, and not at all if the user is back
//! on this replica by then. A user who reconnects to another replica within the grace is added
//! there before being removed here, so the store never sees them gone: no leave, no join.
//!
//! Store operations go through one ordered queue, so the store sees this replica's changes in
//! the order they happened. The [`PresenceStore`] decides the cluster-wide transitions (first
//! connection anywhere → `presence:join`, last → `presence:leave`) and announces them to the
//! room's members on every replica.
//!
//! - [`memory::MemoryPresence`]: single node.
//! - [`redis::RedisPresence`]: shared through Redis, with per-replica leases so the survivors
//!   remove a crashed replica's users.

pub mod memory;
mod queue;
pub mod redis;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use roomcast_publisher::{Room, RoomKind, wire};
use serde::Serialize;
use tokio::time::Instant;

pub use queue::Full;
use queue::{FairQueue, Next, Op};

use crate::{
    backend::{BoxFuture, BusError},
    envelope::{PresenceAction, PresenceEnvelope},
    errors::ErrorCode,
    timers::DeadlineQueue,
};

/// A user's status (what a socket sets with `presence:update`; kept in its [`crate::conn::Conn`]).
pub use crate::conn::Status;

/// One user in a presence list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresentUser {
    /// The user.
    pub user_id: String,
    /// Their status.
    pub status: String,
    /// Their connections in the room, on all replicas.
    pub connections: u64,
    /// When their presence in the room began, ms since the Unix epoch.
    pub since: u64,
}

/// What one replica holds: room → (user, connections, status).
pub type Held = Vec<(String, Vec<(String, u32, Status)>)>;

/// A page of a room's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Users, oldest presence first.
    pub users: Vec<PresentUser>,
    /// Present users in the room.
    pub total: u64,
}

/// How many are in a room, cluster-wide: what presence counts, including connections whose
/// grace period is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Occupancy {
    /// Connections (a user's tabs count each).
    pub connections: u64,
    /// Distinct users.
    pub users: u64,
}

/// Where presence lives: in memory on a single node, or in Redis for a cluster.
///
/// Calls are made in order from one task. `enter` and `exit` announce cluster-wide transitions
/// to the room's members themselves (atomically with the change, in the Redis store).
pub trait PresenceStore: Send + Sync + 'static {
    /// `count` more connections of `user` in `room` on this replica.
    fn enter(&self, room: &str, user: &str, count: u32, status: Status) -> BoxFuture<'static, Result<(), BusError>>;
    /// One connection of `user` fewer in `room` on this replica.
    fn exit(&self, room: &str, user: &str) -> BoxFuture<'static, Result<(), BusError>>;
    /// `user` is now `status` in `room` (announced if it changed).
    fn set_status(&self, room: &str, user: &str, status: Status) -> BoxFuture<'static, Result<(), BusError>>;
    /// Users `offset..offset + limit` of `room`.
    fn list(&self, room: &str, offset: u64, limit: u64) -> BoxFuture<'static, Result<Page, BusError>>;
    /// `room`'s occupancy, without reading its members.
    fn occupancy(&self, room: &str) -> BoxFuture<'static, Result<Occupancy, BusError>>;
    /// A tenant's connections and users with a connection (or one user's), from the connection
    /// counts of the caps.
    fn connected(&self, tenant: &str, user: Option<&str>) -> BoxFuture<'static, Result<Occupancy, BusError>>;
    /// This replica no longer holds presence in `room`.
    fn forget(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>>;
    /// Sets this replica's share of presence to exactly `held` (room → user, connections,
    /// status), announcing the joins and leaves that follow; rooms it held before and are not
    /// listed are emptied.
    fn reconcile(&self, held: Held) -> BoxFuture<'static, Result<(), BusError>>;
    /// Renews this replica's lease; `true` if the store did not know this replica (it lost
    /// its data, or declared the replica dead), so this replica's presence must be reconciled.
    fn renew(&self) -> BoxFuture<'static, Result<bool, BusError>>;
    /// Removes the presence of replicas whose lease expired; returns how many were reaped.
    fn reap_dead(&self) -> BoxFuture<'static, Result<usize, BusError>>;
    /// Removes this replica's lease (after a graceful shutdown emptied its presence).
    fn release(&self) -> BoxFuture<'static, Result<(), BusError>>;
    /// How often [`PresenceStore::renew`] and [`PresenceStore::reap_dead`] should run.
    fn maintenance_interval(&self) -> Option<(Duration, Duration)>;
    /// Whether other replicas still read this store after this one stops, so a graceful
    /// shutdown must remove what this replica holds.
    fn shared(&self) -> bool;
    /// One more connection of `user` in `tenant` on this replica, if `caps` allow it counting
    /// every replica's connections (a dead replica's count until its lease is reaped).
    fn connect(
        &self,
        tenant: &str,
        user: &str,
        caps: ConnectionCaps,
    ) -> BoxFuture<'static, Result<Admission, BusError>>;
    /// One connection of `user` in `tenant` fewer on this replica (none if it has none counted).
    fn disconnect(&self, tenant: &str, user: &str) -> BoxFuture<'static, Result<(), BusError>>;
    /// Sets this replica's share of connections to exactly `held` (tenant → user, connections).
    fn reconcile_connections(&self, held: HeldConnections) -> BoxFuture<'static, Result<(), BusError>>;
}

/// Most concurrent connections per user and per tenant, cluster-wide; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionCaps {
    /// `ROOMCAST_MAX_CONNECTIONS_PER_USER`.
    pub per_user: u32,
    /// `ROOMCAST_MAX_CONNECTIONS_PER_TENANT`.
    pub per_tenant: u32,
}

impl ConnectionCaps {
    /// Whether connections are counted at all.
    pub fn any(&self) -> bool {
        self.per_user > 0 || self.per_tenant > 0
    }
}

/// The store's answer to one more connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted.
    Admitted,
    /// The user already has `per_user` connections.
    UserFull,
    /// The tenant already has `per_tenant` connections.
    TenantFull,
}

/// A replica's connections: tenant → (user, connections).
pub type HeldConnections = Vec<(String, Vec<(String, u32)>)>;

/// Whether `room` has presence (project and channel rooms do).
pub fn tracked(room: &Room) -> bool {
    matches!(room.kind(), RoomKind::Project | RoomKind::Channel)
}

/// The `{ project: id }` / `{ channel: id }` part of presence payloads.
pub fn room_field(room: &Room) -> (&'static str, &str) {
    (room.kind().as_str(), room.id().unwrap_or_default())
}

/// This replica's connections of one user in one room.
#[derive(Debug)]
struct Local {
    sockets: u32,
    /// The user's last local connection left; the store is told at this instant unless one returns.
    leaving_at: Option<Instant>,
    /// The status this replica last set for the user (replayed if the store loses it).
    status: Status,
}

/// This replica's users per room, with the number of users per room, so that the last user's
/// grace ending finds the room empty without scanning every entry (a scan per expiry was
/// quadratic: ~80,000 join/leave pairs kept a worker spinning).
#[derive(Debug, Default)]
struct LocalUsers {
    entries: HashMap<(String, String), Local>,
    per_room: HashMap<String, usize>,
}

impl LocalUsers {
    /// The entry of `key`, created with `status` if new.
    fn entry(&mut self, key: (String, String), status: Status) -> &mut Local {
        let per_room = &mut self.per_room;
        self.entries.entry(key).or_insert_with_key(|(room, _)| {
            *per_room.entry(room.clone()).or_default() += 1;
            Local { sockets: 0, leaving_at: None, status }
        })
    }

    /// Removes `key`; `true` if its room has no entry left.
    fn remove(&mut self, key: &(String, String)) -> bool {
        if self.entries.remove(key).is_none() {
            return false;
        }
        match self.per_room.get_mut(&key.0) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.per_room.remove(&key.0);
                true
            }
        }
    }
}

/// Most connection count calls (connect, disconnect) in flight to the store at once: at the
/// Redis round trip here (~0.1 ms) 64 pipelined calls admit ~600,000 a second, far above any
/// connect rate, while a storm's waiting calls cost a few dozen bytes each instead of a future.
const COUNTING_CALLS_IN_FLIGHT: usize = 64;

/// How long a connection count call waits for one of those: past it, it counts as a store
/// failure (a connect is admitted unchecked, and the counts are reconciled later), as a call
/// that reached a store slower than its command timeout (2 s by default) would have.
const COUNTING_PERMIT_WAIT: Duration = Duration::from_secs(2);

/// This replica's presence bookkeeping; see the module docs.
pub struct Presence {
    store: Arc<dyn PresenceStore>,
    grace: Duration,
    /// A std mutex: held only to update counts and queue store operations, never across an await.
    local: Mutex<LocalUsers>,
    leaving: DeadlineQueue<(String, String)>,
    /// A store operation failed: this replica's share may be off until the next reconcile.
    dirty: std::sync::atomic::AtomicBool,
    /// Store operations that change who is where (not statuses) that failed, ever: a graceful
    /// stop compares it before and after removing what this replica holds.
    failed: std::sync::atomic::AtomicU64,
    /// Rooms where an entry or exit failed since the last reconcile: this replica may still
    /// have a share there, so the store keeps them among its rooms (for a reconcile or a reaper
    /// to find) even when this replica forgets them. Only the worker touches it.
    unsettled: Mutex<std::collections::HashSet<String>>,
    /// Set by a graceful stop before the lease is released: the lease is not renewed again.
    stopping: std::sync::atomic::AtomicBool,
    /// Held by the maintenance task through a renewal and what follows it: a graceful stop takes
    /// it once `stopping` is set, so no renewal in flight re-adds the lease after the release.
    renewing: tokio::sync::Mutex<()>,
    /// To the worker that applies changes to the store (see [`queue`]).
    ops: FairQueue,
    /// One warning per interval while the store fails, not one per operation.
    store_errors: crate::logging::Throttled,
    caps: ConnectionCaps,
    /// This replica's connections per (tenant, user), counted or not by the store: the truth a
    /// reconcile restores. A std mutex, never held across an await.
    connections: Mutex<HashMap<(String, String), u32>>,
    /// A connection count change did not reach the store: reconcile connections when it is back.
    connections_dirty: std::sync::atomic::AtomicBool,
    /// Connects and disconnects (read) against a reconcile (write): a reconcile's snapshot of
    /// `connections` and its store update are one step no count change falls between.
    counting: tokio::sync::RwLock<()>,
    /// Connection count calls to the store in flight. A store call's future is allocated when
    /// it is made and kept until the store answers (~14.5 KB each for Redis's script call), so
    /// a disconnect storm of 5,000 sockets held 72 MB while Redis worked through them. Callers
    /// past the bound wait for a permit before making the call; tokio's semaphore is FIFO.
    counting_calls: tokio::sync::Semaphore,
    /// Whether users' connections are presence in their user rooms too (for the `user.online`
    /// and `user.offline` lifecycle events: the grace period and crash reaping come with it).
    users: bool,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("grace", &self.grace).finish_non_exhaustive()
    }
}

impl Presence {
    /// Presence backed by `store`, with a leave grace period of `grace`.
    pub fn new(
        store: Arc<dyn PresenceStore>,
        grace: Duration,
        queue_per_tenant: usize,
        caps: ConnectionCaps,
        users: bool,
    ) -> Presence {
        Presence {
            store,
            grace,
            local: Mutex::new(LocalUsers::default()),
            leaving: DeadlineQueue::default(),
            dirty: Default::default(),
            failed: Default::default(),
            unsettled: Default::default(),
            stopping: Default::default(),
            renewing: Default::default(),
            ops: FairQueue::new(queue_per_tenant),
            store_errors: crate::logging::Throttled::new(crate::logging::WARN_EVERY),
            caps,
            connections: Mutex::new(HashMap::new()),
            connections_dirty: Default::default(),
            counting: tokio::sync::RwLock::new(()),
            counting_calls: tokio::sync::Semaphore::new(COUNTING_CALLS_IN_FLIGHT),
            users,
        }
    }

    /// Whether `room` has presence here: project and channel rooms, and user rooms when
    /// lifecycle events need them.
    fn counts(&self, room: &Room) -> bool {
        tracked(room) || (self.users && room.kind() == RoomKind::User)
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection of `user` in `tenant`: `Err(TooManyConnections)` when the user
    /// or the tenant already has the most the caps allow, cluster-wide. A store that cannot
    /// answer (Redis away) admits it: connections keep working in degraded mode, and the count
    /// is restored by the reconcile that follows the store's return. Every `Ok` must be paired
    /// with one [`Presence::disconnect`].
    pub async fn connect(&self, tenant: &str, user: &str) -> Result<(), ErrorCode> {
        let _counting = self.counting.read().await;
        if self.caps.any() {
            match self.counting_call(|| self.store.connect(tenant, user, self.caps)).await {
                Ok(Admission::Admitted) => {}
                Ok(Admission::UserFull | Admission::TenantFull) => return Err(ErrorCode::TooManyConnections),
                Err(e) => {
                    crate::metrics::connection_caps_unchecked();
                    if let Some(held) = self.store_errors.check() {
                        tracing::warn!(error = %e, similar_since = held, "connection admitted without checking the connection caps; counts are restored when the store is back");
                    }
                    self.connections_dirty.store(true, std::sync::atomic::Ordering::Release);
                }
            }
        }
        *self.connections().entry((tenant.to_owned(), user.to_owned())).or_default() += 1;
        Ok(())
    }

    /// A connection admitted by [`Presence::connect`] ended.
    pub async fn disconnect(&self, tenant: &str, user: &str) {
        let _counting = self.counting.read().await;
        {
            let mut connections = self.connections();
            let key = (tenant.to_owned(), user.to_owned());
            match connections.get_mut(&key) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    connections.remove(&key);
                }
                None => return,
            }
        }
        if !self.caps.any() {
            return;
        }
        if let Err(e) = self.counting_call(|| self.store.disconnect(tenant, user)).await {
            if let Some(held) = self.store_errors.check() {
                tracing::warn!(error = %e, similar_since = held, "connection end not counted; counts are restored when the store is back");
            }
            self.connections_dirty.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Makes a connection count call to the store once one of [`COUNTING_CALLS_IN_FLIGHT`] is
    /// free (the call's future is only created then), or fails after [`COUNTING_PERMIT_WAIT`].
    async fn counting_call<T>(
        &self,
        call: impl FnOnce() -> BoxFuture<'static, Result<T, BusError>>,
    ) -> Result<T, BusError> {
        let Ok(permit) = tokio::time::timeout(COUNTING_PERMIT_WAIT, self.counting_calls.acquire()).await else {
            return Err(BusError::Unavailable("connection count calls backed up".into()));
        };
        let _permit = permit.expect("never closed");
        call().await
    }

    /// Replaces this replica's share of connection counts in the store with what it holds.
    async fn reconcile_connections(&self) {
        let _counting = self.counting.write().await;
        let mut held: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        for ((tenant, user), n) in self.connections().iter() {
            held.entry(tenant.clone()).or_default().push((user.clone(), *n));
        }
        if let Err(e) = self.store.reconcile_connections(held.into_iter().collect()).await {
            tracing::debug!(error = %e, "connection counts not reconciled; will retry");
            self.connections_dirty.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalUsers> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket of `user` entered `room`.
    pub fn entered(&self, room: &Room, user: &str, status: Status) {
        if !self.counts(room) {
            return;
        }
        let key = (room.to_string(), user.to_owned());
        let mut local = self.lock();
        let entry = local.entry(key.clone(), status);
        entry.sockets += 1;
        let previous = std::mem::replace(&mut entry.status, status);
        if let Some(at) = entry.leaving_at.take() {
            // Back within the grace period: the store still counts the connection that left.
            self.leaving.remove(at, &key);
            if status != previous && tracked(room) {
                // Refused only when the tenant is backed up; the entry was counted all the same.
                let _ = self.ops.push(Op::Status { room: key.0, user: key.1, seq: 0 }, Some(status));
            }
        } else {
            let _ = self.ops.push(Op::Enter { room: key.0, user: key.1, count: 1, status }, None);
        }
    }

    /// A socket of `user` left `room` (leave, disconnect, token expiry).
    pub fn left(&self, room: &Room, user: &str) {
        if !self.counts(room) {
            return;
        }
        let key = (room.to_string(), user.to_owned());
        let mut local = self.lock();
        let Some(entry) = local.entries.get_mut(&key) else { return };
        entry.sockets = entry.sockets.saturating_sub(1);
        if entry.sockets > 0 {
            let _ = self.ops.push(Op::Exit { room: key.0, user: key.1 }, None);
        } else if entry.leaving_at.is_none() {
            let at = Instant::now() + self.grace;
            entry.leaving_at = Some(at);
            self.leaving.insert(at, key);
        }
    }

    /// `user`, present in `room` through this replica, changed status. `Err` when the
    /// room's tenant has too many presence changes waiting (the status is kept locally and
    /// reaches the store with the user's next change or the next reconcile).
    pub fn status_changed(&self, room: &Room, user: &str, status: Status) -> Result<(), Full> {
        if !tracked(room) {
            return Ok(());
        }
        let key = (room.to_string(), user.to_owned());
        match self.lock().entries.get_mut(&key) {
            Some(entry) => {
                entry.status = status;
                let pushed = self.ops.push(Op::Status { room: key.0, user: key.1, seq: 0 }, Some(status));
                if pushed.is_err() {
                    // The store misses this status until the next reconcile replays it.
                    self.dirty.store(true, std::sync::atomic::Ordering::Release);
                }
                pushed
            }
            None => Ok(()),
        }
    }

    /// Whether a join into `room` may change presence now: `false` while the room's tenant has
    /// too many presence changes waiting (`ROOMCAST_PRESENCE_QUEUE_PER_TENANT`).
    pub fn has_room(&self, room: &Room) -> bool {
        !self.counts(room) || self.ops.has_room(&room.to_string())
    }

    /// `room`'s occupancy (a project or channel room), cluster-wide.
    pub async fn occupancy(&self, room: &Room) -> Result<Occupancy, BusError> {
        self.store.occupancy(&room.to_string()).await
    }

    /// A tenant's (or one of its users') connections, cluster-wide; `None` when connections
    /// are not counted (no connection cap is set).
    pub async fn connected(&self, tenant: &str, user: Option<&str>) -> Option<Result<Occupancy, BusError>> {
        if !self.caps.any() {
            return None;
        }
        Some(self.store.connected(tenant, user).await)
    }

    /// A page of `room`'s presence.
    pub async fn list(&self, room: &Room, offset: u64, limit: u64) -> Result<Page, BusError> {
        self.store.list(&room.to_string(), offset, limit).await
    }

    /// Applies grace expiries and store operations, and keeps the lease. Runs for the gateway's life.
    pub async fn run(self: Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                for (i, key) in this.leaving.next_due().await.into_iter().enumerate() {
                    this.grace_over(key);
                    if i % 1024 == 1023 {
                        // Thousands due at once (a mass disconnect): let other tasks run.
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        if let Some((renew, sweep)) = self.store.maintenance_interval() {
            tokio::spawn(self.clone().maintain(renew, sweep));
        }
        loop {
            let Next { op, status } = self.ops.next().await;
            let unsettled = || self.unsettled.lock().unwrap_or_else(|e| e.into_inner());
            let (result, changes_who) = match op {
                Op::Enter { ref room, ref user, count, status } => {
                    let result = self.store.enter(room, user, count, status).await;
                    if result.is_err() {
                        unsettled().insert(room.clone());
                    }
                    (result, true)
                }
                Op::Exit { ref room, ref user } => {
                    let result = self.store.exit(room, user).await;
                    if result.is_err() {
                        unsettled().insert(room.clone());
                    }
                    (result, true)
                }
                Op::Status { ref room, ref user, .. } => match status {
                    Some(status) => (self.store.set_status(room, user, status).await, false),
                    None => (Ok(()), false),
                },
                // Still listed in the store while a change there may not have landed.
                Op::Forget { ref room } if unsettled().contains(room) => (Ok(()), true),
                Op::Forget { ref room } => (self.store.forget(room).await, true),
                Op::Reconcile(held) => {
                    let result = self.store.reconcile(held).await;
                    if result.is_ok() {
                        unsettled().clear();
                    }
                    (result, true)
                }
            };
            if let Err(e) = result {
                if changes_who {
                    self.failed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                // Redis is down: the lease lapses meanwhile and the replay after the renewal
                // restores this replica's presence from `local`.
                if let Some(held) = self.store_errors.check() {
                    tracing::warn!(error = %e, similar_since = held, "presence change not stored; will reconcile when the store is back");
                }
                self.dirty.store(true, std::sync::atomic::Ordering::Release);
                crate::metrics::presence_error();
            }
        }
    }

    fn grace_over(&self, key: (String, String)) {
        let mut local = self.lock();
        let Some(entry) = local.entries.get(&key) else { return };
        if entry.sockets == 0 && entry.leaving_at.is_some_and(|at| at <= Instant::now()) {
            let room_empty = local.remove(&key);
            let _ = self.ops.push(Op::Exit { room: key.0.clone(), user: key.1 }, None);
            if room_empty {
                let _ = self.ops.push(Op::Forget { room: key.0 }, None);
            }
        }
    }

    async fn maintain(self: Arc<Self>, renew_every: Duration, sweep_every: Duration) {
        /// A failed renewal is retried this soon, well within the lease.
        const RETRY: Duration = Duration::from_millis(500);
        /// Until the first renewal succeeded, failures within this time are the Redis connection
        /// still being set up (the first attempt runs at once), not worth a warning: the Redis
        /// clients' connection timeout.
        const STARTUP: Duration = Duration::from_secs(5);
        let started = Instant::now();
        let mut renewed_once = false;
        let renew = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(renew);
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A graceful stop releases the lease (or leaves it to expire): it is not renewed again.
            tokio::select! {
                _ = &mut renew => {
                    let _renewing = self.renewing.lock().await;
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    match self.store.renew().await {
                        Ok(unknown) => {
                            renewed_once = true;
                            let dirty = self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel);
                            if unknown || dirty {
                                self.reconcile(unknown);
                            }
                            let connections_dirty = self.connections_dirty.swap(false, std::sync::atomic::Ordering::AcqRel);
                            if self.caps.any() && (unknown || connections_dirty) {
                                // Its own task: with many tenants it takes a while, and the lease
                                // must keep being renewed meanwhile.
                                let this = self.clone();
                                tokio::spawn(async move { this.reconcile_connections().await });
                            }
                            renew.as_mut().reset(Instant::now() + renew_every);
                        }
                        Err(e) => {
                            self.dirty.store(true, std::sync::atomic::Ordering::Release);
                            if renewed_once || started.elapsed() >= STARTUP {
                                tracing::warn!(error = %e, "presence lease not renewed");
                            } else {
                                tracing::debug!(error = %e, "presence lease not taken yet; Redis is still connecting");
                            }
                            renew.as_mut().reset(Instant::now() + RETRY);
                        }
                    }
                }
                // Not once stopping: a reap cut off by the exit would hold others off its lock.
                _ = sweep.tick(), if !self.stopping.load(std::sync::atomic::Ordering::Acquire) => {
                    match self.store.reap_dead().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(replicas = n, "removed the presence of dead replicas"),
                        Err(e) => tracing::debug!(error = %e, "dead replica sweep failed"),
                    }
                }
            }
        }
    }

    /// Queues a reconcile of this replica's whole share with what it holds now (after the
    /// store lost it, declared this replica dead, or missed changes while unreachable).
    fn reconcile(&self, unknown: bool) {
        let local = self.lock();
        let mut held: HashMap<String, Vec<(String, u32, Status)>> = HashMap::new();
        for ((room, user), entry) in local.entries.iter() {
            // A connection in its grace period is still counted by the store.
            let count = entry.sockets.max(u32::from(entry.leaving_at.is_some()));
            held.entry(room.clone()).or_default().push((user.clone(), count, entry.status));
        }
        if unknown && !held.is_empty() {
            tracing::warn!(rooms = held.len(), "presence store did not know this replica; restoring its presence");
        }
        let _ = self.ops.push(Op::Reconcile(held.into_iter().collect()), None);
    }

    /// Graceful shutdown: the clients were told to reconnect elsewhere; wait for the grace
    /// period (so they are counted there first), then remove everything this replica still holds.
    pub async fn shutdown(&self, deadline: Instant) {
        if !self.store.shared() {
            // A single node's presence ends with the process: nobody else is left to tell.
            return;
        }
        let wait_until = (Instant::now() + self.grace).min(deadline);
        tokio::time::sleep_until(wait_until).await;
        let failed_before = self.failed.load(std::sync::atomic::Ordering::Acquire);
        let entries: Vec<((String, String), u32)> = {
            let mut local = self.lock();
            local.per_room.clear();
            local.entries.drain().map(|(key, e)| (key, e.sockets.max(u32::from(e.leaving_at.is_some())))).collect()
        };
        let mut rooms = std::collections::HashSet::new();
        for ((room, user), count) in entries {
            for _ in 0..count {
                let _ = self.ops.push(Op::Exit { room: room.clone(), user: user.clone() }, None);
            }
            rooms.insert(room);
        }
        for room in rooms {
            let _ = self.ops.push(Op::Forget { room }, None);
        }
        // The lease goes only after the worker applied every removal queued above, and only if
        // they all landed: otherwise it is left to expire, and a survivor reaps what is left
        // (and forwards its lifecycle events) rather than no one.
        let mut settled =
            self.flushed(deadline).await && self.failed.load(std::sync::atomic::Ordering::Acquire) == failed_before;
        // No renewal from here on, and none in flight (it could re-add the lease after the
        // release, or queue a reconcile racing it).
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        let renewing = tokio::time::timeout_at(deadline, self.renewing.lock()).await;
        let unsettled = !self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if (!settled || unsettled || self.dirty.load(std::sync::atomic::Ordering::Acquire)) && Instant::now() < deadline
        {
            // A removal, or an earlier change, did not land: set this replica's share to
            // nothing wherever the store has one.
            let failed_before = self.failed.load(std::sync::atomic::Ordering::Acquire);
            let _ = self.ops.push(Op::Reconcile(Vec::new()), None);
            settled =
                self.flushed(deadline).await && self.failed.load(std::sync::atomic::Ordering::Acquire) == failed_before;
        }
        if !settled || renewing.is_err() {
            tracing::warn!("presence not fully removed before the shutdown deadline; the survivors will reap it");
            return;
        }
        let _ = tokio::time::timeout_at(deadline, self.store.release()).await;
    }

    /// Whether the worker applied every operation queued so far before `deadline`.
    async fn flushed(&self, deadline: Instant) -> bool {
        let (done, applied) = tokio::sync::oneshot::channel();
        self.ops.flush(done);
        tokio::time::timeout_at(deadline, applied).await.is_ok_and(|r| r.is_ok())
    }
}

/// A presence change as both stores announce it.
pub(crate) fn envelope(
    room: &str,
    action: PresenceAction,
    user: &str,
    status: Option<Status>,
    since: Option<u64>,
) -> PresenceEnvelope {
    PresenceEnvelope {
        v: wire::VERSION,
        room: room.to_owned(),
        action,
        user: user.to_owned(),
        status: status.map(|s| s.as_str().to_owned()),
        since,
        ts: wire::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_empty_when_its_last_user_is_removed_whatever_else_is_held() {
        let mut users = LocalUsers::default();
        let key = |room: &str, user: &str| (room.to_owned(), user.to_owned());
        for i in 0..10_000 {
            users.entry(key("busy", &format!("u{i}")), Status::Online);
        }
        users.entry(key("r", "a"), Status::Online).sockets += 1;
        users.entry(key("r", "a"), Status::Away).sockets += 1;
        users.entry(key("r", "b"), Status::Online);
        assert_eq!(users.per_room["r"], 2, "one count per user, not per socket");
        assert!(!users.remove(&key("r", "a")), "b is still there");
        assert!(!users.remove(&key("r", "a")), "removing twice changes nothing");
        assert!(users.remove(&key("r", "b")), "the last one");
        assert!(!users.remove(&key("r", "b")));
        assert!(!users.per_room.contains_key("r"));
        assert_eq!(users.per_room["busy"], 10_000);
    }

    /// A store whose connection count calls wait for a gate, counting how many are in flight.
    #[derive(Default)]
    struct GatedStore {
        in_flight: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        gate: tokio::sync::Notify,
        open: std::sync::atomic::AtomicBool,
    }

    impl GatedStore {
        fn call<T: Send + 'static>(self: &Arc<Self>, answer: T) -> BoxFuture<'static, Result<T, BusError>> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            let this = self.clone();
            Box::pin(async move {
                while !this.open.load(SeqCst) {
                    let opened = this.gate.notified();
                    if this.open.load(SeqCst) {
                        break;
                    }
                    opened.await;
                }
                this.in_flight.fetch_sub(1, SeqCst);
                Ok(answer)
            })
        }
    }

    /// The store side of [`GatedStore`]: only connection counts are called by the test.
    struct Gated(Arc<GatedStore>);

    fn unused<T: Send + 'static>() -> BoxFuture<'static, Result<T, BusError>> {
        unreachable!("not called by the test")
    }

    impl PresenceStore for Gated {
        fn enter(&self, _: &str, _: &str, _: u32, _: Status) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
        fn exit(&self, _: &str, _: &str) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
        fn set_status(&self, _: &str, _: &str, _: Status) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
        fn list(&self, _: &str, _: u64, _: u64) -> BoxFuture<'static, Result<Page, BusError>> {
            unused()
        }
        fn occupancy(&self, _: &str) -> BoxFuture<'static, Result<Occupancy, BusError>> {
            unused()
        }
        fn connected(&self, _: &str, _: Option<&str>) -> BoxFuture<'static, Result<Occupancy, BusError>> {
            unused()
        }
        fn forget(&self, _: &str) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
        fn reconcile(&self, _: Held) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
        fn renew(&self) -> BoxFuture<'static, Result<bool, BusError>> {
            unused()
        }
        fn reap_dead(&self) -> BoxFuture<'static, Result<usize, BusError>> {
            unused()
        }
        fn release(&self) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
        fn maintenance_interval(&self) -> Option<(Duration, Duration)> {
            None
        }
        fn shared(&self) -> bool {
            true
        }
        fn connect(&self, _: &str, _: &str, _: ConnectionCaps) -> BoxFuture<'static, Result<Admission, BusError>> {
            self.0.call(Admission::Admitted)
        }
        fn disconnect(&self, _: &str, _: &str) -> BoxFuture<'static, Result<(), BusError>> {
            self.0.call(())
        }
        fn reconcile_connections(&self, _: HeldConnections) -> BoxFuture<'static, Result<(), BusError>> {
            unused()
        }
    }

    /// A connect that waits longer than `COUNTING_PERMIT_WAIT` for a call is admitted without the
    /// check, as with a store that fails, and the counts are marked for a reconcile.
    #[tokio::test(start_paused = true)]
    async fn a_connect_waits_for_a_store_call_no_longer_than_the_bound() {
        use std::sync::atomic::Ordering::SeqCst;
        let store = Arc::new(GatedStore::default());
        let caps = ConnectionCaps { per_user: 1_000_000, per_tenant: 1_000_000 };
        let presence = Arc::new(Presence::new(Arc::new(Gated(store.clone())), Duration::ZERO, 16, caps, false));
        let held: Vec<_> = (0..COUNTING_CALLS_IN_FLIGHT)
            .map(|i| {
                let presence = presence.clone();
                tokio::spawn(async move { presence.connect("t", &format!("u{i}")).await })
            })
            .collect();
        while store.in_flight.load(SeqCst) < COUNTING_CALLS_IN_FLIGHT {
            tokio::task::yield_now().await;
        }
        let start = tokio::time::Instant::now();
        let late = tokio::time::timeout(2 * COUNTING_PERMIT_WAIT, presence.connect("t", "late"));
        assert_eq!(late.await.expect("not held past the bound"), Ok(()), "admitted unchecked");
        assert_eq!(start.elapsed(), COUNTING_PERMIT_WAIT);
        assert!(presence.connections_dirty.load(SeqCst), "counts to be reconciled");
        assert_eq!(store.most.load(SeqCst), COUNTING_CALLS_IN_FLIGHT, "no call made past the bound");
        store.open.store(true, SeqCst);
        store.gate.notify_waiters();
        for connect in held {
            assert_eq!(connect.await.expect("joined"), Ok(()));
        }
    }

    /// Makes ten times `COUNTING_CALLS_IN_FLIGHT` calls with `call(i)` while the store holds
    /// them: checks that no more than the bound ever reached it, then lets them through and
    /// returns what they returned.
    async fn bounded_storm<T: Send + 'static>(
        store: &Arc<GatedStore>,
        call: impl Fn(usize) -> tokio::task::JoinHandle<T>,
    ) -> Vec<T> {
        use std::sync::atomic::Ordering::SeqCst;
        let storm = 10 * COUNTING_CALLS_IN_FLIGHT;
        store.open.store(false, SeqCst);
        store.most.store(0, SeqCst);
        let calls: Vec<_> = (0..storm).map(call).collect();
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.in_flight.load(SeqCst) < COUNTING_CALLS_IN_FLIGHT {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the store was called");
        // Every task has had its chance to call the store: none got past the bound.
        for _ in 0..storm {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.most.load(SeqCst), COUNTING_CALLS_IN_FLIGHT);
        store.open.store(true, SeqCst);
        store.gate.notify_waiters();
        let mut answers = Vec::with_capacity(storm);
        for call in calls {
            answers.push(call.await.expect("joined"));
        }
        answers
    }

    /// A connect or disconnect storm makes at most `COUNTING_CALLS_IN_FLIGHT` store calls at
    /// once, whatever the store's speed: the rest wait, small, for a permit.
    #[tokio::test]
    async fn a_storm_of_connection_counts_keeps_a_bounded_number_of_store_calls_in_flight() {
        use std::sync::atomic::Ordering::SeqCst;
        let store = Arc::new(GatedStore::default());
        let caps = ConnectionCaps { per_user: 1_000_000, per_tenant: 1_000_000 };
        let presence = Arc::new(Presence::new(Arc::new(Gated(store.clone())), Duration::ZERO, 16, caps, false));
        let connected = bounded_storm(&store, |i| {
            let presence = presence.clone();
            tokio::spawn(async move { presence.connect("t", &format!("u{i}")).await })
        })
        .await;
        assert!(connected.iter().all(|admitted| *admitted == Ok(())));
        bounded_storm(&store, |i| {
            let presence = presence.clone();
            tokio::spawn(async move { presence.disconnect("t", &format!("u{i}")).await })
        })
        .await;
        assert_eq!(store.in_flight.load(SeqCst), 0);
        assert!(presence.connections().is_empty(), "every connection counted out");
    }
}

//! Presence shared through Redis.
//!
//! Per room (all keys share the room's hash tag, so one slot on a cluster): user → connection
//! count, user → since, user → status, and `replica|user` → that replica's share. Lua scripts
//! change them and publish the resulting `presence:*` envelope on the room's channel in the same
//! atomic step, so exactly one replica announces each join and leave.
//!
//! Crashes: every replica renews a lease (a score in `{prefix}:replicas`, by Redis' clock so
//! replicas' clocks do not matter). Every replica sweeps for expired leases; the first to take a
//! dead replica's reaper lock removes its share room by room (it keeps the list of rooms in
//! `{prefix}:replica:{id}:rooms`), announcing a leave for each user who was connected nowhere else.
//!
//! Connection counts for the connection caps live the same way, per tenant, under the tenant
//! room's hash tag: one hash of totals (tenant, each user) and one per replica with its share,
//! with the tenants a replica counts connections in kept in `{prefix}:replica:{id}:tenants` for
//! its reaper.

use std::time::Duration;

use fred::{
    interfaces::{KeysInterface, SetsInterface, SortedSetsInterface},
    types::{Expiration, SetOptions, Value, scripts::Script},
};
use roomcast_publisher::wire::{self, Keys};

use roomcast_publisher::Room;

use crate::{
    envelope::{Envelope, PresenceAction},
    events::{Lifecycle, RoomTypes},
};

use super::{
    Admission, ConnectionCaps, Held, HeldConnections, Occupancy, Page, PresenceStore, PresentUser, Status, envelope,
};
use crate::{
    backend::{BoxFuture, BusError},
    redis_conn::Commands,
};

/// How long a reaper keeps its lock on a dead replica before another may take over.
const REAPER_LOCK: Duration = Duration::from_secs(30);

struct Scripts {
    enter: Script,
    exit: Script,
    status: Script,
    list: Script,
    occupancy: Script,
    connected: Script,
    reap: Script,
    lease: Script,
    expired: Script,
    reconcile: Script,
    connect: Script,
    disconnect: Script,
    connections: Script,
    outbox: Script,
}

/// Presence in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisPresence {
    redis: Commands,
    replica: String,
    lease_ttl: Duration,
    sweep_every: Duration,
    scripts: std::sync::Arc<Scripts>,
    /// Whether this replica holds a lease. Presence is recorded only under a lease: a replica
    /// that crashed with presence but no lease could never be found dead.
    leased: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// A renewal found this replica unknown since the last [`PresenceStore::renew`] report.
    unknown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tenants this replica has added to its `replica:{id}:tenants` set (added once, not per
    /// connection).
    recorded_tenants: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Where transitions are recorded as lifecycle events (`None`: no sink is configured).
    lifecycle: Option<std::sync::Arc<Lifecycle>>,
    /// Rooms whose outbox may hold events of this replica that did not reach the event log (it
    /// was unavailable, or a script's reply was lost): retried after each lease renewal until
    /// forwarded, and kept in the replica's room set meanwhile.
    unforwarded: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Held by the presence worker from a script to the forward of its events, and by the retry
    /// of unforwarded rooms: the retry takes this replica's entries from an outbox, and must not
    /// take (and append a second time) those the worker is about to forward itself.
    forwarding: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// A retry of the unforwarded rooms is running (one at a time).
    retrying: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("replica", &self.replica)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    crate::metrics::redis_error("presence");
    BusError::Unavailable(e.to_string())
}

impl RedisPresence {
    /// Presence for replica `replica` on `redis`; a replica is declared dead `lease_ttl` after
    /// its last renewal, and leases are checked every `sweep_every`.
    pub fn new(
        redis: Commands,
        replica: &str,
        lease_ttl: Duration,
        sweep_every: Duration,
        lifecycle: Option<std::sync::Arc<Lifecycle>>,
    ) -> RedisPresence {
        RedisPresence {
            redis,
            replica: replica.to_owned(),
            lease_ttl,
            sweep_every,
            // The scripts that change or read a room's counts share total.lua's functions; those
            // that change who is in it, events.lua's.
            scripts: std::sync::Arc::new(Scripts {
                enter: Script::from_lua(concat!(
                    include_str!("total.lua"),
                    include_str!("events.lua"),
                    include_str!("enter.lua")
                )),
                exit: Script::from_lua(concat!(
                    include_str!("total.lua"),
                    include_str!("events.lua"),
                    include_str!("exit.lua")
                )),
                status: Script::from_lua(include_str!("status.lua")),
                list: Script::from_lua(include_str!("list.lua")),
                occupancy: Script::from_lua(concat!(include_str!("total.lua"), include_str!("occupancy.lua"))),
                connected: Script::from_lua(include_str!("connected.lua")),
                reap: Script::from_lua(concat!(
                    include_str!("total.lua"),
                    include_str!("events.lua"),
                    include_str!("reap.lua")
                )),
                lease: Script::from_lua(include_str!("lease.lua")),
                expired: Script::from_lua(include_str!("expired.lua")),
                reconcile: Script::from_lua(concat!(
                    include_str!("total.lua"),
                    include_str!("events.lua"),
                    include_str!("reconcile.lua")
                )),
                connect: Script::from_lua(include_str!("connect.lua")),
                disconnect: Script::from_lua(include_str!("disconnect.lua")),
                connections: Script::from_lua(include_str!("connections.lua")),
                outbox: Script::from_lua(include_str!("outbox.lua")),
            }),
            leased: Default::default(),
            unknown: Default::default(),
            recorded_tenants: Default::default(),
            lifecycle,
            unforwarded: Default::default(),
            forwarding: Default::default(),
            retrying: Default::default(),
        }
    }

    /// The events block of a script changing who is in `room` (events.lua), recorded as
    /// `forwarder`'s: nothing to record when no event of the room's kind is on.
    fn event_args(&self, room: &str, forwarder: &str) -> Vec<String> {
        let parsed = Room::parse(room);
        let types = match (&self.lifecycle, &parsed) {
            (Some(lifecycle), Some(parsed)) => lifecycle.room_types(parsed),
            _ => RoomTypes::default(),
        };
        let name = |t: Option<&str>| t.unwrap_or_default().to_owned();
        let (prefix, fields) = match parsed.filter(|_| types.any()) {
            Some(parsed) => (crate::events::new_id(), crate::events::room_fields(&parsed)),
            None => (String::new(), String::new()),
        };
        vec![
            prefix,
            forwarder.to_owned(),
            fields,
            name(types.first),
            name(types.last),
            name(types.occupied),
            name(types.vacated),
        ]
    }

    /// The channel presence envelopes of `room` go to: none (`""`) for a user room, whose
    /// presence only feeds lifecycle events.
    fn presence_channel(&self, room: &str) -> String {
        if Room::parse(room).is_some_and(|r| super::tracked(&r)) {
            self.redis.keys.channel(room)
        } else {
            String::new()
        }
    }

    /// Appends `events`, which this replica (or, for `owner`, a dead replica) recorded in
    /// `room`'s outbox, to the event log and takes them out of the outbox. If the log is
    /// unavailable they stay in the outbox, to be forwarded at the next lease renewal.
    async fn forward(&self, room: &str, owner: &str, events: Vec<String>) -> Result<(), BusError> {
        let Some(lifecycle) = &self.lifecycle else { return Ok(()) };
        if events.is_empty() {
            return Ok(());
        }
        let forwarded = async {
            lifecycle.log().append(events.clone()).await?;
            for event in &events {
                crate::metrics::event_emitted(&crate::events::kind_of(event));
            }
            let mut args = vec!["done".to_owned(), owner.to_owned()];
            args.extend(events);
            self.scripts
                .outbox
                .evalsha_with_reload::<i64, _, _>(&self.redis.client, vec![self.redis.keys.outbox(room)], args)
                .await
                .map_err(unavailable)
        }
        .await;
        if forwarded.is_err() && owner == self.replica {
            self.maybe_unforwarded(room);
        }
        forwarded.map(|_| ())
    }

    /// Forwards what `owner` left in `room`'s outbox (it died, or the log was unavailable).
    async fn forward_left_over(&self, room: &str, owner: &str) -> Result<(), BusError> {
        if self.lifecycle.is_none() {
            return Ok(());
        }
        let args = vec!["take".to_owned(), owner.to_owned()];
        let events: Vec<String> = self
            .scripts
            .outbox
            .evalsha_with_reload(&self.redis.client, vec![self.redis.keys.outbox(room)], args)
            .await
            .map_err(unavailable)?;
        self.forward(room, owner, events).await
    }

    /// Forwards again what the event log refused earlier; `true` when nothing is left to forward.
    async fn forward_unforwarded(&self) -> bool {
        let rooms: Vec<String> = self.unforwarded().iter().cloned().collect();
        for room in rooms {
            // The room stays marked until its events are in the log, so `forget` keeps it in
            // this replica's room set (where a reaper would look) meanwhile.
            let _turn = self.forwarding.lock().await;
            match self.forward_left_over(&room, &self.replica).await {
                Ok(()) => {
                    self.unforwarded().remove(&room);
                }
                Err(e) => {
                    // The log or Redis is failing: the rest waits for the next renewal rather
                    // than hold up the presence worker one timeout per room.
                    tracing::debug!(error = %e, "lifecycle events not forwarded yet; will retry");
                    break;
                }
            }
        }
        self.unforwarded().is_empty()
    }

    fn unforwarded(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.unforwarded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A script changing who is in `room` failed, or its events did not reach the log: Redis
    /// may have run it all the same (a lost reply), so its outbox is looked at again later.
    fn maybe_unforwarded(&self, room: &str) {
        if self.lifecycle.is_some() {
            self.unforwarded().insert(room.to_owned());
        }
    }

    /// Whether `room`'s outbox may hold events of this replica not yet forwarded.
    fn has_unforwarded(&self, room: &str) -> bool {
        self.unforwarded().contains(room)
    }

    /// Sets `replica`'s share of `tenant`'s connections to `held` (nothing: removes it).
    async fn set_connections(&self, replica: &str, tenant: &str, held: &[(String, u32)]) -> Result<(), BusError> {
        let mut args = vec![held.len().to_string()];
        for (user, n) in held {
            args.extend([user.clone(), n.to_string()]);
        }
        self.scripts
            .connections
            .evalsha_with_reload::<i64, _, _>(&self.redis.client, self.connection_keys(tenant, replica), args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The keys of the connection scripts: the tenant's counts and `replica`'s share.
    fn connection_keys(&self, tenant: &str, replica: &str) -> Vec<String> {
        vec![self.redis.keys.connections(tenant), self.redis.keys.connections_share(tenant, replica)]
    }

    /// Removes every connection `replica` counted (it died, or is leaving cleanly).
    async fn drop_connections(&self, replica: &str) -> Result<(), BusError> {
        let key = self.redis.keys.replica_tenants(replica);
        let tenants: Vec<String> = self.redis.client.smembers(&key).await.map_err(unavailable)?;
        for tenant in &tenants {
            self.set_connections(replica, tenant, &[]).await?;
        }
        self.redis.client.del::<(), _>(&key).await.map_err(unavailable)
    }

    /// Renews the lease; records whether Redis did not know this replica.
    async fn renew_lease(&self) -> Result<(), BusError> {
        let args = vec![self.replica.clone(), self.lease_ttl.as_millis().to_string()];
        let added: i64 = self
            .scripts
            .lease
            .evalsha_with_reload(&self.redis.client, vec![self.redis.keys.replicas()], args)
            .await
            .map_err(unavailable)?;
        self.leased.store(true, std::sync::atomic::Ordering::Release);
        if added == 1 {
            self.unknown.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    fn room_keys(&self, room: &str) -> Vec<String> {
        let keys = &self.redis.keys;
        vec![
            keys.presence_counts(room),
            keys.presence_since(room),
            keys.presence_status(room),
            keys.presence_replicas(room),
            keys.outbox(room),
        ]
    }

    /// Fails at once while the connection is down instead of queueing until the timeout. Not
    /// counted as a Redis error: nothing was sent (the link's own errors are counted by its
    /// monitor), and a replica starting before Redis answers would otherwise show errors.
    fn check(&self) -> Result<(), BusError> {
        if self.redis.link.is_up() { Ok(()) } else { Err(BusError::Unavailable("Redis is not connected".into())) }
    }
}

fn envelope_json(room: &str, action: PresenceAction, user: &str, status: Option<Status>, since: Option<u64>) -> String {
    let envelope = Envelope::Presence(envelope(room, action, user, status, since));
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// A script's `{ result, events... }` answer (events.lua's `ev_answer`).
fn answer(flat: Vec<Value>) -> (i64, Vec<String>) {
    let mut values = flat.into_iter();
    let result = values.next().and_then(|v| v.as_i64()).unwrap_or(0);
    (result, values.filter_map(|v| v.as_string()).collect())
}

impl PresenceStore for RedisPresence {
    fn enter(&self, room: &str, user: &str, count: u32, status: Status) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let (redis, scripts, keys) = (self.redis.clone(), self.scripts.clone(), self.room_keys(room));
        let rooms_key = redis.keys.replica_rooms(&self.replica);
        let now = wire::now_ms();
        let args = vec![
            user.to_owned(),
            self.replica.clone(),
            count.to_string(),
            now.to_string(),
            status.as_str().to_owned(),
            self.presence_channel(room),
            envelope_json(room, PresenceAction::Join, user, Some(status), Some(now)),
            redis.publish_command().to_owned(),
        ];
        let args = [args, self.event_args(room, &self.replica)].concat();
        let room = room.to_owned();
        let this = self.clone();
        crate::metrics::redis_timed("presence", async move {
            checked?;
            let _turn = this.forwarding.lock().await;
            if !this.leased.load(std::sync::atomic::Ordering::Acquire) {
                this.renew_lease().await?;
            }
            // Recorded before the share itself: a crash in between leaves a room to sweep, never
            // a share nobody will find.
            redis.client.sadd::<(), _, _>(rooms_key, room.as_str()).await.map_err(unavailable)?;
            let flat: Vec<Value> = scripts
                .enter
                .evalsha_with_reload(&redis.client, keys, args)
                .await
                .map_err(unavailable)
                .inspect_err(|_| this.maybe_unforwarded(&room))?;
            this.forward(&room, &this.replica, answer(flat).1).await
        })
    }

    fn exit(&self, room: &str, user: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let (redis, scripts, keys) = (self.redis.clone(), self.scripts.clone(), self.room_keys(room));
        let args = vec![
            user.to_owned(),
            self.replica.clone(),
            self.presence_channel(room),
            envelope_json(room, PresenceAction::Leave, user, None, None),
            redis.publish_command().to_owned(),
        ];
        let args = [args, self.event_args(room, &self.replica)].concat();
        let (this, room) = (self.clone(), room.to_owned());
        crate::metrics::redis_timed("presence", async move {
            checked?;
            let _turn = this.forwarding.lock().await;
            let flat: Vec<Value> = scripts
                .exit
                .evalsha_with_reload(&redis.client, keys, args)
                .await
                .map_err(unavailable)
                .inspect_err(|_| this.maybe_unforwarded(&room))?;
            this.forward(&room, &this.replica, answer(flat).1).await
        })
    }

    fn set_status(&self, room: &str, user: &str, status: Status) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let (redis, scripts) = (self.redis.clone(), self.scripts.clone());
        let keys = vec![redis.keys.presence_counts(room), redis.keys.presence_status(room)];
        let args = vec![
            user.to_owned(),
            status.as_str().to_owned(),
            redis.keys.channel(room),
            envelope_json(room, PresenceAction::Update, user, Some(status), None),
            redis.publish_command().to_owned(),
        ];
        crate::metrics::redis_timed("presence", async move {
            checked?;
            scripts.status.evalsha_with_reload::<i64, _, _>(&redis.client, keys, args).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn connected(&self, tenant: &str, user: Option<&str>) -> BoxFuture<'static, Result<Occupancy, BusError>> {
        let checked = self.check();
        let (redis, scripts) = (self.redis.clone(), self.scripts.clone());
        let keys = vec![redis.keys.connections(tenant)];
        let args = vec![user.unwrap_or_default().to_owned()];
        crate::metrics::redis_timed("presence", async move {
            checked?;
            let (connections, users): (u64, u64) =
                scripts.connected.evalsha_with_reload(&redis.client, keys, args).await.map_err(unavailable)?;
            Ok(Occupancy { connections, users })
        })
    }

    fn occupancy(&self, room: &str) -> BoxFuture<'static, Result<Occupancy, BusError>> {
        let checked = self.check();
        let (redis, scripts) = (self.redis.clone(), self.scripts.clone());
        let keys = vec![redis.keys.presence_counts(room), redis.keys.presence_since(room)];
        crate::metrics::redis_timed("presence", async move {
            checked?;
            let (connections, users): (u64, u64) = scripts
                .occupancy
                .evalsha_with_reload(&redis.client, keys, Vec::<String>::new())
                .await
                .map_err(unavailable)?;
            Ok(Occupancy { connections, users })
        })
    }

    fn list(&self, room: &str, offset: u64, limit: u64) -> BoxFuture<'static, Result<Page, BusError>> {
        let checked = self.check();
        let (redis, scripts) = (self.redis.clone(), self.scripts.clone());
        let keys =
            vec![redis.keys.presence_counts(room), redis.keys.presence_since(room), redis.keys.presence_status(room)];
        crate::metrics::redis_timed("presence", async move {
            checked?;
            let flat: Vec<Value> = scripts
                .list
                .evalsha_with_reload(&redis.client, keys, vec![offset.to_string(), limit.to_string()])
                .await
                .map_err(unavailable)?;
            let mut values = flat.into_iter();
            let total = values.next().and_then(|v| v.as_u64()).unwrap_or(0);
            let rest: Vec<Value> = values.collect();
            let users = rest
                .chunks_exact(4)
                .map(|c| PresentUser {
                    user_id: c[0].as_string().unwrap_or_default(),
                    since: c[1].as_string().and_then(|s| s.parse::<f64>().ok()).map_or(0, |f| f as u64),
                    connections: c[2].as_u64().or_else(|| c[2].as_string().and_then(|s| s.parse().ok())).unwrap_or(0),
                    status: c[3].as_string().unwrap_or_else(|| "online".to_owned()),
                })
                .collect();
            Ok(Page { users, total })
        })
    }

    fn forget(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let redis = self.redis.clone();
        let (key, room) = (redis.keys.replica_rooms(&self.replica), room.to_owned());
        // A room whose outbox still holds this replica's events stays listed, so its reaper
        // finds them if this replica dies before forwarding them (a reconcile or a clean stop
        // removes it later).
        let keep = self.has_unforwarded(&room);
        Box::pin(async move {
            checked?;
            if keep {
                return Ok(());
            }
            redis.client.srem::<(), _, _>(key, room).await.map_err(unavailable)
        })
    }

    fn reconcile(&self, held: Held) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let (redis, scripts, replica) = (self.redis.clone(), self.scripts.clone(), self.replica.clone());
        let this = self.clone();
        Box::pin(async move {
            checked?;
            let _turn = this.forwarding.lock().await;
            let rooms_key = redis.keys.replica_rooms(&replica);
            let recorded: Vec<String> = redis.client.smembers(&rooms_key).await.map_err(unavailable)?;
            let mut all: Held = held;
            for room in recorded {
                if !all.iter().any(|(r, _)| *r == room) {
                    all.push((room, Vec::new()));
                }
            }
            let now = wire::now_ms().to_string();
            // The first room whose events did not reach the log (reported once all are done).
            let mut unforwarded: Option<BusError> = None;
            for (room, users) in all {
                let empty = users.is_empty();
                if !empty {
                    redis.client.sadd::<(), _, _>(&rooms_key, room.as_str()).await.map_err(unavailable)?;
                }
                let mut args = vec![
                    replica.clone(),
                    room.clone(),
                    this.presence_channel(&room),
                    redis.publish_command().to_owned(),
                    now.clone(),
                ];
                args.extend(this.event_args(&room, &replica));
                args.push(users.len().to_string());
                for (user, count, status) in users {
                    args.extend([user, count.to_string(), status.as_str().to_owned()]);
                }
                let flat: Vec<Value> = scripts
                    .reconcile
                    .evalsha_with_reload(&redis.client, this.room_keys(&room), args)
                    .await
                    .map_err(unavailable)
                    .inspect_err(|_| this.maybe_unforwarded(&room))?;
                if let Err(e) = this.forward(&room, &replica, answer(flat).1).await {
                    // The room is marked and stays listed: its events are retried, and the
                    // other rooms are reconciled all the same.
                    unforwarded.get_or_insert(e);
                    continue;
                }
                // Only now, with the room's events forwarded: listed until then, a crash in
                // between leaves them to the reaper.
                if empty && !this.has_unforwarded(&room) {
                    redis.client.srem::<(), _, _>(&rooms_key, room.as_str()).await.map_err(unavailable)?;
                }
            }
            unforwarded.map_or(Ok(()), Err)
        })
    }

    fn renew(&self) -> BoxFuture<'static, Result<bool, BusError>> {
        let checked = self.check();
        let this = self.clone();
        Box::pin(async move {
            checked?;
            this.renew_lease().await?;
            // Off the renewal path: with many rooms to retry on a slow Redis it takes a while,
            // and the lease must not lapse meanwhile.
            if !this.unforwarded().is_empty() && !this.retrying.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let retry = this.clone();
                tokio::spawn(async move {
                    /// Clears `retrying` however the retry ends.
                    struct Done(std::sync::Arc<std::sync::atomic::AtomicBool>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.store(false, std::sync::atomic::Ordering::Release);
                        }
                    }
                    let _done = Done(retry.retrying.clone());
                    retry.forward_unforwarded().await;
                });
            }
            Ok(this.unknown.swap(false, std::sync::atomic::Ordering::AcqRel))
        })
    }

    fn reap_dead(&self) -> BoxFuture<'static, Result<usize, BusError>> {
        let checked = self.check();
        let this = self.clone();
        Box::pin(async move {
            checked?;
            let redis = &this.redis;
            let dead: Vec<String> = this
                .scripts
                .expired
                .evalsha_with_reload(&redis.client, vec![redis.keys.replicas()], Vec::<String>::new())
                .await
                .map_err(unavailable)?;
            let mut reaped = 0;
            for replica in dead.into_iter().filter(|r| *r != this.replica) {
                let lock: Option<String> = redis
                    .client
                    .set(
                        redis.keys.replica_reaper(&replica),
                        this.replica.as_str(),
                        Some(Expiration::PX(REAPER_LOCK.as_millis() as i64)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(unavailable)?;
                if lock.is_none() {
                    continue; // another survivor is on it
                }
                let rooms_key = redis.keys.replica_rooms(&replica);
                let rooms: Vec<String> = redis.client.smembers(&rooms_key).await.map_err(unavailable)?;
                let mut users_left = 0i64;
                for room in &rooms {
                    let mut args = vec![
                        replica.clone(),
                        room.clone(),
                        this.presence_channel(room),
                        redis.publish_command().to_owned(),
                        wire::now_ms().to_string(),
                    ];
                    // Recorded as the dead replica's: with what it recorded and never forwarded,
                    // they are forwarded from its outbox entries next. A reaper that fails or
                    // dies in between leaves them all to the next sweep, which finds the room
                    // in the dead replica's room set (deleted only once every room is done).
                    args.extend(this.event_args(room, &replica));
                    let flat: Vec<Value> = this
                        .scripts
                        .reap
                        .evalsha_with_reload(&redis.client, this.room_keys(room), args)
                        .await
                        .map_err(unavailable)?;
                    users_left += answer(flat).0;
                    this.forward_left_over(room, &replica).await?;
                }
                redis.client.del::<(), _>(&rooms_key).await.map_err(unavailable)?;
                this.drop_connections(&replica).await?;
                redis.client.zrem::<(), _, _>(redis.keys.replicas(), replica.as_str()).await.map_err(unavailable)?;
                crate::metrics::replica_reaped();
                tracing::warn!(replica = %replica, rooms = rooms.len(), users_left, "replica lease expired; removed its presence");
                reaped += 1;
            }
            Ok(reaped)
        })
    }

    fn release(&self) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let redis = self.redis.clone();
        let replica = self.replica.clone();
        let this = self.clone();
        Box::pin(async move {
            checked?;
            if !this.forward_unforwarded().await {
                // Keep the room set and let the lease expire: the reaper forwards them.
                return Err(BusError::Unavailable("lifecycle events not forwarded; left to the reaper".into()));
            }
            redis.client.del::<(), _>(redis.keys.replica_rooms(&replica)).await.map_err(unavailable)?;
            // Its sockets were disconnected by the drain; whatever is still counted goes now.
            this.drop_connections(&replica).await?;
            redis.client.zrem::<(), _, _>(redis.keys.replicas(), replica.as_str()).await.map_err(unavailable)
        })
    }

    fn maintenance_interval(&self) -> Option<(Duration, Duration)> {
        Some((self.lease_ttl / 3, self.sweep_every))
    }

    fn shared(&self) -> bool {
        true
    }

    fn connect(
        &self,
        tenant: &str,
        user: &str,
        caps: ConnectionCaps,
    ) -> BoxFuture<'static, Result<Admission, BusError>> {
        let checked = self.check();
        let this = self.clone();
        let (tenant, user) = (tenant.to_owned(), user.to_owned());
        crate::metrics::redis_timed("connections", async move {
            checked?;
            // Counted only under a lease, like presence: a replica that crashed with counts but
            // no lease could never be found dead. Right after start the first renewal may not
            // have run yet: take the lease now rather than admit the connection uncounted.
            if !this.leased.load(std::sync::atomic::Ordering::Acquire) {
                this.renew_lease().await?;
            }
            let recorded = this.recorded_tenants.lock().unwrap_or_else(|e| e.into_inner()).contains(&tenant);
            if !recorded {
                let key = this.redis.keys.replica_tenants(&this.replica);
                this.redis.client.sadd::<(), _, _>(key, tenant.as_str()).await.map_err(unavailable)?;
                this.recorded_tenants.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant.clone());
            }
            let args = vec![user, caps.per_user.to_string(), caps.per_tenant.to_string()];
            let answer: i64 = this
                .scripts
                .connect
                .evalsha_with_reload(&this.redis.client, this.connection_keys(&tenant, &this.replica), args)
                .await
                .map_err(unavailable)?;
            Ok(match answer {
                0 => Admission::Admitted,
                1 => Admission::UserFull,
                _ => Admission::TenantFull,
            })
        })
    }

    fn disconnect(&self, tenant: &str, user: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let this = self.clone();
        let (tenant, user) = (tenant.to_owned(), user.to_owned());
        crate::metrics::redis_timed("connections", async move {
            checked?;
            this.scripts
                .disconnect
                .evalsha_with_reload::<i64, _, _>(
                    &this.redis.client,
                    this.connection_keys(&tenant, &this.replica),
                    vec![user],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn reconcile_connections(&self, held: HeldConnections) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let this = self.clone();
        Box::pin(async move {
            checked?;
            let key = this.redis.keys.replica_tenants(&this.replica);
            let recorded: Vec<String> = this.redis.client.smembers(&key).await.map_err(unavailable)?;
            for tenant in recorded.iter().filter(|t| !held.iter().any(|(h, _)| h == *t)) {
                this.set_connections(&this.replica, tenant, &[]).await?;
                this.redis.client.srem::<(), _, _>(&key, tenant.as_str()).await.map_err(unavailable)?;
            }
            for (tenant, users) in &held {
                this.redis.client.sadd::<(), _, _>(&key, tenant.as_str()).await.map_err(unavailable)?;
                this.set_connections(&this.replica, tenant, users).await?;
            }
            *this.recorded_tenants.lock().unwrap_or_else(|e| e.into_inner()) =
                held.into_iter().map(|(tenant, _)| tenant).collect();
            Ok(())
        })
    }
}
/// The gateway's own Redis keys for presence and replica leases, beside the publisher crate's
/// wire keys (same prefix, same `{room}` hash tag) but not part of the wire: no publisher reads
/// or writes them, so they change with the gateway alone.
trait PresenceKeys {
    /// Presence of a room: user → number of connections, cluster-wide (hash).
    fn presence_counts(&self, room: &str) -> String;
    /// Presence of a room: user → when their presence began, ms (sorted set; list order).
    fn presence_since(&self, room: &str) -> String;
    /// Presence of a room: user → status (hash).
    fn presence_status(&self, room: &str) -> String;
    /// Presence of a room: `replica|user` → that replica's connections of the user (hash), so a
    /// crashed replica's share can be removed.
    fn presence_replicas(&self, room: &str) -> String;
    /// Gateway replicas and their lease expiry, ms by Redis' clock (sorted set).
    fn replicas(&self) -> String;
    /// The rooms replica `id` holds presence in (set).
    fn replica_rooms(&self, id: &str) -> String;
    /// Lock taken by the replica cleaning up after replica `id`.
    fn replica_reaper(&self, id: &str) -> String;
    /// A tenant's connection counts, for the connection caps (hash: tenant total, user
    /// totals; see `connect.lua`), in the slot of the tenant room.
    fn connections(&self, tenant: &str) -> String;
    /// Replica `id`'s share of a tenant's connections (hash: user → connections), same slot.
    fn connections_share(&self, tenant: &str, id: &str) -> String;
    /// The tenants replica `id` counts connections in (set).
    fn replica_tenants(&self, id: &str) -> String;
    /// A room's lifecycle events not yet in the event log (list of `replica\nJSON`; events.lua).
    fn outbox(&self, room: &str) -> String;
}

impl PresenceKeys for Keys {
    fn presence_counts(&self, room: &str) -> String {
        format!("{}:{{{room}}}:presence", self.prefix())
    }
    fn presence_since(&self, room: &str) -> String {
        format!("{}:{{{room}}}:presence:since", self.prefix())
    }
    fn presence_status(&self, room: &str) -> String {
        format!("{}:{{{room}}}:presence:status", self.prefix())
    }
    fn presence_replicas(&self, room: &str) -> String {
        format!("{}:{{{room}}}:presence:replicas", self.prefix())
    }
    fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix())
    }
    fn replica_rooms(&self, id: &str) -> String {
        format!("{}:replica:{{{id}}}:rooms", self.prefix())
    }
    fn replica_reaper(&self, id: &str) -> String {
        format!("{}:replica:{{{id}}}:reaper", self.prefix())
    }
    fn connections(&self, tenant: &str) -> String {
        format!("{}:{{tenant:{tenant}}}:connections", self.prefix())
    }
    fn connections_share(&self, tenant: &str, id: &str) -> String {
        format!("{}:{{tenant:{tenant}}}:connections:{id}", self.prefix())
    }
    fn replica_tenants(&self, id: &str) -> String {
        format!("{}:replica:{{{id}}}:tenants", self.prefix())
    }
    fn outbox(&self, room: &str) -> String {
        format!("{}:{{{room}}}:outbox", self.prefix())
    }
}

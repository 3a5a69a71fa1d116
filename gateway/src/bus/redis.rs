//! The clustered bus: replicas share rooms through Redis pub/sub.
//!
//! A replica subscribes to a room's channel only while it has local members there, so Redis
//! sends it nothing for other rooms; on Redis Cluster it uses sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`), whose traffic stays on the shard owning the room's slot.
//!
//! Two fred clients: `commands` publishes; `subscriber` is in subscribe mode and does nothing
//! else (a RESP2 connection in subscribe mode cannot run other commands). One task owns the
//! set of rooms this replica wants and applies changes in order; on every (re)connection it
//! subscribes the whole set again itself. fred's own `resubscribe_all()` is not used: after a
//! Redis restart it aborts before restoring shard channels.
//!
//! Connectivity is tracked from fred's events (up on a (re)connection, down on a connection
//! error), not from `is_connected()`: after a Redis restart that flag was seen still reporting
//! "connected" right after the crash, and "not connected" when the reconnection event arrived.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::types::{Value, scripts::Script};
use fred::{
    clients::Client,
    interfaces::{
        ClientLike, EventInterface, HashesInterface, HeartbeatInterface, KeysInterface, PubsubInterface,
        SortedSetsInterface,
    },
    types::{
        Builder,
        config::{Config as FredConfig, ReconnectPolicy, UnresponsiveConfig},
    },
};
use roomcast_publisher::{
    send_encoded,
    wire::{self, Dedupe, HistoryPolicy, Keys, Revocation},
};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};

use super::{BoxFuture, Bus, BusError, ControlAck, ControlReceipt, Inbound, Published, RevocationList, RoomPage};
use crate::{
    config::{ConfigError, env},
    envelope::Envelope,
    metrics,
    redis_conn::{Commands, Link},
};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command on a standalone server.
const SUBSCRIBE_CHUNK: usize = 500;
/// Subscription changes applied per round of the subscription task.
const MAX_OPS_PER_ROUND: usize = 4_096;
/// How often rooms whose subscription failed (without a reconnect) are retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What the Redis bus needs from the configuration.
#[derive(Clone)]
pub struct RedisSettings {
    /// The server or cluster; may hold a password, never logged.
    pub url: String,
    /// A password that overrides the URL's (`ROOMCAST_REDIS_PASSWORD_FILE`).
    pub password: Option<String>,
    /// PEM CA bundle trusted for `rediss://` instead of the system's (`ROOMCAST_REDIS_CA_FILE`).
    pub ca_pem: Option<Vec<u8>>,
    /// Channel and key names.
    pub keys: Keys,
    /// Timeout of each command.
    pub command_timeout: Duration,
    /// Pub/sub messages buffered before the reader is considered lagging.
    pub buffer: usize,
    /// History kept for published events; `None`: events are published without history.
    pub history: Option<HistoryPolicy>,
}

impl std::fmt::Debug for RedisSettings {
    /// Without the URL and the password: either may hold a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("keys", &self.keys)
            .field("command_timeout", &self.command_timeout)
            .field("buffer", &self.buffer)
            .field("tls_ca", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

enum Op {
    Subscribe(String, oneshot::Sender<Result<(), BusError>>),
    Unsubscribe(String, oneshot::Sender<Result<(), BusError>>),
}

/// Event channel size of the commands client: connection events only.
const COMMANDS_CLIENT_EVENTS: usize = 64;

/// Redis pub/sub bus.
pub struct RedisBus {
    commands: Client,
    commands_link: Arc<Link>,
    subscriber_link: Arc<Link>,
    keys: Keys,
    clustered: bool,
    ops: mpsc::UnboundedSender<Op>,
    /// True once the subscriber connection holds every wanted subscription; false from a
    /// connection error until the resubscription after the reconnect completed.
    in_sync: Arc<AtomicBool>,
    history: Option<HistoryPolicy>,
    /// The publisher crate's script: offset, history and publish in one atomic step.
    publish_script: Arc<Script>,
    /// `wire::REVOKE_SCRIPT`, loaded on first use.
    revoke_script: Arc<Script>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("keys", &self.keys).field("clustered", &self.clustered).finish_non_exhaustive()
    }
}

/// A rustls configuration trusting only the CAs of the PEM bundle `pem`.
fn tls_trusting(pem: &[u8]) -> Result<rustls::ClientConfig, ConfigError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let invalid = |why: String| ConfigError::new(env::REDIS_CA_FILE, why);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
        roots.add(cert).map_err(|e| invalid(format!("a certificate cannot be used as a CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("the file holds no PEM certificate".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// A client whose event channels hold `events` entries. fred sizes every event channel of a
/// client (messages, reconnections, errors, ...) alike and allocates each in full up front: at
/// 16,384 entries that is ~11 MB per client, so only the subscriber gets the large buffer.
fn build_client(config: &FredConfig, settings: &RedisSettings, events: usize) -> Result<Client, ConfigError> {
    Builder::from_config(config.clone())
        // Without a policy fred never reconnects. Unlimited attempts, 100 ms doubling to 5 s.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_performance_config(|p| {
            p.default_command_timeout = settings.command_timeout;
            p.broadcast_channel_capacity = events;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.internal_command_timeout = Duration::from_secs(5);
            // Commands issued while disconnected are queued; bound the queue.
            c.max_command_buffer_len = 10_000;
            // A command whose connection dropped while it was in flight is not written again
            // after the reconnect: it may have run (a publish delivered, a presence count
            // changed), and its caller was already told the outcome is unknown. The callers
            // retry what must be retried (subscriptions, presence reconciliation).
            c.max_command_attempts = 1;
            // A half-open connection (network partition) is replaced instead of waited on.
            // A Redis that stops answering (a stopped process, a hung host) counts as down like a
            // dropped link, within about a command timeout: readiness and publish answers say so.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(settings.command_timeout.max(Duration::from_secs(1))),
                interval: Duration::from_millis(500),
            };
        })
        .build()
        .map_err(|e| ConfigError::new(env::REDIS_URL, format!("cannot build a Redis client: {}", e.details())))
}

impl RedisBus {
    /// Creates the clients and starts connecting in the background; delivery starts as soon as
    /// Redis answers. A replica whose Redis is down at startup runs, unready, and connects later.
    /// The returned [`RedisDelivery`] reports what arrives once it runs; subscriptions asked
    /// for before that are applied then.
    pub fn start(settings: RedisSettings) -> Result<(RedisBus, RedisDelivery), ConfigError> {
        let mut config =
            FredConfig::from_url(&settings.url).map_err(|_| ConfigError::new(env::REDIS_URL, "not a Redis URL"))?;
        if let Some(password) = &settings.password {
            config.password = Some(password.clone());
        }
        if let Some(pem) = &settings.ca_pem {
            if config.tls.is_none() {
                return Err(ConfigError::new(env::REDIS_CA_FILE, "a CA bundle needs a TLS URL (rediss://)"));
            }
            config.tls = Some(tls_trusting(pem)?.into());
        }
        let clustered = config.server.is_clustered();
        // The commands client receives no pub/sub messages, only its own connection events.
        let commands = build_client(&config, &settings, COMMANDS_CLIENT_EVENTS)?;
        // fred's default of 32 would drop pub/sub messages (with a log line) on any hiccup.
        let subscriber = build_client(&config, &settings, settings.buffer)?;
        let in_sync = Arc::new(AtomicBool::new(false));
        let (commands_link, subscriber_link) = (Arc::new(Link::default()), Arc::new(Link::default()));
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();

        // Receivers are taken before connecting so the first connection event is not missed.
        for client in ["commands", "subscriber"] {
            metrics::redis_connected(client, false);
        }
        monitor(&commands, "commands", commands_link.clone(), None);
        monitor(&subscriber, "subscriber", subscriber_link.clone(), Some(in_sync.clone()));
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        keep_connecting(&commands);
        keep_connecting(&subscriber);
        for client in [&commands, &subscriber] {
            let client = client.clone();
            // The heartbeat's PING is what the unresponsive check times on an idle connection.
            tokio::spawn(async move { client.enable_heartbeat(Duration::from_secs(1), false).await });
        }

        let delivery = RedisDelivery {
            subscriber,
            commands: commands.clone(),
            link: subscriber_link.clone(),
            keys: settings.keys.clone(),
            clustered,
            in_sync: in_sync.clone(),
            ops: ops_rx,
            reconnects,
            messages,
        };
        tracing::info!(cluster = clustered, prefix = settings.keys.prefix(), "cluster mode: Redis bus");
        let bus = RedisBus {
            commands,
            commands_link,
            subscriber_link,
            keys: settings.keys,
            clustered,
            ops: ops_tx,
            in_sync,
            history: settings.history,
            publish_script: Arc::new(Script::from_lua(wire::PUBLISH_SCRIPT)),
            revoke_script: Arc::new(Script::from_lua(wire::REVOKE_SCRIPT)),
        };
        Ok((bus, delivery))
    }

    /// The command connection, for the other Redis-backed stores.
    pub fn commands(&self) -> Commands {
        Commands {
            client: self.commands.clone(),
            link: self.commands_link.clone(),
            clustered: self.clustered,
            keys: self.keys.clone(),
        }
    }

    fn request(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), BusError>>) -> Op,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.ops.send(op(tx)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(BusError::Unavailable("subscription task stopped".into()));
            }
            rx.await.unwrap_or_else(|_| Err(BusError::Unavailable("subscription task stopped".into())))
        })
    }
}

/// The Redis bus's receiving side: the subscriber connection's tasks, started with
/// [`RedisDelivery::run`] once the replica can take what arrives.
pub struct RedisDelivery {
    subscriber: Client,
    /// Acknowledges control envelopes (the subscriber connection cannot run commands).
    commands: Client,
    link: Arc<Link>,
    keys: Keys,
    clustered: bool,
    in_sync: Arc<AtomicBool>,
    ops: mpsc::UnboundedReceiver<Op>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl std::fmt::Debug for RedisDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDelivery")
            .field("keys", &self.keys)
            .field("clustered", &self.clustered)
            .finish_non_exhaustive()
    }
}

impl RedisDelivery {
    /// Starts applying subscriptions and reporting messages to `inbound`, for the bus's life.
    /// `inbound` is held weakly: the gateway owns its delivery, and the tasks do not keep it.
    pub fn run(self, inbound: Arc<dyn Inbound>) {
        let RedisDelivery { subscriber, commands, link, keys, clustered, in_sync, ops, reconnects, messages } = self;
        let inbound = Arc::downgrade(&inbound);
        let subscriptions = Subscriptions {
            subscriber,
            inbound: inbound.clone(),
            link,
            keys: keys.clone(),
            clustered,
            wanted: HashSet::new(),
            unconfirmed: HashSet::new(),
            awaiting: HashSet::new(),
            in_sync,
        };
        tokio::spawn(subscriptions.run(ops, reconnects));
        tokio::spawn(receive(messages, keys, inbound, commands));
    }
}

impl Bus for RedisBus {
    fn subscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let room = room.to_owned();
        self.request(|tx| Op::Subscribe(room, tx))
    }

    fn unsubscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>> {
        let room = room.to_owned();
        self.request(|tx| Op::Unsubscribe(room, tx))
    }

    fn publish(
        &self,
        envelopes: Vec<Envelope>,
        dedupe: Option<Duration>,
    ) -> BoxFuture<'static, Result<Vec<Result<Published, BusError>>, BusError>> {
        let redis = self.commands();
        let (history, script) = (self.history, self.publish_script.clone());
        // Either connection found Redis gone (closed, or not answering): a hang shows on
        // whichever connection was busy first, and the other follows within a heartbeat.
        let down = !self.subscriber_link.is_up();
        Box::pin(async move {
            // Fail at once rather than queue behind a dead connection until the timeout.
            if down || !redis.link.is_up() {
                metrics::redis_error("publish");
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            // All in flight at once on the connection, written in order: one round trip.
            let sends = envelopes.iter().map(|envelope| {
                let (redis, script) = (&redis, &script);
                async move {
                    let body = serde_json::to_string(envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
                    // Only events are kept in history; typing and presence are live only.
                    let history = history.filter(|_| matches!(envelope, Envelope::Event(_)));
                    let dedupe = match (envelope, dedupe) {
                        (Envelope::Event(e), Some(window)) => Some(Dedupe { id: &e.id, window }),
                        _ => None,
                    };
                    let send = send_encoded(&redis.client, script, &redis.keys, envelope.room(), body, history, dedupe);
                    let sent = metrics::redis_timed("publish", send).await;
                    let sent = sent.map(|s| Published {
                        replicas: s.replicas,
                        offset: s.offset,
                        epoch: s.epoch,
                        duplicate: s.duplicate,
                    });
                    sent.map_err(|e| {
                        metrics::redis_error("publish");
                        publish_error(&e)
                    })
                }
            });
            Ok(futures_util::future::join_all(sends).await)
        })
    }

    fn control(
        &self,
        control: roomcast_publisher::wire::ControlEnvelope,
        wait: Duration,
    ) -> BoxFuture<'static, Result<ControlReceipt, BusError>> {
        let redis = self.commands();
        let subscribed = self.subscriber_link.is_up() && self.in_sync.load(Ordering::Acquire);
        Box::pin(async move {
            // This replica's own sockets count too: without its subscription they would be missed.
            if !redis.link.is_up() || !subscribed {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let acks = redis.keys.control_acks(&control.room, &control.id);
            let channel = redis.keys.channel(&control.room);
            let body =
                serde_json::to_string(&Envelope::Control(control)).map_err(|e| BusError::Unavailable(e.to_string()))?;
            let sent: Result<u64, _> = if redis.clustered {
                redis.client.spublish(channel, body).await
            } else {
                redis.client.publish(channel, body).await
            };
            let of = sent.map_err(|e| {
                metrics::redis_error("control");
                publish_error(&e)
            })?;
            let mut receipt = ControlReceipt { of, ..Default::default() };
            let deadline = tokio::time::Instant::now() + wait;
            // Each replica that received it answers in its own field; wait for all of them, or
            // the deadline, polling from 5 ms, doubling up to 100 ms.
            let mut pause = Duration::from_millis(5);
            while receipt.replicas < of {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
                pause = (pause * 2).min(Duration::from_millis(100));
                if let Ok(answers) = redis.client.hgetall::<HashMap<String, u64>, _>(&acks).await {
                    receipt.replicas = answers.len() as u64;
                    receipt.sockets = answers.values().sum();
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            Ok(receipt)
        })
    }

    fn record_revocation(
        &self,
        revocation: &Revocation,
        until_ms: u64,
        _now_ms: u64,
        per_tenant: u64,
    ) -> BoxFuture<'static, Result<bool, BusError>> {
        let redis = self.commands();
        let script = self.revoke_script.clone();
        let (keys, args) = wire::revoke_script_call(&redis.keys, revocation, until_ms, per_tenant);
        Box::pin(async move {
            if !redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let recorded: u64 = script.evalsha_with_reload(&redis.client, keys, args).await.map_err(|e| {
                metrics::redis_error("control");
                publish_error(&e)
            })?;
            Ok(recorded == 1)
        })
    }

    fn revocations(
        &self,
        known: Option<String>,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Option<RevocationList>, BusError>> {
        let redis = self.commands();
        Box::pin(async move {
            if !redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let fail = |e: fred::error::Error| {
                metrics::redis_error("control");
                BusError::Unavailable(e.details().to_owned())
            };
            // Read before the list: a change in between shows as a new version next time.
            let version: Option<String> = redis.client.get(redis.keys.revocations_version()).await.map_err(fail)?;
            let version = version.unwrap_or_default();
            if known.as_ref() == Some(&version) {
                return Ok(None);
            }
            let members: Vec<(String, f64)> = redis
                .client
                .zrangebyscore(redis.keys.revocations(), now_ms as f64, f64::INFINITY, true, None)
                .await
                .map_err(fail)?;
            let read = members.len();
            let list: Vec<_> = members
                .into_iter()
                .filter_map(|(member, until)| Some((serde_json::from_str(&member).ok()?, until as u64)))
                .collect();
            if list.len() < read {
                // Written by hand, not in the documented format (PROTOCOL.md): not enforced.
                tracing::warn!(skipped = read - list.len(), "revocations in Redis that do not parse were skipped");
            }
            Ok(Some((version, list)))
        })
    }

    fn index_rooms(&self, rooms: Vec<String>, now_ms: u64, _prune: bool) -> BoxFuture<'static, Result<(), BusError>> {
        let redis = self.commands();
        Box::pin(async move {
            if !redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let mut by_tenant: HashMap<String, Vec<(f64, String)>> = HashMap::new();
            // One tenant's rooms in chunks: no single command carries a huge argument list.
            const CHUNK: usize = 1000;
            for room in rooms {
                if let Some(parsed) = roomcast_publisher::Room::parse(&room) {
                    by_tenant.entry(parsed.tenant_id().to_owned()).or_default().push((now_ms as f64, room));
                }
            }
            let forget_before = now_ms.saturating_sub(super::ROOM_INDEX_TTL.as_millis() as u64) as f64;
            let pipeline = redis.client.pipeline();
            for (tenant, members) in by_tenant {
                let key = redis.keys.rooms_index(&tenant);
                for chunk in members.chunks(CHUNK) {
                    let _: Result<(), _> = pipeline.zadd(&key, None, None, false, false, chunk.to_vec()).await;
                }
                // Cheap here (only what expired goes): done on every call.
                let _: Result<(), _> = pipeline.zremrangebyscore(&key, f64::NEG_INFINITY, forget_before).await;
                // An abandoned tenant's index goes once no replica records it.
                let _: Result<(), _> =
                    pipeline.pexpire(&key, (super::ROOM_INDEX_TTL.as_millis() * 2) as i64, None).await;
            }
            pipeline.all::<Vec<Value>>().await.map(|_| ()).map_err(|e| {
                metrics::redis_error("rooms");
                BusError::Unavailable(e.details().to_owned())
            })
        })
    }

    fn indexed_rooms(
        &self,
        tenant: &str,
        prefix: &str,
        cursor: &str,
        count: u64,
        _now_ms: u64,
    ) -> BoxFuture<'static, Result<Option<RoomPage>, BusError>> {
        // Redis' cursors are unsigned 64-bit integers.
        if !cursor.is_empty() && cursor.parse::<u64>().is_err() {
            return Box::pin(async { Ok(None) });
        }
        let redis = self.commands();
        let key = redis.keys.rooms_index(tenant);
        // `prefix` holds only id characters and `:`: nothing a glob pattern treats specially.
        let args: Vec<Value> = vec![
            key.into(),
            (if cursor.is_empty() { "0" } else { cursor }).into(),
            "MATCH".into(),
            format!("{prefix}*").into(),
            "COUNT".into(),
            (count.max(1) as i64).into(),
        ];
        Box::pin(async move {
            if !redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let (next, flat): (String, Vec<String>) =
                redis.client.custom(fred::cmd!("ZSCAN"), args).await.map_err(|e| {
                    metrics::redis_error("rooms");
                    BusError::Unavailable(e.details().to_owned())
                })?;
            // Not filtered by score: replicas' clocks differ; the caller keeps rooms with users.
            let rooms = flat.chunks(2).map(|pair| pair[0].clone()).collect();
            Ok(Some((if next == "0" { String::new() } else { next }, rooms)))
        })
    }

    fn report_status(
        &self,
        node: &str,
        status: serde_json::Value,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let redis = self.commands();
        let node = node.to_owned();
        Box::pin(async move {
            if !redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let key = redis.keys.replica_statuses();
            let entry = serde_json::json!({ "at": now_ms, "status": status }).to_string();
            let pipeline = redis.client.pipeline();
            let _: Result<(), _> = pipeline.hset(&key, (node.as_str(), entry)).await;
            // Gone once no replica reports any more.
            let _: Result<(), _> = pipeline.pexpire(&key, (super::STATUS_TTL.as_millis() * 4) as i64, None).await;
            pipeline.all::<Vec<Value>>().await.map(|_| ()).map_err(|e| {
                metrics::redis_error("status");
                BusError::Unavailable(e.details().to_owned())
            })
        })
    }

    fn statuses(&self, now_ms: u64) -> BoxFuture<'static, Result<Vec<(String, serde_json::Value)>, BusError>> {
        let redis = self.commands();
        Box::pin(async move {
            if !redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let key = redis.keys.replica_statuses();
            let all: HashMap<String, String> = redis.client.hgetall(&key).await.map_err(|e| {
                metrics::redis_error("status");
                BusError::Unavailable(e.details().to_owned())
            })?;
            let ttl = super::STATUS_TTL.as_millis() as u64;
            let mut listed = Vec::new();
            let mut gone = Vec::new();
            for (node, entry) in all {
                let parsed = serde_json::from_str::<serde_json::Value>(&entry)
                    .ok()
                    .and_then(|mut v| Some((v.get("at")?.as_u64()?, v.get_mut("status")?.take())));
                match parsed {
                    Some((at, status)) if at + ttl > now_ms => listed.push((node, status)),
                    // Long gone (a replica that stopped), or not written by a replica.
                    Some((at, _)) if at + 4 * ttl < now_ms => gone.push(node),
                    Some(_) => {}
                    None => gone.push(node),
                }
            }
            if !gone.is_empty() {
                let _: Result<(), _> = redis.client.hdel(&key, gone).await;
            }
            listed.sort_by(|a: &(String, serde_json::Value), b| a.0.cmp(&b.0));
            Ok(listed)
        })
    }

    fn unavailable(&self) -> Option<&'static str> {
        if !self.commands_link.is_up() || !self.subscriber_link.is_up() {
            Some("redis_disconnected")
        } else if !self.in_sync.load(Ordering::Acquire) {
            Some("redis_resubscribing")
        } else {
            None
        }
    }
}

/// What a failed publish means for the publisher. Only an answer from Redis, or not reaching
/// it, says the publish did not happen; a timeout or a connection lost while waiting says
/// nothing. Redis' own words (script hashes, OOM text) stay in the logs.
fn publish_error(e: &fred::error::Error) -> BusError {
    use fred::error::ErrorKind;
    static LOGGED: crate::logging::Throttled = crate::logging::Throttled::new(crate::logging::WARN_EVERY);
    if let Some(held) = LOGGED.check() {
        tracing::warn!(error = %e, similar_since = held, "publish to Redis failed");
    }
    match e.kind() {
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Protocol | ErrorKind::Parse => {
            BusError::Uncertain("Redis did not answer in time".into())
        }
        ErrorKind::Backpressure => BusError::Unavailable("Redis is overloaded".into()),
        // Redis' own error replies (OOM, BUSY, a script error before it published) say the
        // publish did not run; anything else fred reports as `Unknown` might have.
        ErrorKind::Unknown if !looks_like_a_redis_reply(e.details()) => {
            BusError::Uncertain("the connection to Redis failed".into())
        }
        _ => BusError::Unavailable("Redis refused the publish".into()),
    }
}

/// Whether an error's text is a Redis error reply (`ERR …`, `OOM …`, `BUSY …`: an uppercase
/// word), rather than fred's own account of a failure.
fn looks_like_a_redis_reply(details: &str) -> bool {
    let word = details.split_whitespace().next().unwrap_or("");
    word.len() >= 2 && word.chars().all(|c| c.is_ascii_uppercase())
}

/// Connects `client`, and connects it again whenever its connection task ends with an error.
///
/// fred applies its reconnect policy only once a client has connected: when the *first*
/// connection fails, the task ends and the client stays down for good, so a replica started
/// before its Redis (a pod scheduled first) would never connect. Its `fail_fast = false`
/// applies the policy to the first connection too, but then waits the policy's first delay
/// before even trying, which makes every start ~100-200 ms slower; this tries at once.
fn keep_connecting(client: &Client) {
    let client = client.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match client.connect().await {
                // The client quit (or the task was cancelled): nothing left to do.
                Ok(Ok(())) | Err(_) => break,
                // The errors themselves reach the monitor through the client's error events.
                Ok(Err(_)) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

/// Counts connections, reconnections and connection errors of `client`; marks the bus out of
/// sync on subscriber errors until its resubscription completes.
fn monitor(client: &Client, name: &'static str, link: Arc<Link>, in_sync: Option<Arc<AtomicBool>>) {
    let mut reconnects = client.reconnect_rx();
    let mut errors = client.error_rx();
    tokio::spawn(async move {
        let mut connected_before = false;
        loop {
            tokio::select! {
                event = reconnects.recv() => match event {
                    Ok(_) => {
                        link.set_up(true);
                        metrics::redis_connected(name, true);
                        if connected_before {
                            metrics::redis_reconnected(name);
                            tracing::info!(client = name, "reconnected to Redis");
                        } else {
                            tracing::info!(client = name, "connected to Redis");
                        }
                        connected_before = true;
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                event = errors.recv() => match event {
                    Ok((error, _server)) => {
                        link.set_up(false);
                        metrics::redis_connected(name, false);
                        metrics::redis_error("connection");
                        if let Some(flag) = &in_sync {
                            flag.store(false, Ordering::Release);
                        }
                        tracing::warn!(client = name, error = %error.details(), "Redis connection error");
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
    });
}

/// Records what this replica did with a control envelope where its sender counts the answers.
/// Each replica answers in its own field (its id → sockets reached), so an answer counts once
/// however often it is written.
async fn acknowledge(commands: Client, keys: Keys, ack: ControlAck) {
    let key = keys.control_acks(&ack.room, &ack.id);
    let pipeline = commands.pipeline();
    let _: Result<(), _> = pipeline.hset(&key, (ack.node.as_str(), ack.sockets)).await;
    let _: Result<(), _> = pipeline.pexpire(&key, CONTROL_ACKS_TTL_MS, None).await;
    if let Err(e) = pipeline.all::<Vec<Value>>().await {
        metrics::redis_error("control");
        tracing::debug!(error = %e.details(), "control acknowledgement failed");
    }
}

/// Acknowledgements waiting to be written; beyond it they are dropped (the sender then reports
/// `complete: false`), so a flood of control envelopes cannot pile up tasks.
const ACKS_QUEUE: usize = 1024;

/// How long acknowledgements are kept: far longer than any sender waits.
const CONTROL_ACKS_TTL_MS: i64 = 60_000;

/// Reads pub/sub messages and hands them to delivery, in the order Redis sent them.
async fn receive(
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    keys: Keys,
    inbound: Weak<dyn Inbound>,
    commands: Client,
) {
    let (acks, mut pending) = mpsc::channel::<ControlAck>(ACKS_QUEUE);
    let ack_keys = keys.clone();
    tokio::spawn(async move {
        while let Some(ack) = pending.recv().await {
            acknowledge(commands.clone(), ack_keys.clone(), ack).await;
        }
    });
    loop {
        let received = messages.recv().await;
        // The gateway is gone: nobody to deliver to.
        let Some(inbound) = inbound.upgrade() else { break };
        match received {
            Ok(message) => {
                metrics::bus_received();
                let Some(room) = keys.room_of_channel(&message.channel) else {
                    metrics::bus_rejected("channel");
                    continue;
                };
                match message.value.as_str() {
                    Some(json) => {
                        if let Some(ack) = inbound.deliver_json(room, &json).await
                            // Off the reader: a round trip per control must not hold deliveries.
                            && acks.try_send(ack).is_err()
                        {
                            metrics::redis_error("control");
                        }
                    }
                    None => metrics::bus_rejected("malformed"),
                }
            }
            Err(RecvError::Lagged(lost)) => {
                metrics::bus_lagged(lost);
                tracing::error!(
                    lost,
                    "pub/sub reader fell behind; recovering the lost messages from history (raise ROOMCAST_REDIS_BUFFER)"
                );
                // Which rooms lost messages is unknown: every room catches up from its last offset.
                let rooms = inbound.hold(&|_| true, false).await;
                inbound.catch_up(rooms);
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// The subscription state, owned by one task so changes apply in order.
struct Subscriptions {
    subscriber: Client,
    /// Catches rooms up from history once their subscription is back (weak: see `run`).
    inbound: Weak<dyn Inbound>,
    link: Arc<Link>,
    keys: Keys,
    clustered: bool,
    /// Rooms with local members.
    wanted: HashSet<String>,
    /// Rooms whose last change Redis has not confirmed; retried until it does.
    unconfirmed: HashSet<String>,
    /// Rooms held since their subscription was lost, caught up from history once it is
    /// confirmed again (not before: a read before that could miss what comes in between).
    awaiting: HashSet<String>,
    in_sync: Arc<AtomicBool>,
}

impl Subscriptions {
    /// [`Inbound::hold`], while the gateway exists.
    async fn hold(&self, wanted: &(dyn Fn(&str) -> bool + Send + Sync), seeding: bool) -> Vec<String> {
        match self.inbound.upgrade() {
            Some(inbound) => inbound.hold(wanted, seeding).await,
            None => Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut ops: mpsc::UnboundedReceiver<Op>,
        mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    ) {
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                op = ops.recv() => {
                    let Some(op) = op else { break };
                    let mut batch = vec![op];
                    while batch.len() < MAX_OPS_PER_ROUND {
                        match ops.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
                event = reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => self.resubscribe_all().await,
                    Err(RecvError::Closed) => break,
                },
                // The conditions are checked on every tick, not as a `select!` guard: a guard is
                // evaluated once when the loop parks, so a subscription refused just before the
                // link-up flag flipped would wait for the next unrelated op (seen in CI: the
                // refusal came 0.1 ms after "connected to Redis" and was never retried).
                _ = retry.tick() => {
                    if !self.unconfirmed.is_empty() && self.link.is_up() {
                        self.retry_unconfirmed().await;
                    }
                }
            }
        }
    }

    /// Applies a batch of changes. Only each room's last change matters to Redis; every waiter
    /// is answered with the outcome of the command that carried its room.
    async fn apply(&mut self, batch: Vec<Op>) {
        let mut last: HashMap<String, bool> = HashMap::new();
        let mut waiters: HashMap<String, Vec<oneshot::Sender<Result<(), BusError>>>> = HashMap::new();
        for op in batch {
            let (room, subscribe, tx) = match op {
                Op::Subscribe(room, tx) => (room, true, tx),
                Op::Unsubscribe(room, tx) => (room, false, tx),
            };
            if subscribe {
                self.wanted.insert(room.clone());
            } else {
                self.wanted.remove(&room);
            }
            last.insert(room.clone(), subscribe);
            waiters.entry(room).or_default().push(tx);
        }
        metrics::bus_subscriptions(self.wanted.len());
        let (subscribe, unsubscribe): (Vec<String>, Vec<String>) = {
            let (s, u): (Vec<_>, Vec<_>) = last.into_iter().partition(|(_, sub)| *sub);
            (s.into_iter().map(|(r, _)| r).collect(), u.into_iter().map(|(r, _)| r).collect())
        };
        let failed_sub = if subscribe.is_empty() {
            HashMap::new()
        } else {
            // Timed with its confirmation: what a join waits for.
            metrics::redis_timed("subscribe", self.send(&subscribe, true, false)).await
        };
        let failed_unsub = self.send(&unsubscribe, false, false).await;
        for (room, txs) in waiters {
            let result = match failed_sub.get(&room).or_else(|| failed_unsub.get(&room)) {
                Some(e) => {
                    self.unconfirmed.insert(room);
                    Err(e.clone())
                }
                None => {
                    self.unconfirmed.remove(&room);
                    Ok(())
                }
            };
            for tx in txs {
                let _ = tx.send(result.clone());
            }
        }
    }

    /// Subscribes (or unsubscribes) `rooms`; returns the rooms whose command failed. Unless
    /// `just_connected`, nothing is sent while the link is down: the wanted set is applied by the
    /// resubscription that follows the reconnection.
    async fn send(&self, rooms: &[String], subscribe: bool, just_connected: bool) -> HashMap<String, BusError> {
        let mut failed = HashMap::new();
        if rooms.is_empty() {
            return failed;
        }
        if !just_connected && !self.link.is_up() {
            // Recorded in `wanted`; the resubscription on reconnect applies it.
            let error = BusError::Unavailable("Redis is not connected".into());
            return rooms.iter().map(|r| (r.clone(), error.clone())).collect();
        }
        let channels: Vec<String> = rooms.iter().map(|r| self.keys.channel(r)).collect();
        if self.clustered {
            // Sharded pub/sub: one command per channel (each room hashes to its own slot).
            let results = futures_util::future::join_all(channels.iter().map(|c| async move {
                if subscribe {
                    self.subscriber.ssubscribe(c.as_str()).await
                } else {
                    self.subscriber.sunsubscribe(c.as_str()).await
                }
            }))
            .await;
            for (room, result) in rooms.iter().zip(results) {
                if let Err(e) = result {
                    metrics::redis_error(if subscribe { "subscribe" } else { "unsubscribe" });
                    failed.insert(room.clone(), BusError::Unavailable(e.details().to_owned()));
                }
            }
        } else {
            for (chunk_rooms, chunk) in rooms.chunks(SUBSCRIBE_CHUNK).zip(channels.chunks(SUBSCRIBE_CHUNK)) {
                let result = if subscribe {
                    self.subscriber.subscribe(chunk.to_vec()).await
                } else {
                    self.subscriber.unsubscribe(chunk.to_vec()).await
                };
                if let Err(e) = result {
                    metrics::redis_error(if subscribe { "subscribe" } else { "unsubscribe" });
                    let error = BusError::Unavailable(e.details().to_owned());
                    failed.extend(chunk_rooms.iter().map(|r| (r.clone(), error.clone())));
                }
            }
            if subscribe && let Err(error) = self.applied().await {
                metrics::redis_error("subscribe");
                failed.extend(rooms.iter().map(|r| (r.clone(), error.clone())));
            }
        }
        failed
    }

    /// Resolves once Redis has applied every command written before on the subscriber
    /// connection. fred answers `SUBSCRIBE` as soon as it is *written* (its confirmation is
    /// routed as a pub/sub frame, not as the command's reply), so without this a join would
    /// read the room's history position before Redis delivers the room's messages to us, and an
    /// event published in between would be neither in the read nor delivered. A `PING` is
    /// answered in order on the same connection, also in RESP2 subscribe mode (`["pong", ""]`).
    /// (`SSUBSCRIBE`, on a cluster, already waits for its reply.)
    async fn applied(&self) -> Result<(), BusError> {
        self.subscriber
            .ping::<Value>(None)
            .await
            .map(drop)
            .map_err(|e| BusError::Unavailable(format!("subscription not confirmed: {}", e.details())))
    }

    /// After a (re)connection the subscriber holds no subscriptions: take every wanted room again.
    async fn resubscribe_all(&mut self) {
        self.in_sync.store(false, Ordering::Release);
        // Live events of rooms delivered before are held from the moment they are resubscribed
        // until what was published while the subscription was down has been replayed.
        let held = self.hold(&|_| true, false).await;
        self.awaiting.extend(held);
        let rooms: Vec<String> = self.wanted.iter().cloned().collect();
        // The connection event itself says the link is up, whatever the monitor task has recorded yet.
        let failed = self.send(&rooms, true, true).await;
        self.unconfirmed = failed.keys().cloned().collect();
        self.catch_up_confirmed(&rooms, &failed).await;
        if failed.is_empty() {
            self.in_sync.store(true, Ordering::Release);
            tracing::info!(rooms = rooms.len(), "subscriptions restored");
        } else {
            tracing::warn!(
                rooms = rooms.len(),
                failed = failed.len(),
                "some subscriptions could not be restored yet; retrying"
            );
        }
    }

    async fn retry_unconfirmed(&mut self) {
        let (sub, unsub): (Vec<String>, Vec<String>) =
            self.unconfirmed.iter().cloned().partition(|r| self.wanted.contains(r));
        // What was published while these rooms were not subscribed is read from history once
        // they are (as after a reconnect), not only when a later event reveals the gap.
        let wanted: HashSet<&str> = sub.iter().map(String::as_str).collect();
        let held = self.hold(&|room| wanted.contains(room), false).await;
        self.awaiting.extend(held);
        let mut failed = self.send(&sub, true, false).await;
        self.catch_up_confirmed(&sub, &failed).await;
        failed.extend(self.send(&unsub, false, false).await);
        self.unconfirmed = failed.into_keys().collect();
        if self.unconfirmed.is_empty() {
            self.in_sync.store(true, Ordering::Release);
        }
    }

    /// Starts the catch-up of the rooms of `sent` whose subscription is now confirmed: those
    /// held while it was lost, those a join is seeding (once seeded), and any room released
    /// meanwhile. Rooms still failing stay held for the next retry; rooms nobody wants any more
    /// are released (their catch-up drops them).
    async fn catch_up_confirmed(&mut self, sent: &[String], failed: &HashMap<String, BusError>) {
        let confirmed: HashSet<&str> = sent.iter().map(String::as_str).filter(|r| !failed.contains_key(*r)).collect();
        let mut ready = self.hold(&|room| confirmed.contains(room), true).await;
        let wanted = &self.wanted;
        ready.extend(self.awaiting.extract_if(|room| confirmed.contains(room.as_str()) || !wanted.contains(room)));
        if let Some(inbound) = self.inbound.upgrade() {
            inbound.catch_up(ready);
        }
    }
}

//! Roomcast gateway: a Socket.IO server that authenticates connections with JWTs, keeps them in
//! tenant-scoped rooms, and delivers events to them.
//!
//! [`Gateway::bind`] validates the [`Config`], loads keys and binds both listeners;
//! [`Gateway::run`] serves until the `shutdown` future resolves, then drains. Tests drive the
//! real thing this way on port 0; `main` only adds signal handling and the `--dev` banner.
//!
//! The public surface is that, the [`config`] (one clap struct; `--help` is the reference) and
//! the client-visible [`errors`]; the binary also uses [`Verifier`], [`init_logging`] and
//! [`shutdown_signal`]. Every other module is private.
//!
//! # Layout
//! Layers, bottom up (ARCHITECTURE.md; `tests/architecture.rs` enforces the direction):
//! - foundation: [`config`] (the one clap struct; `--help` is the reference), [`errors`] (the
//!   client-visible codes, the README table), [`metrics`], [`auth`] (tokens → [`auth::Identity`]),
//!   [`api_keys`], [`conn`] (per-socket record and ticket lock), [`timers`], [`logging`],
//!   [`backend`] (what the storage traits share), [`redis_conn`] (the shared Redis connection).
//! - adapters: [`bus`] (the [`bus::Bus`] and [`bus::Inbound`] traits; [`bus::memory`] single
//!   node, [`bus::redis`] clustered), [`history`] (rooms' bounded history, memory and Redis).
//! - core: [`delivery`] (inbound envelopes → local sockets), [`recovery`] (the
//!   [`recovery::Sequencer`]: offsets, catch-up, `join` with `since`), [`local`] (the local
//!   sockets), [`rooms`] (local membership → bus subscriptions), [`presence`], [`typing`].
//! - edge: [`socket`] (the Socket.IO surface, one module per client event family), [`http`]
//!   (`/healthz`, `/readyz`, `/metrics`, the public listener's guards), [`publish`]
//!   (`POST /v1/publish`), [`expiry`] (`auth:expiring`, `token_expired`), [`shutdown`] (the
//!   drain), [`state`] (the handles the edge shares).

mod api_keys;
mod auth;
mod backend;
mod bus;
pub mod config;
mod conn;
mod connect_proxy;
mod console;
mod control_api;
mod delivery;
mod envelope;
pub mod errors;
mod events;
mod expiry;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod history;
mod history_api;
mod http;
mod jwks;
mod limits;
mod local;
mod logging;
mod metrics;
mod observers;
mod occupancy_api;
mod presence;
#[cfg(test)]
mod prop;
mod publish;
mod recovery;
mod redis_conn;
mod revocations;
mod rooms;
mod rpc;
mod shutdown;
mod socket;
mod state;
mod timers;
mod typing;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use socketioxide::{ParserConfig, SocketIo};
use tokio::{net::TcpListener, sync::watch, time::Instant};

pub use auth::{Verifier, dev_secret_path};

/// The backend API's paths, each served by one route of the API listener (`api_router`) and
/// documented in `gateway/openapi.json`; a test checks the document against this list, so a new
/// route gets its path constant here.
pub const API_PATHS: [&str; 9] = [
    publish::PUBLISH_PATH,
    history_api::HISTORY_PATH,
    control_api::DISCONNECT_PATH,
    control_api::REVOKE_PATH,
    control_api::JOIN_PATH,
    control_api::LEAVE_PATH,
    occupancy_api::OCCUPANCY_PATH,
    occupancy_api::ROOMS_PATH,
    http::OPENAPI_PATH,
];
pub use config::{Config, ConfigError};
pub use logging::init as init_logging;
pub use roomcast_publisher::wire::HistoryPolicy;
pub use shutdown::signal as shutdown_signal;

use crate::{
    api_keys::ApiKeys,
    bus::{
        Bus, Inbound,
        memory::Hub,
        redis::{RedisBus, RedisSettings},
    },
    config::{Secret, env},
    delivery::Delivery,
    history::{
        History,
        memory::{MemoryHistory, MemoryLimits},
        redis::RedisHistory,
    },
    http::OriginPolicy,
    limits::SharedBucket,
    local::Local,
    observers::Observers,
    presence::{ConnectionCaps, Presence, PresenceStore, memory::MemoryPresence, redis::RedisPresence},
    rooms::Membership,
    state::{GatewayState, Shared},
    typing::Throttle,
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("invalid configuration: {option}: cannot listen on {addr}: {source}")]
    Bind {
        /// The option naming the address.
        option: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Per-socket WebSocket read chunk, bytes (see `Gateway::bind`; measured in BENCHMARKS.md).
const WS_READ_BUFFER: usize = 1024;

/// The bus and stores a gateway runs on: in memory, or shared through Redis.
struct Stores {
    bus: Arc<dyn Bus>,
    history: Option<Arc<dyn History>>,
    presence: Arc<dyn PresenceStore>,
    /// Lifecycle events, recorded by the presence store (`None`: no sink is configured).
    lifecycle: Option<Arc<events::Lifecycle>>,
    /// Starts the bus's receiving side, reporting to the handler given (once it exists).
    receive: Box<dyn FnOnce(Arc<dyn Inbound>) + Send>,
}

/// The webhooks `config` names (validated: a secret is set when a URL is).
fn webhooks(config: &Config) -> Vec<events::webhook::Webhook> {
    let secret = config.webhook_secret().ok().flatten().map(|s| s.expose().as_bytes().to_vec()).unwrap_or_default();
    config
        .webhook_url
        .iter()
        .map(|url| events::webhook::Webhook {
            url: url.clone(),
            secret: secret.clone(),
            batch_size: config.webhook_batch_size,
            batch_wait: config.webhook_batch_wait,
            timeout: config.webhook_timeout,
            retry_max: config.webhook_retry_max,
        })
        .collect()
}

/// Gateways in one process sharing an in-memory bus, history and presence: they behave as
/// replicas sharing Redis do, without Redis. A single node is a cluster of one; several serve
/// tests of cluster semantics that run in seconds (Redis behaviour itself is tested against
/// real servers) and applications embedding several gateways. Create it inside a Tokio runtime.
///
/// Unlike Redis, one delivery task delivers each publish to every gateway in turn, so a slow
/// gateway delays the others; and a gateway stopped without its graceful `run` keeps its
/// subscriptions (and is counted in publish receipts) until the cluster is dropped.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    hub: Arc<Hub>,
    history: Option<Arc<MemoryHistory>>,
    policy: Option<HistoryPolicy>,
    presence: Arc<MemoryPresence>,
    lifecycle: Option<Arc<events::Lifecycle>>,
}

impl LocalCluster {
    /// A cluster with no gateways yet, keeping `history` (`None`: no history, no recovery)
    /// within the default memory limits (`ROOMCAST_HISTORY_MAX_ROOMS`, `_MAX_BYTES`).
    pub fn new(policy: Option<HistoryPolicy>) -> LocalCluster {
        Self::with_limits(policy, MemoryLimits::default(), None)
    }

    fn with_limits(
        policy: Option<HistoryPolicy>,
        limits: MemoryLimits,
        lifecycle: Option<Arc<events::Lifecycle>>,
    ) -> LocalCluster {
        let history = policy.map(|policy| Arc::new(MemoryHistory::new(policy, limits)));
        if let Some(history) = &history {
            let history = Arc::downgrade(history);
            // Rooms idle longer than they would live in Redis are forgotten.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let Some(history) = history.upgrade() else { break };
                    history.sweep();
                }
            });
        }
        let hub = Hub::new(history.clone());
        let lifecycle_for_store = lifecycle.clone();
        // Presence is announced from a node of its own, with no rooms.
        let presence = Arc::new(MemoryPresence::new(Arc::new(hub.node().0), lifecycle_for_store));
        LocalCluster { hub, history, policy, presence, lifecycle }
    }

    /// Gateways of this cluster with members in `room` (each subscribes while it has some).
    pub fn subscribers(&self, room: &str) -> usize {
        self.hub.subscribers(room)
    }

    fn node(&self) -> Stores {
        self.presence.add_node();
        let (bus, receiving) = self.hub.node();
        Stores {
            bus: Arc::new(bus),
            history: self.history.clone().map(|h| h as Arc<dyn History>),
            presence: self.presence.clone(),
            lifecycle: self.lifecycle.clone(),
            receive: Box::new(|inbound| receiving.run(inbound)),
        }
    }
}

/// A gateway whose listeners are bound; [`Gateway::run`] serves them.
#[derive(Debug)]
pub struct Gateway {
    state: Shared,
    io: SocketIo,
    public: (TcpListener, Router),
    api: (TcpListener, Router),
    admin: (TcpListener, Router),
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// In `--dev` mode without a configured key: the generated publish API key.
    dev_api_key: Option<Secret>,
    /// In `--dev` mode without `ROOMCAST_CONSOLE_TOKENS`: the console token generated.
    dev_console_token: Option<Secret>,
}

impl Gateway {
    /// Validates `config`, loads the keys, builds the Socket.IO server and binds both listeners.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        Self::bind_to(config, None).await
    }

    /// Like [`Gateway::bind`], as one node of `cluster` instead of a single node (or Redis,
    /// which `config` must not name).
    pub async fn bind_local(config: Config, cluster: &LocalCluster) -> Result<Gateway, StartError> {
        if config.uses_redis() {
            return Err(ConfigError::new(env::REDIS_URL, "a gateway of a LocalCluster does not use Redis").into());
        }
        if config.history() != cluster.policy {
            let message =
                format!("the LocalCluster keeps {:?}; its gateways must be configured the same", cluster.policy);
            return Err(ConfigError::new(env::HISTORY_SIZE, message).into());
        }
        Self::bind_to(config, Some(cluster)).await
    }

    async fn bind_to(config: Config, cluster: Option<&LocalCluster>) -> Result<Gateway, StartError> {
        config.validate()?;
        // Before anything records a metric: the key sets register theirs when built.
        let metrics = metrics::install();
        let verifier = Verifier::from_config(&config)?;
        // Key sets at identity providers' URLs: fetched before the first connection, at most
        // a few seconds; a provider that is down does not stop the gateway (its tokens are
        // refused until a fetch succeeds, retried in the background).
        futures_util::future::join_all(verifier.remote_key_sets().iter().map(|set| set.fetch_at_start())).await;
        let mut origins = match config.cors_allow_list()? {
            None => OriginPolicy::Any,
            Some(list) if list.is_empty() => OriginPolicy::Unrestricted,
            Some(list) => OriginPolicy::List(list),
        };
        if config.dev && origins == OriginPolicy::Unrestricted {
            // Trying Roomcast from a page on another port should just work in --dev.
            origins = OriginPolicy::Any;
        }
        let mut api_keys = ApiKeys::from_config(&config)?;
        let mut dev_api_key = None;
        if config.dev && !api_keys.is_enabled() {
            let key = Secret::from(auth::random_hex(16));
            api_keys = ApiKeys::new(vec![key.clone()]);
            dev_api_key = Some(key);
        }
        let mut observers = Observers::from_config(&config)?;
        let mut dev_console_token = None;
        if config.dev && observers.is_none() {
            let token = Secret::from(auth::random_hex(24));
            observers = Some(Observers::new(vec![(token.clone(), api_keys::KeyScope::All)]));
            dev_console_token = Some(token);
        }
        let node_id: Arc<str> = auth::random_hex(16).into();
        let event_types = config.event_types()?;
        // Built bottom-up: the bus and stores, the membership over the bus, the Socket.IO
        // server, the delivery to its sockets; then the bus is started with the delivery as its
        // handler and the socket handlers with the state. Nothing is bound late.
        let Stores { bus, history, presence: presence_store, lifecycle, receive } = match &config.redis_url()? {
            Some(url) => {
                let (password, ca_pem) = config.redis_credentials()?;
                let (bus, receiving) = RedisBus::start(RedisSettings {
                    url: url.expose().to_owned(),
                    password: password.map(|p| p.expose().to_owned()),
                    ca_pem,
                    keys: roomcast_publisher::wire::Keys::new(&config.redis_prefix)
                        .map_err(|e| ConfigError::new(env::REDIS_PREFIX, e.to_string()))?,
                    command_timeout: config.redis_command_timeout,
                    buffer: config.redis_buffer,
                    history: config.history(),
                })?;
                let history = config
                    .history()
                    .map(|policy| Arc::new(RedisHistory::new(bus.commands(), policy)) as Arc<dyn History>);
                let sweep = (config.presence_lease_ttl / 4).min(Duration::from_secs(1));
                let lifecycle = (!event_types.is_empty()).then(|| {
                    events::Lifecycle::new(
                        &event_types,
                        Arc::new(events::redis::RedisLog::new(bus.commands(), config.events_buffer)),
                    )
                });
                let store =
                    RedisPresence::new(bus.commands(), &node_id, config.presence_lease_ttl, sweep, lifecycle.clone());
                Stores {
                    lifecycle,
                    bus: Arc::new(bus),
                    history,
                    presence: Arc::new(store),
                    receive: Box::new(|inbound| receiving.run(inbound)),
                }
            }
            None => match cluster {
                Some(cluster) => cluster.node(),
                None => {
                    tracing::info!("single node: in-memory bus (ROOMCAST_REDIS_URL is not set)");
                    let limits = MemoryLimits { rooms: config.history_max_rooms, bytes: config.history_max_bytes };
                    let lifecycle = (!event_types.is_empty()).then(|| {
                        events::Lifecycle::new(
                            &event_types,
                            Arc::new(events::memory::MemoryLog::new(config.events_buffer as usize)),
                        )
                    });
                    LocalCluster::with_limits(config.history(), limits, lifecycle).node()
                }
            },
        };
        tracing::info!(node = %node_id, "replica id");
        let membership = Arc::new(Membership::new(bus.clone()));

        let (layer, io) = SocketIo::builder()
            .req_path(http::SOCKET_IO_PATH)
            .ping_interval(config.ping_interval)
            .ping_timeout(config.ping_timeout)
            .connect_timeout(config.connect_timeout)
            .max_payload(config.max_payload)
            .max_buffer_size(config.client_buffer)
            // The slow-consumer policy (vendor/PATCHES.md): a socket whose buffer is full is
            // disconnected instead of silently missing events for as long as it keeps TCP open.
            .max_buffer_bytes(config.client_buffer_bytes)
            // engineioxide applies max_payload to polling only; without these a WebSocket
            // client could send 64 MiB messages.
            .ws_max_message_size(config.max_payload as usize)
            .ws_max_frame_size(config.max_payload as usize)
            // The chunk each WebSocket read fills (messages still grow as large as they need):
            // idle sockets dominate, and engineioxide's 4 KiB default costs 4 KiB each.
            .ws_read_buffer_size(WS_READ_BUFFER)
            .with_parser(
                ParserConfig::common()
                    .max_incoming_binaries(8)
                    .max_incoming_binary_buf_size(config.max_payload as usize)
                    .packet_completion_timeout(Duration::from_secs(10)),
            )
            .build_layer();
        let local = Local::new(
            io.clone(),
            membership.clone(),
            crate::local::Pace::half_of(config.client_buffer_bytes, config.client_buffer),
        );
        let rpc = rpc_forwarder(&config, &node_id)?;
        let connect_proxy = match (&rpc, &config.connect_proxy_url) {
            (Some(rpc), Some(_)) => Some(Arc::new(connect_proxy::ConnectProxy::new(
                rpc.clone(),
                config.connect_proxy_cache_ttl,
                config.connect_proxy_cache_size,
                if config.connect_proxy_failure == "open" {
                    connect_proxy::OnFailure::Open
                } else {
                    connect_proxy::OnFailure::Closed
                },
                config.max_token_lifetime,
            ))),
            _ => None,
        };
        let revocations = Arc::new(revocations::Revocations::default());
        let delivery = Arc::new(Delivery::new(
            local,
            history.clone(),
            node_id,
            config.publish_max_payload,
            config.typing_ttl,
            revocations.clone(),
        ));
        receive(delivery.clone());

        let state: Shared = Arc::new(GatewayState {
            membership,
            bus,
            delivery,
            api_keys,
            history,
            revocations,
            presence: Arc::new(Presence::new(
                presence_store,
                config.presence_grace,
                config.presence_queue_per_tenant,
                ConnectionCaps {
                    per_user: config.max_connections_per_user,
                    per_tenant: config.max_connections_per_tenant,
                },
                lifecycle.as_ref().is_some_and(|l| l.tracks_users()),
            )),
            lifecycle,
            throttle: Throttle::new(config.typing_throttle),
            verifier,
            expiry: Default::default(),
            draining: Default::default(),
            limits: config.rate_limits(),
            connects: config.connect_rate.map(SharedBucket::new),
            rpc,
            connect_proxy,
            observers: observers.map(Arc::new),
            config,
        });
        socket::register(&io, state.clone());
        state.delivery.set_room_control(Arc::new(socket::BackendControl(Arc::downgrade(&state))));
        let config = &state.config;

        // The Socket.IO layer is applied exactly once: every `Layer::layer` call builds a new
        // Engine.IO instance with its own session table, and `Router::layer` would apply it to
        // each endpoint, so a polling GET and the POST that follows would land in different
        // engines ("Session ID unknown").
        // The backend API is served on the public listener too only when configured to be.
        let behind_socket_io =
            if config.public_api { api_router(state.clone()) } else { Router::new().fallback(http::not_found) };
        let socket_io = tower::Layer::layer(&layer, behind_socket_io);
        // The console's observers connect to the same engine through the admin listener.
        let console = state.observers.as_ref().map(|_| console::router(state.clone(), socket_io.clone()));
        let public_router = http::guard_public(Router::new().fallback_service(socket_io), state.clone(), origins);
        let api_routes = http::guard_api(api_router(state.clone()), state.clone());
        let admin_router = http::admin_router(state.clone(), metrics.clone(), console);
        let public = bind(config.listen, env::LISTEN).await?;
        let api = bind(config.api_listen, env::API_LISTEN).await?;
        let admin = bind(config.admin_listen, env::ADMIN_LISTEN).await?;
        let gateway = Gateway {
            state,
            io,
            public: (public, public_router),
            api: (api, api_routes),
            admin: (admin, admin_router),
            metrics,
            dev_api_key,
            dev_console_token,
        };
        tracing::info!(
            public = %gateway.public_addr(),
            api = %gateway.api_addr(),
            admin = %gateway.admin_addr(),
            "listening"
        );
        Ok(gateway)
    }

    /// The bound public address (Socket.IO; the backend API too with `ROOMCAST_PUBLIC_API`).
    pub fn public_addr(&self) -> SocketAddr {
        self.public.0.local_addr().unwrap_or(self.state.config.listen)
    }

    /// The bound API address (`/v1/...`, `/openapi.json`).
    pub fn api_addr(&self) -> SocketAddr {
        self.api.0.local_addr().unwrap_or(self.state.config.api_listen)
    }

    /// The bound admin address (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.0.local_addr().unwrap_or(self.state.config.admin_listen)
    }

    /// A token for `user` of `tenant`, valid for `ttl`, when tokens are HMAC-signed.
    pub fn token_for(&self, tenant: &str, user: &str, ttl: Duration) -> Option<String> {
        self.state.verifier.mint_token(tenant, user, ttl)
    }

    /// In `--dev` mode without a configured key, the generated publish API key.
    pub fn dev_api_key(&self) -> Option<&str> {
        self.dev_api_key.as_ref().map(Secret::expose)
    }

    /// In `--dev` mode without `ROOMCAST_CONSOLE_TOKENS`: the console token generated for this
    /// run; `None` otherwise.
    pub fn dev_console_token(&self) -> Option<&str> {
        self.dev_console_token.as_ref().map(Secret::expose)
    }

    /// Serves until `shutdown` resolves, then drains (see [`shutdown::drain`]) and returns
    /// within the configured shutdown timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        let Gateway { state, io, public, api, admin, metrics, .. } = self;
        let expiry = tokio::spawn(expiry::run(state.clone()));
        // Before serving: a replica would otherwise accept revoked tokens until its first read.
        let version = first_revocations(&state).await;
        let revocation_sync = tokio::spawn(sync_revocations(state.clone(), version));
        let room_index = tokio::spawn(index_rooms(state.clone()));
        let status = state.observers.is_some().then(|| tokio::spawn(report_status(state.clone())));
        let key_sets: Vec<_> =
            state.verifier.remote_key_sets().into_iter().map(|set| tokio::spawn(set.refresh_forever())).collect();
        let presence = tokio::spawn(state.presence.clone().run());
        let webhooks: Vec<_> = match &state.lifecycle {
            Some(lifecycle) => {
                let hooks = webhooks(&state.config);
                // Each URL's group exists before the first connection, so a new sink misses no
                // event of the replica's first moments (the dispatchers retry if Redis is away).
                let log = lifecycle.log();
                let subscribed = hooks.iter().map(|hook| log.subscribe(&hook.group(), false));
                let _ = tokio::time::timeout(Duration::from_secs(2), futures_util::future::join_all(subscribed)).await;
                hooks
                    .into_iter()
                    .map(|hook| {
                        tokio::spawn(events::webhook::run(hook, lifecycle.log(), state.delivery.node_id().to_owned()))
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let typing = tokio::spawn({
            let delivery = state.delivery.clone();
            async move { delivery.expire_typing().await }
        });
        let upkeep = tokio::spawn({
            let state = state.clone();
            async move {
                // Histograms are only compacted on upkeep; without it they grow.
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    metrics.run_upkeep();
                    // Also set by each /readyz; here for setups nothing probes.
                    crate::metrics::ready(state.readiness().is_ok());
                }
            }
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let max_head = state.config.max_header_bytes;
        let serve = move |(listener, router): (TcpListener, Router), stop: watch::Receiver<bool>| {
            tokio::spawn(http::serve(listener, router, max_head, stop))
        };
        let public_server = serve(public, stop_rx.clone());
        let api_server = serve(api, stop_rx.clone());
        let admin_server = serve(admin, stop_rx);

        shutdown.await;
        let deadline = Instant::now() + state.config.shutdown_timeout;
        shutdown::drain(&state, &io, deadline).await;
        // After the clients moved: their presence is counted on other replicas by now.
        state.presence.shutdown(deadline).await;
        let _ = stop_tx.send(true);
        let servers = async {
            let _ = public_server.await;
            let _ = api_server.await;
            let _ = admin_server.await;
        };
        if tokio::time::timeout(shutdown::remaining(deadline), servers).await.is_err() {
            tracing::warn!("shutdown timeout reached with HTTP connections still open; exiting anyway");
        }
        expiry.abort();
        key_sets.iter().for_each(tokio::task::JoinHandle::abort);
        revocation_sync.abort();
        room_index.abort();
        if let Some(status) = status {
            status.abort();
        }
        upkeep.abort();
        presence.abort();
        typing.abort();
        for webhook in webhooks {
            webhook.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The RPC forwarder, when a backend URL is configured.
fn rpc_forwarder(config: &Config, node_id: &Arc<str>) -> Result<Option<Arc<rpc::Rpc>>, StartError> {
    let backends = config.rpc_backends()?;
    let Some(secret) = config.rpc_secret()? else { return Ok(None) };
    let events =
        config::EventPattern::parse(&config.rpc_events).map_err(|e| ConfigError::new(config::env::RPC_EVENTS, e))?;
    let settings = rpc::Settings {
        backends,
        events,
        secret,
        timeout: config.rpc_timeout,
        per_socket: config.rpc_socket_concurrency,
        per_tenant: config.rpc_tenant_concurrency,
        per_replica: config.rpc_concurrency,
        max_answer: usize::try_from(config.max_payload).unwrap_or(usize::MAX),
    };
    let forwarder = rpc::Rpc::new(settings, node_id.clone())
        .map_err(|e| ConfigError::new(config::env::RPC_URL, format!("the HTTP client cannot be built: {e}")))?;
    Ok(Some(Arc::new(forwarder)))
}

/// How often a replica checks the shared list of revocations (one `GET` of its version; the
/// list itself is read when that changed): the longest a replica without a member of the
/// revoked token's tenant (or user) accepts it at connect.
const REVOCATION_SYNC: Duration = Duration::from_secs(1);

/// Keeps this replica's revocations in step with the shared list, for the gateway's life, and
/// disconnects local sockets holding a token revoked since: one that connected here while the
/// control envelope was on its way.
async fn sync_revocations(state: Shared, mut version: Option<String>) {
    let mut tick = tokio::time::interval(REVOCATION_SYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = roomcast_publisher::wire::now_ms();
        // Redis away: keep what is known (revocations only expire) and read again once back.
        let read = state.bus.revocations(version.clone(), now).await;
        let fresh = match read {
            Ok(Some((read_version, list))) => {
                version = Some(read_version);
                state.revocations.merge(list, now)
            }
            _ => state.revocations.merge(Vec::new(), now),
        };
        for revocation in &fresh {
            state.delivery.disconnect_revoked(revocation).await;
        }
    }
}

/// How often rooms that got a first local member are added to their tenants' room indexes.
const ROOM_INDEX_FLUSH: Duration = Duration::from_millis(250);

/// Keeps this replica's project and channel rooms with members in their tenants' indexes
/// (`GET /v1/rooms`) for the gateway's life: new rooms every [`ROOM_INDEX_FLUSH`], in one batch,
/// and all of them every [`bus::ROOM_INDEX_REFRESH`], which also forgets what no replica has
/// recorded for [`bus::ROOM_INDEX_TTL`].
async fn index_rooms(state: Shared) {
    let mut flush = tokio::time::interval(ROOM_INDEX_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(bus::ROOM_INDEX_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (rooms, prune) = tokio::select! {
            _ = flush.tick() => (state.membership.new_rooms(), false),
            _ = refresh.tick() => (state.membership.rooms(), true),
        };
        if rooms.is_empty() && !prune {
            continue;
        }
        if let Err(e) = state.bus.index_rooms(rooms, roomcast_publisher::wire::now_ms(), prune).await {
            tracing::debug!(error = %e, "rooms not indexed; the next refresh records them");
        }
    }
}

/// With the console on: reports this replica's status for its replica list every
/// [`bus::STATUS_EVERY`], for the gateway's life.
async fn report_status(state: Shared) {
    let mut tick = tokio::time::interval(bus::STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let status = console::status(&state);
        let now = roomcast_publisher::wire::now_ms();
        if let Err(e) = state.bus.report_status(state.delivery.node_id(), status, now).await {
            tracing::debug!(error = %e, "status not reported; the next tick tries again");
        }
    }
}

/// How long a starting replica waits for Redis to read the revocations before it serves.
const FIRST_REVOCATIONS: Duration = Duration::from_secs(2);

/// Reads the revocations once before the replica serves, retrying while Redis is still being
/// connected for up to [`FIRST_REVOCATIONS`]; the list's version, if read.
async fn first_revocations(state: &Shared) -> Option<String> {
    let deadline = tokio::time::Instant::now() + FIRST_REVOCATIONS;
    loop {
        let now = roomcast_publisher::wire::now_ms();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(Ok(Some((version, list)))) = tokio::time::timeout(left, state.bus.revocations(None, now)).await {
            state.revocations.merge(list, now);
            return Some(version);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("revocations not read before serving (Redis unreachable): read once it is back");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backend API: `/v1/...` and `/openapi.json`, on the API listener (and on the public one
/// with `ROOMCAST_PUBLIC_API`).
fn api_router(state: Shared) -> Router {
    publish::router(state.clone())
        .merge(history_api::router(state.clone()))
        .merge(occupancy_api::router(state.clone()))
        .merge(control_api::router(state))
        .merge(http::openapi_route())
        .fallback(http::not_found)
}

async fn bind(addr: SocketAddr, option: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { option, addr, source })
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
    Gateway::bind(config).await?.run(shutdown).await
}

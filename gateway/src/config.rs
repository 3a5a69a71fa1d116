//! Configuration: one clap struct, every option a flag, an environment variable and a doc line.
//!
//! `roomcast-gateway --help` is the reference; a test keeps the README's table listing the
//! same environment variables. [`Config::validate`] turns option combinations that cannot work into one
//! [`ConfigError`] naming the option, so a misconfigured replica stops at startup instead of
//! failing on its first connection.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use axum::http::HeaderValue;
use clap::{Parser, ValueEnum};
use roomcast_publisher::wire;

use crate::limits::{Policy, Rate};

/// Shortest HMAC secret accepted, in bytes. RFC 7518 §3.2 requires a key at least as long as
/// the hash output for HS256; a shorter one is brute-forceable offline from any captured token.
pub const MIN_SECRET_LEN: usize = 32;

/// The environment variable of each option, named once: validation errors and the modules that
/// load keys name the option with these.
pub mod env {
    /// `ROOMCAST_LISTEN`.
    pub const LISTEN: &str = "ROOMCAST_LISTEN";
    /// `ROOMCAST_ADMIN_LISTEN`.
    pub const ADMIN_LISTEN: &str = "ROOMCAST_ADMIN_LISTEN";
    /// `ROOMCAST_API_LISTEN`.
    pub const API_LISTEN: &str = "ROOMCAST_API_LISTEN";
    /// `ROOMCAST_PUBLIC_API`.
    pub const PUBLIC_API: &str = "ROOMCAST_PUBLIC_API";
    /// `ROOMCAST_READY_REQUIRES_REDIS`.
    pub const READY_REQUIRES_REDIS: &str = "ROOMCAST_READY_REQUIRES_REDIS";
    /// `ROOMCAST_REDIS_URL`.
    pub const REDIS_URL: &str = "ROOMCAST_REDIS_URL";
    /// `ROOMCAST_REDIS_URL_FILE`.
    pub const REDIS_URL_FILE: &str = "ROOMCAST_REDIS_URL_FILE";
    /// `ROOMCAST_REDIS_PASSWORD_FILE`.
    pub const REDIS_PASSWORD_FILE: &str = "ROOMCAST_REDIS_PASSWORD_FILE";
    /// `ROOMCAST_REDIS_CA_FILE`.
    pub const REDIS_CA_FILE: &str = "ROOMCAST_REDIS_CA_FILE";
    /// `ROOMCAST_JWT_JWKS_URL`.
    pub const JWKS_URL: &str = "ROOMCAST_JWT_JWKS_URL";
    /// `ROOMCAST_JWT_JWKS_REFRESH`.
    pub const JWKS_REFRESH: &str = "ROOMCAST_JWT_JWKS_REFRESH";
    /// `ROOMCAST_JWT_JWKS_MIN_INTERVAL`.
    pub const JWKS_MIN_INTERVAL: &str = "ROOMCAST_JWT_JWKS_MIN_INTERVAL";
    /// `ROOMCAST_MAX_TOKEN_LIFETIME`.
    pub const MAX_TOKEN_LIFETIME: &str = "ROOMCAST_MAX_TOKEN_LIFETIME";
    /// `ROOMCAST_MAX_REVOCATIONS_PER_TENANT`.
    pub const MAX_REVOCATIONS_PER_TENANT: &str = "ROOMCAST_MAX_REVOCATIONS_PER_TENANT";
    /// `ROOMCAST_JWT_ISSUERS_FILE`.
    pub const ISSUERS_FILE: &str = "ROOMCAST_JWT_ISSUERS_FILE";
    /// `ROOMCAST_REDIS_PREFIX`.
    pub const REDIS_PREFIX: &str = "ROOMCAST_REDIS_PREFIX";
    /// `ROOMCAST_REDIS_COMMAND_TIMEOUT`.
    pub const REDIS_COMMAND_TIMEOUT: &str = "ROOMCAST_REDIS_COMMAND_TIMEOUT";
    /// `ROOMCAST_REDIS_BUFFER`.
    pub const REDIS_BUFFER: &str = "ROOMCAST_REDIS_BUFFER";
    /// `ROOMCAST_CLIENT_BUFFER`.
    pub const CLIENT_BUFFER: &str = "ROOMCAST_CLIENT_BUFFER";
    /// `ROOMCAST_CLIENT_BUFFER_BYTES`.
    pub const CLIENT_BUFFER_BYTES: &str = "ROOMCAST_CLIENT_BUFFER_BYTES";
    /// `ROOMCAST_API_KEY`.
    pub const API_KEY: &str = "ROOMCAST_API_KEY";
    /// `ROOMCAST_API_KEY_FILE`.
    pub const API_KEY_FILE: &str = "ROOMCAST_API_KEY_FILE";
    /// `ROOMCAST_CONSOLE_TOKENS`.
    pub const CONSOLE_TOKENS: &str = "ROOMCAST_CONSOLE_TOKENS";
    /// `ROOMCAST_CONSOLE_TOKENS_FILE`.
    pub const CONSOLE_TOKENS_FILE: &str = "ROOMCAST_CONSOLE_TOKENS_FILE";
    /// `ROOMCAST_TENANT_API_KEYS_FILE`.
    pub const TENANT_API_KEYS_FILE: &str = "ROOMCAST_TENANT_API_KEYS_FILE";
    /// `ROOMCAST_PUBLISH_MAX_PAYLOAD`.
    pub const PUBLISH_MAX_PAYLOAD: &str = "ROOMCAST_PUBLISH_MAX_PAYLOAD";
    /// `ROOMCAST_PUBLISH_MAX_BATCH`.
    pub const PUBLISH_MAX_BATCH: &str = "ROOMCAST_PUBLISH_MAX_BATCH";
    /// `ROOMCAST_HISTORY_SIZE`.
    pub const HISTORY_SIZE: &str = "ROOMCAST_HISTORY_SIZE";
    /// `ROOMCAST_HISTORY_TTL`.
    pub const HISTORY_TTL: &str = "ROOMCAST_HISTORY_TTL";
    /// `ROOMCAST_PRESENCE_GRACE`.
    pub const PRESENCE_GRACE: &str = "ROOMCAST_PRESENCE_GRACE";
    /// `ROOMCAST_EVENTS`.
    pub const EVENTS: &str = "ROOMCAST_EVENTS";
    /// `ROOMCAST_EVENTS_STREAM`.
    pub const EVENTS_STREAM: &str = "ROOMCAST_EVENTS_STREAM";
    /// `ROOMCAST_EVENTS_BUFFER`.
    pub const EVENTS_BUFFER: &str = "ROOMCAST_EVENTS_BUFFER";
    /// `ROOMCAST_WEBHOOK_URL`.
    pub const WEBHOOK_URL: &str = "ROOMCAST_WEBHOOK_URL";
    /// `ROOMCAST_WEBHOOK_SECRET`.
    pub const WEBHOOK_SECRET: &str = "ROOMCAST_WEBHOOK_SECRET";
    /// `ROOMCAST_WEBHOOK_SECRET_FILE`.
    pub const WEBHOOK_SECRET_FILE: &str = "ROOMCAST_WEBHOOK_SECRET_FILE";
    /// `ROOMCAST_WEBHOOK_BATCH_SIZE`.
    pub const WEBHOOK_BATCH_SIZE: &str = "ROOMCAST_WEBHOOK_BATCH_SIZE";
    /// `ROOMCAST_WEBHOOK_BATCH_WAIT`.
    pub const WEBHOOK_BATCH_WAIT: &str = "ROOMCAST_WEBHOOK_BATCH_WAIT";
    /// `ROOMCAST_WEBHOOK_TIMEOUT`.
    pub const WEBHOOK_TIMEOUT: &str = "ROOMCAST_WEBHOOK_TIMEOUT";
    /// `ROOMCAST_WEBHOOK_RETRY_MAX`.
    pub const WEBHOOK_RETRY_MAX: &str = "ROOMCAST_WEBHOOK_RETRY_MAX";
    /// `ROOMCAST_RPC_URL`.
    pub const RPC_URL: &str = "ROOMCAST_RPC_URL";
    /// `ROOMCAST_RPC_ROUTES`.
    pub const RPC_ROUTES: &str = "ROOMCAST_RPC_ROUTES";
    /// `ROOMCAST_RPC_EVENTS`.
    pub const RPC_EVENTS: &str = "ROOMCAST_RPC_EVENTS";
    /// `ROOMCAST_RPC_CLAIMS`.
    pub const RPC_CLAIMS: &str = "ROOMCAST_RPC_CLAIMS";
    /// `ROOMCAST_RPC_SECRET`.
    pub const RPC_SECRET: &str = "ROOMCAST_RPC_SECRET";
    /// `ROOMCAST_RPC_SECRET_FILE`.
    pub const RPC_SECRET_FILE: &str = "ROOMCAST_RPC_SECRET_FILE";
    /// `ROOMCAST_RPC_TIMEOUT`.
    pub const RPC_TIMEOUT: &str = "ROOMCAST_RPC_TIMEOUT";
    /// `ROOMCAST_RPC_SOCKET_CONCURRENCY`.
    pub const RPC_SOCKET_CONCURRENCY: &str = "ROOMCAST_RPC_SOCKET_CONCURRENCY";
    /// `ROOMCAST_RPC_TENANT_CONCURRENCY`.
    pub const RPC_TENANT_CONCURRENCY: &str = "ROOMCAST_RPC_TENANT_CONCURRENCY";
    /// `ROOMCAST_RPC_CONCURRENCY`.
    pub const RPC_CONCURRENCY: &str = "ROOMCAST_RPC_CONCURRENCY";
    /// `ROOMCAST_PRESENCE_LEASE_TTL`.
    pub const PRESENCE_LEASE_TTL: &str = "ROOMCAST_PRESENCE_LEASE_TTL";
    /// `ROOMCAST_PRESENCE_PAGE_MAX`.
    pub const PRESENCE_PAGE_MAX: &str = "ROOMCAST_PRESENCE_PAGE_MAX";
    /// `ROOMCAST_TYPING_THROTTLE`.
    pub const TYPING_THROTTLE: &str = "ROOMCAST_TYPING_THROTTLE";
    /// `ROOMCAST_TYPING_TTL`.
    pub const TYPING_TTL: &str = "ROOMCAST_TYPING_TTL";
    /// `ROOMCAST_JWT_SECRET`.
    pub const JWT_SECRET: &str = "ROOMCAST_JWT_SECRET";
    /// `ROOMCAST_JWT_SECRET_FILE`.
    pub const JWT_SECRET_FILE: &str = "ROOMCAST_JWT_SECRET_FILE";
    /// `ROOMCAST_JWT_PUBLIC_KEY_FILE`.
    pub const JWT_PUBLIC_KEY_FILE: &str = "ROOMCAST_JWT_PUBLIC_KEY_FILE";
    /// `ROOMCAST_JWKS_FILE`.
    pub const JWKS_FILE: &str = "ROOMCAST_JWKS_FILE";
    /// `ROOMCAST_JWT_ISSUER`.
    pub const JWT_ISSUER: &str = "ROOMCAST_JWT_ISSUER";
    /// `ROOMCAST_JWT_AUDIENCE`.
    pub const JWT_AUDIENCE: &str = "ROOMCAST_JWT_AUDIENCE";
    /// `ROOMCAST_JWT_LEEWAY`.
    pub const JWT_LEEWAY: &str = "ROOMCAST_JWT_LEEWAY";
    /// `ROOMCAST_JWT_USER_CLAIM`.
    pub const JWT_USER_CLAIM: &str = "ROOMCAST_JWT_USER_CLAIM";
    /// `ROOMCAST_JWT_TENANT_CLAIM`.
    pub const JWT_TENANT_CLAIM: &str = "ROOMCAST_JWT_TENANT_CLAIM";
    /// `ROOMCAST_JWT_PROJECTS_CLAIM`.
    pub const JWT_PROJECTS_CLAIM: &str = "ROOMCAST_JWT_PROJECTS_CLAIM";
    /// `ROOMCAST_JWT_CHANNELS_CLAIM`.
    pub const JWT_CHANNELS_CLAIM: &str = "ROOMCAST_JWT_CHANNELS_CLAIM";
    /// `ROOMCAST_JWT_PUBLISH_CLAIM`.
    pub const JWT_PUBLISH_CLAIM: &str = "ROOMCAST_JWT_PUBLISH_CLAIM";
    /// `ROOMCAST_PUBLISH_PROXY_URL`.
    pub const PUBLISH_PROXY_URL: &str = "ROOMCAST_PUBLISH_PROXY_URL";
    /// `ROOMCAST_CONNECT_PROXY_URL`.
    pub const CONNECT_PROXY_URL: &str = "ROOMCAST_CONNECT_PROXY_URL";
    /// `ROOMCAST_SUBSCRIBE_PROXY_URL`.
    pub const SUBSCRIBE_PROXY_URL: &str = "ROOMCAST_SUBSCRIBE_PROXY_URL";
    /// `ROOMCAST_CONNECT_PROXY_CACHE_TTL`.
    pub const CONNECT_PROXY_CACHE_TTL: &str = "ROOMCAST_CONNECT_PROXY_CACHE_TTL";
    /// `ROOMCAST_CONNECT_PROXY_CACHE_SIZE`.
    pub const CONNECT_PROXY_CACHE_SIZE: &str = "ROOMCAST_CONNECT_PROXY_CACHE_SIZE";
    /// `ROOMCAST_CONNECT_PROXY_MODE`.
    pub const CONNECT_PROXY_MODE: &str = "ROOMCAST_CONNECT_PROXY_MODE";
    /// `ROOMCAST_CONNECT_PROXY_FAILURE`.
    pub const CONNECT_PROXY_FAILURE: &str = "ROOMCAST_CONNECT_PROXY_FAILURE";
    /// `ROOMCAST_AUTH_EXPIRING_NOTICE`.
    pub const AUTH_EXPIRING_NOTICE: &str = "ROOMCAST_AUTH_EXPIRING_NOTICE";
    /// `ROOMCAST_MAX_ROOMS_PER_SOCKET`.
    pub const MAX_ROOMS_PER_SOCKET: &str = "ROOMCAST_MAX_ROOMS_PER_SOCKET";
    /// `ROOMCAST_HISTORY_MAX_ROOMS`.
    pub const HISTORY_MAX_ROOMS: &str = "ROOMCAST_HISTORY_MAX_ROOMS";
    /// `ROOMCAST_HISTORY_MAX_BYTES`.
    pub const HISTORY_MAX_BYTES: &str = "ROOMCAST_HISTORY_MAX_BYTES";
    /// `ROOMCAST_MAX_CONNECTIONS_PER_USER`.
    pub const MAX_CONNECTIONS_PER_USER: &str = "ROOMCAST_MAX_CONNECTIONS_PER_USER";
    /// `ROOMCAST_MAX_CONNECTIONS_PER_TENANT`.
    pub const MAX_CONNECTIONS_PER_TENANT: &str = "ROOMCAST_MAX_CONNECTIONS_PER_TENANT";
    /// `ROOMCAST_PRESENCE_QUEUE_PER_TENANT`.
    pub const PRESENCE_QUEUE_PER_TENANT: &str = "ROOMCAST_PRESENCE_QUEUE_PER_TENANT";
    /// `ROOMCAST_MAX_HEADER_BYTES`.
    pub const MAX_HEADER_BYTES: &str = "ROOMCAST_MAX_HEADER_BYTES";
    /// `ROOMCAST_CONNECT_RATE`.
    pub const CONNECT_RATE: &str = "ROOMCAST_CONNECT_RATE";
    /// `ROOMCAST_PUBLISH_DEDUPE_WINDOW`.
    pub const PUBLISH_DEDUPE_WINDOW: &str = "ROOMCAST_PUBLISH_DEDUPE_WINDOW";
    /// `ROOMCAST_RATE_ROOMS`.
    pub const RATE_ROOMS: &str = "ROOMCAST_RATE_ROOMS";
    /// `ROOMCAST_RATE_PRESENCE_UPDATE`.
    pub const RATE_PRESENCE_UPDATE: &str = "ROOMCAST_RATE_PRESENCE_UPDATE";
    /// `ROOMCAST_RATE_PRESENCE_LIST`.
    pub const RATE_PRESENCE_LIST: &str = "ROOMCAST_RATE_PRESENCE_LIST";
    /// `ROOMCAST_RATE_TYPING`.
    pub const RATE_TYPING: &str = "ROOMCAST_RATE_TYPING";
    /// `ROOMCAST_RATE_REFRESH`.
    pub const RATE_REFRESH: &str = "ROOMCAST_RATE_REFRESH";
    /// `ROOMCAST_RATE_OTHER`.
    pub const RATE_OTHER: &str = "ROOMCAST_RATE_OTHER";
    /// `ROOMCAST_RATE_LIMIT_DISCONNECT`.
    pub const RATE_LIMIT_DISCONNECT: &str = "ROOMCAST_RATE_LIMIT_DISCONNECT";
    /// `ROOMCAST_MAX_PAYLOAD`.
    pub const MAX_PAYLOAD: &str = "ROOMCAST_MAX_PAYLOAD";
    /// `ROOMCAST_PING_INTERVAL`.
    pub const PING_INTERVAL: &str = "ROOMCAST_PING_INTERVAL";
    /// `ROOMCAST_PING_TIMEOUT`.
    pub const PING_TIMEOUT: &str = "ROOMCAST_PING_TIMEOUT";
    /// `ROOMCAST_CONNECT_TIMEOUT`.
    pub const CONNECT_TIMEOUT: &str = "ROOMCAST_CONNECT_TIMEOUT";
    /// `ROOMCAST_CORS_ORIGINS`.
    pub const CORS_ORIGINS: &str = "ROOMCAST_CORS_ORIGINS";
    /// `ROOMCAST_LOG_FORMAT`.
    pub const LOG_FORMAT: &str = "ROOMCAST_LOG_FORMAT";
    /// `ROOMCAST_LOG`.
    pub const LOG: &str = "ROOMCAST_LOG";
    /// `ROOMCAST_DRAIN_DELAY`.
    pub const DRAIN_DELAY: &str = "ROOMCAST_DRAIN_DELAY";
    /// `ROOMCAST_SHUTDOWN_TIMEOUT`.
    pub const SHUTDOWN_TIMEOUT: &str = "ROOMCAST_SHUTDOWN_TIMEOUT";
    /// `ROOMCAST_DEV`.
    pub const DEV: &str = "ROOMCAST_DEV";
    /// `ROOMCAST_DEBUG_OPERATION_DELAY`.
    pub const DEBUG_OPERATION_DELAY: &str = "ROOMCAST_DEBUG_OPERATION_DELAY";
}

/// `ROOMCAST_HISTORY_MAX_ROOMS` unless configured.
pub const DEFAULT_HISTORY_MAX_ROOMS: usize = 100_000;

/// `ROOMCAST_HISTORY_MAX_BYTES` unless configured.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 256 * 1024 * 1024;

/// The gateway's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomcast-gateway",
    version,
    about = "Roomcast: a horizontally scaled Socket.IO gateway with JWT auth and tenant rooms.",
    after_help = "Every option can also be set through the environment variable shown beside it."
)]
pub struct Config {
    /// Address for Socket.IO (path /socket.io), the one port clients reach.
    #[arg(long, env = env::LISTEN, default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Address for the backend HTTP API (/v1/..., /openapi.json): keep it internal (a
    /// ClusterIP Service, never the Ingress), like Centrifugo's internal port.
    #[arg(long, env = env::API_LISTEN, default_value = "0.0.0.0:3001")]
    pub api_listen: SocketAddr,

    /// Also serve the backend HTTP API on the public listener (as before 0.3), for setups
    /// that cannot reach a second port; the API key still guards it.
    #[arg(long, env = env::PUBLIC_API)]
    pub public_api: bool,

    /// Address for the operator endpoints: /healthz, /readyz and /metrics.
    #[arg(long, env = env::ADMIN_LISTEN, default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// Redis for a cluster of replicas: redis://, rediss:// (TLS), redis-cluster://host:port
    /// (Redis Cluster, sharded pub/sub) or redis-sentinel://. Unset: single node, in-memory bus.
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Make /readyz fail while Redis is unreachable. Off by default: Redis is shared by every
    /// replica, so one blip would take them all out of service at once; a replica without
    /// Redis runs degraded (connects and local delivery work, publishes answer 503/504).
    #[arg(long, env = env::READY_REQUIRES_REDIS)]
    pub ready_requires_redis: bool,

    /// File holding the Redis URL (trailing newline ignored), instead of ROOMCAST_REDIS_URL: for
    /// a URL kept in a mounted secret.
    #[arg(long, env = env::REDIS_URL_FILE)]
    pub redis_url_file: Option<PathBuf>,

    /// File holding the Redis password (trailing newline ignored), e.g. the `redis-password`
    /// key of a Bitnami or Valkey chart's secret; overrides a password in the URL.
    #[arg(long, env = env::REDIS_PASSWORD_FILE)]
    pub redis_password_file: Option<PathBuf>,

    /// PEM bundle of the CAs that sign the Redis server's certificate (rediss:// only); replaces
    /// the system's CA store for Redis.
    #[arg(long, env = env::REDIS_CA_FILE)]
    pub redis_ca_file: Option<PathBuf>,

    /// Prefix of every Redis channel and key Roomcast uses; publishers must use the same.
    #[arg(long, env = env::REDIS_PREFIX, default_value = wire::DEFAULT_PREFIX)]
    pub redis_prefix: String,

    /// Timeout of each Redis command: a publish or subscribe that takes longer fails instead of hanging.
    #[arg(long, env = env::REDIS_COMMAND_TIMEOUT, default_value = "2s", value_parser = parse_duration)]
    pub redis_command_timeout: Duration,

    /// Messages buffered between the Redis subscriber connection and delivery; a reader that
    /// falls further behind loses messages, counted in roomcast_bus_lagged_messages_total.
    #[arg(long, env = env::REDIS_BUFFER, default_value_t = 16_384)]
    pub redis_buffer: usize,

    /// Packets queued per socket: a socket with this many waiting reads slower than events
    /// arrive and is disconnected as a slow consumer (like ROOMCAST_CLIENT_BUFFER_BYTES).
    /// Memory is only used by sockets that fall behind.
    #[arg(long, env = env::CLIENT_BUFFER, default_value_t = 1_024)]
    pub client_buffer: usize,

    /// Bytes of messages queued per socket: a socket holding more is disconnected as a slow
    /// consumer (roomcast_disconnects_total{reason="slow_consumer"}); the event that found it
    /// full is lost for it (roomcast_client_buffer_full_total) and it recovers on reconnect.
    #[arg(long, env = env::CLIENT_BUFFER_BYTES, default_value_t = 1 << 20)]
    pub client_buffer_bytes: usize,

    /// Keys that authorize the backend API for every tenant (comma-separated, so keys can
    /// rotate; 16+ chars). Unset (and no key file): the HTTP API is disabled.
    #[arg(long, env = env::API_KEY, value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<Secret>,

    /// File with API keys for every tenant, one per line (or comma-separated); for mounted secrets.
    #[arg(long, env = env::API_KEY_FILE)]
    pub api_key_file: Option<PathBuf>,

    /// JSON file of tenant-scoped API keys, {"keys": [{"key": "...", "tenants": ["acme"]}]}: such
    /// a key publishes to and reads only its tenants (403 forbidden for others).
    #[arg(long, env = env::TENANT_API_KEYS_FILE)]
    pub tenant_api_keys_file: Option<PathBuf>,

    /// Largest event payload (`data`, as JSON) accepted from publishers, HTTP or Redis, in bytes.
    #[arg(long, env = env::PUBLISH_MAX_PAYLOAD, default_value_t = wire::DEFAULT_MAX_PAYLOAD)]
    pub publish_max_payload: usize,

    /// Most events in one POST /v1/publish batch.
    #[arg(long, env = env::PUBLISH_MAX_BATCH, default_value_t = 100)]
    pub publish_max_batch: usize,

    /// How long an event id given in a POST /v1/publish body is remembered: a publish retried
    /// with the same id within it is delivered once and answered with the first receipt.
    #[arg(long, env = env::PUBLISH_DEDUPE_WINDOW, default_value = "5m", value_parser = parse_duration)]
    pub publish_dedupe_window: Duration,

    /// Events each room keeps so clients and replicas can recover what they missed; 0 turns
    /// history off (no offsets, no recovery; publishing is then a plain PUBLISH).
    #[arg(long, env = env::HISTORY_SIZE, default_value_t = wire::DEFAULT_HISTORY_SIZE)]
    pub history_size: u32,

    /// How long an event stays in history; an idle room's history expires this long after its last event.
    #[arg(long, env = env::HISTORY_TTL, default_value = "5m", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// Single node (no Redis): most rooms the in-memory history keeps an entry for (rooms that
    /// were joined or published to). Beyond it the least recently active rooms are forgotten
    /// (their clients get `recovered: false`), counted in roomcast_history_rooms_evicted_total.
    #[arg(long, env = env::HISTORY_MAX_ROOMS, default_value_t = DEFAULT_HISTORY_MAX_ROOMS)]
    pub history_max_rooms: usize,

    /// Single node (no Redis): most bytes of events the in-memory history keeps, all rooms
    /// together; beyond it the least recently active rooms are forgotten. With Redis, its
    /// maxmemory bounds history.
    #[arg(long, env = env::HISTORY_MAX_BYTES, default_value_t = DEFAULT_HISTORY_MAX_BYTES)]
    pub history_max_bytes: usize,

    /// A user whose last connection leaves a room and is back within this time (a page reload)
    /// produces neither presence:leave nor presence:join.
    #[arg(long, env = env::PRESENCE_GRACE, default_value = "3s", value_parser = parse_duration)]
    pub presence_grace: Duration,

    /// Lifecycle event types to emit when a sink is set (comma-separated): all, or any of
    /// user.online, user.offline, room.occupied, room.vacated, member.joined, member.left,
    /// token.refresh_failed, connection.refused.
    #[arg(long, env = env::EVENTS, default_value = "all", value_delimiter = ',')]
    pub events: Vec<String>,

    /// Write lifecycle events to the Redis Stream `{prefix}:{events}` for backends to read with
    /// their own consumer group (needs Redis; webhooks use the stream too).
    #[arg(long, env = env::EVENTS_STREAM, default_value_t = false)]
    pub events_stream: bool,

    /// Lifecycle events kept for the sinks (the stream's length, or in memory on a single node):
    /// the webhook queue's bound. Events trimmed before a webhook got them are counted in
    /// roomcast_webhook_dropped_total.
    #[arg(long, env = env::EVENTS_BUFFER, default_value_t = 100_000)]
    pub events_buffer: u64,

    /// URLs lifecycle events are POSTed to in signed batches (comma-separated); each gets every
    /// event.
    #[arg(long, env = env::WEBHOOK_URL, value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// The secret webhook batches are signed with (HMAC-SHA256; at least 32 bytes).
    #[arg(long, env = env::WEBHOOK_SECRET, hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// File holding the webhook secret (trailing newline ignored); for mounted secrets.
    #[arg(long, env = env::WEBHOOK_SECRET_FILE)]
    pub webhook_secret_file: Option<PathBuf>,

    /// Most events in one webhook request.
    #[arg(long, env = env::WEBHOOK_BATCH_SIZE, default_value_t = 100)]
    pub webhook_batch_size: usize,

    /// How long a partial webhook batch waits for more events.
    #[arg(long, env = env::WEBHOOK_BATCH_WAIT, default_value = "200ms", value_parser = parse_duration)]
    pub webhook_batch_wait: Duration,

    /// One webhook request's timeout.
    #[arg(long, env = env::WEBHOOK_TIMEOUT, default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// The longest delay between two attempts at a batch (retries back off exponentially from
    /// 250ms, with jitter, and go on while the events are kept).
    #[arg(long, env = env::WEBHOOK_RETRY_MAX, default_value = "30s", value_parser = parse_duration)]
    pub webhook_retry_max: Duration,

    /// Backend URL client events are forwarded to (RPC): a client event named in
    /// ROOMCAST_RPC_EVENTS and emitted with an ack callback is POSTed here, signed, and the
    /// backend's answer becomes the ack; without a callback it is forwarded once,
    /// fire-and-forget. Unset (and no route matching): such events are `unknown_event`.
    #[arg(long, env = env::RPC_URL)]
    pub rpc_url: Option<String>,

    /// Backend URLs per event-name prefix, `prefix=url` comma-separated
    /// (`billing:=http://billing/rpc`): the longest matching prefix wins, else ROOMCAST_RPC_URL.
    #[arg(long, env = env::RPC_ROUTES, value_delimiter = ',')]
    pub rpc_routes: Vec<String>,

    /// Which client events are forwarded (comma-separated): names, or prefixes ending in `*`;
    /// `*` is every name Roomcast does not answer itself. Roomcast's own (join, leave, typing,
    /// presence:*, history, room:occupancy, auth:refresh, publish, roomcast:*) and Socket.IO's
    /// (connect, disconnect, …) never are.
    #[arg(long, env = env::RPC_EVENTS, default_value = "*", value_delimiter = ',')]
    pub rpc_events: Vec<String>,

    /// Token claims forwarded to the backend with each RPC and proxy request, under
    /// `identity.claims` (comma-separated names; at most 4 KiB of them, as JSON, per
    /// connection: claims past that are left out). Empty: none.
    #[arg(long, env = env::RPC_CLAIMS, value_delimiter = ',')]
    pub rpc_claims: Vec<String>,

    /// The secret forwarded client events are signed with, as webhooks are (HMAC-SHA256 in
    /// Roomcast-Signature; at least 32 bytes). Required with RPC.
    #[arg(long, env = env::RPC_SECRET, hide_env_values = true)]
    pub rpc_secret: Option<Secret>,

    /// File holding the RPC secret (trailing newline ignored); for mounted secrets.
    #[arg(long, env = env::RPC_SECRET_FILE)]
    pub rpc_secret_file: Option<PathBuf>,

    /// How long the gateway waits for the backend's answer to an RPC; then `rpc_timeout`.
    #[arg(long, env = env::RPC_TIMEOUT, default_value = "5s", value_parser = parse_duration)]
    pub rpc_timeout: Duration,

    /// RPCs one socket may have in flight; more are refused with `rate_limited`.
    #[arg(long, env = env::RPC_SOCKET_CONCURRENCY, default_value_t = 8)]
    pub rpc_socket_concurrency: usize,

    /// RPCs one tenant may have in flight on a replica; more are refused with `rate_limited`.
    #[arg(long, env = env::RPC_TENANT_CONCURRENCY, default_value_t = 256)]
    pub rpc_tenant_concurrency: usize,

    /// Backend URL that approves, refuses or rewrites each client `publish` before it is
    /// published (signed and bounded like RPCs: ROOMCAST_RPC_SECRET, ROOMCAST_RPC_TIMEOUT and the
    /// RPC concurrency bounds). Unset: a publish the token grants is published as sent.
    #[arg(long, env = env::PUBLISH_PROXY_URL)]
    pub publish_proxy_url: Option<String>,

    /// Backend URL asked at connect and at auth:refresh, once the token verified, whether the
    /// user may connect: it admits (optionally adding rooms or an earlier expiry) or refuses
    /// (`connect_error` `forbidden`). Signed and bounded like RPCs (needs ROOMCAST_RPC_SECRET).
    #[arg(long, env = env::CONNECT_PROXY_URL)]
    pub connect_proxy_url: Option<String>,

    /// Backend URL asked about a `join` of a project or channel the token does not grant: it
    /// allows the join or refuses it (`forbidden`). Signed and bounded like RPCs (needs
    /// ROOMCAST_RPC_SECRET); a backend that cannot answer refuses the join.
    #[arg(long, env = env::SUBSCRIBE_PROXY_URL)]
    pub subscribe_proxy_url: Option<String>,

    /// How long the connect proxy's answer for a token is reused (0: asked every time).
    #[arg(long, env = env::CONNECT_PROXY_CACHE_TTL, default_value = "30s", value_parser = parse_duration)]
    pub connect_proxy_cache_ttl: Duration,

    /// Most tokens whose connect proxy answers are kept (expired ones are dropped first).
    #[arg(long, env = env::CONNECT_PROXY_CACHE_SIZE, default_value_t = 100_000)]
    pub connect_proxy_cache_size: usize,

    /// `verified`: the token is verified as a JWT first, then the connect proxy admits it.
    /// `proxy_only`, for apps without JWTs: the connect proxy gets what the client sent (its
    /// token, any string, and its Cookie header) and answers who it is; no token key is needed.
    #[arg(long, env = env::CONNECT_PROXY_MODE, default_value = "verified", value_parser = ["verified", "proxy_only"])]
    pub connect_proxy_mode: String,

    /// What a connect does when the connect proxy cannot answer (down, failing, late): `closed`
    /// refuses it (`rpc_unavailable` or `rpc_timeout`), `open` admits it on the token alone.
    #[arg(long, env = env::CONNECT_PROXY_FAILURE, default_value = "closed", value_parser = ["closed", "open"])]
    pub connect_proxy_failure: String,

    /// RPCs a replica has in flight at most; more are refused with `rate_limited`.
    #[arg(long, env = env::RPC_CONCURRENCY, default_value_t = 1024)]
    pub rpc_concurrency: usize,

    /// A replica that has not renewed its presence lease for this long is dead: the others
    /// announce presence:leave for its users (within this time plus about a second).
    #[arg(long, env = env::PRESENCE_LEASE_TTL, default_value = "10s", value_parser = parse_duration)]
    pub presence_lease_ttl: Duration,

    /// Most users one presence:list page returns (clients page with offset/limit).
    #[arg(long, env = env::PRESENCE_PAGE_MAX, default_value_t = 1_000)]
    pub presence_page_max: u64,

    /// Presence changes (joins, leaves, status) waiting for the store, per tenant. Tenants are
    /// served in turn, so one tenant's backlog delays only itself; beyond this its joins and
    /// `presence:update`s get `rate_limited` (leaves are always taken).
    #[arg(long, env = env::PRESENCE_QUEUE_PER_TENANT, default_value_t = 10_000)]
    pub presence_queue_per_tenant: usize,

    /// Most concurrent connections of one user, cluster-wide (every tab is one); beyond it
    /// connect_error `too_many_connections`. 0: no limit.
    #[arg(long, env = env::MAX_CONNECTIONS_PER_USER, default_value_t = 100)]
    pub max_connections_per_user: u32,

    /// Most concurrent connections of one tenant, cluster-wide; beyond it connect_error
    /// `too_many_connections`. 0: no limit.
    #[arg(long, env = env::MAX_CONNECTIONS_PER_TENANT, default_value_t = 0)]
    pub max_connections_per_tenant: u32,

    /// Repeated typing: true from one user in one channel is broadcast at most once per this interval.
    #[arg(long, env = env::TYPING_THROTTLE, default_value = "2s", value_parser = parse_duration)]
    pub typing_throttle: Duration,

    /// How long a typing indicator lasts without a refresh (announced to clients as ttlMs).
    #[arg(long, env = env::TYPING_TTL, default_value = "6s", value_parser = parse_duration)]
    pub typing_ttl: Duration,

    /// HMAC secret (HS256/HS384/HS512) that signs client tokens; at least 32 bytes.
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// File holding the HMAC secret (trailing newline ignored); for mounted secrets.
    #[arg(long, env = env::JWT_SECRET_FILE)]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) that verifies RS*/PS*/ES*/EdDSA tokens.
    #[arg(long, env = env::JWT_PUBLIC_KEY_FILE)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWKS file ({"keys":[...]}); a token's `kid` header selects the key, so keys can rotate.
    #[arg(long, env = env::JWKS_FILE)]
    pub jwks_file: Option<PathBuf>,

    /// JWKS URL of an identity provider (Auth0, Keycloak, Cognito…): fetched at startup, then
    /// refreshed (honouring Cache-Control max-age within ROOMCAST_JWT_JWKS_REFRESH), refetched
    /// when a token names an unknown `kid`; the last good set is kept while the IdP is down.
    #[arg(long, env = env::JWKS_URL)]
    pub jwt_jwks_url: Option<String>,

    /// The longest a fetched key set is used before it is fetched again.
    #[arg(long, env = env::JWKS_REFRESH, default_value = "5m", value_parser = parse_duration)]
    pub jwt_jwks_refresh: Duration,

    /// The least time between two fetches of one key set: unknown-`kid` refetches and retries
    /// while the IdP is down are rate-limited to this.
    #[arg(long, env = env::JWKS_MIN_INTERVAL, default_value = "10s", value_parser = parse_duration)]
    pub jwt_jwks_min_interval: Duration,

    /// JSON file of trusted issuers, each with its own key source, for apps where tenants bring
    /// their own identity provider: {"issuers": [{"issuer", "jwks_url" | "jwks_file" |
    /// "public_key_file", "audiences", "tenants"}]}. A token's `iss` picks its entry; `tenants`
    /// limits which tenants an issuer may vouch for.
    #[arg(long, env = env::ISSUERS_FILE)]
    pub jwt_issuers_file: Option<PathBuf>,

    /// The longest a token may be valid: its `exp` at most this far from its `iat` and from now
    /// (longer: `token_invalid`). Revocations are kept this long. 1m to 30d.
    #[arg(long, env = env::MAX_TOKEN_LIFETIME, default_value = "24h", value_parser = parse_duration)]
    pub max_token_lifetime: Duration,

    /// Revocations a tenant may have in force at once (`POST /v1/revoke`); more answer 429
    /// `too_many_revocations`. Every replica holds them all in memory (about 200 bytes each).
    #[arg(long, env = env::MAX_REVOCATIONS_PER_TENANT, default_value_t = 10_000)]
    pub max_revocations_per_tenant: u64,

    /// Accepted `iss` values (comma-separated); when set, tokens must carry one of them.
    #[arg(long, env = env::JWT_ISSUER, value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Accepted `aud` values (comma-separated); when set, tokens must carry one of them.
    #[arg(long, env = env::JWT_AUDIENCE, value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = env::JWT_LEEWAY, default_value = "5s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Claim holding the user id.
    #[arg(long, env = env::JWT_USER_CLAIM, default_value = "sub")]
    pub jwt_user_claim: String,

    /// Claim holding the tenant id.
    #[arg(long, env = env::JWT_TENANT_CLAIM, default_value = "tenant")]
    pub jwt_tenant_claim: String,

    /// Claim listing the project ids the user may join; "*" means all of the tenant's.
    #[arg(long, env = env::JWT_PROJECTS_CLAIM, default_value = "projects")]
    pub jwt_projects_claim: String,

    /// Claim listing the channel ids the user may join; "*" means all of the tenant's.
    #[arg(long, env = env::JWT_CHANNELS_CLAIM, default_value = "channels")]
    pub jwt_channels_claim: String,

    /// Claim with the channel ids the user may `publish` to from a client (array of ids, or
    /// ["*"]); absent: none.
    #[arg(long, env = env::JWT_PUBLISH_CLAIM, default_value = "publish")]
    pub jwt_publish_claim: String,

    /// How long before its token's `exp` a socket receives `auth:expiring`.
    #[arg(long, env = env::AUTH_EXPIRING_NOTICE, default_value = "60s", value_parser = parse_duration)]
    pub auth_expiring_notice: Duration,

    /// Most project and channel rooms one socket may be in at once.
    #[arg(long, env = env::MAX_ROOMS_PER_SOCKET, default_value_t = 100)]
    pub max_rooms_per_socket: u32,

    /// Largest request target plus headers accepted on the public listener, in bytes (a
    /// Socket.IO handshake's included); beyond it: 431 `headers_too_large`. A WebSocket keeps
    /// its handshake's token for its whole life, so this bounds what each socket holds.
    #[arg(long, env = env::MAX_HEADER_BYTES, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// New Socket.IO connections this replica accepts, as N/s:BURST; beyond it they are refused
    /// with `connect_error` `rate_limited` (before the token is even checked), so a reconnect
    /// storm cannot starve the sockets already here. Unset: no limit.
    #[arg(long, env = env::CONNECT_RATE)]
    pub connect_rate: Option<Rate>,

    /// Per socket: `join` and `leave` allowed, as N/s:BURST (a token bucket: BURST at once, then
    /// N per second). Beyond it the event is refused with `rate_limited` and `retryAfterMs`.
    #[arg(long, env = env::RATE_ROOMS, default_value = "20/s:100")]
    pub rate_rooms: Rate,

    /// Per socket: `presence:update` allowed, as N/s:BURST.
    #[arg(long, env = env::RATE_PRESENCE_UPDATE, default_value = "2/s:5")]
    pub rate_presence_update: Rate,

    /// Per socket: `presence:list` allowed, as N/s:BURST.
    #[arg(long, env = env::RATE_PRESENCE_LIST, default_value = "5/s:10")]
    pub rate_presence_list: Rate,

    /// Per socket: `typing` allowed, as N/s:BURST; room for a client that sends one per
    /// keystroke (what reaches other members is throttled further by ROOMCAST_TYPING_THROTTLE).
    #[arg(long, env = env::RATE_TYPING, default_value = "20/s:40")]
    pub rate_typing: Rate,

    /// Per socket: `auth:refresh` allowed, as N/s:BURST.
    #[arg(long, env = env::RATE_REFRESH, default_value = "2/s:10")]
    pub rate_refresh: Rate,

    /// Per socket: every other client event (unknown ones included), as N/s:BURST.
    #[arg(long, env = env::RATE_OTHER, default_value = "20/s:40")]
    pub rate_other: Rate,

    /// A socket whose events keep being refused (at least once a second) for this long is
    /// disconnected with `roomcast:disconnect` `rate_limited`; 0 never disconnects.
    #[arg(long, env = env::RATE_LIMIT_DISCONNECT, default_value = "10s", value_parser = parse_duration)]
    pub rate_limit_disconnect: Duration,

    /// Largest Engine.IO payload a client may send, in bytes (handshake auth included).
    #[arg(long, env = env::MAX_PAYLOAD, default_value_t = 65_536)]
    pub max_payload: u64,

    /// Interval between Engine.IO pings.
    #[arg(long, env = env::PING_INTERVAL, default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How long a client has to answer a ping before it is disconnected.
    #[arg(long, env = env::PING_TIMEOUT, default_value = "20s", value_parser = parse_duration)]
    pub ping_timeout: Duration,

    /// How long an Engine.IO session may stay open without connecting to the namespace (the
    /// client's Socket.IO CONNECT, which carries its token). socket.io-client sends it at once;
    /// a session that never does only holds a connection (Node socket.io waits 45 s).
    #[arg(long, env = env::CONNECT_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Browser origins allowed to connect (comma-separated, e.g. https://app.example.com), or *.
    /// With a list, other origins get 403 (WebSocket included). Unset: no CORS headers and no
    /// Origin check (* under --dev).
    #[arg(long, env = env::CORS_ORIGINS, value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Log output format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `roomcast_gateway=debug`). The
    /// Socket.IO, WebSocket and Redis libraries never log below INFO: their packet dumps hold tokens.
    #[arg(long, env = env::LOG, default_value = "info")]
    pub log: String,

    /// After SIGTERM/SIGINT: how long to keep serving, unready, so load balancers stop routing here.
    #[arg(long, env = env::DRAIN_DELAY, default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After SIGTERM/SIGINT: the most the process takes to exit, drain delay included.
    #[arg(long, env = env::SHUTDOWN_TIMEOUT, default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Try-it-out mode: without a configured key, generate an HS256 secret and print a demo token.
    #[arg(long, env = env::DEV)]
    pub dev: bool,

    /// Tokens that open the console (`/console` on the admin listener), comma-separated:
    /// `TOKEN` sees every tenant, `TOKEN:acme;globex` only those. 32+ characters of A-Z a-z 0-9
    /// _ -. Unset: no console (every /console path is the coded 404).
    #[arg(long, env = env::CONSOLE_TOKENS, value_delimiter = ',', hide_env_values = true)]
    pub console_tokens: Vec<Secret>,

    /// File with console tokens, one per line (or comma-separated), in the format of
    /// ROOMCAST_CONSOLE_TOKENS; for mounted secrets. Adds to ROOMCAST_CONSOLE_TOKENS.
    #[arg(long, env = env::CONSOLE_TOKENS_FILE)]
    pub console_tokens_file: Option<PathBuf>,

    /// Print a 1-hour token for TENANT/USER (all projects and channels), signed with the
    /// configured HMAC secret, and exit; for trying a deployment out.
    #[arg(long, value_name = "TENANT/USER")]
    pub print_token: Option<String>,

    /// Testing only, hidden from `--help`: every client operation pauses this long once it is
    /// under way (a `join` after it entered the room, before its ack; the others before they act),
    /// so a test can land a disconnect inside it deterministically. Never set in production.
    #[arg(long, env = env::DEBUG_OPERATION_DELAY, hide = true, value_parser = parse_duration)]
    pub debug_operation_delay: Option<Duration>,
}

/// A console token and the tenants it may see (`None`: every tenant).
pub(crate) type ConsoleToken = (Secret, Option<Vec<String>>);

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A secret from the environment or the command line; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A configuration that cannot work, naming the option to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {option}: {message}")]
pub struct ConfigError {
    /// The environment variable (and so the option) at fault.
    pub option: std::borrow::Cow<'static, str>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(option: impl Into<std::borrow::Cow<'static, str>>, message: impl Into<String>) -> Self {
        ConfigError { option: option.into(), message: message.into() }
    }
}

/// A clap error about an option's value, as a [`ConfigError`] naming its environment variable.
fn value_error(e: &clap::Error) -> Option<ConfigError> {
    use clap::{
        CommandFactory,
        error::{ContextKind, ContextValue, ErrorKind},
    };
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    // "--listen <LISTEN>"
    let long = arg.trim_start_matches('-').split([' ', '=']).next()?;
    let command = Config::command();
    let env = command.get_arguments().find(|a| a.get_long() == Some(long))?.get_env()?.to_str()?.to_owned();
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let mut message = format!("invalid value {value:?}");
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        message.push_str(&format!(": expected one of {}", valid.join(", ")));
    } else if let Some(source) = std::error::Error::source(e) {
        message.push_str(&format!(": {source}"));
    }
    Some(ConfigError::new(env, message))
}

/// A secret kept in a file (a mounted Kubernetes secret): UTF-8, trailing newline ignored.
fn read_secret_file(option: &'static str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    let raw =
        std::fs::read(path).map_err(|e| ConfigError::new(option, format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(raw).map_err(|_| ConfigError::new(option, "the file is not UTF-8 text"))?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return Err(ConfigError::new(option, format!("{} is empty", path.display())));
    }
    Ok(Secret::from(text.to_owned()))
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Where the token-verification key comes from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource<'a> {
    Secret(&'a Secret),
    SecretFile(&'a PathBuf),
    PublicKeyFile(&'a PathBuf),
    JwksFile(&'a PathBuf),
    JwksUrl(&'a String),
    /// No default key: only the trusted issuers of `ROOMCAST_JWT_ISSUERS_FILE`.
    IssuersOnly,
    /// `--dev` without a key: the gateway generates one.
    DevGenerated,
}

impl Config {
    /// Parses the command line and environment; exits with clap's usage message on bad syntax.
    ///
    /// `--help`, `--version` and unknown arguments are clap's to answer (it prints and exits);
    /// a value that does not parse becomes one [`ConfigError`] line naming the environment
    /// variable, like every other configuration error, whether it came from a flag or from
    /// the environment.
    pub fn from_env_and_args() -> Result<Self, ConfigError> {
        Config::try_parse().map_err(|e| value_error(&e).unwrap_or_else(|| e.exit()))
    }

    /// A configuration with every default, for tests and embedding: listens on loopback port 0.
    pub fn for_tests(jwt_secret: &str) -> Self {
        let mut config = Config::parse_from(["roomcast-gateway"]);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.jwt_secret = Some(Secret(jwt_secret.to_owned()));
        config
    }

    /// Checks the option combinations; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.key_source()?;
        if self.max_rooms_per_socket == 0 {
            return Err(ConfigError::new(env::MAX_ROOMS_PER_SOCKET, "must be at least 1"));
        }
        if self.max_revocations_per_tenant == 0 {
            return Err(ConfigError::new(env::MAX_REVOCATIONS_PER_TENANT, "must be at least 1"));
        }
        let lifetimes = Duration::from_secs(60)..=Duration::from_secs(roomcast_publisher::wire::MAX_TOKEN_LIFETIME_S);
        if !lifetimes.contains(&self.max_token_lifetime) {
            return Err(ConfigError::new(env::MAX_TOKEN_LIFETIME, "must be between 1m and 30d"));
        }
        if self.max_payload < 1024 {
            return Err(ConfigError::new(
                env::MAX_PAYLOAD,
                "must be at least 1024 bytes (a handshake with a token must fit)",
            ));
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err(ConfigError::new(env::PING_INTERVAL, "ping interval and timeout must be above zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new(env::CONNECT_TIMEOUT, "must be above zero"));
        }
        if self.drain_delay >= self.shutdown_timeout {
            return Err(ConfigError::new(
                env::DRAIN_DELAY,
                format!(
                    "drain delay ({}) must be shorter than ROOMCAST_SHUTDOWN_TIMEOUT ({}) or clients are never told to move",
                    humantime::format_duration(self.drain_delay),
                    humantime::format_duration(self.shutdown_timeout)
                ),
            ));
        }
        for claim in [
            (env::JWT_USER_CLAIM, &self.jwt_user_claim),
            (env::JWT_TENANT_CLAIM, &self.jwt_tenant_claim),
            (env::JWT_PROJECTS_CLAIM, &self.jwt_projects_claim),
            (env::JWT_CHANNELS_CLAIM, &self.jwt_channels_claim),
            (env::JWT_PUBLISH_CLAIM, &self.jwt_publish_claim),
        ] {
            if claim.1.is_empty() {
                return Err(ConfigError::new(claim.0, "claim name must not be empty"));
            }
        }
        self.cors_allow_list()?;
        if let Some(url) = &self.redis_url()? {
            // fred parses the URL but takes any scheme for a standalone server, and its error text
            // can echo the URL (with a password), which must not be shown.
            const SCHEMES: &[&str] = &[
                "redis",
                "rediss",
                "redis-cluster",
                "rediss-cluster",
                "redis-sentinel",
                "rediss-sentinel",
                "valkey",
                "valkeys",
                "valkey-cluster",
                "valkeys-cluster",
                "valkey-sentinel",
                "valkeys-sentinel",
            ];
            let scheme_ok = url.expose().split_once("://").is_some_and(|(scheme, _)| SCHEMES.contains(&scheme));
            if !scheme_ok || fred::types::config::Config::from_url(url.expose()).is_err() {
                let option = if self.redis_url_file.is_some() { env::REDIS_URL_FILE } else { env::REDIS_URL };
                return Err(ConfigError::new(
                    option,
                    "not a Redis URL: expected redis://[user:password@]host:port[/db], rediss:// (TLS), \
                     redis-cluster://host:port[?node=host:port] or redis-sentinel://",
                ));
            }
        }
        if self.jwt_jwks_min_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(env::JWKS_MIN_INTERVAL, "must be at least 100ms"));
        }
        if self.jwt_jwks_refresh < self.jwt_jwks_min_interval {
            return Err(ConfigError::new(env::JWKS_REFRESH, "must be at least ROOMCAST_JWT_JWKS_MIN_INTERVAL"));
        }
        if self.redis_ca_file.is_some() && !self.uses_redis() {
            return Err(ConfigError::new(env::REDIS_CA_FILE, "set only with a Redis URL (rediss://)"));
        }
        if self.redis_password_file.is_some() && !self.uses_redis() {
            return Err(ConfigError::new(env::REDIS_PASSWORD_FILE, "set only with a Redis URL"));
        }
        wire::Keys::new(&self.redis_prefix).map_err(|e| ConfigError::new(env::REDIS_PREFIX, e.to_string()))?;
        if self.redis_command_timeout.is_zero() {
            return Err(ConfigError::new(env::REDIS_COMMAND_TIMEOUT, "must be above zero"));
        }
        if self.redis_buffer < 64 {
            return Err(ConfigError::new(env::REDIS_BUFFER, "must be at least 64 messages"));
        }
        if self.client_buffer < 16 {
            return Err(ConfigError::new(env::CLIENT_BUFFER, "must be at least 16 packets"));
        }
        if self.client_buffer_bytes < 4096 || self.client_buffer_bytes < self.publish_max_payload {
            return Err(ConfigError::new(
                env::CLIENT_BUFFER_BYTES,
                "must be at least 4096 bytes and at least ROOMCAST_PUBLISH_MAX_PAYLOAD (an event must fit)",
            ));
        }
        if self.api_key.iter().any(|k| k.expose().len() < 16) {
            return Err(ConfigError::new(
                env::API_KEY,
                "every key needs at least 16 characters (e.g. `openssl rand -hex 24`)",
            ));
        }
        self.console_tokens()?;
        if self.publish_max_payload == 0 || self.publish_max_batch == 0 {
            return Err(ConfigError::new(env::PUBLISH_MAX_PAYLOAD, "payload and batch limits must be above zero"));
        }
        if self.typing_ttl < Duration::from_millis(500) {
            return Err(ConfigError::new(env::TYPING_TTL, "must be at least 500ms"));
        }
        if self.typing_throttle >= self.typing_ttl {
            return Err(ConfigError::new(
                env::TYPING_THROTTLE,
                "must be shorter than ROOMCAST_TYPING_TTL, or an indicator expires between two refreshes",
            ));
        }
        if self.history_size > 100_000 {
            return Err(ConfigError::new(env::HISTORY_SIZE, "at most 100000 events per room"));
        }
        if self.publish_dedupe_window.is_zero() {
            return Err(ConfigError::new(env::PUBLISH_DEDUPE_WINDOW, "must be above zero"));
        }
        if self.max_header_bytes < 4096 {
            return Err(ConfigError::new(
                env::MAX_HEADER_BYTES,
                "must be at least 4096: browsers send kilobytes of headers",
            ));
        }
        if self.presence_queue_per_tenant == 0 {
            return Err(ConfigError::new(env::PRESENCE_QUEUE_PER_TENANT, "must be at least 1"));
        }
        if self.history_max_rooms == 0 {
            return Err(ConfigError::new(env::HISTORY_MAX_ROOMS, "must be at least 1"));
        }
        if self.history_max_bytes < 64 * 1024 {
            return Err(ConfigError::new(env::HISTORY_MAX_BYTES, "must be at least 65536 (64 KiB)"));
        }
        if self.history_size > 0 && self.history_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(env::HISTORY_TTL, "must be at least 1s"));
        }
        if self.presence_lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(env::PRESENCE_LEASE_TTL, "must be at least 1s"));
        }
        if self.presence_page_max == 0 {
            return Err(ConfigError::new(env::PRESENCE_PAGE_MAX, "must be at least 1"));
        }
        self.event_types()?;
        if self.events_stream && !self.uses_redis() {
            return Err(ConfigError::new(env::EVENTS_STREAM, "needs Redis (ROOMCAST_REDIS_URL)"));
        }
        if !(10..=10_000_000).contains(&self.events_buffer) {
            return Err(ConfigError::new(env::EVENTS_BUFFER, "must be between 10 and 10000000"));
        }
        for url in &self.webhook_url {
            if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                return Err(ConfigError::new(env::WEBHOOK_URL, format!("not an http(s) URL: {url:?}")));
            }
        }
        self.webhook_secret()?;
        if !(1..=1000).contains(&self.webhook_batch_size) {
            return Err(ConfigError::new(env::WEBHOOK_BATCH_SIZE, "must be between 1 and 1000"));
        }
        if self.webhook_batch_wait < Duration::from_millis(10) || self.webhook_batch_wait > Duration::from_secs(10) {
            return Err(ConfigError::new(env::WEBHOOK_BATCH_WAIT, "must be between 10ms and 10s"));
        }
        if self.webhook_timeout < Duration::from_millis(100) || self.webhook_timeout > Duration::from_secs(60) {
            return Err(ConfigError::new(env::WEBHOOK_TIMEOUT, "must be between 100ms and 60s"));
        }
        if self.webhook_retry_max < Duration::from_millis(250) || self.webhook_retry_max > Duration::from_secs(600) {
            return Err(ConfigError::new(env::WEBHOOK_RETRY_MAX, "must be between 250ms and 10m"));
        }
        self.rpc_backends()?;
        self.rpc_secret()?;
        EventPattern::parse(&self.rpc_events).map_err(|e| ConfigError::new(env::RPC_EVENTS, e))?;
        if self.proxy_only() && self.connect_proxy_url.is_none() {
            return Err(ConfigError::new(env::CONNECT_PROXY_MODE, "proxy_only needs ROOMCAST_CONNECT_PROXY_URL"));
        }
        // Cookies log browsers in: without an origin allow-list any site could open a socket as
        // its visitor (WebSockets are not covered by CORS).
        if self.proxy_only() && !matches!(self.cors_allow_list()?, Some(list) if !list.is_empty()) {
            return Err(ConfigError::new(
                env::CONNECT_PROXY_MODE,
                "proxy_only logs browsers in by cookie: set ROOMCAST_CORS_ORIGINS to the app's origins (not *)",
            ));
        }
        if self.connect_proxy_cache_ttl > Duration::from_secs(86_400) {
            return Err(ConfigError::new(env::CONNECT_PROXY_CACHE_TTL, "must be at most 24h"));
        }
        if !(1..=10_000_000).contains(&self.connect_proxy_cache_size) {
            return Err(ConfigError::new(env::CONNECT_PROXY_CACHE_SIZE, "must be between 1 and 10000000"));
        }
        if self.rpc_timeout < Duration::from_millis(10) || self.rpc_timeout > Duration::from_secs(300) {
            return Err(ConfigError::new(env::RPC_TIMEOUT, "must be between 10ms and 5m"));
        }
        for (option, value) in [
            (env::RPC_SOCKET_CONCURRENCY, self.rpc_socket_concurrency),
            (env::RPC_TENANT_CONCURRENCY, self.rpc_tenant_concurrency),
            (env::RPC_CONCURRENCY, self.rpc_concurrency),
        ] {
            if !(1..=100_000).contains(&value) {
                return Err(ConfigError::new(option, "must be between 1 and 100000"));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return Err(ConfigError::new(env::LOG, format!("not a valid log filter: {:?}", self.log)));
        }
        Ok(())
    }

    /// The lifecycle event types to emit (`ROOMCAST_EVENTS`), or none when no sink is set.
    pub fn event_types(&self) -> Result<Vec<String>, ConfigError> {
        let types = parse_event_types(&self.events).map_err(|e| ConfigError::new(env::EVENTS, e))?;
        Ok(if self.webhook_url.is_empty() && !self.events_stream { Vec::new() } else { types })
    }

    /// The webhook secret, from `ROOMCAST_WEBHOOK_SECRET` or its file; `None` without webhooks.
    pub fn webhook_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let (secret, option) = match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    env::WEBHOOK_SECRET_FILE,
                    "set ROOMCAST_WEBHOOK_SECRET or its file, not both",
                ));
            }
            (Some(secret), None) => (Some(secret.clone()), env::WEBHOOK_SECRET),
            (None, Some(path)) => (Some(read_secret_file(env::WEBHOOK_SECRET_FILE, path)?), env::WEBHOOK_SECRET_FILE),
            (None, None) => (None, env::WEBHOOK_SECRET),
        };
        match secret {
            None if !self.webhook_url.is_empty() => {
                Err(ConfigError::new(env::WEBHOOK_SECRET, "required with ROOMCAST_WEBHOOK_URL"))
            }
            Some(secret) if secret.expose().len() < MIN_SECRET_LEN => {
                Err(ConfigError::new(option, "needs at least 32 bytes"))
            }
            secret => Ok(secret.filter(|_| !self.webhook_url.is_empty())),
        }
    }

    /// The backend URLs: RPC's default and routes (longest prefix first), and the proxies'.
    pub fn rpc_backends(&self) -> Result<Backends, ConfigError> {
        let http_url = |option: &'static str, url: &str| {
            reqwest::Url::parse(url.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| ConfigError::new(option, format!("not an http(s) URL: {url:?}")))
        };
        let optional =
            |option: &'static str, url: &Option<String>| url.as_deref().map(|u| http_url(option, u)).transpose();
        let url = optional(env::RPC_URL, &self.rpc_url)?;
        let publish_proxy = optional(env::PUBLISH_PROXY_URL, &self.publish_proxy_url)?;
        let connect_proxy = optional(env::CONNECT_PROXY_URL, &self.connect_proxy_url)?;
        let subscribe_proxy = optional(env::SUBSCRIBE_PROXY_URL, &self.subscribe_proxy_url)?;
        let mut routes = Vec::new();
        for route in self.rpc_routes.iter().filter(|r| !r.trim().is_empty()) {
            let Some((prefix, url)) = route.split_once('=').filter(|(p, _)| !p.trim().is_empty()) else {
                return Err(ConfigError::new(env::RPC_ROUTES, format!("not prefix=url: {route:?}")));
            };
            routes.push((prefix.trim().to_owned(), http_url(env::RPC_ROUTES, url)?));
        }
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Backends { url, routes, publish_proxy, connect_proxy, subscribe_proxy })
    }

    /// The RPC secret, from `ROOMCAST_RPC_SECRET` or its file; `None` when RPC is off.
    pub fn rpc_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let on = self.rpc_url.is_some()
            || self.publish_proxy_url.is_some()
            || self.connect_proxy_url.is_some()
            || self.subscribe_proxy_url.is_some()
            || self.rpc_routes.iter().any(|r| !r.trim().is_empty());
        let (secret, option) = match (&self.rpc_secret, &self.rpc_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(env::RPC_SECRET_FILE, "set ROOMCAST_RPC_SECRET or its file, not both"));
            }
            (Some(secret), None) => (Some(secret.clone()), env::RPC_SECRET),
            (None, Some(path)) => (Some(read_secret_file(env::RPC_SECRET_FILE, path)?), env::RPC_SECRET_FILE),
            (None, None) => (None, env::RPC_SECRET),
        };
        match secret {
            None if on => Err(ConfigError::new(
                env::RPC_SECRET,
                "required with ROOMCAST_RPC_URL, ROOMCAST_RPC_ROUTES, ROOMCAST_PUBLISH_PROXY_URL or a proxy URL",
            )),
            Some(secret) if secret.expose().len() < MIN_SECRET_LEN => {
                Err(ConfigError::new(option, "needs at least 32 bytes"))
            }
            secret => Ok(secret.filter(|_| on)),
        }
    }

    /// Whether the connect proxy says who connects (`ROOMCAST_CONNECT_PROXY_MODE=proxy_only`).
    pub fn proxy_only(&self) -> bool {
        self.connect_proxy_mode == "proxy_only"
    }

    /// Whether a Redis URL is configured (cluster mode).
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || self.redis_url_file.is_some()
    }

    /// The Redis URL: `ROOMCAST_REDIS_URL`, or read from `ROOMCAST_REDIS_URL_FILE`.
    pub fn redis_url(&self) -> Result<Option<Secret>, ConfigError> {
        match (&self.redis_url, &self.redis_url_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                env::REDIS_URL_FILE,
                "conflicting options: set only one of ROOMCAST_REDIS_URL, ROOMCAST_REDIS_URL_FILE",
            )),
            (Some(url), None) => Ok(Some(url.clone())),
            (None, Some(path)) => read_secret_file(env::REDIS_URL_FILE, path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The Redis password of `ROOMCAST_REDIS_PASSWORD_FILE`, and the CA bundle of
    /// `ROOMCAST_REDIS_CA_FILE` (PEM bytes).
    pub fn redis_credentials(&self) -> Result<(Option<Secret>, Option<Vec<u8>>), ConfigError> {
        let password = match &self.redis_password_file {
            Some(path) => Some(read_secret_file(env::REDIS_PASSWORD_FILE, path)?),
            None => None,
        };
        let ca =
            match &self.redis_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    ConfigError::new(env::REDIS_CA_FILE, format!("cannot read {}: {e}", path.display()))
                })?),
                None => None,
            };
        Ok((password, ca))
    }

    /// The single configured source of verification keys.
    pub(crate) fn key_source(&self) -> Result<KeySource<'_>, ConfigError> {
        let mut sources = Vec::new();
        if let Some(s) = &self.jwt_secret {
            sources.push((env::JWT_SECRET, KeySource::Secret(s)));
        }
        if let Some(p) = &self.jwt_secret_file {
            sources.push((env::JWT_SECRET_FILE, KeySource::SecretFile(p)));
        }
        if let Some(p) = &self.jwt_public_key_file {
            sources.push((env::JWT_PUBLIC_KEY_FILE, KeySource::PublicKeyFile(p)));
        }
        if let Some(p) = &self.jwks_file {
            sources.push((env::JWKS_FILE, KeySource::JwksFile(p)));
        }
        if let Some(url) = &self.jwt_jwks_url {
            sources.push((env::JWKS_URL, KeySource::JwksUrl(url)));
        }
        match sources.len() {
            0 if self.dev => Ok(KeySource::DevGenerated),
            // The connect proxy says who connects: no token is verified here.
            0 if self.proxy_only() => Ok(KeySource::IssuersOnly),
            // Trusted issuers alone: every token must come from one of them.
            0 if self.jwt_issuers_file.is_some() => Ok(KeySource::IssuersOnly),
            0 => Err(ConfigError::new(
                env::JWT_SECRET,
                "no token key configured: set one of ROOMCAST_JWT_SECRET, ROOMCAST_JWT_SECRET_FILE, \
                 ROOMCAST_JWT_PUBLIC_KEY_FILE, ROOMCAST_JWKS_FILE, ROOMCAST_JWT_JWKS_URL or \
                 ROOMCAST_JWT_ISSUERS_FILE, or pass --dev to try Roomcast out",
            )),
            1 => {
                let (name, source) = sources.remove(0);
                if self.dev && !matches!(source, KeySource::Secret(_) | KeySource::SecretFile(_)) {
                    return Err(ConfigError::new(
                        name,
                        "--dev mints its demo token with an HMAC secret: unset this option or drop --dev",
                    ));
                }
                Ok(source)
            }
            _ => {
                let names: Vec<_> = sources.iter().map(|(n, _)| *n).collect();
                Err(ConfigError::new(names[0], format!("conflicting options: set only one of {}", names.join(", "))))
            }
        }
    }

    /// The per-socket rate limits.
    pub fn rate_limits(&self) -> Policy {
        Policy {
            // In the order of `EventClass`'s variants.
            rates: [
                self.rate_rooms,
                self.rate_presence_update,
                self.rate_presence_list,
                self.rate_typing,
                self.rate_refresh,
                self.rate_other,
            ],
            disconnect_after: self.rate_limit_disconnect,
        }
    }

    /// The history policy; `None` when history is off.
    pub fn history(&self) -> Option<wire::HistoryPolicy> {
        (self.history_size > 0).then_some(wire::HistoryPolicy { size: self.history_size, ttl: self.history_ttl })
    }

    /// The console's tokens (`ROOMCAST_CONSOLE_TOKENS`), each with the tenants it may see
    /// (`None`: all); empty: the console is off.
    pub(crate) fn console_tokens(&self) -> Result<Vec<ConsoleToken>, ConfigError> {
        let mut tokens: Vec<ConsoleToken> = Vec::new();
        // Each with its option and its place there (from 1, blank entries skipped): errors name
        // both and never print a value.
        let nonblank = |t: &&str| !t.trim().is_empty();
        let mut entries: Vec<(&'static str, usize, String)> = self
            .console_tokens
            .iter()
            .map(|t| t.expose())
            .filter(nonblank)
            .enumerate()
            .map(|(i, t)| (env::CONSOLE_TOKENS, i + 1, t.trim().to_owned()))
            .collect();
        if let Some(path) = &self.console_tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(env::CONSOLE_TOKENS_FILE, format!("cannot read {}: {e}", path.display()))
            })?;
            let before = entries.len();
            let listed = text.lines().flat_map(|l| l.split(',')).filter(nonblank).enumerate();
            entries.extend(listed.map(|(i, t)| (env::CONSOLE_TOKENS_FILE, i + 1, t.trim().to_owned())));
            if entries.len() == before {
                // An empty mounted key would otherwise turn the console off without a word.
                let message = format!("{} holds no token; unset the option to turn the console off", path.display());
                return Err(ConfigError::new(env::CONSOLE_TOKENS_FILE, message));
            }
        }
        for (option, n, entry) in &entries {
            let (option, entry) = (*option, entry.as_str());
            let (token, tenants) = match entry.split_once(':') {
                Some((token, tenants)) => (token, Some(tenants)),
                None => (entry, None),
            };
            let bad = |message: String| ConfigError::new(option, format!("token #{n}: {message}"));
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(bad("needs 32+ characters of A-Z a-z 0-9 _ - (e.g. `openssl rand -hex 24`)".into()));
            }
            if tokens.iter().any(|(known, _)| known.expose() == token) {
                return Err(bad("listed twice: each token has one scope".into()));
            }
            let scope = match tenants {
                None => None,
                Some(list) => {
                    let list: Vec<String> = list.split(';').map(str::trim).map(str::to_owned).collect();
                    if let Some(i) = list.iter().position(|t| roomcast_publisher::validate_id(t).is_err()) {
                        let message = format!("tenant #{} is not a tenant id (TOKEN:tenant1;tenant2)", i + 1);
                        return Err(bad(message));
                    }
                    Some(list)
                }
            };
            tokens.push((Secret::from(token.to_owned()), scope));
        }
        Ok(tokens)
    }

    /// Allowed browser origins: `None` means any origin (`*`), an empty list means none.
    pub(crate) fn cors_allow_list(&self) -> Result<Option<Vec<HeaderValue>>, ConfigError> {
        let origins: Vec<&str> = self.cors_origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
        if origins.contains(&"*") {
            if origins.len() > 1 {
                return Err(ConfigError::new(env::CORS_ORIGINS, "\"*\" cannot be combined with other origins"));
            }
            return Ok(None);
        }
        origins
            .into_iter()
            .map(|o| {
                let valid_shape = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.trim_end_matches('/').contains(['?', '#'])
                    && o.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
                if !valid_shape {
                    return Err(ConfigError::new(
                        env::CORS_ORIGINS,
                        format!("{o:?} is not an origin: expected scheme://host[:port], e.g. https://app.example.com"),
                    ));
                }
                HeaderValue::from_str(o)
                    .map_err(|_| ConfigError::new(env::CORS_ORIGINS, format!("{o:?} is not a valid header value")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// `ROOMCAST_EVENTS`: `all` or type names (`roomcast_publisher::events::types`).
fn parse_event_types(list: &[String]) -> Result<Vec<String>, String> {
    use roomcast_publisher::events::types;
    let mut out = Vec::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "all" {
            out.extend(types::ALL.iter().map(|t| (*t).to_owned()));
        } else if types::ALL.contains(&item) {
            out.push(item.to_owned());
        } else {
            return Err(format!("unknown event type {item:?}; known: all, {}", types::ALL.join(", ")));
        }
    }
    Ok(out)
}

/// The backend URLs of [`Config::rpc_backends`], parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backends {
    /// `ROOMCAST_RPC_URL`.
    pub url: Option<reqwest::Url>,
    /// `ROOMCAST_RPC_ROUTES`: (prefix, URL), longest prefix first.
    pub routes: Vec<(String, reqwest::Url)>,
    /// `ROOMCAST_PUBLISH_PROXY_URL`.
    pub publish_proxy: Option<reqwest::Url>,
    /// `ROOMCAST_CONNECT_PROXY_URL`.
    pub connect_proxy: Option<reqwest::Url>,
    /// `ROOMCAST_SUBSCRIBE_PROXY_URL`.
    pub subscribe_proxy: Option<reqwest::Url>,
}

/// Client event names Roomcast answers itself (and `roomcast:*`): never forwarded to a backend.
pub const RESERVED_EVENTS: &[&str] = &[
    "join",
    "leave",
    "auth:refresh",
    "typing",
    "presence:list",
    "presence:update",
    "room:occupancy",
    "history",
    "publish",
];

/// Socket.IO's own event names: a raw client can send them, a backend must never get them.
const SOCKET_IO_EVENTS: &[&str] =
    &["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Whether `event` is a name Roomcast answers itself, or keeps for itself (`presence:*`,
/// `roomcast:*`), or Socket.IO's.
pub fn is_reserved_event(event: &str) -> bool {
    RESERVED_EVENTS.contains(&event)
        || SOCKET_IO_EVENTS.contains(&event)
        || event.starts_with("roomcast:")
        || event.starts_with("presence:")
}

/// Which event names are RPCs (`ROOMCAST_RPC_EVENTS`): names, or prefixes ending in `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPattern {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl EventPattern {
    /// Parses the option's entries; an empty entry or a `*` anywhere but at the end is refused.
    pub fn parse(entries: &[String]) -> Result<EventPattern, String> {
        let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
        for entry in entries.iter().map(|e| e.trim()) {
            match entry.strip_suffix('*') {
                _ if entry.is_empty() => return Err("an empty event name".into()),
                Some(prefix) if !prefix.contains('*') => prefixes.push(prefix.to_owned()),
                None if !entry.contains('*') => exact.push(entry.to_owned()),
                _ => return Err(format!("{entry:?}: `*` may only end a prefix")),
            }
        }
        Ok(EventPattern { exact, prefixes })
    }

    /// Whether `event` is forwarded: it matches, and is not one of Roomcast's own names.
    pub fn matches(&self, event: &str) -> bool {
        !is_reserved_event(event)
            && (self.exact.iter().any(|e| e == event) || self.prefixes.iter().any(|p| event.starts_with(p.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["roomcast-gateway"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parses")
    }

    /// Gateway and publishers must agree on these; the values are the publisher crate's (the
    /// duration is written as text for `--help`, so it is checked here).
    #[test]
    fn shared_defaults_are_the_wire_formats() {
        let config = parse(&["--jwt-secret", &"s".repeat(MIN_SECRET_LEN)]);
        assert_eq!(config.history(), Some(wire::HistoryPolicy::default()));
        assert_eq!(config.redis_prefix, wire::DEFAULT_PREFIX);
        assert_eq!(config.publish_max_payload, wire::DEFAULT_MAX_PAYLOAD);
    }

    #[test]
    fn no_key_refuses_to_start_and_says_what_to_set() {
        let err = parse(&[]).validate().unwrap_err();
        assert_eq!(err.option, env::JWT_SECRET);
        assert!(err.message.contains(env::JWKS_FILE) && err.message.contains("--dev"), "{err}");
    }

    #[test]
    fn dev_without_key_is_valid() {
        assert!(parse(&["--dev"]).validate().is_ok());
    }

    #[test]
    fn two_key_sources_conflict() {
        let err = parse(&["--jwt-secret", &"s".repeat(40), "--jwks-file", "/x.json"]).validate().unwrap_err();
        assert!(err.message.contains("conflicting options"), "{err}");
        assert!(err.message.contains(env::JWKS_FILE), "{err}");
    }

    #[test]
    fn dev_with_public_key_is_refused() {
        let err = parse(&["--dev", "--jwt-public-key-file", "/k.pem"]).validate().unwrap_err();
        assert_eq!(err.option, env::JWT_PUBLIC_KEY_FILE);
    }

    #[test]
    fn drain_must_fit_in_shutdown() {
        let err = parse(&["--dev", "--drain-delay", "30s", "--shutdown-timeout", "10s"]).validate().unwrap_err();
        assert_eq!(err.option, env::DRAIN_DELAY);
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(parse(&["--dev", "--cors-origins", "https://a.example,http://localhost:5173"]).validate().is_ok());
        assert_eq!(parse(&["--dev", "--cors-origins", "*"]).cors_allow_list().unwrap(), None);
        for bad in ["example.com", "https://a.example/path", "*,https://a.example"] {
            let err = parse(&["--dev", "--cors-origins", bad]).validate().unwrap_err();
            assert_eq!(err.option, env::CORS_ORIGINS, "{bad}");
        }
    }

    #[test]
    fn bad_durations_and_log_filters_are_refused() {
        assert!(Config::try_parse_from(["roomcast-gateway", "--jwt-leeway", "soon"]).is_err());
        let err = parse(&["--dev", "--log", "info,[["]).validate().unwrap_err();
        assert_eq!(err.option, env::LOG);
        let err = parse(&["--dev", "--connect-timeout", "0s"]).validate().unwrap_err();
        assert_eq!(err.option, env::CONNECT_TIMEOUT);
    }

    #[test]
    fn redis_urls_are_checked_without_echoing_them() {
        assert!(parse(&["--dev", "--redis-url", "redis://127.0.0.1:6379"]).validate().is_ok());
        assert!(
            parse(&["--dev", "--redis-url", "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001"]).validate().is_ok()
        );
        // The forms the Helm chart's README documents.
        for url in [
            "rediss://:password@redis.example.com:6380/0",
            "rediss-cluster://a:6379?node=b:6379&node=c:6379",
            "redis-sentinel://sentinel-a:26379/0?sentinelServiceName=mymaster&node=sentinel-b:26379",
            "valkey://127.0.0.1:6379",
        ] {
            assert!(parse(&["--dev", "--redis-url", url]).validate().is_ok(), "{url}");
        }
        let err = parse(&["--dev", "--redis-url", "http://user:hunter2@host"]).validate().unwrap_err();
        assert_eq!(err.option, env::REDIS_URL);
        assert!(!err.to_string().contains("hunter2"));
        let err = parse(&["--dev", "--redis-prefix", "a{b}"]).validate().unwrap_err();
        assert_eq!(err.option, env::REDIS_PREFIX);
    }

    #[test]
    fn short_api_keys_are_refused() {
        let err = parse(&["--dev", "--api-key", "short"]).validate().unwrap_err();
        assert_eq!(err.option, env::API_KEY);
        assert!(parse(&["--dev", "--api-key", "0123456789abcdef,fedcba9876543210"]).validate().is_ok());
    }

    #[test]
    fn console_tokens_are_checked() {
        let token = "c".repeat(32);
        let refused = |value: &str| parse(&["--dev", "--console-tokens", value]).validate().unwrap_err();
        for bad in [
            "short".to_owned(),
            format!("{}!", "c".repeat(32)),
            format!("{token},{token}"),
            format!("{token}:acme;not a tenant"),
            format!("{token}:"),
        ] {
            let err = refused(&bad);
            assert_eq!(err.option, env::CONSOLE_TOKENS, "{bad}");
            assert!(!err.message.contains(&token), "the message must not print the token: {}", err.message);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("console-tokens");
        std::fs::write(&file, format!("{}\n{token}\n", "e".repeat(32))).unwrap();
        let twice = parse(&["--dev", "--console-tokens", &token, "--console-tokens-file", file.to_str().unwrap()]);
        assert_eq!(twice.validate().unwrap_err().option, env::CONSOLE_TOKENS_FILE, "a token listed twice");
        let missing = parse(&["--dev", "--console-tokens-file", "/nonexistent/console-tokens"]);
        assert_eq!(missing.validate().unwrap_err().option, env::CONSOLE_TOKENS_FILE);
        std::fs::write(&file, "\n , \n").unwrap();
        let empty = parse(&["--dev", "--console-tokens-file", file.to_str().unwrap()]);
        assert_eq!(empty.validate().unwrap_err().option, env::CONSOLE_TOKENS_FILE, "an empty file is a mistake");
        let config = parse(&["--dev", "--console-tokens", &format!("{token},{}:acme;globex", "d".repeat(40))]);
        assert!(config.validate().is_ok());
        let tokens = config.console_tokens().unwrap();
        assert_eq!(tokens[0].1, None);
        assert_eq!(tokens[1].1, Some(vec!["acme".to_owned(), "globex".to_owned()]));
    }

    #[test]
    fn rpc_options_are_checked() {
        let secret = "r".repeat(MIN_SECRET_LEN);
        let rpc = ["--dev", "--rpc-url", "http://127.0.0.1:9/rpc"];
        let refused = |extra: &[&str]| parse(&[&rpc[..], extra].concat()).validate().unwrap_err().option;
        assert_eq!(refused(&[]), env::RPC_SECRET, "RPC needs a secret");
        assert_eq!(refused(&["--rpc-secret", "short"]), env::RPC_SECRET);
        let ftp = parse(&["--dev", "--rpc-url", "ftp://x/", "--rpc-secret", &secret]);
        assert_eq!(ftp.validate().unwrap_err().option, env::RPC_URL);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-routes", "nourl"]), env::RPC_ROUTES);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-routes", "=http://x/"]), env::RPC_ROUTES);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-routes", "a:=not a url"]), env::RPC_ROUTES);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-events", "a*b"]), env::RPC_EVENTS);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-timeout", "1ms"]), env::RPC_TIMEOUT);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-socket-concurrency", "0"]), env::RPC_SOCKET_CONCURRENCY);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-tenant-concurrency", "0"]), env::RPC_TENANT_CONCURRENCY);
        assert_eq!(refused(&["--rpc-secret", &secret, "--rpc-concurrency", "0"]), env::RPC_CONCURRENCY);
        // Routes alone turn RPC on (and need the secret); longest prefix first.
        let routes = ["--dev", "--rpc-routes", "a:=http://a/,ab:=http://ab/"];
        assert_eq!(parse(&routes).validate().unwrap_err().option, env::RPC_SECRET);
        let ok = parse(&[&routes[..], &["--rpc-secret", &secret]].concat());
        ok.validate().unwrap();
        let backends = ok.rpc_backends().unwrap();
        let prefixes: Vec<&str> = backends.routes.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!((backends.url, prefixes), (None, vec!["ab:", "a:"]));
        // The proxies need the secret too, and valid URLs and bounds.
        for proxy in ["--publish-proxy-url", "--connect-proxy-url"] {
            assert_eq!(parse(&["--dev", proxy, "http://x/"]).validate().unwrap_err().option, env::RPC_SECRET);
        }
        let proxied = |extra: &[&str]| {
            parse(&[&["--dev", "--rpc-secret", &secret, "--connect-proxy-url", "http://x/"][..], extra].concat())
                .validate()
                .map_err(|e| e.option.to_string())
        };
        assert_eq!(proxied(&[]), Ok(()));
        assert_eq!(proxied(&["--connect-proxy-cache-ttl", "2d"]), Err(env::CONNECT_PROXY_CACHE_TTL.to_owned()));
        assert_eq!(proxied(&["--connect-proxy-cache-size", "0"]), Err(env::CONNECT_PROXY_CACHE_SIZE.to_owned()));
        let bad_url = parse(&["--dev", "--rpc-secret", &secret, "--connect-proxy-url", "nope"]);
        assert_eq!(bad_url.validate().unwrap_err().option, env::CONNECT_PROXY_URL);
        let bad_url = parse(&["--dev", "--rpc-secret", &secret, "--publish-proxy-url", "ftp://x"]);
        assert_eq!(bad_url.validate().unwrap_err().option, env::PUBLISH_PROXY_URL);
        // Proxy-only mode needs the proxy, and no token key (apps without JWTs).
        let only = ["--connect-proxy-mode", "proxy_only", "--rpc-secret", &secret];
        assert_eq!(parse(&only).validate().unwrap_err().option, env::CONNECT_PROXY_MODE);
        let with_url = [&only[..], &["--connect-proxy-url", "http://x/"]].concat();
        // Cookie logins need an origin allow-list.
        for origins in [&[][..], &["--cors-origins", "*"]] {
            let config = parse(&[&with_url[..], origins].concat());
            assert_eq!(config.validate().unwrap_err().option, env::CONNECT_PROXY_MODE, "{origins:?}");
        }
        parse(&[&with_url[..], &["--cors-origins", "https://app.example.com"]].concat()).validate().unwrap();
        // Off: no secret needed, none kept.
        let off = parse(&["--dev", "--rpc-secret", &secret]);
        off.validate().unwrap();
        assert!(off.rpc_secret().unwrap().is_none());
    }

    #[test]
    fn lifecycle_event_options_are_checked() {
        let secret = "w".repeat(MIN_SECRET_LEN);
        let hook = ["--dev", "--webhook-url", "http://127.0.0.1:9/hook"];
        let refused = |extra: &[&str]| parse(&[&hook[..], extra].concat()).validate().unwrap_err().option;
        assert_eq!(refused(&[]), env::WEBHOOK_SECRET, "a webhook needs a secret");
        assert_eq!(refused(&["--webhook-secret", "short"]), env::WEBHOOK_SECRET);
        assert_eq!(refused(&["--webhook-secret", &secret, "--events", "user.onlin"]), env::EVENTS);
        assert_eq!(refused(&["--webhook-secret", &secret, "--events-buffer", "5"]), env::EVENTS_BUFFER);
        assert_eq!(refused(&["--webhook-secret", &secret, "--webhook-batch-size", "0"]), env::WEBHOOK_BATCH_SIZE);
        assert_eq!(refused(&["--webhook-secret", &secret, "--webhook-batch-wait", "1ms"]), env::WEBHOOK_BATCH_WAIT);
        assert_eq!(refused(&["--webhook-secret", &secret, "--webhook-timeout", "2m"]), env::WEBHOOK_TIMEOUT);
        assert_eq!(refused(&["--webhook-secret", &secret, "--webhook-retry-max", "1ms"]), env::WEBHOOK_RETRY_MAX);
        let err = parse(&["--dev", "--webhook-url", "ftp://x/", "--webhook-secret", &secret]).validate().unwrap_err();
        assert_eq!(err.option, env::WEBHOOK_URL);
        let err = parse(&["--dev", "--events-stream"]).validate().unwrap_err();
        assert_eq!(err.option, env::EVENTS_STREAM, "the stream needs Redis");
        let ok = parse(&[&hook[..], &["--webhook-secret", &secret, "--events", "user.online,member.left"]].concat());
        assert!(ok.validate().is_ok());
        assert_eq!(ok.event_types().unwrap(), ["user.online", "member.left"]);
        assert!(parse(&["--dev"]).event_types().unwrap().is_empty(), "no sink, no events");
        assert_eq!(parse(&[&hook[..], &["--webhook-secret", &secret]].concat()).event_types().unwrap().len(), 8);
        // The secret from a file, not both.
        let file = std::env::temp_dir().join(format!("roomcast-webhook-secret-{}", std::process::id()));
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let path = file.to_str().unwrap();
        let from_file = parse(&[&hook[..], &["--webhook-secret-file", path]].concat());
        assert_eq!(from_file.webhook_secret().unwrap().unwrap().expose(), secret);
        assert_eq!(refused(&["--webhook-secret-file", path, "--webhook-secret", &secret]), env::WEBHOOK_SECRET_FILE);
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(&["--jwt-secret", "super-secret-value-that-is-long-enough"]);
        assert!(!format!("{config:?}").contains("super-secret"));
    }

    #[test]
    fn event_patterns_match_names_and_prefixes_but_never_roomcasts_own() {
        let all = EventPattern::parse(&["*".into()]).unwrap();
        assert!(all.matches("message:send") && all.matches("x"));
        for own in
            RESERVED_EVENTS.iter().copied().chain(["roomcast:anything", "presence:later", "disconnect", "connect"])
        {
            assert!(!all.matches(own), "{own}");
        }
        let some = EventPattern::parse(&["chat:*".into(), "ping".into()]).unwrap();
        assert!(some.matches("chat:send") && some.matches("ping"));
        assert!(!some.matches("pingx") && !some.matches("chat") && !some.matches("billing:pay"));
        for bad in ["", "a*b", "**", " "] {
            assert!(EventPattern::parse(&[bad.into()]).is_err(), "{bad:?}");
        }
    }
}

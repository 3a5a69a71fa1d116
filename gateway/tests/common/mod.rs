//! Shared test helpers: start a real gateway in-process on port 0, mint tokens, connect
//! clients, read metrics. Each test file uses the part it needs.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod redis;
pub mod replica;

use std::{net::SocketAddr, time::Duration};

use jsonwebtoken::{EncodingKey, Header};
use roomcast_gateway::{Config, Gateway, LocalCluster};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};

pub use client::{Client, Connect, ConnectFailure, Incoming, WAIT};

/// The HMAC secret every test gateway accepts.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims for `user` in `tenant` with access to projects p1, p2 and channels c1, c2, valid 1 h.
pub fn claims(tenant: &str, user: &str) -> Value {
    json!({ "sub": user, "tenant": tenant, "projects": ["p1", "p2"], "channels": ["c1", "c2"], "exp": now() + 3600 })
}

/// Signs `claims` with [`SECRET`] (HS256).
pub fn token(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A token for `user` in `tenant` (see [`claims`]).
pub fn user_token(tenant: &str, user: &str) -> String {
    token(&claims(tenant, user))
}

/// A gateway running in this process.
pub struct TestGateway {
    /// Socket.IO.
    pub addr: SocketAddr,
    /// The backend API (`/v1/...`).
    pub api: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// A gateway with test defaults: HS256 with [`SECRET`], short drain, loopback port 0.
    pub async fn start() -> TestGateway {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestGateway::start`], with `configure` applied to the config first.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestGateway {
        Self::start_in(None, configure).await
    }

    /// A gateway of `cluster` (see [`LocalCluster`]), with `configure` applied to the config.
    pub async fn start_local(cluster: &LocalCluster, configure: impl FnOnce(&mut Config)) -> TestGateway {
        Self::start_in(Some(cluster), configure).await
    }

    async fn start_in(cluster: Option<&LocalCluster>, configure: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = Config::for_tests(SECRET);
        config.drain_delay = Duration::from_millis(200);
        config.shutdown_timeout = Duration::from_secs(5);
        configure(&mut config);
        let gateway = match cluster {
            Some(cluster) => Gateway::bind_local(config, cluster).await,
            None => Gateway::bind(config).await,
        }
        .expect("gateway starts");
        let (addr, api, admin) = (gateway.public_addr(), gateway.api_addr(), gateway.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            gateway
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("gateway runs");
        });
        TestGateway { addr, api, admin, stop: Some(stop), task: Some(task) }
    }

    /// Connects a client with `token` in the handshake auth.
    pub async fn connect(&self, token: &str) -> Client {
        Client::connect(self.addr, Connect::token(token)).await.expect("client connects")
    }

    /// Connects user `user` of tenant `tenant`.
    pub async fn connect_user(&self, tenant: &str, user: &str) -> Client {
        self.connect(&user_token(tenant, user)).await
    }

    /// Begins shutdown (as SIGTERM would).
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return; panics if it takes longer than `within`.
    pub async fn stopped_within(&mut self, within: Duration) {
        let task = self.task.take().expect("not awaited yet");
        tokio::time::timeout(within, task).await.expect("gateway stopped in time").expect("run returned Ok");
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, &[], "").await
    }

    /// The Prometheus scrape.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }

    /// `POST /v1/publish` with [`replica::API_KEY`] (the gateway must accept it).
    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        let auth = format!("Bearer {}", replica::API_KEY);
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let (status, body) = http(self.api, "POST", "/v1/publish", &headers, &body.to_string()).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// A tenant-scoped API key: it acts for tenant t2 only (see [`TestGateway::start_with_tenant_keys`]).
pub const TENANT_TWO_KEY: &str = "tenant-two-key-0123456789";

impl TestGateway {
    /// A gateway whose backend API accepts `key` for every tenant and [`TENANT_TWO_KEY`] for t2
    /// only, with `configure` applied.
    pub async fn start_with_tenant_keys(key: &str, configure: impl FnOnce(&mut Config)) -> TestGateway {
        // Read once at start: the file may go after.
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("tenant-keys.json");
        std::fs::write(&keys, json!({ "keys": [{ "key": TENANT_TWO_KEY, "tenants": ["t2"] }] }).to_string()).unwrap();
        TestGateway::start_with(|c| {
            c.api_key = vec![roomcast_gateway::config::Secret::from(key.to_owned())];
            c.tenant_api_keys_file = Some(keys.clone());
            configure(c);
        })
        .await
    }
}

/// `POST path` on the backend API at `api` with API key `key` and the JSON `body`: the status
/// and the JSON answer.
pub async fn post_json(api: SocketAddr, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, body) = http(api, "POST", path, &headers, &body.to_string()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits until `replicas` replicas are subscribed to `room`'s channel. A socket's tenant and
/// user rooms are subscribed as it connects, not before its connect is acknowledged: a control
/// instruction sent in between can miss it (README: retry when `complete` is false).
pub async fn subscribed(redis: &redis::RedisServer, room: &str, replicas: u64) {
    let channel = format!("roomcast:{{{room}}}");
    eventually(WAIT, "the room's subscriptions", || async {
        let out = redis.cli(&["PUBSUB", "NUMSUB", &channel]);
        (out.lines().nth(1).and_then(|n| n.trim().parse::<u64>().ok()) == Some(replicas)).then_some(())
    })
    .await;
}

/// The `roomcast:disconnect` a client received, once it was also disconnected.
pub async fn kicked(c: &Client) -> Value {
    let notice = c.next("roomcast:disconnect").await[0].clone();
    assert!(c.server_disconnect().await, "a Socket.IO disconnect follows the notice");
    notice
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The value of the sample `name{labels}` in a Prometheus scrape (labels as rendered, e.g.
/// `reason="token_missing"`); 0 if absent.
pub fn sample(scrape: &str, name: &str, labels: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let matches = if labels.is_empty() {
                series == name
            } else {
                series.starts_with(&format!("{name}{{")) && labels.split(',').all(|l| series.contains(l))
            };
            matches.then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 request; returns status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The code of an error ack or error response body `{ ok: false, error: { code, message } }`.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error: {body}"))
}

/// `c.request(event, data)`, waiting as told and trying again while the answer is
/// `rate_limited`, as a well-behaved client does (for helpers that poll).
pub async fn request_politely(c: &Client, event: &str, data: Value) -> Value {
    loop {
        let ack = c.request(event, data.clone()).await;
        match ack["error"]["retryAfterMs"].as_u64() {
            Some(ms) if ack["error"]["code"] == "rate_limited" => tokio::time::sleep(Duration::from_millis(ms)).await,
            _ => return ack,
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

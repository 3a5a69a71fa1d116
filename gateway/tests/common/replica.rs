//! Gateway replicas as real processes (the built binary), so each has its own metrics and can
//! be killed like a crashed pod.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
};

use serde_json::Value;

use super::{Client, Connect, SECRET, WAIT, http, sample, user_token};

/// The publish API key every test replica accepts.
pub const API_KEY: &str = "test-api-key-0123456789";

/// A gateway process.
pub struct Replica {
    /// Socket.IO.
    pub addr: SocketAddr,
    /// The backend API.
    pub api: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
    /// Every line the process wrote to stdout (JSON logs).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts a replica on Redis `redis_url` (None: single node) with extra `env`.
    pub async fn spawn(redis_url: Option<&str>, env: &[(&str, &str)]) -> Replica {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast-gateway"));
        for (key, _) in std::env::vars() {
            if key.starts_with("ROOMCAST_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_API_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_LOG_FORMAT", "json")
            .env("ROOMCAST_LOG", "info,roomcast_gateway=debug")
            .env("ROOMCAST_API_KEY", API_KEY)
            .env("ROOMCAST_DRAIN_DELAY", "100ms")
            .env("ROOMCAST_SHUTDOWN_TIMEOUT", "3s");
        if let Some(url) = redis_url {
            cmd.env("ROOMCAST_REDIS_URL", url);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("gateway binary");
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (listening_tx, listening_rx) = mpsc::channel::<(SocketAddr, SocketAddr, SocketAddr)>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    let addr = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
                    if let (Some(public), Some(api), Some(admin)) = (addr("public"), addr("api"), addr("admin")) {
                        let _ = listening_tx.send((public, api, admin));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, api, admin) = tokio::task::spawn_blocking(move || listening_rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("replica logged its addresses");
        Replica { addr, api, admin, child: Some(child), logs }
    }

    /// `n` replicas on Redis `redis_url` with extra `env`, each ready with Redis `ok`.
    pub async fn ready(n: usize, redis_url: &str, env: &[(&str, &str)]) -> Vec<Replica> {
        let mut all = Vec::new();
        for _ in 0..n {
            let r = Replica::spawn(Some(redis_url), env).await;
            super::eventually(WAIT, "replica ready", || async { r.redis_ok().await.then_some(()) }).await;
            all.push(r);
        }
        all
    }

    /// Connects user `user` of `tenant`.
    pub async fn connect_user(&self, tenant: &str, user: &str) -> Client {
        Client::connect(self.addr, Connect::token(&user_token(tenant, user))).await.expect("client connects")
    }

    /// The Prometheus scrape.
    pub async fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics", &[], "").await.1
    }

    /// A sample of this replica's metrics (see [`sample`]).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        sample(&self.metrics().await, name, labels)
    }

    /// `/readyz` status code and body.
    pub async fn readyz(&self) -> (u16, String) {
        http(self.admin, "GET", "/readyz", &[], "").await
    }

    /// Whether `/readyz` answers 200 and reports Redis `ok` (connected, every room subscribed):
    /// readiness itself no longer follows Redis (issue 15).
    pub async fn redis_ok(&self) -> bool {
        let (status, body) = self.readyz().await;
        status == 200 && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["redis"] == "ok")
    }

    /// `POST /v1/publish` with the test API key.
    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        let auth = format!("Bearer {API_KEY}");
        let (status, body) = http(
            self.api,
            "POST",
            "/v1/publish",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            &body.to_string(),
        )
        .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// SIGTERM, then waits for the process to exit (a graceful stop); `true` if it exited
    /// successfully within `within`.
    pub async fn terminate(&mut self, within: std::time::Duration) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + within;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return status.success();
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .await
        .unwrap()
    }

    /// SIGKILL: the process dies without cleanup, like a crashed node.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what each replica was doing.
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap();
            eprintln!("--- replica {} log (last 60 lines) ---", self.addr);
            for line in logs.iter().rev().take(60).rev() {
                eprintln!("{line}");
            }
        }
    }
}

//! A private `redis-server` for a benchmark, so its numbers are not mixed with anything else.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A `redis-server` this process started; killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
    _dir: std::path::PathBuf,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free loopback port, without persistence. The port is one the
    /// OS said was free a moment ago (redis-server cannot bind port 0 and report it): if another
    /// process took it meanwhile, another is tried.
    pub fn start() -> anyhow::Result<PrivateRedis> {
        for _ in 0..10 {
            if let Some(redis) = Self::try_start()? {
                return Ok(redis);
            }
        }
        bail!("redis-server could not bind any of 10 free ports")
    }

    fn try_start() -> anyhow::Result<Option<PrivateRedis>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Unique to this attempt: dropping a failed one must not delete another server's files.
        static ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("roomcast-loadtest-redis-{}-{attempt}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it on the PATH?)")?;
        let pid = child.id();
        let mut redis = PrivateRedis { port, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        // This process answering, not another server that took the port.
        let ours =
            |info: Option<String>| info.is_some_and(|i| i.lines().any(|l| l.trim() == format!("process_id:{pid}")));
        while !ours(redis.cli(&["INFO", "server"])) {
            if redis.child.try_wait()?.is_some() {
                return Ok(None);
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(redis))
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A field of `INFO <section>`.
    pub fn info(&self, section: &str, field: &str) -> Option<f64> {
        let info = self.cli(&["INFO", section])?;
        info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).and_then(|v| v.trim().parse().ok())
    }

    /// Redis' own CPU seconds (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        self.info("cpu", "used_cpu_user").unwrap_or(0.0) + self.info("cpu", "used_cpu_sys").unwrap_or(0.0)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

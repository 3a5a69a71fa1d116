//! What every socket scenario shares: the stack under test (replicas, their processes, how to
//! publish to them), tokens, spreading connections, and measuring processes from /proc.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncWriteExt, BufWriter},
    process::{Child, ChildStdin, Command},
};

/// Which server stack the generator drives; they differ only in how events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StackKind {
    /// Roomcast replicas; events published with `roomcast-publisher` (history on).
    Roomcast,
    /// The Node peer (loadtests/peers/node); events published with @socket.io/redis-emitter.
    Node,
}

/// The stack under test.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Public listeners of the replicas (host:port), comma-separated; connections are spread
    /// over them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub replicas: Vec<SocketAddr>,
    /// PIDs of the replica processes, in the same order: RSS and CPU are read from /proc.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// HS256 secret the replicas verify tokens with.
    #[arg(long, env = "ROOMCAST_JWT_SECRET")]
    pub secret: String,
    /// Which stack the replicas are.
    #[arg(long, value_enum, default_value = "roomcast")]
    pub stack: StackKind,
    /// Redis the stack uses, for publishing.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Key and channel prefix of the Roomcast replicas.
    #[arg(long, default_value = "roomcast")]
    pub prefix: String,
    /// Publisher for `--stack node`: a command reading "room seq" lines on stdin.
    #[arg(long, default_value = "node loadtests/peers/node/publisher.js")]
    pub node_publisher: String,
    /// Loopback source addresses connections come from (127.0.0.1 to 127.0.0.N): each gives
    /// about 28,000 ephemeral ports. Closed connections hold their port for a minute
    /// (TIME_WAIT), and binding slows down as a source's ports fill up: with 4 sources and
    /// 56,000 ports in TIME_WAIT, a fourth 19,000-connection run in a row connected at 536/s,
    /// the generator spending 65 CPU s in the kernel's bind port search.
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Tenant of the synthetic users.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
}

impl Target {
    /// Replica and source address of connection `i`.
    pub fn addresses(&self, i: usize) -> (SocketAddr, IpAddr) {
        let replica = self.replicas[i % self.replicas.len()];
        let source =
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / self.replicas.len() % self.sources.max(1) as usize) as u8));
        (replica, source)
    }

    /// A one-hour token for synthetic user `user`, allowed in every channel.
    pub fn token(&self, user: &str) -> String {
        self.token_in(&self.tenant, user)
    }

    /// Like [`Target::token`], for a user of tenant `tenant`.
    pub fn token_in(&self, tenant: &str, user: &str) -> String {
        #[derive(Serialize)]
        struct Claims<'a> {
            sub: &'a str,
            tenant: &'a str,
            channels: [&'a str; 1],
            exp: u64,
        }
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 3600;
        let claims = Claims { sub: user, tenant, channels: ["*"], exp };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    /// CPU seconds (user + system) and RSS of every replica process, summed.
    pub fn processes(&self) -> ProcSample {
        self.pids.iter().map(|&pid| ProcSample::of(pid)).fold(ProcSample::default(), |a, b| a + b)
    }

    /// Starts the stack's publisher, a process of its own for both stacks: `roomcast-loadtest
    /// publisher` (through `roomcast-publisher`, history on) or `--node-publisher` (through
    /// @socket.io/redis-emitter).
    pub async fn publisher(&self) -> anyhow::Result<EventPublisher> {
        let mut command = match self.stack {
            StackKind::Roomcast => {
                let mut command = Command::new(std::env::current_exe().context("finding this program")?);
                command.args(["publisher", "--redis-url", &self.redis_url, "--prefix", &self.prefix]);
                command
            }
            StackKind::Node => {
                let mut parts = self.node_publisher.split_whitespace();
                let mut command = Command::new(parts.next().context("empty --node-publisher")?);
                command.args(parts).env("REDIS_URL", &self.redis_url);
                command
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {:?} publisher", self.stack))?;
        let stdin = child.stdin.take().context("publisher stdin")?;
        let pid = child.id().context("publisher pid")?;
        Ok(EventPublisher { stdin: tokio::sync::Mutex::new(BufWriter::new(stdin)), pid, _child: child })
    }
}

/// Hands benchmark events to the stack's publisher process as `room seq` lines; it publishes
/// `bench` `{ s: seq, t: publish time in µs }`, stamping `t` just before its publish.
pub struct EventPublisher {
    stdin: tokio::sync::Mutex<BufWriter<ChildStdin>>,
    pid: u32,
    _child: Child,
}

impl EventPublisher {
    /// Queues event `seq` for channel `channel` of `tenant`; [`EventPublisher::flush`] sends.
    pub async fn publish(&self, tenant: &str, channel: &str, seq: u64) -> anyhow::Result<()> {
        self.stdin.lock().await.write_all(format!("tenant:{tenant}:channel:{channel} {seq}\n").as_bytes()).await?;
        Ok(())
    }

    /// Hands queued events to the publisher process.
    pub async fn flush(&self) -> anyhow::Result<()> {
        self.stdin.lock().await.flush().await?;
        Ok(())
    }

    /// The publisher process's CPU time and memory.
    pub fn process(&self) -> ProcSample {
        ProcSample::of(self.pid)
    }
}

/// Microseconds on CLOCK_MONOTONIC: every process on the machine reads the same clock, and the
/// wall clock's steps and slewing do not move it. The Node publisher, a separate process, stamps
/// events with it too (`process.hrtime`). With wall-clock stamps a long-running publisher's
/// offset went stale: this VM's wall clock stepped 0.76 ms against it within 20 s, which showed
/// as Node deliveries with a p50 of 0.00 ms.
pub fn now_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// CPU time and memory of processes, from /proc.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// User + kernel.
    pub cpu_seconds: f64,
    pub user_seconds: f64,
    pub kernel_seconds: f64,
    pub rss_bytes: u64,
}

impl ProcSample {
    pub fn of(pid: u32) -> ProcSample {
        Self::read(&format!("/proc/{pid}")).unwrap_or_default()
    }

    pub fn this_process() -> ProcSample {
        Self::read("/proc/self").unwrap_or_default()
    }

    fn read(dir: &str) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start at ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime, in clock ticks.
        let (user, kernel): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        // USER_HZ is 100 on every Linux target Rust supports.
        Some(ProcSample {
            cpu_seconds: (user + kernel) as f64 / 100.0,
            user_seconds: user as f64 / 100.0,
            kernel_seconds: kernel as f64 / 100.0,
            rss_bytes: rss_kb * 1024,
        })
    }
}

impl std::ops::Add for ProcSample {
    type Output = ProcSample;
    fn add(self, o: ProcSample) -> ProcSample {
        ProcSample {
            cpu_seconds: self.cpu_seconds + o.cpu_seconds,
            user_seconds: self.user_seconds + o.user_seconds,
            kernel_seconds: self.kernel_seconds + o.kernel_seconds,
            rss_bytes: self.rss_bytes + o.rss_bytes,
        }
    }
}

/// End-to-end latencies in µs, recorded from many connection tasks (sharded locks).
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
    pub count: AtomicU64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn new() -> Arc<Latencies> {
        let shards =
            (0..32).map(|_| Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds"))).collect();
        Arc::new(Latencies { shards, count: AtomicU64::new(0) })
    }

    pub fn record(&self, shard: usize, micros: u64) {
        let mut h = self.shards[shard % self.shards.len()].lock().expect("poisoned");
        h.saturating_record(micros.max(1));
        drop(h);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Merges and resets every shard.
    pub fn take(&self) -> LatencySummary {
        let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
        for shard in &self.shards {
            let mut h = shard.lock().expect("poisoned");
            all.add(&*h).expect("same bounds");
            h.reset();
        }
        self.count.store(0, Ordering::Relaxed);
        let ms = |v: u64| v as f64 / 1000.0;
        LatencySummary {
            samples: all.len(),
            p50_ms: ms(all.value_at_quantile(0.5)),
            p90_ms: ms(all.value_at_quantile(0.9)),
            p99_ms: ms(all.value_at_quantile(0.99)),
            p999_ms: ms(all.value_at_quantile(0.999)),
            max_ms: ms(all.max()),
        }
    }
}

/// Opens `n` connections with at most `target.connect_concurrency` in flight, calling `open`
/// for each (it connects, sets up, then runs until told to stop); returns when every attempt
/// finished its setup, with the number opened and the seconds until the last one opened.
/// Prints progress every second.
///
/// The time is to the last *successful* connection: attempts a server cannot accept (its
/// descriptor limit, say) fail only at their timeout, which would otherwise count as
/// connecting time and turn a capacity limit into a bogus connect rate.
pub async fn open_many<F, Fut>(target: &Target, n: usize, open: F) -> anyhow::Result<(usize, f64)>
where
    F: Fn(usize, tokio::sync::oneshot::Sender<anyhow::Result<()>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = std::time::Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(target.connect_concurrency));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let last_opened_us = Arc::new(AtomicU64::new(0));
    let progress = {
        let (ok, failed) = (ok.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = ok.load(Ordering::Relaxed);
                eprintln!(
                    "  connecting: {done}/{n} open, {} failed, {:.0}/s",
                    failed.load(Ordering::Relaxed),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut first_error = None;
    let mut waits = Vec::with_capacity(n);
    for i in 0..n {
        let permit = semaphore.clone().acquire_owned().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(open(i, tx));
        let (ok, failed, last_opened_us) = (ok.clone(), failed.clone(), last_opened_us.clone());
        waits.push(tokio::spawn(async move {
            let result = rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("connection task ended")));
            match &result {
                Ok(()) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    last_opened_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
            result
        }));
    }
    for wait in waits {
        if let Err(e) = wait.await? {
            first_error.get_or_insert(e);
        }
    }
    progress.abort();
    let seconds = last_opened_us.load(Ordering::Relaxed) as f64 / 1e6;
    let opened = ok.load(Ordering::Relaxed) as usize;
    if opened < n {
        let e = first_error.map(|e| format!("{e:#}")).unwrap_or_default();
        eprintln!("  {} of {n} connections failed; first error: {e}", n - opened);
    }
    Ok((opened, seconds))
}

//! `rpc`: what forwarding a client RPC through the gateway adds over calling the backend
//! directly. This process runs the backend (an HTTP/1.1 keep-alive server on `--backend-port`,
//! on its own runtime, answering `{"result":{"ok":true}}` at once), which the replicas were
//! started with as `ROOMCAST_RPC_URL`. At each concurrency level C, for `--duration` each:
//!
//! - direct: C keep-alive connections POST the body a replica would send, one call in flight each;
//! - gateway: C sockets emit `bench:rpc` with an ack, one in flight each.
//!
//! Per level: calls/s and latency percentiles of both, the added p50/p99, and the replicas' CPU
//! per RPC. The same minimal HTTP client code makes the direct calls, so "added" is everything
//! the gateway does: Socket.IO in and out, checks, signing, its HTTP client.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::{
    sio::{Conn, Ignore},
    stack::{Latencies, LatencySummary, ProcSample, Target},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Port the backend listens on (the replicas' ROOMCAST_RPC_URL points there).
    #[arg(long)]
    pub backend_port: u16,
    /// Calls in flight, one per connection or socket.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// How long each measurement lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub direct_calls_per_second: f64,
    pub direct: LatencySummary,
    pub gateway_calls_per_second: f64,
    pub gateway: LatencySummary,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Replica CPU (all replicas) per gateway RPC, µs.
    pub replica_cpu_us_per_rpc: f64,
    /// Gateway RPCs whose ack was not `ok: true`.
    pub gateway_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct RpcResult {
    pub scenario: &'static str,
    pub replicas: usize,
    pub seconds_per_level: f64,
    pub levels: Vec<Level>,
}

/// What the backend answers, and what a replica's request body looks like (for the direct calls).
const ANSWER: &str = r#"{"result":{"ok":true}}"#;
const DATA: &str = r#"{"text":"hello","n":1}"#;

pub async fn run(options: &Options) -> anyhow::Result<RpcResult> {
    let target = &options.target;
    if target.replicas.is_empty() {
        bail!("no replicas");
    }
    let backend = SocketAddr::from(([127, 0, 0, 1], options.backend_port));
    let listener = std::net::TcpListener::bind(backend).context("binding the backend")?;
    listener.set_nonblocking(true)?;
    // The backend on its own runtime: its work is not queued behind the clients'.
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp));
            }
        });
    });
    let body = format!(
        r#"{{"id":"r:1","type":"rpc","event":"bench:rpc","data":{DATA},"identity":{{"tenant":"{}","user":"u"}},"socket":"AAAAAAAAAAAAAAAAAAAA","replica":"0123456789abcdef0123456789abcdef","ts":1,"deadline":2}}"#,
        target.tenant
    );
    let mut levels = Vec::new();
    for &c in &options.concurrency {
        eprintln!("rpc: concurrency {c}");
        let (direct_calls, direct) = measure_direct(backend, &body, c, options.duration).await?;
        let (gateway_calls, gateway, errors, cpu) = measure_gateway(target, c, options.duration).await?;
        let secs = options.duration.as_secs_f64();
        levels.push(Level {
            concurrency: c,
            direct_calls_per_second: direct_calls as f64 / secs,
            gateway_calls_per_second: gateway_calls as f64 / secs,
            added_p50_ms: gateway.p50_ms - direct.p50_ms,
            added_p99_ms: gateway.p99_ms - direct.p99_ms,
            replica_cpu_us_per_rpc: if gateway_calls > 0 { cpu * 1e6 / gateway_calls as f64 } else { 0.0 },
            gateway_errors: errors,
            direct,
            gateway,
        });
    }
    Ok(RpcResult {
        scenario: "rpc",
        replicas: target.replicas.len(),
        seconds_per_level: options.duration.as_secs_f64(),
        levels,
    })
}

/// One backend connection: reads requests (head + Content-Length body), answers each.
async fn serve(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
        ANSWER.len()
    );
    loop {
        let Ok(length) = read_head(&mut read).await else { return };
        let mut body = vec![0; length];
        if read.read_exact(&mut body).await.is_err() || write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads an HTTP/1.1 head; returns its Content-Length (0 when absent).
async fn read_head(read: &mut (impl AsyncBufReadExt + Unpin)) -> anyhow::Result<usize> {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            bail!("closed");
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            return Ok(length);
        }
        if let Some((name, value)) = trimmed.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().context("content-length")?;
        }
    }
}

async fn measure_direct(
    backend: SocketAddr,
    body: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(u64, LatencySummary)> {
    let latencies = Latencies::new();
    let calls = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let request = Arc::new(format!(
        "POST /rpc HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let tcp = TcpStream::connect(backend).await.context("connecting to the backend")?;
        tcp.set_nodelay(true)?;
        let (latencies, calls, running, request) = (latencies.clone(), calls.clone(), running.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (read, mut write) = tcp.into_split();
            let mut read = BufReader::new(read);
            while running.load(Ordering::Relaxed) {
                let start = Instant::now();
                write.write_all(request.as_bytes()).await?;
                let length = read_head(&mut read).await?;
                let mut answer = vec![0; length];
                read.read_exact(&mut answer).await?;
                latencies.record(i, start.elapsed().as_micros() as u64);
                calls.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(duration).await;
    running.store(false, Ordering::Relaxed);
    let calls = calls.load(Ordering::Relaxed);
    let summary = latencies.take();
    for task in tasks {
        task.await??;
    }
    Ok((calls, summary))
}

async fn measure_gateway(
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(u64, LatencySummary, u64, f64)> {
    let latencies = Latencies::new();
    let (calls, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let running = Arc::new(AtomicBool::new(true));
    let data: serde_json::Value = serde_json::from_str(DATA)?;
    let mut conns = Vec::new();
    for i in 0..concurrency {
        let (addr, source) = target.addresses(i);
        conns.push(Conn::connect(addr, source, &target.token(&format!("rpc{i}")), Duration::from_secs(30)).await?);
    }
    let cpu0: ProcSample = target.processes();
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (latencies, calls, errors, running, data) =
            (latencies.clone(), calls.clone(), errors.clone(), running.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ack = conn.call("bench:rpc", &data, &mut Ignore).await?;
                if ack["ok"] == true {
                    latencies.record(i, start.elapsed().as_micros() as u64);
                    calls.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            conn.close().await;
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(duration).await;
    running.store(false, Ordering::Relaxed);
    let cpu = target.processes().cpu_seconds - cpu0.cpu_seconds;
    let (calls, errors) = (calls.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    let summary = latencies.take();
    for task in tasks {
        task.await??;
    }
    Ok((calls, summary, errors, cpu))
}

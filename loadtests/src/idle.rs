//! `idle`: N connections that only answer pings. Reports the replicas' RSS per connection and
//! the connect rate.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::{
    sio::{Conn, Ignore},
    stack::{ProcSample, Target, open_many},
};

/// Options of the `idle` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// How long to hold them open after the last one connected (memory settles).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Send the upgrade headers a desktop browser sends (origin, user agent, languages,
    /// encodings, cache directives, a ~600-byte cookie: ~1 KB more), instead of the bare minimum.
    /// A server that keeps the upgrade request keeps them too.
    #[arg(long)]
    pub browser_headers: bool,
}

/// What desktop Chrome adds to a WebSocket upgrade, besides the headers every client sends;
/// the cookie is [`browser_cookie`].
const BROWSER_HEADERS: [(&str, &str); 7] = [
    ("origin", "https://app.example.com"),
    ("pragma", "no-cache"),
    ("cache-control", "no-cache"),
    (
        "user-agent",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36",
    ),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-US,en;q=0.9,de;q=0.8"),
    ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"),
];

/// A cookie header of about 600 bytes: a session and the usual analytics and consent cookies.
fn browser_cookie() -> String {
    (0..12).map(|i| format!("c{i:02}={}", "x".repeat(44))).collect::<Vec<_>>().join("; ")
}

#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub scenario: &'static str,
    pub stack: crate::stack::StackKind,
    pub connections_requested: usize,
    pub connections_open: usize,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_per_connection_bytes: f64,
    pub server_cpu_seconds: f64,
    /// The replicas' CPU while the connections only held (heartbeats), per connection per
    /// second, in µs.
    pub hold_cpu_us_per_connection_second: f64,
    pub generator_cpu_seconds: f64,
    pub generator_rss_bytes: u64,
}

pub async fn run(options: &Options) -> anyhow::Result<IdleResult> {
    let target = &options.target;
    let before = target.processes();
    let gen_before = ProcSample::this_process();
    let (stop_tx, stop_rx) = watch::channel(false);
    eprintln!("idle: opening {} connections to {} replica(s)", options.connections, target.replicas.len());
    let headers: Vec<(&'static str, String)> = if options.browser_headers {
        BROWSER_HEADERS.iter().map(|&(n, v)| (n, v.to_owned())).chain([("cookie", browser_cookie())]).collect()
    } else {
        Vec::new()
    };
    let headers = std::sync::Arc::new(headers);
    let (open, seconds) = open_many(target, options.connections, |i, ready| {
        let (replica, source) = target.addresses(i);
        let token = target.token(&format!("u{i}"));
        let mut stop = stop_rx.clone();
        let headers = headers.clone();
        async move {
            match Conn::connect_with_headers(replica, source, &token, Duration::from_secs(30), &headers).await {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    let _ = conn.run(&mut Ignore, None, async move { while stop.changed().await.is_ok() {} }).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        }
    })
    .await?;
    eprintln!("idle: {open} open in {seconds:.1} s ({:.0}/s); holding {:?}", open as f64 / seconds, options.hold);
    let held = target.processes();
    let hold_started = std::time::Instant::now();
    tokio::time::sleep(options.hold).await;
    let after = target.processes();
    let hold_seconds = hold_started.elapsed().as_secs_f64();
    let generator = ProcSample::this_process();
    let _ = stop_tx.send(true);
    let result = IdleResult {
        scenario: "idle",
        stack: target.stack,
        connections_requested: options.connections,
        connections_open: open,
        connect_seconds: seconds,
        connects_per_second: if seconds > 0.0 { open as f64 / seconds } else { 0.0 },
        rss_before_bytes: before.rss_bytes,
        rss_after_bytes: after.rss_bytes,
        rss_per_connection_bytes: (after.rss_bytes as f64 - before.rss_bytes as f64) / open.max(1) as f64,
        server_cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        hold_cpu_us_per_connection_second: (after.cpu_seconds - held.cpu_seconds) * 1e6
            / (open.max(1) as f64 * hold_seconds),
        generator_cpu_seconds: generator.cpu_seconds - gen_before.cpu_seconds,
        generator_rss_bytes: generator.rss_bytes,
    };
    eprintln!(
        "idle: {} connections; replicas' RSS {:.1} MB -> {:.1} MB = {:.1} KB per connection; connect rate {:.0}/s; \
         holding: {:.2} µs of CPU per connection per second; generator {:.1} CPU s, {:.0} MB",
        open,
        before.rss_bytes as f64 / 1e6,
        after.rss_bytes as f64 / 1e6,
        result.rss_per_connection_bytes / 1e3,
        result.connects_per_second,
        result.hold_cpu_us_per_connection_second,
        result.generator_cpu_seconds,
        generator.rss_bytes as f64 / 1e6
    );
    Ok(result)
}

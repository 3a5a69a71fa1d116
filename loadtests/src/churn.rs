//! `churn`: many short-lived clients that join a channel and disconnect at once, racing the
//! join's ack, a `leave`, a `presence:update` or an `auth:refresh`, half of them with
//! `socket.disconnect()` (a DISCONNECT packet, then the transport closes) and half by closing
//! the transport. Afterwards every replica must be back to zero: no connection, no local room,
//! no Redis subscription of the churned rooms, nobody in their presence. Reports what leaked;
//! every figure must be 0. (The deterministic versions of these races are the gateway's
//! `tests/disconnect.rs`; this is the same under load, where they show up by chance.)

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    sio::{Conn, Ignore},
    stack::Target,
};

/// Options of the `churn` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Admin listeners of the replicas (host:port, same order as --replicas): metrics are read there.
    #[arg(long, value_delimiter = ',', required = true)]
    pub admin: Vec<SocketAddr>,
    /// Connect / operate / disconnect cycles.
    #[arg(long, default_value_t = 2_000)]
    pub cycles: usize,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Channels the cycles join (`churn0`, `churn1`, …).
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// How long to wait for the replicas to return to zero (the presence grace period included).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

#[derive(Debug, Serialize)]
pub struct ChurnResult {
    pub scenario: &'static str,
    pub cycles: usize,
    pub failed_cycles: usize,
    pub cycles_per_second: f64,
    pub leaked_connections: f64,
    pub leaked_local_rooms: f64,
    pub leaked_subscriptions: usize,
    pub leaked_presence_entries: u64,
}

impl ChurnResult {
    /// Whether anything was left behind.
    pub fn leaked(&self) -> bool {
        self.leaked_connections != 0.0
            || self.leaked_local_rooms != 0.0
            || self.leaked_subscriptions != 0
            || self.leaked_presence_entries != 0
    }
}

/// What a cycle does between its join and its disconnect.
const OPS: [&str; 4] = ["join-ack", "leave", "presence:update", "auth:refresh"];

async fn cycle(target: &Target, i: usize, rooms: usize) -> anyhow::Result<()> {
    let (addr, source) = target.addresses(i);
    let user = format!("churn{i}");
    let token = target.token(&user);
    let channel = serde_json::json!({ "channel": format!("churn{}", i % rooms) });
    let mut conn = Conn::connect(addr, source, &token, Duration::from_secs(30)).await?;
    match OPS[i % OPS.len()] {
        "join-ack" => conn.emit_with_ack("join", &channel).await?,
        op => {
            let ack = conn.call("join", &channel, &mut Ignore).await?;
            if ack["ok"] != true {
                bail!("join refused: {ack}");
            }
            let arg = match op {
                "leave" => channel.clone(),
                "presence:update" => serde_json::json!({ "status": "away" }),
                _ => serde_json::json!({ "token": token }),
            };
            conn.emit_with_ack(op, &arg).await?;
        }
    }
    if (i / OPS.len()).is_multiple_of(2) {
        conn.disconnect().await
    } else {
        conn.close().await
    }
    Ok(())
}

/// `GET /metrics` on `admin`; the value of the unlabelled sample `name`.
async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.with_context(|| format!("admin {admin}"))?;
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The churned rooms' channels still subscribed in Redis.
fn subscriptions(target: &Target) -> anyhow::Result<usize> {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &target.redis_url, "PUBSUB", "CHANNELS", &format!("{}:*churn*", target.prefix)])
        .output()
        .context("running redis-cli")?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count())
}

/// Users listed in the churned channels' presence, asked by an observer that joins none.
async fn present(target: &Target, rooms: usize) -> anyhow::Result<u64> {
    let (addr, source) = target.addresses(0);
    let mut observer = Conn::connect(addr, source, &target.token("churn-observer"), Duration::from_secs(30)).await?;
    let mut total = 0;
    for r in 0..rooms {
        let ask = serde_json::json!({ "channel": format!("churn{r}") });
        // One socket asking about every room runs into its `presence:list` budget
        // (ROOMCAST_RATE_PRESENCE_LIST): wait as told and ask again, as a polite client does.
        let ack = loop {
            let ack = observer.call("presence:list", &ask, &mut Ignore).await?;
            match ack["error"]["code"].as_str() {
                Some("rate_limited") => {
                    let wait = ack["error"]["retryAfterMs"].as_u64().unwrap_or(100);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                _ => break ack,
            }
        };
        total += ack["total"].as_u64().with_context(|| format!("presence:list answered {ack}"))?;
    }
    observer.close().await;
    Ok(total)
}

pub async fn run(options: &Options) -> anyhow::Result<ChurnResult> {
    let target = &options.target;
    if options.admin.len() != target.replicas.len() {
        bail!("churn needs one --admin address per replica");
    }
    eprintln!(
        "churn: {} cycles, {} at once, over {} replicas",
        options.cycles,
        options.concurrency,
        target.replicas.len()
    );
    let started = Instant::now();
    let failed = futures_util::stream::iter(0..options.cycles)
        .map(|i| cycle(target, i, options.rooms))
        .buffer_unordered(options.concurrency.max(1))
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    let cycles_per_second = options.cycles as f64 / started.elapsed().as_secs_f64();

    // Back to zero within --settle, or report what is left.
    let deadline = Instant::now() + options.settle;
    let result = loop {
        let (mut connections, mut local_rooms) = (0.0, 0.0);
        for admin in &options.admin {
            connections += metric(*admin, "roomcast_connections").await?;
            local_rooms += metric(*admin, "roomcast_local_rooms").await?;
        }
        let subscriptions = subscriptions(target)?;
        let settled = connections == 0.0 && local_rooms == 0.0 && subscriptions == 0;
        // Asked only once the rest settled (or at the deadline): the observer's own connection
        // shows in the metrics while it closes.
        let last = Instant::now() > deadline;
        let presence = if settled || last { present(target, options.rooms).await? } else { 1 };
        let result = ChurnResult {
            scenario: "churn",
            cycles: options.cycles,
            failed_cycles: failed,
            cycles_per_second,
            leaked_connections: connections,
            leaked_local_rooms: local_rooms,
            leaked_subscriptions: subscriptions,
            leaked_presence_entries: presence,
        };
        if !result.leaked() || last {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "churn: {} cycles ({} failed) at {:.0}/s; leaked: {} connections, {} local rooms, {} subscriptions, {} presence entries",
        result.cycles,
        result.failed_cycles,
        result.cycles_per_second,
        result.leaked_connections,
        result.leaked_local_rooms,
        result.leaked_subscriptions,
        result.leaked_presence_entries
    );
    Ok(result)
}

//! Transactional publishing end to end: rows committed to the Postgres outbox
//! (`roomcast_publish`), published by `roomcast-relay`, delivered by the gateway to socket.io
//! members. Two measurements:
//!
//! - **steady**: rows inserted at each of `--rates` for `--step` by `--writers` connections, each
//!   row its own transaction (autocommit), as an application's transactions would: the latency
//!   from the insert to each member's receipt (p50/p99/max), the relay's lag gauge (sampled),
//!   and the relay's CPU per row;
//! - **drain**: `--drain-rows` rows committed in one transaction; the time until every member
//!   has them all: the relay's end-to-end throughput in rows/s.
//!
//! Every delivery is checked: a member seeing a row twice or out of order is counted
//! (`out_of_order`, must be 0), and rows missing at the end are counted (`missing`).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::{
    sio::{Conn, Handler, event_name},
    stack::{Latencies, LatencySummary, ProcSample, Target, now_us},
};

#[derive(Debug, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Postgres holding the outbox (the migration is applied if missing).
    #[arg(long)]
    pub database_url: String,
    /// The relay's admin listener (host:port): its lag gauge is sampled.
    #[arg(long)]
    pub relay_admin: Option<SocketAddr>,
    /// The relay's PID: its CPU per row is read from /proc.
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// Channels rows are spread over (round-robin).
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Members per channel.
    #[arg(long, default_value_t = 2)]
    pub members: usize,
    /// Steady insert rates (rows/s), one step each.
    #[arg(long, value_delimiter = ',', default_value = "200,500,1000,2000")]
    pub rates: Vec<u64>,
    /// Length of each steady step.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Connections inserting at once (each row is one autocommit transaction).
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Rows committed in one transaction for the drain measurement (0: skip it).
    #[arg(long, default_value_t = 50_000)]
    pub drain_rows: u64,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    scenario: &'static str,
    rooms: usize,
    members: usize,
    steps: Vec<Step>,
    drain: Option<Drain>,
    /// Deliveries seen twice or out of order, over the whole run (must be 0).
    out_of_order: u64,
    /// Deliveries missing at the end of the run (must be 0).
    missing: u64,
    /// The highest insert rate whose rows were all delivered with p99 under 1 s.
    sustainable_rows_per_second: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Step {
    target_rate: u64,
    inserted_per_second: f64,
    rows: u64,
    delivered: u64,
    /// Insert to receipt, per delivery.
    latency: LatencySummary,
    /// The relay's `roomcast_relay_lag_seconds`, largest sample, ms.
    relay_lag_max_ms: Option<f64>,
    /// The relay's CPU (user + system) per row, µs.
    relay_cpu_us_per_row: Option<f64>,
    /// The gateway's CPU per delivery, µs.
    gateway_cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Drain {
    rows: u64,
    seconds: f64,
    rows_per_second: f64,
    relay_cpu_us_per_row: Option<f64>,
}

/// What every member has seen.
struct Tally {
    delivered: AtomicU64,
    out_of_order: AtomicU64,
    latencies: Arc<Latencies>,
}

struct Member {
    shard: usize,
    last_seq: i64,
    tally: Arc<Tally>,
}

impl Handler for Member {
    fn event(&mut self, packet: &str) {
        if event_name(packet) != Some("tick") {
            return;
        }
        let now = now_us();
        let Ok(serde_json::Value::Array(args)) = serde_json::from_str::<serde_json::Value>(packet) else { return };
        let (Some(seq), Some(t)) =
            (args.get(1).and_then(|d| d["seq"].as_i64()), args.get(1).and_then(|d| d["t"].as_u64()))
        else {
            return;
        };
        // Rows of one room carry increasing seqs (one writer per room, or one transaction).
        if seq <= self.last_seq {
            self.tally.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.last_seq = seq;
        if t > 0 {
            self.tally.latencies.record(self.shard, now.saturating_sub(t));
        }
        self.tally.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(o: &Options) -> anyhow::Result<Outcome> {
    let (db, connection) = tokio_postgres::connect(&o.database_url, NoTls).await.context("connecting to Postgres")?;
    tokio::spawn(connection);
    db.batch_execute(roomcast_relay::outbox::MIGRATION).await.context("applying the outbox migration")?;
    db.execute("DELETE FROM roomcast_outbox", &[]).await?;

    let tally =
        Arc::new(Tally { delivered: AtomicU64::new(0), out_of_order: AtomicU64::new(0), latencies: Latencies::new() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for room in 0..o.rooms {
        for m in 0..o.members {
            let i = room * o.members + m;
            let (addr, source) = o.target.addresses(i);
            let mut member = Member { shard: i, last_seq: -1, tally: tally.clone() };
            let token = o.target.token(&format!("u{i}"));
            let (conn, _) = Conn::connect_and_join(addr, source, &token, &format!("ob{room}"), None, &mut member)
                .await
                .with_context(|| format!("member {i}"))?;
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = conn
                    .run(&mut member, None, async move { while stop.changed().await.is_ok() && !*stop.borrow() {} })
                    .await;
            });
        }
    }
    let members = o.members as u64;
    let mut steps = Vec::new();
    let mut expected = 0u64;
    // One writer per room at a time (writer w owns rooms w, w + writers, ...), so a room's rows
    // commit in seq order and a member can check the order.
    let writers = o.writers.clamp(1, o.rooms);
    let mut seqs = vec![0i64; o.rooms];
    for &rate in &o.rates {
        tally.latencies.take();
        let relay_before = o.relay_pid.map(ProcSample::of);
        let gateway_before = o.target.processes();
        let delivered_before = tally.delivered.load(Ordering::Relaxed);
        let lag_max = Arc::new(std::sync::Mutex::new(None::<f64>));
        let sampler = o.relay_admin.map(|admin| {
            let lag_max = lag_max.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(lag) = relay_lag(admin).await {
                        let mut max = lag_max.lock().expect("poisoned");
                        *max = Some(max.map_or(lag, |m: f64| m.max(lag)));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let rooms: Vec<usize> = (w..o.rooms).step_by(writers).collect();
            let firsts: Vec<i64> = rooms.iter().map(|&r| seqs[r]).collect();
            let (client, connection) = tokio_postgres::connect(&o.database_url, NoTls).await?;
            tokio::spawn(connection);
            let per_writer = rate as f64 / writers as f64;
            let step = o.step;
            tasks.push(tokio::spawn(async move {
                let statement =
                    client.prepare("SELECT roomcast_publish('bench', 'channel', $1, 'tick', $2::text::jsonb)").await?;
                let interval = Duration::from_secs_f64(1.0 / per_writer);
                let mut next = Instant::now();
                let mut sent = 0usize;
                let mut seqs = firsts;
                while started.elapsed() < step {
                    let k = sent % rooms.len();
                    let data = serde_json::json!({ "seq": seqs[k], "t": now_us() }).to_string();
                    client.query_one(&statement, &[&format!("ob{}", rooms[k]), &data]).await?;
                    seqs[k] += 1;
                    sent += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                anyhow::Ok((rooms, seqs))
            }));
        }
        let mut rows = 0u64;
        for t in tasks {
            let (rooms, last) = t.await??;
            for (r, s) in rooms.into_iter().zip(last) {
                rows += (s - seqs[r]) as u64;
                seqs[r] = s;
            }
        }
        let inserting = started.elapsed().as_secs_f64();
        expected += rows * members;
        let settle = Instant::now();
        while tally.delivered.load(Ordering::Relaxed) < expected && settle.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(s) = sampler {
            s.abort();
        }
        let delivered = tally.delivered.load(Ordering::Relaxed) - delivered_before;
        let relay_cpu = relay_before.zip(o.relay_pid.map(ProcSample::of)).map(|(a, b)| b.cpu_seconds - a.cpu_seconds);
        let gateway_cpu = o.target.processes().cpu_seconds - gateway_before.cpu_seconds;
        let step = Step {
            target_rate: rate,
            inserted_per_second: rows as f64 / inserting,
            rows,
            delivered,
            latency: tally.latencies.take(),
            relay_lag_max_ms: lag_max.lock().expect("poisoned").map(|s| s * 1000.0),
            relay_cpu_us_per_row: relay_cpu.map(|c| c * 1e6 / rows.max(1) as f64),
            gateway_cpu_us_per_delivery: (!o.target.pids.is_empty())
                .then(|| gateway_cpu * 1e6 / delivered.max(1) as f64),
        };
        eprintln!(
            "outbox {rate} rows/s: inserted {:.0}/s, delivered {}/{}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, relay lag max {:?} ms, relay CPU {:?} µs/row",
            step.inserted_per_second,
            step.delivered,
            rows * members,
            step.latency.p50_ms,
            step.latency.p99_ms,
            step.latency.max_ms,
            step.relay_lag_max_ms.map(|v| v.round()),
            step.relay_cpu_us_per_row.map(|v| v.round()),
        );
        steps.push(step);
    }

    let drain = if o.drain_rows > 0 {
        let relay_before = o.relay_pid.map(ProcSample::of);
        let before = tally.delivered.load(Ordering::Relaxed);
        // seq continues each room's sequence: row g goes to room g % rooms.
        let rooms = o.rooms as i64;
        let offsets: Vec<i64> = seqs.clone();
        let mut tx_client = db;
        let tx = tx_client.transaction().await?;
        tx.execute(
            "INSERT INTO roomcast_outbox (tenant, kind, target_id, event, data)
             SELECT 'bench', 'channel', 'ob' || (g % $2::bigint), 'tick',
                    jsonb_build_object('seq', ($3::bigint[])[(g % $2::bigint) + 1] + g / $2::bigint, 't', 0)
             FROM generate_series(0::bigint, $1::bigint - 1) g ORDER BY g",
            &[&(o.drain_rows as i64), &rooms, &offsets],
        )
        .await?;
        tx.commit().await?;
        let started = Instant::now();
        for (r, s) in seqs.iter_mut().enumerate() {
            *s += (o.drain_rows as i64 - r as i64 + rooms - 1) / rooms;
        }
        expected += o.drain_rows * members;
        while tally.delivered.load(Ordering::Relaxed) < expected && started.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let got = (tally.delivered.load(Ordering::Relaxed) - before) / members.max(1);
        let relay_cpu = relay_before.zip(o.relay_pid.map(ProcSample::of)).map(|(a, b)| b.cpu_seconds - a.cpu_seconds);
        let d = Drain {
            rows: got,
            seconds,
            rows_per_second: got as f64 / seconds,
            relay_cpu_us_per_row: relay_cpu.map(|c| c * 1e6 / got.max(1) as f64),
        };
        eprintln!("outbox drain: {} rows in {:.2} s: {:.0} rows/s end to end", d.rows, d.seconds, d.rows_per_second);
        Some(d)
    } else {
        None
    };
    let _ = stop_tx.send(true);
    let sustainable_rows_per_second = steps
        .iter()
        .filter(|s| s.delivered == s.rows * members && s.latency.p99_ms < 1000.0)
        .map(|s| s.inserted_per_second)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    Ok(Outcome {
        scenario: "outbox",
        rooms: o.rooms,
        members: o.members,
        steps,
        drain,
        out_of_order: tally.out_of_order.load(Ordering::Relaxed),
        missing: expected.saturating_sub(tally.delivered.load(Ordering::Relaxed)),
        sustainable_rows_per_second,
    })
}

/// The relay's `roomcast_relay_lag_seconds`, from its /metrics.
async fn relay_lag(admin: SocketAddr) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines().find_map(|l| l.strip_prefix("roomcast_relay_lag_seconds ")).and_then(|v| v.trim().parse().ok())
}

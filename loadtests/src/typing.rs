//! `typing`: a client-originated typing storm. In every room some members toggle their typing
//! state; the indicator travels client → replica → Redis → every replica → the room's other
//! members. Reports toggles/s sent, indicators/s delivered, their latency and what went missing.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    sio::{Conn, Handler, event_name},
    stack::{Latencies, LatencySummary, ProcSample, StackKind, Target, now_us, open_many},
};

/// Options of the `typing` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Rooms (channels `t0`, `t1`, …).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Members per room, spread over the replicas.
    #[arg(long, default_value_t = 20)]
    pub room_size: usize,
    /// Members per room that type.
    #[arg(long, default_value_t = 4)]
    pub typists: usize,
    /// Each typist toggles typing true/false this often. Roomcast throttles `typing: true` per
    /// user and channel (ROOMCAST_TYPING_THROTTLE): run it with a throttle below this interval.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long the storm lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct TypingResult {
    pub scenario: &'static str,
    pub stack: StackKind,
    pub connections: usize,
    pub toggles_sent: u64,
    pub toggles_per_second: f64,
    pub indicators_expected: u64,
    pub indicators_delivered: u64,
    pub indicators_per_second: f64,
    pub missing: u64,
    pub latency: LatencySummary,
    pub server_cpu_seconds: f64,
    pub server_cpu_percent: f64,
    pub generator_cpu_percent: f64,
}

/// When each (user, state) was last sent, to time its indicators.
type Sent = Arc<Mutex<HashMap<String, (bool, u64)>>>;

struct Receiver {
    sent: Sent,
    latencies: Arc<Latencies>,
    delivered: Arc<AtomicU64>,
    shard: usize,
}

impl Handler for Receiver {
    fn event(&mut self, packet: &str) {
        if event_name(packet) != Some("typing") {
            return;
        }
        let Some(user) = packet.split("\"userId\":\"").nth(1).and_then(|r| r.split('"').next()) else { return };
        let typing = packet.contains("\"typing\":true");
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(&(state, at)) = self.sent.lock().expect("poisoned").get(user)
            && state == typing
        {
            self.latencies.record(self.shard, now_us().saturating_sub(at));
        }
    }
}

pub async fn run(options: &Options) -> anyhow::Result<TypingResult> {
    let target = &options.target;
    if options.typists > options.room_size {
        bail!("--typists must not exceed --room-size");
    }
    let n = options.rooms * options.room_size;
    let sent: Sent = Arc::default();
    let latencies = Latencies::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let toggles = Arc::new(AtomicU64::new(0));
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    eprintln!(
        "typing: {} rooms x {} members ({} typing) over {} replica(s)",
        options.rooms,
        options.room_size,
        options.typists,
        target.replicas.len()
    );
    let (open, _) = open_many(target, n, |i, ready| {
        let (replica, source) = target.addresses(i);
        let user = format!("u{i}");
        let token = target.token(&user);
        let room = format!("t{}", i / options.room_size);
        let is_typist = i % options.room_size < options.typists;
        let mut handler =
            Receiver { sent: sent.clone(), latencies: latencies.clone(), delivered: delivered.clone(), shard: i };
        let (mut go, mut stop, toggles, interval) = (go_rx.clone(), stop_rx.clone(), toggles.clone(), options.interval);
        async move {
            let setup = async {
                Conn::connect_and_join(replica, source, &token, &room, None, &mut handler).await.map(|(conn, _)| conn)
            };
            let conn = match setup.await {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    conn
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let outgoing = is_typist.then(|| {
                // Typists: once started, toggle on a schedule, offset per user so the storm is
                // spread over the interval.
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let sent = handler.sent.clone();
                tokio::spawn(async move {
                    while !*go.borrow() {
                        if go.changed().await.is_err() {
                            return;
                        }
                    }
                    let offset = interval.mul_f64((i % 97) as f64 / 97.0);
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                    let mut typing = false;
                    loop {
                        tick.tick().await;
                        typing = !typing;
                        let packet =
                            format!("42{}", serde_json::json!(["typing", { "channel": room, "typing": typing }]));
                        sent.lock().expect("poisoned").insert(user.clone(), (typing, now_us()));
                        if tx.send(packet).await.is_err() {
                            return;
                        }
                        toggles.fetch_add(1, Ordering::Relaxed);
                    }
                });
                rx
            });
            let _ = conn.run(&mut handler, outgoing, async move { while stop.changed().await.is_ok() {} }).await;
        }
    })
    .await?;
    if open < n {
        bail!("only {open} of {n} members connected");
    }
    latencies.take();
    let (server0, gen0, t0) = (target.processes(), ProcSample::this_process(), Instant::now());
    let _ = go_tx.send(true);
    while t0.elapsed() < options.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "  {:.0} s: {} toggles sent, {} indicators delivered",
            t0.elapsed().as_secs_f64(),
            toggles.load(Ordering::Relaxed),
            delivered.load(Ordering::Relaxed)
        );
    }
    let _ = stop_tx.send(true);
    let sent_total = toggles.load(Ordering::Relaxed);
    let expected = sent_total * (options.room_size as u64 - 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = options.duration.as_secs_f64();
    let (server1, gen1) = (target.processes(), ProcSample::this_process());
    let got = delivered.load(Ordering::Relaxed);
    let result = TypingResult {
        scenario: "typing",
        stack: target.stack,
        connections: n,
        toggles_sent: sent_total,
        toggles_per_second: sent_total as f64 / seconds,
        indicators_expected: expected,
        indicators_delivered: got,
        indicators_per_second: got as f64 / seconds,
        missing: expected.saturating_sub(got),
        latency: latencies.take(),
        server_cpu_seconds: server1.cpu_seconds - server0.cpu_seconds,
        server_cpu_percent: (server1.cpu_seconds - server0.cpu_seconds) * 100.0 / t0.elapsed().as_secs_f64(),
        generator_cpu_percent: (gen1.cpu_seconds - gen0.cpu_seconds) * 100.0 / t0.elapsed().as_secs_f64(),
    };
    eprintln!(
        "typing: {:.0} toggles/s -> {:.0} indicators/s delivered ({} missing); p50 {:.2} p99 {:.2} max {:.2} ms; replicas {:.0}% CPU, generator {:.0}%",
        result.toggles_per_second,
        result.indicators_per_second,
        result.missing,
        result.latency.p50_ms,
        result.latency.p99_ms,
        result.latency.max_ms,
        result.server_cpu_percent,
        result.generator_cpu_percent
    );
    Ok(result)
}

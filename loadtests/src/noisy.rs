//! `noisy-neighbour`: does one tenant's abuse move another tenant's latency, or a replica's
//! memory? Tenant B (the `--tenant`, quiet) has `--members` clients in one channel receiving
//! events published at `--rate`/s (publish → deliver latency), and a presence probe: every
//! `--probe-every` a new B client joins channel `bp`, where a B observer times its
//! `presence:join` (join sent → join announced). Tenant A (`--noisy-tenant`) is idle for the
//! baseline phase, then runs each abuse for `--phase` with `--attackers` sockets:
//!
//! - `presence-flood`: each socket in 100 channels sends `presence:update` as fast as it can;
//! - `typing-flood`: `typing` true/false alternation as fast as it can;
//! - `join-churn`: `join` + `leave` of ever new channel names as fast as it can;
//! - `non-reading`: sockets join a channel A publishes to at `--sink-rate`/s, then never read;
//! - `big-headers`: the reproduction kept up: `--big-headers-rate` WebSocket upgrades a
//!   second (200: the 200 upgrades, every second) with a 400 KB `Authorization` header
//!   and no valid token;
//! - `header-flood`: the same upgrades back to back, as fast as the attackers can: a connection
//!   flood of thousands a second, before any token or tenant is known;
//! - `header-flood-elsewhere` (a control): the flood sent to `--flood-target`, a gateway that is
//!   none of B's replicas.
//!
//! Attackers that are disconnected (rate limits, slow consumer) reconnect and go on. Per phase:
//! B's delivery and presence-join percentiles, their p99 against the baseline's, the replicas'
//! largest RSS, and what the abuse met (acks refused, disconnects, HTTP statuses).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    fanout::{Counters, open_members, publish_at, settle},
    sio::{Conn, Handler, Ignore},
    stack::{Latencies, LatencySummary, ProcSample, Target, now_us},
};

/// Options of the `noisy-neighbour` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Tenant A, the abuser (B is `--tenant`).
    #[arg(long, default_value = "noisy")]
    pub noisy_tenant: String,
    /// B's clients in the measured channel.
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Events per second published to B's channel.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How often a new B client joins the presence probe channel.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub probe_every: Duration,
    /// Length of the baseline and of each abuse phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub phase: Duration,
    /// A's sockets per abuse.
    #[arg(long, default_value_t = 8)]
    pub attackers: usize,
    /// Events per second A publishes to its non-reading sockets' channel (small `bench` events).
    #[arg(long, default_value_t = 2_000)]
    pub sink_rate: u64,
    /// Where A's attackers run: `shared` (in the tokio runtime of B's clients: a busy attacker
    /// queues ahead of B's reads inside this process) or `own` (their own runtime on 2 more
    /// threads: the kernel shares the CPU between them and B's clients, and the attackers get
    /// more of it). On one machine neither is another tenant's browser on another machine:
    /// run both, and `--flood-target`, to see what the generator itself adds. `niced` is
    /// `own` with the attackers' threads at nice 19 (Linux): against a thread at nice 0 they
    /// get 15/1039 of a contended CPU, so the attack runs on what B's clients and the replicas
    /// leave and its own cost barely delays them; the nearest a single machine comes to an
    /// attacker on its own hardware.
    #[arg(long, default_value = "shared", value_parser = ["own", "shared", "niced"])]
    pub attacker_runtime: String,
    /// Where the `header-flood-elsewhere` control sends its upgrades: a gateway that is not one
    /// of B's replicas. The same attack reaches none of B's servers: what B's latency does then
    /// is the generator's and the machine's share. (compare.py runs that gateway at nice 19 when
    /// the attackers are niced, as it stands for a server elsewhere; B's replicas are never
    /// niced, so under the real flood they pay their refusals in full.)
    #[arg(long)]
    pub flood_target: Option<SocketAddr>,
    /// `big-headers`: oversized upgrades per second, all attackers together.
    #[arg(long, default_value_t = 200)]
    pub big_headers_rate: u64,
    /// The abuses, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "presence-flood,typing-flood,join-churn,non-reading,big-headers,header-flood"
    )]
    pub abuses: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub delivery: LatencySummary,
    pub presence_join: LatencySummary,
    /// B's delivery p99 over the baseline's.
    pub delivery_p99_ratio: f64,
    /// B's presence-join p99 over the baseline's.
    pub presence_join_p99_ratio: f64,
    /// B's events not delivered by the end of the phase (+ 2 s).
    pub delivery_lost: u64,
    /// RSS of all replicas together when the phase began, and the largest during it.
    pub rss_start_bytes: u64,
    pub rss_max_bytes: u64,
    /// CPU the replicas and this generator (B's clients and A's attackers) used per second of
    /// the measured part of the phase: on a shared machine, an abuse's own cost shows here.
    pub replicas_cpu_percent: f64,
    pub generator_cpu_percent: f64,
    /// What the abuse met.
    pub abuse: AbuseCounts,
}

#[derive(Debug, Default, Serialize)]
pub struct AbuseCounts {
    /// Packets (or HTTP requests) A sent.
    pub sent: u64,
    /// A's connections that ended (rate_limited, slow_consumer, …) and were opened again.
    pub disconnects: u64,
    /// A's connection attempts refused.
    pub refused: u64,
    /// HTTP statuses of oversized upgrades.
    pub statuses: HashMap<u16, u64>,
}

#[derive(Debug, Serialize)]
pub struct NoisyResult {
    pub scenario: &'static str,
    pub replicas: usize,
    pub members: usize,
    pub rate: u64,
    pub phase_seconds: f64,
    pub phases: Vec<Phase>,
    /// The largest p99 ratio of any abuse phase (the target is ≤ 2); `baseline-end` and the
    /// `…-elsewhere` controls are not ones.
    pub worst_delivery_p99_ratio: f64,
    pub worst_presence_join_p99_ratio: f64,
    /// The same ratios in the `header-flood-elsewhere` control, when it ran: the share of the
    /// generator and the machine in what `header-flood` shows.
    pub control_delivery_p99_ratio: Option<f64>,
    pub control_presence_join_p99_ratio: Option<f64>,
    pub rss_baseline_bytes: u64,
    pub rss_max_bytes: u64,
}

/// Counts what an abuse does; shared by its attacker tasks.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    disconnects: AtomicU64,
    refused: AtomicU64,
    statuses: Mutex<HashMap<u16, u64>>,
}

impl Tally {
    fn counts(&self) -> AbuseCounts {
        AbuseCounts {
            sent: self.sent.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            statuses: self.statuses.lock().expect("poisoned").clone(),
        }
    }
}

/// The presence observer: times each probe's `presence:join`.
struct Observer {
    started: Arc<Mutex<HashMap<String, u64>>>,
    latencies: Arc<Latencies>,
}

impl Handler for Observer {
    fn event(&mut self, packet: &str) {
        if !packet.starts_with("[\"presence:join\"") {
            return;
        }
        let Ok(serde_json::Value::Array(args)) = serde_json::from_str::<serde_json::Value>(packet) else { return };
        let Some(user) = args.get(1).and_then(|a| a["userId"].as_str()) else { return };
        if let Some(t0) = self.started.lock().expect("poisoned").remove(user) {
            self.latencies.record(0, now_us().saturating_sub(t0));
        }
    }
}

pub async fn run(options: &Options) -> anyhow::Result<NoisyResult> {
    let target = &options.target;
    if target.replicas.is_empty() {
        bail!("no replicas");
    }
    if options.abuses.iter().any(|a| a == "header-flood-elsewhere") && options.flood_target.is_none() {
        bail!("header-flood-elsewhere needs --flood-target");
    }
    eprintln!(
        "noisy-neighbour: B = {} members at {} events/s, presence probe every {:?}; A = {} attackers; {:?} per phase",
        options.members, options.rate, options.probe_every, options.attackers, options.phase
    );
    let counters = Arc::new(Counters::default());
    let delivery = Latencies::new();
    let stop_members = open_members(target, 1, options.members, &counters, &delivery).await?;
    let publisher = target.publisher().await?;

    // The presence observer and probes (tenant B).
    let started = Arc::new(Mutex::new(HashMap::new()));
    let presence = Latencies::new();
    let (addr, source) = target.addresses(0);
    let mut observer_conn = Conn::connect(addr, source, &target.token("observer"), Duration::from_secs(30)).await?;
    let ack = observer_conn.call("join", &serde_json::json!({ "channel": "bp" }), &mut Ignore).await?;
    if ack["ok"] != true {
        bail!("observer join refused: {ack}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let mut observer = Observer { started: started.clone(), latencies: presence.clone() };
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _ = observer_conn.run(&mut observer, None, async move { while stop.changed().await.is_ok() {} }).await;
        });
    }
    let probes = {
        let (target, started, every, mut stop) =
            (target.clone(), started.clone(), options.probe_every, stop_rx.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                n += 1;
                let (target, started) = (target.clone(), started.clone());
                tokio::spawn(async move {
                    let user = format!("probe{n}");
                    let (addr, source) = target.addresses(n as usize);
                    let Ok(mut conn) = Conn::connect(addr, source, &target.token(&user), Duration::from_secs(30)).await
                    else {
                        return;
                    };
                    started.lock().expect("poisoned").insert(user.clone(), now_us());
                    let _ = conn.call("join", &serde_json::json!({ "channel": "bp" }), &mut Ignore).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    conn.close().await;
                    started.lock().expect("poisoned").remove(&user);
                });
            }
        })
    };

    // RSS of the replicas, sampled every 100 ms; the phase keeps the largest.
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (target, rss_max) = (target.clone(), rss_max.clone());
        tokio::spawn(async move {
            loop {
                rss_max.fetch_max(target.processes().rss_bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut seq = vec![0u64; 1];
    let mut next_room = 0;
    let mut phases: Vec<Phase> = Vec::new();
    // A second baseline at the end shows how much the machine itself moved meanwhile.
    let names: Vec<String> = std::iter::once("baseline".to_owned())
        .chain(options.abuses.iter().cloned())
        .chain(std::iter::once("baseline-end".to_owned()))
        .collect();
    for name in names {
        eprintln!("  phase {name}");
        let tally = Arc::new(Tally::default());
        let running = Arc::new(AtomicBool::new(true));
        let rss_start = target.processes().rss_bytes;
        let abuse = if name.starts_with("baseline") {
            None
        } else {
            let attack = abuse(options.clone(), name.clone(), tally.clone(), running.clone());
            Some(if options.attacker_runtime == "shared" {
                tokio::spawn(attack)
            } else {
                let niced = options.attacker_runtime == "niced";
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("attacker")
                    .on_thread_start(move || {
                        if niced {
                            lowest_priority();
                        }
                    })
                    .enable_all()
                    .build()
                    .context("the attackers' runtime")?;
                tokio::task::spawn_blocking(move || runtime.block_on(attack))
            })
        };
        // Let the abuse get going before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        delivery.take();
        presence.take();
        rss_max.store(target.processes().rss_bytes, Ordering::Relaxed);
        let received0 = counters.received.load(Ordering::Relaxed);
        let (cpu0, gen0, t0) = (target.processes().cpu_seconds, ProcSample::this_process().cpu_seconds, Instant::now());
        let published =
            publish_at(&publisher, &target.tenant, 1, &mut seq, &mut next_room, options.rate, options.phase)
                .await
                .context("publishing to B")?;
        let measured = t0.elapsed().as_secs_f64();
        let replicas_cpu_percent = (target.processes().cpu_seconds - cpu0) / measured * 100.0;
        let generator_cpu_percent = (ProcSample::this_process().cpu_seconds - gen0) / measured * 100.0;
        let expected = received0 + published * options.members as u64;
        settle(&counters, expected, Duration::from_secs(2)).await;
        let lost = expected.saturating_sub(counters.received.load(Ordering::Relaxed));
        running.store(false, Ordering::Relaxed);
        if let Some(abuse) = abuse {
            let _ = tokio::time::timeout(Duration::from_secs(10), abuse).await;
        }
        let (d, p) = (delivery.take(), presence.take());
        let base = phases.first();
        let ratio = |now: f64, base: Option<f64>| base.filter(|b| *b > 0.0).map_or(1.0, |b| now / b);
        phases.push(Phase {
            delivery_p99_ratio: ratio(d.p99_ms, base.map(|b| b.delivery.p99_ms)),
            presence_join_p99_ratio: ratio(p.p99_ms, base.map(|b| b.presence_join.p99_ms)),
            name,
            delivery: d,
            presence_join: p,
            delivery_lost: lost,
            rss_start_bytes: rss_start,
            rss_max_bytes: rss_max.load(Ordering::Relaxed),
            replicas_cpu_percent,
            generator_cpu_percent,
            abuse: tally.counts(),
        });
        // Let the replicas drop what the abuse left (grace periods, closed sockets).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = stop_tx.send(true);
    let _ = stop_members.send(true);
    probes.abort();
    sampler.abort();
    // Controls (`…-elsewhere`) attack none of B's servers: not abuses of them.
    let abuse_phases = &phases[1..phases.len() - 1];
    let control = abuse_phases.iter().find(|p| p.name == "header-flood-elsewhere");
    let worst = |f: fn(&Phase) -> f64| {
        abuse_phases.iter().filter(|p| !p.name.ends_with("-elsewhere")).map(f).fold(1.0f64, f64::max)
    };
    Ok(NoisyResult {
        scenario: "noisy-neighbour",
        replicas: target.replicas.len(),
        members: options.members,
        rate: options.rate,
        phase_seconds: options.phase.as_secs_f64(),
        worst_delivery_p99_ratio: worst(|p| p.delivery_p99_ratio),
        worst_presence_join_p99_ratio: worst(|p| p.presence_join_p99_ratio),
        control_delivery_p99_ratio: control.map(|p| p.delivery_p99_ratio),
        control_presence_join_p99_ratio: control.map(|p| p.presence_join_p99_ratio),
        rss_baseline_bytes: phases[0].rss_max_bytes,
        rss_max_bytes: phases.iter().map(|p| p.rss_max_bytes).max().unwrap_or(0),
        phases,
    })
}

/// Runs abuse `name` with `--attackers` sockets until `running` turns false.
async fn abuse(options: Options, name: String, tally: Arc<Tally>, running: Arc<AtomicBool>) {
    let target = Arc::new(options.target.clone());
    let mut tasks = Vec::new();
    // The non-reading sockets' channel gets A's events meanwhile.
    if name == "non-reading" {
        let (target, running, rate, tenant) =
            (target.clone(), running.clone(), options.sink_rate, options.noisy_tenant.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(publisher) = target.publisher().await else { return };
            let (mut seq, mut next) = (vec![0u64], 0);
            while running.load(Ordering::Relaxed) {
                if publish_at(&publisher, &tenant, 1, &mut seq, &mut next, rate, Duration::from_millis(500))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    for i in 0..options.attackers {
        let (target, tally, running, name, tenant) =
            (target.clone(), tally.clone(), running.clone(), name.clone(), options.noisy_tenant.clone());
        let flood_target = options.flood_target;
        // `big-headers`: this attacker's share of the rate.
        let every = Duration::from_secs_f64(options.attackers as f64 / options.big_headers_rate.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            // Spread over the interval: 8 attackers start 1/8 of it apart, not in bursts of 8.
            let mut next = tokio::time::Instant::now() + every.mul_f64(i as f64 / options.attackers as f64);
            while running.load(Ordering::Relaxed) {
                round += 1;
                let user = format!("{name}-{i}");
                let (addr, source) = target.addresses(i);
                let result = match name.as_str() {
                    "big-headers" => {
                        // An upgrade slower than the interval does not make the next ones catch
                        // up back to back: the paced pattern never becomes the flood.
                        next = (next + every).max(tokio::time::Instant::now());
                        tokio::time::sleep_until(next).await;
                        big_headers(addr, &tally).await
                    }
                    "header-flood" => big_headers(addr, &tally).await,
                    "header-flood-elsewhere" => match flood_target {
                        Some(elsewhere) => big_headers(elsewhere, &tally).await,
                        None => return,
                    },
                    _ => {
                        let token = target.token_in(&tenant, &user);
                        match Conn::connect(addr, source, &token, Duration::from_secs(10)).await {
                            Ok(conn) => attack(conn, &name, i, round, &tally, &running).await,
                            Err(_) => {
                                tally.refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                Ok(())
                            }
                        }
                    }
                };
                if result.is_err() && running.load(Ordering::Relaxed) {
                    tally.disconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One connection's attack, until it is disconnected (`Err`) or the phase ends (`Ok`).
async fn attack(
    mut conn: Conn,
    name: &str,
    i: usize,
    round: u64,
    tally: &Tally,
    running: &AtomicBool,
) -> anyhow::Result<()> {
    let channel = |c: String| serde_json::json!({ "channel": c });
    match name {
        "presence-flood" => {
            for c in 0..100 {
                conn.emit_with_ack("join", &channel(format!("pf{i}-{c}"))).await?;
            }
        }
        "typing-flood" | "non-reading" => {
            conn.emit_with_ack("join", &channel(name.to_owned())).await?;
        }
        _ => {}
    }
    if name == "non-reading" {
        // Hold the connection without ever reading it.
        while running.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        conn.close().await;
        return Ok(());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
    let stop = async {
        while running.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let produce = async {
        let mut n = 0u64;
        loop {
            n += 1;
            let packet = match name {
                "presence-flood" => {
                    let status = if n.is_multiple_of(2) { "away" } else { "busy" };
                    format!("42{n}{}", serde_json::json!(["presence:update", { "status": status }]))
                }
                "typing-flood" => {
                    format!(
                        "42{}",
                        serde_json::json!(["typing", { "channel": "typing-flood", "typing": n.is_multiple_of(2) }])
                    )
                }
                _ => {
                    // join jc…-1, leave jc…-1, join jc…-3, leave jc…-3, …: every name is new.
                    let (event, c) = if n.is_multiple_of(2) { ("leave", n - 1) } else { ("join", n) };
                    format!("42{n}{}", serde_json::json!([event, { "channel": format!("jc{i}-{round}-{c}") }]))
                }
            };
            if tx.send(packet).await.is_err() {
                return;
            }
            tally.sent.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut ignore = Ignore;
    tokio::select! {
        result = conn.run(&mut ignore, Some(rx), stop) => result,
        () = produce => Ok(()),
    }
}

/// Sets the calling thread's nice value to 19, the lowest priority (on Linux `setpriority` on
/// a thread id applies to that thread only).
fn lowest_priority() {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19).expect("nice 19");
}

/// One WebSocket upgrade with a 400 KB `Authorization` header; records the status.
async fn big_headers(addr: SocketAddr, tally: &Tally) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        "x".repeat(400_000)
    );
    tally.sent.fetch_add(1, Ordering::Relaxed);
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await.unwrap_or(Ok(0)).unwrap_or(0);
    let status = std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    *tally.statuses.lock().expect("poisoned").entry(status).or_default() += 1;
    Ok(())
}

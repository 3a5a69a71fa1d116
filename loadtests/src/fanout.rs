//! `fanout`: rooms of `--room-size` members spread over the replicas; a publisher publishes to
//! the rooms at stepped rates. Per step: delivered events/s, end-to-end latency percentiles
//! (publish timestamp in the payload), loss and duplicates (per-room sequence numbers), and
//! replica CPU per delivered event. The sustainable rate is the highest step whose p99 stays
//! under `--p99-limit` with nothing lost and the publisher keeping up.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    sio::{Conn, Handler, event_name},
    stack::{EventPublisher, Latencies, LatencySummary, ProcSample, StackKind, Target, now_us, open_many},
};

/// The rooms and the steps of a fan-out run: `fanout` and the `floor` it is read against share
/// them, so that both run the same sockets at the same rates.
#[derive(Debug, Clone, clap::Args)]
pub struct Shape {
    /// Rooms (channels `c0`, `c1`, …).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Members per room (in `fanout`, spread round-robin over the replicas).
    #[arg(long, default_value_t = 50)]
    pub room_size: usize,
    /// Publish rates to step through, events/s over all rooms (each event reaches room-size members).
    #[arg(long, value_delimiter = ',', default_value = "100,200,500,1000,2000,4000,8000")]
    pub rates: Vec<u64>,
    /// Duration of each step.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub step: Duration,
}

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub shape: Shape,
    /// p99 end-to-end latency a sustainable step stays under, milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub p99_limit_ms: f64,
    /// Keep stepping after the first unsustainable step.
    #[arg(long)]
    pub all_steps: bool,
}

/// Counters shared by every member connection.
#[derive(Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub lost: AtomicU64,
    pub duplicates: AtomicU64,
}

/// One member: checks its room's sequence and records latency.
pub struct Member {
    pub next_seq: u64,
    pub shard: usize,
    pub counters: Arc<Counters>,
    pub latencies: Arc<Latencies>,
    /// Last `offset` and `epoch` seen in the meta (Roomcast recovery).
    pub position: Option<(u64, String)>,
}

impl Handler for Member {
    fn event(&mut self, packet: &str) {
        if event_name(packet) != Some("bench") {
            return;
        }
        let (Some(seq), Some(t)) = (number_after(packet, "\"s\":"), number_after(packet, "\"t\":")) else {
            return;
        };
        self.latencies.record(self.shard, now_us().saturating_sub(t));
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if seq < self.next_seq {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if seq > self.next_seq {
            self.counters.lost.fetch_add(seq - self.next_seq, Ordering::Relaxed);
        }
        self.next_seq = seq + 1;
        if let (Some(offset), Some(epoch)) = (number_after(packet, "\"offset\":"), string_after(packet, "\"epoch\":\""))
        {
            self.position = Some((offset, epoch.to_owned()));
        }
    }
}

/// The unsigned integer right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.find('"').map(|end| &rest[..end])
}

/// One rate step's result.
#[derive(Debug, Serialize)]
pub struct Step {
    pub target_rate: u64,
    pub published: u64,
    pub published_per_second: f64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    pub latency: LatencySummary,
    pub lost: u64,
    pub duplicates: u64,
    pub server_cpu_seconds: f64,
    pub server_cpu_us_per_delivery: f64,
    /// Of which in user space and in the kernel (`/proc/<pid>/stat` utime and stime).
    pub server_user_us_per_delivery: f64,
    pub server_kernel_us_per_delivery: f64,
    pub server_cpu_percent: f64,
    pub generator_cpu_percent: f64,
    /// The publisher process's CPU (`roomcast-loadtest publisher` or the Node publisher).
    pub publisher_cpu_percent: f64,
    pub sustainable: bool,
}

#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub stack: StackKind,
    pub replicas: usize,
    pub rooms: usize,
    pub room_size: usize,
    pub connections: usize,
    pub steps: Vec<Step>,
    pub sustainable_publish_rate: u64,
    pub sustainable_delivery_rate: f64,
    pub total_lost: u64,
    pub total_duplicates: u64,
}

/// Opens the members of `rooms` rooms and joins them; returns the stop switch.
pub async fn open_members(
    target: &Target,
    rooms: usize,
    room_size: usize,
    counters: &Arc<Counters>,
    latencies: &Arc<Latencies>,
) -> anyhow::Result<watch::Sender<bool>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let n = rooms * room_size;
    let (open, _) = open_many(target, n, |i, ready| {
        let (replica, source) = target.addresses(i);
        let token = target.token(&format!("u{i}"));
        let room = format!("c{}", i / room_size);
        let mut stop = stop_rx.clone();
        let mut member =
            Member { next_seq: 0, shard: i, counters: counters.clone(), latencies: latencies.clone(), position: None };
        async move {
            let setup = async {
                Conn::connect_and_join(replica, source, &token, &room, None, &mut member).await.map(|(conn, _)| conn)
            };
            match setup.await {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    let _ = conn.run(&mut member, None, async move { while stop.changed().await.is_ok() {} }).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        }
    })
    .await?;
    if open < n {
        bail!("only {open} of {n} members connected");
    }
    Ok(stop_tx)
}

/// Publishes at `rate` events/s for `duration`, round-robin over `rooms`; `seqs` holds each
/// room's next sequence number. Returns how many were published.
pub async fn publish_at(
    publisher: &EventPublisher,
    tenant: &str,
    rooms: usize,
    seqs: &mut [u64],
    next_room: &mut usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut published = 0u64;
    let names: Vec<String> = (0..rooms).map(|r| format!("c{r}")).collect();
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        // At most 50 ms worth at once: a publisher that cannot keep up shows as a lower rate.
        let batch = due.saturating_sub(published).min((rate / 20).max(1));
        if batch > 0 {
            let mut sends = Vec::with_capacity(batch as usize);
            for _ in 0..batch {
                let room = *next_room;
                *next_room = (*next_room + 1) % rooms;
                sends.push(publisher.publish(tenant, &names[room], seqs[room]));
                seqs[room] += 1;
            }
            for result in futures_util::future::join_all(sends).await {
                result.context("publishing")?;
            }
            publisher.flush().await?;
            published += batch;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(published)
}

pub async fn run(options: &Options) -> anyhow::Result<FanoutResult> {
    let target = &options.target;
    let counters = Arc::new(Counters::default());
    let latencies = Latencies::new();
    let n = options.shape.rooms * options.shape.room_size;
    eprintln!(
        "fanout: {} rooms x {} members = {n} connections over {} replica(s)",
        options.shape.rooms,
        options.shape.room_size,
        target.replicas.len()
    );
    let stop = open_members(target, options.shape.rooms, options.shape.room_size, &counters, &latencies).await?;
    let publisher = target.publisher().await?;
    let mut seqs = vec![0u64; options.shape.rooms];
    let mut next_room = 0;
    let mut steps = Vec::new();
    for &rate in &options.shape.rates {
        latencies.take();
        let (received0, lost0, dup0) = snapshot(&counters);
        let (server0, gen0, pub0, t0) =
            (target.processes(), ProcSample::this_process(), publisher.process(), Instant::now());
        let published = publish_at(
            &publisher,
            &target.tenant,
            options.shape.rooms,
            &mut seqs,
            &mut next_room,
            rate,
            options.shape.step,
        )
        .await?;
        // Let what is in flight arrive before reading the step's numbers.
        settle(&counters, received0 + published * options.shape.room_size as u64, Duration::from_secs(2)).await;
        let seconds = t0.elapsed().as_secs_f64();
        let (received1, lost1, dup1) = snapshot(&counters);
        let (server1, gen1, pub1) = (target.processes(), ProcSample::this_process(), publisher.process());
        let latency = latencies.take();
        let delivered = received1 - received0;
        let server_cpu = server1.cpu_seconds - server0.cpu_seconds;
        let per_delivery = |seconds: f64| seconds * 1e6 / delivered.max(1) as f64;
        let published_per_second = published as f64 / options.shape.step.as_secs_f64();
        let lost = lost1 - lost0;
        let sustainable = latency.p99_ms < options.p99_limit_ms
            && lost == 0
            && published_per_second >= rate as f64 * 0.95
            && delivered >= published * options.shape.room_size as u64;
        let step = Step {
            target_rate: rate,
            published,
            published_per_second,
            delivered,
            delivered_per_second: delivered as f64 / options.shape.step.as_secs_f64(),
            server_cpu_us_per_delivery: per_delivery(server_cpu),
            server_user_us_per_delivery: per_delivery(server1.user_seconds - server0.user_seconds),
            server_kernel_us_per_delivery: per_delivery(server1.kernel_seconds - server0.kernel_seconds),
            server_cpu_percent: server_cpu * 100.0 / seconds,
            generator_cpu_percent: (gen1.cpu_seconds - gen0.cpu_seconds) * 100.0 / seconds,
            publisher_cpu_percent: (pub1.cpu_seconds - pub0.cpu_seconds) * 100.0 / seconds,
            server_cpu_seconds: server_cpu,
            latency,
            lost,
            duplicates: dup1 - dup0,
            sustainable,
        };
        eprintln!(
            "  {rate:>6}/s: published {:.0}/s, delivered {:.0}/s, p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, \
             lost {} dup {}, replicas {:.0}% CPU ({:.1} µs/delivery: user {:.1}, kernel {:.1}), generator {:.0}% CPU, \
             publisher {:.0}% CPU{}",
            step.published_per_second,
            step.delivered_per_second,
            step.latency.p50_ms,
            step.latency.p90_ms,
            step.latency.p99_ms,
            step.latency.p999_ms,
            step.latency.max_ms,
            step.lost,
            step.duplicates,
            step.server_cpu_percent,
            step.server_cpu_us_per_delivery,
            step.server_user_us_per_delivery,
            step.server_kernel_us_per_delivery,
            step.generator_cpu_percent,
            step.publisher_cpu_percent,
            if sustainable { "" } else { "  <- not sustainable" }
        );
        steps.push(step);
        if !sustainable && !options.all_steps {
            break;
        }
    }
    let _ = stop.send(true);
    let best = steps.iter().filter(|s| s.sustainable).max_by_key(|s| s.target_rate);
    let result = FanoutResult {
        scenario: "fanout",
        stack: target.stack,
        replicas: target.replicas.len(),
        rooms: options.shape.rooms,
        room_size: options.shape.room_size,
        connections: n,
        sustainable_publish_rate: best.map_or(0, |s| s.target_rate),
        sustainable_delivery_rate: best.map_or(0.0, |s| s.delivered_per_second),
        total_lost: steps.iter().map(|s| s.lost).sum(),
        total_duplicates: steps.iter().map(|s| s.duplicates).sum(),
        steps,
    };
    eprintln!(
        "fanout: sustainable {} events/s published = {:.0} deliveries/s (p99 < {} ms, nothing lost)",
        result.sustainable_publish_rate, result.sustainable_delivery_rate, options.p99_limit_ms
    );
    Ok(result)
}

/// Received, lost and duplicate deliveries so far.
pub fn snapshot(c: &Counters) -> (u64, u64, u64) {
    (c.received.load(Ordering::Relaxed), c.lost.load(Ordering::Relaxed), c.duplicates.load(Ordering::Relaxed))
}

/// Waits until `received` reaches `expected` or `max` passed.
pub async fn settle(counters: &Counters, expected: u64, max: Duration) {
    let deadline = Instant::now() + max;
    while counters.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! `publish`: how many events per second publishers get through Redis, with history (the
//! publish script: offset, stream append, publish) and without (a plain PUBLISH).

use std::time::{Duration, Instant};

use anyhow::Context;
use roomcast_publisher::{Publisher, wire::HistoryPolicy};
use serde::Serialize;
use serde_json::json;

use crate::redis::PrivateRedis;

/// Options of the `publish` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Events to publish per mode.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Concurrent publishing tasks (sharing one Redis connection, as an application would).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Rooms the events are spread over.
    #[arg(long, default_value_t = 100)]
    pub rooms: u64,
    /// Size of each event's `data`, in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// History size when publishing with history.
    #[arg(long, default_value_t = 100)]
    pub history_size: u32,
}

/// One mode's result.
#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub redis_cpu_seconds: f64,
    pub redis_cpu_us_per_event: f64,
}

/// Publishes `options.events` events without history, then with, each against a fresh Redis.
pub async fn run(options: &Options) -> anyhow::Result<Vec<ModeResult>> {
    let mut results = Vec::new();
    for mode in ["history_off", "history_on"] {
        let redis = PrivateRedis::start()?;
        let mut publisher = Publisher::connect(&redis.url()).await.context("connecting the publisher")?;
        publisher = if mode == "history_on" {
            publisher.with_history(HistoryPolicy { size: options.history_size, ttl: Duration::from_secs(300) })
        } else {
            publisher.without_history()
        };
        let data = json!({ "pad": "x".repeat(options.payload_bytes.saturating_sub(10)) });
        // Warm up: script loaded, connections established.
        for room in 0..options.rooms.min(10) {
            publisher.project("bench", &format!("r{room}")).emit("tick", &data).await?;
        }
        let cpu_before = redis.cpu_seconds();
        let started = Instant::now();
        let per_task = options.events / options.concurrency;
        let tasks: Vec<_> = (0..options.concurrency)
            .map(|task| {
                let publisher = publisher.clone();
                let (data, rooms) = (data.clone(), options.rooms);
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let room = format!("r{}", (task * per_task + i) % rooms);
                        publisher.project("bench", &room).emit("tick", &data).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        let seconds = started.elapsed().as_secs_f64();
        let events = per_task * options.concurrency;
        let cpu = redis.cpu_seconds() - cpu_before;
        let result = ModeResult {
            mode,
            events,
            seconds,
            events_per_second: events as f64 / seconds,
            redis_cpu_seconds: cpu,
            redis_cpu_us_per_event: cpu * 1e6 / events as f64,
        };
        eprintln!(
            "{mode:>12}: {events} events in {seconds:.2} s = {:.0} events/s; Redis CPU {cpu:.2} s ({:.1} µs/event)",
            result.events_per_second, result.redis_cpu_us_per_event
        );
        results.push(result);
    }
    Ok(results)
}

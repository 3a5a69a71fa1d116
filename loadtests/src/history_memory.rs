//! `history-memory`: the extra Redis memory a room costs when its history is full.

use std::time::Duration;

use anyhow::Context;
use roomcast_publisher::{Publisher, wire::HistoryPolicy};
use serde::Serialize;
use serde_json::json;

use crate::redis::PrivateRedis;

/// Options of the `history-memory` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Rooms filled (the per-room figure is the average).
    #[arg(long, default_value_t = 1_000)]
    pub rooms: u64,
    /// History size (events kept per room); each room gets this many events.
    #[arg(long, default_value_t = 100)]
    pub history_size: u32,
    /// Size of each event's `data`, in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
}

/// The measurement.
#[derive(Debug, Serialize)]
pub struct Result {
    pub rooms: u64,
    pub events_per_room: u32,
    pub payload_bytes: usize,
    pub envelope_bytes: usize,
    pub used_memory_per_room_bytes: f64,
    pub memory_usage_meta_bytes: u64,
    pub memory_usage_history_bytes: u64,
}

/// Fills `rooms` histories to capacity on a fresh Redis and measures the memory it took.
pub async fn run(options: &Options) -> anyhow::Result<Result> {
    let redis = PrivateRedis::start()?;
    let publisher = Publisher::connect(&redis.url())
        .await
        .context("connecting")?
        .with_history(HistoryPolicy { size: options.history_size, ttl: Duration::from_secs(3600) });
    let data = json!({ "pad": "x".repeat(options.payload_bytes.saturating_sub(10)) });
    let before = redis.info("memory", "used_memory").unwrap_or(0.0);
    for room in 0..options.rooms {
        let mut batch = publisher.batch();
        let target = publisher.project("bench", &format!("room-{room:06}"));
        for _ in 0..options.history_size {
            batch.emit(&target, "tick", &data)?;
        }
        batch.send().await?;
    }
    let after = redis.info("memory", "used_memory").unwrap_or(0.0);
    let usage =
        |key: &str| redis.cli(&["MEMORY", "USAGE", key, "SAMPLES", "0"]).and_then(|v| v.parse().ok()).unwrap_or(0);
    let sample = "roomcast:{tenant:bench:project:room-000000}";
    let envelope = redis.cli(&["XRANGE", &format!("{sample}:history"), "-", "+", "COUNT", "1"]).unwrap_or_default();
    let envelope_bytes = envelope.lines().find(|l| l.starts_with('{')).map_or(0, str::len);
    let result = Result {
        rooms: options.rooms,
        events_per_room: options.history_size,
        payload_bytes: options.payload_bytes,
        envelope_bytes,
        used_memory_per_room_bytes: (after - before) / options.rooms as f64,
        memory_usage_meta_bytes: usage(&format!("{sample}:meta")),
        memory_usage_history_bytes: usage(&format!("{sample}:history")),
    };
    eprintln!(
        "{} rooms x {} events ({} B data, {} B envelope): {:.0} B of Redis memory per room (MEMORY USAGE: meta {} B, history {} B)",
        result.rooms,
        result.events_per_room,
        result.payload_bytes,
        result.envelope_bytes,
        result.used_memory_per_room_bytes,
        result.memory_usage_meta_bytes,
        result.memory_usage_history_bytes
    );
    Ok(result)
}

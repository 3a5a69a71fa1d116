//! `reconnect`: members of rooms spread over the replicas receive a steady stream of events;
//! one replica is killed (SIGKILL) mid-run. Its clients reconnect to the others and rejoin —
//! on Roomcast with `since` (their last offset), so missed events are replayed. Reports how long
//! until every client is back and how many events were lost or duplicated.

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
    fanout::{Counters, Member, publish_at, settle},
    sio::Conn,
    stack::{Latencies, LatencySummary, StackKind, Target, open_many},
};

/// Options of the `reconnect` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Rooms (channels `c0`, `c1`, …).
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Members per room, spread over the replicas.
    #[arg(long, default_value_t = 60)]
    pub room_size: usize,
    /// Publish rate during the run, events/s over all rooms.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Publishing before the kill.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub before: Duration,
    /// Publishing after the kill.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub after: Duration,
    /// Which replica to kill (index into --replicas / --pids).
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
}

#[derive(Debug, Serialize)]
pub struct ReconnectResult {
    pub scenario: &'static str,
    pub stack: StackKind,
    pub connections: usize,
    pub clients_on_killed_replica: u64,
    pub reconnected: u64,
    pub seconds_until_all_back: Option<f64>,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered_unique: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub recovered_joins: u64,
    pub latency: LatencySummary,
}

pub async fn run(options: &Options) -> anyhow::Result<ReconnectResult> {
    let target = &options.target;
    let replicas = target.replicas.len();
    if replicas < 2 || options.kill >= replicas || target.pids.len() != replicas {
        bail!("reconnect needs at least 2 replicas, one --pids entry per replica, and --kill < replicas");
    }
    let n = options.rooms * options.room_size;
    let counters = Arc::new(Counters::default());
    let latencies = Latencies::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let back = Arc::new(AtomicU64::new(0));
    let recovered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    eprintln!(
        "reconnect: {n} clients in {} rooms over {replicas} replicas; killing replica {} after {:?}",
        options.rooms, options.kill, options.before
    );
    let (open, _) = open_many(target, n, |i, ready| {
        let token = target.token(&format!("u{i}"));
        let room = format!("c{}", i / options.room_size);
        let first = target.addresses(i);
        let replicas_list = target.replicas.clone();
        let (dropped, back, recovered) = (dropped.clone(), back.clone(), recovered.clone());
        let stop = stop_rx.clone();
        let mut member =
            Member { next_seq: 0, shard: i, counters: counters.clone(), latencies: latencies.clone(), position: None };
        async move {
            let mut ready = Some(ready);
            let (mut replica, source) = first;
            let mut index = i % replicas_list.len();
            loop {
                let since = member
                    .position
                    .as_ref()
                    .map(|(offset, epoch)| serde_json::json!({ "offset": offset, "epoch": epoch }));
                let setup = async {
                    let (conn, ack) =
                        Conn::connect_and_join(replica, source, &token, &room, since, &mut member).await?;
                    anyhow::Ok((conn, ack["recovered"] == true))
                };
                match setup.await {
                    Ok((conn, was_recovered)) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Ok(()));
                        } else {
                            back.fetch_add(1, Ordering::Relaxed);
                            if was_recovered {
                                recovered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let stopping = stop.clone();
                        let result = conn
                            .run(&mut member, None, async move {
                                let mut s = stopping;
                                while s.changed().await.is_ok() {}
                            })
                            .await;
                        if result.is_ok() || *stop.borrow() {
                            return;
                        }
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Err(e));
                            return;
                        }
                        if *stop.borrow() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                // Like socket.io-client behind a load balancer: try the next replica.
                index = (index + 1) % replicas_list.len();
                replica = replicas_list[index];
                let _ = stop.has_changed();
            }
        }
    })
    .await?;
    if open < n {
        bail!("only {open} of {n} clients connected");
    }
    let publisher = target.publisher().await?;
    let mut seqs = vec![0u64; options.rooms];
    let mut next_room = 0;
    let mut published =
        publish_at(&publisher, &target.tenant, options.rooms, &mut seqs, &mut next_room, options.rate, options.before)
            .await?;
    let pid = target.pids[options.kill];
    let killed_at = Instant::now();
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().context("kill")?;
    if !status.success() {
        bail!("could not kill replica pid {pid}");
    }
    eprintln!("  killed replica {} (pid {pid})", options.kill);
    let on_killed = (0..n).filter(|i| i % replicas == options.kill).count() as u64;
    // Publish on while clients come back; note when the last one did.
    let all_back = Arc::new(std::sync::Mutex::new(None));
    let watcher = {
        let (back, all_back) = (back.clone(), all_back.clone());
        tokio::spawn(async move {
            loop {
                if back.load(Ordering::Relaxed) >= on_killed {
                    *all_back.lock().expect("poisoned") = Some(killed_at.elapsed().as_secs_f64());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let progress = {
        let back = back.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "  {:.0} s after the kill: {}/{on_killed} clients back",
                    killed_at.elapsed().as_secs_f64(),
                    back.load(Ordering::Relaxed)
                );
            }
        })
    };
    published +=
        publish_at(&publisher, &target.tenant, options.rooms, &mut seqs, &mut next_room, options.rate, options.after)
            .await?;
    let expected = published * options.room_size as u64;
    settle(&counters, expected + counters.duplicates.load(Ordering::Relaxed), Duration::from_secs(5)).await;
    progress.abort();
    watcher.abort();
    let _ = stop_tx.send(true);
    let received = counters.received.load(Ordering::Relaxed);
    let duplicates = counters.duplicates.load(Ordering::Relaxed);
    let unique = received - duplicates;
    let result = ReconnectResult {
        scenario: "reconnect",
        stack: target.stack,
        connections: n,
        clients_on_killed_replica: on_killed,
        reconnected: back.load(Ordering::Relaxed),
        seconds_until_all_back: *all_back.lock().expect("poisoned"),
        published,
        expected_deliveries: expected,
        delivered_unique: unique,
        lost: expected.saturating_sub(unique).max(counters.lost.load(Ordering::Relaxed)),
        duplicates,
        recovered_joins: recovered.load(Ordering::Relaxed),
        latency: latencies.take(),
    };
    eprintln!(
        "reconnect: {}/{} clients back in {}; {} events published, {} of {} deliveries lost, {} duplicates, {} joins recovered",
        result.reconnected,
        on_killed,
        result.seconds_until_all_back.map_or("never".to_owned(), |s| format!("{s:.2} s")),
        published,
        result.lost,
        expected,
        duplicates,
        result.recovered_joins
    );
    Ok(result)
}

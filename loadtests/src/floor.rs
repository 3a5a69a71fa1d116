//! `floor`: what fan-out costs with nothing but the kernel's work in the way. A minimal tokio
//! server (`floor-server`, a child process, so its CPU is its own) holds the same connections
//! as the `fanout` scenario (rooms of `--room-size` loopback TCP sockets) and, at the same
//! stepped rates, encodes each event once as a WebSocket text frame shaped like a delivered
//! Socket.IO event and writes those bytes to every member socket, straight from the publishing
//! task (no queue, no task hop, no per-member encoding). Its replica CPU per delivery, split
//! into user and kernel time, is the floor Roomcast's and Node's figures are read against.
//!
//! The members here read raw frames (no Engine.IO handshake: nothing but the deliveries is
//! measured), check each room's sequence and record the latency as `fanout` does.

use std::{
    io::{BufRead, Write as _},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    fanout::{Counters, Member, Shape, settle, snapshot},
    sio::Handler,
    stack::{Latencies, LatencySummary, ProcSample, now_us},
};

/// Options of the `floor` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The rooms and rates, as `fanout` takes them.
    #[command(flatten)]
    pub shape: Shape,
    /// Bytes of each frame's payload: about what Roomcast delivers for the fan-out event
    /// (`42["bench",{data},{meta}]`).
    #[arg(long, default_value_t = 190)]
    pub payload_bytes: usize,
    /// taskset CPU list for the floor server (as compare.py pins the replicas), e.g. 0.
    #[arg(long)]
    pub server_cpus: Option<String>,
}

/// Options of the floor server process (not a scenario: `floor` starts it).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerOptions {
    #[arg(long)]
    pub rooms: usize,
    #[arg(long)]
    pub room_size: usize,
    #[arg(long)]
    pub payload_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub target_rate: u64,
    pub published: u64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    pub latency: LatencySummary,
    pub lost: u64,
    pub duplicates: u64,
    pub server_cpu_us_per_delivery: f64,
    pub server_user_us_per_delivery: f64,
    pub server_kernel_us_per_delivery: f64,
    pub server_cpu_percent: f64,
    /// Writes that found a socket's send buffer full (finished by a task instead).
    pub backpressured_writes: u64,
}

#[derive(Debug, Serialize)]
pub struct FloorResult {
    pub scenario: &'static str,
    pub rooms: usize,
    pub room_size: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    pub steps: Vec<Step>,
}

/// A WebSocket text frame from the server (unmasked) carrying `payload`.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 4);
    frame.push(0x81);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=65535 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The event as Roomcast would deliver it, padded to `size` bytes.
fn event_payload(room: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut text = format!(
        r#"42["bench",{{"s":{seq},"t":{}}},{{"room":"tenant:bench:channel:c{room}","offset":{},"epoch":"e","pad":""#,
        now_us(),
        seq + 1
    );
    let close = "\"}]";
    while text.len() + close.len() < size {
        text.push('x');
    }
    text.push_str(close);
    text.into_bytes()
}

/// The floor server: accepts `rooms * room_size` connections (each says its room in 4 bytes),
/// prints `ready` once all are in, then reads `rate <events/s> <millis>` lines from stdin and
/// publishes at that rate for that long, printing `done <published> <backpressured>`.
pub async fn serve(options: &ServerOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let n = options.rooms * options.room_size;
    let mut rooms: Vec<Vec<Arc<TcpStream>>> = vec![Vec::new(); options.rooms];
    for _ in 0..n {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let room = stream.read_u32_le().await? as usize;
        rooms.get_mut(room).context("room out of range")?.push(Arc::new(stream));
    }
    println!("ready");
    std::io::stdout().flush()?;
    let backpressured = Arc::new(AtomicU64::new(0));
    let mut seqs = vec![0u64; options.rooms];
    let mut next_room = 0usize;
    let mut lines = std::io::BufReader::new(std::io::stdin()).lines();
    while let Some(line) = tokio::task::block_in_place(|| lines.next()) {
        let line = line?;
        let mut words = line.split_whitespace();
        let (Some("rate"), Some(rate), Some(millis)) = (words.next(), words.next(), words.next()) else {
            bail!("floor-server: unknown command {line:?}");
        };
        let (rate, duration): (u64, Duration) = (rate.parse()?, Duration::from_millis(millis.parse()?));
        let started = Instant::now();
        let mut published = 0u64;
        backpressured.store(0, Ordering::Relaxed);
        while started.elapsed() < duration {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            let batch = due.saturating_sub(published).min((rate / 20).max(1));
            for _ in 0..batch {
                let room = next_room;
                next_room = (next_room + 1) % options.rooms;
                // Encoded once per event, written to every member as is.
                let frame: Arc<[u8]> = text_frame(&event_payload(room, seqs[room], options.payload_bytes)).into();
                seqs[room] += 1;
                for member in &rooms[room] {
                    write(member, &frame, &backpressured);
                }
            }
            published += batch;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("done {published} {}", backpressured.load(Ordering::Relaxed));
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// Writes `frame` from the calling task when the socket takes it all at once (the common case
/// at these rates); otherwise a task finishes the write once the socket is writable again.
fn write(member: &Arc<TcpStream>, frame: &Arc<[u8]>, backpressured: &Arc<AtomicU64>) {
    let written = match member.try_write(frame) {
        Ok(n) if n == frame.len() => return,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return, // the member left
    };
    backpressured.fetch_add(1, Ordering::Relaxed);
    let (member, frame) = (member.clone(), frame.clone());
    tokio::spawn(async move {
        let mut at = written;
        while at < frame.len() {
            if member.writable().await.is_err() {
                return;
            }
            match member.try_write(&frame[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
}

/// The floor server's process, killed if the scenario fails half way.
struct KillOnDrop {
    child: std::process::Child,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One member: reads frames and hands each event to a `fanout` member, which checks its room's
/// sequence and records the latency.
async fn member(mut stream: TcpStream, mut member: Member) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0usize;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut at = 0usize;
        while let Some((start, len)) = frame_at(&buf[at..filled]) {
            let payload = std::str::from_utf8(&buf[at + start..at + start + len]).unwrap_or("");
            // The Socket.IO EVENT packet's arguments, as a client's handler gets them.
            if let Some(packet) = payload.strip_prefix("42") {
                member.event(packet);
            }
            at += start + len;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
    }
}

/// Where the payload of the complete frame at the start of `buf` is, if it is all there.
fn frame_at(buf: &[u8]) -> Option<(usize, usize)> {
    let (&_, rest) = buf.split_first()?;
    let (start, len) = match *rest.first()? & 0x7f {
        126 => (4, u16::from_be_bytes(rest.get(1..3)?.try_into().ok()?) as usize),
        127 => (10, u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?) as usize),
        n => (2, n as usize),
    };
    (buf.len() >= start + len).then_some((start, len))
}

pub async fn run(options: &Options) -> anyhow::Result<FloorResult> {
    let n = options.shape.rooms * options.shape.room_size;
    eprintln!("floor: {} rooms x {} members = {n} loopback connections", options.shape.rooms, options.shape.room_size);
    let exe = std::env::current_exe()?;
    let mut command = match &options.server_cpus {
        Some(cpus) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", cpus]).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    let server = command
        .args([
            "floor-server",
            "--rooms",
            &options.shape.rooms.to_string(),
            "--room-size",
            &options.shape.room_size.to_string(),
        ])
        .args(["--payload-bytes", &options.payload_bytes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the floor server")?;
    let mut server = KillOnDrop { child: server };
    // With taskset the child is taskset until it execs: the pid stays the same.
    let pid = server.child.id();
    let mut stdin = server.child.stdin.take().context("server stdin")?;
    let mut stdout = std::io::BufReader::new(server.child.stdout.take().context("server stdout")?).lines();
    let mut next_line = move || -> anyhow::Result<String> {
        stdout.next().context("the floor server exited")?.context("reading the floor server")
    };
    let port: u16 = next_line()?.strip_prefix("port ").context("floor server: no port")?.parse()?;

    let counters = Arc::new(Counters::default());
    let latencies = Latencies::new();
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_u32_le((i / options.shape.room_size) as u32).await?;
        let handler =
            Member { next_seq: 0, shard: i, counters: counters.clone(), latencies: latencies.clone(), position: None };
        members.push(tokio::spawn(member(stream, handler)));
    }
    let line = tokio::task::block_in_place(&mut next_line)?;
    if line != "ready" {
        bail!("floor server: expected ready, got {line:?}");
    }

    let mut steps = Vec::new();
    for &rate in &options.shape.rates {
        latencies.take();
        let (received0, lost0, dup0) = snapshot(&counters);
        let (server0, t0) = (ProcSample::of(pid), Instant::now());
        writeln!(stdin, "rate {rate} {}", options.shape.step.as_millis())?;
        stdin.flush()?;
        let done = tokio::task::block_in_place(&mut next_line)?;
        let mut words = done.split_whitespace().skip(1);
        let published: u64 = words.next().context("done line")?.parse()?;
        let backpressured: u64 = words.next().context("done line")?.parse()?;
        settle(&counters, received0 + published * options.shape.room_size as u64, Duration::from_secs(2)).await;
        let (server1, seconds) = (ProcSample::of(pid), t0.elapsed().as_secs_f64());
        let (received1, lost1, dup1) = snapshot(&counters);
        let delivered = received1 - received0;
        let per = |s: f64| s * 1e6 / delivered.max(1) as f64;
        let step = Step {
            target_rate: rate,
            published,
            delivered,
            delivered_per_second: delivered as f64 / seconds,
            latency: latencies.take(),
            lost: lost1 - lost0 + (published * options.shape.room_size as u64).saturating_sub(delivered),
            duplicates: dup1 - dup0,
            server_cpu_us_per_delivery: per(server1.cpu_seconds - server0.cpu_seconds),
            server_user_us_per_delivery: per(server1.user_seconds - server0.user_seconds),
            server_kernel_us_per_delivery: per(server1.kernel_seconds - server0.kernel_seconds),
            server_cpu_percent: (server1.cpu_seconds - server0.cpu_seconds) * 100.0 / seconds,
            backpressured_writes: backpressured,
        };
        eprintln!(
            "  {rate:>6}/s: delivered {:.0}/s, p50 {:.2} p99 {:.2} ms, lost {} dup {}, server {:.0}% CPU ({:.2} µs/delivery: user {:.2}, kernel {:.2}), {} backpressured writes",
            step.delivered_per_second,
            step.latency.p50_ms,
            step.latency.p99_ms,
            step.lost,
            step.duplicates,
            step.server_cpu_percent,
            step.server_cpu_us_per_delivery,
            step.server_user_us_per_delivery,
            step.server_kernel_us_per_delivery,
            step.backpressured_writes
        );
        steps.push(step);
    }
    drop(stdin);
    drop(server);
    for m in members {
        m.abort();
    }
    Ok(FloorResult {
        scenario: "floor",
        rooms: options.shape.rooms,
        room_size: options.shape.room_size,
        connections: n,
        payload_bytes: options.payload_bytes,
        steps,
    })
}

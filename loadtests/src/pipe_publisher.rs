//! `publisher`: publishes benchmark events read from stdin through `roomcast-publisher`, in its
//! own process: the counterpart of `peers/node/publisher.js`. The generator drives both stacks'
//! publishers the same way (lines on a pipe), so neither stack's publishing shares the
//! generator's runtime or counts in its CPU.

use anyhow::Context;
use roomcast_publisher::{Publisher, Room, RoomKind};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::stack::now_us;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Redis the replicas use.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key and channel prefix of the replicas.
    #[arg(long, default_value = "roomcast")]
    prefix: String,
}

/// Reads `tenant:{t}:channel:{c} {seq}` lines and publishes `bench` `{ s: seq, t: µs }` to each
/// room, stamping `t` just before the publish; publishes run concurrently (pipelined on one
/// connection), like the Node emitter's. Returns at the end of input, once all are answered.
pub async fn run(options: &Options) -> anyhow::Result<()> {
    let publisher = Publisher::connect(&options.redis_url)
        .await
        .context("connecting the publisher")?
        .with_prefix(options.prefix.as_str())?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut pending = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        let (room, seq) = parse(&line).with_context(|| format!("bad line {line:?}"))?;
        let publisher = publisher.clone();
        pending.spawn(async move {
            let data = serde_json::json!({ "s": seq, "t": now_us() });
            publisher.channel(room.tenant_id(), room.id().unwrap_or_default()).emit("bench", &data).await
        });
        // Collect finished publishes as we go: the first error stops the run.
        while let Some(done) = pending.try_join_next() {
            done?.context("publishing")?;
        }
    }
    while let Some(done) = pending.join_next().await {
        done?.context("publishing")?;
    }
    Ok(())
}

fn parse(line: &str) -> Option<(Room, u64)> {
    let (room, seq) = line.split_once(' ')?;
    let room = Room::parse(room).filter(|r| r.kind() == RoomKind::Channel)?;
    Some((room, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_a_channel_room_and_a_sequence() {
        let (room, seq) = parse("tenant:bench:channel:c7 42").unwrap();
        assert_eq!((room.tenant_id(), room.id(), seq), ("bench", Some("c7"), 42));
        for bad in
            ["", "tenant:bench:channel:c7", "tenant:bench:channel:c7 x", "tenant:bench 1", "tenant:bench:project:p 1"]
        {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}

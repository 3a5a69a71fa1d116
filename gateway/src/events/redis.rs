//! The event log in Redis: a capped stream (`{prefix}:{events}`), the stream sink itself.
//!
//! Each entry has the fields `seq` (a sequence number from `{prefix}:{events}:seq`), `type` and
//! `event` (the event's JSON); all keys share the `{events}` hash tag, so one slot on a cluster.
//! Webhooks read it through a consumer group per URL; each group's last sequence number read is
//! kept in `{prefix}:{events}:read`, so a gap (events the cap trimmed before the group read them)
//! is counted. Backends may add consumer groups of their own (PROTOCOL.md).

use std::{sync::Arc, time::Duration};

use fred::types::{Value, scripts::Script};

use super::{Batch, EventLog};
use crate::{
    backend::{BoxFuture, BusError},
    redis_conn::Commands,
};

/// A consumer (a replica's reader of a sink) with nothing pending, idle this long, is removed
/// from its group when another claims: replicas that stopped do not pile up in the group.
const FORGET_CONSUMERS: Duration = Duration::from_secs(3600);

struct Scripts {
    append: Script,
    subscribe: Script,
    read: Script,
    claim: Script,
    keep: Script,
    ack: Script,
}

/// The stream sink; cheap to clone.
#[derive(Clone)]
pub struct RedisLog {
    redis: Commands,
    cap: u64,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog").field("cap", &self.cap).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    crate::metrics::redis_error("events");
    BusError::Unavailable(e.to_string())
}

/// `{ dropped, id1, event1, ... }` as a [`Batch`].
fn batch(flat: Vec<Value>) -> Batch {
    let mut values = flat.into_iter();
    let dropped = values.next().and_then(|v| v.as_u64()).unwrap_or(0);
    let rest: Vec<String> = values.map(|v| v.as_string().unwrap_or_default()).collect();
    let entries = rest.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
    Batch { entries, dropped }
}

impl RedisLog {
    /// The stream on `redis`, trimmed to `cap` entries.
    pub fn new(redis: Commands, cap: u64) -> RedisLog {
        let with_entries = |script: &str| Script::from_lua(format!("{}{script}", include_str!("entries.lua")));
        RedisLog {
            redis,
            cap,
            scripts: Arc::new(Scripts {
                append: Script::from_lua(include_str!("append.lua")),
                subscribe: Script::from_lua(include_str!("subscribe.lua")),
                read: with_entries(include_str!("read.lua")),
                claim: with_entries(include_str!("claim.lua")),
                keep: Script::from_lua(include_str!("keep.lua")),
                ack: Script::from_lua(include_str!("ack.lua")),
            }),
        }
    }

    fn stream(&self) -> String {
        format!("{}:{{events}}", self.redis.keys.prefix())
    }

    fn sequence(&self) -> String {
        format!("{}:{{events}}:seq", self.redis.keys.prefix())
    }

    fn cursors(&self) -> String {
        format!("{}:{{events}}:read", self.redis.keys.prefix())
    }

    fn check(&self) -> Result<(), BusError> {
        if self.redis.link.is_up() { Ok(()) } else { Err(BusError::Unavailable("Redis is not connected".into())) }
    }
}

impl EventLog for RedisLog {
    fn append(&self, events: Vec<String>) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let this = self.clone();
        crate::metrics::redis_timed("events", async move {
            checked?;
            if events.is_empty() {
                return Ok(());
            }
            let mut args = Vec::with_capacity(events.len() + 1);
            args.push(this.cap.to_string());
            args.extend(events);
            let keys = vec![this.stream(), this.sequence()];
            this.scripts
                .append
                .evalsha_with_reload::<i64, _, _>(&this.redis.client, keys, args)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn subscribe(&self, group: &str, from_start: bool) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let this = self.clone();
        let args = vec![group.to_owned(), if from_start { "0" } else { "$" }.to_owned()];
        Box::pin(async move {
            checked?;
            let keys = vec![this.stream(), this.sequence(), this.cursors()];
            this.scripts
                .subscribe
                .evalsha_with_reload::<i64, _, _>(&this.redis.client, keys, args)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn read(&self, group: &str, consumer: &str, count: usize) -> BoxFuture<'static, Result<Batch, BusError>> {
        let checked = self.check();
        let this = self.clone();
        let args = vec![group.to_owned(), consumer.to_owned(), count.to_string()];
        Box::pin(async move {
            checked?;
            let keys = vec![this.stream(), this.cursors()];
            let flat: Vec<Value> =
                this.scripts.read.evalsha_with_reload(&this.redis.client, keys, args).await.map_err(unavailable)?;
            Ok(batch(flat))
        })
    }

    fn claim(
        &self,
        group: &str,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> BoxFuture<'static, Result<Batch, BusError>> {
        let checked = self.check();
        let this = self.clone();
        let args = vec![
            group.to_owned(),
            consumer.to_owned(),
            idle.as_millis().to_string(),
            count.to_string(),
            FORGET_CONSUMERS.as_millis().to_string(),
        ];
        Box::pin(async move {
            checked?;
            let flat: Vec<Value> = this
                .scripts
                .claim
                .evalsha_with_reload(&this.redis.client, vec![this.stream()], args)
                .await
                .map_err(unavailable)?;
            Ok(batch(flat))
        })
    }

    fn keep(&self, group: &str, consumer: &str, ids: Vec<String>) -> BoxFuture<'static, Result<Vec<String>, BusError>> {
        let checked = self.check();
        let this = self.clone();
        let mut args = vec![group.to_owned(), consumer.to_owned()];
        args.extend(ids);
        Box::pin(async move {
            checked?;
            let kept: Vec<String> = this
                .scripts
                .keep
                .evalsha_with_reload(&this.redis.client, vec![this.stream()], args)
                .await
                .map_err(unavailable)?;
            Ok(kept)
        })
    }

    fn ack(&self, group: &str, ids: Vec<String>) -> BoxFuture<'static, Result<(), BusError>> {
        let checked = self.check();
        let this = self.clone();
        let mut args = vec![group.to_owned()];
        args.extend(ids);
        Box::pin(async move {
            checked?;
            this.scripts
                .ack
                .evalsha_with_reload::<i64, _, _>(&this.redis.client, vec![this.stream()], args)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}

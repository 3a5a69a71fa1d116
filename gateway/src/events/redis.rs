//! The event log in Redis: a capped stream (`{prefix}:{events}`), the stream sink itself.
//!
//! Each entry has the fields `seq` (a sequence number from `{prefix}:{events}:seq`), `type` and
//! `event` (the event's JSON); all keys share the `{events}` hash tag, so one slot on a cluster.
//! Webhooks read it through a consumer group per URL; each group's last sequence number read is
//! kept in `{prefix}:{events}:read`, so a gap (events the cap trimmed before the group read them)
//! is counted. Backends may add consumer groups of their own (PROTOCOL.md).

use std::{sync::Arc, time::Duration};

use fred::types::{FromValue, Value, scripts::Script};

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

    /// Runs the script `pick` chooses with `keys` and `args`: at once an error while the
    /// connection is down, as the other Redis adapters do.
    fn eval<T: FromValue + Send + 'static>(
        &self,
        pick: fn(&Scripts) -> &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> BoxFuture<'static, Result<T, BusError>> {
        let this = self.clone();
        Box::pin(async move {
            if !this.redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            pick(&this.scripts).evalsha_with_reload(&this.redis.client, keys, args).await.map_err(unavailable)
        })
    }
}

impl EventLog for RedisLog {
    fn append(&self, events: Vec<String>) -> BoxFuture<'static, Result<(), BusError>> {
        if events.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        let mut args = Vec::with_capacity(events.len() + 1);
        args.push(self.cap.to_string());
        args.extend(events);
        let appended = self.eval::<i64>(|s| &s.append, vec![self.stream(), self.sequence()], args);
        crate::metrics::redis_timed("events", async move { appended.await.map(|_| ()) })
    }

    fn subscribe(&self, group: &str, from_start: bool) -> BoxFuture<'static, Result<(), BusError>> {
        let args = vec![group.to_owned(), if from_start { "0" } else { "$" }.to_owned()];
        let subscribed = self.eval::<i64>(|s| &s.subscribe, vec![self.stream(), self.sequence(), self.cursors()], args);
        Box::pin(async move { subscribed.await.map(|_| ()) })
    }

    fn read(&self, group: &str, consumer: &str, count: usize) -> BoxFuture<'static, Result<Batch, BusError>> {
        let args = vec![group.to_owned(), consumer.to_owned(), count.to_string()];
        let read = self.eval::<Vec<Value>>(|s| &s.read, vec![self.stream(), self.cursors()], args);
        Box::pin(async move { read.await.map(batch) })
    }

    fn claim(
        &self,
        group: &str,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> BoxFuture<'static, Result<Batch, BusError>> {
        let args = vec![
            group.to_owned(),
            consumer.to_owned(),
            idle.as_millis().to_string(),
            count.to_string(),
            FORGET_CONSUMERS.as_millis().to_string(),
        ];
        let claimed = self.eval::<Vec<Value>>(|s| &s.claim, vec![self.stream()], args);
        Box::pin(async move { claimed.await.map(batch) })
    }

    fn keep(&self, group: &str, consumer: &str, ids: Vec<String>) -> BoxFuture<'static, Result<Vec<String>, BusError>> {
        let mut args = vec![group.to_owned(), consumer.to_owned()];
        args.extend(ids);
        self.eval(|s| &s.keep, vec![self.stream()], args)
    }

    fn ack(&self, group: &str, ids: Vec<String>) -> BoxFuture<'static, Result<(), BusError>> {
        let mut args = vec![group.to_owned()];
        args.extend(ids);
        let acked = self.eval::<i64>(|s| &s.ack, vec![self.stream()], args);
        Box::pin(async move { acked.await.map(|_| ()) })
    }
}

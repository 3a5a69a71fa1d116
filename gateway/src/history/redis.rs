//! History in Redis: a stream per room, written by the publisher crate's script.

use fred::types::{Value, scripts::Script};
use roomcast_publisher::wire::{self, HistoryPolicy};

use crate::envelope::Envelope;

use super::{History, Position, Read};
use crate::{
    backend::{BoxFuture, BusError},
    redis_conn::Commands,
};

/// Reads history from Redis.
#[derive(Clone)]
pub struct RedisHistory {
    redis: Commands,
    policy: HistoryPolicy,
    read: std::sync::Arc<Script>,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl RedisHistory {
    /// History on `redis`, written within `policy`.
    pub fn new(redis: Commands, policy: HistoryPolicy) -> Self {
        RedisHistory { redis, policy, read: std::sync::Arc::new(Script::from_lua(include_str!("read.lua"))) }
    }
}

impl History for RedisHistory {
    fn read(&self, room: &str, after: u64, limit: usize) -> BoxFuture<'static, Result<Read, BusError>> {
        let this = self.clone();
        let keys = vec![self.redis.keys.meta(room), self.redis.keys.history(room)];
        // A room only read (joined, never published to) is forgotten with its history.
        let ttl = self.policy.ttl.as_millis().to_string();
        let args = vec![after.to_string(), limit.to_string(), wire::new_epoch(), ttl];
        crate::metrics::redis_timed("history", async move {
            if !this.redis.link.is_up() {
                return Err(BusError::Unavailable("Redis is not connected".into()));
            }
            let reply: Vec<Value> =
                this.read.evalsha_with_reload(&this.redis.client, keys, args).await.map_err(|e| {
                    crate::metrics::redis_error("history");
                    BusError::Unavailable(e.details().to_owned())
                })?;
            let mut values = reply.into_iter();
            let epoch = values.next().and_then(|v| v.as_string()).unwrap_or_default();
            let offset = values.next().and_then(|v| v.as_u64()).unwrap_or(0);
            let mut events = Vec::new();
            for value in values {
                // Entries were written by the publish script; anything else is skipped.
                if let Some(Ok(Envelope::Event(event))) = value.as_str().map(|json| Envelope::from_json(&json)) {
                    events.push(event);
                }
            }
            Ok(Read { position: Position { epoch, offset }, events })
        })
    }

    fn policy(&self) -> HistoryPolicy {
        self.policy
    }
}

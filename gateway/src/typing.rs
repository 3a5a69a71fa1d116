//! Typing indicators: `typing` `{ channel, typing }` from clients (and the publisher SDK), shown to
//! the channel's other members on every replica. (The client event itself is handled at the
//! edge, in the `socket` module; this module is the state both halves keep.)
//!
//! Two halves:
//! - [`Throttle`], on the sender's replica: a repeated `typing: true` from one user in one
//!   channel is broadcast at most once per interval; a change of state always goes out at once.
//! - [`Indicators`], on every replica: what this replica's members are shown. An indicator
//!   that is neither refreshed nor stopped within the TTL is turned off here, by every replica
//!   for its own members, so it turns off everywhere even when the sender's replica crashed.
//!
//! The sender's replica shows the indicator to its own members at once and publishes it tagged
//! with its id (delivery skips it when it comes back), so members on the same replica see it
//! even while Redis is down, and the sender gets an `unavailable` ack then. Indicators are
//! ephemeral: never stored; refreshes go out as volatile (a lost refresh is harmless).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::timers::DeadlineQueue;

/// (room, user)
type Key = (String, String);

/// What local members should be shown after an indicator arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing changes (a stop for an indicator that is not shown).
    Nothing,
    /// `typing: true`; `refresh` when it was already shown (sent as volatile).
    On {
        /// The indicator was already on.
        refresh: bool,
    },
    /// `typing: false`.
    Off,
}

/// The indicators shown to this replica's members, with their TTL.
#[derive(Debug)]
pub struct Indicators {
    ttl: Duration,
    /// A std mutex: short critical sections, never held across an await.
    shown: Mutex<HashMap<Key, Instant>>,
    expiries: DeadlineQueue<Key>,
}

impl Indicators {
    /// Indicators lasting `ttl` without a refresh.
    pub fn new(ttl: Duration) -> Self {
        Indicators { ttl, shown: Mutex::new(HashMap::new()), expiries: DeadlineQueue::default() }
    }

    /// The TTL announced to clients.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records an indicator for `user` in `room` and says what to show.
    pub fn observe(&self, room: &str, user: &str, typing: bool) -> Show {
        let key = (room.to_owned(), user.to_owned());
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if typing {
            let until = Instant::now() + self.ttl;
            let previous = shown.insert(key.clone(), until);
            if let Some(at) = previous {
                self.expiries.remove(at, &key);
            }
            self.expiries.insert(until, key);
            Show::On { refresh: previous.is_some() }
        } else {
            match shown.remove(&key) {
                Some(at) => {
                    self.expiries.remove(at, &key);
                    Show::Off
                }
                None => Show::Nothing,
            }
        }
    }

    /// Waits for indicators whose TTL ran out, and forgets them; the caller shows them off.
    pub async fn expired(&self) -> Vec<Key> {
        loop {
            let due = self.expiries.next_due().await;
            let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let expired: Vec<Key> = due.into_iter().filter(|k| shown.get(k).is_some_and(|at| *at <= now)).collect();
            for key in &expired {
                shown.remove(key);
            }
            if !expired.is_empty() {
                return expired;
            }
        }
    }

    /// Indicators currently shown.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shown.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no indicator is shown.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rate limit on indicators sent from this replica.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// (room, user) → when `typing: true` was last broadcast; absent once stopped.
    typing_since: Mutex<HashMap<Key, Instant>>,
}

impl Throttle {
    /// At most one `typing: true` broadcast per `interval` per user and channel.
    pub fn new(interval: Duration) -> Self {
        Throttle { interval, typing_since: Mutex::new(HashMap::new()) }
    }

    /// Whether this indicator should be broadcast.
    pub fn admit(&self, room: &str, user: &str, typing: bool) -> bool {
        let key = (room.to_owned(), user.to_owned());
        let mut map = self.typing_since.lock().unwrap_or_else(|e| e.into_inner());
        if !typing {
            // A stop always goes out (the start may have come from another tab or replica).
            map.remove(&key);
            return true;
        }
        let now = Instant::now();
        match map.get(&key) {
            Some(last) if now.duration_since(*last) < self.interval => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unrefreshed_indicator_expires_after_the_ttl() {
        let ind = Indicators::new(Duration::from_secs(6));
        assert_eq!(ind.observe("r", "u", true), Show::On { refresh: false });
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(ind.observe("r", "u", true), Show::On { refresh: true });
        let started = Instant::now();
        assert_eq!(ind.expired().await, vec![("r".to_owned(), "u".to_owned())]);
        assert_eq!(Instant::now() - started, Duration::from_secs(6), "the refresh restarted the TTL");
        assert_eq!(ind.observe("r", "u", false), Show::Nothing, "already off");
        assert!(ind.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_turns_the_indicator_off_at_once() {
        let ind = Indicators::new(Duration::from_secs(6));
        ind.observe("r", "u", true);
        assert_eq!(ind.observe("r", "u", false), Show::Off);
        assert!(tokio::time::timeout(Duration::from_secs(60), ind.expired()).await.is_err(), "nothing left to expire");
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_starts_are_throttled_but_a_stop_always_passes() {
        let t = Throttle::new(Duration::from_secs(2));
        assert!(t.admit("r", "u", true));
        assert!(!t.admit("r", "u", true));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!t.admit("r", "u", true));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(t.admit("r", "u", true));
        assert!(t.admit("r", "u", false));
        assert!(t.admit("r", "u", true), "a start after a stop is a change of state");
        assert!(t.admit("r", "other", true), "per user");
    }
}

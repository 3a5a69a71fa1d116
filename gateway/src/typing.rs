//! Typing indicators: `typing` `{ channel, typing }` from clients (and the publisher SDK), shown to
//! the channel's other members on every replica. (The client event itself is handled at the
//! edge, in the `socket` module; this module is the state both halves keep.)
//!
//! Two halves:
//! - [`Throttle`], on the sender's replica: per user and channel, at most one `typing: true`
//!   broadcast per interval, and a `typing: false` only for an indicator it showed (at once):
//!   at most two broadcasts per interval whatever a client sends.
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

/// Rate limit on indicators sent from this replica: per user and channel, at most one start
/// per interval, and a stop only when a start went out before it — so whatever pattern of
/// `true` and `false` a client sends, at most two broadcasts per interval leave the replica.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// (room, user) → (when a start last went out, whether the last broadcast was a start).
    sent: Mutex<HashMap<Key, (Instant, bool)>>,
    /// Calls since the last sweep of entries that no longer limit anything.
    calls: std::sync::atomic::AtomicU32,
}

/// A sweep runs once per this many calls, so the map holds only recent or shown indicators.
const SWEEP_EVERY: u32 = 1024;

impl Throttle {
    /// At most one `typing: true` broadcast per `interval` per user and channel.
    pub fn new(interval: Duration) -> Self {
        Throttle { interval, sent: Mutex::new(HashMap::new()), calls: Default::default() }
    }

    /// Whether this indicator should be broadcast.
    pub fn admit(&self, room: &str, user: &str, typing: bool) -> bool {
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            sent.retain(|_, (started, shown)| *shown || now.duration_since(*started) < self.interval);
        }
        let key = (room.to_owned(), user.to_owned());
        match (typing, sent.get_mut(&key)) {
            // A refresh, or a start right after a stop: the next start after the interval goes.
            (true, Some((started, _))) if now.duration_since(*started) < self.interval => false,
            (true, _) => {
                sent.insert(key, (now, true));
                true
            }
            // Shown: the stop goes out at once.
            (false, Some((_, shown))) if *shown => {
                *shown = false;
                true
            }
            // Nothing from here shows it: nothing to stop.
            (false, _) => false,
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
    async fn repeated_starts_are_throttled_and_a_stop_of_a_shown_indicator_passes_at_once() {
        let t = Throttle::new(Duration::from_secs(2));
        assert!(t.admit("r", "u", true));
        assert!(!t.admit("r", "u", true));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!t.admit("r", "u", true));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(t.admit("r", "u", true));
        assert!(t.admit("r", "u", false), "a stop of what was shown goes at once");
        assert!(!t.admit("r", "u", false), "nothing shown: nothing to stop");
        assert!(t.admit("r", "other", true), "per user");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(t.admit("r", "u", true), "a start after a stop, an interval later");
    }

    /// The abuse of issue 14: alternating true/false as fast as possible got ~8,000 indicators
    /// through in 3 s. Now any pattern sends at most a start and a stop per interval.
    #[tokio::test(start_paused = true)]
    async fn any_pattern_of_starts_and_stops_sends_at_most_two_per_interval() {
        let t = Throttle::new(Duration::from_secs(2));
        let mut sent = 0;
        for i in 0..30_000u32 {
            sent += u32::from(t.admit("r", "u", i % 2 == 0));
            if i % 10 == 0 {
                tokio::time::advance(Duration::from_millis(1)).await; // 3 s in all
            }
        }
        assert!(sent <= 4, "{sent} broadcasts in 3 s");
        assert!(sent >= 2, "a start and its stop still go out");
    }
}

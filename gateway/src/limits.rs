//! Per-socket rate limits on client events: one token bucket per event class, so a socket
//! flooding one kind of event neither starves its own other events nor costs anyone else more
//! than its budget. Over the limit, the event is refused with `rate_limited` and how long to wait
//! (`retryAfterMs`); a socket that keeps exceeding its budget for a sustained period is
//! disconnected (`roomcast:disconnect` `rate_limited`).

use std::{fmt, str::FromStr, time::Duration};

use tokio::time::Instant;

/// A sustained rate with a burst: `N/s` refills N tokens per second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens held: how many events may come at once after a quiet period.
    pub burst: u32,
}

impl FromStr for Rate {
    type Err = String;

    /// `N/s` (burst N) or `N/s:B` (burst B); N may be a decimal (`0.5/s`).
    fn from_str(s: &str) -> Result<Rate, String> {
        let invalid = || format!("{s:?} is not a rate: write N/s or N/s:BURST, e.g. 5/s:10");
        let (rate, burst) = match s.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst.trim().parse::<u32>().map_err(|_| invalid())?)),
            None => (s, None),
        };
        let per_second: f64 =
            rate.trim().strip_suffix("/s").ok_or_else(invalid)?.trim().parse().map_err(|_| invalid())?;
        if !per_second.is_finite() || per_second <= 0.0 || per_second > 1e6 {
            return Err(format!("{s:?}: the rate must be above 0 and at most 1000000/s"));
        }
        let burst = burst.unwrap_or(per_second.ceil() as u32).max(1);
        Ok(Rate { per_second, burst })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s:{}", self.per_second, self.burst)
    }
}

/// The classes of client events, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// `join` and `leave`.
    Rooms,
    /// `presence:update`.
    PresenceUpdate,
    /// `presence:list`.
    PresenceList,
    /// `typing`.
    Typing,
    /// `auth:refresh`.
    Refresh,
    /// Anything else, unknown events included: they cost a dispatch and an error ack.
    Other,
}

impl EventClass {
    /// The class of client event `event`.
    pub fn of(event: &str) -> EventClass {
        match event {
            "join" | "leave" => EventClass::Rooms,
            "presence:update" => EventClass::PresenceUpdate,
            // Reads from Redis, answered from presence or history.
            "presence:list" | "room:occupancy" | "history" => EventClass::PresenceList,
            "typing" => EventClass::Typing,
            "auth:refresh" => EventClass::Refresh,
            _ => EventClass::Other,
        }
    }

    /// Its place in [`Policy::rates`]: the order of the variants.
    fn index(self) -> usize {
        self as usize
    }
}

/// The budgets of every class, and how long a socket may keep exceeding them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Per class, in the order of [`EventClass`]'s variants.
    pub rates: [Rate; 6],
    /// A socket refused at least once a second for this long is disconnected; zero: never.
    pub disconnect_after: Duration,
}

/// Refusals this far apart belong to one streak of exceeding.
pub(crate) const STREAK_GAP: Duration = Duration::from_secs(1);

/// Refills a bucket holding `tokens` (last refilled at `refilled`) at `rate` up to `now` and takes
/// a token, or says how long until one is there.
fn take(tokens: &mut f64, refilled: &mut Instant, rate: Rate, now: Instant) -> Result<(), Duration> {
    let elapsed = now.saturating_duration_since(*refilled).as_secs_f64();
    *tokens = (*tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
    *refilled = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        return Ok(());
    }
    Err(Duration::from_secs_f64((1.0 - *tokens) / rate.per_second))
}

/// A replica-wide budget (new connections): one bucket behind a lock.
#[derive(Debug)]
pub struct SharedBucket {
    rate: Rate,
    /// (tokens, last refill).
    state: std::sync::Mutex<(f64, Instant)>,
}

impl SharedBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        SharedBucket { rate, state: std::sync::Mutex::new((f64::from(rate.burst), Instant::now())) }
    }

    /// Takes a token now, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, refilled) = &mut *state;
        take(tokens, refilled, self.rate, Instant::now())
    }
}

/// What a socket may still send: its buckets and its current streak of refusals.
#[derive(Debug)]
pub struct SocketLimits {
    /// Tokens per class (f32: a socket keeps six of these).
    tokens: [f32; 6],
    /// When each bucket was last refilled.
    refilled: [Instant; 6],
    /// First and last refusal of the current streak.
    streak: Option<(Instant, Instant)>,
}

/// A refused event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// When the bucket holds a token again.
    pub retry_after: Duration,
    /// The socket has exceeded its budget for longer than the policy allows.
    pub disconnect: bool,
}

impl SocketLimits {
    /// Full buckets at `now`.
    pub fn new(policy: &Policy, now: Instant) -> Self {
        SocketLimits { tokens: policy.rates.map(|r| r.burst as f32), refilled: [now; 6], streak: None }
    }

    /// Takes a token of `class` at `now`, or says why not.
    pub fn take(&mut self, policy: &Policy, class: EventClass, now: Instant) -> Result<(), Refused> {
        let i = class.index();
        let mut tokens = f64::from(self.tokens[i]);
        let taken = take(&mut tokens, &mut self.refilled[i], policy.rates[i], now);
        self.tokens[i] = tokens as f32;
        let Err(retry_after) = taken else { return Ok(()) };
        let first = match self.streak {
            Some((first, last)) if now.saturating_duration_since(last) <= STREAK_GAP => first,
            _ => now,
        };
        self.streak = Some((first, now));
        let disconnect =
            !policy.disconnect_after.is_zero() && now.saturating_duration_since(first) >= policy.disconnect_after;
        Err(Refused { retry_after, disconnect })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate: &str, disconnect_after: Duration) -> Policy {
        let rate: Rate = rate.parse().unwrap();
        Policy { rates: [rate; 6], disconnect_after }
    }

    #[test]
    fn rates_parse_with_and_without_burst_and_bad_ones_say_how_to_write_them() {
        assert_eq!("5/s:10".parse::<Rate>(), Ok(Rate { per_second: 5.0, burst: 10 }));
        assert_eq!("0.5/s".parse::<Rate>(), Ok(Rate { per_second: 0.5, burst: 1 }));
        assert_eq!("20/s".parse::<Rate>().unwrap().to_string(), "20/s:20");
        for bad in ["", "5", "5/m", "-1/s", "0/s", "x/s", "5/s:", "5/s:-2", "NaN/s", "inf/s"] {
            let err = bad.parse::<Rate>().unwrap_err();
            assert!(err.contains("rate"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate_with_an_honest_retry_after() {
        let p = policy("2/s:4", Duration::ZERO);
        let t0 = Instant::now();
        let mut l = SocketLimits::new(&p, t0);
        for _ in 0..4 {
            assert_eq!(l.take(&p, EventClass::Typing, t0), Ok(()));
        }
        let refused = l.take(&p, EventClass::Typing, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert!(!refused.disconnect, "disconnecting is off");
        // Another class has its own budget.
        assert_eq!(l.take(&p, EventClass::Rooms, t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.take(&p, EventClass::Typing, t1), Ok(()));
        assert!(l.take(&p, EventClass::Typing, t1).is_err());
        // Idle for long: back to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..5).filter(|_| l.take(&p, EventClass::Typing, t2).is_ok()).count(), 4);
    }

    #[test]
    fn only_a_sustained_streak_of_refusals_disconnects() {
        let p = policy("1/s:1", Duration::from_secs(10));
        let t0 = Instant::now();
        let mut l = SocketLimits::new(&p, t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Refused now and then, with quiet seconds between: never a streak.
        let mut disconnected = false;
        for s in 0..30 {
            let now = at(s * 2500);
            let _ = l.take(&p, EventClass::Other, now);
            disconnected |= l.take(&p, EventClass::Other, now).is_err_and(|r| r.disconnect);
        }
        assert!(!disconnected, "bursts spread out are not a sustained flood");
        // Flooding every 100 ms: disconnected once 10 s of refusals passed.
        let start = 100_000;
        let first_disconnect = (0..200)
            .map(|i| at(start + i * 100))
            .find(|&now| l.take(&p, EventClass::Other, now).is_err_and(|r| r.disconnect))
            .unwrap();
        // The flood's first event still found a token; its first refusal, 100 ms in, starts the streak.
        assert_eq!(first_disconnect.duration_since(at(start + 100)), Duration::from_secs(10));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Rates come from operators: parsed or refused with a message, never a panic, and
            /// a bucket never lets more through than its burst plus its rate allow.
            #[test]
            fn prop_any_rate_text_parses_or_says_why(text in "\\PC{0,20}") {
                let _ = text.parse::<Rate>();
            }

            #[test]
            fn prop_a_bucket_never_exceeds_burst_plus_rate(
                per_second in 0.1f64..1000.0,
                burst in 1u32..100,
                gaps in proptest::collection::vec(0u64..50, 1..300),
            ) {
                let rate = Rate { per_second, burst };
                let policy = Policy { rates: [rate; 6], disconnect_after: Duration::ZERO };
                let t0 = Instant::now();
                let mut limits = SocketLimits::new(&policy, t0);
                let (mut now, mut admitted) = (t0, 0u64);
                for gap in gaps {
                    now += Duration::from_millis(gap);
                    admitted += u64::from(limits.take(&policy, EventClass::Typing, now).is_ok());
                }
                let allowed = f64::from(burst) + per_second * now.duration_since(t0).as_secs_f64();
                // (Tokens are kept as f32: allow its rounding.)
                prop_assert!(admitted as f64 <= allowed + 1e-3, "{} admitted, {} allowed", admitted, allowed);
            }
        }
    }
}

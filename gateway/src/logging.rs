//! Log output: human-readable text or one JSON object per line.

use tracing::{Level, Metadata};
use tracing_subscriber::{EnvFilter, filter::filter_fn, fmt, prelude::*};

use crate::config::{Config, LogFormat};

/// Libraries whose debug and trace output prints raw packets or commands, and so handshake
/// tokens, `auth:refresh` payloads and credentials. They never log below INFO, whatever
/// `ROOMCAST_LOG` says.
const WIRE_LEVEL_CRATES: &[&str] =
    &["socketioxide", "engineioxide", "tungstenite", "tokio_tungstenite", "fred", "redis_protocol", "hyper"];

fn is_wire_level(meta: &Metadata<'_>) -> bool {
    *meta.level() > Level::INFO
        && WIRE_LEVEL_CRATES
            .iter()
            .any(|c| meta.target().strip_prefix(c).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
}

/// Installs the global subscriber. Connection spans carry `sid`, `tenant` and `user`, so every
/// line logged while handling a socket names it; tokens and secrets are never logged.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(filter_fn(|meta| !is_wire_level(meta)));
    let result = match config.log_format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry.with(fmt::layer().with_target(false).with_ansi(ansi)).try_init()
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false))
            .try_init(),
    };
    // Already initialised (an embedding application or a test did): keep theirs.
    let _ = result;
}

/// Lets a warning that can fire once per event (a full send buffer, a failed Redis call per
/// operation) through at most once per `every`, with how many were held back since: a flood
/// must not turn into a flood of log lines.
#[derive(Debug)]
pub struct Throttled {
    every: std::time::Duration,
    /// Milliseconds since [`CLOCK`] started of the last line let through, or `u64::MAX` before
    /// the first.
    last: std::sync::atomic::AtomicU64,
    /// Lines held back since the last one let through.
    held: std::sync::atomic::AtomicU64,
}

/// The clock every [`Throttled`] reads, so one can be a plain `static`.
static CLOCK: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

impl Throttled {
    /// At most one line per `every`; usable in a `static`.
    pub const fn new(every: std::time::Duration) -> Self {
        Throttled {
            every,
            last: std::sync::atomic::AtomicU64::new(u64::MAX),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` if a line may be logged now, else `None` (counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(u64::try_from(CLOCK.elapsed().as_millis()).unwrap_or(u64::MAX - 1))
    }

    /// [`Throttled::check`] at `now`, ms on [`CLOCK`].
    fn check_at(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.every.as_millis() as u64;
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// How often a throttled warning may repeat.
pub const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_warnings_is_one_line_then_one_per_interval_with_the_count_held_back() {
        let t = Throttled::new(std::time::Duration::from_millis(50));
        assert_eq!(t.check_at(0), Some(0));
        assert_eq!((0..1000).filter_map(|i| t.check_at(i % 50)).count(), 0, "held back within the interval");
        assert_eq!(t.check_at(50), Some(1000), "the next line says how many were held back");
        assert_eq!(t.check_at(51), None);
    }
}

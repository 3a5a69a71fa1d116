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

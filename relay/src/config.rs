//! The relay's configuration: one clap struct, every option also an environment variable.
//!
//! Options it shares with the gateway (`ROOMCAST_REDIS_*`, `ROOMCAST_HISTORY_*`,
//! `ROOMCAST_PUBLISH_*`, `ROOMCAST_LOG*`) have the gateway's names and defaults, so one env file
//! can configure both; they must match the gateways' values.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use roomcast_publisher::{fred::prelude::Config as RedisConfig, wire};

/// Publishes the rows of a Postgres outbox table (relay/migrations) to Roomcast rooms.
#[derive(Debug, Clone, Parser)]
#[command(name = "roomcast-relay", version, about, long_about = None)]
pub struct Config {
    /// Postgres connection string (`postgres://user:pass@host:5432/db` or `host=... dbname=...`)
    /// of the database holding `roomcast_outbox`. Its `sslmode`: `disable` (no TLS), `prefer`
    /// (the default: TLS when the server offers it) or `require`; with TLS the server's
    /// certificate and host name are always verified (the system's CAs, or
    /// ROOMCAST_RELAY_DATABASE_CA_FILE).
    #[arg(long, env = "ROOMCAST_RELAY_DATABASE_URL", hide_env_values = true, conflicts_with = "database_url_file")]
    pub database_url: Option<Secret>,

    /// File holding the Postgres connection string (a mounted secret; trailing newline
    /// ignored), instead of ROOMCAST_RELAY_DATABASE_URL.
    #[arg(long, env = "ROOMCAST_RELAY_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// PEM bundle of the CAs that sign the Postgres server's certificate (e.g. your cloud's RDS
    /// or Cloud SQL bundle); replaces the system's CA store for Postgres.
    #[arg(long, env = "ROOMCAST_RELAY_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    /// Redis the gateways use (`redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`).
    #[arg(long, env = "ROOMCAST_REDIS_URL", hide_env_values = true, conflicts_with = "redis_url_file")]
    pub redis_url: Option<Secret>,

    /// File holding the Redis URL (trailing newline ignored), instead of ROOMCAST_REDIS_URL.
    #[arg(long, env = "ROOMCAST_REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,

    /// File holding the Redis password (trailing newline ignored); overrides one in the URL.
    #[arg(long, env = "ROOMCAST_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// The gateways' Redis key and channel prefix.
    #[arg(long, env = "ROOMCAST_REDIS_PREFIX", default_value = wire::DEFAULT_PREFIX)]
    pub redis_prefix: String,

    /// How long one publish round trip to Redis may take before the batch counts as failed (it
    /// is then retried; the dedupe window makes the retry deliver each event once).
    #[arg(long, env = "ROOMCAST_REDIS_COMMAND_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_command_timeout: Duration,

    /// Events each room keeps for recovery: the gateways' value. The relay needs history (at
    /// least 1): its exactly-once retries rest on the history script's dedupe.
    #[arg(long, env = "ROOMCAST_HISTORY_SIZE", default_value_t = wire::DEFAULT_HISTORY_SIZE)]
    pub history_size: u32,

    /// How long history entries are kept: the gateways' value.
    #[arg(long, env = "ROOMCAST_HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// How long a published row's event id is remembered in Redis: a batch published but not
    /// yet marked in Postgres (a crash, a lost commit) is published again after a restart, and
    /// within this window its events are dropped as duplicates instead of delivered twice.
    #[arg(long, env = "ROOMCAST_PUBLISH_DEDUPE_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub publish_dedupe_window: Duration,

    /// Largest event payload (`data`, as JSON) published, in bytes: the gateways' value. A
    /// larger row is moved to `roomcast_outbox_failed` (`error` says why), not published.
    #[arg(long, env = "ROOMCAST_PUBLISH_MAX_PAYLOAD", default_value_t = wire::DEFAULT_MAX_PAYLOAD)]
    pub publish_max_payload: usize,

    /// Rows claimed, published (one Redis round trip) and marked per batch.
    #[arg(long, env = "ROOMCAST_RELAY_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: u32,

    /// Most bytes of payload one batch publishes; the claim's other rows wait for the next
    /// batch. A batch's payloads are held several times over while it is sent.
    #[arg(long, env = "ROOMCAST_RELAY_BATCH_BYTES", default_value_t = 8 << 20)]
    pub batch_bytes: usize,

    /// How often the outbox is read when no NOTIFY woke the relay (a fallback: the migration's
    /// trigger notifies on every commit).
    #[arg(long, env = "ROOMCAST_RELAY_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How long published rows are kept (marked `processed_at`) before they are deleted; 0
    /// deletes them in the transaction that publishes them.
    #[arg(long, env = "ROOMCAST_RELAY_RETENTION", default_value = "0s", value_parser = parse_duration)]
    pub retention: Duration,

    /// How long one Postgres round trip may take before the connection counts as down (it is
    /// dropped, which rolls its transaction back, and opened again).
    #[arg(long, env = "ROOMCAST_RELAY_DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ROOMCAST_RELAY_ADMIN_LISTEN", default_value = "0.0.0.0:9092")]
    pub admin_listen: SocketAddr,

    /// How long a SIGTERM waits for the batch in flight before the process exits.
    #[arg(long, env = "ROOMCAST_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `roomcast_relay=debug`.
    #[arg(long, env = "ROOMCAST_LOG", default_value = "info")]
    pub log: String,

    /// `text` or `json` (one object per line).
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// The most rows one batch may claim: a batch is one transaction holding its rows' locks and
/// one Redis pipeline held in memory.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// A setting that cannot work, naming the option.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {problem}")]
pub struct ConfigError {
    /// The environment variable of the option.
    pub option: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

impl Config {
    /// Checks the values clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |option, problem: &str| Err(ConfigError { option, problem: problem.to_owned() });
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return bad("ROOMCAST_RELAY_BATCH_SIZE", &format!("must be 1 to {MAX_BATCH_SIZE}"));
        }
        if self.history_size == 0 {
            return bad(
                "ROOMCAST_HISTORY_SIZE",
                "the relay needs history (at least 1): its retries are deduplicated by the history script",
            );
        }
        if self.history_ttl.is_zero() {
            return bad("ROOMCAST_HISTORY_TTL", "must be more than 0");
        }
        for (option, d) in [
            ("ROOMCAST_REDIS_COMMAND_TIMEOUT", self.redis_command_timeout),
            ("ROOMCAST_RELAY_DATABASE_TIMEOUT", self.database_timeout),
        ] {
            // Postgres takes its timeouts in whole milliseconds, up to i32::MAX; 0 turns one off.
            if d < Duration::from_millis(1) || d > Duration::from_secs(24 * 3600) {
                return bad(option, "must be 1ms to 24h");
            }
        }
        // Rows published but not marked are published again once their claim is released: a
        // vanished relay's claim lasts at most a statement, an idle transaction (the Redis and
        // database timeouts plus 5 s) and the 25 s TCP bounds (see relay::session_settings).
        // The window must outlast that by far.
        let claim_bound = self.database_timeout * 2 + self.redis_command_timeout + Duration::from_secs(30);
        if self.publish_dedupe_window < (claim_bound * 2).max(Duration::from_secs(60)) {
            return bad(
                "ROOMCAST_PUBLISH_DEDUPE_WINDOW",
                &format!(
                    "must be at least 1m and twice the longest a vanished relay's claim can last ({}): rows \
                     republished after a crash are deduplicated within it",
                    humantime::format_duration(claim_bound)
                ),
            );
        }
        if self.batch_bytes < self.publish_max_payload {
            return bad("ROOMCAST_RELAY_BATCH_BYTES", "must hold at least one payload (ROOMCAST_PUBLISH_MAX_PAYLOAD)");
        }
        if self.poll_interval.is_zero() {
            return bad("ROOMCAST_RELAY_POLL_INTERVAL", "must be more than 0");
        }
        if self.publish_max_payload == 0 {
            return bad("ROOMCAST_PUBLISH_MAX_PAYLOAD", "must be more than 0");
        }
        self.database_config()?;
        self.database_tls()?;
        self.redis_config()?;
        if let Err(e) = wire::Keys::new(self.redis_prefix.clone()) {
            return bad("ROOMCAST_REDIS_PREFIX", &e.to_string());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return bad("ROOMCAST_LOG", "not a log filter (e.g. info, roomcast_relay=debug)");
        }
        Ok(())
    }
}

impl Config {
    /// The Postgres connection string, from the option or its file.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        Ok(self.database_source()?.1)
    }

    /// The parsed Postgres connection settings (what the relay connects with).
    pub fn database_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        let (option, url) = self.database_source()?;
        // The parser's message may quote the string, password included: say only what is wrong.
        url.parse().map_err(|_| ConfigError {
            option,
            problem: "not a Postgres connection string (postgres://user:password@host:5432/db or key=value pairs)"
                .into(),
        })
    }

    /// The option that gave the Postgres connection string, and the string.
    fn database_source(&self) -> Result<(&'static str, String), ConfigError> {
        secret_option(
            self.database_url.as_ref(),
            self.database_url_file.as_deref(),
            "ROOMCAST_RELAY_DATABASE_URL",
            "ROOMCAST_RELAY_DATABASE_URL_FILE",
        )
    }

    /// The TLS configuration for Postgres: the CAs of ROOMCAST_RELAY_DATABASE_CA_FILE, else the
    /// system's.
    pub fn database_tls(&self) -> Result<rustls::ClientConfig, ConfigError> {
        const OPTION: &str = "ROOMCAST_RELAY_DATABASE_CA_FILE";
        let invalid = |problem: String| ConfigError { option: OPTION, problem };
        let mut roots = rustls::RootCertStore::empty();
        match &self.database_ca_file {
            Some(path) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
                    roots.add(cert).map_err(|e| invalid(format!("a certificate cannot be used as a CA: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(invalid("the file holds no PEM certificate".into()));
                }
            }
            None => {
                // Certificates the system store holds but rustls cannot use are skipped, as a
                // TLS client of the system store would.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    }

    /// The Redis client configuration, from the URL (or its file) and the password file.
    pub fn redis_config(&self) -> Result<RedisConfig, ConfigError> {
        let (option, url) = secret_option(
            self.redis_url.as_ref(),
            self.redis_url_file.as_deref(),
            "ROOMCAST_REDIS_URL",
            "ROOMCAST_REDIS_URL_FILE",
        )?;
        let mut config = RedisConfig::from_url(&url).map_err(|_| ConfigError {
            option,
            problem: "not a Redis URL: expected redis://[user:password@]host:port[/db], rediss:// (TLS), \
                      redis-cluster://host:port[?node=host:port] or redis-sentinel://"
                .into(),
        })?;
        if let Some(path) = &self.redis_password_file {
            config.password = Some(read_secret_file("ROOMCAST_REDIS_PASSWORD_FILE", path)?);
        }
        Ok(config)
    }
}

/// A secret option's value: never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A required secret given either as a value (`option`) or as a file (`file_option`): which of
/// the two gave it, and the value.
fn secret_option(
    value: Option<&Secret>,
    file: Option<&std::path::Path>,
    option: &'static str,
    file_option: &'static str,
) -> Result<(&'static str, String), ConfigError> {
    match (value, file) {
        (Some(value), _) => Ok((option, value.0.clone())),
        (None, Some(path)) => Ok((file_option, read_secret_file(file_option, path)?)),
        (None, None) => Err(ConfigError { option, problem: format!("is required (or {file_option})") }),
    }
}

fn read_secret_file(option: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    let raw = std::fs::read(path)
        .map_err(|e| ConfigError { option, problem: format!("cannot read {}: {e}", path.display()) })?;
    let text =
        String::from_utf8(raw).map_err(|_| ConfigError { option, problem: "the file is not UTF-8 text".into() })?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return Err(ConfigError { option, problem: format!("{} is empty", path.display()) });
    }
    Ok(text.to_owned())
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["roomcast-relay"];
        if !args.contains(&"--redis-url") {
            all.extend(["--redis-url", "redis://x"]);
        }
        if !args.contains(&"--database-url") && !args.contains(&"--database-url-file") {
            all.extend(["--database-url", "postgres://localhost/db"]);
        }
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parses")
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        assert!(c.validate().is_ok());
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.retention, Duration::ZERO);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn each_bad_value_names_its_option() {
        for (args, option) in [
            (&["--batch-size", "0"][..], "ROOMCAST_RELAY_BATCH_SIZE"),
            (&["--batch-size", "10001"][..], "ROOMCAST_RELAY_BATCH_SIZE"),
            (&["--history-size", "0"][..], "ROOMCAST_HISTORY_SIZE"),
            (&["--poll-interval", "0s"][..], "ROOMCAST_RELAY_POLL_INTERVAL"),
            (&["--publish-dedupe-window", "0s"][..], "ROOMCAST_PUBLISH_DEDUPE_WINDOW"),
            (&["--publish-dedupe-window", "30s"][..], "ROOMCAST_PUBLISH_DEDUPE_WINDOW"),
            (&["--database-timeout", "60s"][..], "ROOMCAST_PUBLISH_DEDUPE_WINDOW"),
            (&["--database-timeout", "500us"][..], "ROOMCAST_RELAY_DATABASE_TIMEOUT"),
            (&["--redis-command-timeout", "25h"][..], "ROOMCAST_REDIS_COMMAND_TIMEOUT"),
            (&["--batch-bytes", "100"][..], "ROOMCAST_RELAY_BATCH_BYTES"),
            (&["--database-ca-file", "/nonexistent/ca.pem"][..], "ROOMCAST_RELAY_DATABASE_CA_FILE"),
            (&["--database-timeout", "0s"][..], "ROOMCAST_RELAY_DATABASE_TIMEOUT"),
            (&["--redis-prefix", "a{b"][..], "ROOMCAST_REDIS_PREFIX"),
            (&["--database-url", "postgres://host:notaport/db"][..], "ROOMCAST_RELAY_DATABASE_URL"),
            (&["--redis-url", "not a url"][..], "ROOMCAST_REDIS_URL"),
            (&["--redis-password-file", "/nonexistent/pw"][..], "ROOMCAST_REDIS_PASSWORD_FILE"),
        ] {
            let err = parse(args).validate().expect_err(option);
            assert_eq!(err.option, option, "{args:?}: {err}");
        }
    }

    #[test]
    fn urls_come_from_files_and_are_never_printed() {
        let dir = std::env::temp_dir().join(format!("roomcast-relay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = dir.join("db");
        std::fs::write(&db, "postgres://app:s3cret@db:5432/app\n").expect("write");
        let pw = dir.join("pw");
        std::fs::write(&pw, "redis-pass\n").expect("write");
        let c = parse(&[
            "--database-url-file",
            db.to_str().expect("utf-8"),
            "--redis-password-file",
            pw.to_str().expect("utf-8"),
        ]);
        assert_eq!(c.database_url().expect("url"), "postgres://app:s3cret@db:5432/app");
        assert_eq!(c.redis_config().expect("redis").password.as_deref(), Some("redis-pass"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let leaky = parse(&["--database-url", "postgres://app:s3cret@db:notaport/app"]);
        assert!(!leaky.validate().expect_err("bad port").to_string().contains("s3cret"));
        std::fs::write(&db, "").expect("write");
        let empty = parse(&["--database-url-file", db.to_str().expect("utf-8")]);
        assert_eq!(empty.validate().expect_err("empty").option, "ROOMCAST_RELAY_DATABASE_URL_FILE");
        let none = Config::try_parse_from(["roomcast-relay", "--redis-url", "redis://x"]).expect("parses");
        assert_eq!(none.validate().expect_err("missing").option, "ROOMCAST_RELAY_DATABASE_URL");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_bad_duration_is_refused_by_the_parser() {
        let all = ["roomcast-relay", "--database-url", "x", "--redis-url", "y", "--poll-interval", "soon"];
        assert!(Config::try_parse_from(all).is_err());
    }
}

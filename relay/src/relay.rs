//! The relay loop: claim a batch, publish it in one Redis round trip, mark it, commit.
//!
//! Exactly once rests on two things. Rows are claimed with `FOR UPDATE SKIP LOCKED` inside the
//! transaction that later marks them, so a row is in at most one relay's hands and is marked
//! only if its publish was confirmed. And every publish carries the row's idempotency key, so a
//! batch published but never marked (a crash, a lost commit, Postgres restarting) is published
//! again after the restart and Redis drops the events it already has (within
//! `ROOMCAST_PUBLISH_DEDUPE_WINDOW`). Order per room: one relay publishes a room's rows in id
//! order in one pipeline; [`outbox::CLAIM`] holds a room's rows back while another relay holds
//! an earlier row of that room.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use roomcast_publisher::{Publisher, wire::HistoryPolicy};
use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, Client, IsolationLevel, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{
    config::Config,
    metrics as m,
    outbox::{self, Row},
};

/// What readiness reports: both links answered their last request.
#[derive(Debug, Default)]
pub struct Health {
    /// The worker's Postgres connection is up and its last statement succeeded.
    pub postgres: AtomicBool,
    /// The last publish or PING reached Redis.
    pub redis: AtomicBool,
}

impl Health {
    /// Ready to relay: both links are up.
    pub fn ready(&self) -> bool {
        self.postgres.load(Ordering::Relaxed) && self.redis.load(Ordering::Relaxed)
    }
}

/// Why a batch did not complete.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres did not answer within ROOMCAST_RELAY_DATABASE_TIMEOUT")]
    PostgresTimeout,
    #[error("redis: {0}")]
    Redis(String),
}

/// A Postgres error with the server's own message when there is one (tokio-postgres shows
/// only "db error" for those).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // Its causes too: "error performing TLS handshake" alone does not say the
            // certificate was refused.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    }
}

/// A worker connection with its statements prepared.
struct Conn {
    client: Client,
    claim: Statement,
    finish: Statement,
    fail: Statement,
}

/// How many rows the last batch saw.
#[derive(Debug, Clone, Copy, Default)]
struct Batch {
    claimed: usize,
    /// Rows of rooms another relay holds an earlier row of.
    held_back: usize,
    /// Rows past `ROOMCAST_RELAY_BATCH_BYTES`, left for the next batch.
    deferred: usize,
}

/// Exponential backoff between failed attempts: 100 ms doubling to 5 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MOST);
        d
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Runs the relay until `stop` turns true, then returns once the batch in flight is done.
pub async fn run(config: Config, health: Arc<Health>, mut stop: watch::Receiver<bool>) {
    // Read once (the file options are read here); validate() already checked them.
    let database = match Database::of(&config) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!(error = %e, "bad Postgres settings");
            return;
        }
    };
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(config.clone(), database.clone(), wake.clone(), stop.clone()));
    let Some(publisher) = connect_redis(&config, &health, &mut stop).await else {
        listener.abort();
        return;
    };
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new();
    let mut last_lag = tokio::time::Instant::now() - Duration::from_secs(60);
    let mut last_purge = last_lag;
    let mut last_ping = last_lag;
    while !*stop.borrow() {
        let c = match &mut conn {
            Some(c) => c,
            None => match connect_worker(&config, &database).await {
                Ok(c) => {
                    tracing::info!("connected to postgres");
                    health.postgres.store(true, Ordering::Relaxed);
                    conn.insert(c)
                }
                Err(e) => {
                    health.postgres.store(false, Ordering::Relaxed);
                    m::error("postgres");
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot connect to postgres");
                    sleep_or_stop(wait, &mut stop).await;
                    continue;
                }
            },
        };
        let outcome = relay_batch(c, &publisher, &config, &health).await;
        let idle = match outcome {
            Ok(batch) => {
                backoff.reset();
                health.postgres.store(true, Ordering::Relaxed);
                if batch.deferred > 0 || (batch.claimed as u32 == config.batch_size && batch.held_back < batch.claimed)
                {
                    // A full batch: more rows are waiting.
                    None
                } else if batch.held_back > 0 {
                    // Another relay holds earlier rows of these rooms: look again soon.
                    Some(Duration::from_millis(20))
                } else {
                    // Rows committed since the claim have notified: the wait ends at once.
                    Some(config.poll_interval)
                }
            }
            Err(BatchError::Redis(e)) => {
                health.redis.store(false, Ordering::Relaxed);
                m::error("redis");
                // The lag keeps growing while Redis is away: keep reporting it.
                if let Some(c) = &conn
                    && report_lag_when_due(&mut last_lag, c, &config).await.is_err()
                {
                    conn = None;
                }
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "publishing a batch failed; it stays in the outbox");
                sleep_or_stop(wait, &mut stop).await;
                continue;
            }
            Err(e) => {
                // The connection is dropped: Postgres rolls its transaction back and releases
                // the rows for this or another relay.
                conn = None;
                health.postgres.store(false, Ordering::Relaxed);
                m::error("postgres");
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "the outbox is unreachable; reconnecting");
                sleep_or_stop(wait, &mut stop).await;
                continue;
            }
        };
        let Some(c) = &conn else { continue };
        if let Err(e) = report_lag_when_due(&mut last_lag, c, &config).await {
            tracing::debug!(error = %e, "lag query failed");
        }
        let purge_every = config.retention.clamp(Duration::from_secs(1), Duration::from_secs(10));
        if !config.retention.is_zero() && last_purge.elapsed() >= purge_every {
            last_purge = tokio::time::Instant::now();
            if let Err(e) = purge(c, &config).await {
                tracing::warn!(error = %e, "deleting rows past ROOMCAST_RELAY_RETENTION failed");
            }
        }
        if let Some(wait) = idle {
            if wait == config.poll_interval && last_ping.elapsed() >= config.poll_interval {
                last_ping = tokio::time::Instant::now();
                // Idle: check Redis too, so readiness sees a Redis that went away meanwhile.
                let ping = tokio::time::timeout(config.redis_command_timeout, ping(&publisher)).await;
                health.redis.store(matches!(ping, Ok(Ok(()))), Ordering::Relaxed);
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
    listener.abort();
    tracing::info!("relay stopped");
}

async fn ping(publisher: &Publisher) -> Result<(), roomcast_publisher::fred::error::Error> {
    use roomcast_publisher::fred::interfaces::ClientLike;
    publisher.client().ping::<()>(None).await
}

async fn connect_redis(config: &Config, health: &Health, stop: &mut watch::Receiver<bool>) -> Option<Publisher> {
    // Read once (the file options are read here); validate() already checked them.
    let redis = match config.redis_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "bad Redis settings");
            return None;
        }
    };
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return None;
        }
        match connect_publisher(redis.clone(), config).await {
            Ok(p) => {
                let p = p
                    .with_prefix(config.redis_prefix.clone())
                    .ok()?
                    .with_history(HistoryPolicy { size: config.history_size, ttl: config.history_ttl })
                    .with_dedupe_window(config.publish_dedupe_window)
                    .with_max_payload(config.publish_max_payload);
                health.redis.store(true, Ordering::Relaxed);
                tracing::info!("connected to redis");
                return Some(p);
            }
            Err(e) => {
                m::error("redis");
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot connect to redis");
                sleep_or_stop(wait, stop).await;
            }
        }
    }
}

/// A publisher whose client reconnects forever (100 ms doubling to 5 s) and whose own command
/// timeout is well past `ROOMCAST_REDIS_COMMAND_TIMEOUT`: the relay's timeout decides, and fred
/// never drops part of a queued pipeline on its own (it skips writing commands whose timeout
/// passed while queued, which could leave a gap in a room's rows).
async fn connect_publisher(
    redis: roomcast_publisher::fred::prelude::Config,
    config: &Config,
) -> Result<Publisher, roomcast_publisher::fred::error::Error> {
    use roomcast_publisher::fred::{
        interfaces::ClientLike,
        prelude::{Builder, ReconnectPolicy},
    };
    let client = Builder::from_config(redis)
        .with_performance_config(|p| {
            p.default_command_timeout = config.redis_command_timeout * 4 + Duration::from_secs(5)
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.init().await?;
    Ok(Publisher::from_client(client))
}

/// A Postgres connection with its (maybe TLS) stream.
type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// How to reach Postgres: the parsed connection string (named `roomcast-relay` in
/// `pg_stat_activity` unless it names itself) and the TLS connector its `sslmode` may use.
struct Database {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Database {
    fn of(config: &Config) -> Result<Database, crate::config::ConfigError> {
        let mut pg = config.database_config()?;
        if pg.get_application_name().is_none() {
            pg.application_name("roomcast-relay");
        }
        // The client side notices a dead server (a failover, a partition) in about 25 s too,
        // instead of tokio-postgres' 2 h default, unless the URL says otherwise.
        if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            pg.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(5));
            pg.keepalives_retries(3).tcp_user_timeout(Duration::from_secs(25));
        }
        Ok(Database { config: pg, tls: MakeRustlsConnect::new(config.database_tls()?) })
    }

    async fn connect(&self) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

async fn connect_worker(config: &Config, database: &Database) -> Result<Conn, BatchError> {
    within(config, async {
        let (client, connection) = database.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        client.batch_execute(&session_settings(config)).await?;
        // Postgres 14+: a backend also notices a vanished client while it runs a statement.
        if let Err(e) = client.batch_execute("SET client_connection_check_interval = '5s'").await {
            tracing::debug!(error = %describe(&e), "client_connection_check_interval not set (Postgres < 14)");
        }
        let finish = if config.retention.is_zero() { outbox::DELETE_PUBLISHED } else { outbox::MARK_PUBLISHED };
        Ok(Conn {
            claim: client.prepare(outbox::CLAIM).await?,
            finish: client.prepare(finish).await?,
            fail: client.prepare(outbox::MARK_FAILED).await?,
            client,
        })
    })
    .await
}

/// The worker session's settings.
///
/// - No JIT: the claim's estimated cost can pass `jit_above_cost` on a large backlog, and
///   compiling it then took 330 ms for a query that runs in a few.
/// - No sequential or bitmap scans: every statement of the relay reaches its rows through an
///   index, but right after a bulk insert (before autovacuum analyzes the table) the planner
///   believed the backlog was 169 rows and sorted all 50,000 of them for a claim (19 ms instead
///   of 3 ms in `EXPLAIN ANALYZE`, with autovacuum off after a 50,000-row insert).
/// - Server-side bounds on what a vanished relay (a lost node, a partition: no FIN reaches
///   Postgres) can hold: its claim's row locks hold back every later row of those rooms, and
///   its rows are published again once released, so they must be released well within the
///   dedupe window. A statement runs at most the database timeout; a transaction sits idle
///   (the relay publishing) at most the Redis and database timeouts plus 5 s; keepalives find a
///   dead peer in about 25 s, and `tcp_user_timeout` gives up on one that stopped acknowledging
///   what the backend sends (a large claim result) after 25 s, where keepalives do not probe.
fn session_settings(config: &Config) -> String {
    let idle = config.redis_command_timeout + config.database_timeout + Duration::from_secs(5);
    format!(
        "SET jit = off; SET enable_seqscan = off; SET enable_bitmapscan = off; \
         SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}; \
         SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; \
         SET tcp_user_timeout = 25000",
        config.database_timeout.as_millis(),
        idle.as_millis(),
    )
}

/// Runs `f` within the database timeout.
async fn within<T>(config: &Config, f: impl Future<Output = Result<T, BatchError>>) -> Result<T, BatchError> {
    tokio::time::timeout(config.database_timeout, f).await.map_err(|_| BatchError::PostgresTimeout)?
}

/// One batch: claim, publish what may be published, mark, commit.
async fn relay_batch(
    c: &mut Conn,
    publisher: &Publisher,
    config: &Config,
    health: &Health,
) -> Result<Batch, BatchError> {
    let started = tokio::time::Instant::now();
    // READ COMMITTED whatever the database's default: under REPEATABLE READ a row another relay
    // deleted since this transaction's snapshot fails the claim (40001) instead of being skipped.
    let tx = within(config, async {
        Ok(c.client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?)
    })
    .await?;
    let limit = i64::from(config.batch_size);
    let max_payload = i32::try_from(config.publish_max_payload).unwrap_or(i32::MAX);
    let budget = i64::try_from(config.batch_bytes).unwrap_or(i64::MAX);
    let rows = within(config, async { Ok(tx.query(&c.claim, &[&limit, &max_payload, &budget]).await?) }).await?;
    let rows = rows.iter().map(Row::from_claim).collect::<Result<Vec<_>, _>>()?;
    let mut batch = Batch { claimed: rows.len(), held_back: 0, deferred: 0 };
    if rows.is_empty() {
        within(config, async { Ok(tx.commit().await?) }).await?;
        return Ok(batch);
    }
    let claimed_at = tokio::time::Instant::now();
    let mut sending = publisher.batch();
    let mut published: Vec<&Row> = Vec::with_capacity(rows.len());
    let mut failed: Vec<(&Row, String)> = Vec::new();
    for row in &rows {
        if !row.ready {
            batch.held_back += 1;
            continue;
        }
        // Past ROOMCAST_RELAY_BATCH_BYTES (not read): the rest of the claim waits for the next
        // batch, in id order, so no room's order changes.
        if !row.within_budget {
            batch.deferred += 1;
            continue;
        }
        let added = row.target(publisher, config.publish_max_payload).and_then(|target| {
            let payload = row.payload()?;
            let (event, key) = (row.event.as_deref().unwrap_or_default(), row.key.as_deref().unwrap_or_default());
            sending.emit_with_id(&target, event, &payload, key).map(|_| ()).map_err(|e| e.to_string())
        });
        match added {
            Ok(()) => published.push(row),
            Err(why) => failed.push((row, why)),
        }
    }
    if !sending.is_empty() {
        let receipts = match tokio::time::timeout(config.redis_command_timeout, sending.send()).await {
            Ok(Ok(r)) => r,
            // Rolled back when `tx` drops: the rows stay in the outbox for the retry.
            Ok(Err(e)) => return Err(BatchError::Redis(e.to_string())),
            Err(_) => return Err(BatchError::Redis("no answer within ROOMCAST_REDIS_COMMAND_TIMEOUT".into())),
        };
        health.redis.store(true, Ordering::Relaxed);
        let duplicates = receipts.iter().filter(|r| r.duplicate).count();
        m::published(published.len() - duplicates, duplicates);
        for row in &published {
            m::delay(row.age);
        }
    }
    let published_at = tokio::time::Instant::now();
    let ids: Vec<i64> = published.iter().map(|r| r.id).collect();
    within(config, async {
        if !ids.is_empty() {
            tx.execute(&c.finish, &[&ids]).await?;
        }
        if !failed.is_empty() {
            for (row, why) in &failed {
                tracing::warn!(id = row.id, error = %why, "outbox row can never be published; moved to roomcast_outbox_failed");
            }
            let (ids, whys): (Vec<i64>, Vec<&str>) = failed.iter().map(|(row, why)| (row.id, why.as_str())).unzip();
            tx.execute(&c.fail, &[&ids, &whys]).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await?;
    m::failed(failed.len());
    tracing::debug!(
        rows = batch.claimed,
        held_back = batch.held_back,
        deferred = batch.deferred,
        claim_ms = (claimed_at - started).as_secs_f64() * 1e3,
        publish_ms = (published_at - claimed_at).as_secs_f64() * 1e3,
        commit_ms = published_at.elapsed().as_secs_f64() * 1e3,
        "batch"
    );
    Ok(batch)
}

/// Reports the lag if the last report is 500 ms old or more.
async fn report_lag_when_due(last: &mut tokio::time::Instant, c: &Conn, config: &Config) -> Result<(), BatchError> {
    if last.elapsed() < Duration::from_millis(500) {
        return Ok(());
    }
    *last = tokio::time::Instant::now();
    report_lag(c, config).await
}

async fn report_lag(c: &Conn, config: &Config) -> Result<(), BatchError> {
    let row = within(config, async { Ok(c.client.query_opt(outbox::LAG, &[]).await?) }).await?;
    let lag = row.and_then(|r| r.get::<_, Option<f64>>(0)).unwrap_or(0.0);
    m::lag(lag.max(0.0));
    Ok(())
}

async fn purge(c: &Conn, config: &Config) -> Result<(), BatchError> {
    let secs = config.retention.as_secs_f64();
    let started = tokio::time::Instant::now();
    loop {
        let n = within(config, async { Ok(c.client.execute(outbox::PURGE, &[&secs]).await?) }).await?;
        if n > 0 {
            tracing::debug!(rows = n, "deleted published rows past the retention");
        }
        // A full round: more may be due; keep going for up to a second, then let batches run.
        if n < 10_000 || started.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
    }
}

/// Keeps a `LISTEN roomcast_outbox` connection open and wakes the worker on each
/// notification; while it is down the worker polls every `ROOMCAST_RELAY_POLL_INTERVAL`.
async fn listen(config: Config, database: Arc<Database>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    while !*stop.borrow() {
        let why = tokio::select! {
            why = listen_once(&config, &database, &wake, &mut backoff) => why,
            _ = stop.changed() => return,
        };
        let wait = backoff.next();
        tracing::warn!(error = %why, retry_in = ?wait, "LISTEN connection lost; polling meanwhile");
        sleep_or_stop(wait, &mut stop).await;
    }
}

/// One LISTEN connection, until it ends; returns why.
async fn listen_once(config: &Config, database: &Database, wake: &Arc<Notify>, backoff: &mut Backoff) -> String {
    let connect = tokio::time::timeout(config.database_timeout, database.connect());
    let (client, mut connection) = match connect.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return describe(&e),
        Err(_) => return "connect timed out".into(),
    };
    // The connection's messages are read here: query replies go to `client`, notifications
    // wake the worker.
    let notified = wake.clone();
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => notified.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "connection closed".to_owned(),
            }
        }
    }));
    // Postgres 14+: a role's or database's idle_session_timeout would close this idle session.
    if let Ok(Err(e)) =
        tokio::time::timeout(config.database_timeout, client.batch_execute("SET idle_session_timeout = 0")).await
    {
        tracing::debug!(error = %describe(&e), "idle_session_timeout not set (Postgres < 14)");
    }
    let statement = format!("LISTEN {}", outbox::CHANNEL);
    let listen = tokio::time::timeout(config.database_timeout, client.batch_execute(&statement));
    match listen.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return describe(&e),
        Err(_) => return "LISTEN timed out".into(),
    }
    backoff.reset();
    // Rows committed before LISTEN took effect were not notified: look now.
    wake.notify_one();
    let why = (&mut driver.0).await.unwrap_or_else(|e| e.to_string());
    drop(client);
    why
}

/// Aborts the task when dropped (the LISTEN connection's driver ends with its listener).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sleeps for `d` unless `stop` turns true first.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

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
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

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
        None => e.to_string(),
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
    held_back: usize,
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
    // Read once (a file option is read here); validate() already checked it.
    let database_url: Arc<str> = match config.database_url() {
        Ok(url) => url.into(),
        Err(e) => {
            tracing::error!(error = %e, "bad Postgres settings");
            return;
        }
    };
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(config.clone(), database_url.clone(), wake.clone(), stop.clone()));
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
            None => match connect_worker(&config, &database_url).await {
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
                if batch.claimed as u32 == config.batch_size && batch.held_back < batch.claimed {
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
        if last_lag.elapsed() >= Duration::from_millis(500) {
            last_lag = tokio::time::Instant::now();
            if let Err(e) = report_lag(c, &config).await {
                tracing::debug!(error = %e, "lag query failed");
            }
        }
        if !config.retention.is_zero() && last_purge.elapsed() >= Duration::from_secs(10) {
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
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return None;
        }
        let redis = match config.redis_config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "bad Redis settings");
                return None;
            }
        };
        match Publisher::from_config(redis).await {
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

async fn connect_worker(config: &Config, database_url: &str) -> Result<Conn, BatchError> {
    within(config, async {
        let (client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        // The claim's estimated cost can pass jit_above_cost on a large backlog, and compiling
        // it then takes hundreds of milliseconds for a query that runs in a few.
        client.batch_execute("SET jit = off").await?;
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
    let tx = within(config, async { Ok(c.client.transaction().await?) }).await?;
    let limit = i64::from(config.batch_size);
    let rows = within(config, async { Ok(tx.query(&c.claim, &[&limit]).await?) }).await?;
    let rows = rows.iter().map(Row::from_claim).collect::<Result<Vec<_>, _>>()?;
    let mut batch = Batch { claimed: rows.len(), held_back: 0 };
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
        let added = row.target(publisher, config.publish_max_payload).and_then(|target| {
            let payload = row.payload()?;
            sending.emit_with_id(&target, &row.event, &payload, &row.key).map(|_| ()).map_err(|e| e.to_string())
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
        for (row, why) in &failed {
            tracing::warn!(id = row.id, error = %why, "outbox row can never be published; marked failed");
            tx.execute(&c.fail, &[&row.id, why]).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await?;
    m::failed(failed.len());
    tracing::debug!(
        rows = batch.claimed,
        held_back = batch.held_back,
        claim_ms = (claimed_at - started).as_secs_f64() * 1e3,
        publish_ms = (published_at - claimed_at).as_secs_f64() * 1e3,
        commit_ms = published_at.elapsed().as_secs_f64() * 1e3,
        "batch"
    );
    Ok(batch)
}

async fn report_lag(c: &Conn, config: &Config) -> Result<(), BatchError> {
    let row = within(config, async { Ok(c.client.query_opt(outbox::LAG, &[]).await?) }).await?;
    let lag = row.and_then(|r| r.get::<_, Option<f64>>(0)).unwrap_or(0.0);
    m::lag(lag.max(0.0));
    Ok(())
}

async fn purge(c: &Conn, config: &Config) -> Result<(), BatchError> {
    let secs = config.retention.as_secs_f64();
    let n = within(config, async { Ok(c.client.execute(outbox::PURGE, &[&secs]).await?) }).await?;
    if n > 0 {
        tracing::debug!(rows = n, "deleted published rows past the retention");
    }
    Ok(())
}

/// Keeps a `LISTEN roomcast_outbox` connection open and wakes the worker on each
/// notification; while it is down the worker polls every `ROOMCAST_RELAY_POLL_INTERVAL`.
async fn listen(config: Config, database_url: Arc<str>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    while !*stop.borrow() {
        let why = tokio::select! {
            why = listen_once(&config, &database_url, &wake, &mut backoff) => why,
            _ = stop.changed() => return,
        };
        let wait = backoff.next();
        tracing::warn!(error = %why, retry_in = ?wait, "LISTEN connection lost; polling meanwhile");
        sleep_or_stop(wait, &mut stop).await;
    }
}

/// One LISTEN connection, until it ends; returns why.
async fn listen_once(config: &Config, database_url: &str, wake: &Arc<Notify>, backoff: &mut Backoff) -> String {
    let connect = tokio::time::timeout(config.database_timeout, tokio_postgres::connect(database_url, NoTls));
    let (client, mut connection) = match connect.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return e.to_string(),
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

//! Webhooks: lifecycle events POSTed in signed batches to each configured URL.
//!
//! Every replica runs one dispatcher per URL; they share the URL's consumer group on the event
//! log, so each event goes out in one batch (a replica that dies with a batch pending has it
//! claimed by another after [`Webhook::claim_idle`]). A batch is retried until the receiver
//! answers 2xx, with exponential backoff and full jitter; while it is retried the log may trim
//! events of it (the log's cap is the queue bound), which are then counted as dropped
//! (`roomcast_webhook_dropped_total`), like events trimmed before any replica read them.
//!
//! Request: `POST`, `Content-Type: application/json`, body `{"events":[...]}`, header
//! `Roomcast-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (signed anew
//! for each attempt; `roomcast_publisher::events::verify` checks it).

use std::{sync::Arc, time::Duration};

use rand::Rng;
use roomcast_publisher::events::{SIGNATURE_HEADER, sign};
use tokio::time::Instant;

use super::{Batch, EventLog};
use crate::logging::Throttled;

/// The first retry's delay; each next one doubles, up to the configured maximum.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How often a dispatcher looks for batches a dead replica left pending.
const CLAIM_EVERY: Duration = Duration::from_secs(5);

/// One webhook URL and how to deliver to it.
#[derive(Clone)]
pub struct Webhook {
    /// Where the batches go.
    pub url: String,
    /// The HMAC secret signing them.
    pub secret: Vec<u8>,
    /// Most events in one request.
    pub batch_size: usize,
    /// How long a partial batch waits for more events (and how often the log is polled).
    pub batch_wait: Duration,
    /// One request's timeout.
    pub timeout: Duration,
    /// The longest delay between two attempts.
    pub retry_max: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Webhook {
    /// The URL's consumer group: the same on every replica, whatever the order of the URLs.
    pub fn group(&self) -> String {
        // FNV-1a: stable across builds and replicas, and keeps a URL's credentials out of Redis.
        let hash =
            self.url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("webhook:{hash:016x}")
    }

    /// How long a batch stays pending before another replica takes it over: twice the longest a
    /// live dispatcher goes without marking it (the partial batch's wait, then one retry delay
    /// plus one request), and a second. Taking over a live one's batch only sends it twice.
    pub fn claim_idle(&self) -> Duration {
        (self.batch_wait + self.retry_max + self.timeout) * 2 + Duration::from_secs(1)
    }

    /// The delay before retry `attempt` (1, 2, …): doubling from [`FIRST_RETRY`] up to
    /// `retry_max`, then a uniformly random part of the upper half of it (jitter, so that replicas
    /// retrying together spread out).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = FIRST_RETRY.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.retry_max);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// The body of a request: the events' JSON as the log holds it.
fn body(entries: &[(String, String)]) -> String {
    let mut body = String::from("{\"events\":[");
    for (i, (_, event)) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push_str("]}");
    body
}

/// Delivers `log`'s events to `hook` for the gateway's life, as `consumer` (this replica).
pub async fn run(hook: Webhook, log: Arc<dyn EventLog>, consumer: String) {
    // reqwest's rustls takes the process's default provider: ring, as fred's TLS and jwks.rs use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client =
        match reqwest::Client::builder().timeout(hook.timeout).pool_idle_timeout(Duration::from_secs(60)).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, url = %hook.url, "webhook client not built; no webhooks will be sent");
                return;
            }
        };
    let group = hook.group();
    let errors = Throttled::new(crate::logging::WARN_EVERY);
    let mut subscribed = false;
    // Once the group existed, a group found missing later vanished with Redis' data: it is
    // created again from the stream's start, so what was appended since is not skipped.
    let mut existed = false;
    let mut last_claim = Instant::now();
    loop {
        if !subscribed {
            match log.subscribe(&group, existed).await {
                Ok(()) => {
                    subscribed = true;
                    existed = true;
                }
                Err(e) => {
                    if let Some(held) = errors.check() {
                        tracing::warn!(error = %e, url = %hook.url, similar_since = held, "webhook cannot read the event log yet");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let mut batch = Batch::default();
        if last_claim.elapsed() >= CLAIM_EVERY {
            last_claim = Instant::now();
            match log.claim(&group, &consumer, hook.claim_idle(), hook.batch_size).await {
                Ok(claimed) => batch = claimed,
                Err(e) => tracing::debug!(error = %e, "webhook: no claim"),
            }
        }
        if batch.entries.is_empty() {
            let dropped = batch.dropped;
            batch = match log.read(&group, &consumer, hook.batch_size).await {
                Ok(batch) => batch,
                Err(e) => {
                    // The group may be gone (Redis lost its data): subscribe again.
                    tracing::debug!(error = %e, "webhook: read failed");
                    subscribed = false;
                    tokio::time::sleep(hook.batch_wait.max(Duration::from_millis(100))).await;
                    continue;
                }
            };
            batch.dropped += dropped;
            if !batch.entries.is_empty() && batch.entries.len() < hook.batch_size {
                // A partial batch waits a little for company.
                tokio::time::sleep(hook.batch_wait).await;
                if let Ok(more) = log.read(&group, &consumer, hook.batch_size - batch.entries.len()).await {
                    batch.entries.extend(more.entries);
                    batch.dropped += more.dropped;
                }
            }
        }
        crate::metrics::webhook_dropped(batch.dropped);
        if batch.entries.is_empty() {
            tokio::time::sleep(hook.batch_wait).await;
            continue;
        }
        deliver(&hook, &client, log.as_ref(), &group, &consumer, batch.entries, &errors).await;
    }
}

/// Sends one batch until the receiver takes it (or the log trimmed all of it), then acknowledges it.
async fn deliver(
    hook: &Webhook,
    client: &reqwest::Client,
    log: &dyn EventLog,
    group: &str,
    consumer: &str,
    mut entries: Vec<(String, String)>,
    errors: &Throttled,
) {
    let mut attempt = 0u32;
    loop {
        let body = body(&entries);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let started = Instant::now();
        let answer = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&hook.secret, now, body.as_bytes()))
            .body(body)
            .send()
            .await;
        let failure = match answer {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status())),
            Err(e) => Some(e.to_string()),
        };
        crate::metrics::webhook_request(failure.is_none(), entries.len(), started.elapsed());
        let Some(failure) = failure else { break };
        attempt += 1;
        if let Some(held) = errors.check() {
            tracing::warn!(url = %hook.url, error = %failure, attempt, events = entries.len(), similar_since = held, "webhook delivery failed; retrying");
        }
        tokio::time::sleep(hook.backoff(attempt)).await;
        // Still ours, and still there? The log's cap may have trimmed some while we waited.
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        if let Ok(kept) = log.keep(group, consumer, ids).await {
            let before = entries.len();
            entries.retain(|(id, _)| kept.contains(id));
            crate::metrics::webhook_dropped((before - entries.len()) as u64);
            if entries.is_empty() {
                return;
            }
        }
    }
    let ids = entries.into_iter().map(|(id, _)| id).collect();
    if let Err(e) = log.ack(group, ids).await {
        // Not acknowledged: after claim_idle another replica (or this one) sends them again,
        // which receivers dedupe by id.
        tracing::debug!(error = %e, "webhook batch delivered but not acknowledged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Webhook {
        Webhook {
            url: "http://example.test/hook".into(),
            secret: b"s".to_vec(),
            batch_size: 10,
            batch_wait: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let hook = hook();
        for _ in 0..100 {
            let first = hook.backoff(1);
            assert!(first >= FIRST_RETRY / 2 && first <= FIRST_RETRY, "{first:?}");
            let fourth = hook.backoff(4);
            assert!(fourth >= FIRST_RETRY * 4 && fourth <= FIRST_RETRY * 8, "{fourth:?}");
            let late = hook.backoff(40);
            assert!(late >= hook.retry_max / 2 && late <= hook.retry_max, "{late:?}");
        }
        assert!(hook.claim_idle() > hook.batch_wait + hook.retry_max + hook.timeout);
    }

    #[test]
    fn the_group_is_the_urls_and_hides_it() {
        let a = hook();
        let mut b = hook();
        assert_eq!(a.group(), b.group());
        b.url.push('x');
        assert_ne!(a.group(), b.group());
        assert!(!a.group().contains("example"));
    }

    #[test]
    fn the_body_is_the_events_as_logged() {
        let entries =
            vec![("1".to_owned(), "{\"id\":\"a\"}".to_owned()), ("2".to_owned(), "{\"id\":\"b\"}".to_owned())];
        assert_eq!(body(&entries), r#"{"events":[{"id":"a"},{"id":"b"}]}"#);
    }
}

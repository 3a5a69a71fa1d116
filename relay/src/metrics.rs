//! The relay's metrics, rendered on the admin listener's /metrics.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Rows published (first time).
pub const PUBLISHED: &str = "roomcast_relay_published_total";
/// Rows whose event Redis already had: published before a crash or a lost commit, dropped now.
pub const DUPLICATES: &str = "roomcast_relay_duplicates_total";
/// Rows that can never be published, moved to `roomcast_outbox_failed`.
pub const FAILED: &str = "roomcast_relay_failed_total";
/// Failed attempts, by stage (postgres, redis).
pub const ERRORS: &str = "roomcast_relay_errors_total";
/// Age of the oldest unpublished row.
pub const LAG: &str = "roomcast_relay_lag_seconds";
/// From the inserting transaction's start to the publish, per row.
pub const DELAY: &str = "roomcast_relay_delay_seconds";

const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DELAY.into()), BUCKETS)
        .and_then(|b| b.install_recorder())
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "a global metrics recorder already exists; /metrics will be empty");
            PrometheusBuilder::new().build_recorder().handle()
        });
    describe_counter!(PUBLISHED, "Outbox rows published to Redis.");
    describe_counter!(
        DUPLICATES,
        "Outbox rows whose event Redis already had (published again after a crash; not delivered twice)."
    );
    describe_counter!(FAILED, "Outbox rows that can never be published, moved to roomcast_outbox_failed.");
    describe_counter!(ERRORS, "Failed attempts by stage (postgres, redis); the rows stay in the outbox.");
    describe_gauge!(LAG, "Age of the oldest unpublished outbox row, in seconds (0 when none).");
    describe_histogram!(DELAY, "Seconds from the inserting transaction's start to the publish, per row.");
    counter!(PUBLISHED).absolute(0);
    counter!(DUPLICATES).absolute(0);
    counter!(FAILED).absolute(0);
    for stage in ["postgres", "redis"] {
        counter!(ERRORS, "stage" => stage).absolute(0);
    }
    gauge!(LAG).set(0.0);
    handle
}

pub(crate) fn published(fresh: usize, duplicates: usize) {
    counter!(PUBLISHED).increment(fresh as u64);
    counter!(DUPLICATES).increment(duplicates as u64);
}

pub(crate) fn failed(n: usize) {
    counter!(FAILED).increment(n as u64);
}

pub(crate) fn error(stage: &'static str) {
    counter!(ERRORS, "stage" => stage).increment(1);
}

pub(crate) fn lag(seconds: f64) {
    gauge!(LAG).set(seconds);
}

pub(crate) fn delay(seconds: f64) {
    histogram!(DELAY).record(seconds);
}

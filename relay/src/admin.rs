//! The admin listener: /healthz (the process runs), /readyz (Postgres and Redis answer),
//! /metrics (Prometheus).

use std::sync::Arc;

use axum::{Router, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::relay::Health;

/// The admin routes.
pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let link = |up: bool| if up { "up" } else { "down" };
                    let body = format!(
                        "postgres {}\nredis {}\n",
                        link(health.postgres.load(std::sync::atomic::Ordering::Relaxed)),
                        link(health.redis.load(std::sync::atomic::Ordering::Relaxed)),
                    );
                    let status = if health.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, body)
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(metrics.render())))
}

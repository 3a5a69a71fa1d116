//! `roomcast-relay`: parse the configuration, serve the admin listener, relay until SIGTERM.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use roomcast_relay::{Config, admin, metrics, relay};
use tokio::sync::watch;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        eprintln!("roomcast-relay: {e}");
        return ExitCode::from(2);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let handle = metrics::install();
    let health = Arc::new(relay::Health::default());
    let listener = match tokio::net::TcpListener::bind(config.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("roomcast-relay: cannot listen on ROOMCAST_RELAY_ADMIN_LISTEN {}: {e}", config.admin_listen);
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(admin = %addr, "roomcast-relay listening"),
        Err(e) => tracing::warn!(error = %e, "admin listener has no local address"),
    }
    let app = admin::router(health.clone(), handle);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    let (stop_tx, stop) = watch::channel(false);
    let shutdown_timeout = config.shutdown_timeout;
    let mut relay = tokio::spawn(relay::run(config, health, stop));
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = &mut relay => {
            tracing::error!("the relay loop ended on its own");
            return ExitCode::FAILURE;
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(shutdown_timeout, relay).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => {
            // The batch in flight is rolled back by Postgres when the connection drops; the
            // next relay publishes it again, deduplicated.
            tracing::warn!("the batch in flight did not finish within ROOMCAST_SHUTDOWN_TIMEOUT; exiting");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    if config.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

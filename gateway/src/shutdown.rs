//! Graceful shutdown: unready at once, keep serving through the drain delay so load balancers
//! stop routing here, then move every client to another replica, then exit within the timeout.

use std::time::Duration;

use socketioxide::SocketIo;
use tokio::time::Instant;

use crate::{errors::DisconnectReason, state::Shared};

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
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
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Runs the drain sequence; returns when every client was told to move or `deadline` passed.
pub async fn drain(gw: &Shared, io: &SocketIo, deadline: Instant) {
    gw.draining.store(true, std::sync::atomic::Ordering::Release);
    let delay = gw.config.drain_delay;
    tracing::info!(drain_delay = ?delay, "draining: unready, refusing new connections");
    tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;

    let sockets = io.sockets();
    tracing::info!(sockets = sockets.len(), "asking connected clients to reconnect elsewhere");
    for socket in &sockets {
        crate::conn::notify_closing(socket, DisconnectReason::ServerShutdown);
    }
    // Closing the transport (not a Socket.IO disconnect) is what makes socket.io-client
    // reconnect on its own; its randomized backoff spreads the reconnections.
    let remaining = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(remaining, io.close()).await.is_err() {
        tracing::warn!("shutdown timeout reached before every transport closed");
    }
}

/// Time left until `deadline`, at least a few milliseconds so a last flush can happen.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))
}

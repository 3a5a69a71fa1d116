//! The state every handler shares: configuration, verifier, membership, timers, lifecycle.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use socketioxide::socket::Sid;

use crate::{
    api_keys::ApiKeys,
    auth::Verifier,
    bus::Bus,
    config::Config,
    conn::Phase,
    delivery::Delivery,
    history::History,
    limits::{Policy, SharedBucket},
    presence::Presence,
    rooms::Membership,
    timers::DeadlineQueue,
    typing::Throttle,
};

/// Cheap-to-clone handle over the gateway's shared state (socketioxide `State`).
pub type Shared = Arc<GatewayState>;

/// What the handlers of every socket share.
#[derive(Debug)]
pub struct GatewayState {
    /// The validated configuration.
    pub config: Config,
    /// Token verification.
    pub verifier: Verifier,
    /// Local room members and the bus subscriptions that follow.
    pub membership: Arc<Membership>,
    /// Cross-replica delivery.
    pub bus: Arc<dyn Bus>,
    /// Emits envelopes to local sockets; knows this replica's id.
    pub delivery: Arc<Delivery>,
    /// Keys accepted by the backend API.
    pub api_keys: ApiKeys,
    /// Revoked tokens, checked at connect and refresh.
    pub revocations: Arc<crate::revocations::Revocations>,
    /// Rooms' history, for `GET /v1/history` (the sequencer reads it too); `None` when off.
    pub history: Option<Arc<dyn History>>,
    /// Who is in which project and channel room.
    pub presence: Arc<Presence>,
    /// Lifecycle events (`None`: no sink is configured).
    pub lifecycle: Option<Arc<crate::events::Lifecycle>>,
    /// Rate limit on typing indicators sent from this replica.
    pub throttle: Throttle,
    /// Token-expiry deadlines of every socket.
    pub expiry: DeadlineQueue<(Sid, Phase)>,
    /// Set once shutdown began: `/readyz` fails and new connections are refused.
    pub draining: AtomicBool,
    /// Per-socket rate limits on client events.
    pub limits: Policy,
    /// New connections this replica accepts (`ROOMCAST_CONNECT_RATE`).
    pub connects: Option<SharedBucket>,
    /// Client events forwarded to the backend (`None`: RPC is off).
    pub rpc: Option<Arc<crate::rpc::Rpc>>,
    /// The backend asked at connect and refresh (`None`: off).
    pub connect_proxy: Option<Arc<crate::connect_proxy::ConnectProxy>>,
    /// The console's tokens and observer connections (`None`: no console).
    pub observers: Option<Arc<crate::observers::Observers>>,
}

impl std::fmt::Debug for dyn Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl GatewayState {
    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether this replica should receive new sockets, and why not.
    ///
    /// Redis is a dependency every replica shares: were readiness to follow it, one Redis blip
    /// would make every replica unready at once (the Service empties, new connections are
    /// refused, PDBs block drains, rollouts stall). So by default a replica is ready until it
    /// drains, and runs degraded while Redis is away (connects, local delivery and typing work;
    /// publishes answer 503/504); [`GatewayState::redis_status`], the metrics and the alerts
    /// report Redis. `ROOMCAST_READY_REQUIRES_REDIS` restores readiness on Redis.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            Err("draining")
        } else if let Some(reason) = self.bus.unavailable().filter(|_| self.config.ready_requires_redis) {
            Err(reason)
        } else {
            Ok(())
        }
    }

    /// With Redis: `ok`, or why the bus cannot deliver across replicas right now
    /// (`redis_disconnected`, `redis_resubscribing`). Single node: `None`.
    pub fn redis_status(&self) -> Option<&'static str> {
        self.config.uses_redis().then(|| self.bus.unavailable().unwrap_or("ok"))
    }
}

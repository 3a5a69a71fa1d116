//! The Redis connection the Redis-backed adapters share: the bus creates it (it owns the
//! clients' lifecycle); history and presence issue their commands on it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use fred::clients::Client;
use roomcast_publisher::wire::Keys;

/// Whether a client's connection is up, as its last connection event said.
#[derive(Debug, Default)]
pub struct Link {
    up: AtomicBool,
}

impl Link {
    /// Whether the connection is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records what the client's last connection event said.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }
}

/// The bus's command connection, shared with the other Redis-backed stores.
#[derive(Debug, Clone)]
pub struct Commands {
    /// The fred client (not in subscribe mode).
    pub client: Client,
    /// Its connection state.
    pub link: Arc<Link>,
    /// Whether Redis is a cluster (sharded pub/sub).
    pub clustered: bool,
    /// Channel and key names.
    pub keys: Keys,
}

impl Commands {
    /// The command publishing to a room's channel: `PUBLISH`, or `SPUBLISH` on a cluster.
    pub fn publish_command(&self) -> &'static str {
        if self.clustered { "SPUBLISH" } else { "PUBLISH" }
    }
}

//! What the traits at the storage edge share (the bus, history and presence stores): a leaf
//! module, so the domain modules that use those traits and the adapters that implement them
//! depend on it and not on each other.

use std::{future::Future, pin::Pin};

/// A boxed, sendable future; the storage traits are used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The backend cannot be reached right now; the operation did not happen and may succeed
    /// later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The operation was sent but its answer never came (a timeout, a connection lost while
    /// waiting): it may or may not have happened.
    #[error("outcome unknown: {0}")]
    Uncertain(String),
}

impl BusError {
    /// The code a client is answered with.
    pub fn code(&self) -> crate::errors::ErrorCode {
        match self {
            BusError::Unavailable(_) => crate::errors::ErrorCode::Unavailable,
            BusError::Uncertain(_) => crate::errors::ErrorCode::Timeout,
        }
    }
}

/// What one replica did with a control envelope: reported to its sender through the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAck {
    /// The room the envelope was sent to.
    pub room: String,
    /// The envelope's id.
    pub id: String,
    /// Local sockets it reached.
    pub sockets: u64,
    /// The replica that acted (each answers under its own id: an answer counts once).
    pub node: String,
}

/// What a control envelope achieved across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlReceipt {
    /// Sockets reached, all replicas together.
    pub sockets: u64,
    /// Replicas that acted on it (and answered in time).
    pub replicas: u64,
    /// Replicas it was delivered to (those with a member of the room).
    pub of: u64,
}

/// What publishing one envelope achieved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// Replicas subscribed to the room (this one included).
    pub replicas: u64,
    /// The event's offset in its room's history, if published with history.
    pub offset: Option<u64>,
    /// The room history's epoch, if published with history.
    pub epoch: Option<String>,
    /// Already published within the dedupe window: nothing was published now.
    pub duplicate: bool,
}

//! The boundary between the socket layer and cross-replica delivery.
//!
//! The socket layer never talks to Redis: it tells a [`Bus`] which rooms have local members.
//! [`memory::MemoryBus`] is the single-node default and the fast test double; it keeps the
//! same subscription semantics a networked bus has, so a membership bug shows up in
//! single-node tests too.

pub mod memory;

use std::{future::Future, pin::Pin};

/// A boxed, sendable future; `Bus` is used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus cannot reach its backend right now; the operation may succeed later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Cross-replica delivery, as seen by the socket layer.
///
/// Calls for one room must be made in order (the membership registry does): a `subscribe`
/// issued after an `unsubscribe` for the same room wins. The returned futures resolve once the
/// backend confirmed the change; the intent is recorded when the call is made, so a bus that is
/// down re-applies it when it comes back.
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering `room`'s events to this replica (its first local member arrived).
    fn subscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>>;

    /// Stops delivering `room`'s events to this replica (its last local member left).
    fn unsubscribe(&self, room: &str) -> BoxFuture<'static, Result<(), BusError>>;

    /// Whether the bus can deliver right now; feeds `/readyz`.
    fn is_ready(&self) -> bool;
}

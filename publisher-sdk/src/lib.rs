//! Publish events and typing indicators to Roomcast rooms from backend services.
//!
//! Every Roomcast gateway replica subscribes, in Redis, to the rooms that have members
//! connected to it; a [`Publisher`] publishes to a room's channel and every subscribed
//! replica emits the event to its members. Members receive the event name you publish with
//! your payload as first argument and `{ room, id, ts }` as second.
//!
//! ```no_run
//! use roomcast_publisher::Publisher;
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), roomcast_publisher::PublishError> {
//! let publisher = Publisher::connect("redis://127.0.0.1:6379").await?;
//!
//! // One event to every member of project p1 in tenant acme.
//! let receipt = publisher.project("acme", "p1").emit("task.updated", &json!({ "id": 42, "done": true })).await?;
//! println!("event {:?} reached {} replica(s)", receipt.id, receipt.replicas);
//!
//! // A bot is typing in channel support.
//! publisher.typing("acme", "support", "assistant-bot", true).await?;
//!
//! // Many events in one round trip.
//! let mut batch = publisher.batch();
//! batch.emit(&publisher.user("acme", "ada"), "notification", &json!({ "text": "hi" }))?;
//! batch.emit(&publisher.tenant("acme"), "maintenance", &json!({ "at": "22:00" }))?;
//! let receipts = batch.send().await?;
//! assert_eq!(receipts.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/publish.rs` is the same as a command-line tool:
//! `cargo run -p roomcast-publisher --example publish -- redis://127.0.0.1:6379 project acme p1 task.updated '{"id":42}'`.
//!
//! Services not written in Rust publish with plain Redis commands: `PROTOCOL.md` in this crate
//! documents the wire format.
//!
//! # fred and versions
//!
//! Publishing needs no fred type: [`Publisher::connect`] takes a URL, errors are this crate's
//! ([`PublishError`], [`RedisError`]). For applications that already run a fred client,
//! [`Publisher::from_client`], [`Publisher::from_config`], [`Publisher::client`] and
//! [`send_encoded`] take and give fred types; this crate re-exports the fred it is built with as
//! [`fred`](crate::fred), so use `roomcast_publisher::fred` rather than a fred of your own.
//! Version policy: a fred major version change is released as a new minor version while this
//! crate is 0.x (a new major from 1.0), never in a patch release.
//!
//! # Layout
//! - [`room`]: the four room kinds, their canonical names and id validation.
//! - [`wire`]: the envelope, channel names and event-name rules: Roomcast's wire format.
//! - [`events`]: lifecycle events as backends receive them, and the webhook signature.
//! - [`publisher`]: [`Publisher`], [`Target`], [`Batch`] and their [`Receipt`]s and [`PublishError`]s.
#![warn(missing_docs)]

pub mod events;
pub mod publisher;
pub mod room;
pub mod wire;

/// The fred this crate is built with, for the fred interop methods (see above).
pub use fred;
pub use publisher::{
    Batch, ControlReceipt, DEFAULT_DEDUPE_WINDOW, Disconnect, PublishError, Publisher, Receipt, RedisError, Revoke,
    Sent, Target, send_encoded,
};
pub use room::{IdError, Room, RoomKind, validate_id};

/// The README's example compiles (doctests only).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

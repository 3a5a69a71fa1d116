//! Roomcast's shared vocabulary: room names and the identifier rules every component agrees on.
//!
//! # Layout
//! - [`room`]: the four room kinds (`tenant`, `user`, `project`, `channel`), their canonical
//!   names and the validation of the identifiers they are built from.
#![warn(missing_docs)]

pub mod room;

pub use room::{IdError, Room, RoomKind, validate_id};

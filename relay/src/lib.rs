//! `roomcast-relay`: publishes the rows of a Postgres outbox table to Roomcast rooms.
//!
//! Applications call `roomcast_publish(...)` (or insert into `roomcast_outbox`) inside their
//! own transaction; the relay publishes each committed row once, through
//! `roomcast-publisher`, in order per room. See `relay` for how, and the README's
//! "Transactional publishing" section for the contract.
//!
//! # Layout
//! - [`config`]: the options.
//! - [`outbox`]: the migration, the SQL the relay runs and what a row becomes.
//! - [`relay`]: the loop (claim, publish, mark, commit) and the LISTEN connection.
//! - [`admin`] and [`metrics`]: readiness and Prometheus metrics.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod outbox;
pub mod relay;

pub use config::Config;

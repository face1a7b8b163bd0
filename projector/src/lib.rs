//! herald-projector: folds the event stream `HERALD_EVENTS` into one KV
//! bucket per registry, and the ops tools that inspect and rebuild them.
//!
//! Layout:
//!
//! - [`run`]: the durable pull consumer (`herald-projector run`), with
//!   [`dead_letter`] for messages that cannot be applied and [`metrics`].
//! - [`fold`]: which key an event belongs to and what the key holds after
//!   it, for `run` and `replay` alike; the rules themselves are
//!   `herald_core::projection` and `herald_core::cluster_state`.
//! - [`apply`]: the live buckets `run` writes (compare-and-set per key, a
//!   cache of what it wrote, control events and sweeps; catalog events,
//!   published by `herald-catalog`, land beside the deployments); [`rebuild`]: the
//!   same state folded in memory, what `replay` compares with them.
//! - [`writes`]: opening or creating buckets and the compare-and-set write.
//! - Ops subcommands: [`events`] (with [`filter`] and [`start`]), [`replay`]
//!   (with [`diff`]) and [`status`]; [`table`] aligns their output.

pub mod apply;
pub mod dead_letter;
pub mod diff;
pub mod events;
pub mod filter;
pub mod fold;
pub mod metrics;
pub mod rebuild;
pub mod replay;
pub mod run;
pub mod start;
pub mod status;
pub mod table;
pub mod writes;

/// The shutdown token `run` and `events` take, re-exported so that callers
/// such as tests need no direct dependency on tokio-util.
pub use tokio_util::sync::CancellationToken;

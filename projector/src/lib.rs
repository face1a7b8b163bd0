//! herald-projector: folds the event stream `HERALD_EVENTS` into one KV
//! bucket per registry, and the ops tools that inspect and rebuild them.
//!
//! Layout:
//!
//! - [`run`]: the durable pull consumer (`herald-projector run`), with
//!   [`dead_letter`] for messages that cannot be applied and [`metrics`].
//! - [`liveness`]: each cluster's last heartbeat as a metric, from the
//!   clusters bucket.
//! - [`gate`]: what an event must pass before it is folded (signature,
//!   known source, sane times, the shared validation, name ownership).
//! - [`fold`]: which key an event belongs to and what the key holds after
//!   it, for `run` and `replay` alike; the rules themselves are
//!   `herald_core::projection` and `herald_core::cluster_state`.
//! - [`apply`]: the live buckets `run` writes (compare-and-set per key, a
//!   cache of what it wrote, control events and sweeps; catalog events,
//!   published by `herald-catalog`, land beside the deployments).
//! - [`writes`]: opening or creating buckets and the compare-and-set write.
//! - [`ops`]: the ops commands `events`, `replay` (which folds the history
//!   in memory with the same [`fold`]) and `status`.

pub mod apply;
pub mod dead_letter;
pub mod fold;
pub mod gate;
pub mod liveness;
pub mod metrics;
pub mod ops;
pub mod run;
pub mod writes;

/// The shutdown token `run` and `events` take, re-exported so that callers
/// such as tests need no direct dependency on tokio-util.
pub use tokio_util::sync::CancellationToken;

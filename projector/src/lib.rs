//! herald-projector: folds the event stream `HERALD_EVENTS` into one KV
//! bucket per registry, and the ops tools that inspect and rebuild them.
//!
//! Layout:
//!
//! - [`run`]: the durable pull consumer (`herald-projector run`), with
//!   [`dead_letter`] for messages that cannot be applied and [`metrics`].
//! - [`gate`]: what an event must pass before it is folded (signature,
//!   known source, sane times, the shared validation, name ownership).
//! - [`fold`]: which key an event belongs to and what the key holds after
//!   it, for `run` and `replay` alike; the rules themselves are
//!   `herald_core::projection` and `herald_core::cluster_state`.
//! - [`apply`]: the live buckets `run` writes (compare-and-set per key, a
//!   cache of what it wrote, control events and sweeps).
//! - [`writes`]: opening or creating buckets and the compare-and-set write.
//! - [`catalog_sync`]: `catalog sync`, which imports a catalog source (file or
//!   registry API over [`source_http`], official or ToolHive format) as
//!   catalog events that `apply` folds into the registry buckets beside the
//!   deployments.
//! - [`ops`]: the ops commands `events`, `replay` (which folds the history
//!   in memory with the same [`fold`]) and `status`.

pub mod apply;
pub mod catalog_sync;
pub mod dead_letter;
pub mod fold;
pub mod gate;
pub mod metrics;
pub mod ops;
pub mod run;
pub mod source_http;
pub mod writes;

/// The shutdown token `run` and `events` take, re-exported so that callers
/// such as tests need no direct dependency on tokio-util.
pub use tokio_util::sync::CancellationToken;

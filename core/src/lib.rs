//! Herald's pure core: everything the watcher, projector and API must agree
//! on, with no I/O and no async runtime.
//!
//! Layout, in the order data flows:
//!
//! - [`ids`], [`object`]: validated identifiers (`ClusterId`, `RegistryName`,
//!   `ServerName`) and the identity of a watched ToolHive object.
//! - [`annotations`], [`policy`], [`mapping`], [`rejection`]: from a ToolHive
//!   object (as JSON) and the watcher's policy to a decision: advertise a
//!   [`record::DeploymentRecord`], skip, or reject with a reason.
//! - [`event`], [`names`]: the wire contract: CloudEvents on JetStream,
//!   subjects, buckets and keys.
//! - [`projection`], [`cluster_state`]: folding events into stored state,
//!   idempotently and order-safely.
//! - [`catalog`]: catalog sources (official list, ToolHive `registry.json`)
//!   as `server.json` entries, and the catalog record their events carry.
//! - [`merge`]: stored deployments and catalog entries → `server.json`
//!   entries for the API.

pub mod annotations;
pub mod catalog;
pub mod cluster_state;
pub mod event;
pub mod ids;
pub mod mapping;
pub mod merge;
pub mod names;
pub mod object;
pub mod policy;
pub mod projection;
pub mod record;
pub mod rejection;

pub use event::{Event, EventData, EventType, WithdrawReason};
pub use ids::{ClusterId, RegistryName, ServerName};
pub use mapping::{Decision, Observation};
pub use object::{Kind, ObjectRef};
pub use policy::WatcherPolicy;
pub use record::DeploymentRecord;
pub use rejection::Rejection;

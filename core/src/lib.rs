//! Herald's pure core: everything the watcher, projector, importer and API
//! must agree on, with no I/O and no async runtime.
//!
//! Layout, from the bottom up (a module uses only modules above it here):
//!
//! - [`ids`], [`object`], [`annotations`]: validated identifiers
//!   (`ClusterId`, `RegistryName`, `ServerName`, `SourceId`), the identity
//!   of a watched ToolHive object, and the annotation keys.
//! - [`claims`]: required claims (ToolHive's `authz-claims`) and whether a
//!   caller's token satisfies them.
//! - [`record`], [`catalog_record`]: the plain records events carry — a
//!   deployment (and its withdrawal), a catalog entry.
//! - [`names`]: subjects, streams, buckets and bucket keys.
//! - [`rejection`], [`validate`]: why a value is refused, and the checks
//!   shared by every place a value enters; [`entry`]: the rules particular
//!   to an `MCPServerEntry` (its remote URL, its forwarded headers);
//!   [`image`]: container image references; [`version`]: which version a
//!   deployment advertises and how versions order; [`package`]: a
//!   deployment's image as a `server.json` package.
//! - [`event`]: the wire contract, CloudEvents on JetStream.
//! - [`tombstone`]: what a tombstone keeps of the entry it ends;
//!   [`stored`]: what a registry bucket holds under each key.
//! - [`ownership`]: which namespaces may publish which server names.
//! - [`policy`], [`mapping`]: from a ToolHive object (as JSON) and the
//!   watcher's policy to a decision: advertise a record, skip, or reject.
//! - [`admission`]: whether an event read from the stream may be applied.
//! - [`projection`], [`cluster_state`]: folding events into stored values,
//!   idempotently and order-safely.
//! - [`merge`]: stored deployments and catalog entries → `server.json`
//!   entries for the API.
//! - [`deleted`]: tombstones → `deleted` entries for incremental syncs.
//! - [`import`]: catalog documents (official list, ToolHive
//!   `registry.json`) → catalog entries.

pub mod admission;
pub mod annotations;
pub mod catalog_record;
pub mod claims;
pub mod cluster_state;
pub mod deleted;
pub mod entry;
pub mod event;
pub mod ids;
pub mod image;
pub mod import;
pub mod mapping;
pub mod merge;
pub mod names;
pub mod object;
pub mod ownership;
pub mod package;
pub mod policy;
pub mod projection;
pub mod record;
pub mod rejection;
pub mod stored;
pub mod tombstone;
pub mod validate;
pub mod version;

pub use event::{Event, EventData, EventType};
pub use ids::{ClusterId, RegistryName, ServerName};
pub use mapping::{Decision, Observation};
pub use object::{Kind, ObjectRef};
pub use policy::WatcherPolicy;
pub use record::{DeploymentRecord, WithdrawReason};
pub use rejection::Rejection;

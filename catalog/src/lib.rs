//! herald-catalog: imports a catalog — server.json entries kept outside
//! Kubernetes: the official MCP registry, another Herald, a ToolHive
//! `registry.json` — into a registry as `catalog.applied` /
//! `catalog.withdrawn` events on `HERALD_EVENTS`. A producer, like the
//! watcher: `herald-projector` folds the events into the registry bucket
//! beside the deployments, `herald-api` merges both, and `events`/`replay`
//! cover catalog entries like deployments.
//!
//! Layout, in the order a sync runs:
//!
//! - [`source`]: where the catalog is (file or URL), its format, and
//!   fetching its listing (pages, `updated_since`), over the runtime's HTTP
//!   client, with [`auth`] (a bearer token file, or OAuth client credentials
//!   from [`oauth`]) for protected sources.
//! - [`screen`]: which entries are imported and which skipped, and why;
//!   [`schema`]: the server.json schema document compiled in.
//! - [`sync`]: one sync (compare with the bucket, publish what changed,
//!   withdraw what vanished) and the loop around it.
//! - [`metrics`]: the counters on `/metrics`.

pub mod auth;
pub mod metrics;
pub mod oauth;
pub mod schema;
pub mod screen;
pub mod source;
pub mod sync;

//! herald-api: the merged remotes of every registry, served read-only over
//! the official MCP Registry API, a live SSE feed and a registry page.
//!
//! Layout, in the order data flows:
//!
//! - [`bucket_watch`]: finds the `herald-<registry>` buckets (also later ones)
//!   and watches each from the start.
//! - [`view`]: one registry's deployments, merged entries (by `core`), and
//!   the changes to them (a resumable ring and a bounded live broadcast).
//! - [`registries`]: every registry's view, and readiness.
//! - [`query`], [`etag`], [`problem`]: list parameters and cursors, ETags,
//!   problem documents.
//! - [`routes`], [`sse`], [`page`]: the HTTP surface; [`app`] is its
//!   shared state; [`metrics`] what it measures.
//! - [`connection`]: one connection and its timeouts and sizes;
//!   [`limits`]: slots with a global cap and a share per client (connections,
//!   SSE subscribers); [`client`]: who a client is for those shares.
//! - [`auth`]: the authentication mode and the bearer-token check of the
//!   data routes (tokens verified by [`oidc`]); [`access`]: which entries a
//!   caller sees (per-entry claims), on every route and the feed;
//!   [`policy`]: which registries a caller may read; [`auth_config`]: the
//!   `--auth-config` file (providers and registry policies).
//! - [`server`]: wires it all together for `main`, and admits connections.

pub mod access;
pub mod app;
pub mod auth;
pub mod auth_config;
pub mod bucket_watch;
pub mod client;
pub mod connection;
pub mod etag;
pub mod limits;
pub mod metrics;
pub mod oidc;
pub mod page;
pub mod parts;
pub mod policy;
pub mod problem;
pub mod query;
pub mod registries;
pub mod routes;
pub mod server;
pub mod sse;
pub mod view;

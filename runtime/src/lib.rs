//! The edges every Herald binary shares, so that each `main.rs` only parses
//! its flags and wires parts together.
//!
//! - [`nats`]: NATS connection and auth/TLS flags (`--nats-url`, …).
//! - [`logging`]: `--log-format text|json` and the tracing subscriber.
//! - [`clock`]: NATS times as chrono times.
//! - [`duration`]: duration flags, read with humantime; [`byte_size`]: size
//!   flags (`16MiB`).
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on one listener;
//!   every `/metrics` also carries [`build_info`] and [`process_metrics`].
//! - [`retry`]: backoff with jitter and a cap, for every retry loop.
//! - [`signing`]: signing events with nkeys, and verifying them.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.
//! - [`buckets`]: listing, opening and scanning Herald's KV buckets.
//! - [`stream`]: the `HERALD_EVENTS` stream: ensure it exists, compatibly;
//!   [`capacity`]: telling a full stream or bucket from other refusals.
//! - [`publish`]: publishing one event with its id and waiting for the ack,
//!   for every producer (watcher, catalog importer).
//! - [`tls`]: rustls' crypto provider (ring), installed once per process;
//!   [`http`]: the one HTTP client (proxies, trust, redirects, body cap).
//!   Both come with the feature `http` (on by default; the workspace takes
//!   this crate without it, and a binary that calls HTTPS servers asks for it).
//! - [`secret`]: secret values that never print.

pub mod buckets;
pub mod build_info;
pub mod byte_size;
pub mod capacity;
pub mod clock;
pub mod duration;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod logging;
pub mod nats;
pub mod process_metrics;
pub mod publish;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod signing;
pub mod stream;
#[cfg(feature = "http")]
pub mod tls;

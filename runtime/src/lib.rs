//! The edges every Herald binary shares, so that each `main.rs` only parses
//! its flags and wires parts together.
//!
//! - [`nats`]: NATS connection and auth/TLS flags (`--nats-url`, …).
//! - [`logging`]: `--log-format text|json` and the tracing subscriber.
//! - [`duration`]: duration flags, read with humantime.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on one listener.
//! - [`retry`]: backoff with jitter and a cap, for every retry loop.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.
//! - [`buckets`]: listing, opening and scanning Herald's KV buckets.
//! - [`stream`]: the `HERALD_EVENTS` stream: ensure it exists, compatibly.
//! - [`publish`]: publishing one event with its id and waiting for the ack,
//!   for every producer (watcher, catalog importer).

pub mod buckets;
pub mod duration;
pub mod health;
pub mod logging;
pub mod nats;
pub mod publish;
pub mod retry;
pub mod shutdown;
pub mod stream;

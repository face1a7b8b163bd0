//! The edges every Herald binary shares, so that each `main.rs` only parses
//! its flags and wires parts together.
//!
//! - [`nats`]: NATS connection and auth/TLS flags (`--nats-url`, …).
//! - [`logging`]: `--log-format text|json` and the tracing subscriber.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on one listener.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token.
//! - [`stream`]: the `HERALD_EVENTS` stream: ensure it exists, compatibly.

pub mod health;
pub mod logging;
pub mod nats;
pub mod shutdown;
pub mod stream;

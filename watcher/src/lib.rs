//! herald-watcher: opted-in ToolHive servers in one Kubernetes cluster become
//! lifecycle events on JetStream.
//!
//! Layout, in the order data flows:
//!
//! - [`served`]: which version of each ToolHive kind the cluster serves;
//! - [`crd_watch`]: wakes a kind's watch when its CRD appears or goes;
//! - [`kind_watch`]: one kube-runtime watch per kind (and namespace);
//! - [`tracker`]: per-object state of a kind → the events to publish;
//! - [`epoch`]: strictly increasing list epochs for resync brackets;
//! - [`rejections`]: log, counter and Kubernetes Event for rejected objects;
//! - [`heartbeat`]: `cluster.heartbeat` on an interval;
//! - [`outbox`]: the ordered, per-object coalescing queue of pending events;
//! - [`publisher`]: publishes the outbox with acks, dedup ids and backoff;
//! - [`metrics`]: what `/metrics` shows;
//! - [`app`]: wires them together and shuts down in order.

pub mod app;
pub mod crd_watch;
pub mod epoch;
pub mod event_limit;
pub mod heartbeat;
pub mod kind_watch;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod rejections;
pub mod served;
pub mod tracker;

pub use app::{Settings, run};

//! The projector's Prometheus metrics, served on `/metrics`.

use std::sync::atomic::AtomicU64;

use herald_core::EventType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Re-exported so callers can hold the registry without depending on
/// prometheus-client themselves.
pub use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];
type ClusterLabel = [(&'static str, String); 1];
type Timestamp = Gauge<f64, AtomicU64>;

/// One cluster's liveness, as [`crate::liveness`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterReading {
    pub cluster: String,
    /// Unix seconds of the newest event the stream stored for it.
    pub last_seen: f64,
    /// Unix seconds of the newest heartbeat (none before the first).
    pub last_heartbeat: Option<f64>,
    pub heartbeat_interval: Option<u64>,
}

/// An event's write was refused because its bucket is full.
pub const HELD_BUCKET_FULL: &str = "bucket_full";
/// An event's dead letter was refused because `HERALD_DLQ` is full.
pub const HELD_DEAD_LETTERS_FULL: &str = "dead_letters_full";

/// Counters and gauges of one running projector.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    applied: Family<Label, Counter>,
    stale: Family<Label, Counter>,
    dead_lettered: Family<Label, Counter>,
    swept: Counter,
    redelivered: Counter,
    held_back: Family<Label, Counter>,
    pending: Gauge<i64>,
    last_sequence: Gauge<u64, AtomicU64>,
    cluster_last_seen: Family<ClusterLabel, Timestamp>,
    cluster_last_heartbeat: Family<ClusterLabel, Timestamp>,
    cluster_heartbeat_interval: Family<ClusterLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`, every label
    /// value present from the start so dashboards see zeros, not gaps.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for ty in EventType::ALL {
            let _ = m.applied.get_or_create(&[("type", ty.short())]);
            let _ = m.stale.get_or_create(&[("type", ty.short())]);
        }
        for code in crate::dead_letter::reason_codes() {
            let _ = m.dead_lettered.get_or_create(&[("reason", code)]);
        }
        for why in [HELD_BUCKET_FULL, HELD_DEAD_LETTERS_FULL] {
            let _ = m.held_back.get_or_create(&[("reason", why)]);
        }
        registry.register(
            "herald_projector_events_applied",
            "Events applied to the buckets, by type",
            m.applied.clone(),
        );
        registry.register(
            "herald_projector_events_stale",
            "Events skipped because the stored state was as new or newer (duplicates, redeliveries, out-of-order), by type",
            m.stale.clone(),
        );
        registry.register(
            "herald_projector_dead_lettered",
            "Messages sent to herald.dlq.<reason>, by reason",
            m.dead_lettered.clone(),
        );
        registry.register(
            "herald_projector_records_swept",
            "Records withdrawn because a completed re-list did not confirm them",
            m.swept.clone(),
        );
        registry.register(
            "herald_projector_redelivered",
            "Messages received again after an earlier delivery was not acknowledged",
            m.redelivered.clone(),
        );
        registry.register(
            "herald_projector_events_held_back",
            "Deliveries of events kept unacknowledged for a later attempt because NATS had no room for them (bucket_full: a registry bucket or the account's storage; dead_letters_full: HERALD_DLQ), by reason",
            m.held_back.clone(),
        );
        registry.register(
            "herald_projector_consumer_pending",
            "Messages in the stream not yet delivered to this consumer (lag)",
            m.pending.clone(),
        );
        registry.register(
            "herald_projector_last_applied_sequence",
            "Stream sequence of the newest event applied",
            m.last_sequence.clone(),
        );
        registry.register(
            "herald_projector_cluster_last_seen_timestamp_seconds",
            "When the stream stored the newest event of the cluster's watcher (unix seconds), from the clusters bucket",
            m.cluster_last_seen.clone(),
        );
        registry.register(
            "herald_projector_cluster_last_heartbeat_timestamp_seconds",
            "When the stream stored the newest heartbeat of the cluster's watcher (unix seconds), from the clusters bucket",
            m.cluster_last_heartbeat.clone(),
        );
        registry.register(
            "herald_projector_cluster_heartbeat_interval_seconds",
            "The heartbeat interval the cluster's watcher announced",
            m.cluster_heartbeat_interval.clone(),
        );
        m
    }

    /// Replaces the per-cluster series with `readings` (a cluster whose
    /// record was removed leaves the metrics too).
    pub fn clusters(&self, readings: &[ClusterReading]) {
        self.cluster_last_seen.clear();
        self.cluster_last_heartbeat.clear();
        self.cluster_heartbeat_interval.clear();
        for r in readings {
            let label = [("cluster", r.cluster.clone())];
            self.cluster_last_seen
                .get_or_create(&label)
                .set(r.last_seen);
            if let Some(t) = r.last_heartbeat {
                self.cluster_last_heartbeat.get_or_create(&label).set(t);
            }
            if let Some(i) = r.heartbeat_interval {
                self.cluster_heartbeat_interval
                    .get_or_create(&label)
                    .set(i64::try_from(i).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn applied(&self, ty: EventType, seq: u64) {
        self.applied.get_or_create(&[("type", ty.short())]).inc();
        // Two projectors (or a redelivery) can finish out of order.
        let last = self.last_sequence.get().max(seq);
        self.last_sequence.set(last);
    }

    pub fn stale(&self, ty: EventType) {
        self.stale.get_or_create(&[("type", ty.short())]).inc();
    }

    pub fn swept(&self, n: usize) {
        self.swept.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    pub fn dead_lettered(&self, code: &'static str) {
        self.dead_lettered.get_or_create(&[("reason", code)]).inc();
    }

    pub fn redelivered(&self) {
        self.redelivered.inc();
    }

    /// An event kept for later because NATS had no room: `why` is
    /// [`HELD_BUCKET_FULL`] or [`HELD_DEAD_LETTERS_FULL`].
    pub fn held_back(&self, why: &'static str) {
        self.held_back.get_or_create(&[("reason", why)]).inc();
    }

    pub fn pending(&self, pending: u64) {
        self.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
}

/// The registry in the Prometheus text format, as `/metrics` serves it.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

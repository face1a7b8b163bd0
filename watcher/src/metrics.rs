//! The watcher's Prometheus metrics, registered once and shared by every task.

use std::sync::atomic::AtomicU64;

use herald_core::EventType;
use herald_core::object::Kind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label; every value is a `&'static str`, so counting allocates nothing.
type Label = [(&'static str, &'static str); 1];

/// Counters and gauges behind `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    published: Family<Label, Counter>,
    publish_failures: Counter,
    rejections: Family<Label, Counter>,
    pending: Gauge,
    last_resync: Family<Label, Gauge<f64, AtomicU64>>,
    last_published: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them (names get `herald_watcher_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("herald_watcher");
        r.register(
            "events_published",
            "Events acknowledged by JetStream, by event type",
            m.published.clone(),
        );
        r.register(
            "publish_failures",
            "Publish attempts that failed and were retried",
            m.publish_failures.clone(),
        );
        r.register(
            "rejections",
            "Opted-in objects that cannot be advertised, by reason code",
            m.rejections.clone(),
        );
        r.register(
            "pending_events",
            "Events waiting to be published (one per object and registry at most)",
            m.pending.clone(),
        );
        r.register(
            "last_resync_timestamp_seconds",
            "Unix time at which the last full list of a kind completed",
            m.last_resync.clone(),
        );
        r.register(
            "last_published_timestamp_seconds",
            "Unix time at which JetStream last acknowledged an event (heartbeats included, so it stays fresh while the watcher can publish)",
            m.last_published.clone(),
        );
        // Every event type shows up at 0 so that rates work from the start.
        for ty in EventType::ALL {
            let _ = m.published.get_or_create(&[("type", ty.short())]);
        }
        m
    }

    pub fn published(&self, ty: EventType) {
        self.published.get_or_create(&[("type", ty.short())]).inc();
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        self.last_published.set(now);
    }

    pub fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    pub fn rejected(&self, code: &'static str) {
        self.rejections.get_or_create(&[("reason", code)]).inc();
    }

    pub fn set_pending(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn resynced(&self, kind: Kind, at: chrono::DateTime<chrono::Utc>) {
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.last_resync
            .get_or_create(&[("kind", kind.as_str())])
            .set(seconds);
    }
}

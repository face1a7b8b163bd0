//! The importer's metrics, served on `/metrics`:
//! `herald_catalog_skipped_total{reason}`,
//! `herald_catalog_published_total{type=applied|withdrawn}` and
//! `herald_catalog_syncs_total{result=ok|failed}` and
//! `herald_catalog_last_success_timestamp_seconds` (the end of the newest
//! successful sync, for a "no sync for too long" alert). Every label value
//! exists from the start (at zero), so dashboards need no special case.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::screen::SkipReason;

type Label = [(&'static str, &'static str); 1];

/// The counters of the importer.
#[derive(Debug, Clone, Default)]
pub struct CatalogMetrics {
    skipped: Family<Label, Counter>,
    published: Family<Label, Counter>,
    syncs: Family<Label, Counter>,
    last_success: Gauge<f64, AtomicU64>,
}

impl CatalogMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for reason in SkipReason::ALL {
            let _ = m.skipped.get_or_create(&[("reason", reason.as_str())]);
        }
        for ty in ["applied", "withdrawn"] {
            let _ = m.published.get_or_create(&[("type", ty)]);
        }
        for result in ["ok", "failed"] {
            let _ = m.syncs.get_or_create(&[("result", result)]);
        }
        registry.register(
            "herald_catalog_skipped",
            "Catalog entries skipped by reason (invalid, schema, duplicate)",
            m.skipped.clone(),
        );
        registry.register(
            "herald_catalog_published",
            "Catalog events published by type (applied, withdrawn)",
            m.published.clone(),
        );
        registry.register(
            "herald_catalog_syncs",
            "Catalog syncs by result (ok, failed)",
            m.syncs.clone(),
        );
        registry.register(
            "herald_catalog_last_success_timestamp_seconds",
            "When the newest successful sync ended (unix seconds; 0 before the first)",
            m.last_success.clone(),
        );
        m
    }

    pub fn skipped(&self, reason: SkipReason) {
        self.skipped
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// One event published; `withdrawn` tells which type.
    pub fn published(&self, withdrawn: bool) {
        let ty = if withdrawn { "withdrawn" } else { "applied" };
        self.published.get_or_create(&[("type", ty)]).inc();
    }

    pub fn synced(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        if ok {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.last_success.set(now);
        }
        self.syncs.get_or_create(&[("result", result)]).inc();
    }
}

//! Prometheus metrics: requests by route and status, request latency, SSE
//! subscribers, view sizes and entry changes per registry.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use herald_core::RegistryName;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::view::RegistryView;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub sse_subscribers: Gauge,
    entries: Family<RegistryLabels, Gauge>,
    deployments: Family<RegistryLabels, Gauge>,
    entry_changes: Family<RegistryLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            sse_subscribers: Gauge::default(),
            entries: Family::default(),
            deployments: Family::default(),
            entry_changes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("herald_api");
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to the response head, by route",
            m.latency.clone(),
        );
        r.register(
            "sse_subscribers",
            "Connected SSE subscribers",
            m.sse_subscribers.clone(),
        );
        r.register(
            "view_entries",
            "Server entries per registry",
            m.entries.clone(),
        );
        r.register(
            "view_deployments",
            "Live deployments per registry",
            m.deployments.clone(),
        );
        r.register(
            "entry_changes",
            "Server entry changes (SSE events) per registry",
            m.entry_changes.clone(),
        );
        m
    }

    pub fn view_size(&self, registry: &RegistryName, view: &RegistryView) {
        let labels = RegistryLabels {
            registry: registry.to_string(),
        };
        self.entries
            .get_or_create(&labels)
            .set(view.entries().len() as i64);
        self.deployments
            .get_or_create(&labels)
            .set(view.deployment_count() as i64);
    }

    /// Drops the series of a registry no longer served.
    pub fn forget(&self, registry: &RegistryName) {
        let labels = RegistryLabels {
            registry: registry.to_string(),
        };
        self.entries.remove(&labels);
        self.deployments.remove(&labels);
    }

    pub fn changes(&self, registry: &RegistryName, count: usize) {
        if count > 0 {
            self.entry_changes
                .get_or_create(&RegistryLabels {
                    registry: registry.to_string(),
                })
                .inc_by(count as u64);
        }
    }
}

/// Middleware recording every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

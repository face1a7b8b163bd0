//! Prometheus metrics: requests by route and status, request latency, open
//! connections and those refused or dropped on a limit, SSE subscribers,
//! view sizes and entry changes per registry.

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

use crate::connection::Dropped;
use crate::limits::Refusal;
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
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

/// Refusal reasons: the flag whose limit was reached.
const CONNECTIONS_FULL: &str = "max_connections";
const CONNECTIONS_CLIENT_FULL: &str = "max_connections_per_client";

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    connections_dropped: Family<ReasonLabels, Counter>,
    pub sse_subscribers: Gauge,
    entries: Family<RegistryLabels, Gauge>,
    deployments: Family<RegistryLabels, Gauge>,
    entry_changes: Family<RegistryLabels, Counter>,
    refused_values: Family<RegistryLabels, Counter>,
    authentications: Family<OutcomeLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl Metrics {
    /// One authentication, by outcome (never a token or claim value).
    pub fn authentication(&self, outcome: &'static str) {
        self.authentications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            connections_dropped: Family::default(),
            sse_subscribers: Gauge::default(),
            entries: Family::default(),
            deployments: Family::default(),
            entry_changes: Family::default(),
            refused_values: Family::default(),
            authentications: Family::default(),
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
            "authentications",
            "Bearer token checks by outcome (ok, missing, or why the token \
             was refused: expired, audience, signature, unknown_issuer, …)",
            m.authentications.clone(),
        );
        r.register(
            "connections_open",
            "Open HTTP connections",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at accept, by the limit reached \
             (max_connections, max_connections_per_client)",
            m.connections_refused.clone(),
        );
        r.register(
            "connections_dropped",
            "Connections the server closed on a limit, by reason \
             (header_read_timeout, header_too_large, idle_timeout)",
            m.connections_dropped.clone(),
        );
        // Every reason from the start, at zero.
        for reason in [CONNECTIONS_FULL, CONNECTIONS_CLIENT_FULL] {
            let _ = m
                .connections_refused
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in [
            Dropped::HeaderReadTimeout,
            Dropped::HeaderTooLarge,
            Dropped::IdleTimeout,
        ] {
            let _ = m.connections_dropped.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        r.register(
            "refused_values",
            "Bucket values not served because they do not decode or break the rules, by registry",
            m.refused_values.clone(),
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

    /// A connection closed at accept.
    pub fn connection_refused(&self, refusal: Refusal) {
        let reason = match refusal {
            Refusal::Full(_) => CONNECTIONS_FULL,
            Refusal::ClientFull(_) => CONNECTIONS_CLIENT_FULL,
        };
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A connection the server closed on a limit.
    pub fn connection_dropped(&self, reason: Dropped) {
        self.connections_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn view_size(&self, registry: &RegistryName, view: &RegistryView) {
        let labels = RegistryLabels {
            registry: registry.to_string(),
        };
        self.entries
            .get_or_create(&labels)
            .set(view.entry_count() as i64);
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

    pub fn refused_value(&self, registry: &RegistryName) {
        self.refused_values
            .get_or_create(&RegistryLabels {
                registry: registry.to_string(),
            })
            .inc();
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

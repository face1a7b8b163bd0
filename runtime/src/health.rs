//! Health and metrics on one listener: `/healthz` (the process serves),
//! `/readyz` (every readiness condition holds; otherwise 503 naming the
//! ones that do not) and `/metrics`: the binary's own series plus
//! `herald_build_info` and the `process_*` series, in the format the scraper
//! asks for (`Accept`): OpenMetrics 1.0 when it prefers
//! `application/openmetrics-text`, otherwise the Prometheus text format
//! 0.0.4 (what a scraper without an `Accept` header, promtool or curl gets).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Named readiness conditions, each either met or failing with a reason.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<&'static str, Option<String>>>>,
}

impl Readiness {
    /// Declares a condition, initially not met.
    pub fn register(&self, name: &'static str, why_not: &str) {
        self.lock().insert(name, Some(why_not.to_owned()));
    }

    pub fn set_ready(&self, name: &'static str) {
        self.lock().insert(name, None);
    }

    pub fn set_not_ready(&self, name: &'static str, why: impl Into<String>) {
        self.lock().insert(name, Some(why.into()));
    }

    /// `None` when ready, else one line per failing condition.
    pub fn report(&self) -> Option<String> {
        let failing: Vec<String> = self
            .lock()
            .iter()
            .filter_map(|(name, why)| why.as_ref().map(|w| format!("{name}: {w}")))
            .collect();
        (!failing.is_empty()).then(|| failing.join("\n"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Option<String>>> {
        self.conditions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone)]
struct HealthState {
    readiness: Readiness,
    registry: Arc<Registry>,
    /// Build info and process series, the same in every binary.
    standard: Arc<Registry>,
}

/// `/healthz` and `/readyz` alone, for a listener that serves other things
/// too (herald-api's public port, for load balancers that can probe only the
/// port they send traffic to).
pub fn probes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(probe_readyz))
        .with_state(readiness)
}

async fn probe_readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    ready_response(&readiness)
}

/// The routes, for binaries that mount them on a listener of their own.
pub fn router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    let mut standard = Registry::default();
    crate::build_info::register(&mut standard);
    standard.register_collector(Box::new(crate::process_metrics::ProcessCollector));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HealthState {
            readiness,
            registry,
            standard: Arc::new(standard),
        })
}

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: the classic Prometheus text format.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: OpenMetrics when its quality
    /// is above that of `text/plain` (and of `*/*`), as Prometheus asks for
    /// it; otherwise the Prometheus text format, also for a missing or
    /// unreadable header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics > text {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// `registries` encoded one after the other, as one exposition.
    pub fn encode(self, registries: &[&Registry]) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        for registry in registries {
            match self {
                Format::PrometheusText => {
                    prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
                }
                Format::OpenMetrics => {
                    prometheus_client::encoding::text::encode_registry(&mut body, registry)?;
                }
            }
        }
        if self == Format::OpenMetrics {
            prometheus_client::encoding::text::encode_eof(&mut body)?;
        }
        Ok(body)
    }
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    ready_response(&state.readiness)
}

fn ready_response(readiness: &Readiness) -> (StatusCode, String) {
    match readiness.report() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{why}\n"),
        ),
    }
}

async fn metrics(State(state): State<HealthState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match format.encode(&[&state.registry, &state.standard]) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::VARY, "Accept"),
            ],
            body,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Binds `listen` and serves the health routes until `shutdown`.
/// Returns the bound address (useful with port 0) and the server task.
pub async fn serve(
    listen: SocketAddr,
    readiness: Readiness,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the health listener on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = router(readiness, registry);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = result {
            tracing::error!(%err, "health server failed");
        }
    });
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_gets_it() {
        // Prometheus 2.5x's default scrape Accept header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
    }

    #[test]
    fn everything_else_gets_the_classic_text_format() {
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
            Some("application/json"),
            Some("application/openmetrics-text;q=0.5, */*"),
        ] {
            assert_eq!(
                Format::negotiate(accept),
                Format::PrometheusText,
                "{accept:?}"
            );
        }
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn both_formats_carry_build_info_and_process_series() {
        let mut own = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        own.register("herald_test_things", "Things", counter.clone());
        counter.inc();
        let mut standard = Registry::default();
        crate::build_info::register(&mut standard);
        standard.register_collector(Box::new(crate::process_metrics::ProcessCollector));

        let text = Format::PrometheusText.encode(&[&own, &standard]).unwrap();
        assert!(
            text.contains("# HELP herald_test_things_total Things"),
            "{text}"
        );
        assert!(text.contains("herald_test_things_total 1\n"), "{text}");
        assert!(text.contains("herald_build_info{version=\""), "{text}");
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");

        let om = Format::OpenMetrics.encode(&[&own, &standard]).unwrap();
        assert!(om.contains("# TYPE herald_test_things counter"), "{om}");
        assert!(om.contains("# TYPE herald_build info"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert_eq!(om.matches("# EOF").count(), 1, "{om}");
    }
}

//! Health and metrics on one listener: `/healthz` (the process serves),
//! `/readyz` (every readiness condition holds; otherwise 503 naming the
//! ones that do not) and `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
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
}

/// The routes, for binaries that mount them on a listener of their own.
pub fn router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HealthState {
            readiness,
            registry,
        })
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    match state.readiness.report() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{why}\n"),
        ),
    }
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
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

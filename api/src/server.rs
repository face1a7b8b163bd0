//! Wiring: connect the registries, discovery, routes and shutdown.

use axum::serve::ListenerExt as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue, Method, header};
use herald_core::RegistryName;
use herald_runtime::health::Readiness;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::{App, SseSettings};
use crate::metrics::Metrics;
use crate::registries::Registries;
use crate::view::Bounds;
use crate::{discovery, routes};

/// Everything `main` decides.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub default_registry: RegistryName,
    pub cors_origins: Vec<HeaderValue>,
    pub sse: SseSettings,
    pub bounds: Bounds,
    pub discovery_interval: Duration,
}

/// Serves until `shutdown`, then closes SSE streams and drains.
pub async fn run(
    settings: Settings,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registries = Registries::new(
        settings.default_registry.clone(),
        settings.bounds,
        readiness.clone(),
    );
    let app = Arc::new(App {
        registries: registries.clone(),
        metrics: Arc::new(metrics.clone()),
        sse: settings.sse,
        subscribers: AtomicUsize::new(0),
        shutdown: shutdown.clone(),
    });
    let discovery = tokio::spawn(discovery::run(
        client,
        registries,
        metrics,
        settings.discovery_interval,
        shutdown.clone(),
    ));
    let mut router = routes::router(app, readiness, Arc::new(registry));
    if !settings.cors_origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(settings.cors_origins.clone()))
                .allow_methods([Method::GET, Method::HEAD])
                .allow_headers([
                    header::IF_NONE_MATCH,
                    HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([header::ETAG]),
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the registry API");
    // No Nagle: an SSE event is a small write that must leave at once (with
    // it on, herald-bench measured p99 44 ms instead of well under 3 ms).
    let listener = listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    // One route table for all connections, not one per connection (memory
    // per SSE subscriber).
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving HTTP")?;
    discovery.await.ok();
    tracing::info!("stopped");
    Ok(())
}

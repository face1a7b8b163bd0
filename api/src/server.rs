//! Wiring: connect the registries, the bucket watch, routes and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::serve::Listener;
use herald_core::RegistryName;
use herald_core::validate::UrlRules;
use herald_runtime::health::Readiness;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::{App, SseSettings};
use crate::auth::Authenticator;
use crate::client::{ClientKey, TrustedProxies};
use crate::connection::{ConnectionSettings, Connections};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::policy::ReadPolicies;
use crate::registries::Registries;
use crate::view::Bounds;
use crate::{bucket_watch, routes};

/// Everything `main` decides.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `/metrics` (with `/healthz` and `/readyz`) apart from the public
    /// port; without it `/metrics` is served on the public port.
    pub health_listen: Option<SocketAddr>,
    pub default_registry: RegistryName,
    /// Registry buckets are `<bucket_prefix><registry>` (`herald-`, or the
    /// scratch prefix of `herald-projector replay --keep`).
    pub bucket_prefix: String,
    pub cors_origins: Vec<HeaderValue>,
    pub sse: SseSettings,
    pub bounds: Bounds,
    pub discovery_interval: Duration,
    /// What the URL rules allow beyond the default, for the values served.
    pub urls: UrlRules,
    /// The NATS connection has no authentication and its server is not on
    /// loopback (`herald_nats_unauthenticated`).
    pub nats_unauthenticated: bool,
    pub connection: ConnectionSettings,
    /// Open connections at most, in total and from one client address.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub trusted_proxies: TrustedProxies,
    /// Who callers are (`--auth-mode`).
    pub auth: Arc<Authenticator>,
    /// Who may read which registry (`--auth-config`).
    pub read_policies: Arc<ReadPolicies>,
}

/// Serves until `shutdown`, then closes SSE streams and drains.
pub async fn run(
    settings: Settings,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    herald_runtime::nats::register_unauthenticated(&mut registry, settings.nats_unauthenticated);
    let registries = Registries::new(
        settings.default_registry.clone(),
        settings.bounds,
        readiness.clone(),
    );
    let app = Arc::new(App {
        registries: registries.clone(),
        metrics: metrics.clone(),
        sse: settings.sse,
        sse_slots: Limiter::new(
            settings.sse.max_subscribers,
            settings.sse.max_subscribers_per_client,
        ),
        trusted_proxies: settings.trusted_proxies.clone(),
        auth: settings.auth.clone(),
        read_policies: settings.read_policies.clone(),
        shutdown: shutdown.clone(),
    });
    if let Authenticator::OAuth(oauth) = &*settings.auth {
        tracing::info!(
            issuers = oauth.providers.len(),
            resource = %oauth.resource,
            "bearer tokens required (--auth-mode oauth)"
        );
        let auth = settings.auth.clone();
        tokio::spawn(async move {
            if let Authenticator::OAuth(oauth) = &*auth {
                for provider in &oauth.providers {
                    provider.prefetch().await;
                }
            }
        });
    } else {
        tracing::warn!(
            "no authentication (--auth-mode anonymous): anyone who reaches this API reads \
             every entry without claims"
        );
    }
    if !settings.read_policies.is_empty() {
        tracing::info!(
            policies = settings.read_policies.len(),
            "registry read policies (--auth-config)"
        );
    }
    let bucket_watch = tokio::spawn(bucket_watch::run(
        client,
        settings.bucket_prefix.clone(),
        registries,
        Metrics::clone(&metrics),
        settings.discovery_interval,
        settings.urls,
        shutdown.clone(),
    ));
    let registry = Arc::new(registry);
    let health_shutdown = CancellationToken::new();
    let (mut router, health) = match settings.health_listen {
        Some(addr) => {
            let (_, task) = herald_runtime::health::serve(
                addr,
                readiness.clone(),
                registry,
                health_shutdown.clone(),
            )
            .await?;
            (routes::router(app, readiness, None), Some(task))
        }
        None => (routes::router(app, readiness, Some(registry)), None),
    };
    if !settings.cors_origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(settings.cors_origins.clone()))
                .allow_methods([Method::GET, Method::HEAD])
                .allow_headers([
                    header::IF_NONE_MATCH,
                    header::AUTHORIZATION,
                    HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([header::ETAG, header::WWW_AUTHENTICATE]),
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the registry API");
    let admission = Admission {
        slots: Limiter::new(
            settings.max_connections,
            settings.max_connections_per_client,
        ),
        trusted_proxies: settings.trusted_proxies,
        metrics: metrics.clone(),
    };
    // One route table for all connections, finalised once.
    let connections = Connections::new(settings.connection, router.with_state(()), metrics);
    serve(listener, admission, connections, shutdown).await;
    bucket_watch.await.ok();
    // Metrics stay scrapable until the public port has drained.
    health_shutdown.cancel();
    if let Some(health) = health {
        health.await.ok();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Who may open a connection: a client address within its share of the
/// open connections, and only while the server has connections left.
#[derive(Debug)]
struct Admission {
    slots: Limiter<ClientKey>,
    /// Many clients share a proxy's address: it gets no share of its own,
    /// only the global cap applies to it.
    trusted_proxies: TrustedProxies,
    metrics: Arc<Metrics>,
}

/// Serves HTTP/1.1 connections until `shutdown`, then lets every connection
/// finish its request in flight (SSE streams end on `shutdown` themselves)
/// and returns once all are closed.
///
/// hyper's HTTP/1 server is used directly rather than `axum::serve`: that
/// one first reads 24 bytes to tell HTTP/2 from HTTP/1 (herald-api serves
/// HTTP/1 only), and hyper, handed those 24 bytes first, grows the
/// connection's 8 KiB read buffer to 16 KiB, which it keeps for the life of
/// the connection — a third of the memory of each SSE subscriber.
///
/// A connection over a cap is closed as soon as it is accepted, before a
/// byte is read or anything is allocated for it: answering it (a 503) would
/// cost a write per refused connection, and the answer would often be lost
/// anyway, reset by the request bytes the server closes without reading.
async fn serve(
    mut listener: tokio::net::TcpListener,
    admission: Admission,
    connections: Connections,
    shutdown: CancellationToken,
) {
    loop {
        // `Listener::accept` retries by itself after accept errors.
        let (stream, peer) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let slot = if admission.trusted_proxies.contains(peer.ip()) {
            admission.slots.try_acquire_unshared()
        } else {
            let client = ClientKey::Address(peer.ip().into());
            admission.slots.try_acquire(client)
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err(refusal) => {
                admission.metrics.connection_refused(refusal);
                tracing::debug!(%peer, %refusal, "connection refused");
                drop(stream);
                continue;
            }
        };
        // No Nagle: an SSE event is a small write that must leave at once
        // (with it on, herald-bench measured p99 44 ms instead of well
        // under 3 ms).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
        connections.serve(stream, peer, slot);
    }
    drop(listener);
    connections.shutdown().await;
}

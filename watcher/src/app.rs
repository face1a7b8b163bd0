//! Wiring: health endpoint, Kubernetes and NATS clients, one watch per kind
//! and the CRD watch that wakes them,
//! the heartbeat and the publisher; and the shutdown order (stop watching,
//! flush within the timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use herald_core::WatcherPolicy;
use herald_core::object::Kind;
use herald_runtime::health::{self, Readiness};
use herald_runtime::nats::NatsArgs;
use herald_runtime::stream::StreamArgs;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::crd_watch::{self, Wakers};
use crate::epoch::EpochClock;
use crate::event_limit::EventLimit;
use crate::heartbeat;
use crate::kind_watch::{self, KindWatch};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::publisher::{Publisher, READY_NATS};
use crate::rejections::Rejections;
use herald_runtime::publish::Producer;
use herald_runtime::signing::Signer;

/// Readiness condition: the NATS connection is up.
const READY_CONNECTION: &str = "nats connection";

/// Everything the watcher was configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: WatcherPolicy,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub heartbeat_interval: Duration,
    pub kind_recheck_interval: Duration,
    pub shutdown_timeout: Duration,
    pub health_listen: SocketAddr,
    pub nats: NatsArgs,
    pub stream: StreamArgs,
    /// The key events are signed with (`--signing-key-file`).
    pub signer: Option<Arc<Signer>>,
}

/// Runs the watcher until `shutdown`, then flushes and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    settings.nats.register_metrics(&mut registry);
    // Every condition is declared before /readyz can be asked.
    let readiness = Readiness::default();
    readiness.register(READY_NATS, "the event stream is not verified yet");
    readiness.register(READY_CONNECTION, "connecting");
    for kind in Kind::ALL {
        readiness.register(kind_watch::condition(kind), "not listed yet");
    }
    let health_stop = CancellationToken::new();
    let (_, health_task) = health::serve(
        settings.health_listen,
        readiness.clone(),
        Arc::new(registry),
        health_stop.clone(),
    )
    .await?;

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster config)")?;
    let nats = settings
        .nats
        .connect("herald-watcher", Some(settings.policy.cluster.as_str()))
        .await?;
    let js = async_nats::jetstream::new(nats.clone());

    let outbox = Arc::new(Outbox::new(metrics.clone()));
    let limit = EventLimit::default();
    let publisher = tokio::spawn(
        Publisher {
            producer: Producer {
                js,
                signer: settings.signer.clone(),
            },
            outbox: outbox.clone(),
            limit: limit.clone(),
            stream: settings.stream.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
        }
        .run(),
    );

    let policy = Arc::new(settings.policy.clone());
    let clock = Arc::new(EpochClock::default());
    let rejections = Rejections::new(client.clone(), metrics.clone());
    let mut tasks = JoinSet::new();
    let wakers = Wakers::new();
    tasks.spawn(crd_watch::run(
        client.clone(),
        wakers.clone(),
        shutdown.clone(),
    ));
    for kind in Kind::ALL {
        let watch = KindWatch {
            kind,
            client: client.clone(),
            namespaces: settings.namespaces.clone(),
            policy: policy.clone(),
            clock: clock.clone(),
            limit: limit.clone(),
            outbox: outbox.clone(),
            rejections: rejections.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            recheck: settings.kind_recheck_interval,
            wake: wakers.of(kind),
        };
        tasks.spawn(watch.run(shutdown.clone()));
    }
    tasks.spawn(heartbeat::run(
        policy.cluster.clone(),
        settings.heartbeat_interval,
        outbox.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(herald_runtime::nats::watch_connection(
        nats,
        readiness.clone(),
        READY_CONNECTION,
        shutdown.clone(),
    ));
    tracing::info!(cluster = %policy.cluster, namespaces = ?settings.namespaces, "herald-watcher started");

    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    outbox.close();
    let pending = outbox.len();
    tracing::info!(pending, "stopped watching; flushing pending events");
    match tokio::time::timeout(settings.shutdown_timeout, publisher).await {
        Ok(_) => tracing::info!("all events published"),
        Err(_) => tracing::warn!(
            unpublished = outbox.len(),
            "shutdown timeout reached; the next start re-lists and republishes the current state"
        ),
    }
    health_stop.cancel();
    let _ = health_task.await;
    Ok(())
}

//! Finding the registry buckets and watching each from the start.
//!
//! Buckets are listed at start and again periodically, and at once when
//! JetStream announces a new stream, so registries created later are
//! picked up. Each bucket gets one watcher that first delivers the current
//! value of every key (with its revision), then every change; the bucket is
//! *loaded* once the initial values are in.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use herald_core::RegistryName;
use herald_core::names::BucketKey;
use herald_core::stored::StoredValue;
use herald_core::validate::{self, UrlRules};
use herald_runtime::retry::{Backoff, RetryPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registries::{Registries, SharedView};

/// Pauses between restarts of a bucket watch.
const WATCH_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10));
/// JetStream's advisory subject for created streams.
const STREAM_CREATED: &str = "$JS.EVENT.ADVISORY.STREAM.CREATED.>";

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("opening bucket {bucket}: {source}")]
    Open {
        bucket: String,
        source: async_nats::jetstream::context::KeyValueError,
    },
    #[error("watching bucket {bucket}: {source}")]
    Watch {
        bucket: String,
        source: kv::WatchError,
    },
    #[error("reading bucket {bucket}: {source}")]
    Read {
        bucket: String,
        source: kv::WatcherError,
    },
    #[error("the watch of bucket {bucket} ended")]
    Ended { bucket: String },
}

/// Lists buckets every `interval` (and on stream-created advisories) and
/// starts a watcher per new registry bucket, until `shutdown`. Registry
/// buckets are `<prefix><registry>`: `herald-` (`names::BUCKET_PREFIX`) for
/// the live ones, another prefix for the scratch copies of `replay --keep`.
pub async fn run(
    client: async_nats::Client,
    prefix: String,
    registries: Registries,
    metrics: Metrics,
    interval: Duration,
    rules: UrlRules,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(client.clone());
    let wake = std::sync::Arc::new(Notify::new());
    // Best effort: without permission for advisories, the periodic list still works.
    match client.subscribe(STREAM_CREATED).await {
        Ok(mut advisories) => {
            let wake = wake.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = advisories.next() => match msg {
                            Some(_) => wake.notify_one(),
                            None => return,
                        },
                    }
                }
            });
        }
        Err(err) => {
            tracing::warn!(%err, "cannot subscribe to stream advisories; listing periodically only")
        }
    }
    loop {
        match herald_runtime::buckets::prefixed_buckets(&js, &prefix).await {
            Ok(found) => {
                for registry in &found {
                    if let Some((view, stop)) = registries.found_bucket(registry, &shutdown) {
                        tracing::info!(%registry, "watching registry bucket");
                        tokio::spawn(watch_forever(
                            js.clone(),
                            format!("{prefix}{registry}"),
                            registry.clone(),
                            view,
                            registries.clone(),
                            metrics.clone(),
                            rules,
                            stop,
                        ));
                    }
                }
                for registry in registries.retain_buckets(&found) {
                    tracing::info!(%registry, "registry bucket is gone; no longer served");
                    metrics.forget(&registry);
                }
                registries.listed();
            }
            Err(err) => tracing::warn!(%err, "listing buckets failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_forever(
    js: jetstream::Context,
    bucket: String,
    registry: RegistryName,
    view: SharedView,
    registries: Registries,
    metrics: Metrics,
    rules: UrlRules,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(WATCH_RETRY);
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = watch_once(&js, &bucket, &registry, &view, &registries, &metrics, rules) => r,
        };
        if let Err(err) = result {
            tracing::warn!(%registry, %err, "bucket watch failed; restarting it");
            // A watch that ended after working is a new failure, not the
            // next of a series.
            if matches!(err, WatchError::Ended { .. }) {
                backoff.reset();
            }
        }
        if !backoff.pause(&shutdown).await {
            return;
        }
    }
}

/// Watches one bucket until the watch fails. Applying the same value twice
/// changes nothing, so a restarted watch converges on the same view.
async fn watch_once(
    js: &jetstream::Context,
    bucket: &str,
    registry: &RegistryName,
    view: &SharedView,
    registries: &Registries,
    metrics: &Metrics,
    rules: UrlRules,
) -> Result<(), WatchError> {
    let bucket = bucket.to_owned();
    let store = js
        .get_key_value(bucket.clone())
        .await
        .map_err(|source| WatchError::Open {
            bucket: bucket.clone(),
            source,
        })?;
    let state = store.status().await.map(|s| s.info.state).ok();
    let last_sequence = state.as_ref().map_or(0, |s| s.last_sequence);
    let mut loaded = state.as_ref().is_some_and(|s| s.messages == 0);
    if loaded {
        finish_load(registry, view, registries, metrics);
    }
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|source| WatchError::Watch {
            bucket: bucket.clone(),
            source,
        })?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|source| WatchError::Read {
            bucket: bucket.clone(),
            source,
        })?;
        // Keys that are not Herald's are none of the view's business.
        let Ok(key) = BucketKey::parse(&entry.key) else {
            continue;
        };
        let value = match entry.operation {
            // Checked again here: whoever can write a bucket could have
            // written anything, and only what the rules allow is served.
            kv::Operation::Put => match StoredValue::decode(&entry.key, &entry.value) {
                Ok(v) => match validate::stored(&v, rules) {
                    Ok(()) => Some(v),
                    Err(reason) => {
                        tracing::warn!(%registry, key = %entry.key, %reason, "a stored value breaks the rules; treating the key as absent");
                        metrics.refused_value(registry);
                        None
                    }
                },
                Err(err) => {
                    tracing::warn!(%registry, %err, "undecodable value; treating the key as absent");
                    metrics.refused_value(registry);
                    None
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let changes = view
            .write()
            .apply(&entry.key, key.kind(), value, entry.revision);
        metrics.changes(registry, changes);
        metrics.view_size(registry, &view.read());
        if !loaded && (entry.delta == 0 || entry.revision >= last_sequence) {
            loaded = true;
            finish_load(registry, view, registries, metrics);
        }
    }
    Err(WatchError::Ended { bucket })
}

fn finish_load(
    registry: &RegistryName,
    view: &SharedView,
    registries: &Registries,
    metrics: &Metrics,
) {
    let mut v = view.write();
    v.finish_load();
    metrics.view_size(registry, &v);
    drop(v);
    registries.loaded(registry);
    tracing::info!(%registry, "registry loaded");
}

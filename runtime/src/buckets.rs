//! Reading Herald's KV buckets, for every part that reads them: listing the
//! registry buckets, opening one, and scanning the current value of each
//! key. Writing is the projector's alone (`herald-projector`'s `buckets`).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use bytes::Bytes;
use futures::StreamExt;
use herald_core::RegistryName;
use herald_core::names::registry_of_bucket;

/// Bound on one bucket scan; a scan of a healthy local bucket takes milliseconds.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// JetStream names a KV bucket's stream `KV_<bucket>`.
const KV_STREAM_PREFIX: &str = "KV_";

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("listing buckets: {0}")]
    List(String),
    #[error("scanning bucket {bucket}: {reason}")]
    Scan { bucket: String, reason: String },
}

/// Opens an existing bucket; `None` when it does not exist.
pub async fn open_existing(js: &jetstream::Context, bucket: &str) -> Option<kv::Store> {
    js.get_key_value(bucket).await.ok()
}

/// The names of every KV bucket on the server.
pub async fn bucket_names(js: &jetstream::Context) -> Result<Vec<String>, ReadError> {
    let mut names = js.stream_names();
    let mut buckets = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| ReadError::List(e.to_string()))?;
        if let Some(bucket) = name.strip_prefix(KV_STREAM_PREFIX) {
            buckets.push(bucket.to_owned());
        }
    }
    buckets.sort();
    Ok(buckets)
}

/// The registries that have a live bucket `herald-<registry>`.
pub async fn registry_buckets(
    js: &jetstream::Context,
) -> Result<BTreeSet<RegistryName>, ReadError> {
    Ok(bucket_names(js)
        .await?
        .iter()
        .filter_map(|b| registry_of_bucket(b))
        .collect())
}

/// The registries that have a bucket `<prefix><registry>`: the live ones
/// for `herald-`, the scratch copies `replay --keep` wrote for its prefix.
pub async fn prefixed_buckets(
    js: &jetstream::Context,
    prefix: &str,
) -> Result<BTreeSet<RegistryName>, ReadError> {
    Ok(bucket_names(js)
        .await?
        .iter()
        .filter_map(|b| b.strip_prefix(prefix)?.parse().ok())
        .collect())
}

/// One key's current value in a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
}

/// The current value of every key that starts with `prefix` (all keys for
/// `""`), in key order. Deleted and purged keys are left out.
pub async fn scan(store: &kv::Store, prefix: &str) -> Result<Vec<Item>, ReadError> {
    let err = |reason: String| ReadError::Scan {
        bucket: store.name.clone(),
        reason,
    };
    let key_prefix = format!("$KV.{}.", store.name);
    let consumer = store
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{key_prefix}{prefix}>"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut items = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(items);
    }
    let mut messages = consumer.messages().await.map_err(|e| err(e.to_string()))?;
    let read = async {
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| err(e.to_string()))?;
            let info = message.info().map_err(|e| err(e.to_string()))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            if !deleted && let Some(key) = message.subject.strip_prefix(key_prefix.as_str()) {
                items.push(Item {
                    key: key.to_owned(),
                    value: message.payload.clone(),
                    revision,
                });
            }
            if pending == 0 {
                break;
            }
        }
        Ok::<_, ReadError>(())
    };
    tokio::time::timeout(SCAN_TIMEOUT, read)
        .await
        .map_err(|_| err(format!("no answer within {SCAN_TIMEOUT:?}")))??;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(items)
}

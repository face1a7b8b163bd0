//! The KV buckets the projector writes: opening or creating them, listing
//! Herald's registry buckets, scanning keys under a prefix, and the
//! compare-and-set write every change goes through.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use herald_core::RegistryName;
use herald_core::names::registry_of_bucket;

/// How many times a compare-and-set is retried when other writers keep
/// changing the key in between; far more than two projectors ever need.
pub const CAS_ATTEMPTS: usize = 32;
/// Bound on one bucket scan; a scan of a healthy local bucket takes milliseconds.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the buckets the projector creates.
#[derive(Debug, Clone, Copy)]
pub struct BucketSettings {
    /// Values kept per key (≥ 1).
    pub history: i64,
    /// Replicas (1 locally, 3 in a production NATS cluster).
    pub replicas: usize,
    pub storage: stream::StorageType,
}

impl Default for BucketSettings {
    fn default() -> Self {
        Self {
            history: 1,
            replicas: 1,
            storage: stream::StorageType::File,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("opening bucket {bucket}: {reason}")]
    Open { bucket: String, reason: String },
    #[error("reading {key} in bucket {bucket}: {reason}")]
    Read {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("writing {key} in bucket {bucket}: {reason}")]
    Write {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error(
        "{key} in bucket {bucket} kept changing: gave up after {CAS_ATTEMPTS} compare-and-set attempts"
    )]
    Contended { bucket: String, key: String },
    #[error("scanning bucket {bucket}: {reason}")]
    Scan { bucket: String, reason: String },
    #[error("listing buckets: {0}")]
    List(String),
    #[error("deleting bucket {bucket}: {reason}")]
    Delete { bucket: String, reason: String },
}

/// Opens `bucket`, creating it with `settings` when it does not exist.
pub async fn open_or_create(
    js: &jetstream::Context,
    bucket: &str,
    settings: &BucketSettings,
) -> Result<kv::Store, BucketError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: bucket.to_owned(),
        history: settings.history,
        num_replicas: settings.replicas,
        storage: settings.storage,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => {
            tracing::info!(bucket, "created bucket");
            Ok(store)
        }
        // Another projector may have created it a moment ago.
        Err(create) => js
            .get_key_value(bucket)
            .await
            .map_err(|_| BucketError::Open {
                bucket: bucket.to_owned(),
                reason: create.to_string(),
            }),
    }
}

/// Opens an existing bucket; `None` when it does not exist.
pub async fn open_existing(js: &jetstream::Context, bucket: &str) -> Option<kv::Store> {
    js.get_key_value(bucket).await.ok()
}

/// The names of every KV bucket on the server.
pub async fn bucket_names(js: &jetstream::Context) -> Result<Vec<String>, BucketError> {
    let mut names = js.stream_names();
    let mut buckets = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| BucketError::List(e.to_string()))?;
        if let Some(bucket) = name.strip_prefix("KV_") {
            buckets.push(bucket.to_owned());
        }
    }
    buckets.sort();
    Ok(buckets)
}

/// The registries that have a live bucket `herald-<registry>`.
pub async fn registry_buckets(js: &jetstream::Context) -> Result<Vec<RegistryName>, BucketError> {
    Ok(bucket_names(js)
        .await?
        .iter()
        .filter_map(|b| registry_of_bucket(b))
        .collect())
}

/// Deletes a bucket; succeeds when it did not exist.
pub async fn delete(js: &jetstream::Context, bucket: &str) -> Result<(), BucketError> {
    if js.get_key_value(bucket).await.is_err() {
        return Ok(());
    }
    js.delete_key_value(bucket)
        .await
        .map(|_| ())
        .map_err(|e| BucketError::Delete {
            bucket: bucket.to_owned(),
            reason: e.to_string(),
        })
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
pub async fn scan(store: &kv::Store, prefix: &str) -> Result<Vec<Item>, BucketError> {
    let err = |reason: String| BucketError::Scan {
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
        Ok::<_, BucketError>(())
    };
    tokio::time::timeout(SCAN_TIMEOUT, read)
        .await
        .map_err(|_| err(format!("no answer within {SCAN_TIMEOUT:?}")))??;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(items)
}

/// What a compare-and-set step decides from the current value.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Write this value.
    Put(Bytes),
    /// Leave the key as it is.
    Keep,
}

/// The current value and revision of `key`; `None` when it is absent or
/// deleted.
pub async fn read(store: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, BucketError> {
    let entry = store.entry(key).await.map_err(|e| BucketError::Read {
        bucket: store.name.clone(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| (e.value, e.revision)))
}

/// Writes `value` under `key` if the key is still at `revision` (`None`:
/// absent; `create` also succeeds over a delete marker). Returns the new
/// revision, or `None` when another writer got there first.
pub async fn write_if(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    revision: Option<u64>,
) -> Result<Option<u64>, BucketError> {
    let write_err = |reason: String| BucketError::Write {
        bucket: store.name.clone(),
        key: key.to_owned(),
        reason,
    };
    match revision {
        None => match store.create(key, value).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(write_err(e.to_string())),
        },
        Some(revision) => match store.update(key, value, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(write_err(e.to_string())),
        },
    }
}

/// Reads `key` (or starts from `known`, a value and revision the caller
/// has just read), asks `decide` what to write given its current value,
/// and writes with compare-and-set on that revision.
/// When another writer got there first, reads and decides again. Returns
/// the value and revision written, or `None` when `decide` kept the key.
pub async fn compare_and_set(
    store: &kv::Store,
    key: &str,
    mut known: Option<(Bytes, u64)>,
    mut decide: impl FnMut(Option<&[u8]>) -> Change,
) -> Result<Option<(Bytes, u64)>, BucketError> {
    for _ in 0..CAS_ATTEMPTS {
        let (current, revision) = match known.take() {
            Some(known) => Some(known),
            None => read(store, key).await?,
        }
        .unzip();
        let Change::Put(value) = decide(current.as_deref()) else {
            return Ok(None);
        };
        // `None`: lost the race; decide again on what the winner wrote.
        if let Some(revision) = write_if(store, key, value.clone(), revision).await? {
            return Ok(Some((value, revision)));
        }
    }
    Err(contended(store, key))
}

/// The error after [`CAS_ATTEMPTS`] lost races on one key.
pub fn contended(store: &kv::Store, key: &str) -> BucketError {
    BucketError::Contended {
        bucket: store.name.clone(),
        key: key.to_owned(),
    }
}

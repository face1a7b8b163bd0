//! Writing the KV buckets, which only the projector does: opening or
//! creating them, deleting scratch buckets, and the compare-and-set write
//! every change goes through. Reading is `herald_runtime::buckets`.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

/// How many times a compare-and-set is retried when other writers keep
/// changing the key in between; far more than two projectors ever need.
pub const CAS_ATTEMPTS: usize = 32;

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
    /// The bucket (or the account's storage) has no room: the event is not
    /// at fault and waits until there is.
    #[error("bucket {bucket} is full, {key} waits until there is room: {reason}")]
    Full {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error(
        "{key} in bucket {bucket} kept changing: gave up after {CAS_ATTEMPTS} compare-and-set attempts"
    )]
    Contended { bucket: String, key: String },
    #[error(transparent)]
    Reading(#[from] herald_runtime::buckets::ReadError),
    #[error("deleting bucket {bucket}: {reason}")]
    Delete { bucket: String, reason: String },
}

impl BucketError {
    /// The bucket had no room; a later attempt can succeed.
    pub fn is_full(&self) -> bool {
        matches!(self, BucketError::Full { .. })
    }
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
    let write_err = |err: &(dyn std::error::Error + 'static)| {
        let (bucket, key, reason) = (store.name.clone(), key.to_owned(), err.to_string());
        match herald_runtime::capacity::is_full(err) {
            true => BucketError::Full {
                bucket,
                key,
                reason,
            },
            false => BucketError::Write {
                bucket,
                key,
                reason,
            },
        }
    };
    match revision {
        None => match store.create(key, value).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(write_err(&e)),
        },
        Some(revision) => match store.update(key, value, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(write_err(&e)),
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

//! The live buckets `run` writes: the stores it has open, a bounded cache of
//! the values it last wrote (so that most writes need no read and no parse
//! first), the
//! compare-and-set of one key's events, and the control events (cluster
//! liveness and the sweep after a re-list).
//!
//! The cache is only a first guess: every write is a compare-and-set on the
//! cached revision, so a value another projector changed since costs one
//! failed write and a read, never a lost update.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::cluster_state::ClusterState;
use herald_core::event::Resync;
use herald_core::names::{CLUSTERS_BUCKET, DeploymentKey, bucket_name};
use herald_core::{Event, EventData, RegistryName};
use lru::LruCache;

use herald_runtime::buckets;

use crate::fold;
use crate::writes::{self, BucketError, BucketSettings, Change, compare_and_set};
use herald_core::names::KeyKind;
use herald_core::stored::StoredValue;

/// What a control event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Tombstones of records a re-list did not confirm.
    pub swept: usize,
    /// The cluster's record already had this event or a newer one.
    pub stale: bool,
}

/// What one compare-and-set of a key's events did.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyWritten {
    /// The key's value and revision afterwards, as this write saw them
    /// (`None`: absent); worth caching.
    pub after: Option<(StoredValue, u64)>,
    /// Per event, in order: what it did.
    pub effects: Vec<fold::Effect>,
}

/// A bucket key of one registry.
pub type Slot = (RegistryName, String);

/// The live buckets: `herald-<registry>` and `herald_clusters`.
#[derive(Debug)]
pub struct Target {
    js: jetstream::Context,
    settings: BucketSettings,
    /// Shared, not cloned per write: a `kv::Store` carries its stream's
    /// whole configuration.
    registries: BTreeMap<RegistryName, Arc<kv::Store>>,
    clusters: Option<Arc<kv::Store>>,
    /// The value and revision this projector last wrote under a key.
    cache: LruCache<Slot, (StoredValue, u64)>,
}

impl Target {
    pub fn new(js: jetstream::Context, settings: BucketSettings, cache_keys: NonZeroUsize) -> Self {
        Self {
            js,
            settings,
            registries: BTreeMap::new(),
            clusters: None,
            cache: LruCache::new(cache_keys),
        }
    }

    /// The bucket of `registry`, opened (or created) on first use.
    pub async fn store(&mut self, registry: &RegistryName) -> Result<Arc<kv::Store>, BucketError> {
        if let Some(store) = self.registries.get(registry) {
            return Ok(Arc::clone(store));
        }
        let store =
            writes::open_or_create(&self.js, &bucket_name(registry), &self.settings).await?;
        let store = Arc::new(store);
        self.registries.insert(registry.clone(), Arc::clone(&store));
        Ok(store)
    }

    /// What the cache knows of a key, taken out while the key is written
    /// (nothing else reads it meanwhile); `None`: it must be read.
    pub fn take_known(&mut self, slot: &Slot) -> Option<(StoredValue, u64)> {
        self.cache.pop(slot)
    }

    /// Records what a key holds after a write of it.
    pub fn remember(&mut self, slot: Slot, after: Option<(StoredValue, u64)>) {
        if let Some(after) = after {
            self.cache.put(slot, after);
        }
    }

    /// After a failed write: a bucket may have been deleted or recreated,
    /// and whether the write landed is unknown. Opens the buckets afresh and
    /// reads every key again.
    pub fn reset(&mut self) {
        self.registries.clear();
        self.clusters = None;
        self.cache.clear();
    }

    async fn clusters(&mut self) -> Result<Arc<kv::Store>, BucketError> {
        if let Some(store) = &self.clusters {
            return Ok(Arc::clone(store));
        }
        let store = writes::open_or_create(&self.js, CLUSTERS_BUCKET, &self.settings).await?;
        let store = Arc::new(store);
        self.clusters = Some(Arc::clone(&store));
        Ok(store)
    }

    /// Applies a control event (resync, heartbeat), found at stream
    /// sequence `seq`: the cluster's liveness record and, after a completed
    /// re-list, the sweep. The caller makes sure every event before it is
    /// applied.
    pub async fn apply_control(
        &mut self,
        event: &Event,
        seq: u64,
        stored_at: DateTime<Utc>,
    ) -> Result<Outcome, BucketError> {
        let result = self.apply_control_once(event, seq, stored_at).await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn apply_control_once(
        &mut self,
        event: &Event,
        seq: u64,
        stored_at: DateTime<Utc>,
    ) -> Result<Outcome, BucketError> {
        let wrote = self.fold_cluster(event, seq, stored_at).await?;
        let swept = match &event.data {
            EventData::ResyncCompleted(resync) => self.sweep(resync, seq, event.time).await?,
            _ => 0,
        };
        Ok(Outcome {
            swept,
            stale: !wrote,
        })
    }

    async fn fold_cluster(
        &mut self,
        event: &Event,
        seq: u64,
        stored_at: DateTime<Utc>,
    ) -> Result<bool, BucketError> {
        let Some(cluster) = event.cluster() else {
            return Ok(false);
        };
        let store = self.clusters().await?;
        let written = compare_and_set(&store, cluster.as_str(), None, |current| {
            cluster_change(current, event, seq, stored_at)
        })
        .await?;
        Ok(written.is_some())
    }

    /// Tombstones for every record of the resync's cluster and kind that the
    /// re-list did not confirm, in every registry (live buckets may have been
    /// created by another projector, so they are listed each time); returns
    /// how many keys were written.
    async fn sweep(
        &mut self,
        resync: &Resync,
        seq: u64,
        time: DateTime<Utc>,
    ) -> Result<usize, BucketError> {
        let prefix = DeploymentKey::prefix(&resync.cluster, resync.kind);
        let mut written = 0;
        for registry in buckets::registry_buckets(&self.js).await? {
            let store = self.store(&registry).await?;
            for item in buckets::scan(&store, &prefix).await? {
                // The scan read the value: no second read unless it changed since.
                let known = Some((item.value, item.revision));
                let result = compare_and_set(&store, &item.key, known, |current| {
                    sweep_change(current, resync, seq, time)
                })
                .await?;
                if result.is_some() {
                    written += 1;
                    // The cached value of a swept key is out of date.
                    self.cache.pop(&(registry.clone(), item.key));
                }
            }
        }
        Ok(written)
    }
}

/// Folds `events` (one key's, in the order they arrived) into `key` of
/// `store` with one compare-and-set, starting from `known` when the cache
/// had it. When another writer got there first, reads and folds them all
/// again.
pub async fn write_key(
    store: &kv::Store,
    key: &str,
    kind: KeyKind,
    mut known: Option<(StoredValue, u64)>,
    events: &[(&Event, u64)],
) -> Result<KeyWritten, BucketError> {
    for _ in 0..writes::CAS_ATTEMPTS {
        let (current, revision) = match known.take() {
            Some((value, revision)) => (Some(value), Some(revision)),
            None => match writes::read(store, key).await? {
                Some((bytes, revision)) => (fold::decode_or_absent(kind, &bytes), Some(revision)),
                None => (None, None),
            },
        };
        let (next, effects) = fold::fold_all(events.iter().copied(), current.as_ref());
        let Some(next) = next else {
            let after = current.zip(revision);
            return Ok(KeyWritten { after, effects });
        };
        let bytes = Bytes::from(next.to_json());
        if let Some(revision) = writes::write_if(store, key, bytes, revision).await? {
            return Ok(KeyWritten {
                after: Some((next, revision)),
                effects,
            });
        }
    }
    Err(writes::contended(store, key))
}

/// The sweep's verdict on one stored deployment value.
fn sweep_change(value: Option<&[u8]>, resync: &Resync, seq: u64, time: DateTime<Utc>) -> Change {
    value
        .and_then(|v| fold::decode_or_absent(KeyKind::Deployment, v))
        .and_then(|current| fold::sweep(&current, resync, seq, time))
        .map_or(Change::Keep, |tombstone| {
            Change::Put(tombstone.to_json().into())
        })
}

/// A control event folded into a cluster's liveness record.
fn cluster_change(
    value: Option<&[u8]>,
    event: &Event,
    seq: u64,
    stored_at: DateTime<Utc>,
) -> Change {
    let current = value.and_then(|v| serde_json::from_slice::<ClusterState>(v).ok());
    match ClusterState::fold(current.as_ref(), event, seq, stored_at) {
        Some(next) => Change::Put(
            serde_json::to_vec(&next)
                .expect("cluster state always serializes")
                .into(),
        ),
        None => Change::Keep,
    }
}

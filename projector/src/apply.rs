//! Applying one decoded event to a set of buckets: the only place where
//! events change stored state, shared by `run` (live buckets) and `replay`
//! (scratch buckets) so that the two cannot disagree.
//!
//! The rules themselves live in `herald_core::projection` and
//! `herald_core::cluster_state`; this file only reads, folds and writes with
//! compare-and-set.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use herald_core::cluster_state::ClusterState;
use herald_core::event::Resync;
use herald_core::names::{CLUSTERS_BUCKET, CatalogKey, DeploymentKey, bucket_name};
use herald_core::projection::{self, Fold, StoredCatalog, StoredDeployment};
use herald_core::{Event, EventData, RegistryName};

use crate::buckets::{self, BucketError, BucketSettings, Change, Known, compare_and_set};

/// Which buckets a target writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// `herald-<registry>` and `herald_clusters`, what the API reads.
    Live,
    /// `<prefix><registry>`; the prefix must not start with `herald-` so the
    /// API never mistakes a scratch bucket for a registry.
    Scratch { prefix: String },
}

impl Naming {
    pub fn bucket(&self, registry: &RegistryName) -> String {
        match self {
            Naming::Live => bucket_name(registry),
            Naming::Scratch { prefix } => format!("{prefix}{registry}"),
        }
    }
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys written (a sweep may write many).
    pub written: usize,
    /// Of those, tombstones of records a re-list did not confirm.
    pub swept: usize,
    /// The event was older than what is stored, or a duplicate.
    pub stale: bool,
    /// The event concerns a registry outside the target.
    pub ignored: bool,
}

/// A set of buckets that events are applied to.
#[derive(Debug)]
pub struct Target {
    js: jetstream::Context,
    naming: Naming,
    settings: BucketSettings,
    /// Only this registry, when set (replay of one registry).
    only: Option<RegistryName>,
    /// Whether control events update the clusters bucket.
    track_clusters: bool,
    registries: BTreeMap<RegistryName, kv::Store>,
    clusters: Option<kv::Store>,
    /// Replay only: every deployment key written so far, by registry. The
    /// scratch buckets start empty and have no other writer, so this is
    /// their exact content and spares a read per event.
    written: Option<HashMap<(RegistryName, String), (bytes::Bytes, u64)>>,
}

impl Target {
    /// The live buckets, as `run` writes them.
    pub fn live(js: jetstream::Context, settings: BucketSettings) -> Self {
        Self {
            js,
            naming: Naming::Live,
            settings,
            only: None,
            track_clusters: true,
            registries: BTreeMap::new(),
            clusters: None,
            written: None,
        }
    }

    /// Scratch buckets for a replay of `only` (or every registry).
    pub fn scratch(
        js: jetstream::Context,
        prefix: &str,
        settings: BucketSettings,
        only: Option<RegistryName>,
    ) -> Self {
        Self {
            js,
            naming: Naming::Scratch {
                prefix: prefix.to_owned(),
            },
            settings,
            only,
            track_clusters: false,
            registries: BTreeMap::new(),
            clusters: None,
            written: Some(HashMap::new()),
        }
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// The registries this target has written so far.
    pub fn registries(&self) -> impl Iterator<Item = &RegistryName> {
        self.registries.keys()
    }

    fn includes(&self, registry: &RegistryName) -> bool {
        self.only.as_ref().is_none_or(|only| only == registry)
    }

    async fn registry(&mut self, registry: &RegistryName) -> Result<&kv::Store, BucketError> {
        if !self.registries.contains_key(registry) {
            let bucket = self.naming.bucket(registry);
            let store = buckets::open_or_create(&self.js, &bucket, &self.settings).await?;
            self.registries.insert(registry.clone(), store);
        }
        Ok(&self.registries[registry])
    }

    async fn clusters(&mut self) -> Result<&kv::Store, BucketError> {
        if self.clusters.is_none() {
            let store = buckets::open_or_create(&self.js, CLUSTERS_BUCKET, &self.settings).await?;
            self.clusters = Some(store);
        }
        Ok(self.clusters.as_ref().expect("opened above"))
    }

    /// The registries a sweep must visit. Live buckets may have been created
    /// by another projector, so they are listed on the server each time.
    async fn sweep_registries(&mut self) -> Result<Vec<RegistryName>, BucketError> {
        if self.naming == Naming::Live {
            for registry in buckets::registry_buckets(&self.js).await? {
                if self.includes(&registry) {
                    self.registry(&registry).await?;
                }
            }
        }
        Ok(self.registries.keys().cloned().collect())
    }

    /// Applies `event`, found at stream sequence `seq`.
    pub async fn apply(&mut self, event: &Event, seq: u64) -> Result<Outcome, BucketError> {
        let result = self.apply_once(event, seq).await;
        if result.is_err() {
            // A bucket may have been deleted or recreated: open them afresh next time.
            self.registries.clear();
            self.clusters = None;
            if let Some(written) = self.written.as_mut() {
                // Unknown whether the failed write landed: read from now on.
                written.clear();
                self.written = None;
            }
        }
        result
    }

    async fn apply_once(&mut self, event: &Event, seq: u64) -> Result<Outcome, BucketError> {
        match &event.data {
            EventData::Applied(record) => {
                let key = DeploymentKey::new(record.cluster.clone(), record.object.clone());
                self.fold_key(&record.registry, key.to_string(), |current| {
                    fold_change(projection::fold_applied(
                        stored(current).as_ref(),
                        record,
                        seq,
                    ))
                })
                .await
            }
            EventData::Withdrawn(withdrawal) => {
                let key = DeploymentKey::new(withdrawal.cluster.clone(), withdrawal.object.clone());
                self.fold_key(&withdrawal.registry, key.to_string(), |current| {
                    fold_change(projection::fold_withdrawn(
                        stored(current).as_ref(),
                        withdrawal,
                        seq,
                        event.time,
                    ))
                })
                .await
            }
            EventData::CatalogApplied(record) => {
                let key = CatalogKey::new(
                    record.source.clone(),
                    record.server_name.clone(),
                    &record.version,
                );
                self.fold_key(&record.registry, key.to_string(), |current| {
                    fold_change(projection::fold_catalog_applied(
                        stored_catalog(current).as_ref(),
                        record,
                        seq,
                    ))
                })
                .await
            }
            EventData::CatalogWithdrawn(withdrawal) => {
                let key = CatalogKey::new(
                    withdrawal.source.clone(),
                    withdrawal.server_name.clone(),
                    &withdrawal.version,
                );
                self.fold_key(&withdrawal.registry, key.to_string(), |current| {
                    fold_change(projection::fold_catalog_withdrawn(
                        stored_catalog(current).as_ref(),
                        withdrawal,
                        seq,
                        event.time,
                    ))
                })
                .await
            }
            EventData::ResyncCompleted(resync) => {
                let wrote = self.fold_cluster(event, seq).await?;
                let swept = self.sweep(resync, seq, event.time).await?;
                Ok(Outcome {
                    swept,
                    written: swept + usize::from(wrote),
                    stale: self.track_clusters && !wrote,
                    ..Outcome::default()
                })
            }
            EventData::ResyncStarted(_) | EventData::Heartbeat(_) => {
                let wrote = self.fold_cluster(event, seq).await?;
                Ok(Outcome {
                    written: usize::from(wrote),
                    stale: self.track_clusters && !wrote,
                    ignored: !self.track_clusters,
                    ..Outcome::default()
                })
            }
        }
    }

    /// The shared path of deployment and catalog events: fold one key of
    /// `registry` (when this target includes it) and say what happened.
    async fn fold_key(
        &mut self,
        registry: &RegistryName,
        key: String,
        decide: impl FnMut(Option<&[u8]>) -> Change,
    ) -> Result<Outcome, BucketError> {
        let mut outcome = Outcome::default();
        if !self.includes(registry) {
            outcome.ignored = true;
            return Ok(outcome);
        }
        let wrote = self.write_deployment(registry, key, decide).await?;
        outcome.written = usize::from(wrote);
        outcome.stale = !wrote;
        Ok(outcome)
    }

    /// Compare-and-set of one key (deployment or catalog entry); returns
    /// whether it wrote.
    async fn write_deployment(
        &mut self,
        registry: &RegistryName,
        key: String,
        decide: impl FnMut(Option<&[u8]>) -> Change,
    ) -> Result<bool, BucketError> {
        let cache_key = (registry.clone(), key);
        let known = self.written.as_ref().map(|w| match w.get(&cache_key) {
            Some((value, revision)) => Known::Value {
                value: value.clone(),
                revision: *revision,
            },
            None => Known::Absent,
        });
        let store = self.registry(registry).await?;
        let written = compare_and_set(store, &cache_key.1, known, decide).await?;
        if let (Some(cache), Some(value)) = (self.written.as_mut(), &written) {
            cache.insert(cache_key, value.clone());
        }
        Ok(written.is_some())
    }

    async fn fold_cluster(&mut self, event: &Event, seq: u64) -> Result<bool, BucketError> {
        if !self.track_clusters {
            return Ok(false);
        }
        let Some(cluster) = event.cluster().cloned() else {
            return Ok(false);
        };
        let store = self.clusters().await?;
        let written = compare_and_set(store, cluster.as_str(), None, |current| {
            cluster_change(current, event, seq)
        })
        .await?;
        Ok(written.is_some())
    }

    /// Tombstones for every record of the resync's cluster and kind that the
    /// re-list did not confirm; returns how many keys were written.
    async fn sweep(
        &mut self,
        resync: &Resync,
        seq: u64,
        time: DateTime<Utc>,
    ) -> Result<usize, BucketError> {
        let prefix = DeploymentKey::prefix(&resync.cluster, resync.kind);
        let mut written = 0;
        for registry in self.sweep_registries().await? {
            let items = buckets::scan(self.registry(&registry).await?, &prefix).await?;
            for item in items {
                if sweep_change(Some(&item.value), resync, seq, time) == Change::Keep {
                    continue;
                }
                // Decides again if the key changed since the scan.
                let wrote = self
                    .write_deployment(&registry, item.key.clone(), |current| {
                        sweep_change(current, resync, seq, time)
                    })
                    .await?;
                written += usize::from(wrote);
            }
        }
        Ok(written)
    }
}

/// The stored value in a bucket value; one that does not parse is treated
/// as absent, so the event overwrites it instead of being stuck behind it.
fn parse_stored<T: serde::de::DeserializeOwned>(value: Option<&[u8]>, what: &str) -> Option<T> {
    match serde_json::from_slice(value?) {
        Ok(stored) => Some(stored),
        Err(err) => {
            tracing::warn!(%err, "stored {what} does not parse; overwriting it");
            None
        }
    }
}

/// The stored deployment in a value (see [`parse_stored`]).
pub fn stored(value: Option<&[u8]>) -> Option<StoredDeployment> {
    parse_stored(value, "deployment")
}

/// The stored catalog entry in a value (see [`parse_stored`]).
pub fn stored_catalog(value: Option<&[u8]>) -> Option<StoredCatalog> {
    parse_stored(value, "catalog entry")
}

/// A fold's verdict as a bucket change.
pub fn fold_change<T: serde::Serialize>(fold: Fold<T>) -> Change {
    match fold {
        Fold::Write(value) => Change::Put(
            serde_json::to_vec(&value)
                .expect("stored state always serializes")
                .into(),
        ),
        Fold::Stale { .. } => Change::Keep,
    }
}

/// The sweep's verdict on one stored value.
pub fn sweep_change(
    value: Option<&[u8]>,
    resync: &Resync,
    seq: u64,
    time: DateTime<Utc>,
) -> Change {
    stored(value)
        .and_then(|current| projection::sweep(&current, resync, seq, time))
        .map_or(Change::Keep, |tombstone| {
            Change::Put(tombstone.to_json().into())
        })
}

/// A control event folded into a cluster's liveness record.
pub fn cluster_change(value: Option<&[u8]>, event: &Event, seq: u64) -> Change {
    let current = value.and_then(|v| serde_json::from_slice::<ClusterState>(v).ok());
    match ClusterState::fold(current.as_ref(), event, seq) {
        Some(next) => Change::Put(
            serde_json::to_vec(&next)
                .expect("cluster state always serializes")
                .into(),
        ),
        None => Change::Keep,
    }
}

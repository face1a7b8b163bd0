//! Syncing: one source into one registry, once or every interval.
//!
//! One sync fetches the listing ([`crate::source`]), screens it
//! ([`crate::screen`]), compares each entry's digest with the one the
//! registry bucket holds for this source, publishes a `catalog.applied`
//! event for each new or changed entry and — after a full listing only — a
//! `catalog.withdrawn` event for each entry of this source in the bucket
//! that the listing no longer has. A fetch that fails publishes nothing, so
//! the catalog imported before stays served; readiness says why.
//!
//! Against a registry API, the syncs between full ones ask only for entries
//! `updated_since` the previous sync (with `include_deleted`): cheap, and
//! they withdraw the entries the source reports `deleted` (any sync does).
//! What they cannot see is an entry the source dropped without a
//! tombstone (a source that keeps none, or one older than its retention
//! window): every `full_sync_every`-th sync lists everything and withdraws
//! what it lacks, the safety net.
//!
//! Shutdown: a sync still fetching stops at once (nothing is published
//! before the listing is complete); a sync that is publishing publishes its
//! events to the end, each bounded by the publish timeout and attempts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::catalog_record::{CatalogRecord, CatalogWithdrawal};
use herald_core::ids::SourceId;
use herald_core::names::{CatalogKey, bucket_name};
use herald_core::record::RECORD_VERSION;
use herald_core::stored::StoredCatalog;
use herald_core::{Event, EventData, RegistryName};
use herald_runtime::buckets;
use herald_runtime::health::Readiness;
use herald_runtime::publish::{ATTEMPT_TIMEOUT, Producer, PublishError, PublishPolicy};
use herald_runtime::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;

use crate::metrics::CatalogMetrics;
use crate::schema::SchemaCheck;
use crate::screen::screen;
use crate::source::{Source, SourceError};

/// `updated_since` reaches back this much further than the previous sync,
/// for clocks that disagree a little.
const SINCE_SLACK: chrono::Duration = chrono::Duration::seconds(60);
/// The readiness condition of the importer.
pub const READINESS: &str = "catalog";
/// Attempts at publishing one event before the sync fails (and is tried
/// again whole at the next interval); the server drops the duplicates a
/// retry may make.
const PUBLISH_ATTEMPTS: u32 = 3;
const PUBLISH: PublishPolicy = PublishPolicy {
    attempt_timeout: ATTEMPT_TIMEOUT,
    retry: RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2)),
};

/// What to sync into, and how often.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source_id: SourceId,
    pub registry: RegistryName,
    /// `None`: one sync, then return.
    pub interval: Option<Duration>,
    /// Every n-th sync of a registry API is a full listing (the others are
    /// incremental); 1 = always full.
    pub full_sync_every: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Buckets(#[from] buckets::ReadError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Valid entries the source listed.
    pub listed: usize,
    /// `applied` events published (new or changed entries).
    pub applied: usize,
    pub unchanged: usize,
    pub withdrawn: usize,
    pub skipped: usize,
    /// Whether the listing was full (and so could withdraw).
    pub full: bool,
}

/// The `catalog.withdrawn` event of `record`.
fn withdrawal(record: &CatalogRecord, now: DateTime<Utc>) -> Event {
    Event::new(
        EventData::CatalogWithdrawn(CatalogWithdrawal {
            v: RECORD_VERSION,
            source: record.source.clone(),
            registry: record.registry.clone(),
            server_name: record.server_name.clone(),
            version: record.version.clone(),
            observed_at: now,
        }),
        now,
    )
}

/// Imports one catalog source into one registry.
#[derive(Debug)]
pub struct Syncer {
    producer: Producer,
    source: Source,
    options: SyncOptions,
    schema: SchemaCheck,
    metrics: CatalogMetrics,
}

impl Syncer {
    pub fn new(
        producer: Producer,
        source: Source,
        options: SyncOptions,
        schema: SchemaCheck,
        metrics: CatalogMetrics,
    ) -> Self {
        Self {
            producer,
            source,
            options,
            schema,
            metrics,
        }
    }

    /// Syncs until `shutdown`, or once without an interval. Without an
    /// interval a failed (or interrupted) sync is the error returned; with
    /// one, a failure is logged, reported by readiness and the metrics, and
    /// the sync is tried again at the next interval.
    pub async fn run(
        &self,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> Result<(), SyncError> {
        readiness.register(READINESS, "the first catalog sync has not finished");
        let mut count: u64 = 0;
        let mut since: Option<DateTime<Utc>> = None;
        loop {
            let started = Utc::now();
            let every = u64::from(self.options.full_sync_every.max(1));
            let full = count.is_multiple_of(every) || since.is_none();
            let result = self
                .sync_once(if full { None } else { since }, shutdown)
                .await;
            count += 1;
            match &result {
                Err(SyncError::Source(SourceError::Interrupted))
                    if self.options.interval.is_some() =>
                {
                    return Ok(());
                }
                Ok(report) => {
                    self.metrics.synced(true);
                    readiness.set_ready(READINESS);
                    since = Some(started - SINCE_SLACK);
                    tracing::info!(
                        source = %self.options.source_id,
                        registry = %self.options.registry,
                        listed = report.listed,
                        applied = report.applied,
                        unchanged = report.unchanged,
                        withdrawn = report.withdrawn,
                        skipped = report.skipped,
                        full = report.full,
                        "catalog synced"
                    );
                }
                Err(err) => {
                    self.metrics.synced(false);
                    readiness.set_not_ready(
                        READINESS,
                        format!(
                            "the last sync of {} failed ({err}); the catalog imported before stays served",
                            self.source.location
                        ),
                    );
                    // A one-shot sync returns its error, logged once by main.
                    if self.options.interval.is_some() {
                        tracing::warn!(source = %self.options.source_id, "catalog sync failed: {err}");
                    }
                }
            }
            let Some(interval) = self.options.interval else {
                return result.map(|_| ());
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One sync; `since` asks a registry API only for entries updated since
    /// then (and so withdraws only what the source reports deleted).
    pub async fn sync_once(
        &self,
        since: Option<DateTime<Utc>>,
        shutdown: &CancellationToken,
    ) -> Result<SyncReport, SyncError> {
        let listing = self.source.fetch(since, shutdown).await?;
        let screened = screen(listing.entries, &self.schema);
        for skipped in &screened.skipped {
            self.metrics.skipped(skipped.reason);
            tracing::warn!(
                source = %self.options.source_id,
                entry = skipped.entry,
                reason = skipped.reason.as_str(),
                detail = skipped.detail,
                "skipping catalog entry"
            );
        }
        let known = self.known().await?;
        let now = Utc::now();
        let mut report = SyncReport {
            listed: screened.entries.len(),
            skipped: screened.skipped.len(),
            full: listing.full,
            ..SyncReport::default()
        };
        let mut events = Vec::new();
        let mut listed_keys = BTreeSet::new();
        for entry in screened.entries {
            let record = CatalogRecord::new(
                self.options.source_id.clone(),
                self.options.registry.clone(),
                entry,
                now,
            );
            let key = CatalogKey::new(
                record.source.clone(),
                record.server_name.clone(),
                &record.version,
            )
            .to_string();
            let unchanged = known
                .get(&key)
                .and_then(StoredCatalog::live)
                .is_some_and(|stored| stored.digest == record.digest);
            listed_keys.insert(key);
            if unchanged {
                report.unchanged += 1;
            } else {
                report.applied += 1;
                events.push(Event::new(EventData::CatalogApplied(Box::new(record)), now));
            }
        }
        // What the source says it deleted (and does not also list).
        for (name, version) in &listing.deleted {
            let key =
                CatalogKey::new(self.options.source_id.clone(), name.clone(), version).to_string();
            if listed_keys.contains(&key) {
                continue;
            }
            if let Some(record) = known.get(&key).and_then(StoredCatalog::live) {
                report.withdrawn += 1;
                events.push(withdrawal(record, now));
            }
            listed_keys.insert(key);
        }
        if listing.full {
            for (key, stored) in &known {
                let Some(record) = stored.live() else {
                    continue;
                };
                if listed_keys.contains(key) {
                    continue;
                }
                report.withdrawn += 1;
                events.push(withdrawal(record, now));
            }
        }
        for event in &events {
            self.publish(event).await?;
        }
        Ok(report)
    }

    /// This source's entries in the registry bucket, by key.
    async fn known(&self) -> Result<BTreeMap<String, StoredCatalog>, SyncError> {
        let bucket = bucket_name(&self.options.registry);
        let Some(store) = buckets::open_existing(&self.producer.js, &bucket).await else {
            return Ok(BTreeMap::new());
        };
        let items = buckets::scan(&store, &CatalogKey::prefix(&self.options.source_id)).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let stored = StoredCatalog::from_json(&item.value).ok()?;
                Some((item.key, stored))
            })
            .collect())
    }

    async fn publish(&self, event: &Event) -> Result<(), SyncError> {
        let notify = |err: &PublishError, pause: Duration| {
            tracing::warn!(source = %self.options.source_id, ?pause, "retrying: {err}");
        };
        self.producer
            .with_attempts(event, PUBLISH, PUBLISH_ATTEMPTS, notify)
            .await?;
        self.metrics
            .published(matches!(event.data, EventData::CatalogWithdrawn(_)));
        Ok(())
    }
}

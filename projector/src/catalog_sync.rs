//! `herald-projector catalog sync`: imports a catalog source — a file or an
//! official registry API (another Herald included), in the official list
//! format or ToolHive's `registry.json` — as `catalog.applied` /
//! `catalog.withdrawn` events on `HERALD_EVENTS`, so that `run` folds them
//! into the registry bucket and `events`/`replay` cover them like
//! deployments.
//!
//! One sync: fetch the whole listing (every page), validate every entry
//! against the server.json schema (a failing entry is skipped with a log
//! line and `herald_catalog_skipped_total{reason}`), publish an `applied`
//! event for each entry whose digest differs from the one in the bucket,
//! and a `withdrawn` event for each entry of this source in the bucket that
//! the listing no longer has. A fetch that fails publishes nothing, so the
//! last imported catalog stays served; readiness says why.
//!
//! With `--interval`, syncs repeat. Against a registry URL, the syncs in
//! between full ones ask only for `updated_since` the previous sync: cheap,
//! but blind to deletions, so they withdraw nothing; every
//! `--full-sync-every`-th sync is a full listing that does.

use herald_runtime::buckets;

use crate::source_http::SourceClient;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use herald_core::catalog_record::{CatalogEntry, CatalogRecord, CatalogWithdrawal};
use herald_core::ids::SourceId;
use herald_core::import::{self, EntryError};
use herald_core::names::{CatalogKey, bucket_name};
use herald_core::record::RECORD_VERSION;
use herald_core::stored::StoredCatalog;
use herald_core::{Event, EventData, RegistryName};
use herald_runtime::health::Readiness;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::writes::BucketError;

/// The server.json schema entries must satisfy (the newest the API emits).
const SERVER_SCHEMA: &str = include_str!("../../spec/registry/server.schema.2025-12-11.json");
/// Entries per page asked of a registry API (the official maximum).
const PAGE_LIMIT: &str = "100";
/// Pages followed at most, so a server that keeps returning a cursor
/// cannot keep a sync going forever.
const MAX_PAGES: usize = 10_000;
/// Bound on one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one publish and its ack.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// `updated_since` reaches back this much further than the previous sync,
/// for clocks that disagree a little.
const SINCE_SLACK: chrono::Duration = chrono::Duration::seconds(60);
/// The readiness condition of a catalog sync.
pub const READINESS: &str = "catalog";

/// The format of a catalog source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Official list (`servers` is an array) or ToolHive (`servers` /
    /// `remote_servers` maps), decided per document.
    Auto,
    Official,
    ToolHive,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Format::Auto),
            "official" => Ok(Format::Official),
            "toolhive" => Ok(Format::ToolHive),
            other => Err(format!(
                "unknown catalog format {other:?}: expected auto, official or toolhive"
            )),
        }
    }
}

/// Where the catalog comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    /// A registry API base URL (`…/v0.1/servers` is appended unless the URL
    /// already ends in `/servers`); with `--format toolhive`, the URL of a
    /// `registry.json` document.
    Url(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "file {}", path.display()),
            Location::Url(url) => write!(f, "URL {url}"),
        }
    }
}

/// What to sync, and how often.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: SourceId,
    pub registry: RegistryName,
    pub location: Location,
    pub format: Format,
    /// Prefix of ToolHive's short names (`fetch` → `<namespace>/fetch`).
    pub toolhive_namespace: String,
    /// `None`: one sync, then return.
    pub interval: Option<Duration>,
    /// Every n-th sync of a URL source is a full listing (the others are
    /// incremental); 1 = always full.
    pub full_sync_every: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{location} is not a usable catalog: {reason}")]
    Document { location: String, reason: String },
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error(transparent)]
    Buckets(#[from] herald_runtime::buckets::ReadError),
    #[error("publishing {id}: {reason}")]
    Publish { id: String, reason: String },
    #[error("the server.json schema does not compile: {0}")]
    Schema(String),
}

/// Why an entry was skipped; the `reason` label of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Fails what the merge relies on (name, description, version, URLs).
    Invalid,
    /// Fails the server.json schema.
    Schema,
    /// The same name and version appear twice in one listing.
    Duplicate,
}

impl SkipReason {
    pub const ALL: [SkipReason; 3] = [
        SkipReason::Invalid,
        SkipReason::Schema,
        SkipReason::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Invalid => "invalid",
            SkipReason::Schema => "schema",
            SkipReason::Duplicate => "duplicate",
        }
    }
}

type Label = [(&'static str, &'static str); 1];

/// The counters of a catalog sync.
#[derive(Debug, Clone, Default)]
pub struct CatalogMetrics {
    skipped: Family<Label, Counter>,
    published: Family<Label, Counter>,
    syncs: Family<Label, Counter>,
}

impl CatalogMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        for reason in SkipReason::ALL {
            let _ = m.skipped.get_or_create(&[("reason", reason.as_str())]);
        }
        for ty in ["applied", "withdrawn"] {
            let _ = m.published.get_or_create(&[("type", ty)]);
        }
        for result in ["ok", "failed"] {
            let _ = m.syncs.get_or_create(&[("result", result)]);
        }
        registry.register(
            "herald_catalog_skipped",
            "Catalog entries skipped by reason (invalid, schema, duplicate)",
            m.skipped.clone(),
        );
        registry.register(
            "herald_catalog_published",
            "Catalog events published by type (applied, withdrawn)",
            m.published.clone(),
        );
        registry.register(
            "herald_catalog_syncs",
            "Catalog syncs by result (ok, failed)",
            m.syncs.clone(),
        );
        m
    }
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

/// A source's entries as fetched.
struct Listing {
    entries: Vec<CatalogEntry>,
    skipped: usize,
    full: bool,
}

/// Imports one catalog source.
#[derive(Debug)]
pub struct Syncer {
    js: jetstream::Context,
    http: SourceClient,
    options: SyncOptions,
    validator: jsonschema::Validator,
    metrics: CatalogMetrics,
}

impl Syncer {
    pub fn new(
        js: jetstream::Context,
        options: SyncOptions,
        metrics: CatalogMetrics,
    ) -> Result<Self, SyncError> {
        let schema: Value =
            serde_json::from_str(SERVER_SCHEMA).map_err(|e| SyncError::Schema(e.to_string()))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| SyncError::Schema(e.to_string()))?;
        let http = SourceClient::new(REQUEST_TIMEOUT).map_err(|e| SyncError::Fetch {
            url: "-".to_owned(),
            reason: format!("setting up TLS: {e}"),
        })?;
        Ok(Self {
            js,
            http,
            options,
            validator,
            metrics,
        })
    }

    /// Syncs until `shutdown` (or once, without an interval). Without an
    /// interval a failed sync is the error returned; with one, it is logged,
    /// reported by readiness, and retried at the next interval.
    pub async fn run(
        &self,
        readiness: &Readiness,
        shutdown: CancellationToken,
    ) -> Result<(), SyncError> {
        readiness.register(READINESS, "the first catalog sync has not finished");
        let mut count: u64 = 0;
        let mut since: Option<DateTime<Utc>> = None;
        loop {
            let started = Utc::now();
            let every = u64::from(self.options.full_sync_every.max(1));
            let full = count.is_multiple_of(every) || since.is_none();
            let result = self.sync_once(if full { None } else { since }).await;
            count += 1;
            match &result {
                Ok(report) => {
                    self.metrics.syncs.get_or_create(&[("result", "ok")]).inc();
                    readiness.set_ready(READINESS);
                    since = Some(started - SINCE_SLACK);
                    tracing::info!(
                        source = %self.options.source,
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
                    self.metrics
                        .syncs
                        .get_or_create(&[("result", "failed")])
                        .inc();
                    readiness.set_not_ready(
                        READINESS,
                        format!(
                            "the last sync of {} failed ({err}); the catalog imported before stays served",
                            self.options.location
                        ),
                    );
                    tracing::warn!(source = %self.options.source, %err, "catalog sync failed");
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

    /// One sync; `since` asks a URL source only for entries updated since
    /// then (and so withdraws nothing).
    pub async fn sync_once(&self, since: Option<DateTime<Utc>>) -> Result<SyncReport, SyncError> {
        let listing = self.fetch(since).await?;
        let known = self.known().await?;
        let now = Utc::now();
        let mut report = SyncReport {
            listed: listing.entries.len(),
            skipped: listing.skipped,
            full: listing.full,
            ..SyncReport::default()
        };
        let mut events = Vec::new();
        let mut listed_keys = BTreeSet::new();
        for entry in listing.entries {
            let record = CatalogRecord::new(
                self.options.source.clone(),
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
        if listing.full {
            for (key, stored) in &known {
                let Some(record) = stored.live() else {
                    continue;
                };
                if listed_keys.contains(key) {
                    continue;
                }
                report.withdrawn += 1;
                events.push(Event::new(
                    EventData::CatalogWithdrawn(CatalogWithdrawal {
                        v: RECORD_VERSION,
                        source: record.source.clone(),
                        registry: record.registry.clone(),
                        server_name: record.server_name.clone(),
                        version: record.version.clone(),
                        observed_at: now,
                    }),
                    now,
                ));
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
        let Some(store) = buckets::open_existing(&self.js, &bucket).await else {
            return Ok(BTreeMap::new());
        };
        let items = buckets::scan(&store, &CatalogKey::prefix(&self.options.source)).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let stored = StoredCatalog::from_json(&item.value).ok()?;
                Some((item.key, stored))
            })
            .collect())
    }

    async fn publish(&self, event: &Event) -> Result<(), SyncError> {
        let fail = |reason: String| SyncError::Publish {
            id: event.id.clone(),
            reason,
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        let sent = async {
            let ack = self
                .js
                .publish_with_headers(
                    event.nats_subject().to_string(),
                    headers,
                    event.to_json().into(),
                )
                .await?;
            ack.await?;
            Ok::<(), jetstream::context::PublishError>(())
        };
        tokio::time::timeout(PUBLISH_TIMEOUT, sent)
            .await
            .map_err(|_| fail(format!("no ack within {PUBLISH_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let ty = match event.data {
            EventData::CatalogWithdrawn(_) => "withdrawn",
            _ => "applied",
        };
        self.metrics.published.get_or_create(&[("type", ty)]).inc();
        Ok(())
    }

    async fn fetch(&self, since: Option<DateTime<Utc>>) -> Result<Listing, SyncError> {
        let (raw, full) = match &self.options.location {
            Location::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| SyncError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                (self.parse_document(&bytes)?, true)
            }
            Location::Url(url) if self.options.format == Format::ToolHive => {
                let bytes = self.get(url, &[]).await?;
                (self.parse_document(&bytes)?, true)
            }
            Location::Url(url) => (self.fetch_pages(url, since).await?, since.is_none()),
        };
        Ok(self.screen(raw, full))
    }

    /// Every page of an official list, following `nextCursor`.
    async fn fetch_pages(
        &self,
        base: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Result<CatalogEntry, EntryError>>, SyncError> {
        let trimmed = base.trim_end_matches('/');
        let url = if trimmed.ends_with("/servers") {
            trimmed.to_owned()
        } else {
            format!("{trimmed}/v0.1/servers")
        };
        let since = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let mut cursor: Option<String> = None;
        let mut entries = Vec::new();
        for _ in 0..MAX_PAGES {
            let mut query: Vec<(&str, &str)> = vec![("limit", PAGE_LIMIT)];
            if let Some(c) = &cursor {
                query.push(("cursor", c));
            }
            if let Some(s) = &since {
                query.push(("updated_since", s));
            }
            let bytes = self.get(&url, &query).await?;
            let page = import::parse_official_page(&bytes).map_err(|e| SyncError::Document {
                location: url.clone(),
                reason: e.to_string(),
            })?;
            entries.extend(page.entries);
            match page.next_cursor {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(entries),
            }
        }
        Err(SyncError::Fetch {
            url,
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }

    async fn get(&self, url: &str, query: &[(&str, &str)]) -> Result<bytes::Bytes, SyncError> {
        let fail = |reason: String| SyncError::Fetch {
            url: url.to_owned(),
            reason,
        };
        self.http.get(url, query).await.map_err(fail)
    }

    fn parse_document(
        &self,
        bytes: &[u8],
    ) -> Result<Vec<Result<CatalogEntry, EntryError>>, SyncError> {
        let location = self.options.location.to_string();
        let document = |e: import::CatalogError| SyncError::Document {
            location: location.clone(),
            reason: e.to_string(),
        };
        let format = match self.options.format {
            Format::Auto => {
                let doc: Value =
                    serde_json::from_slice(bytes).map_err(|e| SyncError::Document {
                        location: location.clone(),
                        reason: format!("not JSON: {e}"),
                    })?;
                if doc["servers"].is_array() {
                    Format::Official
                } else {
                    Format::ToolHive
                }
            }
            other => other,
        };
        match format {
            Format::ToolHive => {
                import::parse_toolhive_registry(bytes, &self.options.toolhive_namespace)
                    .map_err(document)
            }
            _ => import::parse_official_page(bytes)
                .map(|page| page.entries)
                .map_err(document),
        }
    }

    /// Keeps the entries that pass the checks and the schema, once each.
    fn screen(&self, raw: Vec<Result<CatalogEntry, EntryError>>, full: bool) -> Listing {
        let mut seen = BTreeSet::new();
        let mut entries = Vec::new();
        let mut skipped = 0;
        for item in raw {
            let verdict = item
                .map_err(|e| (SkipReason::Invalid, e.entry, e.reason))
                .and_then(|entry| match self.schema_error(&entry.server) {
                    Some(reason) => Err((SkipReason::Schema, entry.name.to_string(), reason)),
                    None => Ok(entry),
                })
                .and_then(|entry| {
                    if seen.insert((entry.name.clone(), entry.version.clone())) {
                        Ok(entry)
                    } else {
                        Err((
                            SkipReason::Duplicate,
                            entry.name.to_string(),
                            format!("version {} is listed more than once", entry.version),
                        ))
                    }
                });
            match verdict {
                Ok(entry) => entries.push(entry),
                Err((why, entry, reason)) => {
                    skipped += 1;
                    self.metrics
                        .skipped
                        .get_or_create(&[("reason", why.as_str())])
                        .inc();
                    tracing::warn!(
                        source = %self.options.source,
                        entry,
                        reason = why.as_str(),
                        detail = reason,
                        "skipping catalog entry"
                    );
                }
            }
        }
        Listing {
            entries,
            skipped,
            full,
        }
    }

    fn schema_error(&self, server: &Value) -> Option<String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(server)
            .take(3)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

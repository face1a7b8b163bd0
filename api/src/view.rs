//! One registry's in-memory view: the deployments and catalog entries of its
//! bucket, the merged server entries they make (`merge_registry` in core),
//! and the changes to those entries in order.
//!
//! Every bucket change recomputes the entries of the server names it
//! touches (all deployments of a name are merged together, so `isLatest`
//! stays right), and each entry whose JSON changed becomes one [`Change`].
//! Changes are kept in a bounded ring (for `Last-Event-ID` resumes) and
//! broadcast to live subscribers through a bounded channel.
//!
//! Tombstones that say what they withdrew (`herald_core::tombstone`) make
//! the *deleted* entries, kept apart from the live ones: served only when a
//! caller asks for them (`include_deleted`, `updated_since`), for the
//! retention window, and never part of the feed (which already sends the
//! live entry's removal as a delete).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::claims::ClaimSet;
use herald_core::deleted;
use herald_core::merge::{self, ServerResponse};
use herald_core::names::KeyKind;
use herald_core::stored::{StoredCatalog, StoredDeployment, StoredValue};
use herald_core::tombstone::LastServed;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// An entry's identity: (server name, version).
pub type EntryKey = (String, String);

/// One server entry as served: the parsed response and its exact JSON.
#[derive(Debug)]
pub struct Entry {
    pub response: ServerResponse,
    pub json: String,
    /// The claim sets of the parts merged into it (distinct, ordered; empty:
    /// no part has claims). See [`crate::access`].
    pub required: Vec<ClaimSet>,
}

impl Entry {
    pub fn new(response: ServerResponse) -> Self {
        Self::with_claims(response, Vec::new())
    }

    pub fn with_claims(response: ServerResponse, required: Vec<ClaimSet>) -> Self {
        let json = serde_json::to_string(&response).expect("a server response always serializes");
        Self {
            response,
            json,
            required,
        }
    }

    pub fn key(&self) -> EntryKey {
        (
            self.response.server.name.to_string(),
            self.response.server.version.clone(),
        )
    }

    /// Whether a live deployment (here, or in an upstream Herald whose API
    /// is a catalog source) is behind the entry.
    pub fn has_live_deployment(&self) -> bool {
        self.response
            .meta
            .herald
            .as_ref()
            .is_some_and(|h| h.has_live_deployment())
    }
}

/// What happened to one entry. Each change carries the claims the entry
/// required before (`Entry::required`; None: it did not exist), so a
/// subscriber can tell whether it could see it (an entry that stops being
/// visible to it reaches it as a delete). Only the claims: the old entry
/// itself is not kept alive by the ring.
#[derive(Debug, Clone)]
pub enum ChangeKind {
    Upsert {
        entry: Arc<Entry>,
        previous: Option<Vec<ClaimSet>>,
    },
    Delete {
        name: String,
        version: String,
        previous: Vec<ClaimSet>,
    },
}

/// One entry change, at the bucket revision that caused it.
#[derive(Debug, Clone)]
pub struct Change {
    pub position: u64,
    pub kind: ChangeKind,
}

/// The entry changes of one bucket revision (published together).
#[derive(Debug)]
pub struct Batch {
    pub position: u64,
    pub changes: Vec<Change>,
}

/// Every current entry, at a position.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub position: u64,
    pub entries: Vec<Arc<Entry>>,
}

/// Where a new subscriber starts.
#[derive(Debug)]
pub enum Start {
    /// Exactly the batches after its resume point.
    Resume(Vec<Arc<Batch>>),
    /// The resume point is not held (or none was given): everything.
    Snapshot(Snapshot),
}

/// Sizes of the bounded buffers.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Batches kept for resumes.
    pub history: usize,
    /// Batches a live subscriber may fall behind before it is reset.
    pub subscriber_buffer: usize,
    /// How long a withdrawn entry is served as deleted.
    pub deleted_retention: Duration,
}

/// How often expired tombstones are dropped from memory.
const PRUNE_EVERY: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Debug)]
pub struct RegistryView {
    /// Live deployments by bucket key (tombstones count as absent).
    deployments: HashMap<String, StoredDeployment>,
    /// Listed catalog entries by bucket key (tombstones count as absent).
    catalog: HashMap<String, StoredCatalog>,
    /// Keys of the live deployments and catalog entries of each server name.
    by_server: HashMap<String, BTreeSet<String>>,
    entries: BTreeMap<EntryKey, Arc<Entry>>,
    /// Tombstones that can be served, by bucket key: what they withdrew,
    /// and when.
    tombstones: HashMap<String, (LastServed, DateTime<Utc>)>,
    /// Deleted entries: versions with tombstones and no live part.
    deleted: BTreeMap<EntryKey, Arc<Entry>>,
    retention: chrono::Duration,
    pruned_at: DateTime<Utc>,
    position: u64,
    ring: VecDeque<Arc<Batch>>,
    history: usize,
    /// Resumes from positions at or after this are served from the ring.
    ring_floor: u64,
    live: broadcast::Sender<Arc<Batch>>,
    /// Cancelled when the view is dropped from service (its bucket is gone).
    closed: CancellationToken,
}

impl RegistryView {
    pub fn new(bounds: Bounds) -> Self {
        let (live, _) = broadcast::channel(bounds.subscriber_buffer.max(1));
        Self {
            deployments: HashMap::new(),
            catalog: HashMap::new(),
            by_server: HashMap::new(),
            entries: BTreeMap::new(),
            tombstones: HashMap::new(),
            deleted: BTreeMap::new(),
            retention: chrono::Duration::from_std(bounds.deleted_retention)
                .unwrap_or(chrono::Duration::MAX),
            pruned_at: Utc::now(),
            position: 0,
            ring: VecDeque::new(),
            history: bounds.history.max(1),
            ring_floor: 0,
            live,
            closed: CancellationToken::new(),
        }
    }

    /// Ends the view's subscriptions (they reconnect to its successor).
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn entries(&self) -> &BTreeMap<EntryKey, Arc<Entry>> {
        &self.entries
    }

    pub fn deployment_count(&self) -> usize {
        self.deployments.len()
    }

    /// Entries of one server name, in version order.
    pub fn versions(&self, name: &str) -> Vec<Arc<Entry>> {
        of_name(&self.entries, name).cloned().collect()
    }

    /// The deleted entries served at `now`, by key (module docs).
    pub fn deleted(&self) -> &BTreeMap<EntryKey, Arc<Entry>> {
        &self.deleted
    }

    /// Whether a deleted entry is still within the retention window at `now`.
    pub fn retained(&self, entry: &Entry, now: DateTime<Utc>) -> bool {
        entry
            .response
            .meta
            .official
            .status_changed_at
            .is_some_and(|at| deleted::within_retention(at, now, self.retention))
    }

    /// Deleted entries of one server name still retained at `now`.
    pub fn deleted_versions(&self, name: &str, now: DateTime<Utc>) -> Vec<Arc<Entry>> {
        of_name(&self.deleted, name)
            .filter(|e| self.retained(e, now))
            .cloned()
            .collect()
    }

    /// Applies the value of one bucket key of `kind` at `revision`
    /// (`None`: absent). Returns the number of entry changes it caused.
    pub fn apply(
        &mut self,
        key: &str,
        kind: KeyKind,
        value: Option<StoredValue>,
        revision: u64,
    ) -> usize {
        match (kind, value) {
            (KeyKind::Deployment, Some(StoredValue::Deployment(d))) => {
                self.apply_deployment(key, Some(d), revision)
            }
            (KeyKind::Catalog, Some(StoredValue::Catalog(c))) => {
                self.apply_catalog(key, Some(c), revision)
            }
            (KeyKind::Deployment, _) => self.apply_deployment(key, None, revision),
            (KeyKind::Catalog, _) => self.apply_catalog(key, None, revision),
        }
    }

    fn apply_deployment(
        &mut self,
        key: &str,
        value: Option<StoredDeployment>,
        revision: u64,
    ) -> usize {
        let tombstone = value
            .as_ref()
            .and_then(|d| Some((d.tombstone()?.clone(), d.changed_at)));
        let old_tombstone = self.replace_tombstone(key, tombstone);
        let (old, new) = replace_live(&mut self.deployments, key, value, |d| {
            d.live().map(|r| r.server_name.to_string())
        });
        self.reindex(key, old.or(old_tombstone), new, revision)
    }

    fn apply_catalog(&mut self, key: &str, value: Option<StoredCatalog>, revision: u64) -> usize {
        let tombstone = value
            .as_ref()
            .and_then(|c| Some((c.tombstone()?.clone(), c.changed_at)));
        let old_tombstone = self.replace_tombstone(key, tombstone);
        let (old, new) = replace_live(&mut self.catalog, key, value, |c| {
            c.live().map(|r| r.server_name.to_string())
        });
        self.reindex(key, old.or(old_tombstone), new, revision)
    }

    /// Keeps the tombstone under `key` (one already expired is not kept);
    /// returns the server name of the one it replaces. A tombstone's server
    /// name is indexed with the live keys (`by_server`) by `reindex`.
    fn replace_tombstone(
        &mut self,
        key: &str,
        tombstone: Option<(LastServed, DateTime<Utc>)>,
    ) -> Option<String> {
        let now = Utc::now();
        let old = self.tombstones.remove(key);
        if let Some((last, at)) = tombstone
            && deleted::within_retention(at, now, self.retention)
        {
            self.tombstones.insert(key.to_owned(), (last, at));
        }
        self.prune(now);
        old.map(|(last, _)| last.server_name.to_string())
    }

    /// Drops expired tombstones (at most once a [`PRUNE_EVERY`]), so that
    /// memory holds only what can still be served.
    fn prune(&mut self, now: DateTime<Utc>) {
        if now.signed_duration_since(self.pruned_at) < PRUNE_EVERY {
            return;
        }
        self.pruned_at = now;
        let retention = self.retention;
        let expired: Vec<(String, String)> = self
            .tombstones
            .iter()
            .filter(|(_, (_, at))| !deleted::within_retention(*at, now, retention))
            .map(|(key, (last, _))| (key.clone(), last.server_name.to_string()))
            .collect();
        for (key, name) in expired {
            self.tombstones.remove(&key);
            if let Some(keys) = self.by_server.get_mut(&name) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.by_server.remove(&name);
                }
            }
            self.recompute_deleted(&name);
        }
    }

    /// Moves `key` from its old server name to its new one and recomputes
    /// the entries of both.
    fn reindex(
        &mut self,
        key: &str,
        old_name: Option<String>,
        new_name: Option<String>,
        revision: u64,
    ) -> usize {
        if let Some(old) = &old_name
            && let Some(keys) = self.by_server.get_mut(old)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_server.remove(old);
            }
        }
        let tombstone_name = self
            .tombstones
            .get(key)
            .map(|(last, _)| last.server_name.to_string());
        let new_name = new_name.or(tombstone_name);
        if let Some(new) = &new_name {
            self.by_server
                .entry(new.clone())
                .or_default()
                .insert(key.to_owned());
        }
        self.position = self.position.max(revision);
        let mut changes = Vec::new();
        let names: BTreeSet<String> = old_name.into_iter().chain(new_name).collect();
        // A restarted watch redelivers old revisions: positions never go back.
        let position = self.position;
        for name in names {
            self.recompute(&name, position, &mut changes);
            self.recompute_deleted(&name);
        }
        let count = changes.len();
        if !changes.is_empty() {
            self.publish(Arc::new(Batch { position, changes }));
        }
        count
    }

    /// The initial load is complete: what came before cannot be resumed
    /// from (it was not observed change by change).
    pub fn finish_load(&mut self) {
        self.ring.clear();
        self.ring_floor = self.position;
    }

    fn recompute(&mut self, name: &str, position: u64, changes: &mut Vec<Change>) {
        let merged: BTreeMap<String, Entry> = match self.by_server.get(name) {
            Some(keys) => {
                let catalog: Vec<&StoredCatalog> =
                    keys.iter().filter_map(|k| self.catalog.get(k)).collect();
                let deployments: Vec<&StoredDeployment> = keys
                    .iter()
                    .filter_map(|k| self.deployments.get(k))
                    .collect();
                // The claims of each version's parts (merge groups by version).
                let mut claims: HashMap<&str, BTreeSet<&ClaimSet>> = HashMap::new();
                for r in catalog.iter().filter_map(|c| c.live()) {
                    if let Some(set) = &r.authz_claims {
                        claims.entry(&r.version).or_default().insert(set);
                    }
                }
                for r in deployments.iter().filter_map(|d| d.live()) {
                    if let Some(set) = &r.authz_claims {
                        claims.entry(&r.version).or_default().insert(set);
                    }
                }
                merge::merge_registry(catalog.iter().copied(), deployments.iter().copied())
                    .into_iter()
                    .map(|r| {
                        let required = claims
                            .get(r.server.version.as_str())
                            .map(|sets| sets.iter().map(|s| (*s).clone()).collect())
                            .unwrap_or_default();
                        (r.server.version.clone(), Entry::with_claims(r, required))
                    })
                    .collect()
            }
            None => BTreeMap::new(),
        };
        let old: Vec<EntryKey> = self.versions(name).iter().map(|e| e.key()).collect();
        for key in old {
            if !merged.contains_key(&key.1)
                && let Some(previous) = self.entries.remove(&key)
            {
                changes.push(Change {
                    position,
                    kind: ChangeKind::Delete {
                        name: key.0,
                        version: key.1,
                        previous: previous.required.clone(),
                    },
                });
            }
        }
        for (version, entry) in merged {
            let key = (name.to_owned(), version);
            // A change of claims alone is a change: it changes who sees it.
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.json == entry.json && e.required == entry.required)
            {
                continue;
            }
            let entry = Arc::new(entry);
            let previous = self
                .entries
                .insert(key, entry.clone())
                .map(|old| old.required.clone());
            changes.push(Change {
                position,
                kind: ChangeKind::Upsert { entry, previous },
            });
        }
    }

    /// The deleted entries of `name`: its tombstones grouped by version,
    /// for the versions no live entry serves.
    fn recompute_deleted(&mut self, name: &str) {
        let old: Vec<EntryKey> = of_name(&self.deleted, name).map(|e| e.key()).collect();
        for key in old {
            self.deleted.remove(&key);
        }
        let Some(keys) = self.by_server.get(name) else {
            return;
        };
        let mut by_version: BTreeMap<&str, Vec<(&LastServed, DateTime<Utc>)>> = BTreeMap::new();
        for (last, at) in keys.iter().filter_map(|k| self.tombstones.get(k)) {
            by_version
                .entry(last.version.as_str())
                .or_default()
                .push((last, *at));
        }
        for (version, tombstones) in by_version {
            let key = (name.to_owned(), version.to_owned());
            if self.entries.contains_key(&key) {
                continue;
            }
            if let Some((response, required)) = deleted::deleted_entry(&tombstones) {
                self.deleted
                    .insert(key, Arc::new(Entry::with_claims(response, required)));
            }
        }
    }

    fn publish(&mut self, batch: Arc<Batch>) {
        while self.ring.len() >= self.history {
            if let Some(dropped) = self.ring.pop_front() {
                self.ring_floor = dropped.position;
            }
        }
        self.ring.push_back(batch.clone());
        // No receivers is fine: nobody is listening.
        let _ = self.live.send(batch);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            position: self.position,
            entries: self.entries.values().cloned().collect(),
        }
    }

    /// Subscribes to live changes and says where to start, atomically (the
    /// caller holds the view's lock, so no change falls between the two).
    pub fn subscribe(&self, last_seen: Option<u64>) -> (broadcast::Receiver<Arc<Batch>>, Start) {
        let rx = self.live.subscribe();
        let start = match last_seen {
            Some(last) if last >= self.ring_floor && last <= self.position => Start::Resume(
                self.ring
                    .iter()
                    .filter(|b| b.position > last)
                    .cloned()
                    .collect(),
            ),
            _ => Start::Snapshot(self.snapshot()),
        };
        (rx, start)
    }
}

/// The values of one server name's keys, in version order.
fn of_name<'a>(
    map: &'a BTreeMap<EntryKey, Arc<Entry>>,
    name: &str,
) -> impl Iterator<Item = &'a Arc<Entry>> {
    let name = name.to_owned();
    map.range((
        Bound::Included((name.clone(), String::new())),
        Bound::Unbounded,
    ))
    .take_while(move |((n, _), _)| *n == name)
    .map(|(_, e)| e)
}

/// Keeps `value` under `key` when it is live (`name` gives its server name),
/// removes the key otherwise; returns the server names before and after.
fn replace_live<T>(
    map: &mut HashMap<String, T>,
    key: &str,
    value: Option<T>,
    name: impl Fn(&T) -> Option<String>,
) -> (Option<String>, Option<String>) {
    let new = value.as_ref().and_then(&name);
    let old = match (value, &new) {
        (Some(value), Some(_)) => map.insert(key.to_owned(), value),
        _ => map.remove(key),
    };
    (old.as_ref().and_then(&name), new)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};
    use herald_core::projection::{Fold, fold_applied};
    use herald_core::record::{DeploymentRecord, Phase, Remote, RemoteTransport};
    use herald_core::{Kind, ObjectRef};

    use super::*;

    fn stored(cluster: &str, server: &str, version: &str, seq: u64) -> (String, StoredDeployment) {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let record = DeploymentRecord {
            v: 1,
            cluster: cluster.parse().unwrap(),
            registry: "default".parse().unwrap(),
            object: ObjectRef::new(Kind::MCPServer, "ns", "obj").unwrap(),
            uid: "u".into(),
            resource_version: "1".into(),
            generation: None,
            created_at: Some(at),
            observed_at: at,
            changed_at: None,
            epoch: 1,
            server_name: server.parse().unwrap(),
            version: version.into(),
            description: "d".into(),
            title: None,
            icon: None,
            category: None,
            tools: vec![],
            remote: Remote {
                transport: RemoteTransport::StreamableHttp,
                url: format!("https://{cluster}.example.com/mcp"),
                headers: vec![],
                extra: Default::default(),
            },
            phase: Phase::Ready,
            image: None,
            transport: "streamable-http".into(),
            group: None,
            tool_definitions: Vec::new(),
            authz_claims: None,
            package: None,
        };
        let key = format!("deployment.{cluster}.mcpserver.ns.obj");
        let Fold::Write(v) = fold_applied(None, &record, seq) else {
            unreachable!()
        };
        (key, v)
    }

    fn bounds() -> Bounds {
        Bounds {
            history: 2,
            subscriber_buffer: 4,
            deleted_retention: Duration::from_secs(3600),
        }
    }

    #[test]
    fn changes_are_per_entry_and_resumable_within_the_ring() {
        let mut view = RegistryView::new(bounds());
        let (k1, v1) = stored("eu-1", "io.x/srv", "1.0.0", 1);
        view.apply(
            &k1,
            KeyKind::Deployment,
            Some(StoredValue::Deployment(v1)),
            1,
        );
        view.finish_load();
        assert!(matches!(view.subscribe(Some(0)).1, Start::Snapshot(_)));
        assert!(matches!(view.subscribe(Some(1)).1, Start::Resume(ref b) if b.is_empty()));

        // A newer version flips isLatest on the older one: two upserts.
        let (k2, v2) = stored("us-1", "io.x/srv", "2.0.0", 2);
        assert_eq!(
            view.apply(
                &k2,
                KeyKind::Deployment,
                Some(StoredValue::Deployment(v2.clone())),
                2
            ),
            2
        );
        // The same value again changes nothing.
        assert_eq!(
            view.apply(
                &k2,
                KeyKind::Deployment,
                Some(StoredValue::Deployment(v2)),
                3
            ),
            0
        );
        // Removing the newer version: one delete, one upsert (isLatest back).
        assert_eq!(view.apply(&k2, KeyKind::Deployment, None, 4), 2);
        let Start::Resume(batches) = view.subscribe(Some(1)).1 else {
            panic!("position 1 is still in the ring");
        };
        assert_eq!(
            batches.iter().map(|b| b.position).collect::<Vec<_>>(),
            [2, 4]
        );
        // The ring holds two batches: a third pushes position 2 out.
        let (k3, v3) = stored("ap-1", "io.x/other", "1.0.0", 5);
        view.apply(
            &k3,
            KeyKind::Deployment,
            Some(StoredValue::Deployment(v3)),
            5,
        );
        assert!(matches!(view.subscribe(Some(1)).1, Start::Snapshot(_)));
        assert!(matches!(view.subscribe(Some(2)).1, Start::Resume(ref b) if b.len() == 2));
        assert!(matches!(view.subscribe(Some(99)).1, Start::Snapshot(ref s) if s.position == 5));
        assert_eq!(view.entries().len(), 2);
    }
}

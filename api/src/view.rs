//! One registry's in-memory view: the deployments and catalog entries of its
//! bucket, and per server name the state of its parts ([`NameParts`]: the
//! merged entries they make, for each caller as it may see them), and the
//! changes to those states in order.
//!
//! Every bucket change makes a new state of the server names it touches
//! (all parts of a name are merged together, so `isLatest` stays right);
//! each name whose parts changed becomes one [`Change`] carrying its state
//! before and after, so that each subscriber of the feed works out what
//! changed *for it* (`crate::sse`). Changes are kept in a bounded ring (for
//! `Last-Event-ID` resumes; the states they hold are shared with the view
//! while current, so the ring costs only the replaced ones) and broadcast
//! to live subscribers through a bounded channel.
//!
//! Tombstones that say what they withdrew (`herald_core::tombstone`) make
//! the *deleted* entries, kept apart from the live ones (`Merged::deleted`):
//! served only when a caller asks for them (`include_deleted`,
//! `updated_since`), for the retention window, and never part of the feed
//! (which already sends the live entry's removal as a delete).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::deleted;
use herald_core::merge::ServerResponse;
use herald_core::names::KeyKind;
use herald_core::stored::{StoredCatalog, StoredDeployment, StoredValue};
use herald_core::tombstone::LastServed;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::parts::{NameParts, diff};

/// An entry's identity: (server name, version).
pub type EntryKey = (String, String);

/// One server entry as served: the parsed response and its exact JSON.
#[derive(Debug)]
pub struct Entry {
    pub response: ServerResponse,
    pub json: String,
}

impl Entry {
    pub fn new(response: ServerResponse) -> Self {
        let json = serde_json::to_string(&response).expect("a server response always serializes");
        Self { response, json }
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

/// What happened to one server name: its state before and after (`None`:
/// it had, or has, no parts). A subscriber compares what it saw of the one
/// with what it sees of the other.
#[derive(Debug, Clone)]
pub struct Change {
    pub name: String,
    pub before: Option<Arc<NameParts>>,
    pub after: Option<Arc<NameParts>>,
}

/// The name changes of one bucket revision (published together).
#[derive(Debug)]
pub struct Batch {
    pub position: u64,
    pub changes: Vec<Change>,
    /// About the memory the batch keeps alive in the resume ring once the
    /// live entries move on (see [`ENTRY_MEMORY_PER_JSON_BYTE`]).
    weight: usize,
}

impl Batch {
    pub fn new(position: u64, changes: Vec<Change>) -> Self {
        // A change's `after` is the state the ring keeps alive once the name
        // moves on (its `before` was the `after` of an earlier change).
        let weight = changes
            .iter()
            .map(|c| {
                let entries = c.after.as_ref().map_or(0, |p| p.full().json_len());
                ENTRY_MEMORY_PER_JSON_BYTE * entries + c.name.len() + CHANGE_OVERHEAD
            })
            .sum();
        Self {
            position,
            changes,
            weight,
        }
    }
}

/// A state holds its entries parsed (`serde_json` maps and strings for
/// `_meta`) and as JSON, and the parts they were merged from: about 5 bytes
/// of heap per byte of entry JSON. Measured with `herald-bench soak`: ~4 KiB
/// of resident memory per ring change for entries of ~850 bytes of JSON.
/// Merges made later for callers who see only some groups come on top
/// (bounded by [`crate::parts::MAX_GROUPS`]).
const ENTRY_MEMORY_PER_JSON_BYTE: usize = 5;
/// What a change costs in the ring besides the entry it holds.
const CHANGE_OVERHEAD: usize = 256;

/// Every current server name's state, in name order, at a position.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub position: u64,
    pub names: Vec<Arc<NameParts>>,
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
    /// About the bytes those batches may hold; the older ones go first.
    pub history_bytes: usize,
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
    deployments: HashMap<String, Arc<StoredDeployment>>,
    /// Listed catalog entries by bucket key (tombstones count as absent).
    catalog: HashMap<String, Arc<StoredCatalog>>,
    /// Keys of the live deployments, catalog entries and kept tombstones of
    /// each server name.
    by_server: HashMap<String, BTreeSet<String>>,
    /// The state of each server name with parts.
    names: BTreeMap<String, Arc<NameParts>>,
    /// Live entries of the full merges (for the metrics).
    entry_count: usize,
    /// Tombstones that can be served, by bucket key: what they withdrew,
    /// and when.
    tombstones: HashMap<String, (LastServed, DateTime<Utc>)>,
    retention: chrono::Duration,
    pruned_at: DateTime<Utc>,
    position: u64,
    ring: VecDeque<Arc<Batch>>,
    /// The sum of the ring's batch weights.
    ring_bytes: usize,
    history: usize,
    history_bytes: usize,
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
            names: BTreeMap::new(),
            entry_count: 0,
            tombstones: HashMap::new(),
            retention: chrono::Duration::from_std(bounds.deleted_retention)
                .unwrap_or(chrono::Duration::MAX),
            pruned_at: Utc::now(),
            position: 0,
            ring: VecDeque::new(),
            ring_bytes: 0,
            history: bounds.history.max(1),
            history_bytes: bounds.history_bytes,
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

    /// Every server name's state, in name order.
    pub fn names(&self) -> &BTreeMap<String, Arc<NameParts>> {
        &self.names
    }

    /// The state of one server name.
    pub fn name(&self, name: &str) -> Option<Arc<NameParts>> {
        self.names.get(name).cloned()
    }

    /// Live entries of every name, merged in full.
    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    pub fn deployment_count(&self) -> usize {
        self.deployments.len()
    }

    /// How long deleted entries are served.
    pub fn retention(&self) -> chrono::Duration {
        self.retention
    }

    /// Applies the value of one bucket key of `kind` at `revision`
    /// (`None`: absent). Returns the number of entries (of the full merges)
    /// that changed.
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
        let (old_tombstone, pruned) = self.replace_tombstone(key, tombstone);
        let (old, new) = replace_live(&mut self.deployments, key, value.map(Arc::new), |d| {
            d.live().map(|r| r.server_name.to_string())
        });
        self.reindex(key, old.or(old_tombstone), new, pruned, revision)
    }

    fn apply_catalog(&mut self, key: &str, value: Option<StoredCatalog>, revision: u64) -> usize {
        let tombstone = value
            .as_ref()
            .and_then(|c| Some((c.tombstone()?.clone(), c.changed_at)));
        let (old_tombstone, pruned) = self.replace_tombstone(key, tombstone);
        let (old, new) = replace_live(&mut self.catalog, key, value.map(Arc::new), |c| {
            c.live().map(|r| r.server_name.to_string())
        });
        self.reindex(key, old.or(old_tombstone), new, pruned, revision)
    }

    /// Keeps the tombstone under `key` (one already expired is not kept);
    /// returns the server name of the one it replaces, and the names whose
    /// expired tombstones were dropped. A tombstone's server name is indexed
    /// with the live keys (`by_server`) by `reindex`.
    fn replace_tombstone(
        &mut self,
        key: &str,
        tombstone: Option<(LastServed, DateTime<Utc>)>,
    ) -> (Option<String>, Vec<String>) {
        let now = Utc::now();
        let old = self.tombstones.remove(key);
        if let Some((last, at)) = tombstone
            && deleted::within_retention(at, now, self.retention)
        {
            self.tombstones.insert(key.to_owned(), (last, at));
        }
        let pruned = self.prune(now);
        (old.map(|(last, _)| last.server_name.to_string()), pruned)
    }

    /// Drops expired tombstones (at most once a [`PRUNE_EVERY`]), so that
    /// memory holds only what can still be served; returns the names they
    /// were of.
    fn prune(&mut self, now: DateTime<Utc>) -> Vec<String> {
        if now.signed_duration_since(self.pruned_at) < PRUNE_EVERY {
            return Vec::new();
        }
        self.pruned_at = now;
        let retention = self.retention;
        let expired: Vec<(String, String)> = self
            .tombstones
            .iter()
            .filter(|(_, (_, at))| !deleted::within_retention(*at, now, retention))
            .map(|(key, (last, _))| (key.clone(), last.server_name.to_string()))
            .collect();
        let mut names = Vec::with_capacity(expired.len());
        for (key, name) in expired {
            self.tombstones.remove(&key);
            if let Some(keys) = self.by_server.get_mut(&name) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.by_server.remove(&name);
                }
            }
            names.push(name);
        }
        names
    }

    /// Moves `key` from its old server name to its new one and makes new
    /// states of both (and of the names in `also`).
    fn reindex(
        &mut self,
        key: &str,
        old_name: Option<String>,
        new_name: Option<String>,
        also: Vec<String>,
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
        // A restarted watch redelivers old revisions: positions never go back.
        self.position = self.position.max(revision);
        let names: BTreeSet<String> = old_name.into_iter().chain(new_name).chain(also).collect();
        let mut count = 0;
        let changes: Vec<Change> = names
            .into_iter()
            .filter_map(|name| self.recompute(name))
            .map(|(change, entries)| {
                count += entries;
                change
            })
            .collect();
        if !changes.is_empty() {
            let position = self.position;
            self.publish(Arc::new(Batch::new(position, changes)));
        }
        count
    }

    /// The initial load is complete: what came before cannot be resumed
    /// from (it was not observed change by change).
    pub fn finish_load(&mut self) {
        self.ring.clear();
        self.ring_bytes = 0;
        self.ring_floor = self.position;
    }

    /// Makes the new state of `name`; the change, when its parts changed,
    /// with the number of entries of its full merge that changed.
    fn recompute(&mut self, name: String) -> Option<(Change, usize)> {
        let before = self.names.get(&name).cloned();
        let after = self.by_server.get(&name).and_then(|keys| {
            let catalog = keys
                .iter()
                .filter_map(|k| self.catalog.get(k).cloned())
                .collect();
            let deployments = keys
                .iter()
                .filter_map(|k| self.deployments.get(k).cloned())
                .collect();
            let tombstones = keys
                .iter()
                .filter_map(|k| self.tombstones.get(k).cloned())
                .collect();
            NameParts::new(&name, catalog, deployments, tombstones, before.as_deref())
        });
        match (&before, &after) {
            (None, None) => return None,
            (Some(b), Some(a)) if b.same_parts(a) => return None,
            _ => {}
        }
        let count = |p: Option<&NameParts>| p.map_or(0, |p| p.full().live.len());
        self.entry_count = self.entry_count + count(after.as_ref()) - count(before.as_deref());
        let after = after.map(Arc::new);
        match &after {
            Some(a) => self.names.insert(name.clone(), a.clone()),
            None => self.names.remove(&name),
        };
        let full = |p: &Option<Arc<NameParts>>| p.as_ref().map(|p| p.full().clone());
        let (old, new) = (full(&before), full(&after));
        let (removed, changed) = diff(old.as_deref(), new.as_deref());
        let entries = removed.len() + changed.len();
        Some((
            Change {
                name,
                before,
                after,
            },
            entries,
        ))
    }

    fn publish(&mut self, batch: Arc<Batch>) {
        // Bounded by count and by bytes; the newest batch is always kept.
        while !self.ring.is_empty()
            && (self.ring.len() >= self.history
                || self.ring_bytes + batch.weight > self.history_bytes)
        {
            if let Some(dropped) = self.ring.pop_front() {
                self.ring_bytes -= dropped.weight;
                self.ring_floor = dropped.position;
            }
        }
        self.ring_bytes += batch.weight;
        self.ring.push_back(batch.clone());
        // No receivers is fine: nobody is listening.
        let _ = self.live.send(batch);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            position: self.position,
            names: self.names.values().cloned().collect(),
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

/// Whether a deleted entry is still within `retention` at `now`.
pub fn retained(entry: &Entry, now: DateTime<Utc>, retention: chrono::Duration) -> bool {
    entry
        .response
        .meta
        .official
        .status_changed_at
        .is_some_and(|at| deleted::within_retention(at, now, retention))
}

/// Keeps `value` under `key` when it is live (`name` gives its server name),
/// removes the key otherwise; returns the server names before and after.
fn replace_live<T>(
    map: &mut HashMap<String, Arc<T>>,
    key: &str,
    value: Option<Arc<T>>,
    name: impl Fn(&T) -> Option<String>,
) -> (Option<String>, Option<String>) {
    let new = value.as_deref().and_then(&name);
    let old = match (value, &new) {
        (Some(value), Some(_)) => map.insert(key.to_owned(), value),
        _ => map.remove(key),
    };
    (old.as_deref().and_then(&name), new)
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
            history_bytes: usize::MAX,
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

        // A newer version flips isLatest on the older one: two entries changed.
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
        // Removing the newer version: one removed, one changed (isLatest back).
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
        assert_eq!(view.entry_count(), 2);
    }

    /// A deployment of a server of its own, `io.x/srv-<seq>`, at revision `seq`.
    fn add_server(view: &mut RegistryView, seq: u64) {
        let (k, v) = stored("eu-1", &format!("io.x/srv-{seq}"), "1.0.0", seq);
        view.apply(
            &k,
            KeyKind::Deployment,
            Some(StoredValue::Deployment(v)),
            seq,
        );
    }

    #[test]
    fn the_ring_keeps_fewer_batches_rather_than_more_bytes() {
        let mut view = RegistryView::new(Bounds {
            history: 1000,
            history_bytes: 1,
            ..bounds()
        });
        view.finish_load();
        for seq in 1..=5 {
            add_server(&mut view, seq);
            // Over the byte bound, only the newest batch is kept: resumes from
            // further back get a snapshot, one from just before it gets it.
            assert_eq!(view.ring.len(), 1);
            assert_eq!(view.ring_bytes, view.ring[0].weight);
            assert!(
                matches!(view.subscribe(Some(seq - 1)).1, Start::Resume(ref b) if b.len() == 1)
            );
            assert!(seq < 2 || matches!(view.subscribe(Some(seq - 2)).1, Start::Snapshot(_)));
        }
        // Within the bound, count still rules.
        let mut view = RegistryView::new(Bounds {
            history: 3,
            history_bytes: usize::MAX,
            ..bounds()
        });
        view.finish_load();
        for seq in 1..=5 {
            add_server(&mut view, seq);
        }
        assert_eq!(view.ring.len(), 3);
        assert_eq!(
            view.ring_bytes,
            view.ring.iter().map(|b| b.weight).sum::<usize>()
        );
    }
}

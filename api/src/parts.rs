//! One server name's parts — its live deployments and catalog entries, and
//! the tombstones of withdrawn ones — grouped by the claims they require
//! (ToolHive's `authz-claims`; "no claims" is a group too), and the entries
//! each combination of groups makes.
//!
//! A caller sees the parts of the groups it may see ([`Viewer::sees`]),
//! merged anew from those parts alone by the registry's merge
//! ([`merge::merge_registry`]), with deleted entries from the visible
//! tombstones ([`deleted::deleted_entry`]). So a merged entry whose
//! deployments carry different claims shows each caller only the remotes it
//! may see, and `isLatest`, `publishedAt`, `updatedAt` and Herald's `_meta`
//! speak only of what the caller sees. No visible part: the name does not
//! exist for the caller.
//!
//! Cheap on purpose: a caller's combination of visible groups is a bit mask
//! (one claims check per group), and each mask's merge is computed once per
//! state of the name and cached ([`NameParts::seen_by`]). The mask of every
//! group is the full merge, made when the parts change; a name whose parts
//! share one claim set (the usual case) never needs another. A state is
//! immutable apart from its cache: a change of the name makes a new one.
//!
//! At most [`MAX_GROUPS`] distinct claim sets per name (so at most
//! 2^[`MAX_GROUPS`] − 1 cached merges). Beyond it, the parts of the further
//! claim sets (in claim-set order, "no claims" first) are withheld from every
//! caller and a warning names the server and the counts (never the claims):
//! an operator sees why those remotes are not served and can give the
//! deployments fewer distinct claim sets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use herald_core::claims::ClaimSet;
use herald_core::deleted;
use herald_core::merge;
use herald_core::stored::{StoredCatalog, StoredDeployment};
use herald_core::tombstone::LastServed;

use crate::access::Viewer;
use crate::view::Entry;

/// The most distinct claim sets one server name's parts may carry.
pub const MAX_GROUPS: usize = 8;

/// A set of groups, one bit each.
type Mask = u16;

/// What a caller sees of one server name: entries by version.
#[derive(Debug, Default)]
pub struct Merged {
    pub live: BTreeMap<String, Arc<Entry>>,
    /// Versions with visible tombstones and no visible live part.
    pub deleted: BTreeMap<String, Arc<Entry>>,
}

impl Merged {
    /// The length of every entry's JSON, live and deleted.
    pub fn json_len(&self) -> usize {
        self.live
            .values()
            .chain(self.deleted.values())
            .map(|e| e.json.len())
            .sum()
    }
}

/// One state of a server name's parts (module docs).
#[derive(Debug)]
pub struct NameParts {
    /// Distinct claim sets, `None` (no claims) first; at most [`MAX_GROUPS`].
    groups: Vec<Option<ClaimSet>>,
    /// Parts with the bit of their group (0: withheld).
    catalog: Vec<(Mask, Arc<StoredCatalog>)>,
    deployments: Vec<(Mask, Arc<StoredDeployment>)>,
    tombstones: Vec<(Mask, LastServed, DateTime<Utc>)>,
    /// Parts left out because their group is beyond [`MAX_GROUPS`].
    withheld: usize,
    /// The merge of every group.
    full: Arc<Merged>,
    /// Merges of other masks, made on first use.
    cache: Mutex<HashMap<Mask, Arc<Merged>>>,
}

impl NameParts {
    /// The state of `name` made of these parts (all of that name; catalog
    /// entries and deployments live), or `None` when there are none.
    /// `previous` (the name's state before) lends its entries where they did
    /// not change, so unchanged entries stay the same allocation.
    pub fn new(
        name: &str,
        catalog: Vec<Arc<StoredCatalog>>,
        deployments: Vec<Arc<StoredDeployment>>,
        tombstones: Vec<(LastServed, DateTime<Utc>)>,
        previous: Option<&NameParts>,
    ) -> Option<Self> {
        if catalog.is_empty() && deployments.is_empty() && tombstones.is_empty() {
            return None;
        }
        let catalog: Vec<(Option<ClaimSet>, Arc<StoredCatalog>)> = catalog
            .into_iter()
            .map(|c| (c.live().and_then(|r| r.authz_claims.clone()), c))
            .collect();
        let deployments: Vec<(Option<ClaimSet>, Arc<StoredDeployment>)> = deployments
            .into_iter()
            .map(|d| (d.live().and_then(|r| r.authz_claims.clone()), d))
            .collect();
        let tombstones: Vec<(Option<ClaimSet>, LastServed, DateTime<Utc>)> = tombstones
            .into_iter()
            .map(|(t, at)| (t.authz_claims.clone(), t, at))
            .collect();
        // Which claim sets get the [`MAX_GROUPS`] groups: those of live parts
        // before those of tombstones only, then the longest published (catalog
        // entries, which the operator imports, first; a deployment by its
        // object's creation time), then the claims. So a part that arrives
        // later can never push older parts out, and which one is withheld
        // says nothing about the claims a caller cannot see.
        let ranked = catalog
            .iter()
            .map(|(c, _)| (c.as_ref(), (false, DateTime::<Utc>::MIN_UTC)))
            .chain(deployments.iter().map(|(c, d)| {
                let at = d.live().and_then(|r| r.created_at);
                (c.as_ref(), (false, at.unwrap_or(DateTime::<Utc>::MAX_UTC)))
            }))
            .chain(
                tombstones
                    .iter()
                    .map(|(c, t, at)| (c.as_ref(), (true, t.published_at.unwrap_or(*at)))),
            );
        // A claim set's rank is that of its best part: (live first, oldest).
        let mut rank: BTreeMap<Option<&ClaimSet>, (bool, DateTime<Utc>)> = BTreeMap::new();
        for (claims, part) in ranked {
            rank.entry(claims)
                .and_modify(|best| *best = (*best).min(part))
                .or_insert(part);
        }
        let distinct = rank.len();
        let mut all: Vec<(bool, DateTime<Utc>, Option<&ClaimSet>)> =
            rank.into_iter().map(|(c, (t, at))| (t, at, c)).collect();
        all.sort();
        all.truncate(MAX_GROUPS);
        // Groups in claim order, as before: only membership depends on rank.
        let mut all: Vec<Option<&ClaimSet>> = all.into_iter().map(|(_, _, c)| c).collect();
        all.sort();
        let groups: Vec<Option<ClaimSet>> = all.into_iter().map(|g| g.cloned()).collect();
        let bit = |claims: &Option<ClaimSet>| -> Mask {
            groups
                .iter()
                .position(|g| g == claims)
                .map_or(0, |i| 1 << i)
        };
        let catalog: Vec<(Mask, Arc<StoredCatalog>)> =
            catalog.into_iter().map(|(c, p)| (bit(&c), p)).collect();
        let deployments: Vec<(Mask, Arc<StoredDeployment>)> =
            deployments.into_iter().map(|(c, p)| (bit(&c), p)).collect();
        let tombstones: Vec<(Mask, LastServed, DateTime<Utc>)> = tombstones
            .into_iter()
            .map(|(c, t, at)| (bit(&c), t, at))
            .collect();
        let withheld = catalog.iter().filter(|(m, _)| *m == 0).count()
            + deployments.iter().filter(|(m, _)| *m == 0).count()
            + tombstones.iter().filter(|(m, _, _)| *m == 0).count();
        // Once per change of what is withheld, not on every change of the name.
        if withheld > 0 && previous.is_none_or(|p| p.withheld != withheld) {
            tracing::warn!(
                server = name,
                claim_sets = distinct,
                limit = MAX_GROUPS,
                withheld,
                "a server name's deployments and catalog entries carry more distinct \
                 authz-claims than one entry may have: the parts of the newest claim sets \
                 are served to no caller"
            );
        }
        let mut parts = Self {
            groups,
            catalog,
            deployments,
            tombstones,
            withheld,
            full: Arc::default(),
            cache: Mutex::default(),
        };
        let mut full = parts.merge(parts.every_group());
        if let Some(previous) = previous {
            reuse(&mut full.live, &previous.full.live);
            reuse(&mut full.deleted, &previous.full.deleted);
        }
        parts.full = Arc::new(full);
        Some(parts)
    }

    /// Whether `other` is made of the same parts (then nobody sees a change).
    pub fn same_parts(&self, other: &NameParts) -> bool {
        self.groups == other.groups
            && self.withheld == other.withheld
            && self.catalog == other.catalog
            && self.deployments == other.deployments
            && self.tombstones == other.tombstones
    }

    /// The merge of every group (what a caller who may see all of it sees).
    pub fn full(&self) -> &Arc<Merged> {
        &self.full
    }

    /// What `viewer` sees of the name; `None`: nothing (it does not exist
    /// for the viewer).
    pub fn seen_by(&self, viewer: &Viewer) -> Option<Arc<Merged>> {
        let mut mask: Mask = 0;
        for (i, group) in self.groups.iter().enumerate() {
            if viewer.sees(group.as_ref()) {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return None;
        }
        if mask == self.every_group() {
            return Some(self.full.clone());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Merging under the lock: callers of the same mask wait for the one
        // merge instead of each making it.
        Some(
            cache
                .entry(mask)
                .or_insert_with(|| Arc::new(self.merge(mask)))
                .clone(),
        )
    }

    fn every_group(&self) -> Mask {
        ((1u32 << self.groups.len()) - 1) as Mask
    }

    /// The entries the parts of the groups in `mask` make.
    fn merge(&self, mask: Mask) -> Merged {
        let catalog = self
            .catalog
            .iter()
            .filter(|(m, _)| m & mask != 0)
            .map(|(_, c)| &**c);
        let deployments = self
            .deployments
            .iter()
            .filter(|(m, _)| m & mask != 0)
            .map(|(_, d)| &**d);
        let live: BTreeMap<String, Arc<Entry>> = merge::merge_registry(catalog, deployments)
            .into_iter()
            .map(|r| (r.server.version.clone(), Arc::new(Entry::new(r))))
            .collect();
        let mut by_version: BTreeMap<&str, Vec<(&LastServed, DateTime<Utc>)>> = BTreeMap::new();
        for (_, last, at) in self.tombstones.iter().filter(|(m, _, _)| m & mask != 0) {
            if !live.contains_key(&last.version) {
                by_version
                    .entry(last.version.as_str())
                    .or_default()
                    .push((last, *at));
            }
        }
        let deleted = by_version
            .into_iter()
            .filter_map(|(version, tombstones)| {
                let (response, _) = deleted::deleted_entry(&tombstones)?;
                Some((version.to_owned(), Arc::new(Entry::new(response))))
            })
            .collect();
        Merged { live, deleted }
    }
}

/// Keeps `previous`'s allocation of each entry whose JSON did not change.
fn reuse(entries: &mut BTreeMap<String, Arc<Entry>>, previous: &BTreeMap<String, Arc<Entry>>) {
    for (version, entry) in entries.iter_mut() {
        if let Some(old) = previous.get(version)
            && old.json == entry.json
        {
            *entry = old.clone();
        }
    }
}

/// The changes that turn what a caller saw (`before`) into what it sees
/// (`after`), for the feed: removed versions, then new or changed entries.
pub fn diff<'a>(
    before: Option<&'a Merged>,
    after: Option<&'a Merged>,
) -> (Vec<&'a str>, Vec<&'a Arc<Entry>>) {
    static EMPTY: BTreeMap<String, Arc<Entry>> = BTreeMap::new();
    let old = before.map_or(&EMPTY, |m| &m.live);
    let new = after.map_or(&EMPTY, |m| &m.live);
    let removed = old
        .keys()
        .filter(|v| !new.contains_key(*v))
        .map(String::as_str)
        .collect();
    let changed = new
        .iter()
        .filter(|(v, e)| {
            old.get(*v)
                .is_none_or(|o| !Arc::ptr_eq(o, e) && o.json != e.json)
        })
        .map(|(_, e)| e)
        .collect();
    (removed, changed)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use herald_core::claims::parse_annotation;
    use herald_core::projection::{Fold, fold_applied};
    use herald_core::record::{DeploymentRecord, Phase, Remote, RemoteTransport};
    use herald_core::{Kind, ObjectRef};
    use serde_json::{Value, json};

    use super::*;

    fn deployment(cluster: &str, version: &str, claims: Option<&str>) -> Arc<StoredDeployment> {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        created_at(cluster, version, claims, at)
    }

    fn created_at(
        cluster: &str,
        version: &str,
        claims: Option<&str>,
        at: DateTime<Utc>,
    ) -> Arc<StoredDeployment> {
        let record = DeploymentRecord {
            v: 1,
            cluster: cluster.parse().unwrap(),
            registry: "default".parse().unwrap(),
            object: ObjectRef::new(Kind::MCPServer, "ns", "obj").unwrap(),
            uid: format!("u-{cluster}"),
            resource_version: "1".into(),
            generation: None,
            created_at: Some(at),
            observed_at: at,
            epoch: 1,
            server_name: "io.x/srv".parse().unwrap(),
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
            authz_claims: claims.map(|c| parse_annotation(c).unwrap().unwrap()),
            package: None,
            changed_at: None,
        };
        let Fold::Write(v) = fold_applied(None, &record, 1) else {
            unreachable!()
        };
        Arc::new(v)
    }

    fn parts(deployments: &[Arc<StoredDeployment>]) -> NameParts {
        NameParts::new(
            "io.x/srv",
            Vec::new(),
            deployments.to_vec(),
            Vec::new(),
            None,
        )
        .unwrap()
    }

    fn token(claims: Value) -> Viewer {
        Viewer::Token {
            claims: Arc::new(claims.as_object().unwrap().clone()),
            hide_unclaimed: true,
        }
    }

    fn remotes(merged: &Merged, version: &str) -> Vec<String> {
        merged.live[version]
            .response
            .server
            .remotes
            .iter()
            .map(|r| r.url.clone())
            .collect()
    }

    #[test]
    fn each_caller_sees_the_merge_of_the_parts_it_may_see() {
        let a = deployment("a", "1.0.0", Some(r#"{"team": "a"}"#));
        let b = deployment("b", "1.0.0", Some(r#"{"team": "b"}"#));
        let b2 = deployment("b2", "2.0.0", Some(r#"{"team": "b"}"#));
        let p = parts(&[a, b, b2]);
        let both = p.seen_by(&token(json!({"team": ["a", "b"]}))).unwrap();
        assert!(Arc::ptr_eq(&both, p.full()));
        assert_eq!(
            remotes(&both, "1.0.0"),
            ["https://a.example.com/mcp", "https://b.example.com/mcp"]
        );
        let only_a = p.seen_by(&token(json!({"team": "a"}))).unwrap();
        assert_eq!(remotes(&only_a, "1.0.0"), ["https://a.example.com/mcp"]);
        // isLatest is decided over what the caller sees.
        assert_eq!(only_a.live.len(), 1);
        assert!(only_a.live["1.0.0"].response.meta.official.is_latest);
        assert!(!both.live["1.0.0"].response.meta.official.is_latest);
        // A second look is the cached merge, not a new one.
        let again = p.seen_by(&token(json!({"team": "a"}))).unwrap();
        assert!(Arc::ptr_eq(&only_a, &again));
        assert!(p.seen_by(&token(json!({"team": "c"}))).is_none());
        assert!(p.seen_by(&Viewer::Anonymous).is_none());
    }

    #[test]
    fn claim_sets_beyond_the_limit_are_withheld_from_everyone() {
        let many: Vec<Arc<StoredDeployment>> = (0..MAX_GROUPS + 2)
            .map(|i| {
                deployment(
                    &format!("c{i:02}"),
                    "1.0.0",
                    Some(&format!(r#"{{"team": "t{i:02}"}}"#)),
                )
            })
            .collect();
        let p = parts(&many);
        assert_eq!(p.withheld, 2);
        assert_eq!(
            p.full().live["1.0.0"].response.server.remotes.len(),
            MAX_GROUPS
        );
        assert!(p.seen_by(&token(json!({"team": "t09"}))).is_none());
        assert!(p.seen_by(&token(json!({"team": "t00"}))).is_some());
    }

    #[test]
    fn newer_claim_sets_cannot_push_older_parts_out() {
        // The victim's deployment, then eight newer ones whose claim sets sort
        // first ("!" before any letter), as a co-owner of the name could add.
        let old = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut all = vec![created_at("victim", "1.0.0", Some(r#"{"team": "a"}"#), old)];
        for i in 0..MAX_GROUPS {
            let at = old + chrono::Duration::days(1 + i as i64);
            all.push(created_at(
                &format!("x{i}"),
                "1.0.0",
                Some(&format!(r#"{{"!": "{i}"}}"#)),
                at,
            ));
        }
        let p = parts(&all);
        assert_eq!(p.withheld, 1);
        let seen = p
            .seen_by(&token(json!({"team": "a"})))
            .expect("the victim's part");
        assert_eq!(remotes(&seen, "1.0.0"), ["https://victim.example.com/mcp"]);
        // The newest is the one withheld, whatever its claims say.
        assert!(p.seen_by(&token(json!({"!": "7"}))).is_none());
        assert!(p.seen_by(&token(json!({"!": "0"}))).is_some());
    }

    #[test]
    fn the_diff_names_what_changed_for_the_caller() {
        let a = deployment("a", "1.0.0", Some(r#"{"team": "a"}"#));
        let b = deployment("b", "1.0.0", Some(r#"{"team": "b"}"#));
        let before = parts(std::slice::from_ref(&a));
        let after = parts(&[a, b]);
        let viewer = token(json!({"team": "a"}));
        let (seen_before, seen_after) = (before.seen_by(&viewer), after.seen_by(&viewer));
        // A part the caller cannot see came: nothing changed for it.
        let (removed, changed) = diff(seen_before.as_deref(), seen_after.as_deref());
        assert!(removed.is_empty() && changed.is_empty());
        let other = token(json!({"team": "b"}));
        let (seen_before, seen_after) = (before.seen_by(&other), after.seen_by(&other));
        assert!(seen_before.is_none());
        let (removed, changed) = diff(None, seen_after.as_deref());
        assert!(removed.is_empty());
        assert_eq!(changed.len(), 1);
        let (removed, changed) = diff(seen_after.as_deref(), None);
        assert_eq!(removed, ["1.0.0"]);
        assert!(changed.is_empty());
    }
}

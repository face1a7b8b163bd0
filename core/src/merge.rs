//! The merge: stored deployments of one registry → `server.json` entries.
//!
//! Deployments with the same server name and version, in any namespace or
//! cluster, become one entry:
//!
//! - `remotes` is the union of their remotes, deduplicated by URL. Order and
//!   conflicts follow the *deployment order*: the oldest deployment first
//!   (by its object's creation time; one without a creation time last),
//!   then by cluster, namespace, kind, name. A URL's first deployment gives
//!   the remote type; headers are the union by header name, the first
//!   declaration of a name winning.
//! - Metadata conflicts are resolved by the same order: the first
//!   deployment's description wins, and each optional field (title, icon)
//!   comes from the first deployment that sets it. Stable whatever the order
//!   in which events arrived. Only owners of the name reach the merge (see
//!   [`crate::ownership`]), and among them the one that was there first
//!   speaks for the entry: a newcomer cannot take over its text by the way
//!   its cluster or namespace sorts (`aaa-…`), only by being older, which
//!   Kubernetes does not let it choose.
//! - `isLatest` marks one version per server name, the greatest by
//!   [`crate::version::compare`]: semver above non-semver, then by exact
//!   spelling (a total order, so independent of arrival order).
//! - `packages`: the deployments' container images ([`crate::package`]),
//!   deduplicated, in deployment order; a catalog entry's own packages come
//!   first, a deployed one is added when no package of the catalog has its
//!   registry type, identifier and version.
//! - The official `_meta` gives `publishedAt` (earliest creation) and
//!   `updatedAt` (latest change); Herald's `_meta` key lists the deployments.
//! - ToolHive's block, so that ToolHive's clients (`thv`, ToolHive Studio)
//!   read Herald's entries as they read their own registry server's: in
//!   `server._meta[publisher-provided]["io.github.stacklok"][<remote URL>]`,
//!   one per remote URL, from the first deployment of that URL: `status`,
//!   `metadata.kubernetes` (`kind`, `namespace`, `name`, `uid`, `image`,
//!   `transport`), `tools`, `tool_definitions` and `tags` (the category).
//!   Tool names and tags that ToolHive's schema would refuse (`tools`:
//!   `^[\w-]+$`; `tags`: `^[a-z0-9][a-z0-9_-]*[a-z0-9]$`) are left out of it
//!   (they stay in Herald's own `_meta`); a catalog entry's own block for a
//!   URL wins.
//! - Catalog entries ([`merge_registry`]): a catalog entry and the
//!   deployments of its name and version are one entry — the catalog's
//!   document, with the deployed remotes added after the catalog's own.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::catalog_record::CatalogRecord;
use crate::ids::{ClusterId, ServerName, SourceId};
use crate::object::Kind;
use crate::record::{DeploymentRecord, Header, Package, Phase, Remote};
use crate::stored::{StoredCatalog, StoredDeployment};

/// `$schema` of every emitted `server.json`.
pub const SERVER_SCHEMA_URL: &str =
    "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json";
/// The official registry's `_meta` key.
pub const OFFICIAL_META_KEY: &str = "io.modelcontextprotocol.registry/official";
/// Herald's own `_meta` key.
pub const HERALD_META_KEY: &str = "dev.herald";
/// The `server.json` `_meta` key of what the publisher says about a server.
pub const PUBLISHER_PROVIDED_KEY: &str = "io.modelcontextprotocol.registry/publisher-provided";
/// ToolHive's key inside [`PUBLISHER_PROVIDED_KEY`] (its fields: status,
/// tier, tools, tags, metadata…).
pub const TOOLHIVE_META_KEY: &str = "io.github.stacklok";

/// One entry of `GET /v0.1/servers`: a server version and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerResponse {
    pub server: ServerDetail,
    #[serde(rename = "_meta")]
    pub meta: ResponseMeta,
}

/// `server.json` as Herald emits it; fields it does not model (packages,
/// repository, …) travel in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerDetail {
    #[serde(rename = "$schema")]
    pub schema: String,
    pub name: ServerName,
    pub description: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icons: Vec<Icon>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<Remote>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icon {
    pub src: String,
    /// `mimeType`, `sizes`, `theme` of catalog icons, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMeta {
    #[serde(rename = "io.modelcontextprotocol.registry/official")]
    pub official: OfficialMeta,
    #[serde(
        rename = "dev.herald",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub herald: Option<HeraldMeta>,
    /// Other `_meta` keys a catalog source served beside the entry.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfficialMeta {
    pub status: String,
    pub published_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub is_latest: bool,
    /// When the status last changed: set on `deleted` entries only (see
    /// [`crate::deleted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_changed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeraldMeta {
    /// The live deployments behind the entry; each one's `url` is one of
    /// the entry's remotes, so these are the remotes that are deployed.
    pub deployments: Vec<DeploymentMeta>,
    /// The catalog sources that list the entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalogs: Vec<CatalogMeta>,
    /// Deployments another Herald reported for the entry, when a catalog
    /// source is another Herald's API (as it served them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<Value>,
}

impl HeraldMeta {
    /// Whether a deployment (here or in an upstream Herald) is live.
    pub fn has_live_deployment(&self) -> bool {
        !self.deployments.is_empty() || !self.upstream.is_empty()
    }
}

/// One catalog source that lists an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogMeta {
    pub source: SourceId,
    pub last_imported: DateTime<Utc>,
}

/// One live deployment behind an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentMeta {
    pub cluster: ClusterId,
    pub namespace: String,
    pub kind: Kind,
    pub name: String,
    pub phase: Phase,
    pub url: String,
    pub last_seen: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// The ToolHive group of the deployment (`spec.groupRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The deployments of one (server name, version), with their change times.
type Group<'a> = Vec<(&'a DeploymentRecord, DateTime<Utc>)>;

/// Merges the live deployments among `stored` (tombstones are ignored) into
/// entries sorted by server name, then version. Pass every deployment of a
/// server name, or `isLatest` cannot be decided.
pub fn merge<'a>(stored: impl IntoIterator<Item = &'a StoredDeployment>) -> Vec<ServerResponse> {
    merge_registry(std::iter::empty(), stored)
}

/// The catalog entries of one (server name, version), with their change times.
type Listed<'a> = Vec<(&'a CatalogRecord, DateTime<Utc>)>;

/// Merges catalog entries and deployments (tombstones of either are
/// ignored): a catalog entry and the deployments with its server name and
/// version become one entry — the catalog's metadata, and remotes = the
/// catalog's remotes ∪ the deployed remotes (by URL; the catalog's first).
/// When several sources list the same version, the first source by id
/// gives the metadata and the others add their remotes. A deployment whose
/// version no catalog lists is an entry of its own. `isLatest` is decided
/// over all versions. Pass everything of a server name.
pub fn merge_registry<'a>(
    catalog: impl IntoIterator<Item = &'a StoredCatalog>,
    stored: impl IntoIterator<Item = &'a StoredDeployment>,
) -> Vec<ServerResponse> {
    let mut groups: BTreeMap<(ServerName, String), (Listed<'a>, Group<'a>)> = BTreeMap::new();
    for c in catalog {
        if let Some(record) = c.live() {
            groups
                .entry((record.server_name.clone(), record.version.clone()))
                .or_default()
                .0
                .push((record, c.changed_at));
        }
    }
    for s in stored {
        if let Some(record) = s.live() {
            groups
                .entry((record.server_name.clone(), record.version.clone()))
                .or_default()
                .1
                .push((record, s.changed_at));
        }
    }
    let mut entries: Vec<ServerResponse> = groups
        .into_values()
        .filter_map(|(mut listed, mut group)| {
            group.sort_by(|(a, _), (b, _)| deployment_order(a, b));
            listed.sort_by(|(a, _), (b, _)| a.source.cmp(&b.source));
            let deployed = (!group.is_empty()).then(|| merge_group(&group));
            merge_listed(&listed, deployed)
        })
        .collect();
    mark_latest(&mut entries);
    entries
}

/// A string field of a catalog record's official `_meta`, read in place.
fn official<'a>(r: &'a CatalogRecord, field: &str) -> Option<&'a str> {
    r.meta
        .as_ref()?
        .get(OFFICIAL_META_KEY)?
        .get(field)?
        .as_str()
}

/// The catalog's view of an entry, with the deployed entry merged into it.
/// A catalog document that does not read as `server.json` (the importer
/// validated it, so only a hand-written bucket value) is left out.
fn merge_listed(listed: &Listed<'_>, deployed: Option<ServerResponse>) -> Option<ServerResponse> {
    let details: Vec<(&CatalogRecord, DateTime<Utc>, ServerDetail)> = listed
        .iter()
        .filter_map(|(r, changed)| {
            let detail = ServerDetail::deserialize(&r.server).ok()?;
            Some((*r, *changed, detail))
        })
        .collect();
    let Some((first, _, base)) = details.first() else {
        return deployed;
    };
    let mut server = base.clone();
    server.schema = SERVER_SCHEMA_URL.to_owned();
    for (_, _, other) in &details[1..] {
        for remote in &other.remotes {
            if !server.remotes.iter().any(|r| r.url == remote.url) {
                server.remotes.push(remote.clone());
            }
        }
    }
    let published = |r: &CatalogRecord, changed: DateTime<Utc>| {
        official(r, "publishedAt")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(changed, |t| t.with_timezone(&Utc))
    };
    let mut published_at = details
        .iter()
        .map(|(r, changed, _)| published(r, *changed))
        .min()
        .expect("details are not empty");
    let mut updated_at = details
        .iter()
        .map(|(_, changed, _)| *changed)
        .max()
        .expect("details are not empty");
    let mut extra = Map::new();
    let mut upstream = Vec::new();
    for (r, _, _) in &details {
        let Some(meta) = r.meta.as_ref().and_then(Value::as_object) else {
            continue;
        };
        for (key, value) in meta {
            match key.as_str() {
                OFFICIAL_META_KEY => {}
                HERALD_META_KEY => upstream.extend(
                    value["deployments"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .cloned(),
                ),
                _ => {
                    extra.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
        }
    }
    let mut deployments = Vec::new();
    if let Some(deployed) = deployed {
        for remote in deployed.server.remotes {
            match server.remotes.iter_mut().find(|r| r.url == remote.url) {
                Some(existing) => merge_headers(&mut existing.headers, &remote.headers),
                None => server.remotes.push(remote),
            }
        }
        add_toolhive_blocks(&mut server.extra, &deployed.server.extra);
        add_packages(&mut server.extra, &deployed.server.extra);
        if server.title.is_none() {
            server.title = deployed.server.title;
        }
        if server.icons.is_empty() {
            server.icons = deployed.server.icons;
        }
        published_at = published_at.min(deployed.meta.official.published_at);
        updated_at = updated_at.max(deployed.meta.official.updated_at);
        deployments = deployed
            .meta
            .herald
            .map(|h| h.deployments)
            .unwrap_or_default();
    }
    Some(ServerResponse {
        server,
        meta: ResponseMeta {
            official: OfficialMeta {
                status: official(first, "status").unwrap_or("active").to_owned(),
                published_at: published_at.min(updated_at),
                updated_at,
                is_latest: false,
                status_changed_at: None,
            },
            herald: Some(HeraldMeta {
                deployments,
                catalogs: details
                    .iter()
                    .map(|(r, changed, _)| CatalogMeta {
                        source: r.source.clone(),
                        last_imported: *changed,
                    })
                    .collect(),
                upstream,
            }),
            extra,
        },
    })
}

fn deployment_order(a: &DeploymentRecord, b: &DeploymentRecord) -> Ordering {
    // `None` (no creation time) after every time.
    let age = |r: &DeploymentRecord| (r.created_at.is_none(), r.created_at);
    age(a)
        .cmp(&age(b))
        .then_with(|| deployment_identity(a).cmp(&deployment_identity(b)))
}

fn deployment_identity(r: &DeploymentRecord) -> (&ClusterId, &str, Kind, &str) {
    (
        &r.cluster,
        r.object.namespace(),
        r.object.kind(),
        r.object.name(),
    )
}

fn merge_group(group: &[(&DeploymentRecord, DateTime<Utc>)]) -> ServerResponse {
    let (first, _) = group[0];
    let mut remotes: Vec<Remote> = Vec::new();
    for (record, _) in group {
        match remotes.iter_mut().find(|r| r.url == record.remote.url) {
            Some(existing) => merge_headers(&mut existing.headers, &record.remote.headers),
            None => remotes.push(record.remote.clone()),
        }
    }
    let published_at = group
        .iter()
        .map(|(r, changed)| r.created_at.unwrap_or(*changed))
        .min()
        .expect("groups are never empty");
    let updated_at = group
        .iter()
        .map(|(_, changed)| *changed)
        .max()
        .expect("groups are never empty");
    ServerResponse {
        server: ServerDetail {
            schema: SERVER_SCHEMA_URL.to_owned(),
            name: first.server_name.clone(),
            description: first.description.clone(),
            version: first.version.clone(),
            title: group.iter().find_map(|(r, _)| r.title.clone()),
            icons: group
                .iter()
                .find_map(|(r, _)| r.icon.clone())
                .map(|src| {
                    vec![Icon {
                        src,
                        extra: Map::new(),
                    }]
                })
                .unwrap_or_default(),
            remotes,
            extra: {
                let mut extra = toolhive_meta(group);
                let packages = packages(group);
                if !packages.is_empty() {
                    extra.insert("packages".to_owned(), json!(packages));
                }
                extra
            },
        },
        meta: ResponseMeta {
            official: OfficialMeta {
                status: "active".to_owned(),
                published_at: published_at.min(updated_at),
                updated_at,
                is_latest: false,
                status_changed_at: None,
            },
            herald: Some(HeraldMeta {
                deployments: group
                    .iter()
                    .map(|(r, _)| DeploymentMeta {
                        cluster: r.cluster.clone(),
                        namespace: r.object.namespace().to_owned(),
                        kind: r.object.kind(),
                        name: r.object.name().to_owned(),
                        phase: r.phase.clone(),
                        url: r.remote.url.clone(),
                        last_seen: r.observed_at,
                        category: r.category.clone(),
                        tools: r.tools.clone(),
                        group: r.group.clone(),
                    })
                    .collect(),
                catalogs: Vec::new(),
                upstream: Vec::new(),
            }),
            extra: Map::new(),
        },
    }
}

/// The packages of a group's deployments, deduplicated, in deployment order.
fn packages<'a>(group: &[(&'a DeploymentRecord, DateTime<Utc>)]) -> Vec<&'a Package> {
    let mut packages: Vec<&Package> = Vec::new();
    for &(r, _) in group {
        if let Some(p) = &r.package
            && !packages.contains(&p)
        {
            packages.push(p);
        }
    }
    packages
}

/// Adds the deployed packages of `from` to `into`'s `packages`, those with
/// a (registryType, identifier, version) `into` does not list yet.
fn add_packages(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    let Some(Value::Array(deployed)) = from.get("packages") else {
        return;
    };
    let list = into
        .entry("packages")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = list.as_array_mut() else {
        return; // a catalog document's own value, left as it is
    };
    let key = |p: &Value| {
        (
            p.get("registryType").cloned(),
            p.get("identifier").cloned(),
            p.get("version").cloned(),
        )
    };
    for p in deployed {
        if !list.iter().any(|existing| key(existing) == key(p)) {
            list.push(p.clone());
        }
    }
}

/// `server.json` fields holding ToolHive's blocks of a group: `_meta` with
/// one block per remote URL (module docs).
fn toolhive_meta(group: &[(&DeploymentRecord, DateTime<Utc>)]) -> Map<String, Value> {
    let mut blocks = Map::new();
    for (r, _) in group {
        blocks
            .entry(r.remote.url.clone())
            .or_insert_with(|| toolhive_block(r));
    }
    let mut extra = Map::new();
    extra.insert(
        "_meta".to_owned(),
        json!({ PUBLISHER_PROVIDED_KEY: { TOOLHIVE_META_KEY: blocks } }),
    );
    extra
}

/// ToolHive's `ServerExtensions` for one deployment.
fn toolhive_block(r: &DeploymentRecord) -> Value {
    let word = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    };
    let tag = |s: &str| {
        word(s)
            && !s.contains(|c: char| c.is_ascii_uppercase())
            && !s.starts_with(['_', '-'])
            && !s.ends_with(['_', '-'])
            && s.len() >= 2
    };
    let mut kubernetes = Map::new();
    kubernetes.insert("kind".to_owned(), json!(r.object.kind().as_str()));
    kubernetes.insert("namespace".to_owned(), json!(r.object.namespace()));
    kubernetes.insert("name".to_owned(), json!(r.object.name()));
    kubernetes.insert("uid".to_owned(), json!(r.uid));
    if let Some(image) = &r.image {
        kubernetes.insert("image".to_owned(), json!(image));
    }
    kubernetes.insert("transport".to_owned(), json!(r.transport));
    let mut block = Map::new();
    block.insert("status".to_owned(), json!("active"));
    block.insert("metadata".to_owned(), json!({ "kubernetes": kubernetes }));
    let tools: Vec<&String> = r.tools.iter().filter(|t| word(t)).collect();
    if !tools.is_empty() {
        block.insert("tools".to_owned(), json!(tools));
    }
    if !r.tool_definitions.is_empty() {
        block.insert("tool_definitions".to_owned(), json!(r.tool_definitions));
    }
    if let Some(category) = r.category.as_deref().filter(|c| tag(c)) {
        block.insert("tags".to_owned(), json!([category]));
    }
    Value::Object(block)
}

/// Adds ToolHive's blocks of `from` (a `server.json`'s fields) to `into`,
/// for remote URLs `into` has no block for.
fn add_toolhive_blocks(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    let Some(Value::Object(blocks)) = from
        .get("_meta")
        .and_then(|m| m.get(PUBLISHER_PROVIDED_KEY))
        .and_then(|p| p.get(TOOLHIVE_META_KEY))
    else {
        return;
    };
    let meta = into
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return; // a catalog `_meta` that is not an object: left as it is
    };
    let provided = meta
        .entry(PUBLISHER_PROVIDED_KEY)
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(provided) = provided.as_object_mut() else {
        return;
    };
    let toolhive = provided
        .entry(TOOLHIVE_META_KEY)
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(toolhive) = toolhive.as_object_mut() else {
        return;
    };
    for (url, block) in blocks {
        toolhive.entry(url.clone()).or_insert_with(|| block.clone());
    }
}

fn merge_headers(into: &mut Vec<Header>, from: &[Header]) {
    for h in from {
        if !into
            .iter()
            .any(|existing| existing.name.eq_ignore_ascii_case(&h.name))
        {
            into.push(h.clone());
        }
    }
}

/// Sets `isLatest` on exactly one entry per server name. Entries arrive
/// sorted by name, so each name's versions are adjacent.
fn mark_latest(entries: &mut [ServerResponse]) {
    for group in entries.chunk_by_mut(|a, b| a.server.name == b.server.name) {
        let latest = (0..group.len())
            .max_by(|&i, &j| {
                let (a, b) = (&group[i], &group[j]);
                crate::version::compare(&a.server.version, &b.server.version)
            })
            .expect("chunks are never empty");
        for (i, entry) in group.iter_mut().enumerate() {
            entry.meta.official.is_latest = i == latest;
        }
    }
}

//! The merge: stored deployments of one registry → `server.json` entries.
//!
//! Deployments with the same server name and version, in any namespace or
//! cluster, become one entry:
//!
//! - `remotes` is the union of their remotes, deduplicated by URL. Order and
//!   conflicts follow the *deployment order*: by cluster, namespace, kind,
//!   name. A URL's first deployment gives the remote type; headers are the
//!   union by header name, the first declaration of a name winning.
//! - Metadata conflicts are resolved by the same order: the first
//!   deployment's description wins, and each optional field (title, icon)
//!   comes from the first deployment that sets it. Stable whatever the order
//!   in which events arrived, and independent of timing.
//! - `isLatest` marks one version per server name: the highest semver;
//!   versions that are not semver rank below any semver version, and among
//!   themselves by last update, then by text.
//! - The official `_meta` gives `publishedAt` (earliest creation) and
//!   `updatedAt` (latest change); Herald's `_meta` key lists the deployments.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ClusterId, ServerName};
use crate::object::Kind;
use crate::projection::StoredDeployment;
use crate::record::{DeploymentRecord, Header, Phase, Remote};

/// `$schema` of every emitted `server.json`.
pub const SERVER_SCHEMA: &str =
    "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json";
/// The official registry's `_meta` key.
pub const OFFICIAL_META_KEY: &str = "io.modelcontextprotocol.registry/official";
/// Herald's own `_meta` key.
pub const HERALD_META_KEY: &str = "dev.herald";

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfficialMeta {
    pub status: String,
    pub published_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub is_latest: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeraldMeta {
    pub deployments: Vec<DeploymentMeta>,
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
}

/// The deployments of one (server name, version), with their change times.
type Group<'a> = Vec<(&'a DeploymentRecord, DateTime<Utc>)>;

/// Merges the live deployments among `stored` (tombstones are ignored) into
/// entries sorted by server name, then version. Pass every deployment of a
/// server name, or `isLatest` cannot be decided.
pub fn merge<'a>(stored: impl IntoIterator<Item = &'a StoredDeployment>) -> Vec<ServerResponse> {
    let mut groups: BTreeMap<(ServerName, String), Group<'a>> = BTreeMap::new();
    for s in stored {
        if let Some(record) = s.live() {
            groups
                .entry((record.server_name.clone(), record.version.clone()))
                .or_default()
                .push((record, s.changed_at));
        }
    }
    let mut entries: Vec<ServerResponse> = groups
        .into_values()
        .map(|mut group| {
            group.sort_by(|(a, _), (b, _)| deployment_order(a, b));
            merge_group(&group)
        })
        .collect();
    mark_latest(&mut entries);
    entries
}

fn deployment_order(a: &DeploymentRecord, b: &DeploymentRecord) -> Ordering {
    (
        &a.cluster,
        a.object.namespace(),
        a.object.kind(),
        a.object.name(),
    )
        .cmp(&(
            &b.cluster,
            b.object.namespace(),
            b.object.kind(),
            b.object.name(),
        ))
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
            schema: SERVER_SCHEMA.to_owned(),
            name: first.server_name.clone(),
            description: first.description.clone(),
            version: first.version.clone(),
            title: group.iter().find_map(|(r, _)| r.title.clone()),
            icons: group
                .iter()
                .find_map(|(r, _)| r.icon.clone())
                .map(|src| vec![Icon { src }])
                .unwrap_or_default(),
            remotes,
            extra: Map::new(),
        },
        meta: ResponseMeta {
            official: OfficialMeta {
                status: "active".to_owned(),
                published_at: published_at.min(updated_at),
                updated_at,
                is_latest: false,
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
                    })
                    .collect(),
            }),
        },
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

/// Orders versions of one server: greater is later.
pub fn compare_versions(
    a: &str,
    a_updated: DateTime<Utc>,
    b: &str,
    b_updated: DateTime<Utc>,
) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a_updated.cmp(&b_updated).then_with(|| a.cmp(b)),
    }
}

/// Sets `isLatest` on exactly one entry per server name. Entries arrive
/// sorted by name, so each name's versions are adjacent.
pub fn mark_latest(entries: &mut [ServerResponse]) {
    for group in entries.chunk_by_mut(|a, b| a.server.name == b.server.name) {
        let latest = (0..group.len())
            .max_by(|&i, &j| {
                let (a, b) = (&group[i], &group[j]);
                compare_versions(
                    &a.server.version,
                    a.meta.official.updated_at,
                    &b.server.version,
                    b.meta.official.updated_at,
                )
            })
            .expect("chunks are never empty");
        for (i, entry) in group.iter_mut().enumerate() {
            entry.meta.official.is_latest = i == latest;
        }
    }
}

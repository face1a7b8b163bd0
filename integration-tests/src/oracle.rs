//! The convergence oracle: what `herald-api` must serve, computed with
//! `herald-core` from the objects in the Kubernetes API servers, compared
//! with what it does serve. Nothing lost (every expected entry is served,
//! with every remote) and nothing phantom (nothing else is served).
//!
//! Timestamps and bookkeeping are left out of the comparison: they depend on
//! when events were observed, not on what is deployed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::Utc;
use herald_core::mapping::{Decision, Observation, decide};
use herald_core::merge::{ServerResponse, merge};
use herald_core::projection::{Fold, fold_applied};
use herald_core::{Kind, RegistryName, WatcherPolicy};
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use crate::objects;
use crate::timeout::eventually;

/// One cluster as the oracle sees it: its API and its watcher's policy.
pub struct ClusterUnderTest {
    pub client: kube::Client,
    pub policy: WatcherPolicy,
}

impl ClusterUnderTest {
    /// Each cluster (its API server and its id) under the watchers' default policy.
    pub fn each(kubes: &[crate::kube::KubeApi], clusters: &[String]) -> Vec<Self> {
        kubes
            .iter()
            .zip(clusters)
            .map(|(kube, cluster)| ClusterUnderTest {
                client: kube.client(),
                policy: WatcherPolicy::new(
                    cluster
                        .parse::<herald_core::ClusterId>()
                        .expect("cluster names given to the builder are valid"),
                ),
            })
            .collect()
    }
}

impl std::fmt::Debug for ClusterUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterUnderTest")
            .field("cluster", &self.policy.cluster)
            .finish_non_exhaustive()
    }
}

/// What matters of one served entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub title: Option<String>,
    pub is_latest: bool,
    /// (type, url, header names) of each remote.
    pub remotes: BTreeSet<(String, String, Vec<String>)>,
    /// (cluster, namespace, kind, name) of each deployment behind it.
    pub deployments: BTreeSet<(String, String, String, String)>,
}

/// Registry → its entries.
pub type View = BTreeMap<RegistryName, BTreeSet<EntryView>>;

impl EntryView {
    /// What matters of one served entry (a `ServerResponse` as JSON).
    pub fn from_json(entry: &Value) -> anyhow::Result<Self> {
        let server = &entry["server"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let remotes = server["remotes"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let headers = r["headers"]
                            .as_array()
                            .map(|hs| hs.iter().filter_map(|h| text(&h["name"])).collect())
                            .unwrap_or_default();
                        (
                            text(&r["type"]).unwrap_or_default(),
                            text(&r["url"]).unwrap_or_default(),
                            headers,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let deployments = entry["_meta"]["dev.herald"]["deployments"]
            .as_array()
            .map(|ds| {
                ds.iter()
                    .map(|d| {
                        let s = |k: &str| text(&d[k]).unwrap_or_default();
                        (s("cluster"), s("namespace"), s("kind"), s("name"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(EntryView {
            name: text(&server["name"]).context("entry without server.name")?,
            version: text(&server["version"]).context("entry without server.version")?,
            description: text(&server["description"]).unwrap_or_default(),
            title: text(&server["title"]),
            is_latest: entry["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"]
                .as_bool()
                .unwrap_or(false),
            remotes,
            deployments,
        })
    }

    fn from_response(entry: &ServerResponse) -> Self {
        Self::from_json(&serde_json::to_value(entry).expect("responses serialize"))
            .expect("merged entries have a name and version")
    }
}

/// The view `herald-api` must serve for these clusters, computed with core.
pub async fn expected_view(clusters: &[ClusterUnderTest]) -> anyhow::Result<View> {
    let seen = Observation {
        observed_at: Utc::now(),
        epoch: 0,
    };
    let mut stored = Vec::new();
    for cluster in clusters {
        for kind in Kind::ALL {
            let api: Api<DynamicObject> =
                Api::all_with(cluster.client.clone(), &objects::resource(kind));
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                // The kind's CRD is not installed (or was deleted): none of it.
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(err) => return Err(err).with_context(|| format!("listing {kind}")),
            };
            for object in list.items {
                let json = serde_json::to_value(&object)?;
                if let Decision::Advertise(record) = decide(kind, &json, &cluster.policy, seen)
                    && let Fold::Write(s) = fold_applied(None, &record, 1)
                {
                    stored.push(s);
                }
            }
        }
    }
    let mut by_registry: BTreeMap<RegistryName, Vec<_>> = BTreeMap::new();
    for s in stored {
        let registry = s.live().expect("just applied").registry.clone();
        by_registry.entry(registry).or_default().push(s);
    }
    Ok(by_registry
        .into_iter()
        .map(|(registry, stored)| {
            (
                registry,
                merge(&stored)
                    .iter()
                    .map(EntryView::from_response)
                    .collect(),
            )
        })
        .collect())
}

/// Every entry `herald-api` at `base` serves for `registries` (walking all pages).
pub async fn served_view(base: &str, registries: &BTreeSet<RegistryName>) -> anyhow::Result<View> {
    let http = reqwest::Client::new();
    let mut view = View::new();
    for registry in registries {
        let mut entries = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = http
                .get(format!("{base}/registry/{registry}/v0.1/servers"))
                .query(&[("limit", "100")]);
            if let Some(c) = &cursor {
                request = request.query(&[("cursor", c)]);
            }
            let response = request.send().await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                break; // a registry with nothing in it yet
            }
            let page: Value = response.error_for_status()?.json().await?;
            for entry in page["servers"].as_array().context("no servers array")? {
                entries.insert(EntryView::from_json(entry)?);
            }
            cursor = page["metadata"]["nextCursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        if !entries.is_empty() {
            view.insert(registry.clone(), entries);
        }
    }
    Ok(view)
}

/// What a convergence check compared, for the test's report.
#[derive(Debug, Clone, Copy)]
pub struct Converged {
    pub registries: usize,
    pub entries: usize,
}

/// Waits until `herald-api` at `base` serves exactly what the clusters say.
/// `registries` should name every registry any object could target, so that
/// phantom entries in a registry that should be empty are caught too.
pub async fn assert_converges(
    timeout: Duration,
    clusters: &[ClusterUnderTest],
    base: &str,
    registries: &BTreeSet<RegistryName>,
) -> anyhow::Result<Converged> {
    let last = std::sync::Mutex::new((View::new(), View::new()));
    let result = eventually(timeout, "the API to serve what the clusters hold", || {
        let last = &last;
        async move {
            let expected = expected_view(clusters).await?;
            let mut all = registries.clone();
            all.extend(expected.keys().cloned());
            let served = served_view(base, &all).await?;
            let converged = (expected == served).then(|| Converged {
                registries: expected.len(),
                entries: expected.values().map(BTreeSet::len).sum(),
            });
            *last.lock().unwrap_or_else(|e| e.into_inner()) = (expected, served);
            Ok(converged)
        }
    })
    .await;
    match result {
        Ok(c) => Ok(c),
        Err(err) => {
            let (expected, served) = &*last.lock().unwrap_or_else(|e| e.into_inner());
            Err(anyhow!(
                "{err}\nlost (expected, not served): {:#?}\nphantom (served, not expected): {:#?}",
                diff(expected, served),
                diff(served, expected)
            ))
        }
    }
}

fn diff<'a>(a: &'a View, b: &View) -> Vec<(&'a RegistryName, &'a EntryView)> {
    a.iter()
        .flat_map(|(r, entries)| entries.iter().map(move |e| (r, e)))
        .filter(|(r, e)| !b.get(r).is_some_and(|entries| entries.contains(e)))
        .collect()
}

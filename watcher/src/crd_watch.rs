//! Wakes a kind's watch when its `CustomResourceDefinition` appears, changes
//! or goes, so that a ToolHive operator installed after the watcher (or a
//! kind it adds later) is watched within seconds.
//!
//! Only object metadata is watched (CRD schemas are large, and a cluster
//! has many CRDs; only the names are needed). The kind watch then asks
//! discovery which version is served. Reading CRDs needs `get`, `list` and
//! `watch` on `customresourcedefinitions` (apiextensions.k8s.io); without
//! them — an install whose RBAC predates this — the watcher says so once and
//! falls back to looking again every `--kind-recheck-interval`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt as _;
use herald_core::object::{Kind, TOOLHIVE_GROUP};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One wake-up per kind; a wake-up sent while nobody waits is kept.
#[derive(Debug, Clone, Default)]
pub struct Wakers(Arc<HashMap<Kind, Arc<Notify>>>);

impl Wakers {
    pub fn new() -> Self {
        Wakers(Arc::new(
            Kind::ALL
                .into_iter()
                .map(|k| (k, Arc::new(Notify::new())))
                .collect(),
        ))
    }

    /// The wake-up of `kind`'s watch.
    pub fn of(&self, kind: Kind) -> Arc<Notify> {
        self.0.get(&kind).cloned().unwrap_or_default()
    }

    fn wake(&self, crd_name: &str) {
        let kind = Kind::ALL.into_iter().find(|k| crd_name == crd_name_of(*k));
        if let Some(kind) = kind {
            tracing::debug!(%kind, crd = crd_name, "its CRD changed; looking for it now");
            self.of(kind).notify_one();
        }
    }
}

/// The name of a kind's CRD: `<plural>.<group>`.
pub fn crd_name_of(kind: Kind) -> String {
    format!("{}.{TOOLHIVE_GROUP}", kind.plural())
}

/// Watches CRD metadata until `shutdown`, waking the kind of each change.
pub async fn run(client: kube::Client, wakers: Wakers, shutdown: CancellationToken) {
    // Metadata-only requests (`PartialObjectMeta`).
    let api: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut failing = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            next = events.next() => match next {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            Ok(Event::Apply(crd) | Event::InitApply(crd) | Event::Delete(crd)) => {
                failing = false;
                if let Some(name) = crd.metadata.name.as_deref() {
                    wakers.wake(name);
                }
            }
            Ok(Event::Init | Event::InitDone) => failing = false,
            Err(err) => {
                if !failing {
                    tracing::warn!(
                        "cannot watch CustomResourceDefinitions ({err}); a ToolHive kind installed later is found by the periodic re-check only (grant get, list, watch on customresourcedefinitions)"
                    );
                }
                failing = true;
            }
        }
    }
}

//! Every registry the API knows: one [`RegistryView`] per `herald-<registry>`
//! bucket, plus the default registry (served even before its bucket exists),
//! and whether each known bucket has been loaded (readiness).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use herald_core::RegistryName;
use herald_runtime::health::Readiness;
use tokio_util::sync::CancellationToken;

use crate::view::{Bounds, RegistryView};

/// The readiness condition this crate declares.
pub const READY_CONDITION: &str = "buckets";

/// A shared, lockable view (locks are never held across an await).
#[derive(Debug, Clone)]
pub struct SharedView(Arc<RwLock<RegistryView>>);

impl SharedView {
    pub fn read(&self) -> RwLockReadGuard<'_, RegistryView> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, RegistryView> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct BucketState {
    loaded: bool,
    /// Stops the bucket's watcher.
    watch: CancellationToken,
}

#[derive(Debug, Default)]
struct Known {
    views: BTreeMap<RegistryName, SharedView>,
    /// Registries whose bucket has been found.
    buckets: BTreeMap<RegistryName, BucketState>,
    discovered_once: bool,
}

#[derive(Debug, Clone)]
pub struct Registries {
    known: Arc<RwLock<Known>>,
    default: RegistryName,
    bounds: Bounds,
    readiness: Readiness,
}

impl Registries {
    pub fn new(default: RegistryName, bounds: Bounds, readiness: Readiness) -> Self {
        readiness.register(READY_CONDITION, "buckets not listed yet");
        let registries = Self {
            known: Arc::default(),
            default: default.clone(),
            bounds,
            readiness,
        };
        let view = registries.fresh_view();
        registries.write().views.insert(default, view);
        registries
    }

    pub fn default_registry(&self) -> &RegistryName {
        &self.default
    }

    fn read(&self) -> RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The view of a registry the API serves, if any.
    pub fn get(&self, registry: &RegistryName) -> Option<SharedView> {
        self.read().views.get(registry).cloned()
    }

    /// Records a found bucket; when it is new, returns its view and the
    /// token that stops its watcher.
    pub fn found_bucket(
        &self,
        registry: &RegistryName,
        stop: &CancellationToken,
    ) -> Option<(SharedView, CancellationToken)> {
        let mut known = self.write();
        if known.buckets.contains_key(registry) {
            return None;
        }
        let watch = stop.child_token();
        known.buckets.insert(
            registry.clone(),
            BucketState {
                loaded: false,
                watch: watch.clone(),
            },
        );
        let view = known
            .views
            .entry(registry.clone())
            .or_insert_with(|| self.fresh_view())
            .clone();
        drop(known);
        self.update_readiness();
        Some((view, watch))
    }

    fn fresh_view(&self) -> SharedView {
        SharedView(Arc::new(RwLock::new(RegistryView::new(self.bounds))))
    }

    /// Forgets the buckets a complete listing no longer shows: their watchers
    /// stop, their views leave service (subscribers are disconnected, and a
    /// bucket created again later starts a new view: revisions restart).
    pub fn retain_buckets(&self, listed: &BTreeSet<RegistryName>) -> Vec<RegistryName> {
        let mut known = self.write();
        let gone: Vec<RegistryName> = known
            .buckets
            .keys()
            .filter(|r| !listed.contains(*r))
            .cloned()
            .collect();
        for registry in &gone {
            if let Some(state) = known.buckets.remove(registry) {
                state.watch.cancel();
            }
            if let Some(view) = known.views.remove(registry) {
                view.read().close();
            }
            if *registry == self.default {
                let fresh = self.fresh_view();
                known.views.insert(registry.clone(), fresh);
            }
        }
        drop(known);
        self.update_readiness();
        gone
    }

    pub fn loaded(&self, registry: &RegistryName) {
        if let Some(state) = self.write().buckets.get_mut(registry) {
            state.loaded = true;
        }
        self.update_readiness();
    }

    pub fn listed(&self) {
        self.write().discovered_once = true;
        self.update_readiness();
    }

    fn update_readiness(&self) {
        let known = self.read();
        let loading: Vec<String> = known
            .buckets
            .iter()
            .filter(|(_, state)| !state.loaded)
            .map(|(r, _)| r.to_string())
            .collect();
        if !known.discovered_once {
            self.readiness
                .set_not_ready(READY_CONDITION, "buckets not listed yet");
        } else if loading.is_empty() {
            self.readiness.set_ready(READY_CONDITION);
        } else {
            self.readiness.set_not_ready(
                READY_CONDITION,
                format!("loading registries: {}", loading.join(", ")),
            );
        }
    }
}

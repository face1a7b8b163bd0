//! The registry buckets rebuilt in memory from the event history: what
//! `replay` folds the stream into, one event at a time and with no round
//! trip, before it compares the result with the live buckets.

use std::collections::{BTreeMap, HashMap};

use herald_core::names::DeploymentKey;
use herald_core::{Event, EventData, RegistryName};

use crate::fold;
use herald_core::stored::StoredValue;
use herald_runtime::buckets::Item;

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folding {
    /// It changed a key, or it was a completed resync (which sweeps).
    Applied,
    /// It was older than what is held, or a duplicate.
    Stale,
    /// It contradicts what is held (`run` dead-letters it).
    Refused,
    /// It concerns no registry being rebuilt (another registry, cluster
    /// liveness).
    Ignored,
}

/// Every registry's keys, as `run` would have written them.
#[derive(Debug)]
pub struct Rebuild {
    /// Only this registry, when set.
    only: Option<RegistryName>,
    /// Hashed, not ordered: looked up once per event, listed in order once.
    registries: BTreeMap<RegistryName, HashMap<String, StoredValue>>,
}

impl Rebuild {
    pub fn new(only: Option<RegistryName>) -> Self {
        Self {
            only,
            registries: BTreeMap::new(),
        }
    }

    /// Folds `event`, found at stream sequence `seq`.
    pub fn apply(&mut self, event: &Event, seq: u64) -> Folding {
        if let Some((registry, key, _)) = fold::slot(event) {
            if self.only.as_ref().is_some_and(|only| only != registry) {
                return Folding::Ignored;
            }
            let keys = self.registries.entry(registry.clone()).or_default();
            return match fold::fold(event, seq, keys.get(&key)) {
                fold::Folded::Write(next) => {
                    keys.insert(key, next);
                    Folding::Applied
                }
                fold::Folded::Stale => Folding::Stale,
                fold::Folded::Refused(_) => Folding::Refused,
            };
        }
        // Cluster liveness is not rebuilt (it lives in no registry bucket);
        // a completed resync sweeps what its re-list did not confirm.
        let EventData::ResyncCompleted(resync) = &event.data else {
            return Folding::Ignored;
        };
        let prefix = DeploymentKey::prefix(&resync.cluster, resync.kind);
        for keys in self.registries.values_mut() {
            // Sweeps are rare (a watcher's re-list); a full pass is cheap.
            for (_, value) in keys.iter_mut().filter(|(key, _)| key.starts_with(&prefix)) {
                if let Some(tombstone) = fold::sweep(value, resync, seq, event.time) {
                    *value = tombstone;
                }
            }
        }
        Folding::Applied
    }

    /// The registries rebuilt (every one has a key: a first event always
    /// writes).
    pub fn registries(&self) -> impl Iterator<Item = &RegistryName> {
        self.registries.keys()
    }

    /// A registry's keys in key order, as bucket items; the revision is the
    /// stream sequence each value comes from.
    pub fn items(&self, registry: &RegistryName) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .registries
            .get(registry)
            .into_iter()
            .flatten()
            .map(|(key, value)| Item {
                key: key.clone(),
                value: value.to_json().into(),
                revision: value.seq(),
            })
            .collect();
        items.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        items
    }
}

//! The registry buckets rebuilt in memory from the event history: what
//! `replay` folds the stream into, one event at a time and with no round
//! trip, before it compares the result with the live buckets.

use std::collections::{BTreeMap, HashMap};

use herald_core::names::DeploymentKey;
use herald_core::{Event, EventData, RegistryName};

use crate::buckets::Item;
use crate::fold::{self, Stored};

/// What folding one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folding {
    /// The event changed a key (or, for a resync, swept some).
    pub applied: bool,
    /// The event was older than what is held, or a duplicate.
    pub stale: bool,
    /// Tombstones written by a sweep.
    pub swept: usize,
}

/// Every registry's keys, as `run` would have written them.
#[derive(Debug, Default)]
pub struct Rebuild {
    /// Only this registry, when set.
    only: Option<RegistryName>,
    /// Hashed, not ordered: looked up once per event, listed in order once.
    registries: BTreeMap<RegistryName, HashMap<String, Stored>>,
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
                return Folding::default();
            }
            let keys = self.registries.entry(registry.clone()).or_default();
            let current = keys.get(&key);
            return match fold::fold(event, seq, current) {
                Some(next) => {
                    keys.insert(key, next);
                    Folding {
                        applied: true,
                        ..Folding::default()
                    }
                }
                None => Folding {
                    stale: true,
                    ..Folding::default()
                },
            };
        }
        // Cluster liveness is not rebuilt (it lives in no registry bucket);
        // a completed resync sweeps what its re-list did not confirm.
        let EventData::ResyncCompleted(resync) = &event.data else {
            return Folding::default();
        };
        let prefix = DeploymentKey::prefix(&resync.cluster, resync.kind);
        let mut swept = 0;
        for keys in self.registries.values_mut() {
            // Sweeps are rare (a watcher's re-list); a full pass is cheap.
            for (_, value) in keys.iter_mut().filter(|(key, _)| key.starts_with(&prefix)) {
                if let Some(tombstone) = fold::sweep(value, resync, seq, event.time) {
                    *value = tombstone;
                    swept += 1;
                }
            }
        }
        Folding {
            applied: true,
            stale: false,
            swept,
        }
    }

    /// The registries that have at least one key.
    pub fn registries(&self) -> impl Iterator<Item = &RegistryName> {
        self.registries
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(registry, _)| registry)
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

//! One key's events folded into its value: which key a deployment or catalog
//! event belongs to, and what the key holds after it. `run` folds onto
//! bucket bytes under compare-and-set and `replay` onto values held in
//! memory, both through [`fold`], so the two cannot disagree. The rules
//! themselves are `herald_core::projection`'s.

use chrono::{DateTime, Utc};
use herald_core::event::Resync;
use herald_core::names::{CatalogKey, DeploymentKey, KeyKind};
use herald_core::projection::{self, Fold};
use herald_core::stored::StoredValue;
use herald_core::{Event, EventData, RegistryName};

/// A stored value read back for folding; one that does not decode is
/// treated as absent, so the next event overwrites it instead of being
/// stuck behind it.
pub fn decode_or_absent(kind: KeyKind, value: &[u8]) -> Option<StoredValue> {
    match StoredValue::decode_as(kind, value) {
        Ok(stored) => Some(stored),
        Err(err) => {
            tracing::warn!(%err, %kind, "stored value does not decode; overwriting it");
            None
        }
    }
}

/// The registry and bucket key a deployment or catalog event folds into;
/// `None` for control events, which concern a whole cluster.
pub fn slot(event: &Event) -> Option<(&RegistryName, String, KeyKind)> {
    match &event.data {
        EventData::Applied(r) => Some((
            &r.registry,
            DeploymentKey::new(r.cluster.clone(), r.object.clone()).to_string(),
            KeyKind::Deployment,
        )),
        EventData::Withdrawn(w) => Some((
            &w.registry,
            DeploymentKey::new(w.cluster.clone(), w.object.clone()).to_string(),
            KeyKind::Deployment,
        )),
        EventData::CatalogApplied(r) => Some((
            &r.registry,
            CatalogKey::new(r.source.clone(), r.server_name.clone(), &r.version).to_string(),
            KeyKind::Catalog,
        )),
        EventData::CatalogWithdrawn(w) => Some((
            &w.registry,
            CatalogKey::new(w.source.clone(), w.server_name.clone(), &w.version).to_string(),
            KeyKind::Catalog,
        )),
        EventData::ResyncStarted(_) | EventData::ResyncCompleted(_) | EventData::Heartbeat(_) => {
            None
        }
    }
}

/// What folding one event onto a key did.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    /// The key holds this value now.
    Write(StoredValue),
    /// What is stored is as new or newer (or the event is not a key's).
    Stale,
    /// The event contradicts what is stored (a withdrawal of another uid):
    /// nothing changes, and the event is dead-lettered with this reason.
    Refused(String),
}

/// The key's value after `event` (found at stream sequence `seq`).
pub fn fold(event: &Event, seq: u64, current: Option<&StoredValue>) -> Folded {
    let deployment = match current {
        Some(StoredValue::Deployment(d)) => Some(d),
        _ => None,
    };
    let catalog = match current {
        Some(StoredValue::Catalog(c)) => Some(c),
        _ => None,
    };
    match &event.data {
        EventData::Applied(record) => folded(
            projection::fold_applied(deployment, record, seq),
            StoredValue::Deployment,
        ),
        EventData::Withdrawn(withdrawal) => folded(
            projection::fold_withdrawn(deployment, withdrawal, seq, event.time),
            StoredValue::Deployment,
        ),
        EventData::CatalogApplied(record) => folded(
            projection::fold_catalog_applied(catalog, record, seq),
            StoredValue::Catalog,
        ),
        EventData::CatalogWithdrawn(withdrawal) => folded(
            projection::fold_catalog_withdrawn(catalog, withdrawal, seq, event.time),
            StoredValue::Catalog,
        ),
        EventData::ResyncStarted(_) | EventData::ResyncCompleted(_) | EventData::Heartbeat(_) => {
            Folded::Stale
        }
    }
}

fn folded<T>(fold: Fold<T>, into: impl FnOnce(T) -> StoredValue) -> Folded {
    match fold {
        Fold::Write(value) => Folded::Write(into(value)),
        Fold::Stale { .. } => Folded::Stale,
        Fold::Refused { reason } => Folded::Refused(reason),
    }
}

/// What one event of a key's write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Changed,
    Stale,
    Refused(String),
}

/// Folds `events` (one key's, in the order they arrived) onto `current`.
/// Returns the value to write (`None` when no event changed the key) and,
/// per event, what it did.
pub fn fold_all<'a>(
    events: impl IntoIterator<Item = (&'a Event, u64)>,
    current: Option<&StoredValue>,
) -> (Option<StoredValue>, Vec<Effect>) {
    let mut next: Option<StoredValue> = None;
    let effects = events
        .into_iter()
        .map(
            |(event, seq)| match fold(event, seq, next.as_ref().or(current)) {
                Folded::Write(value) => {
                    next = Some(value);
                    Effect::Changed
                }
                Folded::Stale => Effect::Stale,
                Folded::Refused(reason) => Effect::Refused(reason),
            },
        )
        .collect();
    (next, effects)
}

/// After `resync.completed` (sequence `seq`, published at `time`): the
/// tombstone for a deployment of that cluster and kind that the re-list did
/// not confirm, or `None` when the value stays.
pub fn sweep(
    current: &StoredValue,
    resync: &Resync,
    seq: u64,
    time: DateTime<Utc>,
) -> Option<StoredValue> {
    match current {
        StoredValue::Deployment(d) => {
            projection::sweep(d, resync, seq, time).map(StoredValue::Deployment)
        }
        StoredValue::Catalog(_) => None,
    }
}

//! Folding events into stored state, idempotently and order-safely.
//!
//! The projector stores one `StoredDeployment` per key. Every stored value
//! remembers the stream sequence of the event that produced it, and an event
//! is applied only when its sequence is newer. So a duplicate, a redelivery
//! or an event overtaken by a newer one never regresses a key, whatever the
//! order in which one or several projectors see them. Withdrawals are kept
//! as tombstones for the same reason: a deleted key would let a late, older
//! `applied` resurrect it.
//!
//! `changedAt` depends on the stored event alone, never on what was folded
//! before it: on a live value it is the watcher's stamp on the record (when
//! its advertisement last changed), on a tombstone the withdrawal's time.
//! Redeliveries, duplicates and reordering therefore cannot move it.

use chrono::{DateTime, Utc};

use crate::catalog_record::{CatalogRecord, CatalogWithdrawal};
use crate::event::Resync;
use crate::ids::excerpt;
use crate::record::{DeploymentRecord, RECORD_VERSION, WithdrawReason, Withdrawal};
use crate::stored::{CatalogState, DeploymentState, Sequenced, StoredCatalog, StoredDeployment};
use crate::tombstone::LastServed;

/// What to do with a key holding a `T` (a deployment unless said otherwise).
// Returned and consumed at once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Fold<T = StoredDeployment> {
    /// Store this value.
    Write(T),
    /// The stored value is as new or newer; the event changes nothing.
    Stale { stored_seq: u64 },
    /// The event contradicts what is stored (a withdrawal of another
    /// object than the one stored under its key): it changes nothing, and
    /// an operator must hear of it.
    Refused { reason: String },
}

/// What to do with a catalog key.
pub type CatalogFold = Fold<StoredCatalog>;

/// `Stale` when what is stored comes from sequence `seq` or later.
fn stale<T: Sequenced>(current: Option<&T>, seq: u64) -> Option<Fold<T>> {
    current.filter(|c| c.seq() >= seq).map(|c| Fold::Stale {
        stored_seq: c.seq(),
    })
}

/// An `applied` event with stream sequence `seq`.
pub fn fold_applied(
    current: Option<&StoredDeployment>,
    record: &DeploymentRecord,
    seq: u64,
) -> Fold {
    if let Some(filled) = current.and_then(|c| fill_deployment_tombstone(c, record, seq)) {
        return Fold::Write(filled);
    }
    if let Some(s) = stale(current, seq) {
        return s;
    }
    let changed_at = record
        .changed_at
        .unwrap_or_else(|| legacy_changed_at(current, record));
    Fold::Write(StoredDeployment {
        v: RECORD_VERSION,
        seq,
        changed_at,
        state: DeploymentState::Live(Box::new(record.clone())),
        last: None,
    })
}

/// `changedAt` for a record of a watcher that does not say when its
/// advertisement changed: kept from a stored live value that advertises the
/// same, else the observation time. This depends on the order of folding (a
/// redelivered older event folded after a newer one moves it), which is why
/// watchers now stamp `changedAt` themselves.
fn legacy_changed_at(
    current: Option<&StoredDeployment>,
    record: &DeploymentRecord,
) -> DateTime<Utc> {
    match current {
        Some(c) if c.live().is_some_and(|prev| prev.same_advertisement(record)) => c.changed_at,
        _ => record.observed_at,
    }
}

/// A `withdrawn` event with stream sequence `seq`, published at `time`.
pub fn fold_withdrawn(
    current: Option<&StoredDeployment>,
    withdrawal: &Withdrawal,
    seq: u64,
    time: DateTime<Utc>,
) -> Fold {
    if let Some(s) = stale(current, seq) {
        return s;
    }
    // Only the object that is stored can be withdrawn: a withdrawal names
    // the uid it withdraws, and a forged or confused one must not take down
    // another object of the same name.
    if let Some(live) = current.and_then(StoredDeployment::live)
        && live.uid != withdrawal.uid
    {
        return Fold::Refused {
            reason: format!(
                "withdraws {} uid {} but uid {} is stored",
                withdrawal.object,
                excerpt(&withdrawal.uid, 64),
                live.uid
            ),
        };
    }
    // The withdrawal's own time, so that the tombstone's `changedAt` depends
    // on this event alone (a republished withdrawal keeps its time).
    let changed_at = time;
    Fold::Write(StoredDeployment {
        v: RECORD_VERSION,
        seq,
        changed_at,
        state: DeploymentState::Withdrawn(withdrawal.clone()),
        last: last_deployment(current),
    })
}

/// After `resync.completed` (sequence `seq`): the tombstone for a live
/// record of that cluster and kind that the re-list did not confirm, or
/// `None` when the record stays.
pub fn sweep(
    current: &StoredDeployment,
    completed: &Resync,
    seq: u64,
    time: DateTime<Utc>,
) -> Option<StoredDeployment> {
    let record = current.live()?;
    let unconfirmed = record.cluster == completed.cluster
        && record.object.kind() == completed.kind
        && record.epoch < completed.epoch
        && current.seq < seq;
    unconfirmed.then(|| StoredDeployment {
        v: RECORD_VERSION,
        seq,
        changed_at: time,
        state: DeploymentState::Withdrawn(Withdrawal::of(
            record,
            completed.epoch,
            WithdrawReason::Unconfirmed,
            Some(format!(
                "not confirmed by the re-list of epoch {}",
                completed.epoch
            )),
        )),
        last: Some(Box::new(LastServed::of_deployment(record, current.seq))),
    })
}

/// A `catalog.applied` event with stream sequence `seq`.
pub fn fold_catalog_applied(
    current: Option<&StoredCatalog>,
    record: &CatalogRecord,
    seq: u64,
) -> CatalogFold {
    if let Some(filled) = current.and_then(|c| fill_catalog_tombstone(c, record, seq)) {
        return CatalogFold::Write(filled);
    }
    if let Some(s) = stale(current, seq) {
        return s;
    }
    let changed_at = match current {
        Some(c) if c.live().is_some_and(|prev| prev.digest == record.digest) => c.changed_at,
        _ => record.observed_at,
    };
    CatalogFold::Write(StoredCatalog {
        v: RECORD_VERSION,
        seq,
        changed_at,
        state: CatalogState::Listed(Box::new(record.clone())),
        last: None,
    })
}

/// A `catalog.withdrawn` event with stream sequence `seq`, published at `time`.
pub fn fold_catalog_withdrawn(
    current: Option<&StoredCatalog>,
    withdrawal: &CatalogWithdrawal,
    seq: u64,
    time: DateTime<Utc>,
) -> CatalogFold {
    if let Some(s) = stale(current, seq) {
        return s;
    }
    let changed_at = match current {
        Some(c) if c.live().is_none() => c.changed_at,
        _ => time,
    };
    CatalogFold::Write(StoredCatalog {
        v: RECORD_VERSION,
        seq,
        changed_at,
        state: CatalogState::Withdrawn(withdrawal.clone()),
        last: match current {
            Some(c) => c
                .live()
                .map(|r| Box::new(LastServed::of_catalog(r, c.seq)))
                .or(c.last.clone()),
            None => None,
        },
    })
}

/// What a deployment tombstone keeps: what the live value advertised, or
/// what the tombstone it replaces kept.
fn last_deployment(current: Option<&StoredDeployment>) -> Option<Box<LastServed>> {
    let current = current?;
    current
        .live()
        .map(|r| Box::new(LastServed::of_deployment(r, current.seq)))
        .or(current.last.clone())
}

/// Whether a tombstone that knows nothing newer than `seq` of what it
/// withdrew should learn it from an older event that arrives after it.
fn learns_from(last: Option<&LastServed>, tombstone_seq: u64, seq: u64) -> bool {
    seq < tombstone_seq && last.is_none_or(|l| l.seq < seq)
}

/// An `applied` older than the tombstone stored for its object (two
/// projectors folded them out of order): the tombstone keeps it as what it
/// withdrew when it is the newest such value of the withdrawn uid.
fn fill_deployment_tombstone(
    current: &StoredDeployment,
    record: &DeploymentRecord,
    seq: u64,
) -> Option<StoredDeployment> {
    let DeploymentState::Withdrawn(withdrawal) = &current.state else {
        return None;
    };
    if withdrawal.uid != record.uid || !learns_from(current.last.as_deref(), current.seq, seq) {
        return None;
    }
    Some(StoredDeployment {
        last: Some(Box::new(LastServed::of_deployment(record, seq))),
        ..current.clone()
    })
}

/// The same for a catalog entry's tombstone.
fn fill_catalog_tombstone(
    current: &StoredCatalog,
    record: &CatalogRecord,
    seq: u64,
) -> Option<StoredCatalog> {
    let CatalogState::Withdrawn(_) = &current.state else {
        return None;
    };
    if !learns_from(current.last.as_deref(), current.seq, seq) {
        return None;
    }
    Some(StoredCatalog {
        last: Some(Box::new(LastServed::of_catalog(record, seq))),
        ..current.clone()
    })
}

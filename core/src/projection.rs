//! Folding events into stored state, idempotently and order-safely.
//!
//! The projector stores one `StoredDeployment` per key. Every stored value
//! remembers the stream sequence of the event that produced it, and an event
//! is applied only when its sequence is newer. So a duplicate, a redelivery
//! or an event overtaken by a newer one never regresses a key, whatever the
//! order in which one or several projectors see them. Withdrawals are kept
//! as tombstones for the same reason: a deleted key would let a late, older
//! `applied` resurrect it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogRecord, CatalogWithdrawal};
use crate::event::{Resync, WithdrawReason, Withdrawal};
use crate::names::{CatalogKey, DeploymentKey};
use crate::record::{DeploymentRecord, RECORD_VERSION};

/// The value under a deployment key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredDeployment {
    pub v: u32,
    /// Stream sequence of the event this state comes from.
    pub seq: u64,
    /// When what clients see of this deployment last changed.
    pub changed_at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: DeploymentState,
}

/// Advertised, or withdrawn (a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeploymentState {
    Live(Box<DeploymentRecord>),
    Withdrawn(Withdrawal),
}

impl StoredDeployment {
    pub fn live(&self) -> Option<&DeploymentRecord> {
        match &self.state {
            DeploymentState::Live(r) => Some(r),
            DeploymentState::Withdrawn(_) => None,
        }
    }

    pub fn key(&self) -> DeploymentKey {
        match &self.state {
            DeploymentState::Live(r) => DeploymentKey::new(r.cluster.clone(), r.object.clone()),
            DeploymentState::Withdrawn(w) => {
                DeploymentKey::new(w.cluster.clone(), w.object.clone())
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("stored state always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A stored value that remembers the stream sequence it comes from: what
/// makes every fold here order-safe.
pub trait Sequenced {
    fn seq(&self) -> u64;
}

impl Sequenced for StoredDeployment {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// What to do with a key holding a `T` (a deployment unless said otherwise).
// Returned and consumed at once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Fold<T = StoredDeployment> {
    /// Store this value.
    Write(T),
    /// The stored value is as new or newer; the event changes nothing.
    Stale { stored_seq: u64 },
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
    if let Some(s) = stale(current, seq) {
        return s;
    }
    let unchanged = current
        .and_then(StoredDeployment::live)
        .filter(|prev| prev.same_advertisement(record));
    let changed_at = match (unchanged, current) {
        (Some(_), Some(c)) => c.changed_at,
        _ => record.observed_at,
    };
    Fold::Write(StoredDeployment {
        v: RECORD_VERSION,
        seq,
        changed_at,
        state: DeploymentState::Live(Box::new(record.clone())),
    })
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
    let changed_at = match current {
        Some(c) if c.live().is_none() => c.changed_at,
        _ => time,
    };
    Fold::Write(StoredDeployment {
        v: RECORD_VERSION,
        seq,
        changed_at,
        state: DeploymentState::Withdrawn(withdrawal.clone()),
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
        state: DeploymentState::Withdrawn(Withdrawal {
            v: RECORD_VERSION,
            cluster: record.cluster.clone(),
            registry: record.registry.clone(),
            object: record.object.clone(),
            uid: record.uid.clone(),
            resource_version: record.resource_version.clone(),
            epoch: completed.epoch,
            reason: WithdrawReason::Unconfirmed,
            message: Some(format!(
                "not confirmed by the re-list of epoch {}",
                completed.epoch
            )),
        }),
    })
}

/// The value under a catalog key (`names::CatalogKey`): the same seq and
/// tombstone scheme as deployments, so catalog events are order-safe too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCatalog {
    pub v: u32,
    /// Stream sequence of the event this state comes from.
    pub seq: u64,
    /// When what clients see of this entry last changed.
    pub changed_at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: CatalogState,
}

/// Listed by its source, or withdrawn (a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CatalogState {
    Listed(Box<CatalogRecord>),
    Withdrawn(CatalogWithdrawal),
}

impl StoredCatalog {
    pub fn live(&self) -> Option<&CatalogRecord> {
        match &self.state {
            CatalogState::Listed(r) => Some(r),
            CatalogState::Withdrawn(_) => None,
        }
    }

    pub fn key(&self) -> CatalogKey {
        match &self.state {
            CatalogState::Listed(r) => {
                CatalogKey::new(r.source.clone(), r.server_name.clone(), &r.version)
            }
            CatalogState::Withdrawn(w) => {
                CatalogKey::new(w.source.clone(), w.server_name.clone(), &w.version)
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("stored state always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Sequenced for StoredCatalog {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// A `catalog.applied` event with stream sequence `seq`.
pub fn fold_catalog_applied(
    current: Option<&StoredCatalog>,
    record: &CatalogRecord,
    seq: u64,
) -> CatalogFold {
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
    })
}

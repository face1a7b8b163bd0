//! What a registry bucket holds: one value per key, a deployment's or a
//! catalog entry's, live or a tombstone. The one owner of "what a bucket
//! value is": the projector writes these, its ops commands and herald-api
//! read them, all through [`StoredValue::decode`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog_record::{CatalogRecord, CatalogWithdrawal};
use crate::names::{BucketKey, CatalogKey, DeploymentKey, KeyKind};
use crate::record::{DeploymentRecord, Withdrawal};
use crate::tombstone::LastServed;

/// The value under a deployment key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredDeployment {
    pub v: u32,
    /// Stream sequence of the event this state comes from.
    pub seq: u64,
    /// When what clients see of this deployment last changed (on a
    /// tombstone: when it was withdrawn).
    pub changed_at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: DeploymentState,
    /// On a tombstone: what the deployment served last (see
    /// [`crate::tombstone`]); absent on live values and on old tombstones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Box<LastServed>>,
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

    /// A tombstone that can be served as a deleted entry: what it withdrew.
    pub fn tombstone(&self) -> Option<&LastServed> {
        self.live()
            .is_none()
            .then_some(self.last.as_deref())
            .flatten()
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

/// The value under a catalog key (`names::CatalogKey`): the same seq and
/// tombstone scheme as deployments, so catalog events are order-safe too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCatalog {
    pub v: u32,
    /// Stream sequence of the event this state comes from.
    pub seq: u64,
    /// When what clients see of this entry last changed (on a tombstone:
    /// when it was withdrawn).
    pub changed_at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: CatalogState,
    /// On a tombstone: what the entry listed last (see
    /// [`crate::tombstone`]); absent on live values and on old tombstones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Box<LastServed>>,
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

    /// A tombstone that can be served as a deleted entry: what it withdrew.
    pub fn tombstone(&self) -> Option<&LastServed> {
        self.live()
            .is_none()
            .then_some(self.last.as_deref())
            .flatten()
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

/// The value under any registry bucket key.
// Built and consumed in place: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    Deployment(StoredDeployment),
    Catalog(StoredCatalog),
}

/// Why bytes under a bucket key are not a value Herald wrote there.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error(transparent)]
    Key(#[from] crate::names::NameError),
    #[error("the value under {key} is not a stored {kind}: {reason}")]
    Value {
        key: String,
        kind: KeyKind,
        reason: String,
    },
    #[error("the value under {key} belongs under {actual}")]
    WrongKey { key: String, actual: String },
}

impl StoredValue {
    /// Decodes the value under `key`: the key says which type it holds, and
    /// the value must name that same key (a value copied under another key
    /// is refused, not served twice).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<StoredValue, StoredError> {
        let parsed = BucketKey::parse(key)?;
        let value = Self::decode_as(parsed.kind(), bytes).map_err(|e| StoredError::Value {
            key: crate::ids::excerpt(key, 120),
            kind: parsed.kind(),
            reason: e.to_string(),
        })?;
        let actual = value.key();
        if actual != parsed {
            return Err(StoredError::WrongKey {
                key: crate::ids::excerpt(key, 120),
                actual: actual.to_string(),
            });
        }
        Ok(value)
    }

    /// Decodes a value known to be of `kind` (its key was checked already).
    pub fn decode_as(kind: KeyKind, bytes: &[u8]) -> Result<StoredValue, serde_json::Error> {
        Ok(match kind {
            KeyKind::Deployment => StoredValue::Deployment(StoredDeployment::from_json(bytes)?),
            KeyKind::Catalog => StoredValue::Catalog(StoredCatalog::from_json(bytes)?),
        })
    }

    /// The value as stored in a bucket.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            StoredValue::Deployment(d) => d.to_json(),
            StoredValue::Catalog(c) => c.to_json(),
        }
    }

    /// The key this value belongs under.
    pub fn key(&self) -> BucketKey {
        match self {
            StoredValue::Deployment(d) => BucketKey::Deployment(d.key()),
            StoredValue::Catalog(c) => BucketKey::Catalog(c.key()),
        }
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            StoredValue::Deployment(_) => KeyKind::Deployment,
            StoredValue::Catalog(_) => KeyKind::Catalog,
        }
    }

    /// The stream sequence of the event it comes from.
    pub fn seq(&self) -> u64 {
        match self {
            StoredValue::Deployment(d) => d.seq,
            StoredValue::Catalog(c) => c.seq,
        }
    }

    /// A one-line description for people (ops commands).
    pub fn describe(&self) -> String {
        match self {
            StoredValue::Deployment(d) => match &d.state {
                DeploymentState::Live(r) => format!(
                    "seq {} live {} {} {}",
                    d.seq, r.server_name, r.version, r.remote.url
                ),
                DeploymentState::Withdrawn(w) => {
                    format!("seq {} withdrawn {}", d.seq, w.reason.as_str())
                }
            },
            StoredValue::Catalog(c) => match c.live() {
                Some(r) => format!(
                    "seq {} listed {} {} by {} ({})",
                    c.seq, r.server_name, r.version, r.source, r.digest
                ),
                None => format!("seq {} withdrawn from its catalog", c.seq),
            },
        }
    }
}

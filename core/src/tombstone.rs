//! What a tombstone remembers of the entry it ends: enough to serve it as a
//! `deleted` entry to a client that syncs incrementally (`updated_since`,
//! `include_deleted`), and nothing it would not need.
//!
//! A withdrawal event names only the object it withdraws (a deployment) or
//! the key (a catalog entry); the server name, version, text and claims come
//! from the live value the tombstone replaces, copied when the projector
//! folds the withdrawal. Bounded: the name, the version, the description
//! (≤ 100 characters) and title (≤ 100), the creation time and the claim
//! set (bounded by `claims`) — no remotes, headers, tools or documents, so
//! a tombstone stays a few hundred bytes and never advertises an endpoint.
//!
//! A tombstone written before this existed (or by an older projector during
//! a rolling upgrade) has none; it keeps its role in ordering but is never
//! served: without the claims of what it withdrew, serving it could reveal
//! a name to a caller who could not see it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog_record::CatalogRecord;
use crate::claims::ClaimSet;
use crate::ids::ServerName;
use crate::record::DeploymentRecord;

/// The part of the last live value a tombstone keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastServed {
    pub server_name: ServerName,
    pub version: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// When the withdrawn value was first published, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// Who could see the entry: a deleted entry is shown to the same callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz_claims: Option<ClaimSet>,
    /// Stream sequence of the event that published the value. Two projectors
    /// may fold a withdrawal before an older `applied` of its key: that event
    /// then fills in what was withdrawn, and only a newer one replaces it, so
    /// the tombstone ends as one projector would leave it.
    #[serde(default)]
    pub seq: u64,
}

impl LastServed {
    /// What a deployment record advertised.
    pub fn of_deployment(r: &DeploymentRecord, seq: u64) -> Self {
        Self {
            server_name: r.server_name.clone(),
            version: r.version.clone(),
            description: r.description.clone(),
            title: r.title.clone(),
            published_at: r.created_at,
            authz_claims: r.authz_claims.clone(),
            seq,
        }
    }

    /// What a catalog record listed. Its `server.json` was validated when it
    /// was imported; text that is not a string (a hand-written value) is left
    /// out rather than guessed.
    pub fn of_catalog(r: &CatalogRecord, seq: u64) -> Self {
        let text = |field: &str| r.server.get(field).and_then(|v| v.as_str());
        let published_at = r
            .meta
            .as_ref()
            .and_then(|m| m.get(crate::merge::OFFICIAL_META_KEY))
            .and_then(|o| o.get("publishedAt"))
            .and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Self {
            server_name: r.server_name.clone(),
            version: r.version.clone(),
            description: text("description").unwrap_or_default().to_owned(),
            title: text("title").map(str::to_owned),
            published_at,
            authz_claims: r.authz_claims.clone(),
            seq,
        }
    }
}

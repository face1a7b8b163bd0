//! Catalog records: the body of `catalog.applied` and `catalog.withdrawn`
//! events, and the entry they carry — a `server.json` document that a
//! catalog source (an official registry, a ToolHive `registry.json`, …)
//! describes. Plain data; [`crate::import`] builds entries from sources.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::claims::ClaimSet;
use crate::ids::{RegistryName, ServerName, SourceId};
use crate::record::RECORD_VERSION;

/// One catalog entry: a `server.json` document and the source's `_meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub name: ServerName,
    pub version: String,
    /// The `server.json` document, as the source described it.
    pub server: Value,
    /// The `_meta` the source served beside it (official list format only).
    pub meta: Option<Value>,
}

/// The body of a `catalog.applied` event and the value stored for a live
/// catalog entry. Versioned like the deployment record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogRecord {
    pub v: u32,
    pub source: SourceId,
    pub registry: RegistryName,
    pub server_name: ServerName,
    pub version: String,
    /// The `server.json` document as the source described it.
    pub server: Value,
    /// The `_meta` the source served beside it (official list format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    pub observed_at: DateTime<Utc>,
    /// A digest of `server`, `meta` and `authz_claims`: equal digests,
    /// equal entry. Part of the event id, so re-importing an unchanged entry
    /// is deduplicated.
    pub digest: String,
    /// Who may see the entry: the claims its source was configured with
    /// (`herald-catalog sync --authz-claims`). None: no claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz_claims: Option<ClaimSet>,
}

impl CatalogRecord {
    pub fn new(
        source: SourceId,
        registry: RegistryName,
        entry: CatalogEntry,
        observed_at: DateTime<Utc>,
    ) -> Self {
        let digest = digest(&entry.server, entry.meta.as_ref());
        Self {
            v: RECORD_VERSION,
            source,
            registry,
            server_name: entry.name,
            version: entry.version,
            server: entry.server,
            meta: entry.meta,
            observed_at,
            digest,
            authz_claims: None,
        }
    }

    /// The same record, visible only to callers with `claims`.
    pub fn with_claims(mut self, claims: Option<ClaimSet>) -> Self {
        self.digest = digest_with_claims(&self.server, self.meta.as_ref(), claims.as_ref());
        self.authz_claims = claims;
        self
    }
}

/// The body of a `catalog.withdrawn` event: the entry left its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogWithdrawal {
    pub v: u32,
    pub source: SourceId,
    pub registry: RegistryName,
    pub server_name: ServerName,
    pub version: String,
    pub observed_at: DateTime<Utc>,
}

/// FNV-1a (64 bit) of the entry's JSON, in hex: stable across builds and
/// platforms, which is all an id needs (it is not a security boundary).
pub fn digest(server: &Value, meta: Option<&Value>) -> String {
    digest_with_claims(server, meta, None)
}

/// [`digest`], with the entry's claims when it has some (without, the same
/// digest as before claims existed, so unchanged entries stay unchanged).
pub fn digest_with_claims(
    server: &Value,
    meta: Option<&Value>,
    claims: Option<&ClaimSet>,
) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = match claims {
        None => serde_json::to_vec(&(server, meta)),
        Some(claims) => serde_json::to_vec(&(server, meta, claims)),
    }
    .expect("JSON values always serialize");
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

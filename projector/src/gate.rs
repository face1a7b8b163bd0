//! The gate every event passes before `run` or `replay` folds it: its
//! signature, when its cluster or catalog source signs, then admission (a
//! known source, sane times and epochs, a record that passes the shared
//! validation, a name its namespace owns). What fails is dead-lettered by
//! `run` with the reason, and skipped by `replay` the same way, so both
//! fold exactly the same events.
//!
//! The hub's trust comes from a trust file (`--trust-file`, YAML) and
//! flags:
//!
//! ```yaml
//! clusters:                 # present: only these clusters are accepted
//!   prod-eu:
//!     keys: [UAB…, UCD…]    # its events must be signed with one of these
//!     signedSince: 2026-11-01T00:00:00Z   # older history accepted unsigned
//!   dev: {}                 # accepted, unsigned
//! catalogs:                 # the same for catalog sources
//!   upstream:
//!     keys: [UEF…]
//! requireSignatures: true   # a source without keys is refused too
//! nameGrants:               # who may publish which server names
//!   - registry: engineering # optional: every registry when absent
//!     names: io.github.github/*
//!     namespaces: [dev-tools, platform]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::HeaderMap;
use chrono::{DateTime, Duration, Utc};
use herald_core::Event;
use herald_core::admission::{AdmissionPolicy, Refusal};
use herald_core::ids::{ClusterId, SourceId};
use herald_core::ownership::{NameGrant, NameOwnership};
use herald_core::validate::UrlRules;
use herald_runtime::signing::{Issuer, KeyError, SignatureError, TrustedKeys, Verifier};
use serde::Deserialize;

/// The trust file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustFile {
    #[serde(default)]
    pub clusters: Option<BTreeMap<ClusterId, IssuerEntry>>,
    #[serde(default)]
    pub catalogs: Option<BTreeMap<SourceId, IssuerEntry>>,
    #[serde(default)]
    pub require_signatures: bool,
    #[serde(default)]
    pub name_grants: Vec<NameGrant>,
}

/// One cluster or catalog source of the trust file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerEntry {
    /// Public nkeys it signs with; several during a rotation.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Events the stream stored before this are accepted unsigned.
    #[serde(default)]
    pub signed_since: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading the trust file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the trust file {path} is not valid: {reason}")]
    Parse { path: String, reason: String },
    #[error("in the trust file: {0}")]
    Key(#[from] KeyError),
}

impl TrustFile {
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrustError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| TrustError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// Why the gate refused an event; `code()` names the dead-letter subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Admission(#[from] Refusal),
}

impl GateRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            GateRefusal::Signature(e) => e.code(),
            GateRefusal::Admission(r) => r.code(),
        }
    }

    /// Every code, for metrics.
    pub fn codes() -> impl Iterator<Item = &'static str> {
        SignatureError::CODES.into_iter().chain(Refusal::CODES)
    }
}

/// Signature checks and admission, as configured.
#[derive(Debug, Default)]
pub struct Gate {
    admission: AdmissionPolicy,
    verifier: Verifier,
}

impl Gate {
    /// From the trust file (when there is one) and the flags: grants of
    /// both apply, and `max_clock_skew` and `urls` come from the flags.
    pub fn new(
        file: Option<TrustFile>,
        grants: Vec<NameGrant>,
        max_clock_skew: Duration,
        urls: UrlRules,
    ) -> Result<Self, TrustError> {
        let file = file.unwrap_or_default();
        let mut verifier = Verifier::new(file.require_signatures);
        for (cluster, entry) in file.clusters.iter().flatten() {
            verifier.trust(
                Issuer::Cluster(cluster.clone()),
                TrustedKeys::new(entry.keys.iter().cloned(), entry.signed_since)?,
            );
        }
        for (source, entry) in file.catalogs.iter().flatten() {
            verifier.trust(
                Issuer::Source(source.clone()),
                TrustedKeys::new(entry.keys.iter().cloned(), entry.signed_since)?,
            );
        }
        let admission = AdmissionPolicy {
            clusters: file.clusters.map(|c| c.into_keys().collect()),
            sources: file.catalogs.map(|c| c.into_keys().collect()),
            max_clock_skew,
            names: NameOwnership::new(file.name_grants.into_iter().chain(grants)),
            urls,
        };
        Ok(Self {
            admission,
            verifier,
        })
    }

    /// What an operator should hear at start about what this gate lets in.
    pub fn describe(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.admission.clusters.is_none() {
            notes.push(
                "events of any cluster are accepted (no clusters in a trust file)".to_owned(),
            );
        }
        if self.admission.sources.is_none() {
            notes.push(
                "events of any catalog source are accepted (no catalogs in a trust file)"
                    .to_owned(),
            );
        }
        if !self.verifier.is_active() {
            notes.push("no event signatures are checked (no keys in a trust file)".to_owned());
        }
        notes
    }

    /// Checks one event read from `subject`, with the message's `payload`
    /// and `headers`, that the stream stored at `stored_at`.
    pub fn check(
        &self,
        event: &Event,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        stored_at: DateTime<Utc>,
    ) -> Result<(), GateRefusal> {
        let issuer = match (event.cluster(), event.data.catalog_source()) {
            (Some(cluster), _) => Issuer::Cluster(cluster.clone()),
            (None, Some(source)) => Issuer::Source(source.clone()),
            (None, None) => unreachable!("every event has a cluster or a catalog source"),
        };
        self.verifier
            .verify(&issuer, subject, payload, headers, stored_at)?;
        self.admission.admit(event, stored_at)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_trust_file_reads() {
        let text = r#"
clusters:
  prod-eu:
    keys: []
    signedSince: 2026-11-01T00:00:00Z
  dev: {}
catalogs:
  upstream: {}
requireSignatures: false
nameGrants:
  - registry: engineering
    names: io.github.github/*
    namespaces: [dev-tools, platform]
"#;
        let file: TrustFile = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(file.clusters.as_ref().unwrap().len(), 2);
        assert_eq!(
            file.name_grants[0].to_string(),
            "engineering:io.github.github/*=dev-tools,platform"
        );
        let gate = Gate::new(
            Some(file),
            Vec::new(),
            Duration::minutes(15),
            UrlRules::default(),
        )
        .unwrap();
        assert!(gate.describe().iter().any(|n| n.contains("signatures")));
        assert!(serde_yaml_ng::from_str::<TrustFile>("clusters:\n  Bad_Id: {}\n").is_err());
        assert!(serde_yaml_ng::from_str::<TrustFile>("clustres: {}\n").is_err());
    }
}

//! Names of NATS subjects, streams, buckets and keys.
//!
//! Every name here is built from validated identifiers, so it is always a
//! legal NATS token, and every name can be parsed back into what built it.

use std::fmt;

use crate::ids::{ClusterId, RegistryName, ServerName, SourceId, excerpt};
use crate::object::{Kind, ObjectRef};

/// The stream that holds every event: the replay history.
pub const STREAM: &str = "HERALD_EVENTS";
/// Prefix of every event subject.
pub const EVENTS_PREFIX: &str = "herald.events";
/// Wildcard over all event subjects (the stream's subject filter).
pub const EVENTS_WILDCARD: &str = "herald.events.>";
/// Prefix of dead-letter subjects; the next token is the reason code.
pub const DLQ_PREFIX: &str = "herald.dlq";
/// The stream that keeps dead letters for inspection.
pub const DLQ_STREAM: &str = "HERALD_DLQ";
/// Wildcard over all dead-letter subjects.
pub const DLQ_WILDCARD: &str = "herald.dlq.>";
/// The token that marks a cluster's control subject (not a valid registry name).
pub const CLUSTER_TOKEN: &str = "_cluster";
/// Prefix of registry buckets: `herald-<registry>`.
pub const BUCKET_PREFIX: &str = "herald-";
/// The bucket of per-cluster liveness (an underscore never names a registry).
pub const CLUSTERS_BUCKET: &str = "herald_clusters";
/// Key prefix of deployment records inside a registry bucket.
pub const DEPLOYMENT_KEY_PREFIX: &str = "deployment";
/// Key prefix of catalog entries inside a registry bucket.
pub const CATALOG_KEY_PREFIX: &str = "catalog";
/// Header of a signed event: the signer's public key (an nkey).
pub const SIGNER_HEADER: &str = "Herald-Signer";
/// Header of a signed event: the ed25519 signature, base64url.
pub const SIGNATURE_HEADER: &str = "Herald-Signature";
/// The first token after `herald.events.` of catalog subjects; a cluster id
/// never starts with `_`, so it cannot be mistaken for one.
pub const CATALOG_TOKEN: &str = "_catalog";

/// Why a name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} {reason}")]
pub struct NameError {
    what: &'static str,
    value: String,
    reason: String,
}

impl NameError {
    fn new(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            what,
            value: excerpt(value, 120),
            reason: reason.into(),
        }
    }
}

/// Where an event is published, and so who may publish it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventSubject {
    /// `herald.events.<cluster>.<registry>`: a deployment's events.
    Deployment {
        cluster: ClusterId,
        registry: RegistryName,
    },
    /// `herald.events.<cluster>._cluster`: resync brackets and heartbeats.
    Cluster { cluster: ClusterId },
    /// `herald.events._catalog.<source>.<registry>`: a catalog's entries.
    Catalog {
        source: SourceId,
        registry: RegistryName,
    },
}

impl EventSubject {
    pub fn parse(subject: &str) -> Result<EventSubject, NameError> {
        const WHAT: &str = "event subject";
        let rest = subject
            .strip_prefix(EVENTS_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| {
                NameError::new(WHAT, subject, format!("is not under {EVENTS_PREFIX}."))
            })?;
        if let Some(catalog) = rest
            .strip_prefix(CATALOG_TOKEN)
            .and_then(|r| r.strip_prefix('.'))
        {
            let (source, registry) = catalog.split_once('.').ok_or_else(|| {
                NameError::new(
                    WHAT,
                    subject,
                    "must be herald.events._catalog.<source>.<registry>",
                )
            })?;
            let source = source
                .parse()
                .map_err(|e: crate::ids::IdError| NameError::new(WHAT, subject, e.reason))?;
            let registry = registry
                .parse()
                .map_err(|e: crate::ids::IdError| NameError::new(WHAT, subject, e.reason))?;
            return Ok(EventSubject::Catalog { source, registry });
        }
        let (cluster, last) = rest.split_once('.').ok_or_else(|| {
            NameError::new(WHAT, subject, "must be herald.events.<cluster>.<registry>")
        })?;
        let cluster: ClusterId = cluster
            .parse()
            .map_err(|e: crate::ids::IdError| NameError::new(WHAT, subject, e.reason))?;
        if last == CLUSTER_TOKEN {
            return Ok(EventSubject::Cluster { cluster });
        }
        let registry = last.parse().map_err(|e: crate::ids::IdError| {
            NameError::new(
                WHAT,
                subject,
                format!("has an invalid registry: {}", e.reason),
            )
        })?;
        Ok(EventSubject::Deployment { cluster, registry })
    }
}

impl fmt::Display for EventSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventSubject::Deployment { cluster, registry } => {
                write!(f, "{EVENTS_PREFIX}.{cluster}.{registry}")
            }
            EventSubject::Cluster { cluster } => {
                write!(f, "{EVENTS_PREFIX}.{cluster}.{CLUSTER_TOKEN}")
            }
            EventSubject::Catalog { source, registry } => {
                write!(f, "{EVENTS_PREFIX}.{CATALOG_TOKEN}.{source}.{registry}")
            }
        }
    }
}

/// The dead-letter subject for a reason code (a short lowercase token).
pub fn dlq_subject(reason_code: &str) -> String {
    format!("{DLQ_PREFIX}.{reason_code}")
}

/// The KV bucket that holds one registry.
pub fn bucket_name(registry: &RegistryName) -> String {
    format!("{BUCKET_PREFIX}{registry}")
}

/// The registry a bucket holds, or `None` for a bucket that is not Herald's.
pub fn registry_of_bucket(bucket: &str) -> Option<RegistryName> {
    bucket.strip_prefix(BUCKET_PREFIX)?.parse().ok()
}

/// The key of one deployment in its registry bucket:
/// `deployment.<cluster>.<kind>.<namespace>.<name>`.
///
/// Cluster, kind and namespace contain no dots, so splitting at the first
/// four dots recovers all parts even when the object name contains dots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentKey {
    pub cluster: ClusterId,
    pub object: ObjectRef,
}

impl DeploymentKey {
    pub fn new(cluster: ClusterId, object: ObjectRef) -> Self {
        Self { cluster, object }
    }

    /// Key prefix for every deployment of one cluster and kind (for sweeps).
    pub fn prefix(cluster: &ClusterId, kind: Kind) -> String {
        format!("{DEPLOYMENT_KEY_PREFIX}.{cluster}.{}.", kind.token())
    }

    pub fn parse(key: &str) -> Result<DeploymentKey, NameError> {
        const WHAT: &str = "deployment key";
        let mut parts = key.splitn(5, '.');
        let (Some(DEPLOYMENT_KEY_PREFIX), Some(cluster), Some(kind), Some(ns), Some(name)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(NameError::new(
                WHAT,
                key,
                "must be deployment.<cluster>.<kind>.<namespace>.<name>",
            ));
        };
        let cluster = cluster
            .parse()
            .map_err(|e: crate::ids::IdError| NameError::new(WHAT, key, e.reason))?;
        let kind = Kind::from_token(kind)
            .ok_or_else(|| NameError::new(WHAT, key, "names an unknown kind"))?;
        let object = ObjectRef::new(kind, ns, name).map_err(|e| NameError::new(WHAT, key, e))?;
        Ok(DeploymentKey { cluster, object })
    }
}

impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{DEPLOYMENT_KEY_PREFIX}.{}.{}.{}.{}",
            self.cluster,
            self.object.kind().token(),
            self.object.namespace(),
            self.object.name()
        )
    }
}

/// The key of one catalog entry in its registry bucket:
/// `catalog.<source>.<enc(name)>.<enc(version)>`.
///
/// KV keys allow only `[-/_=.a-zA-Z0-9]` and dots separate tokens, so the
/// name and version are encoded: every byte outside `[-/_a-zA-Z0-9]`
/// (dots and `=` included) becomes `=XX` (hex). Reversible, and the
/// encoded parts contain no dot, so the key splits unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CatalogKey {
    pub source: SourceId,
    pub name: ServerName,
    pub version: String,
}

impl CatalogKey {
    pub fn new(source: SourceId, name: ServerName, version: impl Into<String>) -> Self {
        Self {
            source,
            name,
            version: version.into(),
        }
    }

    /// Key prefix of every entry of one source.
    pub fn prefix(source: &SourceId) -> String {
        format!("{CATALOG_KEY_PREFIX}.{source}.")
    }

    pub fn parse(key: &str) -> Result<CatalogKey, NameError> {
        const WHAT: &str = "catalog key";
        let mut parts = key.split('.');
        let (Some(CATALOG_KEY_PREFIX), Some(source), Some(name), Some(version), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(NameError::new(
                WHAT,
                key,
                "must be catalog.<source>.<name>.<version>",
            ));
        };
        let source = source
            .parse()
            .map_err(|e: crate::ids::IdError| NameError::new(WHAT, key, e.reason))?;
        let name = decode_token(name)
            .ok_or_else(|| NameError::new(WHAT, key, "has a badly encoded name"))?
            .parse()
            .map_err(|e: crate::ids::IdError| NameError::new(WHAT, key, e.reason))?;
        let version = decode_token(version)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| NameError::new(WHAT, key, "has a badly encoded version"))?;
        Ok(CatalogKey {
            source,
            name,
            version,
        })
    }
}

impl fmt::Display for CatalogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CATALOG_KEY_PREFIX}.{}.{}.{}",
            self.source,
            encode_token(self.name.as_str()),
            encode_token(&self.version)
        )
    }
}

/// Which kind of value a registry bucket key holds; deployment and catalog
/// keys never overlap (their first tokens differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Deployment,
    Catalog,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Deployment => "deployment",
            KeyKind::Catalog => "catalog entry",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any key of a registry bucket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketKey {
    Deployment(DeploymentKey),
    Catalog(CatalogKey),
}

impl BucketKey {
    /// Parses a key by its first token: `deployment.…` or `catalog.…`.
    pub fn parse(key: &str) -> Result<BucketKey, NameError> {
        match key.split_once('.').map(|(first, _)| first) {
            Some(DEPLOYMENT_KEY_PREFIX) => DeploymentKey::parse(key).map(BucketKey::Deployment),
            Some(CATALOG_KEY_PREFIX) => CatalogKey::parse(key).map(BucketKey::Catalog),
            _ => Err(NameError::new(
                "bucket key",
                key,
                "is neither a deployment.… nor a catalog.… key",
            )),
        }
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            BucketKey::Deployment(_) => KeyKind::Deployment,
            BucketKey::Catalog(_) => KeyKind::Catalog,
        }
    }
}

impl fmt::Display for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketKey::Deployment(k) => k.fmt(f),
            BucketKey::Catalog(k) => k.fmt(f),
        }
    }
}

fn encode_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-/_".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn decode_token(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `key` is a legal NATS KV key (what the server accepts).
pub fn is_valid_kv_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(s: &str) -> ClusterId {
        s.parse().unwrap()
    }

    #[test]
    fn subjects_round_trip() {
        let s = EventSubject::Deployment {
            cluster: cluster("eu-1"),
            registry: "team-a".parse().unwrap(),
        };
        assert_eq!(s.to_string(), "herald.events.eu-1.team-a");
        assert_eq!(EventSubject::parse(&s.to_string()).unwrap(), s);
        let c = EventSubject::Cluster {
            cluster: cluster("eu-1"),
        };
        assert_eq!(c.to_string(), "herald.events.eu-1._cluster");
        assert_eq!(EventSubject::parse(&c.to_string()).unwrap(), c);
        for bad in [
            "herald.events",
            "herald.events.eu-1",
            "herald.events.EU.x",
            "herald.events.eu.x.y",
            "other.events.eu.x",
            "herald.events.eu._other",
        ] {
            assert!(EventSubject::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_name_their_registry() {
        let r: RegistryName = "team-a".parse().unwrap();
        assert_eq!(registry_of_bucket(&bucket_name(&r)), Some(r));
        assert_eq!(registry_of_bucket(CLUSTERS_BUCKET), None);
        assert_eq!(registry_of_bucket("other"), None);
    }

    #[test]
    fn keys_with_dotted_names_round_trip() {
        let key = DeploymentKey::new(
            cluster("c1"),
            ObjectRef::new(Kind::MCPRemoteProxy, "ns", "a.b.c").unwrap(),
        );
        let text = key.to_string();
        assert_eq!(text, "deployment.c1.mcpremoteproxy.ns.a.b.c");
        assert!(is_valid_kv_key(&text));
        assert_eq!(DeploymentKey::parse(&text).unwrap(), key);
        assert!(text.starts_with(&DeploymentKey::prefix(&cluster("c1"), Kind::MCPRemoteProxy)));
        assert!(DeploymentKey::parse("deployment.c1.pod.ns.a").is_err());
        assert!(DeploymentKey::parse("catalog.c1.mcpserver.ns.a").is_err());
    }

    #[test]
    fn catalog_subjects_and_keys_round_trip() {
        let s = EventSubject::Catalog {
            source: "upstream".parse().unwrap(),
            registry: "team-a".parse().unwrap(),
        };
        assert_eq!(s.to_string(), "herald.events._catalog.upstream.team-a");
        assert_eq!(EventSubject::parse(&s.to_string()).unwrap(), s);
        assert!(EventSubject::parse("herald.events._catalog.upstream").is_err());
        assert!(EventSubject::parse("herald.events._catalog.Up.x").is_err());
        let key = CatalogKey::new(
            "upstream".parse().unwrap(),
            "io.github.user/weather.v2".parse().unwrap(),
            "1.0.2-rc.1+build=5",
        );
        let text = key.to_string();
        assert_eq!(
            text,
            "catalog.upstream.io=2Egithub=2Euser/weather=2Ev2.1=2E0=2E2-rc=2E1=2Bbuild=3D5"
        );
        assert!(is_valid_kv_key(&text));
        assert_eq!(CatalogKey::parse(&text).unwrap(), key);
        assert!(text.starts_with(&CatalogKey::prefix(&key.source)));
        assert!(CatalogKey::parse("catalog.upstream.a=2").is_err());
        assert!(CatalogKey::parse("deployment.c1.mcpserver.ns.a").is_err());
    }
}

//! Names of NATS subjects, streams, buckets and keys.
//!
//! Every name here is built from validated identifiers, so it is always a
//! legal NATS token, and every name can be parsed back into what built it.

use std::fmt;

use crate::ids::{ClusterId, RegistryName, excerpt};
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
}

impl EventSubject {
    pub fn cluster(&self) -> &ClusterId {
        match self {
            EventSubject::Deployment { cluster, .. } | EventSubject::Cluster { cluster } => cluster,
        }
    }

    /// The subjects one cluster's watcher publishes to (for NATS permissions).
    pub fn cluster_wildcard(cluster: &ClusterId) -> String {
        format!("{EVENTS_PREFIX}.{cluster}.>")
    }

    pub fn parse(subject: &str) -> Result<EventSubject, NameError> {
        const WHAT: &str = "event subject";
        let rest = subject
            .strip_prefix(EVENTS_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| {
                NameError::new(WHAT, subject, format!("is not under {EVENTS_PREFIX}."))
            })?;
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
}

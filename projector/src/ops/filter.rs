//! Which events `events` prints: by cluster, registry, object and type. The
//! cluster and registry narrow the subject the server delivers; the rest is
//! checked on each decoded event.

use std::str::FromStr;

use herald_core::names::EVENTS_PREFIX;
use herald_core::{ClusterId, Event, EventType, Kind, RegistryName};

/// `[kind/]namespace/name`; `*` as the name matches the whole namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFilter {
    pub kind: Option<Kind>,
    pub namespace: String,
    pub name: Option<String>,
}

impl FromStr for ObjectFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [ns, name] => (None, *ns, *name),
            [kind, ns, name] => (Some(kind.parse::<Kind>()?), *ns, *name),
            _ => {
                return Err(format!(
                    "{s:?} is not of the form namespace/name or kind/namespace/name"
                ));
            }
        };
        if namespace.is_empty() || name.is_empty() {
            return Err(format!("{s:?} has an empty namespace or name"));
        }
        Ok(ObjectFilter {
            kind,
            namespace: namespace.to_owned(),
            name: (name != "*").then(|| name.to_owned()),
        })
    }
}

/// Parses `--type`: `applied`, `deployment.applied`, `dev.herald.deployment.applied`,
/// `withdrawn`, `resync.started`, `resync.completed`, `heartbeat`.
pub fn parse_type(s: &str) -> Result<EventType, String> {
    let short = s.strip_prefix(herald_core::event::TYPE_PREFIX).unwrap_or(s);
    EventType::ALL
        .into_iter()
        .find(|t| {
            t.short() == short || t.short().rsplit_once('.').is_some_and(|(_, last)| last == short)
        })
        .ok_or_else(|| {
            format!(
                "unknown event type {s:?}: expected applied, withdrawn, resync.started, resync.completed, heartbeat, catalog.applied or catalog.withdrawn"
            )
        })
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub cluster: Option<ClusterId>,
    pub registry: Option<RegistryName>,
    pub object: Option<ObjectFilter>,
    /// Any of these types; empty = all.
    pub types: Vec<EventType>,
}

impl EventFilter {
    /// The subject filter for the server: only the cluster and registry
    /// tokens can be narrowed there. Without a cluster, catalog subjects
    /// (`herald.events._catalog.<source>.<registry>`, one token longer) must
    /// pass too, so the registry is then filtered here.
    pub fn subject(&self) -> String {
        match (&self.cluster, &self.registry) {
            (Some(cluster), Some(registry)) => format!("{EVENTS_PREFIX}.{cluster}.{registry}"),
            (Some(cluster), None) => format!("{EVENTS_PREFIX}.{cluster}.>"),
            (None, _) => format!("{EVENTS_PREFIX}.>"),
        }
    }

    /// Whether a decoded event passes every filter.
    pub fn matches(&self, event: &Event) -> bool {
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| Some(c) != event.cluster())
        {
            return false;
        }
        if let Some(registry) = &self.registry
            && event.data.registry() != Some(registry)
        {
            return false;
        }
        if !self.types.is_empty() && !self.types.contains(&event.event_type()) {
            return false;
        }
        match (&self.object, event.data.object()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(object)) => {
                want.kind.is_none_or(|k| k == object.kind())
                    && want.namespace == object.namespace()
                    && want.name.as_deref().is_none_or(|n| n == object.name())
            }
        }
    }

    /// Whether a message that does not decode is shown: only when nothing
    /// but its subject is filtered on.
    pub fn shows_undecodable(&self) -> bool {
        self.object.is_none() && self.types.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_filters_parse() {
        let f: ObjectFilter = "mcpserver/team-a/fetch".parse().unwrap();
        assert_eq!(f.kind, Some(Kind::MCPServer));
        assert_eq!(f.name.as_deref(), Some("fetch"));
        let f: ObjectFilter = "team-a/*".parse().unwrap();
        assert_eq!((f.kind, f.name), (None, None));
        assert!("a".parse::<ObjectFilter>().is_err());
        assert!("pod/a/b".parse::<ObjectFilter>().is_err());
    }

    #[test]
    fn types_parse_in_every_spelling() {
        for s in [
            "applied",
            "deployment.applied",
            "dev.herald.deployment.applied",
        ] {
            assert_eq!(parse_type(s).unwrap(), EventType::DeploymentApplied);
        }
        assert_eq!(
            parse_type("heartbeat").unwrap(),
            EventType::ClusterHeartbeat
        );
        assert_eq!(
            parse_type("resync.completed").unwrap(),
            EventType::ResyncCompleted
        );
        assert!(parse_type("completed").is_ok());
        assert!(parse_type("nope").is_err());
    }

    #[test]
    fn subjects_narrow_on_cluster_and_registry() {
        let mut f = EventFilter::default();
        assert_eq!(f.subject(), "herald.events.>");
        f.cluster = Some("c1".parse().unwrap());
        assert_eq!(f.subject(), "herald.events.c1.>");
        f.registry = Some("team".parse().unwrap());
        assert_eq!(f.subject(), "herald.events.c1.team");
    }
}

//! The ToolHive kinds Herald watches and the identity of one watched object.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{excerpt, is_dns_label, is_dns_subdomain};

/// The API group of every ToolHive custom resource.
pub const TOOLHIVE_GROUP: &str = "toolhive.stacklok.dev";

/// A ToolHive resource kind that can be advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    MCPServer,
    MCPRemoteProxy,
    VirtualMCPServer,
    /// A remote server declared without infrastructure (2026): no pods, no
    /// Service; `spec.remoteUrl` is the endpoint.
    MCPServerEntry,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::MCPServer,
        Kind::MCPRemoteProxy,
        Kind::VirtualMCPServer,
        Kind::MCPServerEntry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MCPServer => "MCPServer",
            Kind::MCPRemoteProxy => "MCPRemoteProxy",
            Kind::VirtualMCPServer => "VirtualMCPServer",
            Kind::MCPServerEntry => "MCPServerEntry",
        }
    }

    /// Lowercase form used in subjects and keys, where case is not significant.
    pub fn token(self) -> &'static str {
        match self {
            Kind::MCPServer => "mcpserver",
            Kind::MCPRemoteProxy => "mcpremoteproxy",
            Kind::VirtualMCPServer => "virtualmcpserver",
            Kind::MCPServerEntry => "mcpserverentry",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::MCPServer => "mcpservers",
            Kind::MCPRemoteProxy => "mcpremoteproxies",
            Kind::VirtualMCPServer => "virtualmcpservers",
            Kind::MCPServerEntry => "mcpserverentries",
        }
    }

    /// API versions the watcher may find served, most preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            // v1beta1 is the storage version; v1alpha1 is served, deprecated.
            Kind::MCPServer | Kind::MCPServerEntry => &["v1beta1", "v1alpha1"],
            Kind::MCPRemoteProxy | Kind::VirtualMCPServer => &["v1alpha1", "v1beta1"],
        }
    }

    /// The Service ToolHive's operator creates in front of the object;
    /// `None` for an `MCPServerEntry`, which has no infrastructure.
    pub fn service_name(self, object_name: &str) -> Option<String> {
        match self {
            Kind::MCPServer => Some(format!("mcp-{object_name}-proxy")),
            Kind::MCPRemoteProxy => Some(format!("mcp-{object_name}-remote-proxy")),
            Kind::VirtualMCPServer => Some(format!("vmcp-{object_name}")),
            Kind::MCPServerEntry => None,
        }
    }

    /// The name of the kind's CustomResourceDefinition.
    pub fn crd_name(self) -> String {
        format!("{}.{TOOLHIVE_GROUP}", self.plural())
    }

    pub fn from_token(token: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.token() == token)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s) || k.plural() == s)
            .ok_or_else(|| {
                format!(
                    "unknown kind {:?}: expected MCPServer, MCPRemoteProxy, VirtualMCPServer or MCPServerEntry",
                    excerpt(s, 40)
                )
            })
    }
}

/// Kind, namespace and name: what identifies an object within one cluster.
///
/// The namespace is a DNS label and the name a DNS subdomain, as Kubernetes
/// enforces; that is what makes bucket keys built from them unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawObjectRef")]
pub struct ObjectRef {
    kind: Kind,
    namespace: String,
    name: String,
}

#[derive(Deserialize)]
struct RawObjectRef {
    kind: Kind,
    namespace: String,
    name: String,
}

impl TryFrom<RawObjectRef> for ObjectRef {
    type Error = String;
    fn try_from(raw: RawObjectRef) -> Result<Self, String> {
        ObjectRef::new(raw.kind, &raw.namespace, &raw.name)
    }
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Result<Self, String> {
        if !is_dns_label(namespace) {
            return Err(format!(
                "namespace {:?} is not a valid Kubernetes namespace name",
                excerpt(namespace, 80)
            ));
        }
        if !is_dns_subdomain(name) {
            return Err(format!(
                "name {:?} is not a valid Kubernetes object name",
                excerpt(name, 80)
            ));
        }
        Ok(Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ObjectRef {
    /// `kind/namespace/name`, the CloudEvents subject of the object's events.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.token(), self.namespace, self.name)
    }
}

impl FromStr for ObjectRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(ns), Some(name)) => ObjectRef::new(kind.parse()?, ns, name),
            _ => Err(format!(
                "{:?} is not of the form kind/namespace/name",
                excerpt(s, 80)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_tokens_and_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_token(k.token()), Some(k));
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(k.plural().parse::<Kind>().unwrap(), k);
        }
        assert!("Pod".parse::<Kind>().is_err());
    }

    #[test]
    fn object_refs_validate_and_display_as_subjects() {
        let r = ObjectRef::new(Kind::MCPServer, "team-a", "fetch.v2").unwrap();
        assert_eq!(r.to_string(), "mcpserver/team-a/fetch.v2");
        assert_eq!(r.to_string().parse::<ObjectRef>().unwrap(), r);
        assert!(ObjectRef::new(Kind::MCPServer, "a.b", "x").is_err());
        assert!(ObjectRef::new(Kind::MCPServer, "ns", "Upper").is_err());
        assert!(ObjectRef::new(Kind::MCPServer, "ns", "").is_err());
    }
}

//! Who may publish a server name: name ownership across namespaces.
//!
//! A server name belongs to namespaces, not to whoever names it first:
//!
//! - the default name `com.toolhive.k8s.<namespace>/<name>` belongs to its
//!   own namespace;
//! - any other name (set with `toolhive.stacklok.dev/registry-server-name`)
//!   belongs only to the namespaces a grant gives it to.
//!
//! A grant names a registry (or every registry), a name or a name prefix
//! ending in `*`, and the namespaces that may publish it. Namespaces are
//! matched by name in every cluster: the same namespace in several clusters
//! is one owner (that is how one server deployed in many clusters merges),
//! so a hub trusts its clusters to agree on what a namespace is — the
//! usual multi-cluster rule of namespace sameness.
//!
//! The watcher checks ownership when it maps an object (so the owner's
//! operators see the rejection on the object) and the hub's projector
//! checks it again for every event (so a cluster that is wrong or
//! compromised cannot take a name either).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::annotations::DEFAULT_SERVER_NAMESPACE_PREFIX;
use crate::ids::{RegistryName, ServerName, excerpt, is_dns_label};
use crate::rejection::Rejection;

/// Which server names a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(ServerName),
    /// Every name starting with this text (written with a trailing `*`).
    Prefix(String),
}

impl NamePattern {
    pub fn matches(&self, name: &ServerName) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Prefix(p) => name.as_str().starts_with(p.as_str()),
        }
    }
}

impl FromStr for NamePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.strip_suffix('*') {
            Some(prefix) => {
                // At least the reverse-DNS part of a name, so that `*` alone
                // (every name) cannot be granted by accident.
                if prefix.len() < 3 || prefix.contains('*') {
                    return Err(format!(
                        "name prefix {:?} is too broad: write at least the namespace part, e.g. io.github.example/*",
                        excerpt(s, 80)
                    ));
                }
                Ok(NamePattern::Prefix(prefix.to_owned()))
            }
            None => s
                .parse()
                .map(NamePattern::Exact)
                .map_err(|e| format!("{e}")),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => write!(f, "{n}"),
            NamePattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// One grant: these names, in this registry (or all), to these namespaces.
///
/// Written `[registry:]pattern=namespace1,namespace2` on a command line,
/// e.g. `io.github.github/*=tools,platform` or
/// `engineering:io.github.github/github-mcp-server=tools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawGrant", into = "RawGrant")]
pub struct NameGrant {
    pub registry: Option<RegistryName>,
    pub names: NamePattern,
    /// In order of precedence; see [`NameOwnership::rank`].
    pub namespaces: Vec<String>,
}

/// A grant as written in a policy file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGrant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry: Option<String>,
    names: String,
    namespaces: Vec<String>,
}

impl TryFrom<RawGrant> for NameGrant {
    type Error = String;
    fn try_from(raw: RawGrant) -> Result<Self, String> {
        NameGrant::new(raw.registry.as_deref(), &raw.names, raw.namespaces)
    }
}

impl From<NameGrant> for RawGrant {
    fn from(g: NameGrant) -> Self {
        RawGrant {
            registry: g.registry.map(String::from),
            names: g.names.to_string(),
            namespaces: g.namespaces,
        }
    }
}

impl NameGrant {
    pub fn new(
        registry: Option<&str>,
        names: &str,
        namespaces: impl IntoIterator<Item = String>,
    ) -> Result<Self, String> {
        let registry = registry
            .map(|r| r.trim().parse::<RegistryName>().map_err(|e| format!("{e}")))
            .transpose()?;
        let names = names.parse()?;
        let mut list: Vec<String> = Vec::new();
        for ns in namespaces {
            let ns = ns.trim().to_owned();
            if ns.is_empty() {
                continue;
            }
            if !is_dns_label(&ns) {
                return Err(format!(
                    "{:?} in the grant of {names} is not a namespace name",
                    excerpt(&ns, 80)
                ));
            }
            if !list.contains(&ns) {
                list.push(ns);
            }
        }
        if list.is_empty() {
            return Err(format!("the grant of {names} names no namespace"));
        }
        Ok(Self {
            registry,
            names,
            namespaces: list,
        })
    }

    fn applies(&self, registry: &RegistryName, name: &ServerName) -> bool {
        self.registry.as_ref().is_none_or(|r| r == registry) && self.names.matches(name)
    }
}

impl FromStr for NameGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lhs, namespaces) = s.split_once('=').ok_or_else(|| {
            format!(
                "{:?} is not of the form [registry:]name-or-prefix*=namespace1,namespace2",
                excerpt(s, 80)
            )
        })?;
        // Server names never contain ':', registry names never contain '/'.
        let (registry, names) = match lhs.split_once(':') {
            Some((r, n)) if !r.contains('/') => (Some(r), n),
            _ => (None, lhs),
        };
        NameGrant::new(registry, names, namespaces.split(',').map(str::to_owned))
    }
}

impl fmt::Display for NameGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}:")?;
        }
        write!(f, "{}={}", self.names, self.namespaces.join(","))
    }
}

/// Every grant a watcher or projector was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameOwnership {
    grants: Vec<NameGrant>,
}

impl NameOwnership {
    pub fn new(grants: impl IntoIterator<Item = NameGrant>) -> Self {
        Self {
            grants: grants.into_iter().collect(),
        }
    }

    pub fn grants(&self) -> &[NameGrant] {
        &self.grants
    }

    /// The namespace that owns a default name `com.toolhive.k8s.<ns>/…`.
    pub fn default_owner(name: &ServerName) -> Option<&str> {
        name.namespace()
            .strip_prefix(DEFAULT_SERVER_NAMESPACE_PREFIX)
            .filter(|ns| is_dns_label(ns))
    }

    /// Where `namespace` stands among the owners of `name` in `registry`:
    /// `Some(0)` for the owner of a default name and for the first
    /// namespace of the first grant that applies, larger for later ones,
    /// `None` when it is not an owner.
    pub fn rank(
        &self,
        registry: &RegistryName,
        name: &ServerName,
        namespace: &str,
    ) -> Option<usize> {
        if Self::default_owner(name) == Some(namespace) {
            return Some(0);
        }
        self.grants
            .iter()
            .filter(|g| g.applies(registry, name))
            .flat_map(|g| g.namespaces.iter())
            .position(|ns| ns == namespace)
    }

    /// Whether `namespace` may publish `name` in `registry`.
    pub fn check(
        &self,
        registry: &RegistryName,
        name: &ServerName,
        namespace: &str,
    ) -> Result<(), Rejection> {
        if self.rank(registry, name, namespace).is_some() {
            return Ok(());
        }
        let mut owners: Vec<&str> = Self::default_owner(name).into_iter().collect();
        owners.extend(
            self.grants
                .iter()
                .filter(|g| g.applies(registry, name))
                .flat_map(|g| g.namespaces.iter().map(String::as_str)),
        );
        let owner = if owners.is_empty() {
            "no namespace (no grant covers it)".to_owned()
        } else {
            format!("namespace {}", owners.join(", "))
        };
        Err(Rejection::NameNotOwned {
            name: name.to_string(),
            namespace: namespace.to_owned(),
            registry: registry.to_string(),
            owner,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        s.parse().unwrap()
    }

    fn reg(s: &str) -> RegistryName {
        s.parse().unwrap()
    }

    #[test]
    fn a_default_name_belongs_to_its_own_namespace_only() {
        let owners = NameOwnership::default();
        let n = name("com.toolhive.k8s.tools/time");
        assert!(owners.check(&reg("default"), &n, "tools").is_ok());
        let err = owners
            .check(&reg("default"), &n, "aaa-intruder")
            .unwrap_err();
        assert_eq!(err.code(), "name_not_owned");
        assert!(err.to_string().contains("namespace tools"), "{err}");
        // Nobody owns another name until a grant says so.
        let other = name("io.github.github/github-mcp-server");
        assert!(owners.check(&reg("default"), &other, "tools").is_err());
    }

    #[test]
    fn grants_give_names_or_prefixes_per_registry_in_order() {
        let owners = NameOwnership::new([
            "io.github.github/*=platform,tools"
                .parse::<NameGrant>()
                .unwrap(),
            "engineering:io.example/xy=team-a".parse().unwrap(),
        ]);
        let gh = name("io.github.github/github-mcp-server");
        assert_eq!(owners.rank(&reg("default"), &gh, "platform"), Some(0));
        assert_eq!(owners.rank(&reg("default"), &gh, "tools"), Some(1));
        assert_eq!(owners.rank(&reg("default"), &gh, "aaa"), None);
        let x = name("io.example/xy");
        assert!(owners.check(&reg("engineering"), &x, "team-a").is_ok());
        assert!(owners.check(&reg("default"), &x, "team-a").is_err());
    }

    #[test]
    fn grants_parse_and_print_and_refuse_what_is_too_broad() {
        for text in [
            "io.github.github/*=tools,platform",
            "engineering:io.github.github/github-mcp-server=tools",
        ] {
            assert_eq!(text.parse::<NameGrant>().unwrap().to_string(), text);
        }
        for bad in [
            "*=tools",
            "io.x/y",
            "io.x/y=",
            "io.x/y=Bad_NS",
            "Bad:io.x/y=a",
            "a*b*=x",
        ] {
            assert!(bad.parse::<NameGrant>().is_err(), "{bad}");
        }
        let yaml_like: NameGrant = serde_json::from_value(serde_json::json!({
            "registry": "default", "names": "io.x/*", "namespaces": ["a", "b"]
        }))
        .unwrap();
        assert_eq!(yaml_like.to_string(), "default:io.x/*=a,b");
    }
}

//! The watcher's policy: what its operator decided about advertising.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::ids::{ClusterId, RegistryName, excerpt, is_dns_label};
use crate::ownership::NameOwnership;
use crate::record::Phase;
use crate::validate::UrlRules;

/// Everything the mapping needs to know besides the object itself.
#[derive(Debug, Clone)]
pub struct WatcherPolicy {
    pub cluster: ClusterId,
    /// Registry of objects without a registry label.
    pub default_registry: RegistryName,
    /// Refuse objects without the URL annotation: a central registry has no
    /// use for cluster-local URLs.
    pub require_url_annotation: bool,
    /// Phases in which an object is advertised.
    pub advertised_phases: BTreeSet<Phase>,
    /// Which namespaces may publish into which registries.
    pub namespaces: NamespacePolicy,
    /// Which namespaces may publish which server names.
    pub names: NameOwnership,
    /// What the URL rules allow beyond the default.
    pub urls: UrlRules,
    /// Advertise an `MCPServer`'s image as an `oci` package
    /// (`--packages`, default true; see [`crate::package`]).
    pub packages: bool,
}

impl WatcherPolicy {
    /// The defaults of docs/design.md: image packages advertised, default registry `default`, Running or
    /// Ready (Valid, for an `MCPServerEntry`) advertised, derived URLs allowed, every namespace allowed into
    /// every registry, default server names only (no grants), no loopback
    /// URLs.
    pub fn new(cluster: ClusterId) -> Self {
        Self {
            cluster,
            default_registry: RegistryName::default_registry(),
            require_url_annotation: false,
            advertised_phases: [Phase::Running, Phase::Ready, Phase::Valid]
                .into_iter()
                .collect(),
            namespaces: NamespacePolicy::default(),
            names: NameOwnership::default(),
            urls: UrlRules::default(),
            packages: true,
        }
    }
}

/// Registry → the namespaces allowed to publish into it.
///
/// A registry with a rule accepts only the namespaces it lists; one without
/// a rule accepts every namespace unless `deny_unlisted` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespacePolicy {
    rules: BTreeMap<RegistryName, BTreeSet<String>>,
    deny_unlisted: bool,
}

impl NamespacePolicy {
    pub fn with_rule(mut self, rule: RegistryRule) -> Self {
        self.rules
            .entry(rule.registry)
            .or_default()
            .extend(rule.namespaces);
        self
    }

    /// Registries without a rule refuse every namespace.
    pub fn deny_unlisted(mut self) -> Self {
        self.deny_unlisted = true;
        self
    }

    pub fn allows(&self, registry: &RegistryName, namespace: &str) -> bool {
        match self.rules.get(registry) {
            Some(allowed) => allowed.contains(namespace),
            None => !self.deny_unlisted,
        }
    }
}

/// One rule, written `registry=namespace1,namespace2` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRule {
    pub registry: RegistryName,
    pub namespaces: BTreeSet<String>,
}

impl FromStr for RegistryRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (registry, namespaces) = s.split_once('=').ok_or_else(|| {
            format!(
                "{:?} is not of the form registry=namespace1,namespace2",
                excerpt(s, 80)
            )
        })?;
        let registry: RegistryName = registry.trim().parse().map_err(|e| format!("{e}"))?;
        let namespaces: BTreeSet<String> = namespaces
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if namespaces.is_empty() {
            return Err(format!("rule for registry {registry} lists no namespace"));
        }
        if let Some(bad) = namespaces.iter().find(|n| !is_dns_label(n)) {
            return Err(format!(
                "{:?} in the rule for registry {registry} is not a namespace name",
                excerpt(bad, 80)
            ));
        }
        Ok(Self {
            registry,
            namespaces,
        })
    }
}

impl fmt::Display for RegistryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
        write!(f, "{}={}", self.registry, list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_restrict_only_their_registry() {
        let rule: RegistryRule = "team-a=ns1, ns2".parse().unwrap();
        assert_eq!(rule.to_string(), "team-a=ns1,ns2");
        let policy = NamespacePolicy::default().with_rule(rule);
        let team_a: RegistryName = "team-a".parse().unwrap();
        let other: RegistryName = "other".parse().unwrap();
        assert!(policy.allows(&team_a, "ns1"));
        assert!(!policy.allows(&team_a, "ns3"));
        assert!(policy.allows(&other, "ns3"));
        assert!(!policy.deny_unlisted().allows(&other, "ns3"));
    }

    #[test]
    fn bad_rules_say_why() {
        for bad in ["team-a", "team-a=", "Team=ns", "team=Bad_ns"] {
            assert!(bad.parse::<RegistryRule>().is_err(), "{bad}");
        }
    }
}

//! Who may read which registry: the read policies of the `registries`
//! section of `--auth-config` ([`crate::auth_config`]).
//!
//! A policy names the claims a caller's token must satisfy to read a
//! registry at all (ToolHive's claim format, [`ClaimSet`]), and may say
//! whether entries without claims are visible there (overriding
//! `--hide-unclaimed-entries` for that registry). The `*` policy covers the
//! registries no policy names; without one they are open to every caller
//! (filtered by per-entry claims, [`crate::access`]).
//!
//! A registry the caller may not read answers **404 with the body of an
//! unknown registry** on every route (list, get, versions, `deployed`, the
//! feed): a 403 would confirm that the name exists, and registry names
//! (`team-payments`) are themselves information. Policies are checked in the
//! authentication middleware, once the caller is known, so no data handler
//! can forget them.

use std::collections::BTreeMap;

use herald_core::RegistryName;
use herald_core::claims::ClaimSet;

use crate::access::Viewer;

/// The key of the policy for registries no policy names.
pub const OTHER_REGISTRIES: &str = "*";

/// Whether entries without claims are shown in a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unclaimed {
    Visible,
    Hidden,
}

/// One registry's read policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPolicy {
    /// Claims a token must satisfy to read the registry; None: any caller.
    pub claims: Option<ClaimSet>,
    /// Overrides `--hide-unclaimed-entries` in this registry; None: the flag.
    pub unclaimed: Option<Unclaimed>,
}

impl ReadPolicy {
    /// The caller as it reads a registry under this policy; None: it may
    /// not read it.
    pub fn admit(&self, viewer: Viewer) -> Option<Viewer> {
        match viewer {
            // An anonymous caller holds no claims and sees only unclaimed
            // entries: a registry that requires claims, or hides unclaimed
            // entries, has nothing for it.
            Viewer::Anonymous => (self.claims.is_none()
                && self.unclaimed != Some(Unclaimed::Hidden))
            .then_some(Viewer::Anonymous),
            Viewer::Token {
                claims,
                hide_unclaimed,
            } => {
                if let Some(required) = &self.claims
                    && !required.satisfied_by(&claims)
                {
                    return None;
                }
                let hide_unclaimed = match self.unclaimed {
                    Some(Unclaimed::Visible) => false,
                    Some(Unclaimed::Hidden) => true,
                    None => hide_unclaimed,
                };
                Some(Viewer::Token {
                    claims,
                    hide_unclaimed,
                })
            }
        }
    }
}

/// Every registry's read policy.
#[derive(Debug, Clone, Default)]
pub struct ReadPolicies {
    named: BTreeMap<RegistryName, ReadPolicy>,
    /// The `*` policy.
    others: Option<ReadPolicy>,
}

impl ReadPolicies {
    pub fn new(named: BTreeMap<RegistryName, ReadPolicy>, others: Option<ReadPolicy>) -> Self {
        Self { named, others }
    }

    /// The policy of `registry`, if any applies.
    pub fn of(&self, registry: &RegistryName) -> Option<&ReadPolicy> {
        self.named.get(registry).or(self.others.as_ref())
    }

    /// The caller as it reads `registry`; None: it may not (answer 404).
    pub fn admit(&self, registry: &RegistryName, viewer: Viewer) -> Option<Viewer> {
        match self.of(registry) {
            Some(policy) => policy.admit(viewer),
            None => Some(viewer),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.others.is_none()
    }

    /// How many registries are named (for the start-up log).
    pub fn len(&self) -> usize {
        self.named.len() + usize::from(self.others.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::claims::parse_annotation;
    use serde_json::{Value, json};

    use super::*;

    fn token(v: Value, hide_unclaimed: bool) -> Viewer {
        Viewer::Token {
            claims: Arc::new(v.as_object().unwrap().clone()),
            hide_unclaimed,
        }
    }

    fn policy(claims: Option<&str>, unclaimed: Option<Unclaimed>) -> ReadPolicy {
        ReadPolicy {
            claims: claims.map(|c| parse_annotation(c).unwrap().unwrap()),
            unclaimed,
        }
    }

    fn hides(v: &Option<Viewer>) -> Option<bool> {
        match v {
            Some(Viewer::Token { hide_unclaimed, .. }) => Some(*hide_unclaimed),
            Some(Viewer::Anonymous) => Some(false),
            None => None,
        }
    }

    #[test]
    fn a_registry_needs_its_claims() {
        let team_a = policy(Some(r#"{"groups": ["team-a"]}"#), None);
        let a = token(json!({"groups": ["team-a", "x"]}), true);
        let b = token(json!({"groups": ["team-b"]}), false);
        assert_eq!(hides(&team_a.admit(a)), Some(true));
        assert!(team_a.admit(b).is_none());
        assert!(team_a.admit(Viewer::Anonymous).is_none());
    }

    #[test]
    fn a_policy_overrides_the_unclaimed_default() {
        let visible = policy(None, Some(Unclaimed::Visible));
        let hidden = policy(None, Some(Unclaimed::Hidden));
        assert_eq!(hides(&visible.admit(token(json!({}), true))), Some(false));
        assert_eq!(hides(&hidden.admit(token(json!({}), false))), Some(true));
        assert_eq!(
            hides(&policy(None, None).admit(token(json!({}), true))),
            Some(true)
        );
        assert!(visible.admit(Viewer::Anonymous).is_some());
        // Anonymous callers see only unclaimed entries: hidden leaves them nothing.
        assert!(hidden.admit(Viewer::Anonymous).is_none());
    }

    #[test]
    fn named_policies_come_before_the_catch_all() {
        let named = BTreeMap::from([(
            "open".parse().unwrap(),
            policy(None, Some(Unclaimed::Visible)),
        )]);
        let policies = ReadPolicies::new(named, Some(policy(Some(r#"{"role": "reader"}"#), None)));
        let nobody = token(json!({}), false);
        let reader = token(json!({"role": "reader"}), false);
        let open: RegistryName = "open".parse().unwrap();
        let other: RegistryName = "other".parse().unwrap();
        assert!(policies.admit(&open, nobody.clone()).is_some());
        assert!(policies.admit(&other, nobody).is_none());
        assert!(policies.admit(&other, reader).is_some());
        assert!(
            ReadPolicies::default()
                .admit(&other, Viewer::Anonymous)
                .is_some()
        );
    }
}

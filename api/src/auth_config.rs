//! The auth config file of herald-api (`--auth-config`, YAML or JSON):
//! OpenID providers each with their own audience, JWKS URL, fetch-token file
//! and CA (the `--oidc-*` flags are the one-provider shorthand), and the
//! per-registry read policies ([`crate::policy`]).
//!
//! ```yaml
//! providers:
//!   - issuer: https://keycloak.example/realms/herald
//!     audience: https://herald.example
//!   - issuer: https://kubernetes.default.svc.cluster.local
//!     audience: https://herald.example
//!     jwksUrl: https://kubernetes.default.svc/openid/v1/jwks
//!     fetchTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
//!     caFile: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
//! registries:
//!   team-a:
//!     claims: {groups: [team-a]}
//!     unclaimedEntries: visible
//!   "*":
//!     claims: {groups: [herald-readers]}
//! ```
//!
//! Unknown keys are refused (a typo must not open a registry), and every
//! error names the place, never a claim value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use herald_core::RegistryName;
use herald_core::claims::ClaimSet;
use herald_runtime::http::Url;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::policy::{OTHER_REGISTRIES, ReadPolicies, ReadPolicy, Unclaimed};

/// Largest config file read, in bytes.
pub const MAX_FILE: u64 = 1024 * 1024;
/// Most providers.
pub const MAX_PROVIDERS: usize = 16;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    registries: BTreeMap<String, RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProvider {
    issuer: String,
    audience: String,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    fetch_token_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// One provider of the file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// The `iss` of its tokens (https, or http on loopback).
    pub issuer: String,
    /// A value the token's `aud` must hold.
    pub audience: String,
    /// Keys here instead of by discovery (https, or http on loopback).
    pub jwks_url: Option<Url>,
    /// A bearer token for the discovery and JWKS requests.
    pub fetch_token_file: Option<PathBuf>,
    /// PEM CAs trusted for this provider's TLS, beside the system's.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    #[serde(default)]
    claims: Option<Map<String, Value>>,
    #[serde(default)]
    unclaimed_entries: Option<Unclaimed>,
}

/// The file, checked.
#[derive(Debug, Default)]
pub struct AuthConfig {
    pub providers: Vec<ProviderConfig>,
    pub policies: ReadPolicies,
}

/// Why the file is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE} bytes")]
    TooLarge { path: String },
    #[error("{0}")]
    Syntax(String),
    #[error("registries: {0:?} is not a registry name (nor \"*\")")]
    RegistryName(String),
    #[error("registries.{registry}.claims: {reason}")]
    Claims { registry: String, reason: String },
    #[error("providers: at most {MAX_PROVIDERS}")]
    TooManyProviders,
    #[error("providers[{index}]: {reason}")]
    Provider { index: usize, reason: String },
}

impl AuthConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let name = path.display().to_string();
        let read = |source| ConfigError::Read {
            path: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_FILE {
            return Err(ConfigError::TooLarge { path: name });
        }
        Self::parse(&text)
    }

    /// Checks a file's text (YAML, or JSON, which is YAML too).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // serde_yaml's messages name the key and position; a value can
        // appear in them only for a wrong type, which is not a claim match.
        let raw: Raw = if text.trim().is_empty() {
            Raw::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?
        };
        if raw.providers.len() > MAX_PROVIDERS {
            return Err(ConfigError::TooManyProviders);
        }
        let mut providers: Vec<ProviderConfig> = Vec::new();
        for (index, provider) in raw.providers.into_iter().enumerate() {
            let refused = |reason: String| ConfigError::Provider { index, reason };
            crate::auth::check_issuer(&provider.issuer).map_err(refused)?;
            if provider.audience.trim().is_empty() {
                return Err(refused("audience is empty".to_owned()));
            }
            if providers.iter().any(|p| p.issuer == provider.issuer) {
                return Err(refused("this issuer is already listed".to_owned()));
            }
            // The keys decide which tokens are trusted: the same rule as issuers.
            let jwks_url = match &provider.jwks_url {
                Some(raw) => Some(
                    crate::auth::check_issuer(raw).map_err(|e| refused(format!("jwksUrl {e}")))?,
                ),
                None => None,
            };
            providers.push(ProviderConfig {
                issuer: provider.issuer,
                audience: provider.audience,
                jwks_url,
                fetch_token_file: provider.fetch_token_file,
                ca_file: provider.ca_file,
            });
        }
        let mut named = BTreeMap::new();
        let mut others = None;
        for (registry, policy) in raw.registries {
            let claims = match &policy.claims {
                // `{}` asks for nothing; said plainly rather than guessed.
                Some(object) => {
                    Some(
                        ClaimSet::from_json(object).map_err(|e| ConfigError::Claims {
                            registry: registry.clone(),
                            reason: e.to_string(),
                        })?,
                    )
                }
                None => None,
            };
            let policy = ReadPolicy {
                claims,
                unclaimed: policy.unclaimed_entries,
            };
            if registry == OTHER_REGISTRIES {
                others = Some(policy);
            } else {
                let name: RegistryName = registry
                    .parse()
                    .map_err(|_| ConfigError::RegistryName(registry.clone()))?;
                named.insert(name, policy);
            }
        }
        Ok(Self {
            providers,
            policies: ReadPolicies::new(named, others),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_and_policies_are_read() {
        let config = AuthConfig::parse(
            r#"
providers:
  - issuer: https://idp.example/realms/a
    audience: https://herald.example
  - issuer: https://kubernetes.default.svc.cluster.local
    audience: https://herald.example
    jwksUrl: https://kubernetes.default.svc/openid/v1/jwks
    fetchTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
    caFile: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
registries:
  team-a:
    claims: {groups: [team-a]}
    unclaimedEntries: visible
  "*":
    claims: {groups: herald-readers}
"#,
        )
        .unwrap();
        assert_eq!(config.providers.len(), 2);
        assert!(config.providers[1].jwks_url.is_some());
        let team_a: RegistryName = "team-a".parse().unwrap();
        let policy = config.policies.of(&team_a).unwrap();
        assert_eq!(policy.unclaimed, Some(Unclaimed::Visible));
        assert!(policy.claims.is_some());
        let other: RegistryName = "other".parse().unwrap();
        assert!(config.policies.of(&other).unwrap().claims.is_some());
        // JSON is read too; an empty file is no config.
        let json = AuthConfig::parse(r#"{"registries": {"x": {"unclaimedEntries": "hidden"}}}"#);
        assert_eq!(json.unwrap().policies.len(), 1);
        assert!(AuthConfig::parse("").unwrap().policies.is_empty());
    }

    #[test]
    fn mistakes_are_refused_with_a_place() {
        let refused = |text: &str| AuthConfig::parse(text).unwrap_err().to_string();
        assert!(refused("registries: {a: {claim: {x: y}}}").contains("claim"));
        assert!(refused("registries: {a: {unclaimedEntries: maybe}}").contains("unclaimed"));
        assert!(refused("registries: {a: {claims: {x: 3}}}").contains("registries.a.claims"));
        assert!(refused("registries: {a: {claims: {}}}").contains("registries.a.claims"));
        assert!(refused("registries: {\"Not A Name\": {}}").contains("registry name"));
        assert!(
            refused("providers: [{issuer: http://idp.example, audience: a}]")
                .contains("providers[0]")
        );
        assert!(
            refused("providers: [{issuer: https://i.example, audience: a}, {issuer: https://i.example, audience: b}]")
                .contains("already")
        );
        assert!(refused("providers: [{issuer: https://i.example}]").contains("audience"));
        assert!(
            refused("providers: [{issuer: https://i.example, audience: a, jwksUrl: http://keys.example}]")
                .contains("jwksUrl")
        );
        assert!(refused("provider: []").contains("provider"));
    }

    #[test]
    fn claim_values_are_not_echoed() {
        let err = AuthConfig::parse("registries: {a: {claims: {groups: [{secret-value: 1}]}}}")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret-value"), "{err}");
    }
}

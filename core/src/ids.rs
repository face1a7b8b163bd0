//! Validated identifiers shared by every part of Herald.
//!
//! Each type can only hold a value that is valid where it is used: a
//! `ClusterId` or `RegistryName` is always a usable NATS subject token and
//! bucket suffix, and a `ServerName` always satisfies the official registry
//! rules. Parsing is the only way in, so code that holds one never re-checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct IdError {
    pub what: &'static str,
    /// The refused value, shortened so that a huge input never floods a log.
    pub value: String,
    pub reason: &'static str,
}

impl IdError {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        Self {
            what,
            value: excerpt(value, 80),
            reason,
        }
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

const DNS_LABEL_RULE: &str = "must be a lowercase DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";

/// RFC 1123 label, as Kubernetes checks namespace names.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// RFC 1123 subdomain, as Kubernetes checks most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

macro_rules! dns_label_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if is_dns_label(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::new($what, s, DNS_LABEL_RULE))
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

dns_label_id!(
    /// The identity of one Kubernetes cluster, as its watcher was configured.
    ClusterId,
    "cluster id"
);
dns_label_id!(
    /// The name of a registry: selects the bucket and the API path prefix.
    RegistryName,
    "registry name"
);
dns_label_id!(
    /// The identity of one catalog source (a lowercase DNS label, like a
    /// cluster id). It names the source's keys in a bucket, so two sources
    /// never overwrite each other's entries.
    SourceId,
    "catalog source id"
);

impl RegistryName {
    /// The registry every watcher and API uses when none is named.
    pub fn default_registry() -> Self {
        Self("default".to_owned())
    }
}

/// A server name in the official reverse-DNS form, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerName(String);

impl ServerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the slash (`io.github.user` in `io.github.user/weather`).
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// The part after the slash.
    pub fn short_name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, name)| name)
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `^[a-zA-Z0-9][a-zA-Z0-9<inner>]*[a-zA-Z0-9]$`
fn matches_edge_alnum(s: &str, inner: &[u8]) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|c| is_alnum(*c) || inner.contains(c))
}

impl FromStr for ServerName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "server name";
        let len = s.chars().count();
        if !(3..=200).contains(&len) {
            return Err(IdError::new(WHAT, s, "must be 3-200 characters long"));
        }
        let Some((namespace, name)) = s.split_once('/') else {
            return Err(IdError::new(
                WHAT,
                s,
                "must have the form namespace/name with exactly one '/'",
            ));
        };
        if name.contains('/') {
            return Err(IdError::new(WHAT, s, "must contain exactly one '/'"));
        }
        if !matches_edge_alnum(namespace, b".-") {
            return Err(IdError::new(
                WHAT,
                s,
                "the namespace before '/' must be letters, digits, '.' and '-', starting and ending with a letter or digit",
            ));
        }
        if !matches_edge_alnum(name, b"._-") {
            return Err(IdError::new(
                WHAT,
                s,
                "the name after '/' must be letters, digits, '.', '_' and '-', starting and ending with a letter or digit",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for ServerName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<ServerName> for String {
    fn from(n: ServerName) -> String {
        n.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "default", "team-a", "a1", &"x".repeat(63)] {
            assert!(ok.parse::<RegistryName>().is_ok(), "{ok}");
            assert!(ok.parse::<ClusterId>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "a b",
            &"x".repeat(64),
            "é",
        ] {
            let err = bad.parse::<ClusterId>().unwrap_err();
            assert_eq!(err.what, "cluster id");
            assert!(bad.parse::<RegistryName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn server_names_follow_the_official_rules() {
        for ok in [
            "io.github.user/weather",
            "com.toolhive.k8s.ns/my_server.v2",
            "ab/cd",
        ] {
            let n: ServerName = ok.parse().unwrap();
            assert_eq!(format!("{}/{}", n.namespace(), n.short_name()), ok);
        }
        for bad in [
            "noslash", "a/b/c", "a/bc", "ab/c", ".ab/cd", "ab/cd-", "a_b/cd", "ab/c d", "/abc",
        ] {
            assert!(bad.parse::<ServerName>().is_err(), "{bad}");
        }
        let long = format!("{}/{}", "a".repeat(100), "b".repeat(100));
        assert!(long.parse::<ServerName>().is_err());
    }

    #[test]
    fn serde_refuses_invalid_ids() {
        assert!(serde_json::from_str::<ClusterId>("\"Bad\"").is_err());
        let id: ClusterId = serde_json::from_str("\"prod-eu\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"prod-eu\"");
    }

    #[test]
    fn errors_shorten_huge_values() {
        let err = "X".repeat(10_000).parse::<RegistryName>().unwrap_err();
        assert!(err.to_string().len() < 300);
    }
}

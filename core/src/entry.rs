//! What is particular to an `MCPServerEntry`, ToolHive's zero-infrastructure
//! declaration of a remote server: the safety rule of its `spec.remoteUrl`
//! and the header declarations of its `spec.headerForward`.
//!
//! The URL rule is the operator's own (ToolHive `ValidateRemoteURL`), applied
//! again here because Herald advertises the URL to everyone who reads the
//! registry, and closed where that rule leaves gaps:
//!
//! - always refused: loopback, unspecified (`0.0.0.0/8`, `::`), link-local
//!   and cloud-metadata addresses (as for every advertised URL), and the
//!   names `localhost`, `kubernetes.default[.svc[.cluster.local]]` and
//!   `metadata.google.internal` (also as a suffix, and with a trailing dot);
//! - refused unless `spec.allowPrivateEndpoint` is true: private addresses
//!   (`10/8`, `172.16/12`, `192.168/16`, `fc00::/7`, and CGNAT `100.64/10`,
//!   which ToolHive does not list), names under `cluster.local` or `svc`, and
//!   single-label names (resolved through a cluster's search path);
//! - a watcher that requires the URL annotation (a central registry) refuses
//!   private endpoints even when the entry allows them: a cluster-internal
//!   URL is of no use to its clients.
//!
//! Forwarded headers are declared by name only: `addPlaintextHeaders` keys as
//! required headers, `addHeadersFromSecret[].headerName` as required secret
//! headers. No value, plaintext or not, ever leaves the object.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::ids::excerpt;
use crate::record::Header;
use crate::rejection::{Rejection, UrlSource};
use crate::validate::{self, UrlRules};

/// Most headers one entry may declare (ToolHive sets no limit; a client
/// asked for more than this is misconfigured, and records stay small).
pub const MAX_FORWARDED_HEADERS: usize = crate::validate::MAX_HEADERS - 1;

/// Headers a proxy never forwards (ToolHive's `RestrictedHeaders`, compared
/// case-insensitively): declaring one would tell clients to send a header
/// that HTTP itself owns.
const RESTRICTED: [&str; 17] = [
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Names that reach the cluster's own control plane or a metadata service.
const ALWAYS_BLOCKED_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes.default",
    "metadata.google.internal",
];

/// Checks an entry's remote URL (module docs) and returns it normalised.
pub fn remote_url(
    raw: &str,
    allow_private: bool,
    central: bool,
    rules: UrlRules,
) -> Result<String, Rejection> {
    let invalid = |reason: &str| Rejection::InvalidUrl {
        origin: UrlSource::EntrySpec,
        reason: reason.to_owned(),
    };
    let normalised = validate::url(raw, UrlSource::EntrySpec, rules)?;
    let parsed = url::Url::parse(&normalised).map_err(|_| invalid("it does not parse"))?;
    let private = match parsed.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let is = |blocked: &str| name == blocked || name.ends_with(&format!(".{blocked}"));
            // `localhost` passed the URL rules only if the watcher allows loopback.
            if is("localhost") {
                false
            } else if ALWAYS_BLOCKED_NAMES.iter().any(|b| is(b)) {
                return Err(invalid(
                    "its host names the Kubernetes API or a metadata service",
                ));
            } else {
                is("cluster.local") || is("svc") || !name.contains('.')
            }
        }
        Some(url::Host::Ipv4(v4)) => is_private(IpAddr::V4(v4))?,
        Some(url::Host::Ipv6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4))?,
            None => is_private(IpAddr::V6(v6))?,
        },
        None => return Err(invalid("it has no host")),
    };
    if private && !allow_private {
        return Err(invalid(
            "its host is a private or cluster-internal address; set spec.allowPrivateEndpoint to advertise it",
        ));
    }
    if private && central {
        return Err(invalid(
            "its host is a private or cluster-internal address, which this watcher does not advertise (it requires the URL annotation)",
        ));
    }
    Ok(normalised)
}

/// Whether an address is private; `0.0.0.0/8` is refused outright (the
/// loopback, link-local and metadata ranges were refused by the URL rules).
fn is_private(ip: IpAddr) -> Result<bool, Rejection> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if a == 0 {
                return Err(Rejection::InvalidUrl {
                    origin: UrlSource::EntrySpec,
                    reason: "its host is in 0.0.0.0/8, which means this network".to_owned(),
                });
            }
            Ok(v4.is_private() || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => Ok((v6.segments()[0] & 0xfe00) == 0xfc00),
    }
}

/// The header declarations of `spec.headerForward` (module docs).
pub fn forwarded_headers(header_forward: Option<&Value>) -> Result<Vec<Header>, Rejection> {
    let Some(forward) = header_forward else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| Rejection::InvalidHeader { reason };
    let plain: Vec<&str> = match forward.get("addPlaintextHeaders") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => map.keys().map(String::as_str).collect(),
        Some(_) => {
            return Err(invalid(
                "spec.headerForward.addPlaintextHeaders is not a map of header names".to_owned(),
            ));
        }
    };
    let secret: Vec<&str> = match forward.get("addHeadersFromSecret") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.get("headerName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(
                            "an item of spec.headerForward.addHeadersFromSecret has no headerName"
                                .to_owned(),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                "spec.headerForward.addHeadersFromSecret is not a list".to_owned(),
            ));
        }
    };
    if plain.len() + secret.len() > MAX_FORWARDED_HEADERS {
        return Err(invalid(format!(
            "spec.headerForward names {} headers; at most {MAX_FORWARDED_HEADERS}",
            plain.len() + secret.len()
        )));
    }
    // Secret-sourced first: a name in both lists is declared secret.
    let declared = secret
        .iter()
        .map(|n| (*n, true))
        .chain(plain.iter().map(|n| (*n, false)));
    let mut headers: Vec<Header> = Vec::new();
    for (name, is_secret) in declared {
        if RESTRICTED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return Err(invalid(format!(
                "spec.headerForward names {name}, a header HTTP itself sets; it is never forwarded"
            )));
        }
        let header = Header {
            name: name.to_owned(),
            description: None,
            is_required: true,
            is_secret,
            extra: Map::new(),
        };
        validate::header(&header).map_err(|_| {
            invalid(format!(
                "spec.headerForward names {:?}, which is not an HTTP header name",
                excerpt(name, 40)
            ))
        })?;
        if !headers.iter().any(|h| h.name.eq_ignore_ascii_case(name)) {
            headers.push(header);
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(raw: &str, allow_private: bool) -> Result<String, String> {
        remote_url(raw, allow_private, false, UrlRules::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn public_urls_pass_normalised() {
        assert_eq!(
            check("https://MCP.example.com/mcp", false).unwrap(),
            "https://mcp.example.com/mcp"
        );
        assert!(check("http://8.8.8.8:8080/sse", false).is_ok());
        assert!(check("https://foo.bar.svc.example.com/mcp", false).is_ok());
    }

    #[test]
    fn blocked_classes_are_refused_even_when_private_endpoints_are_allowed() {
        for raw in [
            "http://127.0.0.1/mcp",
            "http://[::1]/mcp",
            "http://localhost/mcp",
            "http://api.localhost./mcp",
            "http://0.0.0.0/mcp",
            "http://0.1.2.3/mcp",
            "http://169.254.169.254/latest",
            "http://[fe80::1]/mcp",
            "http://[::ffff:169.254.169.254]/x",
            "https://kubernetes.default/mcp",
            "https://kubernetes.default.svc/mcp",
            "https://KUBERNETES.default.svc.cluster.local./mcp",
            "http://metadata.google.internal/computeMetadata",
        ] {
            let err = check(raw, true).unwrap_err();
            assert!(err.contains("spec.remoteUrl"), "{raw}: {err}");
            assert!(!err.contains(raw), "the URL is never echoed: {err}");
        }
    }

    #[test]
    fn private_targets_need_the_entry_opt_in() {
        for raw in [
            "http://10.1.2.3/mcp",
            "http://172.16.0.1/mcp",
            "http://192.168.1.1/mcp",
            "http://100.64.0.1/mcp",
            "http://[fd00::1]/mcp",
            "http://[::ffff:10.0.0.1]/mcp",
            "http://mcp.team-a.svc.cluster.local:8080/mcp",
            "http://mcp.team-a.svc/mcp",
            "http://mcp/mcp",
        ] {
            let err = check(raw, false).unwrap_err();
            assert!(err.contains("allowPrivateEndpoint"), "{raw}: {err}");
            assert!(check(raw, true).is_ok(), "{raw}");
            let central = remote_url(raw, true, true, UrlRules::default()).unwrap_err();
            assert!(
                central.to_string().contains("requires the URL annotation"),
                "{raw}"
            );
        }
    }

    #[test]
    fn loopback_only_with_the_watchers_own_allowance() {
        let rules = UrlRules {
            allow_loopback: true,
        };
        assert!(remote_url("http://127.0.0.1:9/mcp", false, false, rules).is_ok());
        assert!(remote_url("http://localhost:9/mcp", false, false, rules).is_ok());
        assert!(remote_url("https://kubernetes.default/mcp", true, false, rules).is_err());
    }

    #[test]
    fn forwarded_headers_are_declared_by_name_only() {
        let headers = forwarded_headers(Some(&json!({
            "addPlaintextHeaders": {"X-Tenant-ID": "tenant-123", "X-Secret-Too": "plain"},
            "addHeadersFromSecret": [
                {"headerName": "X-Secret-Too", "valueSecretRef": {"name": "s", "key": "k"}},
                {"headerName": "X-Api-Key", "valueSecretRef": {"name": "s", "key": "k"}}
            ]
        })))
        .unwrap();
        let summary: Vec<(&str, bool, bool)> = headers
            .iter()
            .map(|h| (h.name.as_str(), h.is_required, h.is_secret))
            .collect();
        assert_eq!(
            summary,
            [
                ("X-Secret-Too", true, true),
                ("X-Api-Key", true, true),
                ("X-Tenant-ID", true, false)
            ]
        );
        let json = serde_json::to_string(&headers).unwrap();
        assert!(!json.contains("tenant-123") && !json.contains("plain"));
        assert!(headers.iter().all(|h| h.extra.is_empty()));
    }

    #[test]
    fn bad_header_forwards_are_refused_with_a_reason() {
        let refused = |v: Value| forwarded_headers(Some(&v)).unwrap_err().to_string();
        assert!(refused(json!({"addPlaintextHeaders": {"Host": "x"}})).contains("Host"));
        assert!(
            refused(json!({"addPlaintextHeaders": {"Bad Name": "x"}}))
                .contains("not an HTTP header name")
        );
        assert!(refused(json!({"addPlaintextHeaders": ["x"]})).contains("map"));
        assert!(refused(json!({"addHeadersFromSecret": [{}]})).contains("headerName"));
        let many: Map<String, Value> = (0..=MAX_FORWARDED_HEADERS)
            .map(|i| (format!("X-H{i}"), json!("v")))
            .collect();
        assert!(refused(json!({"addPlaintextHeaders": many})).contains("at most 32"));
        assert!(forwarded_headers(None).unwrap().is_empty());
    }
}

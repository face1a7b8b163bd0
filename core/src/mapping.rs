//! The mapping: a ToolHive object, as JSON, plus the watcher's policy →
//! advertise a record, skip it, or reject it with a reason.
//!
//! Fields are read leniently so that both CRD eras work: `MCPServer`
//! `v1alpha1` (2025) and `v1beta1`, `MCPRemoteProxy`, `VirtualMCPServer` and
//! `MCPServerEntry` (2026; `remoteURL` and a bare-string `groupRef` of its
//! first weeks are read too).
//! Rules, in the order they are checked:
//!
//! 1. identity: `metadata.name`, `namespace`, `uid`, `resourceVersion`;
//! 2. opt-in: annotation `registry-export` must be exactly `"true"`;
//! 3. registry: label `registry-name` (legacy alias `toolhive.stacklok.io/…`),
//!    else the default; it must be a DNS label and the namespace allowed;
//! 4. metadata: description (required, 1-100 characters), title (1-100),
//!    icon (an https URL), category, tools (a JSON array of names), tool
//!    definitions (a JSON array of MCP `Tool` objects, see
//!    [`validate::tool_definitions`]). Valid definitions win over the names:
//!    their names are the advertised tools. Invalid definitions do not stop
//!    the server from being advertised: it goes without them, and
//!    [`tool_definitions_warning`] tells the watcher why; authz claims (a
//!    JSON object, see [`crate::claims`]; invalid claims reject the object,
//!    where ToolHive skips it silently);
//! 5. server name: the override annotation, else `com.toolhive.k8s.<ns>/<name>`;
//! 6. version: the annotation, else a publishable image tag, else `1.0.0`
//!    (see [`crate::version`]; an unusable annotation rejects the object);
//! 7. remote type: `spec.transport` (stdio speaks `spec.proxyMode`; an
//!    `MCPServerEntry` must name `sse` or `streamable-http`);
//! 8. URL: the annotation, else `status.url`, else the proxy Service; only
//!    `http`/`https` without user-info. An `MCPServerEntry` has no Service:
//!    the annotation, else `spec.remoteUrl`, under the entry's own safety
//!    rule ([`crate::entry`]);
//! 9. auth: any OIDC or external auth reference → a required, secret
//!    `Authorization` header (a declaration, never a value); an
//!    `MCPServerEntry`'s `spec.headerForward` → its header names;
//! 10. group: `spec.groupRef` (a name, or `{name}`), a Kubernetes name;
//! 11. package: an `MCPServer`'s image with a publishable tag, unless the
//!     policy turns packages off (see [`crate::package`]; an image that
//!     gives none is no rejection, the server is advertised without it);
//! 12. phase: only the policy's phases (Running/Ready, and Valid for an
//!     `MCPServerEntry`) are advertised.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::annotations as ann;
use crate::claims;
use crate::entry;
use crate::ids::{RegistryName, ServerName, excerpt, is_dns_subdomain};
use crate::object::{Kind, ObjectRef};
use crate::package;
use crate::policy::WatcherPolicy;
use crate::record::{
    DeploymentRecord, Header, Phase, RECORD_VERSION, Remote, RemoteTransport, WithdrawReason,
};
use crate::rejection::{Rejection, UrlSource};
use crate::validate::{self, Lines};
use crate::version;

/// When and in which list epoch the watcher saw the object.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub observed_at: DateTime<Utc>,
    pub epoch: u64,
}

/// What to do with one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Advertise this record.
    Advertise(Box<DeploymentRecord>),
    /// Do not advertise, and that is fine: opted out or not ready.
    Skip(WithdrawReason),
    /// Opted in but cannot be advertised; an operator must hear why.
    Reject(Rejection),
}

/// The identity and bookkeeping of an object, readable even when the rest
/// of it is rejected (a watcher needs it to log and to withdraw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub object: ObjectRef,
    pub uid: String,
    pub resource_version: String,
    pub generation: Option<i64>,
    pub created_at: Option<DateTime<Utc>>,
}

impl Identity {
    pub fn read(kind: Kind, object: &Value) -> Result<Identity, Rejection> {
        let field = |name: &str| {
            str_at(object, &["metadata", name])
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Rejection::Malformed(format!("metadata.{name} is missing")))
        };
        let object_ref = ObjectRef::new(kind, field("namespace")?, field("name")?)
            .map_err(Rejection::Malformed)?;
        Ok(Identity {
            object: object_ref,
            uid: field("uid")?.to_owned(),
            resource_version: field("resourceVersion")?.to_owned(),
            generation: at(object, &["metadata", "generation"]).and_then(Value::as_i64),
            created_at: str_at(object, &["metadata", "creationTimestamp"])
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    }
}

/// Applies every rule of the module docs to one object.
pub fn decide(kind: Kind, object: &Value, policy: &WatcherPolicy, seen: Observation) -> Decision {
    match build_record(kind, object, policy, seen) {
        Ok(Some(record)) => Decision::Advertise(Box::new(record)),
        Ok(None) => Decision::Skip(WithdrawReason::NotReady),
        Err(Outcome::NotOptedIn) => Decision::Skip(WithdrawReason::OptedOut),
        Err(Outcome::Rejected(r)) => Decision::Reject(r),
    }
}

enum Outcome {
    NotOptedIn,
    Rejected(Rejection),
}

impl From<Rejection> for Outcome {
    fn from(r: Rejection) -> Self {
        Outcome::Rejected(r)
    }
}

/// `Ok(None)`: valid, but not in an advertised phase.
fn build_record(
    kind: Kind,
    object: &Value,
    policy: &WatcherPolicy,
    seen: Observation,
) -> Result<Option<DeploymentRecord>, Outcome> {
    let id = Identity::read(kind, object)?;
    if annotation(object, ann::REGISTRY_EXPORT) != Some("true") {
        return Err(Outcome::NotOptedIn);
    }
    let registry = registry_of(object, policy)?;
    if !policy.namespaces.allows(&registry, id.object.namespace()) {
        return Err(Rejection::RegistryNotAllowed {
            registry: registry.to_string(),
            namespace: id.object.namespace().to_owned(),
        }
        .into());
    }
    let description =
        validate::description(annotation(object, ann::REGISTRY_DESCRIPTION).unwrap_or_default())?;
    let title = optional(object, ann::REGISTRY_TITLE)
        .map(validate::title)
        .transpose()?;
    let icon = optional(object, ann::REGISTRY_ICON)
        .map(|i| validate::icon(i, policy.urls))
        .transpose()?;
    let category = optional(object, ann::REGISTRY_CATEGORY)
        .map(|c| validate::text("category", c, validate::MAX_CATEGORY, Lines::One))
        .transpose()?;
    let tool_definitions = optional(object, ann::TOOL_DEFINITIONS)
        .and_then(|raw| validate::tool_definitions(raw).ok())
        .unwrap_or_default();
    let tools = if tool_definitions.is_empty() {
        tools(object)?
    } else {
        tools(object)?;
        tool_definitions
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    let authz_claims = annotation(object, ann::AUTHZ_CLAIMS)
        .map(claims::parse_annotation)
        .transpose()
        .map_err(Rejection::InvalidAuthzClaims)?
        .flatten();
    let server_name = server_name(object, &id.object)?;
    policy
        .names
        .check(&registry, &server_name, id.object.namespace())?;
    let image = str_at(object, &["spec", "image"]).map(str::to_owned);
    if let Some(image) = &image {
        validate::image(image)?;
    }
    let version = version::resolve(annotation(object, ann::REGISTRY_VERSION), image.as_deref())?;
    let (transport, remote_type) = transport(kind, object)?;
    let url = url(kind, object, &id.object, remote_type, policy)?;
    let package = image
        .as_deref()
        .filter(|_| kind == Kind::MCPServer && policy.packages)
        .and_then(|image| package::of(image, &transport, container_port(object)));
    let mut headers = if requires_token(object) {
        vec![Header::bearer_token()]
    } else {
        Vec::new()
    };
    if kind == Kind::MCPServerEntry {
        for h in entry::forwarded_headers(at(object, &["spec", "headerForward"]))? {
            if !headers.iter().any(|e| e.name.eq_ignore_ascii_case(&h.name)) {
                headers.push(h);
            }
        }
    }
    let group = group(object)?;
    let phase = Phase::from(str_at(object, &["status", "phase"]).unwrap_or("Pending"));
    if !policy.advertised_phases.contains(&phase) {
        return Ok(None);
    }
    Ok(Some(DeploymentRecord {
        v: RECORD_VERSION,
        cluster: policy.cluster.clone(),
        registry,
        object: id.object,
        uid: id.uid,
        resource_version: id.resource_version,
        generation: id.generation,
        created_at: id.created_at,
        observed_at: seen.observed_at,
        // First seen as it is now; the watcher's tracker keeps an earlier
        // time while the advertisement stays the same.
        changed_at: Some(seen.observed_at),
        epoch: seen.epoch,
        server_name,
        version,
        description,
        title,
        icon,
        category,
        tools,
        remote: Remote {
            transport: remote_type,
            url,
            headers,
            extra: Default::default(),
        },
        phase,
        image,
        transport,
        group,
        tool_definitions,
        authz_claims,
        package,
    }))
}

/// Why an object's tool definitions are left out of its record, if they
/// are: the watcher reports it while the server stays advertised.
pub fn tool_definitions_warning(object: &Value) -> Option<Rejection> {
    optional(object, ann::TOOL_DEFINITIONS).and_then(|raw| validate::tool_definitions(raw).err())
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    str_at(object, &["metadata", "annotations", key])
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    str_at(object, &["metadata", "labels", key])
}

fn registry_of(object: &Value, policy: &WatcherPolicy) -> Result<RegistryName, Rejection> {
    let (value, key) = match (
        label(object, ann::REGISTRY_NAME),
        label(object, ann::LEGACY_REGISTRY_NAME),
    ) {
        (Some(v), _) => (v, ann::REGISTRY_NAME),
        (None, Some(v)) => (v, ann::LEGACY_REGISTRY_NAME),
        (None, None) => return Ok(policy.default_registry.clone()),
    };
    value
        .parse()
        .map_err(|e: crate::ids::IdError| Rejection::InvalidRegistry {
            value: excerpt(value, 80),
            label: key,
            reason: e.reason,
        })
}

/// An optional annotation; blank counts as absent.
fn optional<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    annotation(object, key).filter(|s| !s.trim().is_empty())
}

fn tools(object: &Value) -> Result<Vec<String>, Rejection> {
    let Some(raw) = annotation(object, ann::TOOLS) else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| Rejection::InvalidTools { reason };
    let parsed: Value = serde_json::from_str(raw).map_err(|e| invalid(e.to_string()))?;
    let items = parsed
        .as_array()
        .ok_or_else(|| invalid("not an array".to_owned()))?;
    if items.len() > validate::MAX_TOOLS {
        return Err(invalid(format!(
            "{} tools; at most {}",
            items.len(),
            validate::MAX_TOOLS
        )));
    }
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(name) => validate::tool_name(name),
            None => Err(invalid(format!(
                "{} is not a tool name (a non-empty string of at most 128 characters)",
                excerpt(&item.to_string(), 40)
            ))),
        })
        .collect()
}

fn server_name(object: &Value, id: &ObjectRef) -> Result<ServerName, Rejection> {
    let (value, overridden) = match annotation(object, ann::REGISTRY_SERVER_NAME).map(str::trim) {
        Some(v) if !v.is_empty() => (v.to_owned(), true),
        _ => (
            format!(
                "{}{}/{}",
                ann::DEFAULT_SERVER_NAMESPACE_PREFIX,
                id.namespace(),
                id.name()
            ),
            false,
        ),
    };
    value
        .parse()
        .map_err(|e: crate::ids::IdError| Rejection::InvalidServerName {
            value: excerpt(&value, 80),
            reason: if overridden {
                e.reason
            } else {
                "the default name derived from namespace and name is not valid; set annotation toolhive.stacklok.dev/registry-server-name"
            },
        })
}

/// The object's own transport string and the remote type clients use.
fn transport(kind: Kind, object: &Value) -> Result<(String, RemoteTransport), Rejection> {
    let default = match kind {
        Kind::MCPServer => "stdio",
        Kind::MCPRemoteProxy | Kind::VirtualMCPServer => "streamable-http",
        // Deliberately without a default, as in ToolHive's CRD.
        Kind::MCPServerEntry => "",
    };
    let transport = str_at(object, &["spec", "transport"]).unwrap_or(default);
    let remote = match (kind, transport) {
        (Kind::MCPServer, "stdio") => {
            let mode = str_at(object, &["spec", "proxyMode"]).unwrap_or("streamable-http");
            RemoteTransport::parse(mode).ok_or_else(|| {
                Rejection::unsupported("spec.proxyMode", mode, "sse or streamable-http")
            })?
        }
        (Kind::MCPServer, t) => RemoteTransport::parse(t).ok_or_else(|| {
            Rejection::unsupported("spec.transport", t, "stdio, sse or streamable-http")
        })?,
        (_, t) => RemoteTransport::parse(t)
            .ok_or_else(|| Rejection::unsupported("spec.transport", t, "sse or streamable-http"))?,
    };
    Ok((transport.to_owned(), remote))
}

/// The port an `MCPServer`'s container listens on (`spec.mcpPort`, the
/// 2025 `spec.targetPort`), for its package; 0 when it is not a port.
fn container_port(object: &Value) -> u16 {
    let raw = at(object, &["spec", "mcpPort"]).or_else(|| at(object, &["spec", "targetPort"]));
    match raw {
        None => package::DEFAULT_CONTAINER_PORT,
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
        Some(_) => 0,
    }
}

fn proxy_port(object: &Value) -> Result<u16, Rejection> {
    let raw = at(object, &["spec", "proxyPort"]).or_else(|| at(object, &["spec", "port"]));
    let Some(raw) = raw else {
        return Ok(ann::DEFAULT_PROXY_PORT);
    };
    let port = match raw {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    port.and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Rejection::unsupported("spec.proxyPort", &raw.to_string(), "a port number 1-65535")
        })
}

fn url(
    kind: Kind,
    object: &Value,
    id: &ObjectRef,
    remote: RemoteTransport,
    policy: &WatcherPolicy,
) -> Result<String, Rejection> {
    if kind == Kind::MCPServerEntry {
        let allow_private =
            at(object, &["spec", "allowPrivateEndpoint"]).and_then(Value::as_bool) == Some(true);
        let central = policy.require_url_annotation;
        if let Some(u) = annotation(object, ann::REGISTRY_URL) {
            return entry::remote_url(u.trim(), allow_private, central, policy.urls).map_err(|e| {
                match e {
                    Rejection::InvalidUrl { reason, .. } => Rejection::InvalidUrl {
                        origin: UrlSource::Annotation,
                        reason,
                    },
                    other => other,
                }
            });
        }
        let remote = str_at(object, &["spec", "remoteUrl"])
            .or_else(|| str_at(object, &["spec", "remoteURL"]))
            .ok_or_else(|| Rejection::Malformed("spec.remoteUrl is missing".to_owned()))?;
        return entry::remote_url(remote.trim(), allow_private, central, policy.urls);
    }
    if let Some(u) = annotation(object, ann::REGISTRY_URL) {
        return validate::url(u.trim(), UrlSource::Annotation, policy.urls);
    }
    if policy.require_url_annotation {
        return Err(Rejection::UrlAnnotationRequired);
    }
    if let Some(u) = str_at(object, &["status", "url"]).filter(|u| !u.trim().is_empty()) {
        return validate::url(u.trim(), UrlSource::Status, policy.urls);
    }
    let path = match remote {
        RemoteTransport::StreamableHttp => "/mcp".to_owned(),
        RemoteTransport::Sse => format!("/sse#{}", id.name()),
    };
    let service = kind
        .service_name(id.name())
        .ok_or_else(|| Rejection::Malformed(format!("a {kind} has no Service")))?;
    let derived = format!(
        "http://{service}.{}.svc.cluster.local:{}{path}",
        id.namespace(),
        proxy_port(object)?
    );
    validate::url(&derived, UrlSource::Derived, policy.urls)
}

/// Any client authentication configured on the object means a bearer token.
fn requires_token(object: &Value) -> bool {
    let direct = [
        "oidcConfig",
        "oidcConfigRef",
        "externalAuthConfigRef",
        "authServerRef",
    ]
    .iter()
    .any(|field| at(object, &["spec", field]).is_some());
    let incoming = at(object, &["spec", "incomingAuth"]).is_some_and(|auth| {
        str_at(auth, &["type"]) != Some("anonymous")
            && (at(auth, &["oidcConfig"]).is_some() || str_at(auth, &["type"]) == Some("oidc"))
    });
    direct || incoming
}

/// `spec.groupRef`: `{"name": …}` (2026) or a bare name (earlier).
fn group(object: &Value) -> Result<Option<String>, Rejection> {
    let Some(raw) = at(object, &["spec", "groupRef"]) else {
        return Ok(None);
    };
    let name = raw
        .as_str()
        .or_else(|| str_at(raw, &["name"]))
        .ok_or_else(|| Rejection::Malformed("spec.groupRef has no name".to_owned()))?;
    if !is_dns_subdomain(name) {
        return Err(Rejection::Malformed(format!(
            "spec.groupRef {:?} is not a valid Kubernetes object name",
            excerpt(name, 80)
        )));
    }
    Ok(Some(name.to_owned()))
}

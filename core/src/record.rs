//! The deployment record: what one advertised object in one cluster says.
//!
//! A record is the body of an `applied` event and the value the projector
//! stores. It carries `"v": 1` so that a reader can tell an old record from a
//! newer format; unknown fields are ignored so that an older reader survives a
//! newer writer that only added fields.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::claims::ClaimSet;
use crate::ids::{ClusterId, RegistryName, ServerName};
use crate::object::ObjectRef;

/// The record format this build writes and the newest it can read.
pub const RECORD_VERSION: u32 = 1;

/// One advertised deployment: an opted-in, ready ToolHive object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub v: u32,
    pub cluster: ClusterId,
    pub registry: RegistryName,
    #[serde(flatten)]
    pub object: ObjectRef,
    pub uid: String,
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    pub observed_at: DateTime<Utc>,
    /// When what this record advertises last changed, as its watcher saw it:
    /// kept while re-reads and resyncs advertise the same (see
    /// [`DeploymentRecord::same_advertisement`]). The stored `changedAt` is
    /// this value, so it depends on the newest event alone, not on the order
    /// in which events were folded. Absent in records of older watchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<DateTime<Utc>>,
    /// The watcher's list epoch this record was confirmed in (see `resync`).
    pub epoch: u64,
    pub server_name: ServerName,
    pub version: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    pub remote: Remote,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The object's own `spec.transport` (stdio, sse, streamable-http).
    pub transport: String,
    /// The ToolHive group the object belongs to (`spec.groupRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// MCP `Tool` objects from the `tool-definitions` annotation, normalised
    /// by [`crate::validate::tool_definitions`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_definitions: Vec<Value>,
    /// Who may see the deployment: the claims a caller's token must carry
    /// (annotation `toolhive.stacklok.dev/authz-claims`). None: no claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz_claims: Option<ClaimSet>,
    /// The object's container image as a package clients can run
    /// themselves (an `MCPServer` with a publishable image tag, unless the
    /// watcher runs with `--packages=false`). Absent in records of watchers
    /// that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Package>,
}

impl DeploymentRecord {
    /// Whether two records advertise the same thing, ignoring bookkeeping
    /// (resource version, generation, observation time and epoch). A resync
    /// that re-reads an unchanged object is then no change to clients.
    pub fn same_advertisement(&self, other: &DeploymentRecord) -> bool {
        // Every field named, so that a new one cannot be forgotten here.
        let DeploymentRecord {
            v,
            cluster,
            registry,
            object,
            uid,
            resource_version: _,
            generation: _,
            created_at,
            observed_at: _,
            changed_at: _,
            epoch: _,
            server_name,
            version,
            description,
            title,
            icon,
            category,
            tools,
            remote,
            phase,
            image,
            transport,
            group,
            tool_definitions,
            authz_claims,
            package,
        } = self;
        *v == other.v
            && *cluster == other.cluster
            && *registry == other.registry
            && *object == other.object
            && *uid == other.uid
            && *created_at == other.created_at
            && *server_name == other.server_name
            && *version == other.version
            && *description == other.description
            && *title == other.title
            && *icon == other.icon
            && *category == other.category
            && *tools == other.tools
            && *remote == other.remote
            && *phase == other.phase
            && *image == other.image
            && *transport == other.transport
            && *group == other.group
            && *tool_definitions == other.tool_definitions
            && *authz_claims == other.authz_claims
            && *package == other.package
    }
}

/// A remote endpoint, exactly as `server.json` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    #[serde(rename = "type")]
    pub transport: RemoteTransport,
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    /// Fields a catalog's remote may carry that Herald does not model
    /// (`variables`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The two transports a remote can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoteTransport {
    #[serde(rename = "streamable-http")]
    StreamableHttp,
    #[serde(rename = "sse")]
    Sse,
}

impl RemoteTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteTransport::StreamableHttp => "streamable-http",
            RemoteTransport::Sse => "sse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "streamable-http" => Some(RemoteTransport::StreamableHttp),
            "sse" => Some(RemoteTransport::Sse),
            _ => None,
        }
    }
}

impl fmt::Display for RemoteTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A package of `server.json` `packages[]`: here always a container image
/// (`registryType` `oci`), `identifier` the image without tag or digest,
/// `version` its tag as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    pub registry_type: String,
    pub identifier: String,
    pub version: String,
    pub transport: PackageTransport,
}

/// How a client talks to a package it runs: `stdio`, or HTTP on the
/// container's own port (`url` on `localhost`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageTransport {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A header a client must or may send. Declares it; never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub is_required: bool,
    #[serde(default)]
    pub is_secret: bool,
    /// Fields a catalog's header may carry that Herald does not model
    /// (`default`, `choices`, `value`, `format`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Header {
    /// The bearer token header of a server that authenticates its clients.
    pub fn bearer_token() -> Header {
        Header {
            name: "Authorization".to_owned(),
            description: Some(
                "Bearer token issued by the identity provider this server trusts (\"Bearer <token>\")"
                    .to_owned(),
            ),
            is_required: true,
            is_secret: true,
            extra: Map::new(),
        }
    }
}

/// `status.phase` of a ToolHive object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Phase {
    Pending,
    /// The name older operators use for `Ready`.
    Running,
    Ready,
    Failed,
    Terminating,
    Stopped,
    /// An `MCPServerEntry` its operator checked (its only advertised phase).
    Valid,
    /// A phase this build does not know; kept verbatim.
    Other(String),
}

impl Phase {
    pub fn as_str(&self) -> &str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Terminating => "Terminating",
            Phase::Stopped => "Stopped",
            Phase::Valid => "Valid",
            Phase::Other(s) => s,
        }
    }
}

impl From<&str> for Phase {
    fn from(s: &str) -> Phase {
        match s {
            "Pending" => Phase::Pending,
            "Running" => Phase::Running,
            "Ready" => Phase::Ready,
            "Failed" => Phase::Failed,
            "Terminating" => Phase::Terminating,
            "Stopped" => Phase::Stopped,
            "Valid" => Phase::Valid,
            other => Phase::Other(other.to_owned()),
        }
    }
}

impl From<String> for Phase {
    fn from(s: String) -> Phase {
        Phase::from(s.as_str())
    }
}

impl From<Phase> for String {
    fn from(p: Phase) -> String {
        p.as_str().to_owned()
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a deployment stopped being advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawReason {
    /// The object was deleted.
    Deleted,
    /// The opt-in annotation was removed or is no longer `"true"`.
    OptedOut,
    /// The object left the advertised phases.
    NotReady,
    /// The object can no longer be advertised; the watcher logged why.
    Rejected,
    /// The object now targets another registry.
    Moved,
    /// A re-list of the cluster did not confirm it (deleted while unobserved).
    Unconfirmed,
}

impl WithdrawReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawReason::Deleted => "deleted",
            WithdrawReason::OptedOut => "opted_out",
            WithdrawReason::NotReady => "not_ready",
            WithdrawReason::Rejected => "rejected",
            WithdrawReason::Moved => "moved",
            WithdrawReason::Unconfirmed => "unconfirmed",
        }
    }
}

/// The body of a `deployment.withdrawn` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Withdrawal {
    pub v: u32,
    pub cluster: ClusterId,
    pub registry: RegistryName,
    #[serde(flatten)]
    pub object: ObjectRef,
    pub uid: String,
    pub resource_version: String,
    pub epoch: u64,
    pub reason: WithdrawReason,
    /// A readable explanation, e.g. the rejection reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Withdrawal {
    /// The withdrawal of what `record` advertised, as of list `epoch`.
    pub fn of(
        record: &DeploymentRecord,
        epoch: u64,
        reason: WithdrawReason,
        message: Option<String>,
    ) -> Self {
        Withdrawal {
            v: RECORD_VERSION,
            cluster: record.cluster.clone(),
            registry: record.registry.clone(),
            object: record.object.clone(),
            uid: record.uid.clone(),
            resource_version: record.resource_version.clone(),
            epoch,
            reason,
            message,
        }
    }
}

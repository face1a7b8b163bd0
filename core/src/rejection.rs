//! Why an object that opted in cannot be advertised.
//!
//! Each reason reads as a sentence an operator can act on, names the
//! annotation or field at fault, and never repeats a value that may hold a
//! credential. `code()` is the stable label for metrics and Kubernetes Events.

use crate::annotations;
use crate::claims::ClaimsError;
use crate::ids::excerpt;

/// What is wrong with an opted-in object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the object is malformed: {0}")]
    Malformed(String),
    #[error(
        "annotation {} is missing; the registry requires a description",
        annotations::REGISTRY_DESCRIPTION
    )]
    MissingDescription,
    #[error("description is {len} characters; the registry format allows 100")]
    DescriptionTooLong { len: usize },
    #[error("{field} contains control characters")]
    ControlCharacters { field: &'static str },
    #[error(
        "{field} contains invisible formatting characters (bidirectional overrides, zero-width characters…), which make text read differently from what it says"
    )]
    InvisibleCharacters { field: &'static str },
    #[error("{field} is {len} characters; 1-{max} are allowed")]
    TextLength {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is not in the normalised form Herald advertises")]
    NotNormalised { field: &'static str },
    #[error("header declaration refused: {reason}")]
    InvalidHeader { reason: String },
    #[error(
        "server name {name} belongs to {owner}; namespace {namespace} may not publish it in registry {registry}"
    )]
    NameNotOwned {
        name: String,
        namespace: String,
        registry: String,
        owner: String,
    },
    #[error("title is {len} characters; the registry format allows 1-100")]
    TitleLength { len: usize },
    #[error("registry name {value:?} from label {label} {reason}")]
    InvalidRegistry {
        value: String,
        label: &'static str,
        reason: &'static str,
    },
    #[error("namespace {namespace} is not allowed to publish into registry {registry}")]
    RegistryNotAllowed { registry: String, namespace: String },
    #[error(
        "annotation {} is required by this watcher (cluster-local URLs are not advertised)",
        annotations::REGISTRY_URL
    )]
    UrlAnnotationRequired,
    #[error("URL from {origin} is not usable: {reason}")]
    InvalidUrl { origin: UrlSource, reason: String },
    #[error("server name {value:?} is invalid: {reason}")]
    InvalidServerName { value: String, reason: &'static str },
    #[error(
        "version {value:?} from annotation {} is not usable: {reason}",
        annotations::REGISTRY_VERSION
    )]
    InvalidVersion { value: String, reason: &'static str },
    #[error(
        "icon from annotation {} is not usable: {reason}",
        annotations::REGISTRY_ICON
    )]
    InvalidIcon { reason: &'static str },
    #[error(
        "annotation {} is not a JSON array of tool names: {reason}",
        annotations::TOOLS
    )]
    InvalidTools { reason: String },
    #[error(
        "annotation {} is not usable ({reason}); the server is advertised without tool definitions",
        annotations::TOOL_DEFINITIONS
    )]
    InvalidToolDefinitions { reason: String },
    #[error(
        "the authz claims (annotation {key}) are not usable: {0}",
        key = annotations::AUTHZ_CLAIMS
    )]
    InvalidAuthzClaims(ClaimsError),
    #[error("{field} is {value:?}; expected {expected}")]
    UnsupportedField {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "its event would be {size} bytes, more than the {max} the NATS server takes \
         (max_payload); shorten the tools or other annotations"
    )]
    TooLarge { size: usize, max: usize },
}

/// Where a rejected URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    Annotation,
    Status,
    Derived,
    /// A record read from the stream or a bucket (the projector's and the
    /// API's re-check).
    Record,
    /// An `MCPServerEntry`'s `spec.remoteUrl`.
    EntrySpec,
}

impl std::fmt::Display for UrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlSource::Annotation => write!(f, "annotation {}", annotations::REGISTRY_URL),
            UrlSource::Status => f.write_str("status.url"),
            UrlSource::Derived => f.write_str("the proxy Service"),
            UrlSource::Record => f.write_str("the record"),
            UrlSource::EntrySpec => f.write_str("spec.remoteUrl"),
        }
    }
}

impl Rejection {
    /// Stable, low-cardinality label.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::MissingDescription => "missing_description",
            Rejection::DescriptionTooLong { .. } => "description_too_long",
            Rejection::ControlCharacters { .. } => "control_characters",
            Rejection::InvisibleCharacters { .. } => "invisible_characters",
            Rejection::TextLength { .. } => "invalid_text",
            Rejection::NotNormalised { .. } => "not_normalised",
            Rejection::InvalidHeader { .. } => "invalid_header",
            Rejection::NameNotOwned { .. } => "name_not_owned",
            Rejection::TitleLength { .. } => "invalid_title",
            Rejection::InvalidRegistry { .. } => "invalid_registry",
            Rejection::RegistryNotAllowed { .. } => "registry_not_allowed",
            Rejection::UrlAnnotationRequired => "url_required",
            Rejection::InvalidUrl { .. } => "invalid_url",
            Rejection::InvalidServerName { .. } => "invalid_server_name",
            Rejection::InvalidVersion { .. } => "invalid_version",
            Rejection::InvalidIcon { .. } => "invalid_icon",
            Rejection::InvalidTools { .. } => "invalid_tools",
            Rejection::InvalidToolDefinitions { .. } => "invalid_tool_definitions",
            Rejection::InvalidAuthzClaims(_) => "invalid_authz_claims",
            Rejection::UnsupportedField { .. } => "unsupported_field",
            Rejection::TooLarge { .. } => "too_large",
        }
    }

    pub(crate) fn unsupported(field: &'static str, value: &str, expected: &'static str) -> Self {
        Rejection::UnsupportedField {
            field,
            value: excerpt(value, 60),
            expected,
        }
    }
}

//! The annotation and label keys through which objects opt in, compatible
//! with ToolHive's registry server.

/// Annotation: `"true"` opts the object in; anything else opts it out.
pub const REGISTRY_EXPORT: &str = "toolhive.stacklok.dev/registry-export";
/// Label: the target registry (absent: the watcher's default registry).
pub const REGISTRY_NAME: &str = "toolhive.stacklok.dev/registry-name";
/// Annotation: the advertised URL; wins over anything derived.
pub const REGISTRY_URL: &str = "toolhive.stacklok.dev/registry-url";
/// Annotation: the server description (required, 1-100 characters).
pub const REGISTRY_DESCRIPTION: &str = "toolhive.stacklok.dev/registry-description";
pub const REGISTRY_TITLE: &str = "toolhive.stacklok.dev/registry-title";
pub const REGISTRY_VERSION: &str = "toolhive.stacklok.dev/registry-version";
pub const REGISTRY_ICON: &str = "toolhive.stacklok.dev/registry-icon";
pub const REGISTRY_CATEGORY: &str = "toolhive.stacklok.dev/registry-category";
/// Annotation: overrides the advertised server name.
pub const REGISTRY_SERVER_NAME: &str = "toolhive.stacklok.dev/registry-server-name";
/// Annotation: a JSON array of tool names.
pub const TOOLS: &str = "toolhive.stacklok.dev/tools";
/// Annotation: a JSON array of MCP `Tool` objects; when set, its names are
/// the advertised tool names.
pub const TOOL_DEFINITIONS: &str = "toolhive.stacklok.dev/tool-definitions";
/// Annotation: the claims a caller's token must carry to see the
/// deployment (a JSON object; see [`crate::claims`]).
pub const AUTHZ_CLAIMS: &str = "toolhive.stacklok.dev/authz-claims";

/// Legacy label of the first proposal, an alias of [`REGISTRY_NAME`]
/// (the current key wins when both are set).
pub const LEGACY_REGISTRY_NAME: &str = "toolhive.stacklok.io/registry-name";
/// Legacy label of the first proposal: the namespace of the registry object
/// it pointed at. Accepted and ignored: registries here are named, not placed.
pub const LEGACY_REGISTRY_NAMESPACE: &str = "toolhive.stacklok.io/registry-namespace";

/// Prefix the server name defaults to: `com.toolhive.k8s.<namespace>/<name>`.
pub const DEFAULT_SERVER_NAMESPACE_PREFIX: &str = "com.toolhive.k8s.";
/// Version advertised when neither the annotation nor the image says one.
pub const DEFAULT_VERSION: &str = "1.0.0";
/// Port the ToolHive proxy listens on when the spec names none.
pub const DEFAULT_PROXY_PORT: u16 = 8080;

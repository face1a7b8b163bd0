//! Importing catalog documents: an official registry's list or a ToolHive
//! `registry.json` → [`CatalogEntry`]s (`server.json` documents), ready to
//! be published as catalog records and merged with deployed remotes.
//!
//! Conversion is per entry: one bad entry is reported with a reason and the
//! rest of the catalog still converts. Full JSON-Schema validation is the
//! importer's job; [`check_entry`] enforces what the merge relies on.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::catalog_record::CatalogEntry;
use crate::ids::{ServerName, excerpt};
use crate::merge::SERVER_SCHEMA_URL;
use crate::validate::{self, UrlRules};

/// A whole catalog document that cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an official server list: {0}")]
    NotOfficialList(String),
    #[error("not a ToolHive registry.json: {0}")]
    NotToolHiveRegistry(String),
}

/// Why one entry of a catalog is skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {entry:?}: {reason}")]
pub struct EntryError {
    /// The entry as the source names it.
    pub entry: String,
    pub reason: String,
}

impl EntryError {
    fn new(entry: &str, reason: impl Into<String>) -> Self {
        Self {
            entry: excerpt(entry, 120),
            reason: reason.into(),
        }
    }
}

/// One page of the official list format.
#[derive(Debug, Clone, PartialEq)]
pub struct OfficialPage {
    pub entries: Vec<Result<CatalogEntry, EntryError>>,
    /// The (name, version) of the entries whose official status is
    /// `deleted` (served to `include_deleted`/`updated_since`): never
    /// imported, and withdrawn where imported before. One whose name or
    /// version does not read is left out.
    pub deleted: Vec<(ServerName, String)>,
    pub next_cursor: Option<String>,
}

/// The (name, version) of a listed item whose official status is `deleted`.
fn deleted_item(item: &Value) -> Option<Option<(ServerName, String)>> {
    let status = item["_meta"][crate::merge::OFFICIAL_META_KEY]["status"].as_str();
    if status != Some(crate::deleted::DELETED) {
        return None;
    }
    let server = &item["server"];
    let name = server["name"].as_str()?.parse().ok();
    let version = server["version"]
        .as_str()
        .and_then(|v| validate::version(v).ok());
    Some(name.zip(version))
}

/// Checks what the merge relies on: a valid name, a description of 1-100
/// characters, an exact version, and remotes with usable URLs.
pub fn check_entry(server: &Value) -> Result<CatalogEntry, EntryError> {
    let label = server["name"].as_str().unwrap_or("<no name>");
    let fail = |reason: String| EntryError::new(label, reason);
    let object = server
        .as_object()
        .ok_or_else(|| fail("is not a JSON object".to_owned()))?;
    let name: ServerName = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("has no name".to_owned()))?
        .parse()
        .map_err(|e: crate::ids::IdError| fail(e.to_string()))?;
    validate::catalog_document(server, UrlRules::default()).map_err(|e| fail(e.to_string()))?;
    let version = object
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(CatalogEntry {
        name,
        version: version.to_owned(),
        server: server.clone(),
        meta: None,
    })
}

/// Reads one page of `{"servers":[{"server":…,"_meta":…}],"metadata":{"nextCursor":…}}`.
pub fn parse_official_page(bytes: &[u8]) -> Result<OfficialPage, CatalogError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| CatalogError::NotJson(e.to_string()))?;
    let servers = doc["servers"]
        .as_array()
        .ok_or_else(|| CatalogError::NotOfficialList("no \"servers\" array".to_owned()))?;
    let mut deleted = Vec::new();
    let mut entries = Vec::new();
    for item in servers {
        if let Some(gone) = deleted_item(item) {
            deleted.extend(gone);
            continue;
        }
        entries.push(check_entry(&item["server"]).map(|mut entry| {
            entry.meta = item.get("_meta").filter(|m| !m.is_null()).cloned();
            entry
        }));
    }
    let next_cursor = doc["metadata"]["nextCursor"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok(OfficialPage {
        entries,
        deleted,
        next_cursor,
    })
}

/// The ToolHive `registry.json` format (`servers` are images, `remote_servers` URLs).
#[derive(Debug, Deserialize)]
struct ToolHiveRegistry {
    #[serde(default)]
    servers: BTreeMap<String, Value>,
    #[serde(default)]
    remote_servers: BTreeMap<String, Value>,
}

pub use crate::merge::{PUBLISHER_PROVIDED_KEY, TOOLHIVE_META_KEY};

/// Converts a ToolHive `registry.json`; `namespace` prefixes its short names
/// (`fetch` → `<namespace>/fetch`).
pub fn parse_toolhive_registry(
    bytes: &[u8],
    namespace: &str,
) -> Result<Vec<Result<CatalogEntry, EntryError>>, CatalogError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| CatalogError::NotJson(e.to_string()))?;
    if !doc.is_object() || (doc.get("servers").is_none() && doc.get("remote_servers").is_none()) {
        return Err(CatalogError::NotToolHiveRegistry(
            "needs \"servers\" or \"remote_servers\"".to_owned(),
        ));
    }
    let registry: ToolHiveRegistry = serde_json::from_value(doc)
        .map_err(|e| CatalogError::NotToolHiveRegistry(e.to_string()))?;
    let images = registry
        .servers
        .iter()
        .map(|(name, s)| convert_toolhive(name, s, namespace, Shape::Image));
    let remotes = registry
        .remote_servers
        .iter()
        .map(|(name, s)| convert_toolhive(name, s, namespace, Shape::Remote));
    Ok(images.chain(remotes).collect())
}

#[derive(Clone, Copy)]
enum Shape {
    Image,
    Remote,
}

fn convert_toolhive(
    short: &str,
    entry: &Value,
    namespace: &str,
    shape: Shape,
) -> Result<CatalogEntry, EntryError> {
    let fail = |reason: &str| EntryError::new(short, reason);
    let source = entry
        .as_object()
        .ok_or_else(|| fail("is not a JSON object"))?;
    let text = |key: &str| source.get(key).and_then(Value::as_str);
    let image = text("image");
    let version = text("version")
        .map(str::to_owned)
        .or_else(|| image.and_then(crate::version::from_image))
        .unwrap_or_else(|| crate::annotations::DEFAULT_VERSION.to_owned());
    let mut server = Map::new();
    server.insert("$schema".into(), json!(SERVER_SCHEMA_URL));
    server.insert("name".into(), json!(format!("{namespace}/{short}")));
    server.insert(
        "description".into(),
        json!(text("description").unwrap_or_default()),
    );
    server.insert("version".into(), json!(version));
    if let Some(title) = text("title") {
        server.insert("title".into(), json!(title));
    }
    if let Some(url) = text("repository_url") {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let forge = match host.as_deref() {
            Some("github.com") => "github",
            Some("gitlab.com") => "gitlab",
            Some(other) => other,
            None => "git",
        };
        server.insert("repository".into(), json!({"url": url, "source": forge}));
    }
    let transport = text("transport").unwrap_or(match shape {
        Shape::Image => "stdio",
        Shape::Remote => "streamable-http",
    });
    match shape {
        Shape::Image => {
            let image = image.ok_or_else(|| fail("an image server without \"image\""))?;
            let mut package = json!({
                "registryType": "oci",
                "identifier": image,
                "version": version,
                "transport": {"type": transport},
            });
            if transport != "stdio" {
                let port = source
                    .get("target_port")
                    .and_then(Value::as_u64)
                    .unwrap_or(8080);
                let path = if transport == "sse" { "/sse" } else { "/mcp" };
                package["transport"]["url"] = json!(format!("http://localhost:{port}{path}"));
            }
            let env: Vec<Value> = inputs(source.get("env_vars"));
            if !env.is_empty() {
                package["environmentVariables"] = json!(env);
            }
            server.insert("packages".into(), json!([package]));
        }
        Shape::Remote => {
            let url = text("url").ok_or_else(|| fail("a remote server without \"url\""))?;
            if !matches!(transport, "sse" | "streamable-http") {
                return Err(fail(
                    "a remote server's transport must be sse or streamable-http",
                ));
            }
            let mut remote = json!({"type": transport, "url": url});
            let headers = inputs(source.get("headers"));
            if !headers.is_empty() {
                remote["headers"] = json!(headers);
            }
            server.insert("remotes".into(), json!([remote]));
        }
    }
    let provided: Map<String, Value> = [
        "tier",
        "status",
        "tools",
        "tags",
        "metadata",
        "oauth_config",
    ]
    .into_iter()
    .filter_map(|k| source.get(k).map(|v| (k.to_owned(), v.clone())))
    .collect();
    if !provided.is_empty() {
        server.insert(
            "_meta".into(),
            json!({PUBLISHER_PROVIDED_KEY: {TOOLHIVE_META_KEY: provided}}),
        );
    }
    check_entry(&Value::Object(server))
}

/// ToolHive's `{name, description, required, default, secret, choices}` →
/// the registry's `{name, description, isRequired, default, isSecret, choices}`.
fn inputs(list: Option<&Value>) -> Vec<Value> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let mut out = Map::new();
            out.insert(
                "name".into(),
                item.get("name").filter(|n| n.is_string())?.clone(),
            );
            for (from, to) in [
                ("description", "description"),
                ("required", "isRequired"),
                ("secret", "isSecret"),
                ("default", "default"),
                ("choices", "choices"),
            ] {
                if let Some(v) = item.get(from).filter(|v| !v.is_null()) {
                    out.insert(to.into(), v.clone());
                }
            }
            Some(Value::Object(out))
        })
        .collect()
}

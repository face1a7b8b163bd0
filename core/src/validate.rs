//! The rules every value passes before it is advertised, shared by every
//! place a value enters: the watcher's mapping (per annotation, so the
//! rejection names the annotation), the projector (the whole record again,
//! because anyone who can publish on the stream could have written it) and
//! herald-api (every stored value again, because anyone who can write a
//! bucket could have).
//!
//! Values are refused, not repaired, with one exception: a URL is parsed
//! once with the WHATWG rules (the `url` crate) and advertised in its
//! normalised serialisation — IDN hosts in punycode, `"`, `<`, `>` and
//! spaces percent-encoded, `\` read as `/` — so that every client reads the
//! same URL the rules checked. A record must already carry that form.
//!
//! No check ever echoes a URL: it may carry credentials.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::catalog_record::CatalogRecord;
use crate::ids::excerpt;
use crate::record::{DeploymentRecord, Header, Phase};
use crate::rejection::{Rejection, UrlSource};

/// Longest description the official `server.json` schema allows.
pub const MAX_DESCRIPTION: usize = 100;
/// Longest title the official `server.json` schema allows.
pub const MAX_TITLE: usize = 100;
/// Longest category (Herald's own limit; it becomes a ToolHive tag).
pub const MAX_CATEGORY: usize = 100;
/// Longest URL advertised.
pub const MAX_URL: usize = 2048;
/// Longest icon URL the official schema allows.
pub const MAX_ICON: usize = 255;
/// Longest version the official schema allows.
pub const MAX_VERSION: usize = 255;
/// Most tool names one deployment declares.
pub const MAX_TOOLS: usize = 1000;
/// Longest tool name (the MCP spec recommends at most 128).
pub const MAX_TOOL_NAME: usize = 128;
/// Most header declarations on one deployment's remote: an MCPServerEntry's
/// forwarded headers and its `Authorization`. Each is bounded, and so is
/// their number, so a forged record cannot make every list page that holds
/// it ~1 MB.
pub const MAX_HEADERS: usize = 33;
/// Largest `tool-definitions` annotation read, in bytes. A record travels
/// as one NATS message and one KV value (1 MiB by default) and herald-api
/// serves up to 100 entries a page, so the definitions of one deployment
/// are held well below that; 64 KiB fits some hundred richly described
/// tools. Larger values are refused before they are parsed.
pub const MAX_TOOL_DEFINITIONS: usize = 64 * 1024;
/// Longest tool description kept.
pub const MAX_TOOL_DESCRIPTION: usize = 4096;
/// Deepest nesting of a tool's input or output schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Longest container image reference kept.
pub const MAX_IMAGE: usize = 512;
/// Longest Kubernetes uid or resource version kept.
pub const MAX_BOOKKEEPING: usize = 128;
/// Largest catalog `server.json` document accepted (bytes of JSON).
pub const MAX_CATALOG_DOCUMENT: usize = 64 * 1024;

/// What the URL rules allow beyond the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlRules {
    /// Also allow loopback hosts (`127.0.0.0/8`, `::1`, `localhost`): for a
    /// registry on one machine, never for a shared one.
    pub allow_loopback: bool,
}

/// Checks a URL and returns its normalised serialisation (module docs).
///
/// Refused: anything but `http`/`https`, user credentials, no host, more
/// than [`MAX_URL`] characters, white space or control characters, and
/// hosts that are IP literals in the unspecified, loopback, link-local
/// (which holds the cloud metadata address `169.254.169.254`) or other
/// cloud-metadata ranges, or named `localhost`.
pub fn url(raw: &str, source: UrlSource, rules: UrlRules) -> Result<String, Rejection> {
    let invalid = |reason: &str| Rejection::InvalidUrl {
        origin: source,
        reason: reason.to_owned(),
    };
    if raw.is_empty() {
        return Err(invalid("it is empty"));
    }
    if raw.len() > MAX_URL {
        return Err(invalid("it is longer than 2048 characters"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it contains white space or control characters"));
    }
    let parsed = url::Url::parse(raw).map_err(|e| invalid(&format!("it does not parse ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "scheme {:?} is not http or https",
            excerpt(parsed.scheme(), 20)
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "it contains user credentials, which are never advertised",
        ));
    }
    let host = parsed.host().ok_or_else(|| invalid("it has no host"))?;
    if let Some(reason) = blocked_host(&host, rules) {
        return Err(invalid(reason));
    }
    let normalised = parsed.as_str();
    if normalised.len() > MAX_URL {
        return Err(invalid("it is longer than 2048 characters once normalised"));
    }
    Ok(normalised.to_owned())
}

/// Why a host may not be advertised, if it may not.
fn blocked_host(host: &url::Host<&str>, rules: UrlRules) -> Option<&'static str> {
    let ip = match host {
        url::Host::Ipv4(v4) => IpAddr::V4(*v4),
        url::Host::Ipv6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(*v6),
        },
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            if METADATA_NAMES.contains(&name) {
                return Some("its host is a cloud metadata address");
            }
            let loopback_name = name == "localhost" || name.ends_with(".localhost");
            return (loopback_name && !rules.allow_loopback)
                .then_some("its host is localhost, which means the client's own machine");
        }
    };
    if ip.is_unspecified() {
        return Some("its host is the unspecified address");
    }
    if ip.is_loopback() {
        return (!rules.allow_loopback)
            .then_some("its host is a loopback address, which means the client's own machine");
    }
    if is_metadata(ip) {
        return Some("its host is a cloud metadata address");
    }
    if is_link_local(ip) {
        return Some("its host is a link-local address");
    }
    None
}

/// Names of cloud metadata services (resolved only inside their cloud).
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "metadata.goog"];

/// The IPv4 address an IPv6 literal stands for: IPv4-mapped (`::ffff:a.b.c.d`)
/// or through the NAT64 well-known prefix (`64:ff9b::a.b.c.d`, RFC 6052),
/// which a NAT64 gateway forwards to that IPv4 address.
fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    })
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Cloud metadata endpoints outside the link-local ranges.
fn is_metadata(ip: IpAddr) -> bool {
    const V4: [Ipv4Addr; 4] = [
        Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack…
        Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
        Ipv4Addr::new(192, 0, 0, 192),     // Oracle Cloud (classic)
        Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer
    ];
    const V6: [Ipv6Addr; 1] = [
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254), // AWS IMDS over IPv6
    ];
    match ip {
        IpAddr::V4(v4) => V4.contains(&v4),
        IpAddr::V6(v6) => V6.contains(&v6),
    }
}

/// Whether `c` is an invisible formatting character: the bidirectional
/// controls and overrides, zero-width characters, the byte-order mark and
/// the rest of Unicode's `Cf` category, and the line and paragraph
/// separators. They make text read differently from what it says.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}'
    )
}

/// How a text field may span lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Newlines and tabs allowed (a description).
    Many,
    /// No line breaks (titles, names, categories).
    One,
}

/// Checks display text: trimmed, 1..=`max` characters, no control or
/// invisible formatting characters. Returns the trimmed text.
pub fn text(field: &'static str, raw: &str, max: usize, lines: Lines) -> Result<String, Rejection> {
    let text = raw.trim();
    if text
        .chars()
        .any(|c| c.is_control() && !(lines == Lines::Many && matches!(c, '\n' | '\t')))
    {
        return Err(Rejection::ControlCharacters { field });
    }
    if text.chars().any(is_invisible) {
        return Err(Rejection::InvisibleCharacters { field });
    }
    let len = text.chars().count();
    if len == 0 || len > max {
        return Err(Rejection::TextLength { field, len, max });
    }
    Ok(text.to_owned())
}

/// The description: required, 1-100 characters, may span lines.
/// `spec.image` as carried in a record (the ToolHive block shows it): bounded,
/// without white space or control characters.
pub fn image(raw: &str) -> Result<(), Rejection> {
    if raw.len() > MAX_IMAGE || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Rejection::Malformed(format!(
            "spec.image must be at most {MAX_IMAGE} characters without white space"
        )));
    }
    Ok(())
}

pub fn description(raw: &str) -> Result<String, Rejection> {
    if raw.trim().is_empty() {
        return Err(Rejection::MissingDescription);
    }
    text("description", raw, MAX_DESCRIPTION, Lines::Many).map_err(|e| match e {
        Rejection::TextLength { len, .. } => Rejection::DescriptionTooLong { len },
        other => other,
    })
}

/// A title: 1-100 characters on one line.
pub fn title(raw: &str) -> Result<String, Rejection> {
    text("title", raw, MAX_TITLE, Lines::One).map_err(|e| match e {
        Rejection::TextLength { len, .. } => Rejection::TitleLength { len },
        other => other,
    })
}

/// An icon: an https URL of at most 255 characters (the official schema),
/// advertised normalised.
pub fn icon(raw: &str, rules: UrlRules) -> Result<String, Rejection> {
    let raw = raw.trim();
    let icon_error = |reason: &'static str| Rejection::InvalidIcon { reason };
    if raw.len() > MAX_ICON {
        return Err(icon_error("longer than 255 characters"));
    }
    let normalised = url(raw, UrlSource::Annotation, rules).map_err(|_| {
        icon_error("must be an https URL with a host, no credentials and no blocked address")
    })?;
    if !normalised.starts_with("https://") {
        return Err(icon_error(
            "must be an https URL with a host, no credentials and no blocked address",
        ));
    }
    if normalised.len() > MAX_ICON {
        return Err(icon_error("longer than 255 characters once normalised"));
    }
    Ok(normalised)
}

/// A version a registry can publish: 1-255 characters of letters, digits
/// and `.+_-`, starting with a letter or digit, no `..`, not `latest` and
/// not a range. (So no `/`, spaces or anything a path or a query could
/// read differently.)
pub fn version(raw: &str) -> Result<String, Rejection> {
    let v = raw.trim();
    let invalid = |reason| Rejection::InvalidVersion {
        value: excerpt(v, 60),
        reason,
    };
    if v.is_empty() || v.len() > MAX_VERSION {
        return Err(invalid("must be 1-255 characters"));
    }
    if v.eq_ignore_ascii_case("latest") {
        return Err(invalid("\"latest\" is not a version"));
    }
    if v.starts_with(['^', '~', '>', '<', '=', '*'])
        || v.contains("||")
        || v.split('.').any(|part| matches!(part, "x" | "X" | "*"))
    {
        return Err(invalid("must be one exact version, not a range"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-');
    if !v.chars().all(allowed) || !v.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid(
            "may hold only letters, digits and . + _ -, starting with a letter or digit",
        ));
    }
    if v.contains("..") {
        return Err(invalid("must not contain \"..\""));
    }
    Ok(v.to_owned())
}

/// One tool name: 1-128 characters on one line.
pub fn tool_name(raw: &str) -> Result<String, Rejection> {
    text("tool name", raw, MAX_TOOL_NAME, Lines::One).map_err(|e| Rejection::InvalidTools {
        reason: format!(
            "{} is not a tool name (1-128 characters, no control or invisible characters): {e}",
            excerpt(raw, 40)
        ),
    })
}

/// The `tool-definitions` annotation: a JSON array of MCP `Tool` objects
/// (spec 2025-11-25), at most [`MAX_TOOL_DEFINITIONS`] bytes and
/// [`MAX_TOOLS`] tools with distinct names. Returns them normalised: only
/// the fields the MCP `Tool` defines and Herald checks are kept (`name`,
/// `title`, `description`, `inputSchema`, `outputSchema`, `annotations`
/// with its five known keys, `execution`); `icons` and `_meta` are left
/// out (unchecked URLs and arbitrary data). Every string anywhere in them,
/// schemas included, is free of control and invisible characters, so a
/// definition cannot hide instructions from the person reading it.
pub fn tool_definitions(raw: &str) -> Result<Vec<serde_json::Value>, Rejection> {
    let invalid = |reason: String| Rejection::InvalidToolDefinitions { reason };
    if raw.len() > MAX_TOOL_DEFINITIONS {
        return Err(invalid(format!(
            "{} bytes; at most {MAX_TOOL_DEFINITIONS}",
            raw.len()
        )));
    }
    let parsed: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let items = parsed
        .as_array()
        .ok_or_else(|| invalid("not a JSON array of tools".to_owned()))?;
    if items.len() > MAX_TOOLS {
        return Err(invalid(format!(
            "{} tools; at most {MAX_TOOLS}",
            items.len()
        )));
    }
    let mut tools: Vec<serde_json::Value> = Vec::with_capacity(items.len());
    for item in items {
        let tool = tool_definition(item)?;
        if tools.iter().any(|t| t["name"] == tool["name"]) {
            return Err(invalid(format!("tool {} is defined twice", tool["name"])));
        }
        tools.push(tool);
    }
    Ok(tools)
}

/// One MCP `Tool`, normalised (see [`tool_definitions`]).
pub fn tool_definition(item: &serde_json::Value) -> Result<serde_json::Value, Rejection> {
    use serde_json::{Map, Value};
    let invalid = |reason: String| Rejection::InvalidToolDefinitions { reason };
    let object = item.as_object().ok_or_else(|| {
        invalid(format!(
            "{} is not a tool object",
            excerpt(&item.to_string(), 40)
        ))
    })?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a tool has no name".to_owned()))?;
    let name = tool_name(name).map_err(|e| invalid(e.to_string()))?;
    let field = |key: &str| object.get(key).filter(|v| !v.is_null());
    let mut out = Map::new();
    out.insert("name".to_owned(), Value::from(name.clone()));
    let in_tool = |what: &str, e: Rejection| invalid(format!("tool {name}: {what}: {e}"));
    if let Some(t) = field("title") {
        let t = t.as_str().unwrap_or_default();
        out.insert(
            "title".to_owned(),
            Value::from(self::title(t).map_err(|e| in_tool("title", e))?),
        );
    }
    if let Some(d) = field("description") {
        let d = d.as_str().unwrap_or_default();
        let d = text("tool description", d, MAX_TOOL_DESCRIPTION, Lines::Many)
            .map_err(|e| in_tool("description", e))?;
        out.insert("description".to_owned(), Value::from(d));
    }
    for (key, required) in [("inputSchema", true), ("outputSchema", false)] {
        match field(key) {
            None if required => {
                return Err(invalid(format!("tool {name} has no inputSchema")));
            }
            None => {}
            Some(schema) => {
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    return Err(invalid(format!(
                        "tool {name}: {key} must be a JSON Schema object with \"type\": \"object\""
                    )));
                }
                clean_strings(schema, 0).map_err(|e| in_tool(key, e))?;
                out.insert(key.to_owned(), schema.clone());
            }
        }
    }
    if let Some(annotations) = field("annotations") {
        let annotations = annotations
            .as_object()
            .ok_or_else(|| invalid(format!("tool {name}: annotations is not an object")))?;
        let mut kept = Map::new();
        for (key, value) in annotations {
            match (key.as_str(), value) {
                ("title", Value::String(t)) => {
                    kept.insert(
                        key.clone(),
                        Value::from(self::title(t).map_err(|e| in_tool("annotations.title", e))?),
                    );
                }
                (
                    "readOnlyHint" | "destructiveHint" | "idempotentHint" | "openWorldHint",
                    Value::Bool(_),
                ) => {
                    kept.insert(key.clone(), value.clone());
                }
                (
                    "title" | "readOnlyHint" | "destructiveHint" | "idempotentHint"
                    | "openWorldHint",
                    _,
                ) => {
                    return Err(invalid(format!(
                        "tool {name}: annotations.{key} has the wrong type"
                    )));
                }
                _ => {}
            }
        }
        out.insert("annotations".to_owned(), Value::Object(kept));
    }
    if let Some(execution) = field("execution") {
        match execution.get("taskSupport").and_then(Value::as_str) {
            Some(t @ ("forbidden" | "optional" | "required")) => {
                out.insert(
                    "execution".to_owned(),
                    serde_json::json!({"taskSupport": t}),
                );
            }
            _ => {
                return Err(invalid(format!(
                    "tool {name}: execution.taskSupport must be forbidden, optional or required"
                )));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Refuses control and invisible characters in every key and string of a
/// schema, and nesting deeper than [`MAX_SCHEMA_DEPTH`].
fn clean_strings(value: &serde_json::Value, depth: usize) -> Result<(), Rejection> {
    use serde_json::Value;
    if depth > MAX_SCHEMA_DEPTH {
        return Err(Rejection::Malformed(format!(
            "nested deeper than {MAX_SCHEMA_DEPTH} levels"
        )));
    }
    let check = |s: &str| -> Result<(), Rejection> {
        if s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        {
            return Err(Rejection::ControlCharacters { field: "schema" });
        }
        if s.chars().any(is_invisible) {
            return Err(Rejection::InvisibleCharacters { field: "schema" });
        }
        Ok(())
    };
    match value {
        Value::String(s) => check(s),
        Value::Array(items) => items.iter().try_for_each(|v| clean_strings(v, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check(k)?;
            clean_strings(v, depth + 1)
        }),
        _ => Ok(()),
    }
}

/// A header declaration of a deployment's remote: an HTTP token name,
/// declared, never with a value.
pub fn header(h: &Header) -> Result<(), Rejection> {
    let invalid = |reason: String| Rejection::InvalidHeader { reason };
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if h.name.is_empty() || h.name.len() > 128 || !h.name.chars().all(token) {
        return Err(invalid(format!(
            "{:?} is not an HTTP header name",
            excerpt(&h.name, 40)
        )));
    }
    if let Some(d) = &h.description {
        text("header description", d, 256, Lines::One)?;
    }
    if !h.extra.is_empty() {
        return Err(invalid(format!(
            "header {} carries fields a deployment never declares ({})",
            h.name,
            h.extra.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// A Kubernetes uid or resource version: what withdrawals and event ids
/// are built from.
fn bookkeeping(field: &'static str, value: &str) -> Result<(), Rejection> {
    let ok = !value.is_empty()
        && value.len() <= MAX_BOOKKEEPING
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::Malformed(format!(
            "{field} must be 1-{MAX_BOOKKEEPING} characters of letters, digits and - . _"
        )))
    }
}

/// Requires that a field already holds what the rules would make of it.
fn unchanged(field: &'static str, stored: &str, checked: String) -> Result<(), Rejection> {
    if stored == checked {
        Ok(())
    } else {
        Err(Rejection::NotNormalised { field })
    }
}

/// Every rule, on a whole deployment record: what the projector applies to
/// each `deployment.applied` event and herald-api to each stored record.
/// A record the mapping built always passes.
pub fn record(r: &DeploymentRecord, rules: UrlRules) -> Result<(), Rejection> {
    bookkeeping("uid", &r.uid)?;
    bookkeeping("resourceVersion", &r.resource_version)?;
    unchanged("description", &r.description, description(&r.description)?)?;
    if let Some(title) = &r.title {
        unchanged("title", title, self::title(title)?)?;
    }
    if let Some(i) = &r.icon {
        unchanged("icon", i, icon(i, rules)?)?;
    }
    if let Some(c) = &r.category {
        unchanged(
            "category",
            c,
            text("category", c, MAX_CATEGORY, Lines::One)?,
        )?;
    }
    if r.tools.len() > MAX_TOOLS {
        return Err(Rejection::InvalidTools {
            reason: format!("{} tools; at most {MAX_TOOLS}", r.tools.len()),
        });
    }
    for t in &r.tools {
        unchanged("tools", t, tool_name(t)?)?;
    }
    if !r.tool_definitions.is_empty() {
        let raw = serde_json::to_string(&r.tool_definitions).unwrap_or_default();
        if tool_definitions(&raw)? != r.tool_definitions {
            return Err(Rejection::NotNormalised {
                field: "toolDefinitions",
            });
        }
    }
    unchanged("version", &r.version, version(&r.version)?)?;
    unchanged(
        "remote URL",
        &r.remote.url,
        url(&r.remote.url, UrlSource::Record, rules)?,
    )?;
    if !r.remote.extra.is_empty() {
        return Err(Rejection::Malformed(
            "the remote carries fields a deployment never declares".to_owned(),
        ));
    }
    if r.remote.headers.len() > MAX_HEADERS {
        return Err(Rejection::InvalidHeader {
            reason: format!(
                "{} header declarations; at most {MAX_HEADERS}",
                r.remote.headers.len()
            ),
        });
    }
    for h in &r.remote.headers {
        header(h)?;
    }
    if let Some(i) = &r.image {
        image(i)?;
    }
    if !matches!(r.transport.as_str(), "stdio" | "sse" | "streamable-http") {
        return Err(Rejection::unsupported(
            "spec.transport",
            &r.transport,
            "stdio, sse or streamable-http",
        ));
    }
    if let Phase::Other(p) = &r.phase {
        text("status.phase", p, 64, Lines::One)?;
    }
    if let Some(claims) = &r.authz_claims {
        claims.validate().map_err(Rejection::InvalidAuthzClaims)?;
    }
    if let Some(p) = &r.package {
        crate::package::check(p)?;
    }
    Ok(())
}

/// The rules for a catalog entry's `server.json` document: what the merge
/// relies on (description, version, remotes, icons) with the same text and
/// URL rules as deployments, and a bounded size. The importer applies it
/// to every entry it reads and the projector again to every entry on the
/// stream. (The importer also checks the full JSON schema.)
pub fn catalog_document(doc: &serde_json::Value, rules: UrlRules) -> Result<(), Rejection> {
    let size = serde_json::to_vec(doc).map_or(usize::MAX, |b| b.len());
    if size > MAX_CATALOG_DOCUMENT {
        return Err(Rejection::Malformed(format!(
            "the catalog entry is {size} bytes of JSON; at most {MAX_CATALOG_DOCUMENT}"
        )));
    }
    let field = |name: &str| doc.get(name).and_then(serde_json::Value::as_str);
    version(field("version").unwrap_or_default())?;
    description(field("description").unwrap_or_default())?;
    if let Some(t) = field("title") {
        title(t)?;
    }
    let urls = |list: &str, key: &str| -> Vec<String> {
        doc.get(list)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| {
                item.get(key)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    for u in urls("remotes", "url") {
        // Templated URLs (`https://{tenant}.example.com/mcp`) are the client's to fill in.
        if !u.contains('{') {
            url(&u, UrlSource::Record, rules)?;
        }
    }
    for src in urls("icons", "src") {
        icon(&src, rules)?;
    }
    Ok(())
}

/// The rules for a catalog record on the stream or in a bucket: its
/// document passes [`catalog_document`], names the record's own name and
/// version, and with the source's `_meta` stays within the size bound.
pub fn catalog_record(r: &CatalogRecord, rules: UrlRules) -> Result<(), Rejection> {
    let doc = &r.server;
    let field = |name: &str| doc.get(name).and_then(serde_json::Value::as_str);
    if field("name") != Some(r.server_name.as_str()) || field("version") != Some(&r.version) {
        return Err(Rejection::Malformed(
            "the document's name and version differ from the record's".to_owned(),
        ));
    }
    catalog_document(doc, rules)?;
    let meta = r
        .meta
        .as_ref()
        .and_then(|m| serde_json::to_vec(m).ok())
        .map_or(0, |b| b.len());
    if meta > MAX_CATALOG_DOCUMENT {
        return Err(Rejection::Malformed(format!(
            "the catalog entry's _meta is {meta} bytes of JSON; at most {MAX_CATALOG_DOCUMENT}"
        )));
    }
    if let Some(claims) = &r.authz_claims {
        claims.validate().map_err(Rejection::InvalidAuthzClaims)?;
    }
    Ok(())
}

/// The rules for a value read from a bucket: a live record passes
/// [`record`] or [`catalog_record`]; tombstones carry nothing served.
pub fn stored(value: &crate::stored::StoredValue, rules: UrlRules) -> Result<(), Rejection> {
    use crate::stored::StoredValue;
    match value {
        StoredValue::Deployment(d) => match d.live() {
            Some(r) => record(r, rules),
            None => d.last.as_deref().map_or(Ok(()), last_served),
        },
        StoredValue::Catalog(c) => match c.live() {
            Some(r) => catalog_record(r, rules),
            None => c.last.as_deref().map_or(Ok(()), last_served),
        },
    }
}

/// What a tombstone keeps to serve a deleted entry: the text rules of a
/// catalog document (the looser of the two kinds of value it comes from).
pub fn last_served(t: &crate::tombstone::LastServed) -> Result<(), Rejection> {
    description(&t.description)?;
    if let Some(t) = &t.title {
        title(t)?;
    }
    version(&t.version)?;
    if let Some(claims) = &t.authz_claims {
        claims.validate().map_err(Rejection::InvalidAuthzClaims)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        url(raw, UrlSource::Annotation, UrlRules::default()).unwrap()
    }

    fn refused(raw: &str) -> String {
        url(raw, UrlSource::Annotation, UrlRules::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn urls_are_served_in_their_normalised_form() {
        assert_eq!(ok("https://Example.COM/mcp"), "https://example.com/mcp");
        assert_eq!(
            ok("https://bücher.example/mcp"),
            "https://xn--bcher-kva.example/mcp"
        );
        assert_eq!(
            ok("https://good.example.com\\@evil.example.com/mcp"),
            "https://good.example.com/@evil.example.com/mcp"
        );
        assert_eq!(
            ok("https://x.example/a\"<b>"),
            "https://x.example/a%22%3Cb%3E"
        );
        assert_eq!(
            ok("http://mcp.ns.svc.cluster.local:8080/mcp"),
            "http://mcp.ns.svc.cluster.local:8080/mcp"
        );
    }

    #[test]
    fn blocked_hosts_are_refused_without_echoing_the_url() {
        for raw in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://127.0.0.1:8080/mcp",
            "http://[::1]/mcp",
            "http://[::ffff:127.0.0.1]/mcp",
            "http://localhost/mcp",
            "http://0.0.0.0/mcp",
            "http://[fe80::1]/mcp",
            "http://2130706433/mcp",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "http://[64:ff9b::7f00:1]/mcp",
            "http://168.63.129.16/meta-data",
            "http://metadata.google.internal/computeMetadata/v1",
            "http://metadata.google.internal./computeMetadata/v1",
            "javascript:alert(1)",
            "https://user:secret@example.com/mcp",
        ] {
            let reason = refused(raw);
            assert!(
                !reason.contains("secret") && !reason.contains("meta-data"),
                "{reason}"
            );
        }
        let loopback = UrlRules {
            allow_loopback: true,
        };
        assert!(url("http://127.0.0.1:8080/mcp", UrlSource::Annotation, loopback).is_ok());
        assert!(url("http://169.254.169.254/", UrlSource::Annotation, loopback).is_err());
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for bad in [
            "a\u{202E}b",
            "a\u{200B}b",
            "\u{FEFF}x",
            "a\u{2066}b",
            "a\u{E0041}b",
        ] {
            assert_eq!(
                text("title", bad, 100, Lines::One),
                Err(Rejection::InvisibleCharacters { field: "title" })
            );
        }
        assert!(text("title", "a\nb", 100, Lines::One).is_err());
        assert!(text("description", "a\nb", 100, Lines::Many).is_ok());
        assert!(text("title", "Zeitzonen – «ok» 時間", 100, Lines::One).is_ok());
    }

    #[test]
    fn versions_must_be_publishable() {
        for good in ["1.0.0", "2.1.0-rc.1+build.5", "2025.01.02", "v3", "1_0"] {
            assert_eq!(version(good).as_deref(), Ok(good));
        }
        for bad in [
            "1.0/../../x",
            "../1",
            "1..0",
            "1.0 beta",
            "latest",
            "^1.0",
            "1.x",
            "-1",
            "1.0?x=y",
            "",
        ] {
            assert!(version(bad).is_err(), "{bad}");
        }
    }
}

//! A container image reference (`[registry/]repository[:tag][@digest]`),
//! read by the grammar of the OCI distribution reference
//! (`distribution/reference`): the parts Herald advertises — the repository
//! as an `oci` package identifier and the tag as its version — and nothing
//! that does not parse as an image a runtime could pull.

/// Longest repository name a registry accepts (the reference grammar's bound).
pub const MAX_NAME: usize = 255;
/// Longest tag (`[\w][\w.-]{0,127}`).
pub const MAX_TAG: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// `[registry[:port]/]path`, as written (no tag, no digest).
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// `None` when `raw` is not an image reference.
    pub fn parse(raw: &'a str) -> Option<ImageRef<'a>> {
        let (named, digest) = match raw.split_once('@') {
            Some((named, digest)) => (named, Some(digest)),
            None => (raw, None),
        };
        if digest.is_some_and(|d| !is_digest(d)) {
            return None;
        }
        // A tag follows the last `:` after the last `/` (a registry port is before it).
        let last_slash = named.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match named[last_slash..].rfind(':') {
            Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
            None => (named, None),
        };
        if tag.is_some_and(|t| !is_tag(t)) || !is_name(name) {
            return None;
        }
        Some(ImageRef { name, tag, digest })
    }
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    tag.len() <= MAX_TAG
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || matches!(c, '.' | '-'))
}

/// `algorithm:encoded`, e.g. `sha256:<64 hex>`.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    digest.len() <= 256
        && !algorithm.is_empty()
        && algorithm.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '_' | '-')
        })
        && encoded.len() >= 32
        && encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-'))
}

/// `[domain/]component(/component)*`, at most [`MAX_NAME`] characters.
fn is_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    let mut parts = name.split('/').peekable();
    let first = parts.peek().copied().unwrap_or_default();
    let has_domain = name.contains('/')
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if has_domain {
        parts.next();
        if !is_domain(first) {
            return false;
        }
    }
    let mut any = false;
    for part in parts {
        any = true;
        if !is_path_component(part) {
            return false;
        }
    }
    any
}

/// `host[:port]`: DNS labels of letters, digits and inner hyphens.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+` separated by `.`, `_`, `__` or runs of `-`.
fn is_path_component(part: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !part.starts_with(alnum) || !part.ends_with(alnum) {
        return false;
    }
    let mut separator = String::new();
    for c in part.chars() {
        if alnum(c) {
            let ok = separator.is_empty()
                || separator == "."
                || separator == "_"
                || separator == "__"
                || separator.chars().all(|s| s == '-');
            if !ok {
                return false;
            }
            separator.clear();
        } else if matches!(c, '.' | '_' | '-') {
            separator.push(c);
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references_split_into_name_tag_and_digest() {
        let parse = |raw: &'static str| ImageRef::parse(raw).unwrap();
        assert_eq!(
            parse("ghcr.io/stacklok/fetch:1.2.3"),
            ImageRef {
                name: "ghcr.io/stacklok/fetch",
                tag: Some("1.2.3"),
                digest: None
            }
        );
        let pinned = format!("localhost:5000/team/srv:v2@{DIGEST}");
        let image = ImageRef::parse(&pinned).unwrap();
        assert_eq!(
            (image.name, image.tag),
            ("localhost:5000/team/srv", Some("v2"))
        );
        assert_eq!(image.digest, Some(DIGEST));
        assert_eq!(parse("localhost:5000/srv").tag, None, "a port is not a tag");
        assert_eq!(parse("mcp/fetch").name, "mcp/fetch");
        assert_eq!(parse("a__b-c---d/e.f_g").name, "a__b-c---d/e.f_g");
    }

    #[test]
    fn what_a_runtime_would_not_pull_is_no_reference() {
        for raw in [
            "",
            "Upper",
            "srv:",
            "srv:-tag",
            "srv:tag with space",
            "srv@sha256:short",
            "srv@md5",
            "/srv",
            "srv/",
            "a//b",
            "a/b:1/c",
            "srv:1.0\n",
            "reg.example.com:port/srv",
            "-x.example.com/srv",
            "a___b",
            "a_-b",
        ] {
            assert_eq!(ImageRef::parse(raw), None, "{raw:?}");
        }
        let long = format!("{}:1", "a".repeat(MAX_NAME + 1));
        assert_eq!(ImageRef::parse(&long), None);
        let long_tag = format!("srv:{}", "1".repeat(MAX_TAG + 1));
        assert_eq!(ImageRef::parse(&long_tag), None);
    }
}

//! Checks shared by everything that accepts a value from outside: the
//! watcher's mapping, the catalog importer and (again) the projector.
//! Each check names what is wrong without echoing a value that may carry a
//! credential.

use crate::ids::excerpt;
use crate::rejection::{Rejection, UrlSource};

/// Checks a URL without ever echoing it: it may carry credentials.
pub fn validate_url(raw: &str, source: UrlSource) -> Result<String, Rejection> {
    let invalid = |reason: &str| Rejection::InvalidUrl {
        origin: source,
        reason: reason.to_owned(),
    };
    if raw.is_empty() {
        return Err(invalid("it is empty"));
    }
    if raw.len() > 2048 {
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
    if parsed.host().is_none() {
        return Err(invalid("it has no host"));
    }
    Ok(raw.to_owned())
}

/// The tag of `registry/repo:tag[@digest]` when it is semver (`v` allowed).
pub fn semver_image_tag(image: &str) -> Option<String> {
    let without_digest = image.split('@').next()?;
    let last_segment = without_digest.rsplit('/').next()?;
    let (_, tag) = last_segment.rsplit_once(':')?;
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    semver::Version::parse(bare).ok().map(|v| v.to_string())
}

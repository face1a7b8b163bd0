//! Which version a deployment advertises, and how the versions of one server
//! order (the merge's `isLatest`).
//!
//! Resolution — ToolHive's rule (annotation, else image tag, else `1.0.0`),
//! made safe:
//!
//! 1. the `registry-version` annotation, when it passes
//!    [`validate::version`](crate::validate::version) and is not a channel
//!    name; any other value rejects the object (`invalid_version`) rather
//!    than being replaced, so an operator learns that the version they wrote
//!    is not the one they would get;
//! 2. else the image's tag, when it is *publishable*: not absent (an image
//!    pinned only by digest has none), not digest-like (`sha256-…`,
//!    `sha384-…`, `sha512-…` as cosign tags them, or 32+ hexadecimal
//!    characters), not a channel tag, and a valid version. A semver tag loses
//!    a leading `v` (`v1.2.3` → `1.2.3`); any other tag is used as written;
//! 3. else [`DEFAULT_VERSION`](crate::annotations::DEFAULT_VERSION).
//!
//! Channel names move (the same name means other code tomorrow), so they are
//! never a version: a value whose first word (up to the first `-`, `_`, `.`
//! or `+`), compared case-insensitively, is one of [`CHANNELS`] — so
//! `latest`, `stable-alpine` and `nightly-20260101` are channels and
//! `1.2.3-beta` and `rc1` are not.
//!
//! Ordering ([`compare`]): semver versions above every other version, semver
//! by semver precedence (build metadata included), then every tie by the
//! exact spelling. A total order: two versions are equal only when spelled
//! the same, whatever order the merge meets them in.

use std::cmp::Ordering;

use crate::annotations::DEFAULT_VERSION;
use crate::ids::excerpt;
use crate::image::ImageRef;
use crate::rejection::Rejection;
use crate::validate;

/// Names of release channels, never advertised as a version.
pub const CHANNELS: [&str; 18] = [
    "latest",
    "stable",
    "edge",
    "main",
    "master",
    "trunk",
    "head",
    "nightly",
    "canary",
    "dev",
    "develop",
    "development",
    "next",
    "unstable",
    "testing",
    "snapshot",
    "preview",
    "current",
];

/// The first word of `v` is a channel name (module docs).
pub fn is_channel(v: &str) -> bool {
    let first = v.split(['-', '_', '.', '+']).next().unwrap_or_default();
    CHANNELS.iter().any(|c| first.eq_ignore_ascii_case(c))
}

/// A tag that names a digest rather than a version (module docs).
fn is_digest_like(tag: &str) -> bool {
    let first = tag.split(['-', '_', '.']).next().unwrap_or_default();
    matches!(
        first.to_ascii_lowercase().as_str(),
        "sha256" | "sha384" | "sha512"
    ) || (tag.len() >= 32 && tag.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The version a tag publishes, if it is publishable (module docs).
pub fn from_tag(tag: &str) -> Option<String> {
    if is_digest_like(tag) || is_channel(tag) {
        return None;
    }
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(semver) = semver::Version::parse(bare) {
        return Some(semver.to_string());
    }
    validate::version(tag).ok().filter(|v| v == tag)
}

/// The version an image's tag publishes, if any (module docs).
pub fn from_image(image: &str) -> Option<String> {
    ImageRef::parse(image.trim())?.tag.and_then(from_tag)
}

/// The `registry-version` annotation's version, or why it is unusable.
pub fn from_annotation(raw: &str) -> Result<String, Rejection> {
    let v = validate::version(raw)?;
    if is_channel(&v) {
        return Err(Rejection::InvalidVersion {
            value: excerpt(&v, 60),
            reason: "names a release channel, which moves; give the exact version",
        });
    }
    Ok(v)
}

/// The advertised version (module docs).
pub fn resolve(annotation: Option<&str>, image: Option<&str>) -> Result<String, Rejection> {
    match annotation {
        Some(raw) => from_annotation(raw),
        None => Ok(image
            .and_then(from_image)
            .unwrap_or_else(|| DEFAULT_VERSION.to_owned())),
    }
}

/// Orders versions of one server; greater is later (module docs).
pub fn compare(a: &str, b: &str) -> Ordering {
    let key = |v: &str| semver::Version::parse(v).ok();
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_words_not_prefixes() {
        for v in [
            "latest",
            "Stable",
            "EDGE",
            "main",
            "nightly-20260101",
            "stable-alpine",
            "dev.3",
        ] {
            assert!(is_channel(v), "{v}");
        }
        for v in [
            "1.2.3-beta",
            "rc1",
            "mainline",
            "2026.01",
            "edgeless-1",
            "v1",
        ] {
            assert!(!is_channel(v), "{v}");
        }
    }

    #[test]
    fn tags_publish_only_fixed_versions() {
        assert_eq!(from_tag("v1.2.3").as_deref(), Some("1.2.3"));
        assert_eq!(from_tag("1.2.3-rc.1+b7").as_deref(), Some("1.2.3-rc.1+b7"));
        assert_eq!(from_tag("1.2").as_deref(), Some("1.2"));
        assert_eq!(from_tag("2026.01.15").as_deref(), Some("2026.01.15"));
        assert_eq!(from_tag("sha-4f2a9c1").as_deref(), Some("sha-4f2a9c1"));
        for tag in [
            "latest",
            "stable",
            "main-4f2a9c1",
            "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.sig",
            "e3b0c44298fc1c149afbf4c8996fb924",
            "_private",
        ] {
            assert_eq!(from_tag(tag), None, "{tag}");
        }
    }
}

//! Strong ETags (a hash of the body) and `If-None-Match`.
//!
//! The ETag is derived from the body alone, so API restarts and replicas
//! serving the same data give the same ETag. It is a cache validator, not a
//! security boundary: a fast non-cryptographic 128-bit hash (xxh3) is enough,
//! and SHA-256 of every list body was most of the API's CPU.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use xxhash_rust::xxh3::xxh3_128;

/// The quoted strong ETag of `body`: 32 hex digits of its xxh3-128.
pub fn of(body: &[u8]) -> String {
    format!("\"{:032x}\"", xxh3_128(body))
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// A JSON response with its ETag, or 304 when the client has it.
///
/// A `personal` body (one caller's view, see [`crate::access`]) is marked
/// `Cache-Control: private` and `Vary: Authorization`, so no shared cache
/// serves it to another caller. Its ETag is still the body's hash: a 304
/// only ever confirms the body this caller would get, so it tells a caller
/// nothing about another's view.
pub fn json_response(headers: &HeaderMap, body: String, personal: bool) -> Response {
    let etag = of(body.as_bytes());
    let etag_value = HeaderValue::from_str(&etag).expect("hex is a valid header value");
    let cache_control = HeaderValue::from_static(if personal {
        "private, no-cache"
    } else {
        "no-cache"
    });
    let mut response = if matches(headers, &etag) {
        (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag_value),
                (header::CACHE_CONTROL, cache_control),
            ],
        )
            .into_response()
    } else {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::ETAG, etag_value),
                (header::CACHE_CONTROL, cache_control),
            ],
            body,
        )
            .into_response()
    };
    if personal {
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("authorization"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_stable_quoted_hex_and_follow_the_body() {
        let a = of(b"{\"servers\":[]}");
        assert_eq!(a, of(b"{\"servers\":[]}"));
        assert_ne!(a, of(b"{\"servers\":[1]}"));
        assert_eq!(a.len(), 34);
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert!(a[1..33].bytes().all(|b| b.is_ascii_hexdigit()));
        // Fixed across builds and replicas (xxh3-128 of the empty input).
        assert_eq!(of(b""), "\"99aa06d3014798d86001c324468d497f\"");
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let etag = of(b"x");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(matches(&with(&etag), &etag));
        assert!(matches(&with(&format!("W/{etag}")), &etag));
        assert!(matches(&with(&format!("\"a\", {etag}")), &etag));
        assert!(matches(&with("*"), &etag));
        assert!(!matches(&with("\"a\""), &etag));
        assert!(!matches(&HeaderMap::new(), &etag));
    }
}

//! The registry page: one self-contained HTML document embedded in the
//! binary. Its script fills the page from the SSE feed (a snapshot, then
//! live changes) and inserts every value from the data as text, never as
//! markup. A Content-Security-Policy admits only that one script (by hash),
//! so even markup that slipped in could not run.

use std::sync::LazyLock;

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use herald_core::RegistryName;

use crate::access::Viewer;
use crate::app::{AppState, unknown_registry};
use crate::auth::Authenticator;
use crate::problem::Problem;

const PAGE: &str = include_str!("assets/page.html");

static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let script = PAGE
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = base64(&Sha256::digest(script.as_bytes()));
    let policy = format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' https: data:; base-uri 'none'; form-action 'none'"
    );
    HeaderValue::from_str(&policy).expect("the policy is ASCII")
});

/// `/` and `/registry/{registry}/`: the page, or 404 for a registry that
/// is not served. With authentication on, the page (public, without data)
/// is served for every well-formed registry name: whether a registry exists
/// is for its feed to say, to a caller whose token may read it.
pub async fn page(
    State(app): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let registry = params.get("registry").map(String::as_str);
    match &*app.auth {
        Authenticator::OAuth(_) => {
            if let Some(raw) = registry {
                raw.parse::<RegistryName>()
                    .map_err(|_| unknown_registry(raw))?;
            }
        }
        Authenticator::Anonymous => {
            app.view(registry)?;
            let name = match registry {
                Some(raw) => raw.parse().map_err(|_| unknown_registry(raw))?,
                None => app.registries.default_registry().clone(),
            };
            app.read_policies
                .admit(&name, Viewer::Anonymous)
                .ok_or_else(|| unknown_registry(name.as_ref()))?;
        }
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, CSP.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        PAGE,
    )
        .into_response())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_page_has_one_inline_script() {
        assert_eq!(super::PAGE.matches("<script>").count(), 1);
        assert!(super::CSP.to_str().unwrap().contains("'sha256-"));
    }
}

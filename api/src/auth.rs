//! Who is asking: the authentication mode of herald-api, the bearer-token
//! check in front of every data route (list, get, versions, `deployed`,
//! the SSE feed), its 401 answers, and the RFC 9728 protected-resource
//! metadata.
//!
//! - `anonymous`: no check; every caller is [`Viewer::Anonymous`] and sees
//!   only entries without claims (what the official registry does).
//! - `oauth` (the default, secure by default as ToolHive): a request needs
//!   `Authorization: Bearer <JWT>` from one of the configured providers
//!   ([`crate::oidc`]); the provider is chosen by the token's `iss`, then
//!   the token is verified against that provider's keys. Otherwise 401 with
//!   `WWW-Authenticate: Bearer realm="…", resource_metadata="…"` (and
//!   `error="invalid_token"` with a fixed description when a token was
//!   sent, RFC 6750) and a problem document saying what was wrong.
//!
//! Public in both modes: health and metrics (`/healthz`, `/readyz`,
//! `/metrics`), `/openapi.json`, the metadata document, and the registry
//! page (a static document without data: its data comes from the feed,
//! which is checked).
//!
//! Tokens and claim values are never logged, counted by value, or echoed.

use std::sync::Arc;

use axum::RequestExt as _;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::RegistryName;
use herald_runtime::http::Url;
use serde::Deserialize;

use crate::access::Viewer;
use crate::app::{AppState, unknown_registry};
use crate::oidc::{Provider, TokenError};
use crate::problem::Problem;

/// Longest bearer token read, in bytes: larger ones are refused unread
/// (real access tokens are 1-2 KB; the header cap bounds the request).
pub const MAX_TOKEN: usize = 8192;

/// The RFC 9728 well-known path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// `--auth-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Bearer tokens from the configured OpenID providers are required.
    Oauth,
    /// No authentication: every caller sees the entries without claims.
    Anonymous,
}

/// How callers are told apart.
#[derive(Debug)]
pub enum Authenticator {
    Anonymous,
    OAuth(OAuth),
}

/// The `oauth` mode's settings and providers.
#[derive(Debug)]
pub struct OAuth {
    /// Tried by the token's `iss`.
    pub providers: Vec<Provider>,
    /// This API's resource identifier (RFC 9728 `resource`).
    pub resource: Url,
    /// `realm` of `WWW-Authenticate`.
    pub realm: String,
    /// Entries without claims are hidden from token callers.
    pub hide_unclaimed: bool,
}

impl OAuth {
    /// Where the metadata document is served: the well-known path, then
    /// the resource's own path (RFC 9728 §3.1).
    pub fn metadata_path(&self) -> String {
        let path = self.resource.path().trim_end_matches('/');
        format!("{METADATA_PATH}{path}")
    }

    fn metadata_url(&self) -> String {
        let mut url = self.resource.clone();
        url.set_path(&self.metadata_path());
        url.set_query(None);
        url.set_fragment(None);
        url.to_string()
    }

    /// The RFC 9728 document.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "resource": self.resource.as_str(),
            "authorization_servers": self.providers.iter().map(Provider::issuer).collect::<Vec<_>>(),
            "bearer_methods_supported": ["header"],
            "resource_name": "Herald MCP registry API",
        })
    }

    /// The 401 answer; `error`: what was wrong with the token sent, None
    /// when none was sent (RFC 6750 §3.1: then no error code).
    fn unauthorized(&self, error: Option<(&'static str, String)>) -> Response {
        let detail = match &error {
            None => "this API needs a bearer token (Authorization: Bearer …)".to_owned(),
            Some((_, description)) => description.clone(),
        };
        let mut challenge = format!("Bearer realm=\"{}\"", quoted(&self.realm));
        if let Some((code, description)) = &error {
            challenge.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                quoted(description)
            ));
        }
        challenge.push_str(&format!(
            ", resource_metadata=\"{}\"",
            quoted(&self.metadata_url())
        ));
        let mut response = Problem::unauthorized(detail).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// The caller behind an `Authorization` header value.
    async fn authenticate(&self, raw: &[u8]) -> Result<Viewer, Refused> {
        if raw.len() > MAX_TOKEN + 7 {
            return Err(Refused::Request("the bearer token is too large"));
        }
        let raw = std::str::from_utf8(raw)
            .map_err(|_| Refused::Request("the Authorization header is not text"))?;
        let token = match raw.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(Refused::Request(
                    "the Authorization header is not a bearer token",
                ));
            }
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refused::Token(TokenError::Malformed));
        }
        // The issuer picks the provider; the claim is trusted only once that
        // provider's key verified the signature.
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Refused::Token(TokenError::Malformed))?;
        let provider = self
            .providers
            .iter()
            .find(|p| unverified.iss.as_deref() == Some(p.issuer()))
            .ok_or(Refused::Token(TokenError::UnknownIssuer))?;
        let claims = provider.validate(token).await.map_err(Refused::Token)?;
        Ok(Viewer::Token {
            claims: Arc::new(claims),
            hide_unclaimed: self.hide_unclaimed,
        })
    }
}

#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

enum Refused {
    /// No usable header (RFC 6750 `invalid_request`).
    Request(&'static str),
    Token(TokenError),
}

/// Escapes a quoted-string's `"` and `\`; drops control characters.
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Middleware of the data routes: finds the caller ([`Viewer`]), applies
/// the read policy of the registry the path addresses ([`crate::policy`]),
/// and puts the caller as it reads that registry in the request's
/// extensions; or answers 401, or 404 for a registry it may not read.
pub async fn require(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let viewer = match &*app.auth {
        Authenticator::Anonymous => Viewer::Anonymous,
        Authenticator::OAuth(oauth) => {
            let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
            let (first, second) = (values.next(), values.next());
            let outcome = match (first, second) {
                (None, _) => Err(None),
                (Some(_), Some(_)) => Err(Some(Refused::Request(
                    "send one Authorization header, not several",
                ))),
                (Some(value), None) => oauth.authenticate(value.as_bytes()).await.map_err(Some),
            };
            match outcome {
                Ok(viewer) => {
                    app.metrics.authentication("ok");
                    viewer
                }
                Err(None) => {
                    app.metrics.authentication("missing");
                    return oauth.unauthorized(None);
                }
                Err(Some(Refused::Request(why))) => {
                    app.metrics.authentication("bad_request");
                    return oauth.unauthorized(Some(("invalid_request", why.to_owned())));
                }
                Err(Some(Refused::Token(err))) => {
                    app.metrics.authentication(err.code());
                    tracing::debug!(reason = err.code(), "bearer token refused");
                    return oauth.unauthorized(Some(("invalid_token", err.to_string())));
                }
            }
        }
    };
    // The registry as the handlers will read it (percent-decoded by the
    // router); the default one at the root paths.
    let registry = match request.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(key, _)| *key == "registry")
            .map(|(_, value)| value.to_owned()),
        // Not UTF-8: the handlers would refuse it too; fail closed.
        Err(_) => return Problem::no_route().into_response(),
    };
    let viewer = match registry {
        None => app
            .read_policies
            .admit(app.registries.default_registry(), viewer)
            .ok_or_else(|| unknown_registry(app.registries.default_registry().as_ref())),
        Some(raw) => match raw.parse::<RegistryName>() {
            Ok(name) => app
                .read_policies
                .admit(&name, viewer)
                .ok_or_else(|| unknown_registry(&raw)),
            // Not a name: the handler answers the same 404.
            Err(_) => Ok(viewer),
        },
    };
    match viewer {
        Ok(viewer) => {
            request.extensions_mut().insert(viewer);
            next.run(request).await
        }
        Err(not_found) => not_found.into_response(),
    }
}

/// `GET /.well-known/oauth-protected-resource[/<resource path>]`.
pub async fn metadata(State(app): State<AppState>) -> Response {
    match &*app.auth {
        Authenticator::OAuth(oauth) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            oauth.metadata().to_string(),
        )
            .into_response(),
        Authenticator::Anonymous => Problem::no_route().into_response(),
    }
}

/// Whether an issuer URL may be trusted: https, or http on loopback (a
/// provider on the same machine, as in tests).
pub fn check_issuer(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "{raw:?} must be an https URL (http only on loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_cannot_break_the_header() {
        assert_eq!(quoted("a\"b\\c\r\nd"), "a\\\"b\\\\cd");
    }

    #[test]
    fn issuers_must_be_https_except_on_loopback() {
        assert!(check_issuer("https://idp.example").is_ok());
        assert!(check_issuer("http://127.0.0.1:8080").is_ok());
        assert!(check_issuer("http://localhost:8080").is_ok());
        assert!(check_issuer("http://idp.example").is_err());
        assert!(check_issuer("ftp://idp.example").is_err());
        assert!(check_issuer("idp.example").is_err());
    }
}

//! OAuth 2.0 client credentials (RFC 6749 §4.4) for a protected source: a
//! token is fetched from the token endpoint with
//! `grant_type=client_credentials` (form POST, the client authenticated with
//! HTTP Basic as §2.3.1 describes, optional `scope` and `audience`), kept
//! until shortly before its `expires_in`, and dropped when the source answers
//! 401 so that the next request fetches a new one.
//!
//! The client secret is read from its file at every fetch, so a rotated
//! secret is picked up without a restart. Neither the secret nor a token
//! ever appears in a log line, an error or a `Debug` output.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald_runtime::http::{HttpClient, HttpError, RedactedUrl, StatusCode, Url};
use herald_runtime::secret::{Secret, SecretFileError};
use serde_json::Value;
use tokio::sync::Mutex;

/// A token is renewed this long before it expires (at most half its life).
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Longest OAuth error code shown from a token endpoint's answer.
const MAX_ERROR_CODE: usize = 64;

/// What the importer needs to get tokens.
#[derive(Debug, Clone)]
pub struct ClientCredentialsConfig {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret_file: PathBuf,
    /// Scopes asked for (sent space-separated); none: the server's default.
    pub scopes: Vec<String>,
    /// `audience` asked for (Auth0, Keycloak and others read it).
    pub audience: Option<String>,
}

/// A token endpoint that gave no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("getting an OAuth token: {0}")]
    Secret(#[from] SecretFileError),
    #[error("getting an OAuth token: {0}")]
    Http(#[from] HttpError),
    #[error("the token endpoint {url} refused the client credentials: HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        url: RedactedUrl,
        status: StatusCode,
        /// The OAuth `error` code (`invalid_client`, …) when it sent one.
        code: Option<String>,
    },
    #[error("the token endpoint {url} answered no usable token: {reason}")]
    Malformed { url: RedactedUrl, reason: String },
}

/// A token and until when it may be used without asking again.
#[derive(Debug, Clone)]
struct CachedToken {
    token: Secret,
    /// `None`: the server did not say when it expires; used until refused.
    fresh_until: Option<Instant>,
}

impl CachedToken {
    fn is_fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_none_or(|until| now < until)
    }
}

/// Until when a token fetched at `fetched` that expires in `expires_in` is
/// used: `REFRESH_MARGIN` before it expires, or halfway for short lives.
fn fresh_until(fetched: Instant, expires_in: Option<Duration>) -> Option<Instant> {
    expires_in.map(|life| fetched + life - REFRESH_MARGIN.min(life / 2))
}

/// Gets and caches tokens with the client credentials grant.
#[derive(Debug)]
pub struct ClientCredentials {
    config: ClientCredentialsConfig,
    http: HttpClient,
    cache: Mutex<Option<CachedToken>>,
}

impl ClientCredentials {
    pub fn new(config: ClientCredentialsConfig, http: HttpClient) -> Self {
        Self {
            config,
            http,
            cache: Mutex::new(None),
        }
    }

    /// A token that is still fresh, fetched anew when there is none. One
    /// fetch at a time: callers waiting meanwhile get the fetched token.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref().filter(|c| c.is_fresh(Instant::now())) {
            return Ok(cached.token.clone());
        }
        let fetched = Instant::now();
        let (token, expires_in) = self.fetch().await?;
        *cache = Some(CachedToken {
            token: token.clone(),
            fresh_until: fresh_until(fetched, expires_in),
        });
        Ok(token)
    }

    /// Forgets the cached token (the source refused it).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<(Secret, Option<Duration>), TokenError> {
        let url = &self.config.token_url;
        let secret = Secret::read_file(&self.config.client_secret_file).await?;
        // §2.3.1: the id and secret are form-encoded before Basic encoding.
        let id = encode(&self.config.client_id);
        let secret = Secret::new(encode(secret.expose()));
        let scope = self.config.scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(audience) = &self.config.audience {
            form.push(("audience", audience));
        }
        let response = self
            .http
            .post(url)
            .basic_auth(&id, &secret)
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await?;
        let body: Option<Value> = serde_json::from_slice(&response.body).ok();
        if !response.status.is_success() {
            return Err(TokenError::Refused {
                url: RedactedUrl::new(url),
                status: response.status,
                code: body.as_ref().and_then(error_code),
            });
        }
        let malformed = |reason: &str| TokenError::Malformed {
            url: RedactedUrl::new(url),
            reason: reason.to_owned(),
        };
        // Fields are read one by one: a parser's message could quote a token.
        let body = body.ok_or_else(|| malformed("the body is not JSON"))?;
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| malformed("no access_token"))?;
        match body["token_type"].as_str() {
            None => {}
            Some(ty) if ty.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Err(malformed("token_type is not Bearer")),
        }
        let expires_in = match &body["expires_in"] {
            Value::Null => None,
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .map(Duration::from_secs);
        Ok((Secret::new(token), expires_in))
    }
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The `error` of an OAuth error answer, when it looks like a code (never a
/// free text that could echo anything).
fn error_code(body: &Value) -> Option<String> {
    body["error"]
        .as_str()
        .filter(|c| {
            !c.is_empty()
                && c.len() <= MAX_ERROR_CODE
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxumStatus, header};
    use axum::routing::post;
    use axum::{Form, Json, Router};
    use herald_runtime::http::Proxy;
    use serde_json::json;

    use super::*;

    const SECRET: &str = "s3cret:with/odd chars";

    /// The form fields of one request.
    type FormFields = Vec<(String, String)>;

    #[derive(Debug, Default)]
    struct Endpoint {
        /// (Authorization header, form) of each request.
        requests: StdMutex<Vec<(String, FormFields)>>,
        expires_in: StdMutex<Value>,
    }

    async fn token(
        State(endpoint): State<Arc<Endpoint>>,
        headers: HeaderMap,
        Form(form): Form<FormFields>,
    ) -> (AxumStatus, Json<Value>) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut requests = endpoint.requests.lock().unwrap();
        requests.push((auth.clone(), form));
        let expected = format!("Basic {}", base64_basic("client%2F1", &encode(SECRET)));
        if auth != expected {
            return (
                AxumStatus::UNAUTHORIZED,
                Json(
                    json!({"error": "invalid_client", "error_description": format!("{auth} is wrong")}),
                ),
            );
        }
        let n = requests.len();
        (
            AxumStatus::OK,
            Json(json!({
                "access_token": format!("token-{n}"),
                "token_type": "bearer",
                "expires_in": endpoint.expires_in.lock().unwrap().clone(),
            })),
        )
    }

    /// Basic credentials as RFC 7617 encodes them.
    fn base64_basic(user: &str, password: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    async fn start(expires_in: Value) -> (Arc<Endpoint>, Url) {
        let endpoint = Arc::new(Endpoint {
            expires_in: StdMutex::new(expires_in),
            ..Endpoint::default()
        });
        let app = Router::new()
            .route("/token", post(token))
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (
            endpoint,
            Url::parse(&format!("http://{addr}/token")).unwrap(),
        )
    }

    fn credentials(url: Url, secret_file: PathBuf) -> ClientCredentials {
        let http = HttpClient::builder("herald-test")
            .proxy(Proxy::Direct)
            .build()
            .unwrap();
        ClientCredentials::new(
            ClientCredentialsConfig {
                token_url: url,
                client_id: "client/1".to_owned(),
                client_secret_file: secret_file,
                scopes: vec!["registry:read".to_owned(), "extra".to_owned()],
                audience: Some("https://registry.example".to_owned()),
            },
            http,
        )
    }

    fn secret_file(dir: &tempfile::TempDir, value: &str) -> PathBuf {
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path
    }

    #[tokio::test]
    async fn a_token_is_fetched_once_and_reused_while_fresh() {
        let (endpoint, url) = start(json!(3600)).await;
        let dir = tempfile::tempdir().unwrap();
        let client = credentials(url, secret_file(&dir, SECRET));
        assert_eq!(client.token().await.unwrap().expose(), "token-1");
        assert_eq!(client.token().await.unwrap().expose(), "token-1");
        {
            let requests = endpoint.requests.lock().unwrap();
            assert_eq!(requests.len(), 1);
            let form = &requests[0].1;
            let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(field("grant_type"), Some("client_credentials"));
            assert_eq!(field("scope"), Some("registry:read extra"));
            assert_eq!(field("audience"), Some("https://registry.example"));
            assert_eq!(field("client_secret"), None, "the secret travels in Basic");
        }
        // Refused by the source: the next call fetches a new one.
        client.invalidate().await;
        assert_eq!(client.token().await.unwrap().expose(), "token-2");
        assert_eq!(client.token().await.unwrap().expose(), "token-2");
        assert_eq!(endpoint.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_expiring_token_is_fetched_again() {
        // expires_in 0: stale as soon as it arrives.
        let (endpoint, url) = start(json!(0)).await;
        let dir = tempfile::tempdir().unwrap();
        let client = credentials(url, secret_file(&dir, SECRET));
        assert_eq!(client.token().await.unwrap().expose(), "token-1");
        assert_eq!(client.token().await.unwrap().expose(), "token-2");
        // Without expires_in a token is kept until refused.
        *endpoint.expires_in.lock().unwrap() = Value::Null;
        assert_eq!(client.token().await.unwrap().expose(), "token-3");
        assert_eq!(client.token().await.unwrap().expose(), "token-3");
    }

    #[test]
    fn tokens_are_renewed_shortly_before_they_expire() {
        let t0 = Instant::now();
        let hour = fresh_until(t0, Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(hour - t0, Duration::from_secs(3570));
        let short = fresh_until(t0, Some(Duration::from_secs(20))).unwrap();
        assert_eq!(short - t0, Duration::from_secs(10));
        assert_eq!(fresh_until(t0, None), None);
        let cached = CachedToken {
            token: Secret::new("t"),
            fresh_until: Some(hour),
        };
        assert!(cached.is_fresh(t0 + Duration::from_secs(3569)));
        assert!(!cached.is_fresh(t0 + Duration::from_secs(3570)));
    }

    #[tokio::test]
    async fn refused_credentials_name_the_code_and_never_the_secret() {
        let (_endpoint, url) = start(json!(3600)).await;
        let dir = tempfile::tempdir().unwrap();
        let client = credentials(url.clone(), secret_file(&dir, "wrong-secret"));
        let err = client.token().await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, TokenError::Refused { code: Some(c), .. } if c == "invalid_client"),
            "{text}"
        );
        assert!(text.contains("401") && text.contains("/token"), "{text}");
        assert!(!text.contains("wrong-secret"), "{text}");
        assert!(!format!("{client:?}").contains("wrong-secret"));
        // A missing secret file names the file.
        let client = credentials(url, dir.path().join("absent"));
        let err = client.token().await.unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}

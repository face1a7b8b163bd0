//! The one HTTP client of Herald's binaries, for every call they make to a
//! server outside NATS and Kubernetes (catalog sources and their token
//! endpoints today; JWKS and MCP probes later).
//!
//! Built on reqwest with rustls and the ring provider ([`crate::tls`]).
//! Settings every outbound call needs, each with a default and a builder
//! method:
//!
//! - **Proxies**: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`
//!   (or their lower-case forms) are honoured by default, read once when the
//!   client is built, with curl's rules; [`Proxy::Direct`] ignores them and
//!   [`Proxy::Through`] names one proxy for every request.
//! - **Trust**: the platform's certificate verifier (rustls-platform-verifier:
//!   on Linux the system trust store, `SSL_CERT_FILE`/`SSL_CERT_DIR`
//!   included), so that a private CA installed the usual way is trusted and
//!   the roots are those of the image, not a snapshot compiled into the
//!   binary; [`HttpClientBuilder::ca_file`] adds the CAs of a PEM file.
//! - **Redirects** are followed up to a bound (default 5); a redirect from
//!   `https` to `http` is refused, and `Authorization` is dropped when a
//!   redirect leaves the host.
//! - **Bodies** are read up to a size cap (default 16 MiB), enforced while
//!   the body streams in: a larger `Content-Length` is refused before
//!   reading, and an endless body stops at the cap.
//! - **Timeouts**: one to connect, one for the whole exchange, body included.
//! - **Errors** ([`HttpError`]) name the method, the URL without user-info,
//!   query or fragment (where credentials hide), and the HTTP status or the
//!   cause (connection, certificate, timeout, size, redirects).

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
pub use reqwest::{Method, StatusCode, Url};

use crate::secret::Secret;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_REDIRECTS: usize = 5;
pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 * 1024 * 1024;

/// Where requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Proxy {
    /// As the environment says (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
    /// `NO_PROXY`, upper or lower case), read when the client is built.
    #[default]
    Environment,
    /// Straight to every server, whatever the environment says.
    Direct,
    /// Every request through this proxy.
    Through(Url),
}

/// The settings of an [`HttpClient`]; start with [`HttpClient::builder`].
#[derive(Debug, Clone)]
pub struct HttpClientBuilder {
    user_agent: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_redirects: usize,
    max_body_size: u64,
    ca_file: Option<PathBuf>,
    proxy: Proxy,
}

/// A client that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("reading the CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("the CA file {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the proxy {url}: {reason}")]
    Proxy { url: RedactedUrl, reason: String },
    #[error("setting up the HTTP client: {0}")]
    Client(String),
}

impl HttpClientBuilder {
    /// Bound on connecting (TCP and TLS handshake).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one whole exchange: connecting, sending, and reading the body.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Redirects followed at most for one request.
    pub fn max_redirects(mut self, max: usize) -> Self {
        self.max_redirects = max;
        self
    }

    /// Bytes of one response body at most.
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Also trust the CA certificates of this PEM file (a private CA), beside
    /// the platform's.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// Builds the client. Installs the crypto provider if the binary has not
    /// yet ([`crate::tls::install_crypto_provider`]); reads the CA file.
    pub fn build(self) -> Result<HttpClient, BuildError> {
        crate::tls::install_crypto_provider();
        let max_redirects = self.max_redirects;
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(self.user_agent.clone())
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                // `previous` starts with the URL first asked for.
                let hops = attempt.previous().len();
                let from_https = attempt
                    .previous()
                    .last()
                    .is_some_and(|u| u.scheme() == "https");
                if hops > max_redirects {
                    attempt.error(RedirectRefused::TooMany(max_redirects))
                } else if from_https && attempt.url().scheme() != "https" {
                    attempt.error(RedirectRefused::Downgrade)
                } else {
                    attempt.follow()
                }
            }));
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|e| BuildError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| BuildError::CaFile {
                    path: path.clone(),
                    reason: causes(&e),
                })?;
            if certs.is_empty() {
                return Err(BuildError::NoCertificate { path: path.clone() });
            }
            builder = builder.tls_certs_merge(certs);
        }
        builder = match &self.proxy {
            Proxy::Environment => builder,
            Proxy::Direct => builder.no_proxy(),
            Proxy::Through(url) => {
                let proxy = reqwest::Proxy::all(url.as_str()).map_err(|e| BuildError::Proxy {
                    url: RedactedUrl::new(url),
                    reason: causes(&e),
                })?;
                builder.proxy(proxy)
            }
        };
        let inner = builder
            .build()
            .map_err(|e| BuildError::Client(causes(&e)))?;
        Ok(HttpClient {
            inner,
            max_body_size: self.max_body_size,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        })
    }
}

/// Why a redirect was not followed; carried through reqwest's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum RedirectRefused {
    #[error("more than {0} redirects")]
    TooMany(usize),
    #[error("a redirect from https to http was refused")]
    Downgrade,
}

/// The HTTP client; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    max_body_size: u64,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl HttpClient {
    /// Settings with their defaults; `user_agent` names the binary
    /// (`herald-catalog/0.1.0`).
    pub fn builder(user_agent: impl Into<String>) -> HttpClientBuilder {
        HttpClientBuilder {
            user_agent: user_agent.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            ca_file: None,
            proxy: Proxy::Environment,
        }
    }

    /// The reqwest client underneath, for libraries that take one (rmcp).
    /// Its requests have the proxy, trust, redirect and timeout settings, but
    /// not the body cap nor these error messages.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.inner
    }

    pub fn get(&self, url: &Url) -> Request {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: &Url) -> Request {
        self.request(Method::POST, url)
    }

    pub fn request(&self, method: Method, url: &Url) -> Request {
        Request {
            inner: self.inner.request(method.clone(), url.clone()),
            method,
            url: RedactedUrl::new(url),
            max_body_size: self.max_body_size,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

/// One request being prepared; [`Request::send`] or [`Request::success`]
/// sends it.
#[derive(Debug)]
pub struct Request {
    inner: reqwest::RequestBuilder,
    method: Method,
    url: RedactedUrl,
    max_body_size: u64,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Request {
    /// Appends query parameters (URL-encoded) to the URL's own.
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        self.inner = self.inner.query(pairs);
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.inner = self.inner.header(name, value);
        self
    }

    /// `Authorization: Bearer …`, marked sensitive (kept out of debug output).
    pub fn bearer_auth(mut self, token: &Secret) -> Self {
        self.inner = self.inner.bearer_auth(token.expose());
        self
    }

    /// `Authorization: Basic …` for `user` and `password`, marked sensitive.
    pub fn basic_auth(mut self, user: &str, password: &Secret) -> Self {
        self.inner = self.inner.basic_auth(user, Some(password.expose()));
        self
    }

    /// An `application/x-www-form-urlencoded` body.
    pub fn form(mut self, pairs: &[(&str, &str)]) -> Self {
        self.inner = self.inner.form(pairs);
        self
    }

    /// Sends the request and reads the body (within the cap), whatever the
    /// status.
    pub async fn send(self) -> Result<Response, HttpError> {
        let fail = |kind: HttpErrorKind| HttpError {
            method: self.method.clone(),
            url: self.url.clone(),
            kind,
        };
        let mut response = self
            .inner
            .send()
            .await
            .map_err(|e| fail(kind_of(&e, self.connect_timeout, self.request_timeout)))?;
        let status = response.status();
        let limit = self.max_body_size;
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(fail(HttpErrorKind::TooLarge { limit }));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(kind_of(&e, self.connect_timeout, self.request_timeout)))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(fail(HttpErrorKind::TooLarge { limit }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            body: body.freeze(),
        })
    }

    /// Sends the request; the body of a 2xx answer, otherwise an error that
    /// names the status.
    pub async fn success(self) -> Result<Bytes, HttpError> {
        let (method, url) = (self.method.clone(), self.url.clone());
        let response = self.send().await?;
        if response.status.is_success() {
            Ok(response.body)
        } else {
            Err(HttpError {
                method,
                url,
                kind: HttpErrorKind::Status(response.status),
            })
        }
    }
}

/// A response whose body was read whole (within the cap).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A request that failed: what was asked of whom, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {url}: {kind}")]
pub struct HttpError {
    pub method: Method,
    pub url: RedactedUrl,
    pub kind: HttpErrorKind,
}

impl HttpError {
    /// The status of an answer that was not a success.
    pub fn status(&self) -> Option<StatusCode> {
        match self.kind {
            HttpErrorKind::Status(status) => Some(status),
            _ => None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpErrorKind {
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("the response body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("a redirect from https to http was refused")]
    Downgrade,
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, TLS (certificates), or the exchange itself, with causes.
    #[error("{0}")]
    Transport(String),
}

fn kind_of(error: &reqwest::Error, connect: Duration, total: Duration) -> HttpErrorKind {
    if error.is_redirect() {
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            match cause.downcast_ref::<RedirectRefused>() {
                Some(RedirectRefused::TooMany(max)) => {
                    return HttpErrorKind::TooManyRedirects(*max);
                }
                Some(RedirectRefused::Downgrade) => return HttpErrorKind::Downgrade,
                None => source = cause.source(),
            }
        }
    }
    if error.is_timeout() {
        return if error.is_connect() {
            HttpErrorKind::ConnectTimeout(connect)
        } else {
            HttpErrorKind::Timeout(total)
        };
    }
    HttpErrorKind::Transport(causes(error))
}

/// An error and its causes on one line, without the URL reqwest would add
/// (it may hold credentials; [`HttpError`] names the redacted one).
fn causes(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        let line = match cause.downcast_ref::<reqwest::Error>() {
            // reqwest's Display ends with " for url (…)" when it has one.
            Some(e) => e_without_url(e),
            None => cause.to_string(),
        };
        if !line.is_empty() && !text.ends_with(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        next = cause.source();
    }
    text
}

fn e_without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match (error.url(), text.find(" for url (")) {
        (Some(_), Some(at)) => text[..at].to_owned(),
        _ => text,
    }
}

/// A URL as errors and logs show it: scheme, host, port and path, without
/// user-info, query or fragment, where credentials and tokens hide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    pub fn new(url: &Url) -> Self {
        let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(url.path());
        Self(shown)
    }
}

impl std::fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, Uri, header};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;

    use super::*;

    const STEP: Duration = Duration::from_secs(20);

    /// Serves `app` on a loopback port; its base URL.
    async fn serve(app: Router) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    fn client() -> HttpClientBuilder {
        // Direct: the machine's proxy variables must not steer loopback tests.
        HttpClient::builder("herald-test").proxy(Proxy::Direct)
    }

    fn endless() -> Body {
        let chunk = Bytes::from(vec![b'x'; 8192]);
        Body::from_stream(futures::stream::repeat_with(move || {
            Ok::<_, Infallible>(chunk.clone())
        }))
    }

    fn sized(len: usize) -> Body {
        let chunk = Bytes::from(vec![b'y'; len]);
        // A stream: chunked transfer, no Content-Length to refuse early.
        Body::from_stream(futures::stream::once(
            async move { Ok::<_, Infallible>(chunk) },
        ))
    }

    fn bodies() -> Router {
        Router::new()
            .route("/small", get(|| async { vec![b'a'; 100] }))
            .route("/declared", get(|| async { vec![b'b'; 200_000] }))
            .route("/chunked-under", get(|| async { sized(60_000) }))
            .route("/chunked-over", get(|| async { sized(70_000) }))
            .route("/endless", get(|| async { endless() }))
    }

    #[tokio::test]
    async fn bodies_are_capped_while_they_stream() {
        let base = serve(bodies()).await;
        let http = client().max_body_size(64 * 1024).build().unwrap();
        let url = |p: &str| base.join(p).unwrap();
        let small = http.get(&url("small")).success().await.unwrap();
        assert_eq!(small.len(), 100);
        let under = http.get(&url("chunked-under")).success().await.unwrap();
        assert_eq!(under.len(), 60_000);
        for path in ["declared", "chunked-over", "endless"] {
            // An endless body ends only because the cap stops reading it.
            let err = tokio::time::timeout(STEP, http.get(&url(path)).success())
                .await
                .unwrap_or_else(|_| panic!("{path}: the cap did not stop the read"))
                .unwrap_err();
            assert_eq!(
                err.kind,
                HttpErrorKind::TooLarge { limit: 64 * 1024 },
                "{path}"
            );
            assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
        }
    }

    async fn hop(Path(n): Path<u32>) -> impl IntoResponse {
        if n == 0 {
            "arrived".into_response()
        } else {
            Redirect::temporary(&format!("/hop/{}", n - 1)).into_response()
        }
    }

    #[tokio::test]
    async fn redirects_are_followed_up_to_the_bound() {
        let base = serve(Router::new().route("/hop/{n}", get(hop))).await;
        let http = client().max_redirects(5).build().unwrap();
        let body = http
            .get(&base.join("hop/5").unwrap())
            .success()
            .await
            .unwrap();
        assert_eq!(&body[..], b"arrived");
        let err = http
            .get(&base.join("hop/6").unwrap())
            .success()
            .await
            .unwrap_err();
        assert_eq!(err.kind, HttpErrorKind::TooManyRedirects(5), "{err}");
        assert!(err.to_string().contains("/hop/6"), "{err}");
    }

    #[tokio::test]
    async fn errors_name_the_redacted_url_and_the_status() {
        let base = serve(Router::new()).await;
        let mut url = base.join("missing?token=sekrit&cursor=2").unwrap();
        url.set_username("alice").unwrap();
        url.set_password(Some("pa55")).unwrap();
        let http = client().build().unwrap();
        let err = http.get(&url).success().await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        let text = err.to_string();
        let port = base.port().unwrap();
        assert_eq!(
            text,
            format!("GET http://127.0.0.1:{port}/missing: HTTP 404 Not Found")
        );

        // A refused connection: the cause, and still no credentials.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut gone = Url::parse(&format!(
            "http://{}/x?token=sekrit",
            closed.local_addr().unwrap()
        ))
        .unwrap();
        drop(closed);
        gone.set_password(Some("pa55")).ok();
        let err = http.get(&gone).success().await.unwrap_err();
        assert!(matches!(err.kind, HttpErrorKind::Transport(_)), "{err}");
        let text = err.to_string();
        assert!(!text.contains("sekrit") && !text.contains("pa55"), "{text}");
        assert!(text.to_lowercase().contains("connect"), "{text}");
    }

    #[tokio::test]
    async fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let err = client().ca_file(&file).build().unwrap_err();
        assert!(matches!(err, BuildError::NoCertificate { .. }), "{err}");
        let err = client()
            .ca_file(dir.path().join("absent.pem"))
            .build()
            .unwrap_err();
        assert!(matches!(err, BuildError::CaFile { .. }), "{err}");
    }

    /// A forward proxy stand-in: answers every request itself and records
    /// the request target (absolute-form when sent to a proxy) and whether
    /// it carried the proxy's credentials.
    async fn proxy() -> (Url, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .fallback(
                |State(seen): State<Arc<Mutex<Vec<String>>>>, uri: Uri, headers: HeaderMap| async move {
                    let auth = headers.contains_key(header::PROXY_AUTHORIZATION);
                    seen.lock().unwrap().push(format!("{uri} auth={auth}"));
                    "via proxy"
                },
            )
            .with_state(seen.clone());
        (serve(app).await, seen)
    }

    #[tokio::test]
    async fn an_explicit_proxy_carries_every_request() {
        let (proxy_url, seen) = proxy().await;
        let http = client().proxy(Proxy::Through(proxy_url)).build().unwrap();
        let target = Url::parse("http://herald-proxy-test.invalid/page?x=1").unwrap();
        let body = http.get(&target).success().await.unwrap();
        assert_eq!(&body[..], b"via proxy");
        assert_eq!(
            *seen.lock().unwrap(),
            ["http://herald-proxy-test.invalid/page?x=1 auth=false"]
        );
    }

    /// Env vars the child test reads; set only by the parent below.
    const CHILD_TARGET: &str = "HERALD_TEST_CHILD_TARGET";
    const CHILD_EXPECT: &str = "HERALD_TEST_CHILD_EXPECT";
    const PROXY_VARS: [&str; 8] = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ];

    /// Runs [`env_proxy_child`] in a copy of this test binary with `env`
    /// set: changing the environment of a running multi-threaded test binary
    /// is unsound, a child's is its own.
    async fn run_child(target: &Url, expect: &str, env: &[(&str, String)]) {
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "http::tests::env_proxy_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_TARGET, target.as_str())
            .env(CHILD_EXPECT, expect)
            .kill_on_drop(true);
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let out = tokio::time::timeout(STEP, command.output())
            .await
            .expect("the child test finishes")
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{log}");
        assert!(log.contains("1 passed"), "the child ran the test:\n{log}");
    }

    #[tokio::test]
    async fn proxy_environment_variables_are_honoured() {
        let (proxy_url, seen) = proxy().await;
        let proxy_with_user = {
            let mut u = proxy_url.clone();
            u.set_username("herald").unwrap();
            u.set_password(Some("pw")).unwrap();
            u
        };
        let direct = serve(Router::new().route("/page", get(|| async { "direct" }))).await;
        let direct_page = direct.join("page").unwrap();
        let elsewhere = Url::parse("http://herald-proxy-test.invalid/page").unwrap();

        // HTTP_PROXY carries a request to a name nothing resolves, with the
        // proxy's credentials from the URL.
        run_child(
            &elsewhere,
            "via proxy",
            &[("HTTP_PROXY", proxy_with_user.to_string())],
        )
        .await;
        assert_eq!(
            *seen.lock().unwrap(),
            ["http://herald-proxy-test.invalid/page auth=true"]
        );
        // NO_PROXY sends a listed host straight to the server.
        run_child(
            &direct_page,
            "direct",
            &[
                ("HTTP_PROXY", proxy_url.to_string()),
                ("NO_PROXY", "127.0.0.1".to_owned()),
            ],
        )
        .await;
        // The lower-case spelling works too.
        run_child(
            &elsewhere,
            "via proxy",
            &[("http_proxy", proxy_url.to_string())],
        )
        .await;
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    /// The child half of [`proxy_environment_variables_are_honoured`]: a
    /// default client (proxies from the environment) fetches the target.
    #[tokio::test]
    #[ignore = "run by proxy_environment_variables_are_honoured in a child process"]
    async fn env_proxy_child() {
        let (Ok(target), Ok(expect)) = (std::env::var(CHILD_TARGET), std::env::var(CHILD_EXPECT))
        else {
            return;
        };
        let http = HttpClient::builder("herald-test").build().unwrap();
        let body = http
            .get(&Url::parse(&target).unwrap())
            .success()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&body), expect);
    }
}

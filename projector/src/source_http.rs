//! HTTP(S) for catalog sources, on the TLS stack kube already brings:
//! rustls with the `ring` provider and the platform's certificate verifier.
//! Kept apart from `reqwest` because a TLS-enabled reqwest would need a
//! process-wide crypto provider in every binary and test of the workspace.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A GET-only client for `http://` and `https://` sources.
#[derive(Clone)]
pub struct SourceClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SourceClient {
    pub fn new(timeout: Duration) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(provider)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }

    /// The body of a successful GET of `url` with `query` appended;
    /// otherwise a one-line reason (status, connection, certificate, timeout).
    pub async fn get(&self, url: &str, query: &[(&str, &str)]) -> Result<Bytes, String> {
        let mut target = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !query.is_empty() {
            target.query_pairs_mut().extend_pairs(query);
        }
        let request = hyper::Request::get(target.as_str())
            .header(
                USER_AGENT,
                concat!("herald-projector/", env!("CARGO_PKG_VERSION")),
            )
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| with_causes(&e))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| with_causes(&e))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// An error and its causes on one line: the top-level message alone leaves
/// out why (connection refused, certificate, …), which readiness must say.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

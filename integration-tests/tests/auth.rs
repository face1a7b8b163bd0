//! herald-api's authentication and per-entry claims against a real OpenID Provider
//! (`oidc-provider` on Node.js, started on loopback by the harness): bearer tokens on
//! every data route, 401 answers with their challenge, the RFC 9728 metadata, and entries
//! with `authz-claims` shown only to the tokens that satisfy them, on list, get, versions
//! and the SSE feed (including an entry whose claims change while a subscriber listens);
//! per-registry read policies and several providers (`--auth-config`); and the registry
//! page in headless Chromium reading the feed with a pasted token.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, kv};
use chrono::{TimeZone as _, Utc};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use herald_core::claims::{ClaimSet, parse_annotation};
use herald_core::names::{DeploymentKey, bucket_name};
use herald_core::projection::{Fold, fold_applied, fold_withdrawn};
use herald_core::record::{
    DeploymentRecord, Header, Phase, RECORD_VERSION, Remote, RemoteTransport,
};
use herald_core::stored::StoredDeployment;
use herald_core::{Kind, ObjectRef, WithdrawReason};
use herald_integration_tests::browser::Browser;
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::events;
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::oidc::{Client, OidcProvider, ProviderOptions, TestCa, free_port};
use herald_integration_tests::sse::{Frames, SseEvent};
use herald_integration_tests::timeout::{eventually, within};
use reqwest::StatusCode;
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);
/// The audience (resource) herald-api is configured with.
const RESOURCE: &str = "http://herald.test";
const LIST: &str = "/v0.1/servers";
const EVENTS: &str = "/v0.1/x/dev.herald/events";

// ---------------------------------------------------------------- data

/// Writes deployments into a registry's bucket as the projector does.
struct Bucket {
    kv: kv::Store,
    registry: String,
    seq: u64,
    current: BTreeMap<String, StoredDeployment>,
}

impl Bucket {
    /// The default registry's bucket.
    async fn create(js: &jetstream::Context) -> anyhow::Result<Self> {
        Self::create_in(js, "default").await
    }

    async fn create_in(js: &jetstream::Context, registry: &str) -> anyhow::Result<Self> {
        let kv = js
            .create_key_value(kv::Config {
                bucket: bucket_name(&registry.parse()?),
                history: 5,
                ..Default::default()
            })
            .await?;
        Ok(Self {
            kv,
            registry: registry.to_owned(),
            seq: 0,
            current: BTreeMap::new(),
        })
    }

    /// Advertises `com.example/<object>` 1.0.0 with `claims` (annotation JSON, or none).
    async fn put(&mut self, object: &str, claims: Option<&str>) -> anyhow::Result<()> {
        self.put_part(object, object, claims).await
    }

    /// Advertises `com.example/<server>` 1.0.0 from the object `<object>` (remote
    /// `https://<object>.example.com/mcp`) with `claims`: several objects of one server
    /// are one merged entry.
    async fn put_part(
        &mut self,
        object: &str,
        server: &str,
        claims: Option<&str>,
    ) -> anyhow::Result<()> {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .context("date")?;
        let authz_claims: Option<ClaimSet> = match claims {
            Some(raw) => parse_annotation(raw).map_err(anyhow::Error::msg)?,
            None => None,
        };
        let record = DeploymentRecord {
            v: RECORD_VERSION,
            cluster: "c1".parse()?,
            registry: self.registry.parse()?,
            object: ObjectRef::new(Kind::MCPServer, "tools", object).map_err(anyhow::Error::msg)?,
            uid: format!("uid-{object}"),
            resource_version: "1".into(),
            generation: Some(1),
            created_at: Some(at),
            observed_at: at + chrono::Duration::seconds(self.seq as i64),
            changed_at: None,
            epoch: 1,
            server_name: format!("com.example/{server}").parse()?,
            version: "1.0.0".into(),
            description: format!("{object} server"),
            title: None,
            icon: None,
            category: None,
            tools: Vec::new(),
            remote: Remote {
                transport: RemoteTransport::StreamableHttp,
                url: format!("https://{object}.example.com/mcp"),
                headers: vec![Header::bearer_token()],
                extra: Default::default(),
            },
            phase: Phase::Ready,
            image: None,
            transport: "streamable-http".into(),
            group: None,
            tool_definitions: Vec::new(),
            authz_claims,
            package: None,
        };
        let key = DeploymentKey::new(record.cluster.clone(), record.object.clone()).to_string();
        self.seq += 1;
        let Fold::Write(value) = fold_applied(self.current.get(&key), &record, self.seq) else {
            bail!("fold_applied refused a newer sequence");
        };
        self.kv.put(&key, value.to_json().into()).await?;
        self.current.insert(key, value);
        Ok(())
    }

    /// Withdraws `com.example/<object>`: the tombstone the projector folds.
    async fn withdraw(&mut self, object: &str) -> anyhow::Result<()> {
        let key = self
            .current
            .keys()
            .find(|k| k.ends_with(&format!(".{object}")))
            .context("withdrawing what was never put")?
            .clone();
        let current = &self.current[&key];
        let record = current.live().context("already withdrawn")?;
        let withdrawal = events::withdrawal(record, "2", WithdrawReason::Deleted);
        self.seq += 1;
        let Fold::Write(value) = fold_withdrawn(Some(current), &withdrawal, self.seq, Utc::now())
        else {
            bail!("fold_withdrawn refused");
        };
        self.kv.put(&key, value.to_json().into()).await?;
        self.current.insert(key, value);
        Ok(())
    }
}

// ---------------------------------------------------------------- the API

struct Api {
    process: HeraldProcess,
    http: reqwest::Client,
}

impl Api {
    /// herald-api in oauth mode trusting `issuers`, plus `extra` flags.
    async fn oauth(nats: &NatsServer, issuers: &[&str], extra: &[&str]) -> anyhow::Result<Self> {
        let mut api = Herald::api(&nats.url())
            .env("RUST_LOG", "info,herald_api=debug")
            .args(["--auth-mode", "oauth", "--oidc-audience", RESOURCE]);
        for issuer in issuers {
            api = api.args(["--oidc-issuer", issuer]);
        }
        Self::started(api.args(extra)).await
    }

    async fn anonymous(nats: &NatsServer) -> anyhow::Result<Self> {
        Self::started(Herald::api(&nats.url())).await
    }

    async fn started(api: Herald) -> anyhow::Result<Self> {
        Ok(Self {
            process: api.start().await?,
            http: reqwest::Client::new(),
        })
    }

    async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.get(format!("{}{path}", self.process.base()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(within(STEP, path, request.send()).await??)
    }

    /// A request with a raw `Authorization` header value.
    async fn get_with(&self, path: &str, authorization: &str) -> anyhow::Result<reqwest::Response> {
        let request = self
            .http
            .get(format!("{}{path}", self.process.base()))
            .header("authorization", authorization);
        Ok(within(STEP, path, request.send()).await??)
    }

    /// The server names `token` is listed, once the list holds `expected` many.
    async fn names(&self, token: Option<&str>, expected: usize) -> anyhow::Result<Vec<String>> {
        self.names_at(LIST, token, expected).await
    }

    /// [`Api::names`] of the listing at `path`.
    async fn names_at(
        &self,
        path: &str,
        token: Option<&str>,
        expected: usize,
    ) -> anyhow::Result<Vec<String>> {
        eventually(STEP, "the listing", || async {
            let response = self.get(path, token).await?;
            ensure!(response.status() == StatusCode::OK, "{}", response.status());
            let body: Value = response.json().await?;
            let names = server_names(&body["servers"]);
            Ok((names.len() == expected).then_some(names))
        })
        .await
    }
}

fn server_names(servers: &Value) -> Vec<String> {
    let mut names: Vec<String> = servers
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["server"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The 401's challenge, checked for the parts every 401 has.
fn challenge(response: &reqwest::Response) -> anyhow::Result<String> {
    ensure!(
        response.status() == StatusCode::UNAUTHORIZED,
        "expected 401, got {}",
        response.status()
    );
    let value = response
        .headers()
        .get("www-authenticate")
        .context("a 401 without WWW-Authenticate")?
        .to_str()?
        .to_owned();
    ensure!(value.starts_with("Bearer realm=\"herald\""), "{value}");
    ensure!(
        value.contains(
            "resource_metadata=\"http://herald.test/.well-known/oauth-protected-resource\""
        ),
        "{value}"
    );
    Ok(value)
}

// ---------------------------------------------------------------- SSE

struct Sse {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    frames: Frames,
}

impl Sse {
    async fn connect(api: &Api, token: &str) -> anyhow::Result<Self> {
        Self::connect_to(api, "", token).await
    }

    /// The feed of the registry at `base` (`/registry/<name>`, or "" for the default).
    async fn connect_to(api: &Api, base: &str, token: &str) -> anyhow::Result<Self> {
        let response = api.get(&format!("{base}{EVENTS}"), Some(token)).await?;
        Self::of(response)
    }

    /// The default registry's feed resumed after the event `last`.
    async fn resume(api: &Api, token: &str, last: u64) -> anyhow::Result<Self> {
        let request = api
            .http
            .get(format!("{}{EVENTS}", api.process.base()))
            .bearer_auth(token)
            .header("last-event-id", last.to_string());
        Self::of(within(STEP, "resuming the feed", request.send()).await??)
    }

    fn of(response: reqwest::Response) -> anyhow::Result<Self> {
        ensure!(
            response.status() == StatusCode::OK,
            "SSE: {}",
            response.status()
        );
        Ok(Self {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            frames: Frames::default(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<SseEvent> {
        within(STEP, "an SSE event", async {
            loop {
                if let Some(event) = self.frames.next_event()? {
                    return Ok(event);
                }
                let chunk = self.body.next().await.context("the SSE stream ended")??;
                self.frames.push(&chunk)?;
            }
        })
        .await?
    }
}

/// (event, server name) of an upsert or delete.
fn change(e: &SseEvent) -> (String, String) {
    let name = e.data["server"]["name"]
        .as_str()
        .or(e.data["name"].as_str())
        .unwrap_or_default();
    (e.event.clone(), name.to_owned())
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn oauth_mode_needs_an_issuer_and_an_audience_to_start() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    // The default mode is oauth: without a provider the API does not start.
    let out = Herald::api(&nats.url())
        .args(["--auth-mode", "oauth"])
        .output(START)
        .await?;
    ensure!(out.code()? != 0, "herald-api started without a provider");
    ensure!(
        out.stderr.contains("--oidc-issuer") && out.stderr.contains("--auth-mode anonymous"),
        "the error does not say what to do: {}",
        out.stderr
    );
    let out = Herald::api(&nats.url())
        .args([
            "--auth-mode",
            "oauth",
            "--oidc-issuer",
            "http://idp.example",
        ])
        .args(["--oidc-audience", RESOURCE])
        .output(START)
        .await?;
    ensure!(
        out.code()? != 0 && out.stderr.contains("https"),
        "a plain-http remote issuer was accepted: {}",
        out.stderr
    );
    Ok(())
}

#[tokio::test]
async fn tokens_are_checked_on_every_data_route_and_refusals_say_why() -> anyhow::Result<()> {
    let reader = Client::new("reader", json!({"team": "a"}));
    let short = Client::new("short", json!({})).ttl(2);
    let idp = OidcProvider::start(&[reader.clone(), short.clone()]).await?;
    // A second provider the API does not trust: its tokens are well formed and signed.
    let stranger = OidcProvider::start(std::slice::from_ref(&reader)).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    let api = Api::oauth(
        &nats,
        &[idp.issuer()],
        &["--oidc-clock-skew", "0s", "--oidc-keys-min-refresh", "1s"],
    )
    .await?;

    // No token: 401 with the challenge and no error code (RFC 6750 §3.1), on every data route.
    for path in [
        LIST,
        "/v0/servers",
        "/v0.1/servers/com.example%2Fopen/versions",
        "/v0.1/servers/deployed",
        "/registry/default/v0.1/servers",
        EVENTS,
    ] {
        let response = api.get(path, None).await?;
        let value = challenge(&response)?;
        ensure!(!value.contains("error="), "{path}: {value}");
        let body: Value = response.json().await?;
        ensure!(body["status"] == 401, "{path}: {body}");
    }
    // Public: health, metrics, the OpenAPI document, the page, and the metadata document.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        let status = api.get(path, None).await?.status();
        ensure!(status == StatusCode::OK, "{path}: {status}");
    }
    let metadata: Value = api
        .get("/.well-known/oauth-protected-resource", None)
        .await?
        .json()
        .await?;
    ensure!(
        metadata
            == json!({
                "resource": "http://herald.test/",
                "authorization_servers": [idp.issuer()],
                "bearer_methods_supported": ["header"],
                "resource_name": "Herald MCP registry API",
            }),
        "{metadata}"
    );

    // A valid token reads.
    let token = idp.token(&reader, RESOURCE).await?;
    ensure!(api.names(Some(&token), 1).await? == ["com.example/open"]);

    // Refusals, each with invalid_token (or invalid_request) and a reason, never the token.
    // One character inside the signature (the last one also holds padding bits).
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    let wrong_audience = idp.token(&reader, "http://other.test").await?;
    let foreign = stranger.token(&reader, RESOURCE).await?;
    // Above the token cap (8 KiB), below the header cap (16 KiB, which answers 431).
    let huge = "a".repeat(9_000);
    let cases: [(&str, String, &str); 7] = [
        (
            "tampered signature",
            format!("Bearer {tampered}"),
            "signature",
        ),
        (
            "wrong audience",
            format!("Bearer {wrong_audience}"),
            "audience",
        ),
        ("unknown issuer", format!("Bearer {foreign}"), "issuer"),
        ("garbage", "Bearer not-a-jwt".to_owned(), "well-formed"),
        (
            "another scheme",
            format!("Basic {token}"),
            "not a bearer token",
        ),
        ("huge", format!("Bearer {huge}"), "too large"),
        ("alg none", format!("Bearer {}", unsigned(&token)?), ""),
    ];
    for (what, header, reason) in &cases {
        let response = api.get_with(LIST, header).await?;
        let value = challenge(&response).with_context(|| what.to_string())?;
        ensure!(
            value.contains("error=\"invalid_token\"")
                || value.contains("error=\"invalid_request\""),
            "{what}: {value}"
        );
        let body = response.text().await?;
        ensure!(body.contains(reason), "{what}: {body}");
        ensure!(
            !body.contains(&token[token.len() - 20..]),
            "{what}: the token is echoed"
        );
    }

    // Key rotation: a token signed with a new key is accepted without a restart.
    let rotated = idp.rotate(false).await?;
    let fresh = idp.token(&reader, RESOURCE).await?;
    ensure!(
        jwt_kid(&fresh)? == rotated["kid"].as_str().unwrap_or_default(),
        "the new token is not signed with the new key"
    );
    eventually(STEP, "the rotated key to be fetched", || async {
        Ok((api.get(LIST, Some(&fresh)).await?.status() == StatusCode::OK).then_some(()))
    })
    .await?;

    // Expiry: a 2 s token works, then is refused as expired (no clock skew here).
    let brief = idp.token(&short, RESOURCE).await?;
    ensure!(api.get(LIST, Some(&brief)).await?.status() == StatusCode::OK);
    eventually(
        Duration::from_secs(20),
        "the short token to expire",
        || async {
            let response = api.get(LIST, Some(&brief)).await?;
            if response.status() == StatusCode::OK {
                return Ok(None);
            }
            let value = challenge(&response)?;
            ensure!(value.contains("expired"), "{value}");
            Ok(Some(()))
        },
    )
    .await?;

    // Metrics count outcomes; no token or claim value appears there or in the log.
    let metrics = api.get("/metrics", None).await?.text().await?;
    for outcome in [
        "ok",
        "missing",
        "signature",
        "audience",
        "unknown_issuer",
        "expired",
    ] {
        ensure!(
            metrics.contains(&format!(
                "herald_api_authentications_total{{outcome=\"{outcome}\"}}"
            )),
            "no {outcome} in the metrics"
        );
    }
    let log = api.process.log_contents();
    for secret in [&token, &fresh, &foreign] {
        ensure!(
            !log.contains(&secret[secret.len() - 20..]),
            "a token is in the log"
        );
        ensure!(
            !metrics.contains(&secret[secret.len() - 20..]),
            "a token is in the metrics"
        );
    }
    Ok(())
}

/// The token's header with `alg: none` and no signature.
fn unsigned(token: &str) -> anyhow::Result<String> {
    let payload = token.split('.').nth(1).context("no payload")?;
    // {"alg":"none","typ":"JWT"} in base64url.
    Ok(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."))
}

fn jwt_kid(token: &str) -> anyhow::Result<String> {
    let header = jsonwebtoken_header(token)?;
    Ok(header["kid"].as_str().unwrap_or_default().to_owned())
}

/// The JSON header of a JWT (base64url without padding).
fn jsonwebtoken_header(token: &str) -> anyhow::Result<Value> {
    let part = token.split('.').next().context("empty token")?;
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for c in part.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => bail!("not base64url"),
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test]
async fn entries_with_claims_are_seen_only_by_tokens_that_satisfy_them() -> anyhow::Result<()> {
    let a = Client::new("reader-a", json!({"groups": ["team-a"], "team": "a"}));
    let b = Client::new(
        "reader-b",
        json!({"groups": ["team-b", "ops"], "team": "b"}),
    );
    let idp = OidcProvider::start(&[a.clone(), b.clone()]).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    bucket.put("alpha", Some(r#"{"team": "a"}"#)).await?;
    bucket
        .put("beta", Some(r#"{"groups": ["team-b"]}"#))
        .await?;
    let api = Api::oauth(&nats, &[idp.issuer()], &[]).await?;
    let anonymous = Api::anonymous(&nats).await?;
    let (ta, tb) = (
        idp.token(&a, RESOURCE).await?,
        idp.token(&b, RESOURCE).await?,
    );

    // List: each token sees the open entry and its own; anonymous only the open one.
    ensure!(api.names(Some(&ta), 2).await? == ["com.example/alpha", "com.example/open"]);
    ensure!(api.names(Some(&tb), 2).await? == ["com.example/beta", "com.example/open"]);
    ensure!(anonymous.names(None, 1).await? == ["com.example/open"]);

    // Get and versions: another's entry is a 404, as if it did not exist.
    for path in [
        "/v0.1/servers/com.example%2Falpha/versions",
        "/v0.1/servers/com.example%2Falpha/versions/1.0.0",
        "/v0.1/servers/com.example%2Falpha/versions/latest",
    ] {
        ensure!(
            api.get(path, Some(&ta)).await?.status() == StatusCode::OK,
            "{path}"
        );
        let hidden = api.get(path, Some(&tb)).await?;
        ensure!(hidden.status() == StatusCode::NOT_FOUND, "{path}");
        // A personal 404: no cache may keep it or give it to another caller.
        let header = |name: &str| {
            hidden
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        ensure!(header("cache-control") == "no-store", "{path}");
        ensure!(
            header("vary").eq_ignore_ascii_case("authorization"),
            "{path}"
        );
        ensure!(
            anonymous.get(path, None).await?.status() == StatusCode::NOT_FOUND,
            "{path}"
        );
    }

    // ETags differ with the view; personal views are private and vary by Authorization,
    // and one caller's ETag gets no 304 for the other.
    let ra = api.get(LIST, Some(&ta)).await?;
    let rb = api.get(LIST, Some(&tb)).await?;
    let etag = |r: &reqwest::Response, h: &str| -> String {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(etag(&ra, "etag") != etag(&rb, "etag"));
    ensure!(
        etag(&ra, "vary").contains("authorization"),
        "{:?}",
        ra.headers()
    );
    ensure!(
        etag(&ra, "cache-control").contains("private"),
        "{:?}",
        ra.headers()
    );
    let cross = api
        .http
        .get(format!("{}{LIST}", api.process.base()))
        .bearer_auth(&tb)
        .header("if-none-match", etag(&ra, "etag"))
        .send()
        .await?;
    ensure!(cross.status() == StatusCode::OK, "{}", cross.status());

    // The feed: each subscriber's snapshot holds only its entries...
    let mut sa = Sse::connect(&api, &ta).await?;
    let mut sb = Sse::connect(&api, &tb).await?;
    let snap_a = sa.next().await?;
    let snap_b = sb.next().await?;
    ensure!(snap_a.event == "snapshot" && snap_b.event == "snapshot");
    ensure!(server_names(&snap_a.data["servers"]) == ["com.example/alpha", "com.example/open"]);
    ensure!(server_names(&snap_b.data["servers"]) == ["com.example/beta", "com.example/open"]);

    // ...a new entry for team b reaches b only...
    bucket.put("gamma", Some(r#"{"team": "b"}"#)).await?;
    ensure!(change(&sb.next().await?) == ("upsert".into(), "com.example/gamma".into()));
    // ...alpha's claims move from team a to team b: a is told it is gone, b gets it...
    bucket.put("alpha", Some(r#"{"team": "b"}"#)).await?;
    ensure!(change(&sb.next().await?) == ("upsert".into(), "com.example/alpha".into()));
    ensure!(change(&sa.next().await?) == ("delete".into(), "com.example/alpha".into()));
    // ...and a new open entry reaches both (had a seen gamma, it would have come first).
    bucket.put("delta", None).await?;
    ensure!(change(&sa.next().await?) == ("upsert".into(), "com.example/delta".into()));
    ensure!(change(&sb.next().await?) == ("upsert".into(), "com.example/delta".into()));
    ensure!(api.names(Some(&ta), 2).await? == ["com.example/delta", "com.example/open"]);
    ensure!(anonymous.names(None, 2).await? == ["com.example/delta", "com.example/open"]);
    // A subscriber that resumes gets exactly its own changes after its resume point.
    let names = api.names(Some(&tb), 5).await?;
    ensure!(
        names
            == [
                "com.example/alpha",
                "com.example/beta",
                "com.example/delta",
                "com.example/gamma",
                "com.example/open"
            ],
        "{names:?}"
    );
    Ok(())
}

/// An `--auth-config` file in a test folder.
fn auth_config(text: &str) -> anyhow::Result<(TestDir, String)> {
    let dir = TestDir::new("auth-config")?;
    let path = dir.join("auth.yaml");
    std::fs::write(&path, text)?;
    Ok((dir, path.display().to_string()))
}

/// A 404's problem document with the registry name it names replaced by `*`.
async fn not_found_body(response: reqwest::Response, registry: &str) -> anyhow::Result<String> {
    ensure!(
        response.status() == StatusCode::NOT_FOUND,
        "expected 404, got {}",
        response.status()
    );
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await?;
    Ok(format!("{kind} {}", body.replace(registry, "*")))
}

#[tokio::test]
async fn registry_policies_answer_404_to_callers_who_may_not_read() -> anyhow::Result<()> {
    let a = Client::new("reader-a", json!({"groups": ["team-a"]}));
    let b = Client::new("reader-b", json!({"groups": ["team-b", "ops"]}));
    let idp = OidcProvider::start(&[a.clone(), b.clone()]).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let mut default = Bucket::create(&js).await?;
    default.put("open", None).await?;
    let mut team_a = Bucket::create_in(&js, "team-a").await?;
    team_a.put("alpha", None).await?;
    let mut team_b = Bucket::create_in(&js, "team-b").await?;
    team_b.put("beta", None).await?;
    team_b
        .put("beta-claimed", Some(r#"{"groups": "team-b"}"#))
        .await?;
    // team-a: its group, and its unclaimed entries shown despite the default deny;
    // team-b: its group, default deny kept; the default registry has no policy.
    let (_config_dir, config) = auth_config(
        "registries:\n  team-a:\n    claims: {groups: team-a}\n    unclaimedEntries: visible\n  \
         team-b:\n    claims: {groups: [team-b]}\n",
    )?;
    let api = Api::oauth(
        &nats,
        &[idp.issuer()],
        &["--hide-unclaimed-entries", "--auth-config", &config],
    )
    .await?;
    let (ta, tb) = (
        idp.token(&a, RESOURCE).await?,
        idp.token(&b, RESOURCE).await?,
    );

    ensure!(
        api.names_at("/registry/team-a/v0.1/servers", Some(&ta), 1)
            .await?
            == ["com.example/alpha"]
    );
    ensure!(
        api.names_at("/registry/team-b/v0.1/servers", Some(&tb), 1)
            .await?
            == ["com.example/beta-claimed"],
        "team-b keeps the default deny of unclaimed entries"
    );
    ensure!(api.names(Some(&ta), 0).await?.is_empty());

    // Every route of a registry the caller may not read: the 404 of a registry that
    // does not exist, byte for byte but the name.
    for (registry, token, other) in [("team-b", &ta, &tb), ("team-a", &tb, &ta)] {
        for route in [
            "/v0.1/servers",
            "/v0/servers",
            "/v0.1/servers/deployed",
            "/v0.1/servers/com.example%2Falpha/versions",
            "/v0.1/servers/com.example%2Fbeta/versions/latest",
            EVENTS,
        ] {
            let denied = api
                .get(&format!("/registry/{registry}{route}"), Some(token))
                .await?;
            let unknown = api
                .get(&format!("/registry/no-such{route}"), Some(token))
                .await?;
            let (denied, unknown) = (
                not_found_body(denied, registry).await?,
                not_found_body(unknown, "no-such").await?,
            );
            ensure!(
                denied == unknown,
                "{registry}{route}: {denied} vs {unknown}"
            );
            // The reader it is for is not refused there.
            let allowed = api
                .get(&format!("/registry/{registry}{route}"), Some(other))
                .await?
                .status();
            ensure!(
                allowed != StatusCode::NOT_FOUND || route.contains("/versions"),
                "{registry}{route}: {allowed} for its own team"
            );
        }
    }
    // Also through a percent-encoded name, as the router decodes it.
    let encoded = api
        .get("/registry/team%2Db/v0.1/servers", Some(&ta))
        .await?;
    ensure!(encoded.status() == StatusCode::NOT_FOUND);

    // The feed of an allowed registry holds its entries; the page says nothing about
    // which registries exist (it is public and has no data).
    let mut feed = Sse::connect_to(&api, "/registry/team-a", &ta).await?;
    let snapshot = feed.next().await?;
    ensure!(server_names(&snapshot.data["servers"]) == ["com.example/alpha"]);
    for page in ["/registry/team-b/", "/registry/no-such/"] {
        let status = api.get(page, None).await?.status();
        ensure!(status == StatusCode::OK, "{page}: {status}");
    }

    // Anonymous readers never get a registry that needs claims, nor its page.
    let anonymous =
        Api::started(Herald::api(&nats.url()).args(["--auth-config", config.as_str()])).await?;
    ensure!(anonymous.names(None, 1).await? == ["com.example/open"]);
    for path in ["/registry/team-a/v0.1/servers", "/registry/team-a/"] {
        let status = anonymous.get(path, None).await?.status();
        ensure!(status == StatusCode::NOT_FOUND, "{path}: {status}");
    }
    Ok(())
}

#[tokio::test]
async fn several_providers_each_with_their_own_audience() -> anyhow::Result<()> {
    let reader = Client::new("reader", json!({"team": "a"}));
    let first = OidcProvider::start(std::slice::from_ref(&reader)).await?;
    let second = OidcProvider::start(std::slice::from_ref(&reader)).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    const OTHER: &str = "http://herald-b.test";
    let (_config_dir, config) = auth_config(&format!(
        "providers:\n  - issuer: {}\n    audience: {OTHER}\n",
        second.issuer()
    ))?;
    // The flags' provider (audience RESOURCE) and the file's (audience OTHER).
    let api = Api::oauth(&nats, &[first.issuer()], &["--auth-config", &config]).await?;

    let ok = first.token(&reader, RESOURCE).await?;
    ensure!(api.names(Some(&ok), 1).await? == ["com.example/open"]);
    let ok = second.token(&reader, OTHER).await?;
    ensure!(api.names(Some(&ok), 1).await? == ["com.example/open"]);
    // Each provider's tokens must carry its own audience, not the other's.
    for token in [
        first.token(&reader, OTHER).await?,
        second.token(&reader, RESOURCE).await?,
    ] {
        let response = api.get(LIST, Some(&token)).await?;
        let value = challenge(&response)?;
        ensure!(value.contains("audience"), "{value}");
    }
    let metadata: Value = api
        .get("/.well-known/oauth-protected-resource", None)
        .await?
        .json()
        .await?;
    ensure!(
        metadata["authorization_servers"] == json!([first.issuer(), second.issuer()]),
        "{metadata}"
    );

    // A bad file stops the start with the place of the mistake.
    let (_bad_dir, bad) = auth_config("registries:\n  team-a:\n    claim: {groups: a}\n")?;
    let out = Herald::api(&nats.url())
        .args(["--auth-config", bad.as_str()])
        .output(START)
        .await?;
    ensure!(
        out.code()? != 0 && out.stderr.contains("--auth-config") && out.stderr.contains("claim"),
        "{}",
        out.stderr
    );
    Ok(())
}

#[tokio::test]
async fn the_registry_page_reads_the_feed_with_a_pasted_token_in_headless_chromium()
-> anyhow::Result<()> {
    let a = Client::new("reader-a", json!({"team": "a"}));
    let b = Client::new("reader-b", json!({"team": "b"}));
    let idp = OidcProvider::start(&[a.clone(), b.clone()]).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    bucket.put("alpha", Some(r#"{"team": "a"}"#)).await?;
    bucket.put("beta", Some(r#"{"team": "b"}"#)).await?;
    let api = Api::oauth(&nats, &[idp.issuer()], &[]).await?;
    let (ta, tb) = (
        idp.token(&a, RESOURCE).await?,
        idp.token(&b, RESOURCE).await?,
    );
    let dir = TestDir::new("auth-browser")?;
    let browser = Browser::start(&dir).await?;
    const NAMES: &str =
        "return [...document.querySelectorAll('article')].map(a => a.dataset.name).join(' ')";
    let paste = |token: &str| {
        format!(
            "document.getElementById('token').value = {}; \
             document.getElementById('use-token').click(); return 1",
            serde_json::to_string(token).unwrap_or_default()
        )
    };

    // Without a token the feed answers 401 and the page asks for one.
    browser.goto(&format!("{}/", api.process.base())).await?;
    browser
        .until("return document.body.dataset.state", "unauthorized".into())
        .await?;
    ensure!(
        browser
            .eval("return document.querySelectorAll('article').length")
            .await?
            == 0
    );

    // With a's token: a's entries and the open one, live.
    browser.eval(&paste(&ta)).await?;
    browser
        .until(NAMES, "com.example/alpha com.example/open".into())
        .await?;
    browser
        .until("return document.body.dataset.state", "live".into())
        .await?;
    bucket.put("gamma", Some(r#"{"team": "a"}"#)).await?;
    bucket.put("delta", Some(r#"{"team": "b"}"#)).await?;
    browser
        .until(
            NAMES,
            "com.example/alpha com.example/gamma com.example/open".into(),
        )
        .await?;
    // alpha moves to team b: it leaves a's page without a reload.
    bucket.put("alpha", Some(r#"{"team": "b"}"#)).await?;
    browser
        .until(NAMES, "com.example/gamma com.example/open".into())
        .await?;

    // The token is in sessionStorage and in no URL the page requested.
    ensure!(
        browser
            .eval("return sessionStorage.getItem('herald.token')")
            .await?
            == ta.as_str()
    );
    let urls = browser
        .eval("return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]).join(' ')")
        .await?;
    let urls = urls.as_str().unwrap_or_default();
    ensure!(urls.contains("/v0.1/x/dev.herald/events"), "{urls}");
    ensure!(
        !urls.contains(&ta[ta.len() - 20..]),
        "a token in a URL: {urls}"
    );

    // Another token is another view, from a fresh snapshot.
    browser.eval(&paste(&tb)).await?;
    browser
        .until(
            NAMES,
            "com.example/alpha com.example/beta com.example/delta com.example/open".into(),
        )
        .await?;
    // A refused token is said so; forgetting it goes back to asking.
    browser.eval(&paste("not-a-jwt")).await?;
    browser
        .until("return document.body.dataset.state", "unauthorized".into())
        .await?;
    ensure!(
        browser
            .eval("return document.querySelectorAll('article').length")
            .await?
            == 0
    );
    browser
        .eval("document.getElementById('forget-token').click(); return 1")
        .await?;
    browser
        .until("return sessionStorage.getItem('herald.token')", Value::Null)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_provider_of_the_config_file_uses_its_own_ca_and_fetch_token() -> anyhow::Result<()> {
    // A Kubernetes-style issuer: https with a private CA, discovery and JWKS only with a
    // bearer token, tokens whose `sub` names a service account.
    // The provider's client-credentials tokens carry the client id as `sub`.
    let account = Client::new("system:serviceaccount:team-a:reader", json!({}));
    let ca = TestCa::new()?;
    let dir = TestDir::new("fetch-token")?;
    let fetch_token = dir.join("token");
    std::fs::write(&fetch_token, "metadata-reader-token\n")?;
    let idp = OidcProvider::start_with(
        std::slice::from_ref(&account),
        ProviderOptions {
            tls: Some(&ca),
            metadata_token_file: Some(&fetch_token),
            ..Default::default()
        },
    )
    .await?;
    ensure!(idp.issuer().starts_with("https://"), "{}", idp.issuer());
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    bucket
        .put(
            "mine",
            Some(r#"{"sub": ["system:serviceaccount:team-a:reader"]}"#),
        )
        .await?;
    let provider = |extra: &str| {
        format!(
            "providers:\n  - issuer: {}\n    audience: {RESOURCE}\n{extra}",
            idp.issuer()
        )
    };
    let full = format!(
        "    caFile: {}\n    fetchTokenFile: {}\n",
        ca.ca.display(),
        fetch_token.display()
    );
    let (_full_dir, full) = auth_config(&provider(&full))?;
    // The file's provider alone: no --oidc-issuer, the resource is its audience.
    let api = Api::started(Herald::api(&nats.url()).args([
        "--auth-mode",
        "oauth",
        "--auth-config",
        full.as_str(),
    ]))
    .await?;
    let token = idp.token(&account, RESOURCE).await?;
    ensure!(api.names(Some(&token), 2).await? == ["com.example/mine", "com.example/open"]);

    // Without the CA, or without the fetch token, the keys cannot be fetched: refused.
    let (_no_ca_dir, no_ca) = auth_config(&provider(&format!(
        "    fetchTokenFile: {}\n",
        fetch_token.display()
    )))?;
    let (_no_token_dir, no_token) =
        auth_config(&provider(&format!("    caFile: {}\n", ca.ca.display())))?;
    for config in [no_ca, no_token] {
        let api = Api::started(Herald::api(&nats.url()).args([
            "--auth-mode",
            "oauth",
            "--auth-config",
            config.as_str(),
        ]))
        .await?;
        let response = api.get(LIST, Some(&token)).await?;
        let value = challenge(&response)?;
        ensure!(value.contains("cannot be reached"), "{config}: {value}");
    }
    Ok(())
}

/// The names `?include_deleted=true` lists to `token`, once it lists `expected` many;
/// each of them must be deleted.
async fn deleted(api: &Api, token: Option<String>, expected: usize) -> anyhow::Result<Vec<String>> {
    eventually(STEP, "the deleted entries", || async {
        let response = api
            .get(&format!("{LIST}?include_deleted=true"), token.as_deref())
            .await?;
        ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let body: Value = response.json().await?;
        for e in body["servers"].as_array().into_iter().flatten() {
            ensure!(
                e["_meta"]["io.modelcontextprotocol.registry/official"]["status"] == "deleted",
                "{e}"
            );
        }
        let names = server_names(&body["servers"]);
        Ok((names.len() == expected).then_some(names))
    })
    .await
}

#[tokio::test]
async fn deleted_entries_are_seen_only_by_tokens_that_could_see_them_live() -> anyhow::Result<()> {
    let a = Client::new("team-a", json!({"team": "a"}));
    let b = Client::new("team-b", json!({"team": "b"}));
    let idp = OidcProvider::start(&[a.clone(), b.clone()]).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    bucket.put("alpha", Some(r#"{"team": "a"}"#)).await?;
    bucket.withdraw("open").await?;
    bucket.withdraw("alpha").await?;
    let api = Api::oauth(&nats, &[idp.issuer()], &[]).await?;
    let hiding = Api::oauth(&nats, &[idp.issuer()], &["--hide-unclaimed-entries"]).await?;
    let anonymous = Api::anonymous(&nats).await?;
    let (ta, tb) = (
        idp.token(&a, RESOURCE).await?,
        idp.token(&b, RESOURCE).await?,
    );
    // Plain lists show nothing: both are withdrawn.
    ensure!(api.names(Some(&ta), 0).await?.is_empty());
    // Deleted entries keep their claims: team a sees alpha, team b only the open one.
    ensure!(deleted(&api, Some(ta.clone()), 2).await? == ["com.example/alpha", "com.example/open"]);
    ensure!(deleted(&api, Some(tb.clone()), 1).await? == ["com.example/open"]);
    ensure!(deleted(&anonymous, None, 1).await? == ["com.example/open"]);
    // With unclaimed entries hidden, an unclaimed tombstone is hidden too.
    ensure!(deleted(&hiding, Some(ta.clone()), 1).await? == ["com.example/alpha"]);
    ensure!(deleted(&hiding, Some(tb.clone()), 0).await?.is_empty());
    // Get and versions of another's deleted entry: 404, as if it never existed.
    for path in [
        "/v0.1/servers/com.example%2Falpha/versions?include_deleted=true",
        "/v0.1/servers/com.example%2Falpha/versions/1.0.0?include_deleted=true",
    ] {
        let status = api.get(path, Some(&tb)).await?.status();
        ensure!(status == StatusCode::NOT_FOUND, "{path}: {status}");
        let status = api.get(path, Some(&ta)).await?.status();
        ensure!(status == StatusCode::OK, "{path}: {status}");
    }
    // An incremental sync (updated_since implies include_deleted) is filtered alike.
    let response = api
        .get(
            &format!("{LIST}?updated_since=2020-01-01T00:00:00Z"),
            Some(&tb),
        )
        .await?;
    let body: Value = response.json().await?;
    ensure!(
        server_names(&body["servers"]) == ["com.example/open"],
        "{body}"
    );
    Ok(())
}

/// The remote URLs of an entry.
fn remote_urls(entry: &Value) -> Vec<String> {
    entry["server"]["remotes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["url"].as_str().map(str::to_owned))
        .collect()
}

/// The entries of a `ServerList` by server name.
fn by_name(list: &Value) -> BTreeMap<String, Value> {
    list["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["server"]["name"].as_str()?.to_owned(), e.clone())))
        .collect()
}

#[tokio::test]
async fn a_merged_entry_with_mixed_claims_shows_each_caller_only_its_remotes() -> anyhow::Result<()>
{
    const SHARED: &str = "com.example/shared";
    const ONE: &str = "/v0.1/servers/com.example%2Fshared/versions/1.0.0";
    let url = |object: &str| format!("https://{object}.example.com/mcp");
    let a = Client::new("team-a", json!({"team": "a"}));
    let b = Client::new("team-b", json!({"team": "b"}));
    let both = Client::new("team-ab", json!({"team": ["a", "b"]}));
    let idp = OidcProvider::start(&[a.clone(), b.clone(), both.clone()]).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    // One server name, deployed twice: once for team a, once for team b.
    bucket
        .put_part("shared-a", "shared", Some(r#"{"team": "a"}"#))
        .await?;
    bucket
        .put_part("shared-b", "shared", Some(r#"{"team": "b"}"#))
        .await?;
    let api = Api::oauth(&nats, &[idp.issuer()], &[]).await?;
    let anonymous = Api::anonymous(&nats).await?;
    let (ta, tb, tab) = (
        idp.token(&a, RESOURCE).await?,
        idp.token(&b, RESOURCE).await?,
        idp.token(&both, RESOURCE).await?,
    );

    // Each caller gets the entry merged from the deployments it may see.
    let remotes_of = |token: String| {
        let api = &api;
        async move {
            eventually(STEP, "the shared entry", || async {
                let response = api.get(ONE, Some(&token)).await?;
                if response.status() != StatusCode::OK {
                    return Ok(None);
                }
                let entry: Value = response.json().await?;
                Ok(Some(remote_urls(&entry)))
            })
            .await
        }
    };
    ensure!(remotes_of(ta.clone()).await? == [url("shared-a")]);
    ensure!(remotes_of(tb.clone()).await? == [url("shared-b")]);
    ensure!(remotes_of(tab.clone()).await? == [url("shared-a"), url("shared-b")]);
    ensure!(anonymous.get(ONE, None).await?.status() == StatusCode::NOT_FOUND);
    // The same on list, versions and deployed.
    for path in [
        LIST.to_owned(),
        "/v0.1/servers/com.example%2Fshared/versions".to_owned(),
        "/v0.1/servers/deployed".to_owned(),
    ] {
        for (token, expected) in [(&ta, url("shared-a")), (&tb, url("shared-b"))] {
            let body: Value = api.get(&path, Some(token)).await?.json().await?;
            let entries = by_name(&body);
            ensure!(
                entries.get(SHARED).map(remote_urls) == Some(vec![expected.clone()]),
                "{path}: {body}"
            );
        }
    }

    // Different bodies, different ETags; one caller's ETag never gets a 304 for the other,
    // its own does.
    let ra = api.get(ONE, Some(&ta)).await?;
    let rb = api.get(ONE, Some(&tb)).await?;
    let etag = |r: &reqwest::Response| -> String {
        r.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (ea, eb) = (etag(&ra), etag(&rb));
    ensure!(!ea.is_empty() && ea != eb, "{ea} {eb}");
    let conditional = |token: &str, tag: &str| {
        api.http
            .get(format!("{}{ONE}", api.process.base()))
            .bearer_auth(token)
            .header("if-none-match", tag)
            .send()
    };
    ensure!(conditional(&tb, &ea).await?.status() == StatusCode::OK);
    ensure!(conditional(&ta, &eb).await?.status() == StatusCode::OK);
    ensure!(conditional(&ta, &ea).await?.status() == StatusCode::NOT_MODIFIED);

    // The feed: each snapshot holds the entry as that subscriber sees it.
    let mut sa = Sse::connect(&api, &ta).await?;
    let mut sb = Sse::connect(&api, &tb).await?;
    let (snap_a, snap_b) = (sa.next().await?, sb.next().await?);
    ensure!(snap_a.event == "snapshot" && snap_b.event == "snapshot");
    ensure!(by_name(&snap_a.data).get(SHARED).map(remote_urls) == Some(vec![url("shared-a")]));
    ensure!(by_name(&snap_b.data).get(SHARED).map(remote_urls) == Some(vec![url("shared-b")]));

    // A second deployment for team b: b gets the entry with both its remotes; a nothing
    // (its next event is the open entry that follows).
    bucket
        .put_part("shared-b2", "shared", Some(r#"{"team": "b"}"#))
        .await?;
    let event = sb.next().await?;
    ensure!(change(&event) == ("upsert".into(), SHARED.into()));
    ensure!(remote_urls(&event.data) == [url("shared-b"), url("shared-b2")]);
    let resume_b = event.id.context("an upsert without an id")?;
    bucket.put("open", None).await?;
    ensure!(change(&sa.next().await?) == ("upsert".into(), "com.example/open".into()));
    ensure!(change(&sb.next().await?) == ("upsert".into(), "com.example/open".into()));

    // Team a's deployment moves to team b: a loses the entry (a delete), b gains its remote.
    bucket
        .put_part("shared-a", "shared", Some(r#"{"team": "b"}"#))
        .await?;
    let event = sa.next().await?;
    ensure!(change(&event) == ("delete".into(), SHARED.into()));
    ensure!(event.data["version"] == "1.0.0", "{}", event.data);
    let event = sb.next().await?;
    ensure!(change(&event) == ("upsert".into(), SHARED.into()));
    ensure!(
        remote_urls(&event.data) == [url("shared-a"), url("shared-b"), url("shared-b2")],
        "{}",
        event.data
    );
    // And back: a gains it again, with only its remote; b loses that remote.
    bucket
        .put_part("shared-a", "shared", Some(r#"{"team": "a"}"#))
        .await?;
    let event = sa.next().await?;
    ensure!(change(&event) == ("upsert".into(), SHARED.into()));
    ensure!(remote_urls(&event.data) == [url("shared-a")]);
    let event = sb.next().await?;
    ensure!(remote_urls(&event.data) == [url("shared-b"), url("shared-b2")]);
    ensure!(api.get(ONE, Some(&ta)).await?.status() == StatusCode::OK);

    // b resumes after its first upsert: exactly its own changes since, in order.
    let mut resumed = Sse::resume(&api, &tb, resume_b).await?;
    let expected = [
        ("upsert", "com.example/open", vec![url("open")]),
        (
            "upsert",
            SHARED,
            vec![url("shared-a"), url("shared-b"), url("shared-b2")],
        ),
        ("upsert", SHARED, vec![url("shared-b"), url("shared-b2")]),
    ];
    for (event, name, remotes) in expected {
        let e = resumed.next().await?;
        ensure!(change(&e) == (event.into(), name.into()), "{e:?}");
        ensure!(remote_urls(&e.data) == remotes, "{e:?}");
    }
    // a resumes from before it lost the entry: the delete, then the upsert.
    let mut resumed = Sse::resume(&api, &ta, resume_b).await?;
    for expected in ["com.example/open", SHARED, SHARED] {
        let e = resumed.next().await?;
        ensure!(change(&e).1 == expected, "{e:?}");
    }

    // Tombstones too: team b's deployments are withdrawn; b sees the deleted version, a
    // still the live one.
    bucket.withdraw("shared-b").await?;
    bucket.withdraw("shared-b2").await?;
    let with_deleted = format!("{ONE}?include_deleted=true");
    let entry: Value = eventually(STEP, "b's deleted entry", || async {
        let response = api.get(&with_deleted, Some(&tb)).await?;
        if response.status() != StatusCode::OK {
            return Ok(None);
        }
        let entry: Value = response.json().await?;
        let status = &entry["_meta"]["io.modelcontextprotocol.registry/official"]["status"];
        Ok((status == "deleted").then_some(entry))
    })
    .await?;
    ensure!(remote_urls(&entry).is_empty(), "{entry}");
    ensure!(api.get(ONE, Some(&tb)).await?.status() == StatusCode::NOT_FOUND);
    let entry: Value = api.get(&with_deleted, Some(&ta)).await?.json().await?;
    ensure!(remote_urls(&entry) == [url("shared-a")], "{entry}");
    Ok(())
}

/// Claims of a token minted by the test: valid for five minutes, for herald-api.
fn minted_claims(issuer: &str, sub: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({"iss": issuer, "sub": sub, "aud": RESOURCE, "iat": now, "nbf": now, "exp": now + 300})
}

/// The 401 body of `token`, checked for its challenge.
async fn refusal(api: &Api, token: &str) -> anyhow::Result<String> {
    let response = api.get(LIST, Some(token)).await?;
    challenge(&response)?;
    Ok(response.text().await?)
}

#[tokio::test]
async fn tokens_minted_by_the_test_are_checked_and_bad_ones_cost_no_key_fetches()
-> anyhow::Result<()> {
    let idp = OidcProvider::start(&[]).await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    let api = Api::oauth(&nats, &[idp.issuer()], &[]).await?;
    let claims = minted_claims(idp.issuer(), "minted");
    let valid = idp.sign(json!({}), claims.clone()).await?;
    ensure!(api.names(Some(&valid), 1).await? == ["com.example/open"]);

    let now = Utc::now().timestamp();
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().into_iter().flatten() {
            if v.is_null() {
                c.as_object_mut().map(|o| o.remove(k));
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let cases = [
        (
            "not yet valid",
            json!({}),
            with(json!({"nbf": now + 600})),
            "not valid yet",
        ),
        (
            "expired",
            json!({}),
            with(json!({"exp": now - 600})),
            "expired",
        ),
        (
            "wrong audience",
            json!({}),
            with(json!({"aud": "http://other.test"})),
            "audience",
        ),
        (
            "no exp",
            json!({}),
            with(json!({"exp": null})),
            "required claim",
        ),
        (
            "HS256 with the public key",
            json!({"alg": "HS256"}),
            claims.clone(),
            "algorithm",
        ),
        ("alg none", json!({"alg": "none"}), claims.clone(), ""),
        (
            "unknown kid",
            json!({"kid": "not-a-key"}),
            claims.clone(),
            "not one its issuer publishes",
        ),
    ];
    for (what, header, body, reason) in cases {
        let token = idp.sign(header, body).await?;
        let text = refusal(&api, &token).await.with_context(|| what)?;
        ensure!(text.contains(reason), "{what}: {text}");
    }

    // Many bad tokens in a row: each refused quickly, and the unknown kids among them
    // fetch the keys at most once (the refetch is rate-limited, --oidc-keys-min-refresh).
    let before = idp.jwks_requests().await?;
    let huge = format!("Bearer {}", "a".repeat(9_000));
    let started = std::time::Instant::now();
    for i in 0..300 {
        let header = match i % 3 {
            0 => format!(
                "Bearer {}",
                idp.sign(json!({"kid": format!("made-up-{i}")}), claims.clone())
                    .await?
            ),
            1 => format!("Bearer {i}.%%garbage%%.{i}"),
            _ => huge.clone(),
        };
        let response = api.get_with(LIST, &header).await?;
        ensure!(
            response.status() == StatusCode::UNAUTHORIZED,
            "{i}: {}",
            response.status()
        );
    }
    let fetches = idp.jwks_requests().await? - before;
    ensure!(fetches <= 1, "{fetches} key fetches for 100 unknown kids");
    let metrics = api.get("/metrics", None).await?.text().await?;
    ensure!(!metrics.contains("made-up-"), "a kid in the metrics");
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // The valid token still reads.
    ensure!(api.get(LIST, Some(&valid)).await?.status() == StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_kubernetes_service_account_token_reads_through_the_in_cluster_configuration()
-> anyhow::Result<()> {
    // The service-account issuer as a pod sees it: https with the cluster's CA (the
    // provider's caFile), discovery and JWKS only with a bearer token (fetchTokenFile, the
    // pod's projected token), and tokens in the exact shape of a projected service-account
    // token, minted by the test with the issuer's key.
    let ca = TestCa::new()?;
    let dir = TestDir::new("service-account")?;
    let pod_token = dir.join("token");
    std::fs::write(&pod_token, "projected-pod-token\n")?;
    let idp = OidcProvider::start_with(
        &[],
        ProviderOptions {
            tls: Some(&ca),
            metadata_token_file: Some(&pod_token),
            ..Default::default()
        },
    )
    .await?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    bucket
        .put(
            "mine",
            Some(r#"{"sub": ["system:serviceaccount:team-a:reader"]}"#),
        )
        .await?;
    bucket
        .put(
            "theirs",
            Some(r#"{"sub": ["system:serviceaccount:team-b:reader"]}"#),
        )
        .await?;
    let (_config_dir, config) = auth_config(&format!(
        "providers:\n  - issuer: {}\n    audience: {RESOURCE}\n    caFile: {}\n    \
         fetchTokenFile: {}\n",
        idp.issuer(),
        ca.ca.display(),
        pod_token.display()
    ))?;
    let api = Api::started(Herald::api(&nats.url()).args([
        "--auth-mode",
        "oauth",
        "--auth-config",
        config.as_str(),
    ]))
    .await?;
    let account = |namespace: &str| {
        let now = Utc::now().timestamp();
        json!({
            "aud": [RESOURCE],
            "exp": now + 3600,
            "iat": now,
            "iss": idp.issuer(),
            "jti": format!("jti-{namespace}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "5f7c1a34-0000-4000-8000-000000000001"},
                "pod": {"name": "reader-7d9f8", "uid": "5f7c1a34-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": "reader", "uid": "5f7c1a34-0000-4000-8000-000000000003"},
                "warnafter": now + 3000,
            },
            "nbf": now,
            "sub": format!("system:serviceaccount:{namespace}:reader"),
        })
    };
    let team_a = idp.sign(json!({}), account("team-a")).await?;
    let team_b = idp.sign(json!({}), account("team-b")).await?;
    ensure!(api.names(Some(&team_a), 2).await? == ["com.example/mine", "com.example/open"]);
    ensure!(api.names(Some(&team_b), 2).await? == ["com.example/open", "com.example/theirs"]);
    // A token of another audience (a pod's own API token) is refused.
    let mut other = account("team-a");
    other["aud"] = json!(["https://kubernetes.default.svc.cluster.local"]);
    let other = idp.sign(json!({}), other).await?;
    ensure!(refusal(&api, &other).await?.contains("audience"));
    Ok(())
}

#[tokio::test]
async fn a_provider_down_at_start_then_up_then_down_again() -> anyhow::Result<()> {
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let mut bucket = Bucket::create(&nats.jetstream().await).await?;
    bucket.put("open", None).await?;
    let api = Api::oauth(&nats, &[&issuer], &["--oidc-keys-min-refresh", "1s"]).await?;
    // A token naming that issuer, signed by another provider (its keys do not matter:
    // herald-api cannot get any for the issuer).
    let early = OidcProvider::start(&[]).await?;
    let early_token = early
        .sign(json!({}), minted_claims(&issuer, "early"))
        .await?;
    drop(early);
    ensure!(
        refusal(&api, &early_token)
            .await?
            .contains("cannot be reached"),
        "no keys: a clear error"
    );

    // The provider comes up: its tokens read, without a restart of herald-api.
    let idp = OidcProvider::start_with(
        &[],
        ProviderOptions {
            port: Some(port),
            ..Default::default()
        },
    )
    .await?;
    ensure!(idp.issuer() == issuer, "{}", idp.issuer());
    let token = idp.sign(json!({}), minted_claims(&issuer, "later")).await?;
    let unknown = idp
        .sign(
            json!({"kid": "rotated-away"}),
            minted_claims(&issuer, "later"),
        )
        .await?;
    ensure!(api.names(Some(&token), 1).await? == ["com.example/open"]);

    // Down again: the cached keys keep working; a key it never saw is refused clearly.
    drop(idp);
    for _ in 0..3 {
        ensure!(api.get(LIST, Some(&token)).await?.status() == StatusCode::OK);
    }
    ensure!(
        refusal(&api, &unknown)
            .await?
            .contains("not one its issuer publishes")
    );
    ensure!(api.get(LIST, Some(&token)).await?.status() == StatusCode::OK);
    Ok(())
}

//! `herald-catalog sync` against protected and unusual sources: a registry API
//! that requires a bearer token (from a file, or from an OAuth 2.0 token endpoint
//! with client credentials), served by a small axum server in the test that also
//! acts as the token endpoint and as a forward proxy; a body over the size cap; and an
//! HTTPS source (the test's kube-apiserver) trusted through `--ca-file`. The real
//! `herald-catalog` binary and a real nats-server; events are counted on the stream.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::ports::free_port;
use herald_integration_tests::process::ChildProcess;
use herald_integration_tests::timeout::{eventually, within};
use herald_integration_tests::tools::herald_binary;
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);
const CLIENT_ID: &str = "catalog-importer";
const CLIENT_SECRET: &str = "client-secret-5e7a1c";
/// Bearer tokens the test writes to the token file; never to be logged.
const TOKEN_A: &str = "file-token-alpha-0d41";
const TOKEN_B: &str = "file-token-bravo-93be";
/// Prefix of the tokens the token endpoint issues.
const ISSUED: &str = "issued-token-";

// ---------------------------------------------------------------- the source

/// One request to the list.
#[derive(Debug, Clone)]
struct ListRequest {
    /// The request target as received (absolute-form when sent to a proxy).
    target: String,
    token: Option<String>,
    authorized: bool,
}

/// The form fields of one token request.
type FormFields = Vec<(String, String)>;

/// A registry API whose list requires a bearer token, and the token endpoint that
/// issues tokens for one client.
#[derive(Debug, Default)]
struct Source {
    servers: Vec<Value>,
    /// Tokens the list accepts (from files, or issued and not revoked).
    accepted: Mutex<BTreeSet<String>>,
    /// Every token ever issued, in order.
    issued: Mutex<Vec<String>>,
    /// The form of each token request, and whether its client authenticated.
    token_requests: Mutex<Vec<(FormFields, bool)>>,
    lists: Mutex<Vec<ListRequest>>,
    /// The list refuses every token.
    refuse_all: AtomicBool,
    /// The list pads its answer to this many bytes (0: no padding).
    pad_to: Mutex<usize>,
}

impl Source {
    async fn start(servers: Vec<Value>) -> anyhow::Result<(Arc<Source>, String)> {
        let source = Arc::new(Source {
            servers,
            ..Source::default()
        });
        let app = Router::new()
            .route("/v0.1/servers", get(list))
            .route("/token", post(token))
            .with_state(source.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((source, base))
    }

    fn accept(&self, token: &str) {
        lock(&self.accepted).insert(token.to_owned());
    }

    fn revoke_all(&self) {
        lock(&self.accepted).clear();
    }

    fn lists(&self) -> Vec<ListRequest> {
        lock(&self.lists).clone()
    }

    fn authorized_with(&self, token: &str) -> usize {
        self.lists()
            .iter()
            .filter(|r| r.authorized && r.token.as_deref() == Some(token))
            .count()
    }

    fn issued(&self) -> Vec<String> {
        lock(&self.issued).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn list(State(source): State<Arc<Source>>, uri: Uri, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let authorized = !source.refuse_all.load(Ordering::SeqCst)
        && token
            .as_ref()
            .is_some_and(|t| lock(&source.accepted).contains(t));
    lock(&source.lists).push(ListRequest {
        target: uri.to_string(),
        token,
        authorized,
    });
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "{}",
        )
            .into_response();
    }
    let mut body = json!({
        "servers": source.servers.iter().map(|s| json!({"server": s})).collect::<Vec<_>>(),
        "metadata": {"count": source.servers.len()},
    });
    let pad = *lock(&source.pad_to);
    if pad > 0 {
        body["metadata"]["padding"] = json!("x".repeat(pad));
    }
    Json(body).into_response()
}

async fn token(
    State(source): State<Arc<Source>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let expected = format!("Basic {}", basic(CLIENT_ID, CLIENT_SECRET));
    let client_ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    let grant_ok = form
        .iter()
        .any(|(k, v)| k == "grant_type" && v == "client_credentials");
    lock(&source.token_requests).push((form, client_ok));
    if !client_ok || !grant_ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "who are you?"})),
        )
            .into_response();
    }
    let mut issued = lock(&source.issued);
    let token = format!("{ISSUED}{}-7c0d", issued.len() + 1);
    issued.push(token.clone());
    source.accept(&token);
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})).into_response()
}

/// HTTP Basic credentials (RFC 7617), encoded by the test itself.
fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn valid_examples() -> anyhow::Result<Vec<Value>> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/registry/server-json-examples/valid");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    paths
        .iter()
        .map(|p| Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?))
        .collect()
}

// ---------------------------------------------------------------- the importer

struct Env {
    nats: NatsServer,
    dir: TestDir,
}

impl Env {
    async fn start() -> anyhow::Result<Self> {
        let nats = within(START, "nats-server", NatsServer::start()).await??;
        let dir = TestDir::new("catalog-auth")?;
        Ok(Self { nats, dir })
    }

    /// `herald-catalog sync` with `args`, on this NATS, with health on a free port
    /// unless `args` name one (with `--interval` the default is 0.0.0.0:8083, which
    /// tests running side by side would share).
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(herald_binary("herald-catalog"));
        command
            .arg("sync")
            .args(["--source-id", "protected"])
            .args(args)
            .args(["--nats-url", &self.nats.url(), "--stream-max-age", "1h"])
            .env("RUST_LOG", "info");
        if !args.contains(&"--health-listen") {
            command.args(["--health-listen", &format!("127.0.0.1:{}", free_port())]);
        }
        command
    }

    /// One sync to completion: (success, log).
    async fn sync_once(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        self.sync_once_with(self.command(args)).await
    }

    async fn sync_once_with(&self, command: Command) -> anyhow::Result<(bool, String)> {
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let out = within(STEP, "herald-catalog sync", command.output()).await??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Events on the stream (each test has its own nats-server).
    async fn events(&self) -> anyhow::Result<u64> {
        let js = self.nats.jetstream().await;
        let mut stream = js.get_stream("HERALD_EVENTS").await?;
        Ok(stream.info().await?.state.messages)
    }

    fn write_secret(&self, name: &str, value: &str) -> anyhow::Result<String> {
        // Written beside and renamed: a reader never sees half a file.
        let path = self.dir.join(name);
        let partial = self.dir.join(&format!("{name}.partial"));
        std::fs::write(&partial, format!("{value}\n"))?;
        std::fs::rename(&partial, &path)?;
        Ok(path.to_string_lossy().into_owned())
    }
}

fn assert_no_secrets(log: &str) {
    for secret in [CLIENT_SECRET, TOKEN_A, TOKEN_B, ISSUED] {
        assert!(
            !log.contains(secret),
            "{secret:?} appears in the log:\n{log}"
        );
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_bearer_token_file_is_sent_and_read_again_when_it_rotates() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let (source, base) = Source::start(valid_examples()?).await?;
    source.accept(TOKEN_A);
    let token_file = env.write_secret("token", TOKEN_A)?;

    // Without the token the source refuses, and the sync fails naming the status.
    let (ok, log) = env.sync_once(&["--url", &base]).await?;
    assert!(!ok, "a sync without the token must fail:\n{log}");
    assert!(log.contains("HTTP 401"), "{log}");
    assert!(log.contains(&format!("{base}/v0.1/servers")), "{log}");

    let health = free_port();
    let mut sync = ChildProcess::spawn(
        "herald-catalog",
        env.command(&[
            "--url",
            &base,
            "--bearer-token-file",
            &token_file,
            "--interval",
            "100ms",
            "--health-listen",
            &format!("127.0.0.1:{health}"),
        ]),
        &env.dir.join("sync.log"),
    )?;
    eventually(STEP, "a sync with token A", || async {
        Ok((source.authorized_with(TOKEN_A) >= 1).then_some(()))
    })
    .await
    .map_err(|e| sync.explain(e))?;
    eventually(STEP, "three catalog events", || async {
        Ok((env.events().await? == 3).then_some(()))
    })
    .await
    .map_err(|e| sync.explain(e))?;

    // The token rotates: the source takes only B, the file says B.
    source.revoke_all();
    source.accept(TOKEN_B);
    env.write_secret("token", TOKEN_B)?;
    eventually(STEP, "syncs with token B", || async {
        Ok((source.authorized_with(TOKEN_B) >= 2).then_some(()))
    })
    .await
    .map_err(|e| sync.explain(e))?;
    sync.ensure_running()?;
    let status = sync.terminate();
    assert!(
        status.success(),
        "SIGTERM ends the loop cleanly: {status:?}"
    );
    assert_no_secrets(&sync.log_contents());
    Ok(())
}

#[tokio::test]
async fn oauth_client_credentials_fetch_one_token_and_renew_it_once_when_refused()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let (source, base) = Source::start(valid_examples()?).await?;
    let secret_file = env.write_secret("client-secret", CLIENT_SECRET)?;
    let token_url = format!("{base}/token");
    let oauth = [
        "--url",
        &base,
        "--oauth-token-url",
        &token_url,
        "--oauth-client-id",
        CLIENT_ID,
        "--oauth-client-secret-file",
        &secret_file,
        "--oauth-scope",
        "catalog:read",
        "--oauth-scope",
        "catalog:list",
        "--oauth-audience",
        "https://registry.example",
    ];

    // One sync: one token, the list read with it, three events.
    let (ok, log) = env.sync_once(&oauth).await?;
    ensure!(ok, "the sync failed:\n{log}");
    assert_eq!(source.issued().len(), 1);
    {
        let requests = lock(&source.token_requests);
        let (form, client_ok) = &requests[0];
        assert!(client_ok, "client authenticated with HTTP Basic");
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(field("grant_type"), Some("client_credentials"));
        assert_eq!(field("scope"), Some("catalog:read catalog:list"));
        assert_eq!(field("audience"), Some("https://registry.example"));
        assert_eq!(field("client_secret"), None);
    }
    assert_eq!(source.authorized_with(&source.issued()[0]), 1);
    assert_eq!(env.events().await?, 3);
    assert_no_secrets(&log);

    // Syncs every 100 ms reuse the token while it is fresh.
    let mut sync = ChildProcess::spawn(
        "herald-catalog",
        env.command(&[&oauth[..], &["--interval", "100ms"]].concat()),
        &env.dir.join("sync.log"),
    )?;
    eventually(STEP, "three syncs", || async {
        Ok((source.lists().len() >= 4).then_some(()))
    })
    .await
    .map_err(|e| sync.explain(e))?;
    let first = source.issued()[1].clone();
    assert_eq!(source.issued().len(), 2, "one token per process");

    // The source forgets every token: the importer gets a new one, once.
    source.revoke_all();
    eventually(STEP, "syncs with a renewed token", || async {
        let issued = source.issued();
        Ok((issued.len() == 3 && source.authorized_with(&issued[2]) >= 3).then_some(()))
    })
    .await
    .map_err(|e| sync.explain(e))?;
    assert_eq!(source.issued().len(), 3, "renewed once, then reused");
    assert!(
        source
            .lists()
            .iter()
            .any(|r| !r.authorized && r.token.as_deref() == Some(first.as_str())),
        "the revoked token was refused first"
    );
    sync.ensure_running()?;
    let status = sync.terminate();
    assert!(status.success(), "{status:?}");
    assert_no_secrets(&sync.log_contents());
    Ok(())
}

#[tokio::test]
async fn refused_credentials_fail_the_sync_without_a_loop_or_a_leak() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let (source, base) = Source::start(valid_examples()?).await?;
    let token_url = format!("{base}/token");
    let oauth = |secret_file: &str| {
        env.command(&[
            "--url",
            &base,
            "--oauth-token-url",
            &token_url,
            "--oauth-client-id",
            CLIENT_ID,
            "--oauth-client-secret-file",
            secret_file,
        ])
    };

    // The source refuses every token: one renewal, then the sync fails.
    source.refuse_all.store(true, Ordering::SeqCst);
    let secret_file = env.write_secret("client-secret", CLIENT_SECRET)?;
    let (ok, log) = env.sync_once_with(oauth(&secret_file)).await?;
    assert!(!ok, "{log}");
    assert_eq!(source.issued().len(), 2, "the first token and one renewal");
    assert_eq!(source.lists().len(), 2);
    assert!(log.contains("HTTP 401"), "{log}");
    assert_no_secrets(&log);
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "the fatal error is logged once:\n{log}"
    );

    // A wrong client secret: the token endpoint's refusal, with its error code.
    let wrong = env.write_secret("wrong-secret", "not-the-client-secret-77")?;
    let (ok, log) = env.sync_once_with(oauth(&wrong)).await?;
    assert!(!ok, "{log}");
    assert!(log.contains("invalid_client"), "{log}");
    assert!(log.contains(&token_url), "{log}");
    assert!(!log.contains("not-the-client-secret-77"), "{log}");
    assert!(
        !log.contains("who are you"),
        "free text is not echoed:\n{log}"
    );
    assert_eq!(env.events().await.unwrap_or(0), 0, "nothing published");
    Ok(())
}

#[tokio::test]
async fn a_page_over_the_body_cap_fails_the_sync() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let (source, base) = Source::start(valid_examples()?).await?;
    source.accept(TOKEN_A);
    let token_file = env.write_secret("token", TOKEN_A)?;
    *lock(&source.pad_to) = 64 * 1024;
    let args = ["--url", &base, "--bearer-token-file", &token_file];
    let (ok, log) = env
        .sync_once(&[&args[..], &["--max-body-size", "32KiB"]].concat())
        .await?;
    assert!(!ok, "{log}");
    assert!(log.contains("larger than 32768 bytes"), "{log}");
    assert_eq!(env.events().await.unwrap_or(0), 0, "nothing published");
    // The default cap (16 MiB) takes it.
    let (ok, log) = env.sync_once(&args).await?;
    ensure!(ok, "{log}");
    assert_eq!(env.events().await?, 3);
    Ok(())
}

#[tokio::test]
async fn http_proxy_from_the_environment_carries_the_requests() -> anyhow::Result<()> {
    let env = Env::start().await?;
    // The source's server doubles as a forward proxy: it answers the absolute-form
    // requests a client sends to a proxy by their path.
    let (source, proxy) = Source::start(valid_examples()?).await?;
    source.accept(TOKEN_A);
    let token_file = env.write_secret("token", TOKEN_A)?;
    let mut command = env.command(&[
        "--url",
        "http://catalog.herald-test.invalid",
        "--bearer-token-file",
        &token_file,
    ]);
    command
        .env("HTTP_PROXY", &proxy)
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let (ok, log) = env.sync_once_with(command).await?;
    ensure!(ok, "the sync failed:\n{log}");
    let targets: Vec<String> = source.lists().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["http://catalog.herald-test.invalid/v0.1/servers?limit=100"]
    );
    assert_eq!(env.events().await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_file_makes_a_private_https_source_trusted() -> anyhow::Result<()> {
    // kube-apiserver serves HTTPS with a certificate of its own CA: refused by the
    // platform's trust store, accepted with that CA in --ca-file. Then the source
    // answers with an HTTP error (it is no registry), which names the status.
    let kube = within(
        START,
        "kube-apiserver",
        herald_integration_tests::kube::KubeApi::start(),
    )
    .await??;
    let env = Env::start().await?;
    let url = format!("{}/v0.1/servers", kube.url());
    let (ok, log) = env.sync_once(&["--url", &url]).await?;
    assert!(!ok, "{log}");
    assert!(
        log.contains("certificate"),
        "untrusted without the CA:\n{log}"
    );

    let ca = kube.dir().join("certs/apiserver.crt");
    let (ok, log) = env
        .sync_once(&["--url", &url, "--ca-file", &ca.to_string_lossy()])
        .await?;
    assert!(!ok, "{log}");
    assert!(!log.contains("certificate"), "trusted with the CA:\n{log}");
    assert!(log.contains(&format!("GET {url}: HTTP 4")), "{log}");
    Ok(())
}

/// A source that accepts connections and never answers; resolves `accepted`
/// at the first connection.
async fn silent_source() -> anyhow::Result<(String, tokio::sync::oneshot::Receiver<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }
    });
    Ok((base, rx))
}

#[tokio::test]
async fn sigterm_stops_a_sync_that_waits_for_its_source() -> anyhow::Result<()> {
    let env = Env::start().await?;
    for interval in [true, false] {
        let (base, accepted) = silent_source().await?;
        let mut args = vec!["--url", base.as_str(), "--request-timeout", "10m"];
        if interval {
            args.extend(["--interval", "1h"]);
        }
        let mut sync = ChildProcess::spawn(
            "herald-catalog",
            env.command(&args),
            &env.dir.join(&format!("sync-{interval}.log")),
        )?;
        within(STEP, "the first request", accepted)
            .await
            .and_then(|received| Ok(received?))
            .map_err(|e| sync.explain(e))?;
        sync.signal(nix::sys::signal::Signal::SIGTERM);
        // Nothing was published: the request in flight is abandoned at once.
        let status = sync.wait_exit(Duration::from_secs(5))?;
        let log = sync.log_contents();
        if interval {
            assert!(
                status.success(),
                "a looping sync stops cleanly: {status:?}\n{log}"
            );
        } else {
            assert_eq!(
                status.code(),
                Some(1),
                "a single sync did not finish:\n{log}"
            );
            assert!(log.contains("stopped by shutdown"), "{log}");
        }
    }
    assert_eq!(env.events().await?, 0);
    Ok(())
}

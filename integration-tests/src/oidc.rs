//! A real OpenID Provider on loopback: `integration-tests/oidc/server.mjs` (the npm package
//! `oidc-provider`, installed by `scripts/test-deps`) run with the machine's Node.js. It
//! serves OIDC discovery and a JWKS, and issues RS256 JWT access tokens by the
//! `client_credentials` grant, with per-client claims and `aud` = the `resource` asked for.
//!
//! [`OidcProvider::start_with`] can also serve https with a certificate of a private CA
//! ([`TestCa`], made by the machine's `openssl`) and require a bearer token for discovery
//! and the JWKS, as a Kubernetes API server's service-account issuer does.
//!
//! The provider picks its own port (`--port 0`) and prints `READY <issuer>` once listening;
//! [`OidcProvider::start`] reads the issuer from its log. The process is a
//! [`ChildProcess`]: killed when dropped, and when the test process dies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::dir::TestDir;
use crate::process::ChildProcess;
use crate::timeout::{eventually, within};
use crate::tools::{Tools, workspace_root};

/// Node's start and the provider's import and key generation take ~1.5 s on an idle machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts of the provider before giving up (see [`OidcProvider::start_with`]).
const READY_ATTEMPTS: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One client of the provider: its id, secret and the extra claims of its tokens.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: String,
    pub claims: Value,
    /// Lifetime of its access tokens in seconds (the provider's default when None).
    pub ttl: Option<u64>,
}

impl Client {
    pub fn new(id: &str, claims: Value) -> Self {
        Self {
            id: id.to_owned(),
            secret: format!("secret-{id}"),
            claims,
            ttl: None,
        }
    }

    pub fn ttl(mut self, seconds: u64) -> Self {
        self.ttl = Some(seconds);
        self
    }
}

/// `application/x-www-form-urlencoded` of a client id or secret.
fn form_encoded(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A private CA and a serving certificate it signed for `127.0.0.1` and `localhost`
/// (PEM files in a test folder), made with the machine's `openssl`.
#[derive(Debug)]
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TestDir,
}

impl TestCa {
    pub fn new() -> anyhow::Result<Self> {
        let dir = TestDir::new("ca")?;
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .context("running openssl")?;
            ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=herald test CA",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        )?;
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
             extendedKeyUsage=serverAuth\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ])?;
        Ok(Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            _dir: dir,
        })
    }
}

/// How a provider is served beyond the defaults.
#[derive(Debug, Default)]
pub struct ProviderOptions<'a> {
    /// https with this CA's serving certificate.
    pub tls: Option<&'a TestCa>,
    /// Discovery and the JWKS need `Authorization: Bearer <this file's content>`.
    pub metadata_token_file: Option<&'a Path>,
    /// Listen on this port (a provider that is started after herald-api was told its
    /// issuer); any free one when None.
    pub port: Option<u16>,
}

/// A running provider.
#[derive(Debug)]
pub struct OidcProvider {
    issuer: String,
    process: ChildProcess,
    http: reqwest::Client,
    _dir: TestDir,
}

impl OidcProvider {
    /// Starts the provider with `clients` and waits until it serves.
    pub async fn start(clients: &[Client]) -> anyhow::Result<Self> {
        Self::start_with(clients, ProviderOptions::default()).await
    }

    /// [`OidcProvider::start`], served as `options` say.
    pub async fn start_with(
        clients: &[Client],
        options: ProviderOptions<'_>,
    ) -> anyhow::Result<Self> {
        let modules = Tools::locate()?.oidc_provider_modules()?;
        let dir = TestDir::new("oidc")?;
        // Node finds packages next to the script: a copy of the script beside a link to
        // the installed node_modules.
        let source = workspace_root().join("integration-tests/oidc");
        for file in ["server.mjs", "package.json"] {
            std::fs::copy(source.join(file), dir.join(file))
                .with_context(|| format!("copying {file}"))?;
        }
        std::os::unix::fs::symlink(&modules, dir.join("node_modules"))?;
        let config = serde_json::json!({
            "clients": clients.iter().map(|c| {
                let mut client = serde_json::json!({
                    "client_id": c.id,
                    "client_secret": c.secret,
                    "claims": c.claims,
                });
                if let Some(ttl) = c.ttl {
                    client["access_token_ttl"] = ttl.into();
                }
                client
            }).collect::<Vec<_>>(),
            "scopes": ["herald:read"],
        });
        std::fs::write(dir.join("clients.json"), config.to_string())?;
        let mut command = Command::new("node");
        let port = options.port.unwrap_or(0).to_string();
        command.current_dir(dir.path()).args([
            "server.mjs",
            "--config",
            "clients.json",
            "--port",
            port.as_str(),
        ]);
        if let Some(ca) = options.tls {
            command
                .arg("--tls-cert")
                .arg(&ca.cert)
                .arg("--tls-key")
                .arg(&ca.key);
        }
        if let Some(file) = options.metadata_token_file {
            command.arg("--metadata-token-file").arg(file);
        }
        // A provider that has not printed READY in time is started again: in full test
        // runs on 2 loaded cores, one Node process in a few hundred printed its import
        // warning and then never listened (cause not found; the log of each attempt is
        // kept in the test folder).
        let mut attempt = 0;
        let (process, issuer) = loop {
            attempt += 1;
            let mut process = ChildProcess::spawn(
                "oidc-provider",
                command_for(&command),
                &dir.join("oidc.log"),
            )?;
            let ready = eventually(READY_TIMEOUT, "the OpenID provider's READY line", || {
                let log = process.log_contents();
                async move {
                    Ok(log
                        .lines()
                        .find_map(|l| l.strip_prefix("READY "))
                        .map(|issuer| issuer.trim().to_owned()))
                }
            })
            .await;
            match ready {
                Ok(issuer) => break (process, issuer),
                Err(err) if attempt < READY_ATTEMPTS => {
                    eprintln!("oidc-provider attempt {attempt}: {err:#}; starting it again");
                    let _ = process.kill();
                }
                Err(err) => {
                    return Err(err.context(format!(
                        "after {attempt} attempts; last log lines:\n{}",
                        process.log_tail(20)
                    )));
                }
            }
        };
        let mut http = reqwest::Client::builder();
        if let Some(ca) = options.tls {
            let pem = std::fs::read(&ca.ca)?;
            http = http.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        Ok(Self {
            issuer,
            process,
            http: http.build()?,
            _dir: dir,
        })
    }

    /// The issuer (`http://127.0.0.1:<port>`, or https), as its tokens name it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// An access token for `client` meant for `resource` (its `aud`).
    pub async fn token(&self, client: &Client, resource: &str) -> anyhow::Result<String> {
        let response = within(
            REQUEST_TIMEOUT,
            "a token from the OpenID provider",
            self.http
                .post(format!("{}/token", self.issuer))
                // RFC 6749 §2.3.1: the id and secret are form-encoded first, so an id
                // with colons (`system:serviceaccount:…`) survives Basic's `id:secret`.
                .basic_auth(form_encoded(&client.id), Some(form_encoded(&client.secret)))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("resource", resource),
                    ("scope", "herald:read"),
                ])
                .send(),
        )
        .await??;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status.is_success(), "token endpoint: {status} {body}");
        match body["access_token"].as_str() {
            Some(token) if token.split('.').count() == 3 => Ok(token.to_owned()),
            Some(_) => bail!("the provider issued an opaque token, not a JWT"),
            None => bail!("no access_token in {body}"),
        }
    }

    /// A JWT of exactly `claims`, minted by the test with the provider's signing key:
    /// `header` overrides `alg` (`HS256`: signed with the public key as an HMAC secret;
    /// `none`: unsigned), `kid` or `typ`.
    pub async fn sign(&self, header: Value, claims: Value) -> anyhow::Result<String> {
        let response = within(
            REQUEST_TIMEOUT,
            "a token minted by the test",
            self.http
                .post(format!("{}/__admin/sign", self.issuer))
                .json(&serde_json::json!({"header": header, "claims": claims}))
                .send(),
        )
        .await??;
        let status = response.status();
        let body = response.text().await?;
        ensure!(status.is_success(), "sign: {status} {body}");
        Ok(body)
    }

    /// How many times the JWKS was requested so far.
    pub async fn jwks_requests(&self) -> anyhow::Result<u64> {
        let response = within(
            REQUEST_TIMEOUT,
            "the provider's counters",
            self.http
                .get(format!("{}/__admin/stats", self.issuer))
                .send(),
        )
        .await??;
        let body: Value = response.json().await?;
        body["jwks"].as_u64().context("no jwks count")
    }

    /// Replaces the signing key with a fresh one (`retain`: the old one stays published).
    pub async fn rotate(&self, retain: bool) -> anyhow::Result<Value> {
        let url = format!(
            "{}/__admin/rotate{}",
            self.issuer,
            if retain { "?retain=1" } else { "" }
        );
        let response = within(
            REQUEST_TIMEOUT,
            "a key rotation",
            self.http.post(url).send(),
        )
        .await??;
        ensure!(
            response.status().is_success(),
            "rotate: {}",
            response.status()
        );
        Ok(response.json().await?)
    }
}

/// A loopback port that was free a moment ago (for a server started later).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A copy of `command` (a `Command` is spent by spawning it).
fn command_for(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        copy.current_dir(dir);
    }
    copy
}

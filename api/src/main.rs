//! herald-api: parses flags and runs the API (see the library for the parts).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::{CommandFactory as _, Parser};
use herald_api::app::SseSettings;
use herald_api::auth::{AuthMode, Authenticator, OAuth};
use herald_api::auth_config::AuthConfig;
use herald_api::client::TrustedProxies;
use herald_api::connection::ConnectionSettings;
use herald_api::oidc::{Provider, ProviderSettings};
use herald_api::policy::ReadPolicies;
use herald_api::server::{self, Settings};
use herald_api::view::Bounds;
use herald_core::RegistryName;
use herald_runtime::logging::LogArgs;
use herald_runtime::nats::NatsArgs;
use ipnet::IpNet;

/// Serves every Herald registry bucket read-only over the official MCP
/// Registry API (`/v0.1/servers`, …), a live SSE feed
/// (`/v0.1/x/dev.herald/events`) and a registry page at `/`; each registry
/// under `/registry/<registry>/`, the default one also at the root. Probes
/// (`/healthz`, `/readyz`) on the public listener; `/metrics` too unless
/// `--health-listen` gives metrics and probes a listener of their own (what
/// the Helm chart and the manifests do, so an Ingress never exposes metrics).
#[derive(Debug, Parser)]
#[command(name = "herald-api", version)]
struct Cli {
    /// Address of the public HTTP listener: the API, the feed, the page, the
    /// probes `/healthz`, `/readyz` (and `/metrics` without `--health-listen`).
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Address of a listener of its own for `/metrics`, `/healthz` and
    /// `/readyz` (e.g. 0.0.0.0:8084); `/metrics` then leaves the public
    /// listener, so an Ingress on the API never exposes it, and probes never
    /// wait behind the public connection caps.
    #[arg(long, env = "HERALD_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,

    /// The registry served at the root paths (`/v0.1/…`, `/`).
    #[arg(long, env = "HERALD_DEFAULT_REGISTRY", default_value = "default")]
    default_registry: RegistryName,

    /// An origin allowed to call the API from a browser (CORS); repeat for
    /// several, or give a comma-separated list. None by default.
    #[arg(long = "cors-origin", env = "HERALD_CORS_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    cors_origins: Vec<HeaderValue>,

    /// Interval between SSE keep-alive comments (e.g. `15s`, `500ms`).
    #[arg(long, env = "HERALD_SSE_KEEPALIVE", default_value = "15s", value_parser = herald_runtime::duration::positive)]
    sse_keepalive: Duration,

    /// Most SSE subscribers served at once; more are answered with 503.
    #[arg(long, env = "HERALD_MAX_SSE_SUBSCRIBERS", default_value_t = 1000)]
    max_sse_subscribers: usize,

    /// Most SSE subscribers one client (an IPv4 address, an IPv6 /64) holds
    /// at once; more are answered with 429.
    #[arg(long, env = "HERALD_MAX_SSE_SUBSCRIBERS_PER_CLIENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    max_sse_subscribers_per_client: u32,

    /// Change batches a subscriber may fall behind before its backlog is
    /// dropped and it gets a snapshot instead (bounds memory per registry).
    #[arg(long, env = "HERALD_SSE_BUFFER", default_value_t = 1024)]
    sse_buffer: usize,

    /// Change batches kept per registry for `Last-Event-ID` resumes; older
    /// resume points get a snapshot.
    #[arg(long, env = "HERALD_SSE_HISTORY", default_value_t = 10000)]
    sse_history: usize,

    /// About the memory those change batches may hold per registry (for
    /// example `16MiB`); the oldest go first, so a registry of large entries
    /// keeps fewer resume points rather than more memory.
    #[arg(long, env = "HERALD_SSE_HISTORY_BYTES", default_value = "16MiB", value_parser = herald_runtime::byte_size::positive)]
    sse_history_bytes: u64,

    /// How long a withdrawn server version is served as `deleted` to clients
    /// that ask for deleted entries (`include_deleted`, `updated_since`);
    /// the default is the stream's default replay window (`--stream-max-age`).
    /// A client that syncs less often than this must list everything again.
    #[arg(long, env = "HERALD_DELETED_RETENTION", default_value = "7d", value_parser = herald_runtime::duration::positive)]
    deleted_retention: Duration,

    /// Most open connections; more are closed as soon as accepted.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// Most open connections from one client address (an IPv4 address, an
    /// IPv6 /64); more are closed as soon as accepted. Trusted proxies are
    /// held only to --max-connections.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_client: u32,

    /// Time a client has to send a complete request head, from when its
    /// connection opens or its previous response ends (so also how long an
    /// unused kept-alive connection stays open).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = herald_runtime::duration::positive)]
    header_read_timeout: Duration,

    /// A connection on which no byte moves either way for this long is
    /// closed: a client that stopped reading its response or SSE stream
    /// (which frees its slot). Must be longer than --sse-keepalive.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "60s", value_parser = herald_runtime::duration::positive)]
    idle_timeout: Duration,

    /// Largest request head (request line and headers) in bytes; a larger
    /// one is answered 431.
    #[arg(long, env = "HERALD_MAX_HEADER_SIZE", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    max_header_size: u32,

    /// Networks of reverse proxies whose X-Forwarded-For names the client
    /// for the per-client SSE share (e.g. `10.0.0.0/8`); comma-separated or
    /// repeated. None by default: the peer address is the client.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = herald_api::client::parse_network)]
    trusted_proxies: Vec<IpNet>,

    /// Serve the buckets `<prefix><registry>` instead of the live
    /// `herald-<registry>`: e.g. `herald_replay_` to browse the past that
    /// `herald-projector replay --until … --keep` wrote into scratch buckets.
    #[arg(long, env = "HERALD_BUCKET_PREFIX", default_value = herald_core::names::BUCKET_PREFIX, value_parser = parse_bucket_prefix)]
    bucket_prefix: String,

    /// How often to list buckets to find new registries (new streams are
    /// also noticed at once through JetStream advisories when permitted).
    #[arg(long, env = "HERALD_DISCOVERY_INTERVAL", default_value = "10s", value_parser = herald_runtime::duration::positive)]
    discovery_interval: Duration,

    /// Serve URLs whose host is loopback or `localhost` (a registry on one
    /// machine; never a shared one). Every other rule of the shared
    /// validation applies to every value read from a bucket.
    #[arg(long, env = "HERALD_ALLOW_LOOPBACK_URLS")]
    allow_loopback_urls: bool,

    /// `oauth`: every data route (list, get, versions, the feed) needs a
    /// bearer token from an --oidc-issuer; `anonymous`: no authentication,
    /// and only entries without authz claims are served.
    #[arg(long, env = "HERALD_AUTH_MODE", value_enum, default_value = "oauth")]
    auth_mode: AuthMode,

    /// An OpenID provider whose tokens are accepted (its `iss`; keys found
    /// by OIDC discovery). Repeat, or comma-separate, for several. https,
    /// or http on loopback.
    #[arg(
        long = "oidc-issuer",
        env = "HERALD_OIDC_ISSUER",
        value_delimiter = ','
    )]
    oidc_issuers: Vec<String>,

    /// The audience a token must carry (`aud`): this API's resource URL.
    #[arg(long, env = "HERALD_OIDC_AUDIENCE")]
    oidc_audience: Option<String>,

    /// Fetch the keys here instead of discovering them (only with one
    /// issuer; a Kubernetes API server: https://kubernetes.default.svc/openid/v1/jwks).
    #[arg(long, env = "HERALD_OIDC_JWKS_URL")]
    oidc_jwks_url: Option<herald_runtime::http::Url>,

    /// A file holding a bearer token for the discovery and JWKS requests
    /// (a Kubernetes service-account token), read again at every fetch.
    #[arg(long, env = "HERALD_OIDC_FETCH_TOKEN_FILE")]
    oidc_fetch_token_file: Option<PathBuf>,

    /// A PEM file of CAs trusted for the providers' TLS, beside the system's.
    #[arg(long, env = "HERALD_OIDC_CA_FILE")]
    oidc_ca_file: Option<PathBuf>,

    /// Clock difference allowed for a token's `exp` and `nbf`.
    #[arg(long, env = "HERALD_OIDC_CLOCK_SKEW", default_value = "30s", value_parser = herald_runtime::duration::any)]
    oidc_clock_skew: Duration,

    /// Least time between two key fetches caused by tokens naming an
    /// unknown key id (a key rotation is picked up after at most this).
    #[arg(long, env = "HERALD_OIDC_KEYS_MIN_REFRESH", default_value = "30s", value_parser = herald_runtime::duration::positive)]
    oidc_keys_min_refresh: Duration,

    /// This API's resource identifier (RFC 9728), named in 401 answers and
    /// the metadata document. Defaults to --oidc-audience.
    #[arg(long, env = "HERALD_RESOURCE_URL")]
    resource_url: Option<herald_runtime::http::Url>,

    /// Hide entries without authz claims from token callers too (default
    /// deny, as ToolHive); by default they are visible to every caller. A
    /// registry's policy in --auth-config may say otherwise.
    #[arg(long, env = "HERALD_HIDE_UNCLAIMED_ENTRIES")]
    hide_unclaimed_entries: bool,

    /// A YAML (or JSON) file of OpenID providers, each with its own
    /// audience, JWKS URL, fetch-token file and CA (beside the --oidc-*
    /// flags' provider), and of per-registry read policies: the claims a
    /// token needs to read a registry, and whether entries without claims
    /// are visible there (docs/authentication.md).
    #[arg(long, env = "HERALD_AUTH_CONFIG")]
    auth_config: Option<PathBuf>,

    #[command(flatten)]
    nats: NatsArgs,

    #[command(flatten)]
    log: LogArgs,
}

/// The HTTP client of a provider's discovery and JWKS fetches; `ca`: extra
/// PEM CAs for its TLS.
fn provider_http(ca: Option<&Path>) -> Result<herald_runtime::http::HttpClient, String> {
    let mut http = herald_runtime::http::HttpClient::builder(concat!(
        "herald-api/",
        env!("CARGO_PKG_VERSION")
    ))
    .request_timeout(Duration::from_secs(10))
    .max_body_size(1024 * 1024);
    if let Some(ca) = ca {
        http = http.ca_file(ca);
    }
    http.build().map_err(|e| e.to_string())
}

fn parse_origin(raw: &str) -> Result<HeaderValue, String> {
    let url = url_like(raw)
        .ok_or_else(|| format!("{raw:?} is not an origin like https://example.com"))?;
    HeaderValue::from_str(url).map_err(|e| e.to_string())
}

fn url_like(raw: &str) -> Option<&str> {
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))?;
    (!rest.is_empty() && !rest.contains('/')).then_some(raw)
}

impl Cli {
    /// The authenticator of --auth-mode and the --auth-config file's
    /// providers, or why they do not make one.
    fn authenticator(&self, config: &AuthConfig) -> Result<Authenticator, String> {
        if self.auth_mode == AuthMode::Anonymous {
            if !config.providers.is_empty() {
                return Err(
                    "--auth-config lists providers, but --auth-mode anonymous takes no tokens"
                        .to_owned(),
                );
            }
            return Ok(Authenticator::Anonymous);
        }
        if self.oidc_issuers.is_empty() && config.providers.is_empty() {
            return Err(
                "--auth-mode oauth (the default) needs --oidc-issuer and --oidc-audience \
                 (HERALD_OIDC_ISSUER, HERALD_OIDC_AUDIENCE), or providers in --auth-config; \
                 to serve without authentication, pass --auth-mode anonymous"
                    .to_owned(),
            );
        }
        if !self.oidc_issuers.is_empty() && self.oidc_audience.is_none() {
            return Err("--oidc-issuer needs --oidc-audience (HERALD_OIDC_AUDIENCE)".to_owned());
        }
        if self.oidc_issuers.len() > 1
            && (self.oidc_jwks_url.is_some() || self.oidc_fetch_token_file.is_some())
        {
            return Err(
                "--oidc-jwks-url and --oidc-fetch-token-file apply to a single --oidc-issuer; \
                 list several providers in --auth-config"
                    .to_owned(),
            );
        }
        // RFC 9728's resource: said, or the (first) audience when it is a URL.
        let audience = self
            .oidc_audience
            .as_deref()
            .or(config.providers.first().map(|p| p.audience.as_str()));
        let resource = match (&self.resource_url, audience) {
            (Some(url), _) => url.clone(),
            (None, Some(audience)) => herald_runtime::http::Url::parse(audience).map_err(|_| {
                "the audience is not a URL: give this API's URL with --resource-url".to_owned()
            })?,
            (None, None) => return Err("--resource-url is needed".to_owned()),
        };
        let flag_http = provider_http(self.oidc_ca_file.as_deref())?;
        let mut settings: Vec<(ProviderSettings, herald_runtime::http::HttpClient)> = Vec::new();
        for issuer in &self.oidc_issuers {
            herald_api::auth::check_issuer(issuer).map_err(|e| format!("--oidc-issuer {e}"))?;
            settings.push((
                ProviderSettings {
                    issuer: issuer.clone(),
                    audience: self.oidc_audience.clone().unwrap_or_default(),
                    jwks_url: self.oidc_jwks_url.clone(),
                    fetch_token_file: self.oidc_fetch_token_file.clone(),
                    clock_skew: self.oidc_clock_skew,
                    min_refresh: self.oidc_keys_min_refresh,
                },
                flag_http.clone(),
            ));
        }
        for provider in &config.providers {
            if settings.iter().any(|(s, _)| s.issuer == provider.issuer) {
                return Err(format!(
                    "issuer {:?} is both an --oidc-issuer and in --auth-config",
                    provider.issuer
                ));
            }
            let http = provider_http(provider.ca_file.as_deref())?;
            settings.push((
                ProviderSettings {
                    issuer: provider.issuer.clone(),
                    audience: provider.audience.clone(),
                    jwks_url: provider.jwks_url.clone(),
                    fetch_token_file: provider.fetch_token_file.clone(),
                    clock_skew: self.oidc_clock_skew,
                    min_refresh: self.oidc_keys_min_refresh,
                },
                http,
            ));
        }
        Ok(Authenticator::OAuth(OAuth {
            providers: settings
                .into_iter()
                .map(|(settings, http)| Provider::new(settings, http))
                .collect(),
            resource,
            realm: "herald".to_owned(),
            hide_unclaimed: self.hide_unclaimed_entries,
        }))
    }

    /// What clap cannot check flag by flag.
    fn check(&self) -> Result<(), clap::Error> {
        if self.idle_timeout <= self.sse_keepalive {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--idle-timeout ({:?}) must be longer than --sse-keepalive ({:?}), \
                     or SSE streams would be closed between keep-alives",
                    self.idle_timeout, self.sse_keepalive
                ),
            ));
        }
        Ok(())
    }
}

/// A bucket prefix: what JetStream allows in a bucket name, never empty.
fn parse_bucket_prefix(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid
        .then(|| s.to_owned())
        .ok_or_else(|| format!("bucket prefix {s:?} must be 1-64 letters, digits, '-' and '_'"))
}

#[tokio::main]
async fn main() -> ExitCode {
    herald_runtime::tls::install_crypto_provider();
    let cli = Cli::parse();
    if let Err(err) = cli.check() {
        err.exit();
    }
    let config = match &cli.auth_config {
        Some(path) => AuthConfig::load(path).unwrap_or_else(|e| {
            Cli::command()
                .error(
                    clap::error::ErrorKind::InvalidValue,
                    format!("--auth-config: {e}"),
                )
                .exit()
        }),
        None => AuthConfig::default(),
    };
    let auth = match cli.authenticator(&config) {
        Ok(auth) => Arc::new(auth),
        Err(why) => Cli::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, why)
            .exit(),
    };
    cli.log.init();
    match run(cli, auth, Arc::new(config.policies)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    cli: Cli,
    auth: Arc<Authenticator>,
    read_policies: Arc<ReadPolicies>,
) -> anyhow::Result<()> {
    let shutdown = herald_runtime::shutdown::on_signal()?;
    let client = cli.nats.connect("herald-api", None).await?;
    let settings = Settings {
        listen: cli.listen,
        health_listen: cli.health_listen,
        default_registry: cli.default_registry,
        bucket_prefix: cli.bucket_prefix,
        cors_origins: cli.cors_origins,
        sse: SseSettings {
            keepalive: cli.sse_keepalive,
            max_subscribers: cli.max_sse_subscribers,
            max_subscribers_per_client: cli.max_sse_subscribers_per_client as usize,
            retry_after: cli.idle_timeout,
        },
        bounds: Bounds {
            history: cli.sse_history,
            history_bytes: usize::try_from(cli.sse_history_bytes).unwrap_or(usize::MAX),
            subscriber_buffer: cli.sse_buffer,
            deleted_retention: cli.deleted_retention,
        },
        discovery_interval: cli.discovery_interval,
        urls: herald_core::validate::UrlRules {
            allow_loopback: cli.allow_loopback_urls,
        },
        nats_unauthenticated: cli.nats.unauthenticated_remote().is_some(),
        connection: ConnectionSettings {
            header_read_timeout: cli.header_read_timeout,
            idle_timeout: cli.idle_timeout,
            max_header_size: cli.max_header_size as usize,
        },
        max_connections: cli.max_connections as usize,
        max_connections_per_client: cli.max_connections_per_client as usize,
        trusted_proxies: TrustedProxies::new(cli.trusted_proxies),
        auth,
        read_policies,
    };
    server::run(settings, client, shutdown).await
}

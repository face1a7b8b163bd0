//! The command line of `herald-catalog`: flags (each with its `HERALD_…`
//! environment variable), their help, and what they become.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_catalog::auth::SourceAuth;
use herald_catalog::oauth::{ClientCredentials, ClientCredentialsConfig};
use herald_catalog::source::{Format, Location};
use herald_catalog::sync::SyncOptions;
use herald_core::RegistryName;
use herald_core::ids::SourceId;
use herald_runtime::http::{HttpClient, HttpClientBuilder, Url};
use herald_runtime::logging::LogArgs;
use herald_runtime::nats::NatsArgs;
use herald_runtime::stream::StreamArgs;

/// Where health and metrics are served when running with `--interval`.
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:8083";

const ABOUT: &str = "Imports MCP server catalogs into Herald's registries.";

const LONG_ABOUT: &str = "\
Imports MCP server catalogs into Herald's registries.

A catalog is a list of server.json entries kept outside Kubernetes: the official MCP
registry, another Herald's API, or a ToolHive registry.json in Git or a ConfigMap.
`herald-catalog sync` reads one and publishes, on the JetStream stream HERALD_EVENTS,
a dev.herald.catalog.applied event for every new or changed entry and a
dev.herald.catalog.withdrawn event for every entry the source no longer lists.
herald-projector folds them into the registry's bucket beside the deployments, and
herald-api merges deployed remotes into the catalog entries of the same name and
version.

Every flag can also be set with an environment variable: HERALD_ and the flag in
upper snake case (--source-id is HERALD_SOURCE_ID).";

const SYNC_ABOUT: &str = "Import one catalog source into a registry, once or every --interval.";

const SYNC_LONG_ABOUT: &str = "\
Import one catalog source into a registry, once or every --interval.

SOURCE
  --file PATH   a catalog document on disk, read whole at every sync.
  --url URL     a registry API (the official registry, another Herald, optionally
                …/registry/<name>): GET <url>/v0.1/servers, page by page (limit=100,
                following nextCursor). With --format toolhive, the URL of a
                registry.json document, read whole.

FORMATS (--format)
  official   {\"servers\":[{\"server\":{…server.json…},\"_meta\":{…}}],
              \"metadata\":{\"nextCursor\":…}}; the source's _meta is kept.
  toolhive   ToolHive's registry.json: `servers` (images, imported with an OCI package)
             and `remote_servers` (imported with their remotes and headers); short
             names get the --toolhive-namespace prefix.
  auto       (default) a document whose `servers` is an array is official, any other
             ToolHive; a --url without --format toolhive is read as official pages.

SCHEMA CHECK
  Every entry must have what the merge relies on (a valid name, a 1-100 character
  description, an exact version, usable remote URLs) and satisfy the server.json
  schema (2025-12-11, compiled into the binary). An entry that does not, or repeats a
  name and version already listed, is skipped with a log line `skipping catalog
  entry` (reason invalid, schema or duplicate) and counted in
  herald_catalog_skipped_total{reason}; the rest is imported.

SYNCS
  One sync compares each entry with what the registry bucket holds and publishes only
  new or changed entries; after a full listing it withdraws this source's entries that
  are gone. Against a --url with --interval, the syncs between full ones ask only for
  entries updated_since the previous sync (minus 60 s): cheap, but a listing of changes
  cannot show a deletion, so they withdraw nothing; every --full-sync-every-th sync
  lists everything and withdraws what vanished. Files are always read whole.
  A source that cannot be read publishes nothing: the catalog imported before stays
  served, and /readyz says why until a sync succeeds.

PROTECTED SOURCES, TLS AND PROXIES
  --bearer-token-file sends a token read from a file at every request (rotation
  needs no restart). --oauth-token-url with a client id and secret file gets tokens
  with the OAuth 2.0 client credentials grant, reuses them until shortly before they
  expire, and fetches a new one once when the source answers 401. Tokens and secrets
  are never logged. https:// is verified with the platform's trust store (plus
  --ca-file); HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are honoured; redirects
  are followed up to 5 times (never from https to http); a response body larger than
  --max-body-size fails the sync.

SHUTDOWN
  SIGTERM or SIGINT while the listing is being fetched stops at once (nothing has been
  published); once the listing is complete its events are published to the end.

EXIT STATUS
  0  one sync (no --interval) succeeded; or with --interval, stopped by a signal
  1  the one sync failed or was interrupted, or a fatal error (NATS, the stream, the
     health listener, an unreadable --ca-file); the reason is logged once
  2  invalid command line";

/// herald-catalog's command line.
#[derive(Debug, Parser)]
#[command(
    name = "herald-catalog",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten, next_help_heading = "NATS connection")]
    pub nats: NatsArgs,
    #[command(flatten, next_help_heading = "Event stream (created when missing)")]
    pub stream: StreamArgs,
    #[command(flatten, next_help_heading = "Logging")]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(about = SYNC_ABOUT, long_about = SYNC_LONG_ABOUT)]
    Sync(Box<SyncArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Identity of this source (a lowercase DNS label): its entries are kept
    /// apart from other sources' and only its own are ever withdrawn.
    #[arg(long, env = "HERALD_SOURCE_ID")]
    pub source_id: SourceId,
    /// The registry the entries are merged into.
    #[arg(long, env = "HERALD_REGISTRY", default_value = "default")]
    pub registry: RegistryName,
    /// A file holding this source's signing key (an nkey seed, `S…`;
    /// `herald-projector keygen` makes one). Every event is signed with it,
    /// so a hub that knows the public key accepts only this importer's
    /// events for this source.
    #[arg(long, env = "HERALD_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// A catalog file: an official list page or a ToolHive registry.json.
    #[arg(
        long,
        env = "HERALD_FILE",
        required_unless_present = "url",
        conflicts_with = "url"
    )]
    pub file: Option<PathBuf>,
    /// A registry API base URL, http:// or https:// (the official registry,
    /// or another Herald, optionally `…/registry/<name>`); every page of
    /// `/v0.1/servers` is read. With `--format toolhive`, the URL of a
    /// registry.json document.
    #[arg(long, env = "HERALD_URL", value_parser = http_url)]
    pub url: Option<Url>,
    /// The source's format: auto (decided by the document), official or toolhive.
    #[arg(long, env = "HERALD_FORMAT", default_value = "auto")]
    pub format: Format,
    /// Prefix of ToolHive's short server names (`fetch` → `<namespace>/fetch`).
    #[arg(
        long,
        env = "HERALD_TOOLHIVE_NAMESPACE",
        default_value = "io.github.stacklok"
    )]
    pub toolhive_namespace: String,
    /// Sync again after this long (`5m`, `1h`); without it, sync once and exit.
    #[arg(long, env = "HERALD_INTERVAL", value_parser = herald_runtime::duration::positive)]
    pub interval: Option<Duration>,
    /// With --interval and --url: every n-th sync lists the whole source and
    /// withdraws entries it no longer has; the ones between ask only for
    /// entries `updated_since` the previous sync. 1 = always full.
    #[arg(long, env = "HERALD_FULL_SYNC_EVERY", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub full_sync_every: u32,
    /// Address of /healthz, /readyz (not ready, with the reason, while the
    /// source cannot be read) and /metrics. Served by default on
    /// 0.0.0.0:8083 with --interval; a single sync serves it only when this
    /// flag is given.
    #[arg(long, env = "HERALD_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Largest response body accepted from the source or its token endpoint
    /// (`16MiB`, `512KiB`); a larger one fails the sync. Enforced while the
    /// body arrives.
    #[arg(long, env = "HERALD_MAX_BODY_SIZE", help_heading = "HTTP", default_value = "16MiB", value_parser = herald_runtime::byte_size::positive)]
    pub max_body_size: u64,
    /// Bound on connecting to the source (TCP and TLS).
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT", help_heading = "HTTP", default_value = "10s", value_parser = herald_runtime::duration::positive)]
    pub connect_timeout: Duration,
    /// Bound on one request to the source, body included.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT", help_heading = "HTTP", default_value = "30s", value_parser = herald_runtime::duration::positive)]
    pub request_timeout: Duration,
    /// A PEM file of CA certificates to trust for https:// sources (and the
    /// token endpoint) beside the platform's trust store: a private CA.
    #[arg(long, env = "HERALD_CA_FILE", help_heading = "HTTP")]
    pub ca_file: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Protected sources")]
    pub auth: AuthArgs,
}

/// Credentials for a protected source (with --url only). Each flag
/// conflicts with --file: clap waives a requirement of --url whenever an
/// argument that conflicts with it (--file) is present.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// A file holding a bearer token sent to the source
    /// (`Authorization: Bearer …`), read at every request.
    #[arg(
        long,
        env = "HERALD_BEARER_TOKEN_FILE",
        conflicts_with_all = ["file", "oauth_token_url"]
    )]
    pub bearer_token_file: Option<PathBuf>,
    /// OAuth 2.0 token endpoint: tokens for the source are got with the
    /// client credentials grant (client id and secret sent with HTTP Basic).
    #[arg(long, env = "HERALD_OAUTH_TOKEN_URL", value_parser = http_url, conflicts_with = "file", requires_all = ["oauth_client_id", "oauth_client_secret_file"])]
    pub oauth_token_url: Option<Url>,
    /// The OAuth client id.
    #[arg(
        long,
        env = "HERALD_OAUTH_CLIENT_ID",
        requires = "oauth_token_url",
        conflicts_with = "file"
    )]
    pub oauth_client_id: Option<String>,
    /// A file holding the OAuth client secret, read at every token request.
    #[arg(
        long,
        env = "HERALD_OAUTH_CLIENT_SECRET_FILE",
        requires = "oauth_token_url",
        conflicts_with = "file"
    )]
    pub oauth_client_secret_file: Option<PathBuf>,
    /// A scope to ask for; repeat the flag for more (environment:
    /// space-separated).
    #[arg(
        long = "oauth-scope",
        env = "HERALD_OAUTH_SCOPE",
        value_name = "SCOPE",
        value_delimiter = ' ',
        requires = "oauth_token_url",
        conflicts_with = "file"
    )]
    pub oauth_scopes: Vec<String>,
    /// The `audience` to ask for (Auth0, Keycloak and others read it).
    #[arg(
        long,
        env = "HERALD_OAUTH_AUDIENCE",
        requires = "oauth_token_url",
        conflicts_with = "file"
    )]
    pub oauth_audience: Option<String>,
}

fn http_url(s: &str) -> Result<Url, String> {
    match Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}

impl SyncArgs {
    /// The source; clap requires one of --file and --url.
    pub fn location(&self) -> Option<Location> {
        self.file
            .clone()
            .map(Location::File)
            .or_else(|| self.url.clone().map(Location::Url))
    }

    /// Where health and metrics are served, if anywhere.
    pub fn health_listen(&self) -> Option<SocketAddr> {
        self.health_listen.or_else(|| {
            self.interval
                .and_then(|_| DEFAULT_HEALTH_LISTEN.parse().ok())
        })
    }

    pub fn http(&self) -> HttpClientBuilder {
        let builder = HttpClient::builder(concat!("herald-catalog/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout)
            .request_timeout(self.request_timeout)
            .max_body_size(self.max_body_size);
        match &self.ca_file {
            Some(path) => builder.ca_file(path),
            None => builder,
        }
    }

    pub fn source_auth(&self, http: &HttpClient) -> SourceAuth {
        let auth = &self.auth;
        if let Some(path) = &auth.bearer_token_file {
            return SourceAuth::BearerFile(path.clone());
        }
        match (
            &auth.oauth_token_url,
            &auth.oauth_client_id,
            &auth.oauth_client_secret_file,
        ) {
            (Some(token_url), Some(client_id), Some(secret_file)) => {
                SourceAuth::ClientCredentials(Box::new(ClientCredentials::new(
                    ClientCredentialsConfig {
                        token_url: token_url.clone(),
                        client_id: client_id.clone(),
                        client_secret_file: secret_file.clone(),
                        scopes: auth
                            .oauth_scopes
                            .iter()
                            .filter(|s| !s.is_empty())
                            .cloned()
                            .collect(),
                        audience: auth.oauth_audience.clone(),
                    },
                    http.clone(),
                )))
            }
            _ => SourceAuth::None,
        }
    }

    pub fn options(&self) -> SyncOptions {
        SyncOptions {
            source_id: self.source_id.clone(),
            registry: self.registry.clone(),
            interval: self.interval,
            full_sync_every: self.full_sync_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use herald_runtime::http::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(
            ["herald-catalog", "sync", "--source-id", "s"]
                .iter()
                .chain(args),
        )
    }

    #[test]
    fn auth_flags_need_a_url_and_each_other() {
        assert!(parse(&["--url", "http://h", "--bearer-token-file", "/t"]).is_ok());
        assert!(parse(&["--file", "/c.json", "--bearer-token-file", "/t"]).is_err());
        assert!(parse(&["--url", "http://h", "--oauth-token-url", "http://i/token"]).is_err());
        let full = [
            "--url",
            "http://h",
            "--oauth-token-url",
            "http://i/token",
            "--oauth-client-id",
            "c",
            "--oauth-client-secret-file",
            "/s",
            "--oauth-scope",
            "a",
            "--oauth-scope",
            "b",
        ];
        let cli = parse(&full).unwrap();
        let Command::Sync(args) = cli.command;
        assert_eq!(args.auth.oauth_scopes, ["a", "b"]);
        let mut both = full.to_vec();
        both.extend(["--bearer-token-file", "/t"]);
        assert!(parse(&both).is_err());
        assert!(parse(&["--url", "http://h", "--oauth-client-id", "c"]).is_err());
        assert!(parse(&["--file", "/c.json", "--oauth-client-id", "c"]).is_err());
        assert!(parse(&["--file", "/c.json", "--oauth-scope", "a"]).is_err());
    }

    #[test]
    fn health_is_served_by_default_only_with_an_interval() {
        let Command::Sync(once) = parse(&["--file", "/c.json"]).unwrap().command;
        assert_eq!(once.health_listen(), None);
        let Command::Sync(looping) = parse(&["--file", "/c.json", "--interval", "5m"])
            .unwrap()
            .command;
        assert_eq!(
            looping.health_listen(),
            Some(DEFAULT_HEALTH_LISTEN.parse().unwrap())
        );
        assert_eq!(looping.max_body_size, 16 * 1024 * 1024);
        assert_eq!(looping.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(looping.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }
}

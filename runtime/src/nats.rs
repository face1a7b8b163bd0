//! Connecting to NATS with the flags every binary accepts: URL, one of the
//! auth methods (credentials file, nkey seed, user/password, token), TLS and
//! the inbox prefix. Secret flag values are never logged or shown in `--help`.
//!
//! A process that connects without credentials to a server that is not on
//! loopback says so loudly: a WARN at start and the gauge
//! `herald_nats_unauthenticated` = 1 (see [`NatsArgs::register_metrics`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What a stream without authentication allows, said at start by a process
/// that connects to one that is not on loopback.
pub const OPEN_STREAM_WARNING: &str = "NATS connection without authentication to a server that is not on loopback: anyone who can reach this server can publish events that rewrite the catalog (add, change, redirect or withdraw any server of any cluster) and read every bucket; give each Herald process its own NATS user (docs/operations.md, NATS permissions)";

/// The metric that is 1 while a process connects without authentication to
/// a server that is not on loopback.
pub const UNAUTHENTICATED_METRIC: &str = "herald_nats_unauthenticated";

/// The default inbox prefix is `_INBOX.<client name>[.<scope>]`.
const INBOX_ROOT: &str = "_INBOX";
/// How often a client pings its server; two unanswered pings end the connection.
const PING_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// NATS credentials file (JWT + nkey seed), as issued by nsc.
    #[arg(long, env = "HERALD_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// File holding an nkey seed (SU…) to authenticate with.
    #[arg(long, env = "HERALD_NATS_NKEY", global = true)]
    pub nats_nkey: Option<PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "HERALD_NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "HERALD_NATS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "HERALD_NATS_TOKEN", hide_env_values = true, global = true)]
    pub nats_token: Option<String>,
    /// CA certificate (PEM) to verify the NATS server with.
    #[arg(long, env = "HERALD_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "HERALD_NATS_TLS_CERT", global = true)]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, env = "HERALD_NATS_TLS_KEY", global = true)]
    pub nats_tls_key: Option<PathBuf>,
    /// Require TLS even when the URL does not say `tls://`.
    #[arg(long, env = "HERALD_NATS_TLS", global = true)]
    pub nats_tls: bool,
    /// Subject prefix of this process's reply inboxes (JetStream acks, API
    /// answers, consumer deliveries). Default `_INBOX.<binary>`, and for a
    /// watcher `_INBOX.herald-watcher.<cluster id>`, for a catalog import
    /// `_INBOX.herald-catalog.<source id>`: a NATS user may then subscribe to
    /// its own replies only (deploy/nats/permissions.conf).
    #[arg(long, env = "HERALD_NATS_INBOX_PREFIX", value_parser = inbox_prefix, global = true)]
    pub nats_inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("auth", &self.auth_method())
            .field("tls", &(self.nats_tls || self.nats_tls_ca.is_some()))
            .field("inbox_prefix", &self.nats_inbox_prefix)
            .finish()
    }
}

impl NatsArgs {
    /// Which auth method is configured, for logs (never the secret).
    pub fn auth_method(&self) -> &'static str {
        match (
            &self.nats_creds,
            &self.nats_nkey,
            &self.nats_user,
            &self.nats_token,
        ) {
            (Some(_), ..) => "credentials file",
            (None, Some(_), ..) => "nkey",
            (None, None, Some(_), _) => "user/password",
            (None, None, None, Some(_)) => "token",
            _ if self
                .servers()
                .is_ok_and(|s| s.iter().any(|s| s.has_user_pass())) =>
            {
                "user or token in the URL"
            }
            // The server may map the certificate to a user (`verify_and_map`).
            _ if self.nats_tls_cert.is_some() => "TLS client certificate",
            _ => "none",
        }
    }

    /// The first server URL that is not on loopback, when the process
    /// connects without any authentication; `None` when it authenticates or
    /// every server is on this machine.
    pub fn unauthenticated_remote(&self) -> Option<String> {
        if self.auth_method() != "none" {
            return None;
        }
        self.servers()
            .ok()?
            .into_iter()
            .find(|s| !is_loopback_host(s.host()))
            .map(|s| s.as_url_str().to_owned())
    }

    /// Registers [`UNAUTHENTICATED_METRIC`] in `registry`: 1 when this process
    /// connects without authentication to a server that is not on loopback.
    pub fn register_metrics(&self, registry: &mut Registry) {
        register_unauthenticated(registry, self.unauthenticated_remote().is_some());
    }

    /// The inbox prefix this process uses: the flag, or `_INBOX.<name>` with
    /// `.<scope>` appended when given.
    pub fn inbox_prefix(&self, name: &str, scope: Option<&str>) -> String {
        match (&self.nats_inbox_prefix, scope) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(scope)) => format!("{INBOX_ROOT}.{name}.{scope}"),
            (None, None) => format!("{INBOX_ROOT}.{name}"),
        }
    }

    /// async-nats takes a list of servers, not one comma-separated string.
    fn servers(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        self.nats_url
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--nats-url {:?} is not a list of NATS URLs", self.nats_url))
    }

    fn options(&self, name: &str, inbox: String) -> anyhow::Result<async_nats::ConnectOptions> {
        let methods = [
            self.nats_creds.is_some(),
            self.nats_nkey.is_some(),
            self.nats_user.is_some(),
            self.nats_token.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            bail!(
                "choose one NATS auth method: --nats-creds, --nats-nkey, --nats-user or --nats-token"
            );
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            bail!("--nats-user and --nats-password go together");
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            bail!("--nats-tls-cert and --nats-tls-key go together");
        }
        let base = match &self.nats_creds {
            Some(path) => {
                let creds = std::fs::read_to_string(path)
                    .with_context(|| format!("reading NATS credentials file {}", path.display()))?;
                async_nats::ConnectOptions::with_credentials(&creds)
                    .context("parsing the NATS credentials file")?
            }
            None => async_nats::ConnectOptions::new(),
        };
        let mut opts = base
            .name(name)
            .custom_inbox_prefix(inbox)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            // A server behind a silent partition is noticed after two unanswered
            // pings: ~20 s instead of async-nats' default of 60 s between pings.
            .ping_interval(PING_INTERVAL)
            // A permissions violation is a NATS user that lacks what this
            // process needs (or one that is doing what it must not): loud.
            .event_callback(|event| async move {
                if let async_nats::Event::ServerError(err) = event {
                    tracing::warn!("the NATS server reports an error: {err}");
                }
            });
        if let Some(path) = &self.nats_nkey {
            let seed = std::fs::read_to_string(path)
                .with_context(|| format!("reading nkey seed file {}", path.display()))?;
            opts = opts.nkey(seed.trim().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.nats_token {
            opts = opts.token(token.clone());
        }
        if let Some(ca) = &self.nats_tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if self.nats_tls {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }

    /// Connects in the background: returns at once even when NATS is down,
    /// and keeps reconnecting for as long as the process runs. `name` is the
    /// client name the server shows (the binary); `scope` narrows the default
    /// inbox prefix (a watcher's cluster id, an importer's source id).
    pub async fn connect(
        &self,
        name: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<async_nats::Client> {
        let inbox = self.inbox_prefix(name, scope);
        let opts = self.options(name, inbox.clone())?;
        let servers = self.servers()?;
        if let Some(url) = self.unauthenticated_remote() {
            tracing::warn!(url = %url, "{OPEN_STREAM_WARNING}");
        }
        tracing::info!(url = %self.nats_url, auth = self.auth_method(), inbox = %inbox, "connecting to NATS");
        opts.connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.nats_url))
    }
}

/// Registers [`UNAUTHENTICATED_METRIC`] with the value `unauthenticated`
/// (for a binary that decided it elsewhere; usually
/// [`NatsArgs::register_metrics`]).
pub fn register_unauthenticated(registry: &mut Registry, unauthenticated: bool) {
    let gauge = Gauge::<i64>::default();
    gauge.set(i64::from(unauthenticated));
    registry.register(
        UNAUTHENTICATED_METRIC,
        "1 when this process connects to NATS without authentication at a server that is not on loopback: anyone who reaches that server can publish events that rewrite the catalog and read every bucket",
        gauge,
    );
}

/// Whether a URL's host is this machine: `localhost` (and `*.localhost`),
/// 127.0.0.0/8 or ::1 (also as an IPv4-mapped address). Any other name
/// counts as remote: it is not resolved, and a warning too many is better
/// than one too few.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// A subject prefix for inboxes: tokens of letters, digits, `_` and `-`.
fn inbox_prefix(s: &str) -> Result<String, String> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if s.split('.').all(token_ok) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a subject prefix (dot-separated tokens of letters, digits, `_` and `-`)"
        ))
    }
}

/// Keeps the readiness `condition` in step with the NATS connection, also
/// when nothing is published, until `shutdown`.
pub async fn watch_connection(
    client: async_nats::Client,
    readiness: crate::health::Readiness,
    condition: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use async_nats::connection::State;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match client.connection_state() {
            State::Connected => readiness.set_ready(condition),
            state => readiness.set_not_ready(condition, format!("NATS connection is {state}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn args(flags: &[&str]) -> NatsArgs {
        Cli::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
            .expect("flags parse")
            .nats
    }

    fn metric_text(nats: &NatsArgs) -> String {
        let mut registry = Registry::default();
        nats.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn loopback_hosts_are_localhost_127_slash_8_and_ipv6_one() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "nats.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(host), "{host} is loopback");
        }
        for host in [
            "10.0.0.5",
            "192.168.1.1",
            "0.0.0.0",
            "128.0.0.1",
            "::",
            "fd00::2",
            "::ffff:10.0.0.1",
            "nats",
            "nats.herald.svc.cluster.local",
            "localhost.example.com",
            "mylocalhost",
        ] {
            assert!(!is_loopback_host(host), "{host} is not loopback");
        }
    }

    #[test]
    fn only_an_unauthenticated_connection_off_loopback_is_open() {
        let open = |flags: &[&str]| args(flags).unauthenticated_remote();
        // The default URL and explicit loopback URLs.
        assert_eq!(open(&[]), None);
        assert_eq!(open(&["--nats-url", "nats://localhost:4222"]), None);
        assert_eq!(
            open(&["--nats-url", "nats://[::1]:4222,127.0.0.2:4223"]),
            None
        );
        // Off loopback without credentials: open, whichever server is the remote one.
        assert_eq!(
            open(&["--nats-url", "nats://nats.herald.svc:4222"]).as_deref(),
            Some("nats://nats.herald.svc:4222")
        );
        assert!(open(&["--nats-url", "nats://127.0.0.1:4222, nats://10.1.2.3:4222"]).is_some());
        assert!(open(&["--nats-url", "tls://203.0.113.7:4222", "--nats-tls"]).is_some());
        // Any kind of credentials closes it.
        let remote = ["--nats-url", "nats://10.1.2.3:4222"];
        for auth in [
            &["--nats-creds", "/x.creds"][..],
            &["--nats-nkey", "/x.seed"],
            &["--nats-user", "u", "--nats-password", "p"],
            &["--nats-token", "t"],
            &["--nats-tls-cert", "/c.pem", "--nats-tls-key", "/k.pem"],
        ] {
            let flags: Vec<&str> = remote.iter().chain(auth).copied().collect();
            assert_eq!(open(&flags), None, "{auth:?} authenticates");
        }
        assert_eq!(open(&["--nats-url", "nats://u:p@10.1.2.3:4222"]), None);
        assert_eq!(open(&["--nats-url", "nats://s3cret@10.1.2.3:4222"]), None);
    }

    #[test]
    fn the_gauge_says_1_exactly_when_the_connection_is_open() {
        let open = metric_text(&args(&["--nats-url", "nats://10.1.2.3:4222"]));
        assert!(
            open.contains("# TYPE herald_nats_unauthenticated gauge"),
            "{open}"
        );
        assert!(open.contains("\nherald_nats_unauthenticated 1\n"), "{open}");
        for closed in [
            args(&[]),
            args(&["--nats-url", "nats://10.1.2.3:4222", "--nats-token", "t"]),
        ] {
            let text = metric_text(&closed);
            assert!(text.contains("\nherald_nats_unauthenticated 0\n"), "{text}");
        }
    }

    #[test]
    fn the_inbox_prefix_is_per_binary_and_scope_unless_set() {
        let nats = args(&[]);
        assert_eq!(nats.inbox_prefix("herald-api", None), "_INBOX.herald-api");
        assert_eq!(
            nats.inbox_prefix("herald-watcher", Some("cluster-a")),
            "_INBOX.herald-watcher.cluster-a"
        );
        let set = args(&["--nats-inbox-prefix", "_INBOX_a.b-c"]);
        assert_eq!(
            set.inbox_prefix("herald-watcher", Some("x")),
            "_INBOX_a.b-c"
        );
        for bad in ["", "_INBOX.", ".x", "_INBOX.>", "_INBOX.*", "a b", "a..b"] {
            assert!(
                Cli::try_parse_from(["test", "--nats-inbox-prefix", bad]).is_err(),
                "{bad:?} is refused"
            );
        }
    }
}

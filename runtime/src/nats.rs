//! Connecting to NATS with the flags every binary accepts: URL, one of the
//! auth methods (credentials file, nkey seed, user/password, token) and TLS.
//! Secret flag values are never logged or shown in `--help`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

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
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("auth", &self.auth_method())
            .field("tls", &(self.nats_tls || self.nats_tls_ca.is_some()))
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
            _ => "none",
        }
    }

    fn options(&self, name: &str) -> anyhow::Result<async_nats::ConnectOptions> {
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
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
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
    /// and keeps reconnecting for as long as the process runs.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let opts = self.options(name)?;
        tracing::info!(url = %self.nats_url, auth = self.auth_method(), "connecting to NATS");
        // async-nats takes a list of servers, not one comma-separated string.
        let servers = self
            .nats_url
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| {
                format!("--nats-url {:?} is not a list of NATS URLs", self.nats_url)
            })?;
        opts.connect(servers)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.nats_url))
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

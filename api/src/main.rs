//! herald-api: parses flags and runs the API (see the library for the parts).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::Parser;
use herald_api::app::SseSettings;
use herald_api::server::{self, Settings};
use herald_api::view::Bounds;
use herald_core::RegistryName;
use herald_runtime::logging::LogArgs;
use herald_runtime::nats::NatsArgs;

/// Serves every Herald registry bucket read-only over the official MCP
/// Registry API (`/v0.1/servers`, …), a live SSE feed
/// (`/v0.1/x/dev.herald/events`) and a registry page at `/`; each registry
/// under `/registry/<registry>/`, the default one also at the root. Health
/// and metrics on the same listener: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Parser)]
#[command(name = "herald-api", version)]
struct Cli {
    /// Address of the HTTP listener (API, feed, page, health and metrics).
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

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

    /// Change batches a subscriber may fall behind before its backlog is
    /// dropped and it gets a snapshot instead (bounds memory per registry).
    #[arg(long, env = "HERALD_SSE_BUFFER", default_value_t = 1024)]
    sse_buffer: usize,

    /// Change batches kept per registry for `Last-Event-ID` resumes; older
    /// resume points get a snapshot.
    #[arg(long, env = "HERALD_SSE_HISTORY", default_value_t = 10000)]
    sse_history: usize,

    /// How often to list buckets to find new registries (new streams are
    /// also noticed at once through JetStream advisories when permitted).
    #[arg(long, env = "HERALD_DISCOVERY_INTERVAL", default_value = "10s", value_parser = herald_runtime::duration::positive)]
    discovery_interval: Duration,

    #[command(flatten)]
    nats: NatsArgs,

    #[command(flatten)]
    log: LogArgs,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = herald_runtime::shutdown::on_signal()?;
    let client = cli.nats.connect("herald-api", None).await?;
    let settings = Settings {
        listen: cli.listen,
        default_registry: cli.default_registry,
        cors_origins: cli.cors_origins,
        sse: SseSettings {
            keepalive: cli.sse_keepalive,
            max_subscribers: cli.max_sse_subscribers,
        },
        bounds: Bounds {
            history: cli.sse_history,
            subscriber_buffer: cli.sse_buffer,
        },
        discovery_interval: cli.discovery_interval,
        nats_unauthenticated: cli.nats.unauthenticated_remote().is_some(),
    };
    server::run(settings, client, shutdown).await
}

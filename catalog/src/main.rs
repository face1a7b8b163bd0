//! herald-catalog: parses the command line and wires the importer's parts
//! (health and metrics, the HTTP client and credentials, NATS, the syncer).

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use herald_catalog::metrics::CatalogMetrics;
use herald_catalog::schema::SchemaCheck;
use herald_catalog::source::Source;
use herald_catalog::sync::Syncer;
use herald_runtime::health::{self, Readiness};
use herald_runtime::publish::Producer;
use herald_runtime::signing;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, SyncArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    herald_runtime::tls::install_crypto_provider();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Sync(args) = cli.command;
    let shutdown = herald_runtime::shutdown::on_signal().context("installing signal handlers")?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = CatalogMetrics::register(&mut registry);
    herald_runtime::nats::register_unauthenticated(
        &mut registry,
        cli.nats.unauthenticated_remote().is_some(),
    );
    let readiness = Readiness::default();
    // Health is served until the last sync has ended, not only until SIGTERM.
    let serving = CancellationToken::new();
    let health = match args.health_listen() {
        Some(listen) => Some(
            health::serve(
                listen,
                readiness.clone(),
                Arc::new(registry),
                serving.clone(),
            )
            .await?
            .1,
        ),
        None => None,
    };
    let result = sync(
        &cli.nats,
        &cli.stream,
        &args,
        &readiness,
        metrics,
        &shutdown,
    )
    .await;
    serving.cancel();
    if let Some(health) = health {
        let _ = health.await;
    }
    result
}

async fn sync(
    nats: &herald_runtime::nats::NatsArgs,
    stream: &herald_runtime::stream::StreamArgs,
    args: &SyncArgs,
    readiness: &Readiness,
    metrics: CatalogMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let location = args
        .location()
        .context("one of --file or --url is required")?;
    let http = args.http().build()?;
    let source = Source {
        auth: args.source_auth(&http),
        location,
        format: args.format,
        toolhive_namespace: args.toolhive_namespace.clone(),
        http,
    };
    tracing::info!(
        source = %args.source_id,
        registry = %args.registry,
        location = %source.location,
        auth = source.auth.method(),
        "importing a catalog"
    );
    let schema = SchemaCheck::new()?;
    let signer = signing::signer_from(args.signing_key_file.as_deref())?.map(Arc::new);
    let client = nats
        .connect("herald-catalog", Some(args.source_id.as_str()))
        .await?;
    let js = async_nats::jetstream::new(client);
    stream.ensure(&js).await?;
    let producer = Producer { js, signer };
    let syncer = Syncer::new(producer, source, args.options(), schema, metrics);
    syncer.run(readiness, shutdown).await?;
    Ok(())
}

//! herald-projector: parses flags and wires the parts of the library.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use herald_core::ownership::NameGrant;
use herald_core::validate::UrlRules;
use herald_core::{ClusterId, EventType, RegistryName};
use herald_projector::gate::{Gate, TrustFile};
use herald_projector::metrics::Metrics;
use herald_projector::ops::events::EventsOptions;
use herald_projector::ops::explain::{ExplainOptions, Target};
use herald_projector::ops::filter::{EventFilter, ObjectFilter, parse_type};
use herald_projector::ops::replay::{DEFAULT_SCRATCH_PREFIX, ReplayOptions, check_scratch_prefix};
use herald_projector::ops::starting_point::{StartingPoint, Until, parse_since};
use herald_projector::run::RunConfig;
use herald_projector::writes::BucketSettings;
use herald_runtime::health::{self, Readiness};
use herald_runtime::logging::LogArgs;
use herald_runtime::nats::NatsArgs;
use herald_runtime::stream::StreamArgs;

/// Folds Herald's event stream into one KV bucket per registry
/// (`herald-<registry>`), and inspects or rebuilds them from the history.
///
/// Without a subcommand it runs the projector (`run`).
#[derive(Debug, Parser)]
#[command(name = "herald-projector", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Durable consumer of `run`; projectors that share it share the work.
    /// `status` reports on it.
    #[arg(
        long,
        env = "HERALD_CONSUMER",
        default_value = "herald-projector",
        global = true
    )]
    consumer: String,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    stream: StreamArgs,
}

/// What the hub accepts from the stream; `run` and `replay` apply the same.
#[derive(Debug, Clone, Args)]
struct TrustArgs {
    /// The hub's trust file (YAML): the clusters and catalog sources it
    /// accepts, the public keys each signs its events with, whether
    /// signatures are required, and server-name grants. Without one, events
    /// of any cluster and source are accepted unsigned (logged at start).
    #[arg(long, env = "HERALD_TRUST_FILE", global = true)]
    trust_file: Option<PathBuf>,
    /// A server-name grant, as the watchers' `--grant-name`
    /// (`[registry:]name=ns1,ns2`, a name prefix ends in `*`); repeat for
    /// more (environment: separated by `;`). Give the hub the grants of
    /// every watcher: a deployment whose namespace does not own its name
    /// is dead-lettered (`name_not_owned`).
    #[arg(long = "grant-name", env = "HERALD_GRANT_NAME", value_delimiter = ';', value_parser = parse_grant, global = true)]
    grant_names: Vec<NameGrant>,
    /// How far an event's time or list epoch may run ahead of the moment
    /// the stream stored it; later ones are dead-lettered (`clock_skew`).
    #[arg(long, env = "HERALD_MAX_CLOCK_SKEW", default_value = "15m", value_parser = herald_runtime::duration::positive, global = true)]
    max_clock_skew: Duration,
    /// Accept advertised URLs whose host is loopback or `localhost` (a
    /// registry on one machine; never a shared one).
    #[arg(long, env = "HERALD_ALLOW_LOOPBACK_URLS", global = true)]
    allow_loopback_urls: bool,
}

fn parse_grant(s: &str) -> Result<NameGrant, String> {
    s.parse()
}

impl TrustArgs {
    fn gate(&self) -> anyhow::Result<Arc<Gate>> {
        let file = self
            .trust_file
            .as_deref()
            .map(TrustFile::read)
            .transpose()?;
        let skew = chrono::Duration::from_std(self.max_clock_skew)
            .context("--max-clock-skew is too large")?;
        let gate = Gate::new(
            file,
            self.grant_names.clone(),
            skew,
            UrlRules {
                allow_loopback: self.allow_loopback_urls,
            },
        )?;
        for note in gate.describe() {
            tracing::warn!("open to the stream: {note}; see docs/security.md");
        }
        Ok(Arc::new(gate))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume HERALD_EVENTS and keep the registry buckets up to date (the default).
    Run(RunArgs),
    /// Print events from the stream, filtered; a table, or JSON lines with --json.
    Events(EventsArgs),
    /// Rebuild registries from the history (in memory) and print how the
    /// live buckets differ.
    Replay(ReplayArgs),
    /// Why one server or object is served, or not: what each registry
    /// serves, the keys behind it, its last events and dead letters, and a
    /// verdict per deployment or catalog entry.
    Explain(ExplainArgs),
    /// Show the stream, the consumer, the buckets and the clusters.
    Status,
    /// Create a signing key for a watcher or an importer: writes the seed
    /// (secret) to a new file readable only by its owner and prints the
    /// public key to put in the hub's trust file. Needs no NATS.
    Keygen(KeygenArgs),
}

#[derive(Debug, Clone, Args)]
struct KeygenArgs {
    /// Where to write the seed; the file must not exist yet.
    #[arg(long)]
    out: PathBuf,
}

/// Writes a new seed to `out` (mode 0600, never over an existing file) and
/// prints its public key.
fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (seed, signer) = herald_runtime::signing::Signer::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    file.write_all(format!("{seed}\n").as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", signer.public_key());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HERALD_HEALTH_LISTEN", default_value = "0.0.0.0:8082")]
    health_listen: SocketAddr,
    /// Messages fetched per pull request; on SIGTERM the batch in hand is
    /// finished and acknowledged.
    #[arg(long, env = "HERALD_BATCH", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    batch: u16,
    /// Messages delivered but not yet acknowledged, at most (across every
    /// projector on the consumer).
    #[arg(long, env = "HERALD_MAX_ACK_PENDING", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    max_ack_pending: i64,
    /// Deliveries of one event before it is dead-lettered as `apply_failed`
    /// (a bucket write that keeps failing). A write refused because the
    /// bucket is full never counts: that event waits for room.
    #[arg(long, env = "HERALD_MAX_DELIVER", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=100))]
    max_deliver: i64,
    /// How long the server waits for an ack before delivering again.
    #[arg(long, env = "HERALD_ACK_WAIT", default_value = "30s", value_parser = herald_runtime::duration::positive)]
    ack_wait: Duration,
    /// Bucket writes of distinct keys in flight at once (1: one event at a
    /// time). One key's events are always applied in order.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_in_flight: u16,
    /// Keys whose last written value the projector remembers, so that
    /// writing them again needs no read first (about 1 KB each).
    #[arg(long, env = "HERALD_CACHE_KEYS", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    cache_keys: u32,
    /// Values kept per key in the registry buckets the projector creates.
    #[arg(long, env = "HERALD_BUCKET_HISTORY", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=64))]
    bucket_history: i64,
    /// Replicas of the buckets the projector creates (1 locally, 3 in a
    /// production NATS cluster).
    #[arg(long, env = "HERALD_BUCKET_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    bucket_replicas: u8,
    /// How often the clusters bucket is read into the per-cluster liveness
    /// metrics (`herald_projector_cluster_last_heartbeat_timestamp_seconds`).
    #[arg(long, env = "HERALD_LIVENESS_INTERVAL", default_value = "15s", value_parser = herald_runtime::duration::positive)]
    liveness_interval: Duration,
}

/// Where to start reading the history; at most one.
#[derive(Debug, Clone, Args)]
#[group(multiple = false)]
struct StartArgs {
    /// Start at this stream sequence.
    #[arg(long, env = "HERALD_FROM_SEQ")]
    from_seq: Option<u64>,
    /// Start at a time: RFC 3339 (`2026-11-24T10:00:00Z`) or a duration back
    /// from now (`10m`, `2h`, `1d`).
    #[arg(long, env = "HERALD_SINCE", value_parser = since)]
    since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Args)]
struct EventsArgs {
    /// Only events of this cluster.
    #[arg(long, env = "HERALD_CLUSTER")]
    cluster: Option<ClusterId>,
    /// Only deployment events of this registry.
    #[arg(long, env = "HERALD_REGISTRY")]
    registry: Option<RegistryName>,
    /// Only events of this object: `namespace/name`, `kind/namespace/name`,
    /// or `namespace/*`.
    #[arg(long, env = "HERALD_OBJECT")]
    object: Option<ObjectFilter>,
    /// Only these types (comma-separated): applied, withdrawn,
    /// resync.started, resync.completed, heartbeat.
    #[arg(long = "type", env = "HERALD_TYPE", value_delimiter = ',', value_parser = parse_type)]
    types: Vec<EventType>,
    #[command(flatten)]
    start: StartArgs,
    /// Only the last N matching events (conflicts with --from-seq and --since).
    #[arg(long, env = "HERALD_LAST", conflicts_with_all = ["from_seq", "since"])]
    last: Option<usize>,
    /// JSON lines (one object per event, with the CloudEvent) instead of a table.
    #[arg(long, env = "HERALD_JSON")]
    json: bool,
    /// Keep printing new events until Ctrl-C.
    #[arg(long, short = 'f', env = "HERALD_FOLLOW")]
    follow: bool,
}

#[derive(Debug, Clone, Args)]
struct ExplainArgs {
    /// A server name (`io.github.acme/search`) or an object
    /// (`kind/namespace/name`, or `namespace/name` for any kind).
    #[arg(value_parser = parse_target)]
    target: Target,
    /// Only this registry (default: all).
    #[arg(long, env = "HERALD_REGISTRY")]
    registry: Option<RegistryName>,
    /// Where to start reading the events and dead letters (default: 24h
    /// back).
    #[command(flatten)]
    start: StartArgs,
    /// Events and dead letters shown, the newest.
    #[arg(long, env = "HERALD_LAST", default_value_t = herald_projector::ops::explain::DEFAULT_LAST, value_parser = clap::value_parser!(u32).range(1..=10_000).map(|n| n as usize))]
    last: usize,
    /// Messages read per stream at most (the newest of the window).
    #[arg(long, env = "HERALD_MAX_READ", default_value_t = herald_projector::ops::explain::DEFAULT_MAX_READ, value_parser = clap::value_parser!(u32).range(1..=10_000_000).map(|n| n as usize))]
    max_read: usize,
    /// JSON instead of tables.
    #[arg(long, env = "HERALD_JSON")]
    json: bool,
}

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse()
}

#[derive(Debug, Clone, Args)]
struct ReplayArgs {
    /// Rebuild only this registry (default: all).
    #[arg(long, env = "HERALD_REGISTRY")]
    registry: Option<RegistryName>,
    #[command(flatten)]
    start: StartArgs,
    /// Fold nothing after this: a stream sequence, an RFC 3339 time, or a
    /// duration back from now (`2h`). With --keep, the scratch buckets hold
    /// the registries as they were then (serve them with herald-api
    /// --bucket-prefix).
    #[arg(long, env = "HERALD_UNTIL", value_parser = until, conflicts_with = "apply")]
    until: Option<Until>,
    /// Prefix of the scratch buckets `--keep` writes (`<prefix><registry>`);
    /// must not look like a registry bucket (`herald-…`).
    #[arg(long, env = "HERALD_SCRATCH_PREFIX", default_value = DEFAULT_SCRATCH_PREFIX, value_parser = scratch_prefix)]
    scratch_prefix: String,
    /// Write the rebuilt state into scratch buckets and keep them (to
    /// inspect them).
    #[arg(long, env = "HERALD_KEEP")]
    keep: bool,
    /// Write the rebuilt state into the live buckets (only keys that differ,
    /// each with compare-and-set against the value compared).
    #[arg(long, env = "HERALD_APPLY")]
    apply: bool,
    /// Exit with status 1 when the live buckets differ (and were not applied).
    #[arg(long, env = "HERALD_CHECK")]
    check: bool,
}

/// Parses the command line; `run`'s own flags given before another
/// subcommand are refused instead of silently ignored.
fn parse() -> Cli {
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some((name, _)) = matches.subcommand() {
        let misplaced = RunArgs::augment_args(clap::Command::new("run"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine));
        if let Some(id) = misplaced {
            command
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{} is a flag of `run`: write it after `run`, or leave out the subcommand (not with `{name}`)",
                        id.replace('_', "-")
                    ),
                )
                .exit();
        }
    }
    cli
}

/// A count clap has already checked to be at least 1.
fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_since(s, Utc::now())
}

fn until(s: &str) -> Result<Until, String> {
    Until::parse(s, Utc::now())
}

fn scratch_prefix(s: &str) -> Result<String, String> {
    check_scratch_prefix(s).map(|()| s.to_owned())
}

/// Folding events allocates and frees many small values; mimalloc does that
/// in a fraction of glibc's time (herald-bench: see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = parse();
    // Long-running commands log their work; ops commands print results, and
    // their logs would only bury them.
    match &cli.command {
        None | Some(Command::Run(_)) => cli.log.init(),
        Some(_) => cli.log.init_at("warn"),
    }
    // `run` waits on NATS round trips: on one thread it spends no CPU on
    // waking another (herald-bench: 22.5 -> 15.6 µs of CPU per event). The
    // ops commands that read the history decode on one thread while the
    // connection reads on another (replay: 131k -> 139k events/s).
    let runtime = match &cli.command {
        None | Some(Command::Run(_)) => tokio::runtime::Builder::new_current_thread(),
        Some(_) => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(dispatch(cli)),
        Err(err) => Err(anyhow::Error::new(err).context("starting the async runtime")),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("herald-projector: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Command::Keygen(args)) = &cli.command {
        return keygen(args);
    }
    let client = cli.nats.connect("herald-projector", None).await?;
    let unauthenticated = cli.nats.unauthenticated_remote().is_some();
    let js = async_nats::jetstream::new(client.clone());
    let shutdown = herald_runtime::shutdown::on_signal().context("installing signal handlers")?;
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        None | Some(Command::Run(_)) => {
            let args = match cli.command {
                Some(Command::Run(args)) => args,
                _ => cli.run,
            };
            let gate = cli.trust.gate()?;
            run(
                client,
                args,
                cli.consumer,
                cli.stream,
                gate,
                unauthenticated,
                shutdown,
            )
            .await
        }
        Some(Command::Keygen(_)) => unreachable!("keygen runs before connecting"),
        Some(Command::Events(args)) => {
            let options = EventsOptions {
                filter: EventFilter {
                    cluster: args.cluster,
                    registry: args.registry,
                    object: args.object,
                    types: args.types,
                },
                start: StartingPoint::from_flags(args.start.from_seq, args.start.since, args.last),
                json: args.json,
                follow: args.follow,
            };
            herald_projector::ops::events::events(&js, &options, &mut stdout, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Replay(args)) => {
            let options = ReplayOptions {
                registry: args.registry,
                start: StartingPoint::from_flags(args.start.from_seq, args.start.since, None),
                until: args.until,
                scratch_prefix: args.scratch_prefix,
                keep: args.keep,
                apply: args.apply,
                gate: cli.trust.gate()?,
            };
            let report = herald_projector::ops::replay::replay(&js, &options, &mut stdout).await?;
            let differs = !report.diffs.is_empty() && !args.apply;
            Ok(if args.check && differs {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Some(Command::Explain(args)) => {
            let start = match (args.start.from_seq, args.start.since) {
                (None, None) => herald_projector::ops::explain::default_start(chrono::Utc::now()),
                (seq, since) => StartingPoint::from_flags(seq, since, None),
            };
            let options = ExplainOptions {
                target: args.target,
                registry: args.registry,
                start,
                max_read: args.max_read,
                last: args.last,
            };
            let explanation = herald_projector::ops::explain::explain(&js, &options).await?;
            use std::io::Write as _;
            if args.json {
                writeln!(stdout, "{}", explanation.to_json())?;
            } else {
                write!(stdout, "{}", explanation.render())?;
            }
            stdout.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Status) => {
            herald_projector::ops::status::status(&js, &cli.consumer, &mut stdout).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(
    client: async_nats::Client,
    args: RunArgs,
    consumer: String,
    stream: StreamArgs,
    gate: Arc<Gate>,
    unauthenticated: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    herald_runtime::nats::register_unauthenticated(&mut registry, unauthenticated);
    let readiness = Readiness::default();
    let serving = shutdown.child_token();
    let (_, server) = health::serve(
        args.health_listen,
        readiness.clone(),
        Arc::new(registry),
        serving.clone(),
    )
    .await?;
    let config = RunConfig {
        consumer,
        batch: usize::from(args.batch),
        max_ack_pending: args.max_ack_pending,
        max_deliver: args.max_deliver,
        ack_wait: args.ack_wait,
        max_in_flight: nonzero(usize::from(args.max_in_flight)),
        cache_keys: nonzero(args.cache_keys as usize),
        buckets: BucketSettings {
            history: args.bucket_history,
            replicas: usize::from(args.bucket_replicas),
            ..BucketSettings::default()
        },
        stream,
        gate,
        liveness_interval: args.liveness_interval,
    };
    let result = herald_projector::run::run(client, config, metrics, readiness, shutdown).await;
    serving.cancel();
    let _ = server.await;
    result.map(|()| ExitCode::SUCCESS)
}

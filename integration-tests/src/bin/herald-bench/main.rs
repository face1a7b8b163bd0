//! herald-bench: measures Herald next to a baseline taken in the same run (issue 8),
//! prints a table and writes every figure to a JSON file.
//!
//! Layout: [`report`] (rows, table, JSON), [`common`] (statistics, events, processes,
//! SSE reader), one module per scenario: [`propagation`], [`projector`], [`api_list`],
//! [`fanout`], [`scale`], [`watcher_memory`]; and [`soak`], run only when named.
//!
//! Herald's binaries are spawned from the folder of this executable: build them first
//! with `cargo build --release --bins`.

mod api_list;
mod common;
mod fanout;
mod projector;
mod propagation;
mod report;
mod scale;
mod soak;
mod watcher_memory;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use crate::report::Report;

/// Runs Herald's benchmarks against real nats-server and kube-apiserver on loopback.
#[derive(Debug, Parser)]
#[command(name = "herald-bench")]
struct Cli {
    /// Scenarios to run (default: all, in this order).
    #[arg(value_enum, env = "HERALD_BENCH_SCENARIOS", value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Small sizes and short runs (about a minute in all), for development.
    #[arg(long, env = "HERALD_BENCH_QUICK")]
    quick: bool,
    /// Where to write every figure as JSON.
    #[arg(long, env = "HERALD_BENCH_JSON", default_value = "herald-bench.json")]
    json: PathBuf,
    /// Length of the `soak` scenario in minutes (`--quick`: 2).
    #[arg(long, env = "HERALD_BENCH_MINUTES", default_value_t = 60)]
    minutes: u64,
    /// In `soak`, a Herald process is restarted every this many minutes, in turn
    /// (0: never).
    #[arg(long, env = "HERALD_BENCH_RESTART_EVERY", default_value_t = 5)]
    restart_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Propagation,
    Projector,
    ApiList,
    Fanout,
    Scale,
    WatcherMemory,
    /// An hour of churn with restarts (not part of the default run).
    Soak,
}

/// The default run; `soak` runs only when named.
const ALL: [Scenario; 6] = [
    Scenario::Propagation,
    Scenario::Projector,
    Scenario::ApiList,
    Scenario::Fanout,
    Scenario::Scale,
    Scenario::WatcherMemory,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald-bench: tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("herald-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios; `false` when one of them failed to run (its error is reported).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let nofile = report::raise_nofile()?;
    let scenarios = if cli.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        cli.scenarios.clone()
    };
    let mut report = Report::new(cli.quick, nofile);
    let mut all_ran = true;
    for scenario in scenarios {
        let name = format!("{scenario:?}");
        eprintln!("== {name} ({})", if cli.quick { "quick" } else { "full" });
        let result = match scenario {
            Scenario::Propagation => propagation::run(&mut report, cli.quick).await,
            Scenario::Projector => projector::run(&mut report, cli.quick).await,
            Scenario::ApiList => api_list::run(&mut report, cli.quick).await,
            Scenario::Fanout => fanout::run(&mut report, cli.quick).await,
            Scenario::Scale => scale::run(&mut report, cli.quick).await,
            Scenario::WatcherMemory => watcher_memory::run(&mut report, cli.quick).await,
            Scenario::Soak => {
                soak::run(&mut report, cli.quick, cli.minutes, cli.restart_every).await
            }
        };
        if let Err(error) = result {
            eprintln!("== {name} failed: {error:#}");
            report.failed(&name, &format!("{error:#}"));
            all_ran = false;
        }
        // A table after each scenario: a long run shows figures as they come.
        report.write_json(&cli.json)?;
    }
    report.print();
    eprintln!("figures written to {}", cli.json.display());
    Ok(all_ran)
}

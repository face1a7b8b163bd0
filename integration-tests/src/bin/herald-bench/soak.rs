//! Scenario `soak` (not in the default run, not in CI): `--minutes N` of mixed churn at
//! a steady rate across three clusters, with a Herald process restarted in turn every
//! `--restart-every` minutes (default 5), sampling every process's resident memory and open descriptors once a
//! minute. It ends with the convergence oracle (nothing lost, nothing phantom) and a
//! table of the samples, so growth shows as a rising column.
//!
//! A restarted process starts again from nothing: its column restarts too (marked in
//! the table). Growth is judged on each process's samples since its last restart, from
//! the first sample after the warm-up minute to the last one.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_integration_tests::herald::HeraldProcess;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::within;
use serde_json::json;

use crate::common;
use crate::report::{Report, Row};

const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];
const REGISTRIES: [&str; 2] = ["default", "team-a"];
const NAMESPACES: [&str; 2] = ["tools", "data"];
/// Object names per namespace and cluster: up to 3 × 2 × 40 = 240 objects.
const NAMES: usize = 40;
/// Time between two changes: 10 changes a second.
const PACE: Duration = Duration::from_millis(100);
/// Longest the oracle may wait at the end.
const CONVERGE: Duration = Duration::from_secs(120);

/// The processes sampled, in table order; restarted in turn except `nats-server`.
const PROCESSES: [&str; 6] = [
    "watcher-alpha",
    "projector",
    "watcher-beta",
    "api",
    "watcher-gamma",
    "nats-server",
];

/// One minute's sample of one process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_mib: f64,
    fds: usize,
    /// Whether the process was restarted since the previous sample.
    restarted: bool,
}

pub async fn run(
    report: &mut Report,
    quick: bool,
    minutes: u64,
    restart_every: u64,
) -> anyhow::Result<()> {
    let (minutes, restart_every) = if quick {
        (2, 1)
    } else {
        (minutes.max(1), restart_every)
    };
    let minute = Duration::from_secs(60);
    let mut stack = Stack::builder("soak")
        .clusters(&CLUSTERS)
        .registries(&REGISTRIES)
        .converge_within(CONVERGE)
        .build()
        .await?;
    let mut storm = stack.storm(20_261_130, &NAMESPACES, NAMES);
    let mut samples: Vec<[Sample; PROCESSES.len()]> = Vec::new();
    let mut restarted = [false; PROCESSES.len()];
    let mut restarts = 0usize;
    let started = Instant::now();
    eprintln!(
        "   {minutes} min of churn at {:.0} changes/s over {} clusters; a restart every {restart_every} min (0: none)",
        1.0 / PACE.as_secs_f64(),
        CLUSTERS.len()
    );
    for m in 1..=minutes {
        let until = started + minute * m as u32;
        while Instant::now() < until {
            storm.step().await?;
            tokio::time::sleep(PACE).await;
        }
        for process in herald_processes(&mut stack) {
            process
                .ensure_running()
                .context("a Herald process exited during the soak")?;
        }
        samples.push(sample(&stack, &restarted)?);
        restarted = [false; PROCESSES.len()];
        eprintln!("   minute {m}: {}", line(samples.last().expect("pushed")));
        if restart_every > 0 && m.is_multiple_of(restart_every) && m < minutes {
            let which = restarts % (PROCESSES.len() - 1);
            let process = &mut herald_processes(&mut stack)[which];
            // Alternate a clean stop and a crash.
            if restarts.is_multiple_of(2) {
                process.terminate();
            } else {
                process.kill();
            }
            within(
                common::START,
                "restarting a Herald process",
                process.restart(),
            )
            .await??;
            restarted[which] = true;
            restarts += 1;
        }
    }
    let churned = started.elapsed();
    let converging = Instant::now();
    let converged = stack.converge().await?;
    let converge_s = converging.elapsed().as_secs_f64();
    let changes = storm.stats.changes();
    eprintln!("{}", table(&samples));

    report.row(Row {
        scenario: "soak",
        figure: format!(
            "{minutes} min, 3 clusters, {changes} changes, {restarts} restarts, then the oracle"
        ),
        herald: format!(
            "converged in {converge_s:.1} s: {} entries in {} registries, lost 0, phantom 0",
            converged.entries, converged.registries
        ),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "converges".into(),
        met: Some(true),
    });
    for (i, name) in PROCESSES.iter().enumerate() {
        let growth = growth(&samples, i);
        report.row(Row {
            scenario: "soak",
            figure: format!("{name}: resident MiB / open descriptors since its last restart"),
            herald: format!(
                "{:.1} → {:.1} MiB (max {:.1}); {} → {} fds (max {})",
                growth.first.rss_mib,
                growth.last.rss_mib,
                growth.max_rss_mib,
                growth.first.fds,
                growth.last.fds,
                growth.max_fds
            ),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            met: None,
        });
    }
    let per_minute: Vec<_> = samples
        .iter()
        .enumerate()
        .map(|(m, row)| {
            let processes: serde_json::Map<String, serde_json::Value> = PROCESSES
                .iter()
                .zip(row)
                .map(|(name, s)| {
                    (
                        (*name).to_owned(),
                        json!({"rss_mib": s.rss_mib, "fds": s.fds, "restarted": s.restarted}),
                    )
                })
                .collect();
            json!({"minute": m + 1, "processes": processes})
        })
        .collect();
    report.figures(
        "soak",
        json!({
            "minutes": minutes, "changes": changes, "stats": format!("{:?}", storm.stats),
            "restarts": restarts, "churn_s": churned.as_secs_f64(), "converge_s": converge_s,
            "entries": converged.entries, "samples": per_minute,
        }),
    );
    Ok(())
}

/// The Herald processes in [`PROCESSES`] order (without nats-server).
fn herald_processes(stack: &mut Stack) -> Vec<&mut HeraldProcess> {
    let mut watchers = stack.watchers.iter_mut();
    let (w0, w1, w2) = (
        watchers.next().expect("three watchers"),
        watchers.next().expect("three watchers"),
        watchers.next().expect("three watchers"),
    );
    let projector = stack.projector.as_mut().expect("a projector");
    let api = stack.api.as_mut().expect("an api");
    vec![w0, projector, w1, api, w2]
}

fn sample(stack: &Stack, restarted: &[bool; PROCESSES.len()]) -> anyhow::Result<[Sample; 6]> {
    let pids = [
        stack.watchers[0].pid(),
        stack.projector.as_ref().expect("a projector").pid(),
        stack.watchers[1].pid(),
        stack.api().pid(),
        stack.watchers[2].pid(),
        stack.nats.pid(),
    ];
    let mut out = [Sample {
        rss_mib: 0.0,
        fds: 0,
        restarted: false,
    }; 6];
    for (i, pid) in pids.into_iter().enumerate() {
        let (rss_mib, _) = common::memory_mib(pid)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing /proc/{pid}/fd"))?
            .count();
        out[i] = Sample {
            rss_mib,
            fds,
            restarted: restarted[i],
        };
    }
    Ok(out)
}

fn line(row: &[Sample; 6]) -> String {
    PROCESSES
        .iter()
        .zip(row)
        .map(|(name, s)| {
            let mark = if s.restarted { "*" } else { "" };
            format!("{name} {:.1} MiB/{} fds{mark}", s.rss_mib, s.fds)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Markdown table: one row per minute, `MiB / fds` per process, `*` after a restart.
fn table(samples: &[[Sample; 6]]) -> String {
    let mut out = format!("\n| minute | {} |\n|---", PROCESSES.join(" | "));
    out.push_str(&"|---".repeat(PROCESSES.len()));
    out.push_str("|\n");
    for (m, row) in samples.iter().enumerate() {
        out.push_str(&format!("| {} ", m + 1));
        for s in row {
            let mark = if s.restarted { "*" } else { "" };
            out.push_str(&format!("| {:.1} / {}{mark} ", s.rss_mib, s.fds));
        }
        out.push_str("|\n");
    }
    out
}

/// A process's samples since its last restart: the first after the warm-up minute, the
/// last, and the largest.
#[derive(Debug)]
struct Growth {
    first: Sample,
    last: Sample,
    max_rss_mib: f64,
    max_fds: usize,
}

fn growth(samples: &[[Sample; 6]], process: usize) -> Growth {
    let since = samples
        .iter()
        .rposition(|row| row[process].restarted)
        .unwrap_or(0);
    // Skip the warm-up minute when there is more than one sample to compare.
    let from = if samples.len() - since > 2 {
        since + 1
    } else {
        since
    };
    let run: Vec<Sample> = samples[from..].iter().map(|row| row[process]).collect();
    Growth {
        first: run[0],
        last: run[run.len() - 1],
        max_rss_mib: run.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        max_fds: run.iter().map(|s| s.fds).max().unwrap_or(0),
    }
}

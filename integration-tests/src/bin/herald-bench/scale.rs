//! Scenario 5, scale: `herald-api` start to ready over 100,000 deployments from 50
//! clusters; `herald-projector replay` of 1,000,000 events. Baseline of the replay: a
//! raw ordered read of the same stream with the same client library.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herald_core::names::STREAM;
use herald_integration_tests::herald::Herald;
use herald_integration_tests::nats::NatsServer;
use serde_json::json;

use crate::common;
use crate::report::{Report, Row, per_second, ratio};

const CLUSTERS: usize = 50;
const READY_TARGET: Duration = Duration::from_secs(10);

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let (deployments, events) = if quick {
        (10_000, 20_000)
    } else {
        (100_000, 1_000_000)
    };
    let dir = common::scenario_dir("scale")?;

    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await;
    let fill_rate = crate::api_list::fill(&js, CLUSTERS, deployments / CLUSTERS).await?;
    eprintln!("   {deployments} deployments written at {fill_rate:.0}/s");
    let (api, ready) = common::start_api(&nats, &dir, &[]).await?;
    let (rss, peak) = common::memory_mib(api.pid())?;
    report.row(Row {
        scenario: "scale",
        figure: format!(
            "herald-api start → ready, {deployments} deployments / {CLUSTERS} clusters"
        ),
        herald: format!("{:.2} s ({rss:.0} MiB resident)", ready.as_secs_f64()),
        baseline: "—".into(),
        ratio: "—".into(),
        target: format!("≤ {} s", READY_TARGET.as_secs()),
        met: Some(ready <= READY_TARGET),
    });
    drop(api);
    drop(nats);

    let (nats, js) = common::nats_with_stream().await?;
    let publish_rate =
        common::publish_events(&js, events, CLUSTERS, deployments / CLUSTERS).await?;
    eprintln!("   {events} events published at {publish_rate:.0}/s");
    let raw = raw_read(&js, events as u64).await?;
    let replay = replay(&nats).await?;
    let replay_rate = events as f64 / replay.as_secs_f64();
    report.row(Row {
        scenario: "scale",
        figure: format!("`replay` of {events} events"),
        herald: format!(
            "{} ({:.1} s)",
            per_second(replay_rate),
            replay.as_secs_f64()
        ),
        baseline: format!("raw ordered read {}", per_second(raw)),
        ratio: ratio(replay_rate, raw),
        target: "≥ 0.50×".into(),
        met: Some(replay_rate >= 0.5 * raw),
    });
    report.figures(
        "scale",
        json!({"deployments": deployments, "clusters": CLUSTERS, "fill_per_s": fill_rate,
               "api_ready_s": ready.as_secs_f64(), "api_rss_mib": rss, "api_peak_rss_mib": peak,
               "events": events, "publish_per_s": publish_rate, "replay_s": replay.as_secs_f64(),
               "replay_per_s": replay_rate, "raw_read_per_s": raw}),
    );
    Ok(())
}

/// Reads the whole stream with an ordered consumer; messages per second.
async fn raw_read(js: &async_nats::jetstream::Context, count: u64) -> anyhow::Result<f64> {
    let stream = js.get_stream(STREAM).await?;
    let started = Instant::now();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    while read < count {
        let Some(message) =
            common::within_start("the next message", async { Ok(messages.next().await) }).await?
        else {
            anyhow::bail!("the ordered consumer ended after {read} messages");
        };
        let message = message?;
        std::hint::black_box(message.payload.len());
        read += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Runs `herald-projector replay` to completion; its wall time.
async fn replay(nats: &NatsServer) -> anyhow::Result<Duration> {
    let replay = Herald::projector_ops(&nats.url()).quiet().arg("replay");
    let started = Instant::now();
    replay.output(common::START * 10).await?.success()?;
    Ok(started.elapsed())
}

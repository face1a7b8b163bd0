//! Scenario 2, projector throughput: a backlog of applied events on HERALD_EVENTS,
//! then `herald-projector` started on it; events applied per second from its first
//! acknowledgement to its last. Baseline: raw KV puts of the same values with the same
//! client library and server, 64 in flight (and one at a time).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use herald_core::names::STREAM;
use serde_json::json;

use crate::common::{self, IN_FLIGHT};
use crate::report::{Report, Row, per_second, ratio};

const CLUSTERS: usize = 10;
/// Distinct deployments the events rotate over (each event rewrites one key).
const OBJECTS: usize = 1_000;
const CONSUMER: &str = "herald-projector";

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let events = if quick { 20_000 } else { 200_000 };
    let dir = common::scenario_dir("projector")?;
    let (nats, js) = common::nats_with_stream().await?;
    let publish_rate = common::publish_events(&js, events, CLUSTERS, OBJECTS).await?;
    eprintln!("   backlog of {events} events published at {publish_rate:.0}/s");

    let mut projector = common::spawn_projector(&nats, &dir)?;
    let (applied_rate, startup) = follow(&js, &mut projector, events as u64).await?;
    let (rss, peak) = common::memory_mib(projector.pid())?;
    let cpu = common::cpu_seconds(projector.pid())?;
    let nats_cpu = common::cpu_seconds(nats.pid())?;
    eprintln!(
        "   projector: {applied_rate:.0}/s, {:.0} µs of its CPU per event",
        cpu / events as f64 * 1e6
    );
    drop(projector);

    let (pipelined, sequential) = raw_puts(&js, events).await?;
    report.row(Row {
        scenario: "projector",
        figure: format!("events applied/s ({events} backlog)"),
        herald: per_second(applied_rate),
        baseline: format!(
            "KV puts {IN_FLIGHT} in flight {} (one at a time {})",
            per_second(pipelined),
            per_second(sequential)
        ),
        ratio: ratio(applied_rate, pipelined),
        target: "≥ 0.50× of pipelined puts".into(),
        met: Some(applied_rate >= 0.5 * pipelined),
    });
    report.figures(
        "projector",
        json!({"events": events, "applied_per_s": applied_rate, "startup_ms": common::ms(startup),
               "publish_per_s": publish_rate, "kv_put_pipelined_per_s": pipelined,
               "kv_put_sequential_per_s": sequential, "projector_rss_mib": rss,
               "projector_peak_rss_mib": peak, "projector_cpu_s": cpu,
               "projector_cpu_us_per_event": cpu / events as f64 * 1e6,
               "nats_cpu_s_so_far": nats_cpu}),
    );
    Ok(())
}

/// Polls the consumer until everything up to `last` is acknowledged; returns the
/// applied rate between the first acknowledgement seen and the last, and the time from
/// spawn to the first acknowledgement.
async fn follow(
    js: &jetstream::Context,
    projector: &mut herald_integration_tests::herald::HeraldProcess,
    last: u64,
) -> anyhow::Result<(f64, Duration)> {
    let spawned = Instant::now();
    let stream = js.get_stream(STREAM).await?;
    let mut first: Option<(Instant, u64)> = None;
    loop {
        projector.ensure_running()?;
        anyhow::ensure!(
            spawned.elapsed() < common::START * 5,
            "the projector did not finish the backlog"
        );
        if let Ok(info) = stream.consumer_info(CONSUMER).await {
            let floor = info.ack_floor.stream_sequence;
            let now = Instant::now();
            if first.is_none() && floor > 0 {
                first = Some((now, floor));
            }
            if floor >= last
                && let Some((at, from)) = first
            {
                let span = (now - at).as_secs_f64();
                let rate = if span > 0.0 {
                    (last - from) as f64 / span
                } else {
                    f64::INFINITY
                };
                return Ok((rate, at - spawned));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Raw KV puts of the projector's values into a bucket like a registry bucket:
/// `count` with 64 in flight, and a tenth of that one at a time; rates per second.
async fn raw_puts(js: &jetstream::Context, count: usize) -> anyhow::Result<(f64, f64)> {
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "bench-raw".into(),
            history: 1,
            ..Default::default()
        })
        .await?;
    let mut values = Vec::with_capacity(CLUSTERS * OBJECTS);
    for i in 0..CLUSTERS * OBJECTS {
        let record = common::record(i % CLUSTERS, (i / CLUSTERS) % OBJECTS, i as u64 + 1)?;
        values.push(common::stored(&record, i as u64 + 1)?);
    }
    let put = |i: usize| {
        let bucket = bucket.clone();
        let (key, value) = values[i % values.len()].clone();
        async move { anyhow::Ok(bucket.put(key, value).await?) }
    };
    let started = Instant::now();
    let mut puts = futures::stream::iter(0..count)
        .map(put)
        .buffer_unordered(IN_FLIGHT);
    while let Some(done) = puts.next().await {
        done?;
    }
    let pipelined = count as f64 / started.elapsed().as_secs_f64();
    let one_by_one = count / 10;
    let started = Instant::now();
    for i in 0..one_by_one {
        put(i).await?;
    }
    let sequential = one_by_one as f64 / started.elapsed().as_secs_f64();
    Ok((pipelined, sequential))
}

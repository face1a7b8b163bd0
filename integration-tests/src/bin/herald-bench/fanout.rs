//! Scenario 4, SSE fan-out: 10,000 concurrent subscribers of `herald-api`'s feed; one
//! change written to the registry bucket, and the time until each subscriber has it;
//! the API's resident memory before and with the subscribers.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herald_integration_tests::nats::NatsServer;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::common::{self, FEED, Latency, SseReader};
use crate::report::{Report, Row};

/// Connections opened at once (the API's accept backlog is finite).
const CONNECTING: usize = 256;
/// The marker of the one change.
const CHANGE: u64 = 1_000_000;
const TARGET_MS: f64 = 1_000.0;
const TARGET_RSS_MIB: f64 = 300.0;

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let subscribers = if quick { 1_000 } else { 10_000 };
    let dir = common::scenario_dir("fanout")?;
    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await;
    crate::api_list::fill(&js, 1, 10).await?;
    // Every subscriber connects from this one address: lift the per-client shares too.
    let max = (subscribers * 2).to_string();
    let limits = [
        "--max-sse-subscribers",
        &max,
        "--max-sse-subscribers-per-client",
        &max,
        "--max-connections",
        &max,
        "--max-connections-per-client",
        &max,
    ];
    let (api, _) = common::start_api(&nats, &dir, &limits).await?;
    let (idle_rss, _) = common::memory_mib(api.pid())?;

    let (receipt_tx, mut receipts) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (go_tx, go) = watch::channel(false);
    let connecting = Instant::now();
    let port = api.port();
    let mut connects = futures::stream::iter(0..subscribers)
        .map(|_| {
            let (receipt_tx, ready_tx, mut go) = (receipt_tx.clone(), ready_tx.clone(), go.clone());
            async move {
                let mut sse = SseReader::connect(port, FEED).await?;
                sse.wait_for(b"event: snapshot").await?;
                let _ = ready_tx.send(());
                tokio::spawn(async move {
                    let _ = go.wait_for(|go| *go).await;
                    loop {
                        match sse.next_marker().await {
                            Ok(CHANGE) => {
                                let _ = receipt_tx.send(Instant::now());
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    // Stay connected until the scenario ends.
                    let _ = sse.wait_for(b"never sent \x00").await;
                });
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONNECTING);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(done) = connects.next().await {
        if let Err(error) = done {
            failed += 1;
            first_error.get_or_insert(format!("{error:#}"));
        }
    }
    drop(connects);
    let mut connected = 0;
    while ready.try_recv().is_ok() {
        connected += 1;
    }
    let connect_time = connecting.elapsed();
    eprintln!(
        "   {connected} subscribers connected in {:.1} s ({failed} failed{})",
        connect_time.as_secs_f64(),
        first_error.map(|e| format!(": {e}")).unwrap_or_default()
    );
    let (subscribed_rss, _) = common::memory_mib(api.pid())?;

    go_tx.send(true)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bucket = common::registry_bucket(&js).await?;
    let (key, value) = common::stored(&common::record(0, 0, CHANGE)?, CHANGE)?;
    let written = Instant::now();
    bucket.put(key, value).await?;
    let mut samples = Vec::with_capacity(connected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while samples.len() < connected {
        match tokio::time::timeout_at(deadline, receipts.recv()).await {
            Ok(Some(at)) => samples.push(common::ms(at.saturating_duration_since(written))),
            _ => break,
        }
    }
    let reached = samples.len();
    let latency = Latency::of(&mut samples);
    let (rss, peak) = common::memory_mib(api.pid())?;
    report.row(Row {
        scenario: "sse fan-out",
        figure: format!("one change to {connected} subscribers ({reached} reached)"),
        herald: latency.show(),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "all within 1 s".into(),
        met: Some(reached == subscribers && latency.max <= TARGET_MS),
    });
    report.row(Row {
        scenario: "sse fan-out",
        figure: format!("herald-api resident memory, {connected} subscribers"),
        herald: format!("{rss:.0} MiB (idle {idle_rss:.0} MiB, peak {peak:.0} MiB)"),
        baseline: "—".into(),
        ratio: "—".into(),
        target: format!("≤ {TARGET_RSS_MIB:.0} MB"),
        met: Some(peak <= TARGET_RSS_MIB),
    });
    report.figures(
        "fanout",
        json!({"subscribers": subscribers, "connected": connected, "failed": failed,
               "connect_s": connect_time.as_secs_f64(), "reached": reached,
               "latency": latency.json(), "api_rss_idle_mib": idle_rss,
               "api_rss_subscribed_mib": subscribed_rss, "api_rss_mib": rss, "api_peak_rss_mib": peak}),
    );
    drop(api);
    Ok(())
}

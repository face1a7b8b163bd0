//! Scenario 6, watcher memory: `herald-watcher`'s resident memory once it has listed
//! and published 10,000 opted-in MCPServers from a real API server.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herald_core::names::STREAM;
use herald_integration_tests::kube::KubeApi;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common;
use crate::common::spawn_watcher;
use crate::propagation::{mcpserver, mcpservers};
use crate::report::{Report, Row, per_second};

const TARGET_MIB: f64 = 150.0;
/// Requests to the API server in flight while creating objects.
const CREATING: usize = 32;

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let objects = if quick { 1_000 } else { 10_000 };
    let dir = common::scenario_dir("watcher-memory")?;
    let (nats, js) = common::nats_with_stream().await?;
    let kube = KubeApi::start().await?;
    let api = mcpservers(&kube, "tools");
    let started = Instant::now();
    let mut creates = futures::stream::iter(0..objects)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("srv-{i}");
                let object: DynamicObject = serde_json::from_value(mcpserver(&name, i as u64 + 1))?;
                api.create(&PostParams::default(), &object).await?;
                let patch = Patch::Merge(json!({"status": {"phase": "Running"}}));
                api.patch_status(&name, &PatchParams::default(), &patch)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATING);
    while let Some(done) = creates.next().await {
        done?;
    }
    let create_rate = objects as f64 / started.elapsed().as_secs_f64();
    eprintln!("   {objects} MCPServers created at {create_rate:.0}/s");

    let spawned = Instant::now();
    let mut watcher = spawn_watcher(&nats, &kube, &dir, "cluster-mem")?;
    // Every object applied, plus the resync brackets and a heartbeat.
    let mut stream = js.get_stream(STREAM).await?;
    loop {
        watcher.ensure_running()?;
        anyhow::ensure!(
            spawned.elapsed() < common::START * 2,
            "the watcher did not publish every object"
        );
        if stream.info().await?.state.messages >= objects as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = spawned.elapsed();
    // Let the listing's transient buffers go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak) = common::memory_mib(watcher.pid())?;
    report.row(Row {
        scenario: "watcher memory",
        figure: format!("herald-watcher resident, {objects} MCPServers"),
        herald: format!("{rss:.0} MiB (peak {peak:.0} MiB)"),
        baseline: "—".into(),
        ratio: "—".into(),
        target: format!("≤ {TARGET_MIB:.0} MB"),
        met: Some(peak <= TARGET_MIB),
    });
    report.row(Row {
        scenario: "watcher memory",
        figure: format!("start → {objects} objects published"),
        herald: format!(
            "{:.1} s ({})",
            listed.as_secs_f64(),
            per_second(objects as f64 / listed.as_secs_f64())
        ),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "—".into(),
        met: None,
    });
    report.figures(
        "watcher_memory",
        json!({"objects": objects, "create_per_s": create_rate, "listed_s": listed.as_secs_f64(),
               "watcher_rss_mib": rss, "watcher_peak_rss_mib": peak}),
    );
    Ok(())
}

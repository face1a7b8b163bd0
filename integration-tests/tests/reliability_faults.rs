//! Reliability, faults: each test runs the whole pipeline (kube-apiserver, watcher,
//! NATS, projector, API), a seeded storm of MCPServer changes, and one fault injected
//! while the storm runs; it ends with the convergence oracle (nothing lost, nothing
//! phantom) and prints a `RELIABILITY` line with its figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use herald_core::RegistryName;
use herald_core::annotations as ann;
use herald_core::names::STREAM;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::create_running;
use herald_integration_tests::oracle::{EntryView, expected_view};
use herald_integration_tests::sse::Frames;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::storm::Storm;
use herald_integration_tests::timeout::eventually;
use kube::api::DeleteParams;
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(45);
const REGISTRIES: [&str; 3] = ["default", "team-a", "team-b"];
const NAMESPACES: [&str; 3] = ["team", "payments", "search"];
const PACE: Duration = Duration::from_millis(5);

/// The pipeline on one cluster `east`, projector batches of 10 (a kill lands mid-batch).
async fn stack(name: &str, api_flags: &[&str]) -> anyhow::Result<Stack> {
    Stack::builder(name)
        .registries(&REGISTRIES)
        .projector_flags(&["--batch", "10"])
        .api_flags(api_flags)
        .build()
        .await
}

fn storm(env: &Stack, seed: u64) -> Storm {
    env.storm(seed, &NAMESPACES, 8)
}

large_stack_test!(nats_killed_and_restarted_during_a_storm => nats_killed_and_restarted_steps);

async fn nats_killed_and_restarted_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = stack("reliability-nats-restart", &[]).await?;
    let mut storm = storm(&env, 0x5eed_0101);
    storm.run(40, PACE).await?;
    let mut faults = 0;
    for _ in 0..2 {
        let nats = &mut env.nats;
        // The storm keeps changing objects during the outage.
        storm
            .during(PACE, nats.outage(Duration::from_secs(2)))
            .await??;
        faults += 1;
        storm.run(20, PACE).await?;
    }
    let converged = env.converge().await?;
    storm.report("nats-kill-restart", faults, converged.entries, started);
    Ok(())
}

large_stack_test!(projector_sigkilled_mid_batch_and_restarted => projector_sigkilled_mid_batch_steps);

async fn projector_sigkilled_mid_batch_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = stack("reliability-projector-kill", &[]).await?;
    let mut storm = storm(&env, 0x5eed_0202);
    storm.run(30, PACE).await?;
    // A backlog while the projector is down, then a SIGKILL as soon as the new process
    // has applied something of it (batches of 10): mid-batch, mid-backlog.
    env.projector_mut().kill();
    storm.run(150, Duration::ZERO).await?;
    let backlog_end = env.last_sequence().await?;
    let projector = env.projector_mut();
    let applied_before_kill = storm
        .during(PACE, async {
            projector.respawn()?;
            let applied = eventually(START, "the new projector to apply something", || async {
                let n = projector
                    .metric_sum("herald_projector_events_applied_total")
                    .await;
                Ok((n > 0.0).then_some(n))
            })
            .await?;
            projector.kill();
            projector.restart().await?;
            anyhow::Ok(applied)
        })
        .await??;
    storm.run(20, PACE).await?;
    let converged = env.converge().await?;
    eprintln!(
        "projector killed after applying {applied_before_kill} events of a backlog up to sequence {backlog_end}"
    );
    storm.report("projector-sigkill", 2, converged.entries, started);
    Ok(())
}

large_stack_test!(watcher_sigkilled_mid_resync_with_deletes_while_down => watcher_sigkilled_mid_resync_steps);

async fn watcher_sigkilled_mid_resync_steps() -> anyhow::Result<()> {
    const BULK: usize = 150;
    const DELETED: usize = 40;
    let started = Instant::now();
    let mut env = stack("reliability-watcher-kill", &[]).await?;
    let bulk = env.mcpservers(0, "bulk");
    for i in 0..BULK {
        let name = format!("bulk-{i}");
        let annotations = json!({
            ann::REGISTRY_DESCRIPTION: format!("bulk server {name}"),
            ann::REGISTRY_URL: format!("https://{name}.bulk.example/mcp"),
        });
        create_running(&bulk, &name, annotations).await?;
    }
    env.converge().await?;
    let mut storm = storm(&env, 0x5eed_0303);
    // Restart, and SIGKILL once the new resync has published part of its objects.
    let before = env.last_sequence().await?;
    let watcher = &mut env.watchers[0];
    let nats = &env.nats;
    let (published, applied, completed) = storm
        .during(PACE, async {
            watcher.kill();
            watcher.respawn()?;
            let js = nats.jetstream().await;
            let published = eventually(START, "the resync to be under way", || {
                let js = js.clone();
                async move {
                    let mut stream = js.get_stream(STREAM).await?;
                    let last = stream.info().await?.state.last_sequence;
                    Ok((last >= before + 10).then_some(last - before))
                }
            })
            .await?;
            watcher.kill();
            // What the killed resync got out: brackets completed and objects applied.
            let mut stream = js.get_stream(STREAM).await?;
            let end = stream.info().await?.state.last_sequence;
            let (mut completed, mut applied) = (0, 0);
            for seq in before + 1..=end {
                let m = stream.get_raw_message(seq).await?;
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                match v["type"].as_str().unwrap_or_default() {
                    "dev.herald.resync.completed" => completed += 1,
                    "dev.herald.deployment.applied" => applied += 1,
                    _ => {}
                }
            }
            // Deleted while the watcher is down: its restart must withdraw them.
            for i in 0..DELETED {
                bulk.delete(&format!("bulk-{i}"), &DeleteParams::default())
                    .await?;
            }
            watcher.restart().await?;
            anyhow::Ok((published, applied, completed))
        })
        .await??;
    storm.run(20, PACE).await?;
    let converged = env.converge().await?;
    eprintln!(
        "watcher killed after {published} new events ({applied} deployment.applied, {completed} of 3 resync brackets completed) of a resync of {BULK}+ objects; {DELETED} deleted while down"
    );
    storm.report("watcher-sigkill-mid-resync", 2, converged.entries, started);
    Ok(())
}

/// One SSE subscriber of the default registry's feed that reconnects with
/// `Last-Event-ID` whenever the stream ends, folding events into name@version → entry.
#[derive(Default)]
struct Fold {
    entries: BTreeMap<(String, String), Value>,
    last_id: Option<u64>,
    events: usize,
    snapshots: usize,
    connects: usize,
}

fn key_of(v: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if v.get("server").is_some() {
        (s(&v["server"]["name"]), s(&v["server"]["version"]))
    } else {
        (s(&v["name"]), s(&v["version"]))
    }
}

impl Fold {
    fn apply(&mut self, event: &str, id: Option<u64>, data: Value) -> anyhow::Result<()> {
        match event {
            "snapshot" => {
                self.snapshots += 1;
                self.entries = data["servers"]
                    .as_array()
                    .context("a snapshot has servers")?
                    .iter()
                    .map(|e| (key_of(e), e.clone()))
                    .collect();
            }
            "upsert" => {
                self.entries.insert(key_of(&data), data);
            }
            "delete" => {
                self.entries.remove(&key_of(&data));
            }
            other => anyhow::bail!("unexpected SSE event {other}"),
        }
        self.events += 1;
        if id.is_some() {
            self.last_id = id;
        }
        Ok(())
    }
}

async fn subscribe(base: String, fold: Arc<Mutex<Fold>>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    loop {
        let last = fold
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .last_id;
        let mut request = http.get(format!("{base}/v0.1/x/dev.herald/events"));
        if let Some(id) = last {
            request = request.header("last-event-id", id.to_string());
        }
        let response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            // The API is restarting: try again shortly.
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        fold.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .connects += 1;
        let mut body = response.bytes_stream();
        let mut frames = Frames::default();
        while let Some(Ok(chunk)) = body.next().await {
            frames.push(&chunk)?;
            while let Some(e) = frames.next_event()? {
                fold.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .apply(&e.event, e.id, e.data)?;
            }
        }
    }
}

large_stack_test!(api_restarted_while_sse_subscribers_resume_and_miss_nothing => api_restarted_with_sse_steps);

async fn api_restarted_with_sse_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = stack("reliability-api-restart", &["--sse-keepalive", "200ms"]).await?;
    let mut storm = storm(&env, 0x5eed_0404);
    storm.run(20, PACE).await?;
    let folds: Vec<Arc<Mutex<Fold>>> = (0..2).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = folds
        .iter()
        .map(|f| tokio::spawn(subscribe(env.api().base().to_owned(), f.clone())))
        .collect();
    storm.run(30, PACE).await?;
    let mut faults = 0;
    for _ in 0..2 {
        let api = env.api_mut();
        storm.during(PACE, api.restart()).await??;
        faults += 1;
        storm.run(30, PACE).await?;
    }
    let converged = env.converge().await?;
    // Each subscriber's fold is what the oracle expects of the default registry.
    let clusters = env.clusters();
    let default: RegistryName = "default".parse()?;
    let expected: BTreeSet<EntryView> = expected_view(&clusters)
        .await?
        .remove(&default)
        .unwrap_or_default();
    for (i, fold) in folds.iter().enumerate() {
        eventually(CONVERGE, "the SSE fold to match the oracle", || async {
            let fold = fold.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let seen: BTreeSet<EntryView> = fold
                .entries
                .values()
                .map(EntryView::from_json)
                .collect::<anyhow::Result<_>>()?;
            Ok((seen == expected).then_some(()))
        })
        .await
        .with_context(|| format!("subscriber {i}"))?;
        let fold = fold.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        eprintln!(
            "subscriber {i}: {} events, {} snapshots, {} connections, {} entries",
            fold.events,
            fold.snapshots,
            fold.connects,
            fold.entries.len()
        );
        assert!(fold.connects >= 3, "it reconnected after each restart");
    }
    for task in tasks {
        task.abort();
    }
    storm.report(
        "api-restart-sse",
        faults,
        converged.entries + 2 * expected.len(),
        started,
    );
    Ok(())
}

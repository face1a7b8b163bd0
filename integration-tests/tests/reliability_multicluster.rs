//! Reliability, multi-cluster: three Kubernetes API servers ("clusters") with a watcher
//! each, one NATS, one projector, one API. The same server deployed in the three clusters
//! is one entry with three remotes; a change in one cluster touches only its remote; a
//! storm across the three clusters converges to what the oracle computes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_core::RegistryName;
use herald_core::annotations as ann;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::{create_running, merge};
use herald_integration_tests::oracle::served_view;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::storm::report;
use kube::api::DeleteParams;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(30);
const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];
const REGISTRIES: [&str; 3] = ["default", "team-a", "team-b"];

/// Three clusters, a watcher each, one NATS, projector and API.
async fn stack() -> anyhow::Result<Stack> {
    Stack::builder("reliability-multicluster")
        .clusters(&CLUSTERS)
        .registries(&REGISTRIES)
        .converge_within(CONVERGE)
        .build()
        .await
}

fn url(cluster: &str) -> String {
    format!("https://shared.{cluster}.example/mcp")
}

async fn deploy_shared(env: &Stack, i: usize) -> anyhow::Result<()> {
    let annotations = json!({
        ann::REGISTRY_DESCRIPTION: "one server, three clusters",
        ann::REGISTRY_URL: url(CLUSTERS[i]),
    });
    create_running(&env.mcpservers(i, "team"), "shared", annotations).await?;
    Ok(())
}

/// Remote URLs and deployment clusters of the one entry served in `default`.
async fn shared_entry(env: &Stack) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let view = served_view(env.api().base(), &env.registries()).await?;
    let entries = view
        .get(&"default".parse::<RegistryName>()?)
        .context("registry default is empty")?;
    anyhow::ensure!(entries.len() == 1, "one entry expected: {entries:#?}");
    let entry = entries.iter().next().context("one entry")?;
    Ok((
        entry.remotes.iter().map(|(_, u, _)| u.clone()).collect(),
        entry.deployments.iter().map(|d| d.0.clone()).collect(),
    ))
}

large_stack_test!(one_server_in_three_clusters_is_one_entry_with_three_remotes => one_server_in_three_clusters_steps);

async fn one_server_in_three_clusters_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = stack().await?;
    for i in 0..CLUSTERS.len() {
        deploy_shared(&env, i).await?;
    }
    let converged = env.converge().await?;
    assert_eq!(
        converged.entries, 1,
        "the same server in three clusters is one entry"
    );
    let (urls, deployed) = shared_entry(&env).await?;
    assert_eq!(urls, CLUSTERS.iter().map(|c| url(c)).collect());
    assert_eq!(deployed, CLUSTERS.iter().map(|c| (*c).to_owned()).collect());

    // A change in beta touches beta's remote only.
    let moved = json!({"metadata": {"annotations": {
        ann::REGISTRY_URL: "https://moved.beta.example/mcp"
    }}});
    merge(&env.mcpservers(1, "team"), "shared", moved).await?;
    env.converge().await?;
    let (urls, _) = shared_entry(&env).await?;
    assert_eq!(
        urls,
        [
            url("alpha"),
            "https://moved.beta.example/mcp".into(),
            url("gamma")
        ]
        .into_iter()
        .collect()
    );

    // Deleted in gamma: two remotes left, alpha's and beta's untouched.
    env.mcpservers(2, "team")
        .delete("shared", &DeleteParams::default())
        .await?;
    env.converge().await?;
    let (urls, deployed) = shared_entry(&env).await?;
    assert_eq!(
        urls,
        [url("alpha"), "https://moved.beta.example/mcp".into()]
            .into_iter()
            .collect()
    );
    assert_eq!(
        deployed,
        ["alpha".to_owned(), "beta".to_owned()]
            .into_iter()
            .collect()
    );
    let figures = format!("clusters=3 entries_compared={}", converged.entries,);
    report("multicluster-shared", &figures, started);
    Ok(())
}

large_stack_test!(a_storm_across_three_clusters_converges => a_storm_across_three_clusters_steps);

async fn a_storm_across_three_clusters_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = stack().await?;
    let mut storm = env.storm(0x5eed_0001, &["team", "payments", "search"], 6);
    storm.run(300, Duration::from_millis(5)).await?;
    let converged = env.converge().await?;
    let figures = format!(
        "changes={} stats={:?} faults=0 registries={} entries_compared={}",
        storm.stats.changes(),
        storm.stats,
        converged.registries,
        converged.entries,
    );
    report("multicluster-storm", &figures, started);
    assert!(converged.entries > 0, "the storm left something deployed");
    Ok(())
}

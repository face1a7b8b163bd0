//! Reliability, edge cases: a kind's CRD deleted while its objects are advertised (and
//! installed again), and a storm over all four ToolHive kinds. Each test ends with the
//! convergence oracle (nothing lost, nothing phantom) and prints a `RELIABILITY` line.

use std::time::{Duration, Instant};

use herald_core::Kind;
use herald_core::annotations as ann;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::{self, create, opted_in, set_status, with};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::storm::report;
use herald_integration_tests::timeout::eventually;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(60);
const REGISTRIES: [&str; 2] = ["default", "team-a"];
const PACE: Duration = Duration::from_millis(5);

async fn stack(name: &str) -> anyhow::Result<Stack> {
    Stack::builder(name).registries(&REGISTRIES).build().await
}

/// Every entry name the API serves in the default registry.
async fn served_names(env: &Stack) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/v0.1/servers?limit=100", env.api().base());
    let page: Value = reqwest::get(url).await?.error_for_status()?.json().await?;
    Ok(page["servers"]
        .as_array()
        .map(|servers| {
            servers
                .iter()
                .filter_map(|s| s["server"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Creates `n` opted-in, ready VirtualMCPServers `vmcp-0…` in `team`.
async fn create_virtuals(env: &Stack, n: usize) -> anyhow::Result<()> {
    let kind = Kind::VirtualMCPServer;
    let api = objects::api_at(env.kube().client(), kind, kind.versions()[0], "team");
    for i in 0..n {
        let name = format!("vmcp-{i}");
        let body = with(
            opted_in(&name, "A virtual server"),
            &["metadata", "annotations", ann::REGISTRY_URL],
            json!(format!("https://{name}.team.example/mcp")),
        );
        create(&api, kind, kind.versions()[0], body).await?;
        set_status(&api, &name, json!({"phase": "Ready"})).await?;
    }
    Ok(())
}

large_stack_test!(a_kinds_crd_deleted_withdraws_its_objects_and_reinstalled_brings_them_back => crd_deleted_steps);

async fn crd_deleted_steps() -> anyhow::Result<()> {
    const VIRTUALS: usize = 5;
    let started = Instant::now();
    let env = stack("reliability-crd-deleted").await?;
    let mut storm = env
        .storm(0x5eed_0c4d, &["team", "payments"], 6)
        .kinds(&[Kind::MCPServer]);
    storm.run(20, PACE).await?;
    create_virtuals(&env, VIRTUALS).await?;
    let before = env.converge().await?;
    let is_virtual = |n: &String| n.contains("/vmcp-");
    let served = served_names(&env).await?;
    assert_eq!(
        served.iter().filter(|n| is_virtual(n)).count(),
        VIRTUALS,
        "{served:?}"
    );

    // The CRD goes (and its objects with it) while MCPServers keep changing.
    let crd_name = format!(
        "{}.{}",
        Kind::VirtualMCPServer.plural(),
        herald_core::object::TOOLHIVE_GROUP
    );
    let crds: Api<CustomResourceDefinition> = Api::all(env.kube().client());
    let deleted_at = Instant::now();
    crds.delete(&crd_name, &DeleteParams::default()).await?;
    let crds_ref = &crds;
    let crd_ref = &crd_name;
    storm
        .during(
            PACE,
            eventually(STEP, "the CRD to be gone", || async move {
                Ok(crds_ref.get_opt(crd_ref).await?.is_none().then_some(()))
            }),
        )
        .await??;
    let gone = env.converge().await?;
    let withdrawn_within = deleted_at.elapsed();
    let served = served_names(&env).await?;
    assert!(!served.iter().any(is_virtual), "withdrawn: {served:?}");

    // The CRD and its objects again: advertised again.
    env.kube().install_toolhive_crd(&crd_name).await?;
    let reinstalled_at = Instant::now();
    create_virtuals(&env, VIRTUALS).await?;
    storm.run(10, PACE).await?;
    let back = env.converge().await?;
    let back_within = reinstalled_at.elapsed();
    let served = served_names(&env).await?;
    assert_eq!(
        served.iter().filter(|n| is_virtual(n)).count(),
        VIRTUALS,
        "{served:?}"
    );
    report(
        "crd-deleted-and-reinstalled",
        &format!(
            "changes={} objects_of_the_kind={VIRTUALS} withdrawn_within={:.1}s back_within={:.1}s entries_compared={} lost=0 phantom=0",
            storm.stats.changes(),
            withdrawn_within.as_secs_f64(),
            back_within.as_secs_f64(),
            before.entries + gone.entries + back.entries,
        ),
        started,
    );
    Ok(())
}

large_stack_test!(a_storm_over_all_four_kinds_converges => four_kinds_storm_steps);

async fn four_kinds_storm_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = stack("reliability-four-kinds").await?;
    let mut storm = env.storm(0x5eed_4444, &["team", "payments", "search"], 6);
    storm.run(120, PACE).await?;
    // A watcher restart mid-storm: the relist of every kind confirms and withdraws.
    let watcher = &mut env.watchers[0];
    storm.during(PACE, watcher.restart()).await??;
    storm.run(40, PACE).await?;
    let converge_started = Instant::now();
    let converged = env.converge().await?;
    let to_converge = converge_started.elapsed();
    for (kind, created) in Kind::ALL.iter().zip(storm.stats.created_by_kind) {
        assert!(
            created > 0,
            "the storm created no {kind}: {:?}",
            storm.stats
        );
    }
    eprintln!("converged {to_converge:?} after the storm");
    storm.report("four-kinds-watcher-restart", 1, converged.entries, started);
    Ok(())
}

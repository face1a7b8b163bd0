//! Reliability, NATS topologies: a three-node JetStream cluster with the stream and
//! buckets at three replicas losing a node, and a watcher behind a NATS leaf node whose
//! link to the hub is cut and restored. A storm runs during each fault; each test ends
//! with the convergence oracle and prints a `RELIABILITY` line.

use std::time::{Duration, Instant};

use herald_core::names::STREAM;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::nats::{NatsCluster, NatsServer};
use herald_integration_tests::ports::free_port;
use herald_integration_tests::stack::{Nats, Stack, StackBuilder};
use herald_integration_tests::storm::Storm;
use herald_integration_tests::timeout::{eventually, within};

const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(45);
const REGISTRIES: [&str; 2] = ["default", "team-a"];
const NAMESPACES: [&str; 2] = ["team", "payments"];
const PACE: Duration = Duration::from_millis(5);

/// One cluster `edge`.
fn stack(name: &str) -> StackBuilder {
    Stack::builder(name)
        .clusters(&["edge"])
        .registries(&REGISTRIES)
}

fn storm<N: Nats>(env: &Stack<N>, seed: u64) -> Storm {
    env.storm(seed, &NAMESPACES, 8)
}

large_stack_test!(three_node_cluster_loses_a_node_and_gets_it_back => three_node_cluster_steps);

async fn three_node_cluster_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = stack("reliability-nats-cluster")
        .watcher_flags(&["--stream-replicas", "3"])
        .projector_flags(&["--stream-replicas", "3", "--bucket-replicas", "3"])
        .build_on(NatsCluster::start(3))
        .await?;
    let mut storm = storm(&env, 0x5eed_0505);
    storm.run(30, PACE).await?;
    // The stream and the buckets really have three replicas (a bucket exists once the
    // projector applied something to its registry).
    let js = env.nats.jetstream().await;
    let replicas = eventually(CONVERGE, "HERALD_EVENTS and KV_herald-default", || {
        let js = js.clone();
        async move {
            let (Ok(mut events), Ok(mut bucket)) = (
                js.get_stream(STREAM).await,
                js.get_stream("KV_herald-default").await,
            ) else {
                return Ok(None);
            };
            Ok(Some((
                events.info().await?.config.num_replicas,
                bucket.info().await?.config.num_replicas,
            )))
        }
    })
    .await?;
    assert_eq!(
        replicas,
        (3, 3),
        "replicas of HERALD_EVENTS and herald-default"
    );
    drop(js);
    // The node that leads the stream: the stream and every client on that node must
    // fail over, and the stream must elect another leader while writes go on.
    let leader = env.nats.leader_of(STREAM).await?;
    eprintln!("HERALD_EVENTS is led by node {leader}");
    let nodes = &mut env.nats;
    // The outage, while the storm goes on.
    storm
        .during(PACE, nodes.node_outage(leader, Duration::from_secs(3)))
        .await??;
    storm.run(20, PACE).await?;
    let converged = env.converge().await?;
    storm.report("nats-cluster-node-kill", 1, converged.entries, started);
    Ok(())
}

large_stack_test!(watcher_behind_a_leaf_node_survives_a_cut_link => leaf_node_steps);

async fn leaf_node_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let leaf_port = free_port();
    // The hub: JetStream domain `hub`, a leafnodes port (deploy/nats/hub-cluster.conf).
    // Projector and API on the hub; the watcher on the leaf only.
    let hub_config =
        format!("jetstream {{ domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n");
    let mut env = stack("reliability-leaf")
        .without_watchers()
        .build_on(NatsServer::start_with_config(&hub_config))
        .await?;
    // The leaf (deploy/nats/leaf.conf): the JetStream API goes to the hub's domain. The
    // harness always enables JetStream, so the leaf gets a domain of its own.
    let leaf_config = format!(
        "jetstream {{ domain: leaf }}\n\
         mappings = {{ \"$JS.API.>\": \"$JS.hub.API.>\" }}\n\
         leafnodes {{ remotes = [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n"
    );
    let mut leaf = within(START, "leaf", NatsServer::start_with_config(&leaf_config)).await??;
    let watcher = env.watcher(0, &leaf.url()).start().await?;
    env.watchers.push(watcher);
    let mut storm = storm(&env, 0x5eed_0606);
    storm.run(30, PACE).await?;
    let first = env.converge().await?;
    let link = &mut leaf;
    // The link is down: the storm goes on in the cluster.
    storm
        .during(PACE, link.outage(Duration::from_secs(2)))
        .await??;
    storm.run(20, PACE).await?;
    let converged = env.converge().await?;
    storm.report(
        "leaf-link-cut",
        1,
        first.entries + converged.entries,
        started,
    );
    // The watcher before the leaf it uses.
    env.watchers.clear();
    Ok(())
}

//! A JetStream cluster of `nats-server` nodes on loopback, for replicated streams and
//! buckets and for node failures.
//!
//! Ready means a stream with one replica per node could be created: a meta leader is
//! elected and every node has joined.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::stream;

use super::{NatsServer, Spec};
use crate::ports::{free_port, retry_on_port_conflict};
use crate::timeout::eventually;
use crate::tools::Tools;

/// Electing a meta leader takes a few seconds, under load up to about ten.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Nodes that start together sometimes form a meta group without one of them
/// ("no suitable peers for placement" for good); a fresh start forms it.
const FORMATION_ATTEMPTS: usize = 3;
const PROBE_STREAM: &str = "HARNESS_CLUSTER_PROBE";
/// One attempt to create the probe stream; unanswered while the cluster forms.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `n` nodes routed to each other; node `i` keeps its ports and store across restarts.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "a cluster needs at least one node");
        let mut attempt = 1;
        loop {
            match Self::start_once(n).await {
                Ok(cluster) => return Ok(cluster),
                Err(error) if attempt < FORMATION_ATTEMPTS => {
                    eprintln!(
                        "NATS cluster did not form (attempt {attempt}), starting afresh: {error:#}"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn start_once(n: usize) -> anyhow::Result<Self> {
        let binary = Tools::locate()?.nats_server()?;
        retry_on_port_conflict(|| async {
            let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let cluster_name = format!("herald-{}-{}", std::process::id(), cluster_ports[0]);
            let mut nodes = Vec::with_capacity(n);
            // All nodes run before any is awaited: a meta leader needs a quorum.
            // Every node gets every route, its own included (it ignores that one): the
            // number of routes sets the expected size of the meta group. With n-1 routes,
            // two of three nodes may form the group without the third.
            let routes: Vec<String> = cluster_ports
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            for (i, cluster_port) in cluster_ports.iter().enumerate() {
                let port = free_port();
                let spec = Spec {
                    binary: binary.clone(),
                    name: format!("{cluster_name}-n{i}"),
                    port,
                    monitor_port: free_port(),
                    extra_args: vec![
                        "--cluster_name".into(),
                        cluster_name.clone(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{cluster_port}"),
                        "--routes".into(),
                        routes.join(","),
                    ],
                    config: None,
                };
                nodes.push(NatsServer::spawn(spec, &format!("nats-n{i}"))?);
            }
            for node in &mut nodes {
                node.wait_ready().await?;
            }
            let cluster = Self { nodes };
            match cluster.await_all_peers().await {
                Ok(()) => Ok(cluster),
                Err(error) => Err(cluster.explain(error)),
            }
        })
        .await
    }

    /// Creates and deletes a stream with one replica per node.
    async fn await_all_peers(&self) -> anyhow::Result<()> {
        let js = self.jetstream().await;
        let config = stream::Config {
            name: PROBE_STREAM.into(),
            subjects: vec!["harness.cluster.probe".into()],
            num_replicas: self.nodes.len(),
            storage: stream::StorageType::Memory,
            ..Default::default()
        };
        let last_error = Mutex::new(String::from("no attempt finished"));
        let formed = eventually(
            FORMATION_TIMEOUT,
            "the JetStream cluster to form",
            || async {
                let create = tokio::time::timeout(PROBE_TIMEOUT, js.create_stream(config.clone()));
                let error = match create.await {
                    Ok(Ok(_)) => return Ok(Some(())),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
                };
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
                Ok(None)
            },
        )
        .await;
        formed.with_context(|| {
            let error = last_error.lock().unwrap_or_else(|e| e.into_inner());
            format!(
                "creating a stream with {} replicas: {error}",
                self.nodes.len()
            )
        })?;
        js.delete_stream(PROBE_STREAM)
            .await
            .context("deleting the cluster probe stream")?;
        Ok(())
    }

    /// Adds the end of every node's log to an error.
    fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        self.nodes
            .iter()
            .fold(error, |error, node| node.process.explain(error))
    }

    /// The client URL of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// All client URLs joined by commas, the form of Herald's `--nats-url`. (async-nats
    /// itself does not split such a string: pass `urls()` to `async_nats::connect`.)
    pub fn client_url(&self) -> String {
        self.urls().join(",")
    }

    /// A client that knows every node and fails over between them. Panics if none is up.
    pub async fn client(&self) -> async_nats::Client {
        let urls = self.urls();
        async_nats::connect(urls.as_slice())
            .await
            .unwrap_or_else(|error| panic!("connecting to {urls:?}: {error}"))
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// The node that leads `stream` now (asked, not guessed: JetStream places leaders
    /// where it likes and moves them).
    pub async fn leader_of(&self, stream: &str) -> anyhow::Result<usize> {
        let mut stream = self.jetstream().await.get_stream(stream).await?;
        let info = stream.info().await?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .with_context(|| format!("stream {} has no leader", info.config.name))?;
        self.nodes
            .iter()
            .position(|node| node.name() == leader)
            .with_context(|| format!("the leader {leader} is none of this cluster's nodes"))
    }

    /// SIGKILL node `i`.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with its ports and store; returns once it has rejoined
    /// (JetStream answers through it).
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].restart().await
    }

    /// An outage of node `i` ([`NatsServer::outage`]).
    pub async fn node_outage(&mut self, i: usize, down: Duration) -> anyhow::Result<()> {
        self.nodes[i].outage(down).await
    }
}

//! A storm: seeded random changes to ToolHive objects of all four kinds (MCPServer,
//! MCPRemoteProxy, VirtualMCPServer, MCPServerEntry) in one or more clusters (creates,
//! updates, opt-outs and opt-ins, phase changes, registry moves, deletes), run while a
//! test injects a fault. The oracle then checks the result; the storm only counts.
//!
//! The randomness is a tiny xorshift with a printed seed, so a failing run can be
//! replayed with `HERALD_STORM_SEED`.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use herald_core::Kind;
use herald_core::annotations as ann;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::json;

use crate::objects;

/// xorshift64*: good enough to pick test operations, reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The seed from `HERALD_STORM_SEED`, else `default`; printed so a run can be replayed.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("HERALD_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("storm seed: {seed} (HERALD_STORM_SEED to replay)");
    seed
}

/// What a storm did.
#[derive(Debug, Default, Clone, Copy)]
pub struct StormStats {
    /// Creates per kind, in the order of [`Kind::ALL`].
    pub created_by_kind: [usize; 4],
    pub creates: usize,
    pub updates: usize,
    pub opt_outs: usize,
    pub opt_ins: usize,
    pub phase_changes: usize,
    pub moves: usize,
    pub deletes: usize,
    /// Operations the API server refused (conflicts); they change nothing.
    pub refused: usize,
}

impl StormStats {
    /// Changes the clusters accepted.
    pub fn changes(&self) -> usize {
        self.creates
            + self.updates
            + self.opt_outs
            + self.opt_ins
            + self.phase_changes
            + self.moves
            + self.deletes
    }
}

/// One cluster the storm writes to.
#[derive(Clone)]
pub struct StormTarget {
    pub cluster: String,
    pub client: kube::Client,
}

impl std::fmt::Debug for StormTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StormTarget")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Random changes to objects of `kinds` named `names` in `namespaces` of every target
/// cluster, labelled into `registries`.
pub struct Storm {
    rng: Rng,
    targets: Vec<StormTarget>,
    kinds: Vec<Kind>,
    namespaces: Vec<String>,
    names: Vec<String>,
    registries: Vec<String>,
    /// (target index, kind, namespace, name) of the objects that exist.
    existing: BTreeSet<(usize, Kind, String, String)>,
    pub stats: StormStats,
}

impl std::fmt::Debug for Storm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storm")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The name prefix of a kind's storm objects (MCPServers keep the bare `srv-N`).
fn prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::MCPServer => "",
        Kind::MCPRemoteProxy => "proxy-",
        Kind::VirtualMCPServer => "vmcp-",
        Kind::MCPServerEntry => "entry-",
    }
}

/// One `RELIABILITY` line on stderr: what a reliability test did (`figures`, e.g.
/// `requests=600 entries_compared=12`) and how long it took, for `docs/reliability.md`.
pub fn report(test: &str, figures: &str, started: std::time::Instant) {
    eprintln!(
        "RELIABILITY {test}: {figures} duration={:.1}s",
        started.elapsed().as_secs_f64()
    );
}

impl Storm {
    /// One `RELIABILITY` line on stderr: what a reliability test did, for
    /// `docs/reliability.md`.
    pub fn report(&self, test: &str, faults: usize, entries: usize, started: std::time::Instant) {
        eprintln!(
            "RELIABILITY {test}: changes={} faults={faults} entries_compared={entries} duration={:.1}s stats={:?}",
            self.stats.changes(),
            started.elapsed().as_secs_f64(),
            self.stats,
        );
    }

    pub fn new(
        seed: u64,
        targets: Vec<StormTarget>,
        namespaces: &[&str],
        names: usize,
        registries: &[&str],
    ) -> Self {
        Self {
            rng: Rng::new(seed),
            targets,
            kinds: Kind::ALL.to_vec(),
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            names: (0..names).map(|i| format!("srv-{i}")).collect(),
            registries: registries.iter().map(|s| (*s).to_owned()).collect(),
            existing: BTreeSet::new(),
            stats: StormStats::default(),
        }
    }

    /// Only objects of `kinds` from now on (all four by default).
    pub fn kinds(mut self, kinds: &[Kind]) -> Self {
        assert!(!kinds.is_empty(), "a storm needs a kind");
        self.kinds = kinds.to_vec();
        self
    }

    /// A storm over every cluster (its API server and its id), labelled into
    /// `registries`; seeded by `HERALD_STORM_SEED` or `default_seed`.
    pub fn over(
        default_seed: u64,
        kubes: &[crate::kube::KubeApi],
        clusters: &[String],
        registries: &[String],
        namespaces: &[&str],
        names: usize,
    ) -> Self {
        let targets = kubes
            .iter()
            .zip(clusters)
            .map(|(kube, cluster)| StormTarget {
                cluster: cluster.clone(),
                client: kube.client(),
            })
            .collect();
        let registries: Vec<&str> = registries.iter().map(String::as_str).collect();
        Self::new(seed(default_seed), targets, namespaces, names, &registries)
    }

    fn api(&self, target: usize, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        let resource: ApiResource = objects::resource(kind);
        Api::namespaced_with(self.targets[target].client.clone(), namespace, &resource)
    }

    /// One random operation.
    pub async fn step(&mut self) -> anyhow::Result<()> {
        let t = self.rng.below(self.targets.len());
        let kind = *self.rng.pick(&self.kinds);
        let ns = self.rng.pick(&self.namespaces).clone();
        // Names distinct per kind, so each object is a server of its own.
        let name = format!("{}{}", prefix(kind), self.rng.pick(&self.names));
        let key = (t, kind, ns.clone(), name.clone());
        let api = self.api(t, kind, &ns);
        if !self.existing.contains(&key) {
            let registry = self.rng.pick(&self.registries).clone();
            let cluster = &self.targets[t].cluster;
            let resource = objects::resource(kind);
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": format!("{}/{}", resource.group, resource.version),
                "kind": kind.as_str(),
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": { ann::REGISTRY_NAME: registry },
                    "annotations": {
                        ann::REGISTRY_EXPORT: "true",
                        ann::REGISTRY_DESCRIPTION: format!("{name} in {ns}"),
                        ann::REGISTRY_URL: format!("https://{name}.{ns}.{cluster}.example/mcp"),
                    },
                },
                "spec": {},
            }))?;
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {
                    self.existing.insert(key);
                    self.stats.creates += 1;
                    let k = Kind::ALL
                        .iter()
                        .position(|k| *k == kind)
                        .unwrap_or_default();
                    self.stats.created_by_kind[k] += 1;
                    objects::set_status(&api, &name, json!({ "phase": "Running" })).await?;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    self.existing.insert(key);
                    self.stats.refused += 1;
                }
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        let roll = self.rng.below(100);
        let patch = match roll {
            0..30 => {
                self.stats.updates += 1;
                let n = self.rng.next_u64() % 1000;
                json!({"metadata": {"annotations": {
                    ann::REGISTRY_DESCRIPTION: format!("{name} in {ns}, revision {n}")
                }}})
            }
            30..40 => {
                self.stats.opt_outs += 1;
                json!({"metadata": {"annotations": { ann::REGISTRY_EXPORT: "false" }}})
            }
            40..52 => {
                self.stats.opt_ins += 1;
                json!({"metadata": {"annotations": { ann::REGISTRY_EXPORT: "true" }}})
            }
            52..62 => {
                let phase = *self.rng.pick(&["Running", "Failed", "Pending", "Ready"]);
                self.stats.phase_changes += 1;
                objects::set_status(&api, &name, json!({ "phase": phase })).await?;
                return Ok(());
            }
            62..78 => {
                self.stats.moves += 1;
                let registry = self.rng.pick(&self.registries).clone();
                json!({"metadata": {"labels": { ann::REGISTRY_NAME: registry }}})
            }
            _ => {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => self.stats.deletes += 1,
                    Err(kube::Error::Api(e)) if e.code == 404 => self.stats.refused += 1,
                    Err(e) => return Err(e.into()),
                }
                self.existing.remove(&key);
                return Ok(());
            }
        };
        objects::merge(&api, &name, patch).await?;
        Ok(())
    }

    /// Runs `ops` operations, `pace` apart.
    pub async fn run(&mut self, ops: usize, pace: Duration) -> anyhow::Result<()> {
        for _ in 0..ops {
            self.step().await?;
            tokio::time::sleep(pace).await;
        }
        Ok(())
    }

    /// Runs operations `pace` apart until `fault` completes (an operation in flight is
    /// finished, never cancelled), and returns what `fault` returned.
    pub async fn during<T>(
        &mut self,
        pace: Duration,
        fault: impl Future<Output = T>,
    ) -> anyhow::Result<T> {
        let done = Cell::new(false);
        let fault = async {
            let out = fault.await;
            done.set(true);
            out
        };
        let storm = async {
            while !done.get() {
                self.step().await?;
                tokio::time::sleep(pace).await;
            }
            anyhow::Ok(())
        };
        let (out, storm) = tokio::join!(fault, storm);
        storm?;
        Ok(out)
    }
}

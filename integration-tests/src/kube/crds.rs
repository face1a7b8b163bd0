//! Installing CRDs into the test API server: the ToolHive ones of `deploy/crds/`
//! and the test-only stand-ins of `integration-tests/kube/`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions::is_crd_established};
use serde::Deserialize as _;

use crate::timeout::within;

const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

/// Every CRD in the `*.yaml` files of `dir` (several documents per file allowed).
pub(super) fn read_dir(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {} (run scripts/test-deps)", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "yaml"));
    files.sort();
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            // Skips other documents, such as `kustomization.yaml`.
            if value["kind"].as_str() == Some("CustomResourceDefinition") {
                let crd = serde_yaml_ng::from_value(value)
                    .with_context(|| format!("reading a CRD from {}", file.display()))?;
                crds.push(crd);
            }
        }
    }
    ensure!(!crds.is_empty(), "no CRDs in {}", dir.display());
    Ok(crds)
}

/// Creates the CRDs and waits until the API server serves each of them.
pub(super) async fn install(
    client: &kube::Client,
    crds: Vec<CustomResourceDefinition>,
) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        api.create(&PostParams::default(), crd)
            .await
            .with_context(|| {
                format!(
                    "creating CRD {}",
                    crd.metadata.name.as_deref().unwrap_or("?")
                )
            })?;
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let established = await_condition(api.clone(), &name, is_crd_established());
        within(
            ESTABLISHED_TIMEOUT,
            &format!("CRD {name} to be established"),
            established,
        )
        .await??;
    }
    Ok(())
}

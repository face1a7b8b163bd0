//! Where the real servers and Herald's own binaries are found.
//!
//! `scripts/test-deps` installs `nats-server`, `etcd`, `kube-apiserver`, `helm`,
//! `promtool`, `kubernetes-validate` and `hadolint` into
//! `$HERALD_TOOLS_DIR/bin`, by default `${XDG_CACHE_HOME:-$HOME/.cache}/herald-tools/bin`,
//! and the test OpenID provider's npm packages into `$HERALD_TOOLS_DIR/oidc-provider`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The folder of test tools. Each accessor checks that its binary is installed.
#[derive(Debug, Clone)]
pub struct Tools {
    root: PathBuf,
    bin: PathBuf,
}

impl Tools {
    /// Finds the tools folder; fails with a hint to run `scripts/test-deps`.
    pub fn locate() -> anyhow::Result<Self> {
        let root = match std::env::var_os("HERALD_TOOLS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
                .context("neither HERALD_TOOLS_DIR, XDG_CACHE_HOME nor HOME is set")?
                .join("herald-tools"),
        };
        let bin = root.join("bin");
        if !bin.is_dir() {
            bail!("{} does not exist: run scripts/test-deps", bin.display());
        }
        Ok(Self { root, bin })
    }

    /// The npm packages of the test OpenID provider (`integration-tests/oidc`),
    /// installed by `scripts/test-deps` with `npm ci`.
    pub fn oidc_provider_modules(&self) -> anyhow::Result<PathBuf> {
        let modules = self.root.join("oidc-provider").join("node_modules");
        if !modules.join("oidc-provider").join("package.json").is_file() {
            bail!(
                "{} has no oidc-provider: run scripts/test-deps",
                modules.display()
            );
        }
        Ok(modules)
    }

    pub fn nats_server(&self) -> anyhow::Result<PathBuf> {
        self.binary("nats-server")
    }

    pub fn etcd(&self) -> anyhow::Result<PathBuf> {
        self.binary("etcd")
    }

    pub fn kube_apiserver(&self) -> anyhow::Result<PathBuf> {
        self.binary("kube-apiserver")
    }

    /// Helm 4 (`helm lint`, `helm template` of deploy/helm/herald).
    pub fn helm(&self) -> anyhow::Result<PathBuf> {
        self.binary("helm")
    }

    /// Prometheus' promtool (`check rules`, `test rules`, `check metrics`).
    pub fn promtool(&self) -> anyhow::Result<PathBuf> {
        self.binary("promtool")
    }

    /// Kubernetes' OpenAPI schemas, offline.
    pub fn kubernetes_validate(&self) -> anyhow::Result<PathBuf> {
        self.binary("kubernetes-validate")
    }

    /// The Containerfile linter.
    pub fn hadolint(&self) -> anyhow::Result<PathBuf> {
        self.binary("hadolint")
    }

    fn binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin.join(name);
        if !path.is_file() {
            bail!("{} is missing: run scripts/test-deps", path.display());
        }
        Ok(path)
    }
}

/// The workspace root (the folder of the root Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests lives inside the workspace")
        .to_path_buf()
}

/// A workspace binary such as `herald-watcher`, next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
///
/// Cargo builds only this package's own binaries for its tests, so the others must be
/// built first (`cargo build --workspace --bins`); panics with that hint when missing.
pub fn herald_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe.parent().expect("test executable has a folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

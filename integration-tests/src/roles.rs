//! The NATS roles of `deploy/nats/permissions.conf` for tests that run Herald with them:
//! a fresh nkey per user ([`RoleKeys`], seeds in files for `--nats-nkey`) and the shipped
//! file with the sample public keys replaced by the test's ([`render_permissions`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use nkeys::KeyPair;

use crate::tools::workspace_root;

/// The users of permissions.conf, by the permissions variable each one uses.
pub const PROJECTOR: &str = "PROJECTOR";
pub const API: &str = "API";
pub const IMPORTER: &str = "IMPORTER_OFFICIAL";
pub const CLUSTER_A: &str = "CLUSTER_A";
pub const CLUSTER_B: &str = "CLUSTER_B";
pub const ROLES: [&str; 5] = [PROJECTOR, API, IMPORTER, CLUSTER_A, CLUSTER_B];

/// A file of `deploy/nats`.
pub fn deploy_nats(file: &str) -> anyhow::Result<String> {
    let path = workspace_root().join("deploy/nats").join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `config` without its `tls { … }` blocks: they name certificate files that exist
/// only in a real deployment, and `nats-server -t` loads them.
pub fn without_tls(config: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for line in config.lines() {
        let code = line.split('#').next().unwrap_or_default();
        if depth == 0 && code.trim_start().starts_with("tls {") {
            depth = 1;
        } else if depth > 0 {
            depth += code.matches('{').count();
            depth -= code.matches('}').count();
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One key pair per role (and per extra name the test needs), the seeds in files in a
/// folder of the test.
#[derive(Debug)]
pub struct RoleKeys {
    pairs: BTreeMap<&'static str, KeyPair>,
    dir: PathBuf,
}

impl RoleKeys {
    /// Keys for every role of [`ROLES`] and for `extra` names, seeds written to `dir`.
    pub fn new(dir: &Path, extra: &[&'static str]) -> anyhow::Result<Self> {
        let mut pairs = BTreeMap::new();
        for role in ROLES.iter().chain(extra) {
            let pair = KeyPair::new_user();
            std::fs::write(dir.join(format!("{role}.seed")), pair.seed()?)?;
            pairs.insert(*role, pair);
        }
        Ok(Self {
            pairs,
            dir: dir.to_owned(),
        })
    }

    pub fn public(&self, role: &str) -> String {
        self.pairs[role].public_key()
    }

    pub fn seed(&self, role: &str) -> anyhow::Result<String> {
        Ok(self.pairs[role].seed()?)
    }

    /// The file holding `role`'s seed.
    pub fn seed_file(&self, role: &str) -> String {
        self.dir
            .join(format!("{role}.seed"))
            .to_string_lossy()
            .into_owned()
    }

    /// `--nats-nkey <seed file>` for a Herald binary of `role`.
    pub fn nkey_flag(&self, role: &str) -> [String; 2] {
        ["--nats-nkey".to_owned(), self.seed_file(role)]
    }
}

/// deploy/nats/permissions.conf with the test's public keys, plus a user `admin` without
/// limits that clients without credentials get (the harness's readiness probe, and the
/// test's own look at the stream). Every user with permissions must be one of [`ROLES`].
pub fn render_permissions(keys: &RoleKeys) -> anyhow::Result<String> {
    let text = deploy_nats("permissions.conf")?;
    let mut seen = Vec::new();
    let (mut in_herald, mut admin) = (false, false);
    let mut out = String::from("no_auth_user: admin\n");
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let user = code
            .split_once("nkey = ")
            .zip(code.split_once("permissions = $"));
        let line = match user {
            Some(((_, key), (_, var))) => {
                let key = key.split(',').next().unwrap_or_default().trim();
                let var = var.trim_end_matches(|c: char| c == '}' || c.is_whitespace());
                let role = var
                    .strip_suffix("_PERMISSIONS")
                    .and_then(|r| ROLES.into_iter().find(|known| *known == r))
                    .with_context(|| {
                        format!(
                            "permissions.conf has a user with ${var}, which this test does not know"
                        )
                    })?;
                seen.push(role);
                line.replace(key, &keys.public(role))
            }
            None => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
        let code = code.trim_start();
        in_herald |= code.starts_with("HERALD {");
        if in_herald && !admin && code.starts_with("users = [") {
            out.push_str("      { user: admin, password: admin }\n");
            admin = true;
        }
    }
    ensure!(admin, "permissions.conf has no users in an account HERALD");
    seen.sort_unstable();
    let mut all = ROLES.to_vec();
    all.sort_unstable();
    ensure!(
        seen == all,
        "permissions.conf users {seen:?}, expected {all:?}"
    );
    Ok(out)
}

//! Scratch folders for servers: store, config and logs of one server live in one folder,
//! which is deleted when the test passes and kept (its path printed) when it panics or
//! when `HERALD_KEEP_TEST_DIRS` is set.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Set this environment variable to keep every test folder, e.g. to read the logs of a
/// test that returned an error instead of panicking.
pub const KEEP_ENV: &str = "HERALD_KEEP_TEST_DIRS";

/// A temporary folder that survives a failing test so its logs and data can be inspected.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `herald-<prefix>-XXXXXX` under the system temp folder.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        // Every test makes a folder before its HTTP clients: reqwest's TLS needs
        // rustls' process provider installed first (herald_runtime::tls).
        herald_runtime::tls::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix(&format!("herald-{prefix}-"))
            .tempdir()?;
        let path = dir.path().to_path_buf();
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some();
        if keep && let Some(dir) = self.dir.take() {
            eprintln!("kept test folder {}", dir.keep().display());
        }
    }
}

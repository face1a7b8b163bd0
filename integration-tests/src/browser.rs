//! A headless Chromium driven over WebDriver (plain HTTP to `chromedriver`, both from
//! Debian's `chromium` and `chromium-driver`, or `HERALD_CHROMIUM` / `HERALD_CHROMEDRIVER`):
//! the registry page's tests load it as a person would and read what it shows.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::dir::TestDir;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::timeout::{eventually, within};

/// Starting chromedriver and a browser session.
const START: Duration = Duration::from_secs(60);
/// One navigation, script or wait.
const STEP: Duration = Duration::from_secs(15);

/// A program from `env` (a path) or else from `PATH`.
fn locate(env: &str, program: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(path.into());
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{program} not found: set {env} or install it (scripts/test-deps)")
        })
}

/// A headless Chromium driven over WebDriver (plain HTTP to chromedriver).
#[derive(Debug)]
pub struct Browser {
    _driver: ChildProcess,
    http: reqwest::Client,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with a fresh profile in `dir`.
    pub async fn start(dir: &TestDir) -> anyhow::Result<Self> {
        let chromium = locate("HERALD_CHROMIUM", "chromium")?;
        let chromedriver = locate("HERALD_CHROMEDRIVER", "chromedriver")?;
        let port = free_port();
        let mut command = std::process::Command::new(chromedriver);
        command.arg(format!("--port={port}"));
        let driver = ChildProcess::spawn("chromedriver", command, &dir.join("chromedriver.log"))?;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually(START, "chromedriver", || async {
            Ok(http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|_| ()))
        })
        .await?;
        let profile = dir.join("chromium-profile");
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.display())],
            }
        }}});
        let created: Value = within(
            START,
            "a browser session",
            http.post(format!("{base}/session"))
                .json(&capabilities)
                .send(),
        )
        .await??
        .json()
        .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {created}"))?;
        Ok(Self {
            _driver: driver,
            http,
            session: format!("{base}/session/{session}"),
        })
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        let r = within(
            STEP,
            "navigation",
            self.http
                .post(format!("{}/url", self.session))
                .json(&serde_json::json!({"url": url}))
                .send(),
        )
        .await??;
        ensure!(r.status().is_success(), "navigate: {}", r.text().await?);
        Ok(())
    }

    /// The value a script (the body of a function) returns.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        let body = serde_json::json!({"script": script, "args": []});
        let r: Value = within(
            STEP,
            "a script",
            self.http
                .post(format!("{}/execute/sync", self.session))
                .json(&body)
                .send(),
        )
        .await??
        .json()
        .await?;
        Ok(r["value"].clone())
    }

    /// Waits until `script` returns `expected`.
    pub async fn until(&self, script: &str, expected: Value) -> anyhow::Result<()> {
        let last = std::sync::Mutex::new(Value::Null);
        let result = eventually(STEP, script, || async {
            let value = self.eval(script).await?;
            let done = value == expected;
            *last.lock().unwrap_or_else(|e| e.into_inner()) = value;
            Ok(done.then_some(()))
        })
        .await;
        let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        result.with_context(|| format!("{script} stayed {last}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session so chromedriver stops Chromium (which would outlive a
        // killed driver). A fresh client and runtime: the test's may be gone.
        let session = self.session.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let http = reqwest::Client::new();
                let _ = tokio::time::timeout(Duration::from_secs(10), http.delete(session).send())
                    .await;
            });
        })
        .join();
    }
}

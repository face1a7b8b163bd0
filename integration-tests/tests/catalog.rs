//! Catalog sources end to end: a real nats-server, the real `herald-projector`,
//! catalog importer (`herald::CATALOG_SYNC`) and `herald-api` binaries, and a small
//! HTTP server in the test that serves the official examples in the official paged
//! format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use async_nats::jetstream;
use chrono::{TimeZone as _, Utc};
use herald_core::record::{DeploymentRecord, Phase, RECORD_VERSION, Remote, RemoteTransport};
use herald_core::{Event, EventData, Kind, ObjectRef, WithdrawReason};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::events;
use herald_integration_tests::herald::{Herald, projector_ops};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::{eventually, within};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);
/// Entries per page of the test's registry server: several pages for 23 entries.
const PAGE: usize = 5;

// ---------------------------------------------------------------- the examples

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/registry/server-json-examples")
}

fn documents(folder: &str) -> anyhow::Result<Vec<Value>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir().join(folder))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    paths
        .iter()
        .map(|p| Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?))
        .collect()
}

/// Valid and docs examples with the invalid ones mixed in between.
/// (name, version) pairs.
type Listed = BTreeSet<(String, String)>;

fn mixed_examples() -> anyhow::Result<(Vec<Value>, Listed)> {
    let valid: Vec<Value> = documents("valid")?
        .into_iter()
        .chain(documents("docs-generic-server-json")?)
        .collect();
    let expected = valid.iter().map(name_version).collect();
    let mut mixed = Vec::new();
    let mut invalid = documents("invalid")?.into_iter();
    for (i, doc) in valid.into_iter().enumerate() {
        if i % 4 == 1
            && let Some(bad) = invalid.next()
        {
            mixed.push(bad);
        }
        mixed.push(doc);
    }
    mixed.extend(invalid);
    Ok((mixed, expected))
}

fn name_version(doc: &Value) -> (String, String) {
    (
        doc["name"].as_str().unwrap_or_default().to_owned(),
        doc["version"].as_str().unwrap_or_default().to_owned(),
    )
}

fn official_list(docs: &[Value]) -> Value {
    json!({
        "servers": docs.iter().map(|d| json!({"server": d})).collect::<Vec<_>>(),
        "metadata": {"count": docs.len()},
    })
}

// ---------------------------------------------------------------- a registry server

/// A registry API serving `entries` as `GET /v0.1/servers`, `PAGE` per page.
#[derive(Debug, Default)]
struct Upstream {
    entries: Mutex<Vec<Value>>,
    down: AtomicBool,
    requests: Mutex<Vec<String>>,
}

impl Upstream {
    async fn start(entries: Vec<Value>) -> anyhow::Result<(Arc<Upstream>, String)> {
        let upstream = Arc::new(Upstream {
            entries: Mutex::new(entries),
            ..Upstream::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = upstream.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body) = state.answer(&target);
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok((upstream, base))
    }

    fn answer(&self, target: &str) -> (&'static str, String) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target.to_owned());
        if self.down.load(Ordering::SeqCst) {
            return ("503 Service Unavailable", "{}".to_owned());
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != "/v0.1/servers" {
            return ("404 Not Found", "{}".to_owned());
        }
        let cursor: usize = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("cursor="))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let page: Vec<Value> = entries
            .iter()
            .skip(cursor)
            .take(PAGE)
            .map(|d| json!({"server": d, "_meta": {"io.example/source": {"page": cursor / PAGE}}}))
            .collect();
        let mut metadata = json!({"count": page.len()});
        if cursor + PAGE < entries.len() {
            metadata["nextCursor"] = json!((cursor + PAGE).to_string());
        }
        (
            "200 OK",
            json!({"servers": page, "metadata": metadata}).to_string(),
        )
    }

    fn pages_served(&self) -> usize {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

// ---------------------------------------------------------------- Herald

/// A projector and an API on one nats-server, no cluster.
struct Pipeline {
    stack: Stack,
    base: String,
    http: reqwest::Client,
}

impl Pipeline {
    async fn start() -> anyhow::Result<Self> {
        // The deployments these tests publish use the catalog's name, which their
        // namespace owns only by a grant.
        let stack = Stack::builder("catalog")
            .clusters(&[])
            .projector_flags(&["--grant-name", "io.github.user/*=tools"])
            .build()
            .await?;
        Ok(Self {
            base: stack.api().base().to_owned(),
            stack,
            http: reqwest::Client::new(),
        })
    }

    fn dir(&self) -> &TestDir {
        &self.stack.dir
    }

    /// The catalog importer with `args`, logging into this pipeline's folder.
    fn sync_command(&self, args: &[&str]) -> Herald {
        Herald::catalog_sync(&self.stack.nats.url())
            .dir(self.stack.dir.path())
            .args(args)
    }

    /// The catalog importer reading registry `base` as source `web` every `interval`,
    /// listing all of it every `full_every`-th time; it runs until the test ends it.
    fn sync_every(&self, base: &str, interval: &str, full_every: &str) -> Herald {
        let flags = ["--source-id", "web", "--url", base, "--interval", interval];
        self.sync_command(&flags)
            .args(["--full-sync-every", full_every])
            .log_name("sync.log")
    }

    /// The catalog importer once; returns its log (stderr).
    async fn sync(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.sync_command(args).output(STEP).await?.success()?;
        Ok(out.stderr)
    }

    /// Imports the valid examples from a file: source `files`, registry `default`.
    async fn import_valid_examples(&self) -> anyhow::Result<()> {
        self.import_file(&documents("valid")?).await?;
        Ok(())
    }

    /// Imports `docs` (an official list) from a file: source `files`, registry
    /// `default`; returns the importer's log.
    async fn import_file(&self, docs: &[Value]) -> anyhow::Result<String> {
        let file = self.dir().join("catalog.json");
        std::fs::write(&file, official_list(docs).to_string())?;
        self.sync(&["--source-id", "files", "--file", &file.to_string_lossy()])
            .await
    }

    /// Imports `docs` from a registry API serving them in pages: source `web`, registry
    /// `web`; returns that API.
    async fn import_http(&self, docs: &[Value]) -> anyhow::Result<Arc<Upstream>> {
        let (upstream, base) = Upstream::start(docs.to_vec()).await?;
        self.sync(&["--source-id", "web", "--registry", "web", "--url", &base])
            .await?;
        Ok(upstream)
    }

    /// Runs an ops subcommand to completion; returns (exit code, stdout).
    async fn ops(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        projector_ops(&self.stack.nats.url(), args, STEP).await
    }

    /// Reads an SSE stream until its text contains `needle`.
    async fn first_sse_bytes(&self, path: &str, needle: &str) -> anyhow::Result<String> {
        use futures::StreamExt as _;
        let response = within(
            STEP,
            path,
            self.http
                .get(format!("{}{path}", self.base))
                .header("accept", "text/event-stream")
                .send(),
        )
        .await??;
        ensure!(
            response.status() == StatusCode::OK,
            "{path}: {}",
            response.status()
        );
        let mut body = response.bytes_stream();
        let mut text = String::new();
        within(STEP, "the SSE snapshot", async {
            while !text.contains(needle) {
                match body.next().await {
                    Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk?)),
                    None => break,
                }
            }
            Ok::<_, anyhow::Error>(())
        })
        .await??;
        Ok(text)
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let response = within(
            STEP,
            path,
            self.http.get(format!("{}{path}", self.base)).send(),
        )
        .await??;
        ensure!(
            response.status() == StatusCode::OK,
            "{path}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Waits until `path` lists exactly `expected` (name, version) pairs.
    async fn until_listed(
        &self,
        path: &str,
        expected: &BTreeSet<(String, String)>,
    ) -> anyhow::Result<BTreeMap<(String, String), Value>> {
        let result = eventually(STEP, path, || async {
            let Ok(list) = self.json(path).await else {
                return Ok(None);
            };
            let entries: BTreeMap<(String, String), Value> = list["servers"]
                .as_array()
                .context("servers")?
                .iter()
                .map(|e| (name_version(&e["server"]), e.clone()))
                .collect();
            Ok(entries.keys().eq(expected.iter()).then_some(entries))
        })
        .await;
        match result {
            Ok(entries) => Ok(entries),
            Err(err) => {
                let last = self.json(path).await.unwrap_or(Value::Null);
                Err(err.context(format!("{path} served {last}, expected {expected:?}")))
            }
        }
    }

    /// The (name, version) of each entry `path` lists, in order.
    async fn listed(&self, path: &str) -> anyhow::Result<Vec<(String, String)>> {
        let list = self.json(path).await?;
        let servers = list["servers"].as_array().context("servers")?;
        Ok(servers.iter().map(|e| name_version(&e["server"])).collect())
    }

    /// Publishes `record` applied, as a watcher would.
    async fn apply(&self, record: &DeploymentRecord) -> anyhow::Result<()> {
        let applied = EventData::Applied(Box::new(record.clone()));
        self.publish(&Event::new(applied, Utc::now())).await
    }

    /// Waits until io.github.user/remote-weather 2.1.0 has `remotes` remotes; the entry.
    async fn remote_weather_with(&self, remotes: usize, what: &str) -> anyhow::Result<Value> {
        eventually(STEP, what, || async {
            let entry = self
                .json("/v0.1/servers/io.github.user%2Fremote-weather/versions/2.1.0")
                .await?;
            Ok((remote_urls(&entry).len() == remotes).then_some(entry))
        })
        .await
    }

    async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        let js = jetstream::new(self.stack.nats.client().await);
        within(STEP, "publish", events::publish(&js, event)).await??;
        Ok(())
    }
}

/// The (name, version) of the three valid examples.
fn valid_examples() -> Listed {
    set(&[
        ("io.github.user/weather", "1.0.2"),
        ("io.github.user/local-weather", "1.0.0"),
        ("io.github.user/remote-weather", "2.1.0"),
    ])
}

fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn deployment(server: &str, version: &str, url: &str) -> anyhow::Result<DeploymentRecord> {
    let at = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .context("date")?;
    Ok(DeploymentRecord {
        v: RECORD_VERSION,
        cluster: "eu-1".parse()?,
        registry: "default".parse()?,
        object: ObjectRef::new(Kind::MCPServer, "tools", "weather").map_err(anyhow::Error::msg)?,
        uid: "uid-weather".into(),
        resource_version: "1".into(),
        generation: Some(1),
        created_at: Some(at),
        observed_at: at,
        changed_at: None,
        epoch: 1,
        server_name: server.parse()?,
        version: version.into(),
        description: "Deployed weather".into(),
        title: None,
        icon: None,
        category: None,
        tools: vec![],
        remote: Remote {
            transport: RemoteTransport::StreamableHttp,
            url: url.into(),
            headers: vec![],
            extra: Default::default(),
        },
        phase: Phase::Ready,
        image: None,
        transport: "streamable-http".into(),
        group: None,
        tool_definitions: Vec::new(),
        authz_claims: None,
        package: None,
    })
}

fn remote_urls(entry: &Value) -> Vec<String> {
    entry["server"]["remotes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["url"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_file_import_skips_invalid_entries_and_imports_the_rest() -> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    let (mixed, expected) = mixed_examples()?;
    assert_eq!(expected.len(), 18, "3 valid and 15 docs examples");

    // From a file, into the default registry.
    let log = herald.import_file(&mixed).await?;
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("skipping catalog entry"))
        .collect();
    assert_eq!(skipped.len(), 5, "{log}");
    assert_eq!(
        skipped
            .iter()
            .filter(|l| l.contains("reason=\"invalid\"") || l.contains("reason=invalid"))
            .count(),
        3,
        "bad name, long description, missing name: {log}"
    );
    assert_eq!(
        skipped
            .iter()
            .filter(|l| l.contains("reason=\"schema\"") || l.contains("reason=schema"))
            .count(),
        2,
        "package version latest, positional argument without value: {log}"
    );
    let entries = herald
        .until_listed("/v0.1/servers?limit=100", &expected)
        .await?;
    let remote = &entries[&(
        "io.github.user/remote-weather".to_owned(),
        "2.1.0".to_owned(),
    )];
    assert_eq!(
        remote["_meta"]["dev.herald"]["catalogs"][0]["source"],
        "files"
    );
    assert_eq!(remote["_meta"]["dev.herald"]["deployments"], json!([]));
    // Nothing is deployed.
    let deployed = herald.json("/v0.1/servers/deployed").await?;
    assert_eq!(deployed["servers"], json!([]));
    Ok(())
}

#[tokio::test]
async fn a_paged_http_import_fills_another_registry_and_keeps_source_meta_and_packages()
-> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    let (mixed, expected) = mixed_examples()?;
    // Over HTTP, several pages, into another registry.
    let upstream = herald.import_http(&mixed).await?;
    assert_eq!(upstream.pages_served(), mixed.len().div_ceil(PAGE));
    let entries = herald
        .until_listed("/registry/web/v0.1/servers?limit=100", &expected)
        .await?;
    // The source's `_meta` beside each entry is kept.
    assert!(
        entries
            .values()
            .all(|e| e["_meta"]["io.example/source"]["page"].is_u64())
    );
    // Packages and repository of the catalog survive the merge.
    let with_package = &entries[&(
        "io.github.user/local-weather".to_owned(),
        "1.0.0".to_owned(),
    )];
    let original = documents("valid")?
        .into_iter()
        .find(|d| d["name"] == "io.github.user/local-weather")
        .context("with-package example")?;
    assert_eq!(with_package["server"]["packages"], original["packages"]);
    Ok(())
}

/// How [`served_mixed_examples`] imports.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// [`Pipeline::import_file`], into `default`.
    File,
    /// [`Pipeline::import_http`], into `web`.
    Http,
}

/// A pipeline that imported the mixed examples from each of `sources` and serves them;
/// the (name, version) of what it serves in each registry.
async fn served_mixed_examples(sources: &[Source]) -> anyhow::Result<(Pipeline, Listed)> {
    let herald = Pipeline::start().await?;
    let (mixed, expected) = mixed_examples()?;
    for source in sources {
        let list = match source {
            Source::File => {
                herald.import_file(&mixed).await?;
                "/v0.1/servers?limit=100"
            }
            Source::Http => {
                herald.import_http(&mixed).await?;
                "/registry/web/v0.1/servers?limit=100"
            }
        };
        herald.until_listed(list, &expected).await?;
    }
    Ok((herald, expected))
}

#[tokio::test]
async fn events_shows_imported_catalog_events_and_replay_rebuilds_the_same_buckets()
-> anyhow::Result<()> {
    let (herald, expected) = served_mixed_examples(&[Source::File, Source::Http]).await?;
    let (code, out) = herald.ops(&["events", "--type", "catalog.applied"]).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("catalog.applied"))
            .count(),
        2 * expected.len(),
        "{out}"
    );
    assert!(
        out.contains("catalog:files") && out.contains("catalog:web"),
        "{out}"
    );
    let (code, out) = herald.ops(&["replay", "--check"]).await?;
    assert_eq!(code, 0, "replay finds no difference: {out}");
    Ok(())
}

#[tokio::test]
async fn the_feed_snapshot_carries_imported_entries() -> anyhow::Result<()> {
    let (herald, _) = served_mixed_examples(&[Source::Http]).await?;
    let feed = herald
        .first_sse_bytes("/registry/web/v0.1/x/dev.herald/events", "local-weather")
        .await?;
    assert!(feed.contains("io.github.user/local-weather"), "{feed}");
    Ok(())
}

#[tokio::test]
async fn importing_an_unchanged_file_again_publishes_nothing() -> anyhow::Result<()> {
    let (herald, _) = served_mixed_examples(&[Source::File]).await?;
    let log = herald.import_file(&mixed_examples()?.0).await?;
    assert!(log.contains("applied=0"), "{log}");
    Ok(())
}

#[tokio::test]
async fn toolhive_registry_json_imports_images_and_remotes() -> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/toolhive-registry.json");
    let fixture = fixture.to_string_lossy().into_owned();
    let log = herald
        .sync(&[
            "--source-id",
            "toolhive",
            "--file",
            &fixture,
            "--format",
            "toolhive",
        ])
        .await?;
    assert!(
        log.contains("too-wordy"),
        "the invalid entry is named: {log}"
    );
    let names = [
        "io.github.stacklok/fetch",
        "io.github.stacklok/github",
        "io.github.stacklok/notion-remote",
        "io.github.stacklok/stripe-remote",
    ];
    let entries = eventually(STEP, "the ToolHive entries", || async {
        let Ok(list) = herald.json("/v0.1/servers").await else {
            return Ok(None);
        };
        let entries: BTreeMap<String, Value> = list["servers"]
            .as_array()
            .context("servers")?
            .iter()
            .filter_map(|e| Some((e["server"]["name"].as_str()?.to_owned(), e.clone())))
            .collect();
        Ok(entries.keys().eq(names.iter()).then_some(entries))
    })
    .await?;
    let notion = &entries["io.github.stacklok/notion-remote"];
    assert_eq!(remote_urls(notion), ["https://mcp.notion.com/mcp"]);
    assert_eq!(notion["server"]["remotes"][0]["type"], "streamable-http");
    let fetch = &entries["io.github.stacklok/fetch"];
    assert_eq!(fetch["server"]["packages"][0]["registryType"], "oci");
    assert_eq!(remote_urls(fetch), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn a_deployment_merges_into_its_catalog_entry_and_out_again() -> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    herald.import_valid_examples().await?;
    let catalog_only = valid_examples();
    let before = herald.until_listed("/v0.1/servers", &catalog_only).await?;
    let key = (
        "io.github.user/remote-weather".to_owned(),
        "2.1.0".to_owned(),
    );
    let catalog_remotes = remote_urls(&before[&key]);
    assert_eq!(catalog_remotes.len(), 1);

    // A deployment of the catalog's version: one entry, both remotes.
    let deployed_url = "https://weather.eu-1.example.com/mcp";
    let record = deployment("io.github.user/remote-weather", "2.1.0", deployed_url)?;
    herald.apply(&record).await?;
    let merged = herald
        .remote_weather_with(2, "the deployment merged")
        .await?;
    let mut expected_remotes = catalog_remotes.clone();
    expected_remotes.push(deployed_url.to_owned());
    assert_eq!(remote_urls(&merged), expected_remotes);
    // The catalog's metadata wins; Herald's _meta names the live remote.
    assert_eq!(
        merged["server"]["description"],
        before[&key]["server"]["description"]
    );
    let deployments = &merged["_meta"]["dev.herald"]["deployments"];
    assert_eq!(deployments.as_array().map(Vec::len), Some(1));
    assert_eq!(deployments[0]["url"], deployed_url);
    assert_eq!(
        merged["_meta"]["dev.herald"]["catalogs"][0]["source"],
        "files"
    );
    let deployed = herald.listed("/v0.1/servers/deployed").await?;
    assert_eq!(deployed, std::slice::from_ref(&key));

    // A deployment of a version the catalog lacks is its own, latest entry.
    let mut newer = deployment("io.github.user/remote-weather", "3.0.0", deployed_url)?;
    newer.object =
        ObjectRef::new(Kind::MCPServer, "tools", "weather-3").map_err(anyhow::Error::msg)?;
    newer.uid = "uid-weather-3".into();
    herald.apply(&newer).await?;
    let mut with_newer = catalog_only.clone();
    with_newer.insert((
        "io.github.user/remote-weather".to_owned(),
        "3.0.0".to_owned(),
    ));
    let entries = herald.until_listed("/v0.1/servers", &with_newer).await?;
    let latest = |v: &str| {
        entries[&("io.github.user/remote-weather".to_owned(), v.to_owned())]["_meta"]
            ["io.modelcontextprotocol.registry/official"]["isLatest"]
            .clone()
    };
    assert_eq!(latest("3.0.0"), json!(true));
    assert_eq!(latest("2.1.0"), json!(false));

    // Withdrawn: the catalog entry is as it was.
    let withdrawal = events::withdrawal(&record, "2", WithdrawReason::Deleted);
    herald
        .publish(&Event::new(EventData::Withdrawn(withdrawal), Utc::now()))
        .await?;
    let after = herald
        .remote_weather_with(1, "the deployment merged out")
        .await?;
    assert_eq!(remote_urls(&after), catalog_remotes);
    assert_eq!(after["_meta"]["dev.herald"]["deployments"], json!([]));
    Ok(())
}

#[tokio::test]
async fn removed_entries_are_withdrawn_and_a_source_that_goes_down_stays_served()
-> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    let docs = documents("valid")?;
    let (upstream, base) = Upstream::start(docs.clone()).await?;
    let mut sync = herald.sync_every(&base, "200ms", "1").spawn()?;
    let all = valid_examples();
    herald
        .until_listed("/v0.1/servers", &all)
        .await
        .map_err(|e| sync.explain(e))?;
    let readyz = format!("{}/readyz", sync.base());
    let response = within(STEP, "readyz", herald.http.get(&readyz).send()).await??;
    assert_eq!(response.status(), StatusCode::OK);

    // The source drops an entry: it is withdrawn.
    upstream
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|d| d["name"] != "io.github.user/weather");
    let remaining = set(&[
        ("io.github.user/local-weather", "1.0.0"),
        ("io.github.user/remote-weather", "2.1.0"),
    ]);
    herald
        .until_listed("/v0.1/servers", &remaining)
        .await
        .map_err(|e| sync.explain(e))?;

    // The source goes down: readiness says why, the catalog stays served.
    upstream.down.store(true, Ordering::SeqCst);
    let why = eventually(STEP, "readyz to report the source down", || async {
        let Ok(response) = herald.http.get(&readyz).send().await else {
            return Ok(None);
        };
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            return Ok(None);
        }
        Ok(Some(response.text().await?))
    })
    .await?;
    assert!(why.contains("catalog"), "{why}");
    assert!(why.contains("503"), "{why}");
    let served_before = upstream.pages_served();
    // Several failed syncs later, nothing was withdrawn.
    eventually(STEP, "more failed syncs", || async {
        Ok((upstream.pages_served() >= served_before + 3).then_some(()))
    })
    .await?;
    herald.until_listed("/v0.1/servers", &remaining).await?;
    sync.ensure_running()?;
    let status = sync.terminate();
    assert!(
        status.success(),
        "SIGTERM ends the sync loop cleanly: {status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_herald_imports_another_heralds_api() -> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    herald.import_valid_examples().await?;
    let deployed_url = "https://weather.eu-1.example.com/mcp";
    let record = deployment("io.github.user/remote-weather", "2.1.0", deployed_url)?;
    herald.apply(&record).await?;
    let expected = valid_examples();
    let upstream = eventually(STEP, "the deployment merged", || async {
        let entries = herald.until_listed("/v0.1/servers", &expected).await?;
        let merged = entries
            .values()
            .any(|e| remote_urls(e).iter().any(|u| u == deployed_url));
        Ok(merged.then_some(entries))
    })
    .await?;

    // A second Herald (the hub) imports the first one's API into registry "hub".
    let hub = Pipeline::start().await?;
    hub.sync(&[
        "--source-id",
        "edge",
        "--registry",
        "hub",
        "--url",
        &format!("{}/registry/default", herald.base),
    ])
    .await?;
    let imported = hub
        .until_listed("/registry/hub/v0.1/servers", &expected)
        .await?;
    for (key, entry) in &upstream {
        let copy = &imported[key];
        assert_eq!(
            copy["server"]["description"],
            entry["server"]["description"]
        );
        assert_eq!(remote_urls(copy), remote_urls(entry), "{key:?}");
        assert_eq!(copy["server"]["packages"], entry["server"]["packages"]);
    }
    // The upstream deployment still counts as deployed in the hub.
    let deployed = hub.listed("/registry/hub/v0.1/servers/deployed").await?;
    assert_eq!(
        deployed,
        [(
            "io.github.user/remote-weather".to_owned(),
            "2.1.0".to_owned()
        )]
    );
    let entry = hub
        .json("/registry/hub/v0.1/servers/io.github.user%2Fremote-weather/versions/2.1.0")
        .await?;
    assert_eq!(
        entry["_meta"]["dev.herald"]["upstream"][0]["url"],
        deployed_url
    );
    Ok(())
}

#[tokio::test]
async fn a_hub_withdraws_what_its_upstream_herald_deleted_without_a_full_listing()
-> anyhow::Result<()> {
    let edge = Pipeline::start().await?;
    let weather = deployment(
        "io.github.user/weather",
        "1.0.2",
        "https://w.example.com/mcp",
    )?;
    let mut remote = deployment(
        "io.github.user/remote-weather",
        "2.1.0",
        "https://r.example.com/mcp",
    )?;
    remote.object =
        ObjectRef::new(Kind::MCPServer, "tools", "remote").map_err(anyhow::Error::msg)?;
    remote.uid = "uid-remote".into();
    edge.apply(&weather).await?;
    edge.apply(&remote).await?;
    let both = set(&[
        ("io.github.user/weather", "1.0.2"),
        ("io.github.user/remote-weather", "2.1.0"),
    ]);
    edge.until_listed("/v0.1/servers", &both).await?;

    // The hub lists everything once, then only asks for updates (a full listing
    // every 100000th sync: never within this test).
    let hub = Pipeline::start().await?;
    let mut sync = hub
        .sync_command(&[
            "--source-id",
            "edge",
            "--registry",
            "hub",
            "--url",
            &format!("{}/registry/default", edge.base),
            "--interval",
            "200ms",
            "--full-sync-every",
            "100000",
        ])
        .log_name("sync.log")
        .spawn()?;
    hub.until_listed("/registry/hub/v0.1/servers", &both)
        .await
        .map_err(|e| sync.explain(e))?;

    // The edge withdraws one deployment: its tombstone reaches the hub's next
    // incremental sync, which withdraws the imported entry.
    let withdrawal = events::withdrawal(&remote, "2", WithdrawReason::Deleted);
    edge.publish(&Event::new(EventData::Withdrawn(withdrawal), Utc::now()))
        .await?;
    hub.until_listed(
        "/registry/hub/v0.1/servers",
        &set(&[("io.github.user/weather", "1.0.2")]),
    )
    .await
    .map_err(|e| sync.explain(e))?;
    let log = sync.log_contents();
    ensure!(
        log.lines().any(|l| l.contains("catalog synced")
            && l.contains("withdrawn=1")
            && l.contains("full=false")),
        "no incremental sync withdrew it: {log}"
    );
    // The hub serves its own tombstone as deleted in turn (Herald aggregating Herald
    // aggregating Herald syncs deletions incrementally all the way).
    let listed = hub
        .json("/registry/hub/v0.1/servers?include_deleted=true")
        .await?;
    let statuses: BTreeMap<String, String> = listed["servers"]
        .as_array()
        .context("servers")?
        .iter()
        .map(|e| {
            (
                e["server"]["name"].as_str().unwrap_or_default().to_owned(),
                e["_meta"]["io.modelcontextprotocol.registry/official"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            (
                "io.github.user/remote-weather".to_owned(),
                "deleted".to_owned()
            ),
            ("io.github.user/weather".to_owned(), "active".to_owned()),
        ])
    );
    let status = sync.terminate();
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test]
async fn interval_syncs_between_full_ones_ask_only_for_updates() -> anyhow::Result<()> {
    let herald = Pipeline::start().await?;
    let (upstream, base) = Upstream::start(documents("valid")?).await?;
    let mut sync = herald.sync_every(&base, "100ms", "2").spawn()?;
    eventually(STEP, "four syncs", || async {
        Ok((upstream.pages_served() >= 4).then_some(()))
    })
    .await
    .map_err(|e| sync.explain(e))?;
    let requests = upstream
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let incremental: Vec<bool> = requests
        .iter()
        .take(4)
        .map(|r| r.contains("updated_since="))
        .collect();
    assert_eq!(incremental, [false, true, false, true], "{requests:?}");
    assert!(
        requests.iter().all(|r| r.contains("limit=100")),
        "{requests:?}"
    );
    let status = sync.terminate();
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_sources_are_spoken_to_over_tls_and_untrusted_certificates_refused()
-> anyhow::Result<()> {
    // The test API server speaks HTTPS with a self-signed certificate: a real
    // TLS handshake, which must end in a refusal that names the certificate.
    let kube = within(
        START,
        "kube-apiserver",
        herald_integration_tests::kube::KubeApi::start(),
    )
    .await??;
    let herald = Pipeline::start().await?;
    let url = format!("{}/v0.1/servers", kube.url());
    assert!(url.starts_with("https://"), "{url}");
    let out = herald
        .sync_command(&["--source-id", "secure", "--url", &url])
        .output(STEP)
        .await?;
    let log = &out.stderr;
    assert!(
        !out.status.success(),
        "an untrusted certificate must fail the sync:\n{log}"
    );
    assert!(
        log.to_lowercase().contains("certificate"),
        "the reason names the certificate:\n{log}"
    );
    Ok(())
}

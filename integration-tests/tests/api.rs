//! herald-api end to end: a real nats-server, registry buckets filled with
//! `core`'s own stored values (as the projector writes them), and the real
//! `herald-api` binary answering over HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, kv};
use chrono::{TimeZone as _, Utc};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use herald_core::names::{DeploymentKey, bucket_name};
use herald_core::projection::{Fold, fold_applied, fold_withdrawn};
use herald_core::record::{
    DeploymentRecord, Header, Phase, RECORD_VERSION, Remote, RemoteTransport,
};
use herald_core::stored::StoredDeployment;
use herald_core::{Kind, ObjectRef, WithdrawReason};
use herald_integration_tests::browser::Browser;
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::events::withdrawal;
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::process::status_kib;
use herald_integration_tests::sse::{Frames, SseEvent};
use herald_integration_tests::timeout::{eventually, within};
use reqwest::StatusCode;
use serde_json::Value;

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- data

/// Writes deployments into one registry bucket the way the projector does.
struct Bucket {
    kv: kv::Store,
    registry: String,
    seq: u64,
    current: BTreeMap<String, StoredDeployment>,
}

impl Bucket {
    async fn create(js: &jetstream::Context, registry: &str) -> anyhow::Result<Self> {
        let kv = js
            .create_key_value(kv::Config {
                bucket: bucket_name(&registry.parse()?),
                history: 5,
                ..Default::default()
            })
            .await?;
        Ok(Self {
            kv,
            registry: registry.to_owned(),
            seq: 0,
            current: BTreeMap::new(),
        })
    }

    fn record(&self, d: &Dep) -> anyhow::Result<DeploymentRecord> {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .context("date")?;
        Ok(DeploymentRecord {
            v: RECORD_VERSION,
            cluster: d.cluster.parse()?,
            registry: self.registry.parse()?,
            object: ObjectRef::new(Kind::MCPServer, "tools", &d.object)
                .map_err(anyhow::Error::msg)?,
            uid: format!("uid-{}-{}", d.cluster, d.object),
            resource_version: "1".into(),
            generation: Some(1),
            created_at: Some(at),
            observed_at: at + chrono::Duration::seconds(self.seq as i64),
            changed_at: None,
            epoch: 1,
            server_name: d.server.parse()?,
            version: d.version.clone(),
            description: d.description.clone(),
            title: d.title.clone(),
            icon: None,
            category: None,
            tools: d.tools.clone(),
            remote: Remote {
                transport: RemoteTransport::StreamableHttp,
                url: format!("https://{}.{}.example.com/mcp", d.object, d.cluster),
                headers: vec![Header::bearer_token()],
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

    async fn put(&mut self, d: &Dep) -> anyhow::Result<u64> {
        let record = self.record(d)?;
        let key = DeploymentKey::new(record.cluster.clone(), record.object.clone()).to_string();
        self.seq += 1;
        let Fold::Write(value) = fold_applied(self.current.get(&key), &record, self.seq) else {
            bail!("fold_applied refused a newer sequence");
        };
        let revision = self.kv.put(&key, value.to_json().into()).await?;
        self.current.insert(key, value);
        Ok(revision)
    }

    async fn withdraw(&mut self, d: &Dep) -> anyhow::Result<u64> {
        let record = self.record(d)?;
        let key = DeploymentKey::new(record.cluster.clone(), record.object.clone()).to_string();
        self.seq += 1;
        let withdrawal = withdrawal(&record, "2", WithdrawReason::Deleted);
        let Fold::Write(value) =
            fold_withdrawn(self.current.get(&key), &withdrawal, self.seq, Utc::now())
        else {
            bail!("fold_withdrawn refused a newer sequence");
        };
        let revision = self.kv.put(&key, value.to_json().into()).await?;
        self.current.insert(key, value);
        Ok(revision)
    }
}

/// One deployment to advertise.
#[derive(Debug, Clone)]
struct Dep {
    cluster: String,
    object: String,
    server: String,
    version: String,
    description: String,
    title: Option<String>,
    tools: Vec<String>,
}

fn dep(cluster: &str, object: &str, server: &str, version: &str) -> Dep {
    Dep {
        cluster: cluster.into(),
        object: object.into(),
        server: server.into(),
        version: version.into(),
        description: format!("{server} in {cluster}"),
        title: None,
        tools: Vec::new(),
    }
}

// ---------------------------------------------------------------- the API process

struct Api {
    process: HeraldProcess,
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(nats: &NatsServer, extra: &[&str]) -> anyhow::Result<Self> {
        let process = Herald::api(&nats.url())
            .env("RUST_LOG", "info,herald_api=debug")
            .args(extra)
            .start()
            .await?;
        Ok(Self {
            base: process.base().to_owned(),
            process,
            http: reqwest::Client::new(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(within(
            STEP,
            path,
            self.http.get(format!("{}{path}", self.base)).send(),
        )
        .await??)
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.get(path).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "{path}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Waits until `path` answers 200 and `check` holds on its JSON.
    async fn until(&self, path: &str, check: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        eventually(STEP, path, || async {
            let response = self.get(path).await?;
            if response.status() != StatusCode::OK {
                return Ok(None);
            }
            let body: Value = response.json().await?;
            Ok(check(&body).then_some(body))
        })
        .await
    }
}

// ---------------------------------------------------------------- SSE client

/// A minimal `text/event-stream` reader (comments are counted, not returned).
struct Sse {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    frames: Frames,
}

impl Sse {
    async fn connect(api: &Api, path: &str, last_event_id: Option<u64>) -> anyhow::Result<Self> {
        let mut request = api.http.get(format!("{}{path}", api.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = within(STEP, "SSE connect", request.send()).await??;
        ensure!(
            response.status() == StatusCode::OK,
            "SSE {path}: {}",
            response.status()
        );
        ensure!(
            response.headers()["content-type"]
                .to_str()?
                .starts_with("text/event-stream")
        );
        Ok(Self {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            frames: Frames::default(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<SseEvent> {
        within(STEP, "an SSE event", self.next_unbounded()).await?
    }

    async fn next_unbounded(&mut self) -> anyhow::Result<SseEvent> {
        loop {
            if let Some(event) = self.frames.next_event()? {
                return Ok(event);
            }
            let chunk = self.body.next().await.context("the SSE stream ended")??;
            self.frames.push(&chunk)?;
        }
    }
}

fn upserted(e: &SseEvent) -> (String, String, String) {
    (
        e.event.clone(),
        e.data["server"]["name"]
            .as_str()
            .or(e.data["name"].as_str())
            .unwrap_or_default()
            .to_owned(),
        e.data["server"]["version"]
            .as_str()
            .or(e.data["version"].as_str())
            .unwrap_or_default()
            .to_owned(),
    )
}

// ---------------------------------------------------------------- shape checks

/// The OpenAPI `ServerResponse` shape and the server.json rules Herald relies on.
fn check_server_response(entry: &Value) -> anyhow::Result<()> {
    let server = entry["server"].as_object().context("server is an object")?;
    for field in ["name", "description", "version"] {
        ensure!(
            server.get(field).is_some_and(Value::is_string),
            "server.{field}: {entry}"
        );
    }
    let name = server["name"].as_str().unwrap_or_default();
    ensure!(
        name.split_once('/')
            .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty()),
        "name {name:?} is namespace/name"
    );
    ensure!(name.len() <= 200 && name.len() >= 3, "name length");
    ensure!(
        server["$schema"]
            .as_str()
            .is_some_and(|s| s.ends_with("server.schema.json")),
        "$schema"
    );
    for remote in server
        .get("remotes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        ensure!(
            matches!(remote["type"].as_str(), Some("streamable-http" | "sse")),
            "remote type: {remote}"
        );
        ensure!(
            remote["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://")),
            "remote url"
        );
        for header in remote
            .get("headers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ensure!(header["name"].is_string(), "header name");
        }
    }
    let official = &entry["_meta"]["io.modelcontextprotocol.registry/official"];
    let official = official.as_object().context("official _meta")?;
    let allowed: BTreeSet<&str> = [
        "status",
        "statusMessage",
        "publishedAt",
        "updatedAt",
        "isLatest",
    ]
    .into();
    ensure!(
        official.keys().all(|k| allowed.contains(k.as_str())),
        "official _meta has only spec keys: {official:?}"
    );
    ensure!(
        matches!(
            official["status"].as_str(),
            Some("active" | "deprecated" | "deleted")
        ),
        "status"
    );
    ensure!(official["isLatest"].is_boolean(), "isLatest");
    for t in ["publishedAt", "updatedAt"] {
        chrono::DateTime::parse_from_rfc3339(official[t].as_str().context(t)?)?;
    }
    Ok(())
}

/// The OpenAPI `ServerList` shape; returns its entries.
fn check_server_list(list: &Value) -> anyhow::Result<Vec<Value>> {
    let servers = list["servers"].as_array().context("servers array")?;
    for s in servers {
        check_server_response(s)?;
    }
    let metadata = list["metadata"].as_object().context("metadata")?;
    ensure!(
        metadata["count"].as_u64() == Some(servers.len() as u64),
        "count"
    );
    if let Some(c) = metadata.get("nextCursor") {
        ensure!(c.is_string(), "nextCursor is a string when present");
    }
    Ok(servers.clone())
}

fn names_versions(list: &[Value]) -> Vec<(String, String)> {
    list.iter()
        .map(|e| {
            (
                e["server"]["name"].as_str().unwrap_or_default().to_owned(),
                e["server"]["version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

async fn check_problem(api: &Api, path: &str, status: u16, parameter: &str) -> anyhow::Result<()> {
    let response = api.get(path).await?;
    ensure!(
        response.status().as_u16() == status,
        "{path}: status {}",
        response.status()
    );
    ensure!(
        response.headers()["content-type"] == "application/problem+json",
        "{path}: content type"
    );
    let body: Value = response.json().await?;
    ensure!(body["status"] == status, "{path}: {body}");
    ensure!(
        body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{path}: {body}"
    );
    ensure!(
        body["parameter"] == parameter,
        "{path}: names {parameter}: {body}"
    );
    Ok(())
}

// ---------------------------------------------------------------- tests

/// The registry API's contract on one set of entries: in `default`, io.example/alpha
/// 1.0.0 deployed in three clusters and 2.0.0 (titled) in one, io.example/evil with
/// markup in its description; a bucket that is not a registry's; herald-api on them.
/// Each test below checks one part of the contract on a fixture of its own.
struct Contract {
    api: Api,
    js: jetstream::Context,
    default: Bucket,
    /// io.example/alpha 1.0.0 in eu-1, us-1 and ap-1.
    alpha: Vec<Dep>,
    /// io.example/alpha 2.0.0 in eu-1.
    alpha2: Dep,
    _nats: NatsServer,
}

impl Contract {
    async fn start() -> anyhow::Result<Self> {
        let nats = within(START, "nats-server", NatsServer::start()).await??;
        let js = nats.jetstream().await;
        let mut default = Bucket::create(&js, "default").await?;
        // Not a registry bucket: ignored.
        js.create_key_value(kv::Config {
            bucket: "herald_clusters".into(),
            ..Default::default()
        })
        .await?;

        let alpha: Vec<Dep> = ["eu-1", "us-1", "ap-1"]
            .iter()
            .map(|c| dep(c, "alpha", "io.example/alpha", "1.0.0"))
            .collect();
        for d in &alpha {
            default.put(d).await?;
        }
        let mut alpha2 = dep("eu-1", "alpha-next", "io.example/alpha", "2.0.0");
        alpha2.title = Some("Alpha".into());
        default.put(&alpha2).await?;
        let mut evil = dep("eu-1", "evil", "io.example/evil", "0.1.0");
        evil.description = "<script>window.pwned=1</script>".into();
        default.put(&evil).await?;

        let api = Api::start(&nats, &[]).await?;
        Ok(Self {
            api,
            js,
            default,
            alpha,
            alpha2,
            _nats: nats,
        })
    }

    /// The entries of the list, checked for shape.
    async fn entries(&self) -> anyhow::Result<Vec<Value>> {
        check_server_list(&self.api.json("/v0.1/servers").await?)
    }

    /// Creates registry bucket `team-a` with one entry and waits until it is served.
    async fn team_a(&self) -> anyhow::Result<Value> {
        let mut team = Bucket::create(&self.js, "team-a").await?;
        team.put(&dep("eu-1", "beta", "io.example/beta", "1.0.0"))
            .await?;
        self.api
            .until("/registry/team-a/v0.1/servers", |l| {
                l["servers"].as_array().map(Vec::len) == Some(1)
            })
            .await
    }
}

fn is_latest(entry: &Value) -> Value {
    entry["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"].clone()
}

#[tokio::test]
async fn the_list_is_sorted_merged_across_clusters_and_marks_the_latest() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    // The list: sorted by (name, version), three entries, valid shape.
    let list = c.api.json("/v0.1/servers").await?;
    let entries = check_server_list(&list)?;
    assert_eq!(
        names_versions(&entries),
        [
            ("io.example/alpha".into(), "1.0.0".into()),
            ("io.example/alpha".into(), "2.0.0".into()),
            ("io.example/evil".into(), "0.1.0".into()),
        ]
    );
    assert!(list["metadata"].get("nextCursor").is_none());
    // One server in three clusters: one entry, three remotes, three deployments.
    let a1 = &entries[0];
    assert_eq!(a1["server"]["remotes"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        a1["_meta"]["dev.herald"]["deployments"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        a1["server"]["remotes"][0]["headers"][0]["name"],
        "Authorization"
    );
    // isLatest follows semver.
    assert_eq!(is_latest(&entries[0]), false);
    assert_eq!(is_latest(&entries[1]), true);
    assert_eq!(is_latest(&entries[2]), true);
    assert_eq!(
        entries[2]["server"]["description"],
        "<script>window.pwned=1</script>"
    );
    Ok(())
}

#[tokio::test]
async fn v0_and_the_default_registry_path_serve_the_same_bytes() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let api = &c.api;
    // /v0 serves the same bytes.
    let v01 = api.get("/v0.1/servers").await?.text().await?;
    let v0 = api.get("/v0/servers").await?.text().await?;
    assert_eq!(v01, v0);
    // The default registry also under /registry/default.
    assert_eq!(
        api.get("/registry/default/v0.1/servers")
            .await?
            .text()
            .await?,
        v01
    );
    Ok(())
}

#[tokio::test]
async fn versions_are_newest_first_and_get_takes_encoded_plain_names_and_latest()
-> anyhow::Result<()> {
    let c = Contract::start().await?;
    let api = &c.api;
    let a1 = &c.entries().await?[0];
    // Versions (newest first) and get, by encoded and plain names, and `latest`.
    let versions = api
        .json("/v0.1/servers/io.example%2Falpha/versions")
        .await?;
    let versions = check_server_list(&versions)?;
    assert_eq!(
        names_versions(&versions),
        [
            ("io.example/alpha".into(), "2.0.0".into()),
            ("io.example/alpha".into(), "1.0.0".into())
        ]
    );
    let got = api
        .json("/v0.1/servers/io.example%2Falpha/versions/latest")
        .await?;
    check_server_response(&got)?;
    assert_eq!(got["server"]["version"], "2.0.0");
    assert_eq!(got["server"]["title"], "Alpha");
    assert_eq!(
        &api.json("/v0.1/servers/io.example/alpha/versions/1.0.0")
            .await?,
        a1
    );
    assert_eq!(
        &api.json("/v0/servers/io.example%2Falpha/versions/1.0.0")
            .await?,
        a1
    );
    Ok(())
}

#[tokio::test]
async fn filters_and_cursors_select_entries() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let api = &c.api;
    let only_latest = check_server_list(&api.json("/v0.1/servers?version=latest").await?)?;
    assert_eq!(names_versions(&only_latest).len(), 2);
    let exact = check_server_list(&api.json("/v0.1/servers?version=1.0.0").await?)?;
    assert_eq!(
        names_versions(&exact),
        [("io.example/alpha".into(), "1.0.0".into())]
    );
    let searched = check_server_list(&api.json("/v0.1/servers?search=EVIL").await?)?;
    assert_eq!(searched.len(), 1);
    let by_title = check_server_list(
        &api.json("/v0.1/servers?search=alpha&version=latest")
            .await?,
    )?;
    assert_eq!(by_title.len(), 1);
    let future = check_server_list(
        &api.json("/v0.1/servers?updated_since=2030-01-01T00:00:00Z")
            .await?,
    )?;
    assert!(future.is_empty());
    let past = check_server_list(
        &api.json("/v0.1/servers?updated_since=2020-01-01T00:00:00Z&unknown=1")
            .await?,
    )?;
    assert_eq!(past.len(), 3);
    let page = api.json("/v0.1/servers?limit=2").await?;
    assert_eq!(check_server_list(&page)?.len(), 2);
    let cursor = page["metadata"]["nextCursor"]
        .as_str()
        .context("nextCursor")?;
    let rest = check_server_list(
        &api.json(&format!("/v0.1/servers?limit=2&cursor={cursor}"))
            .await?,
    )?;
    assert_eq!(
        names_versions(&rest),
        [("io.example/evil".into(), "0.1.0".into())]
    );
    let deployed = check_server_list(&api.json("/v0.1/servers/deployed").await?)?;
    assert_eq!(deployed.len(), 3);
    Ok(())
}

#[tokio::test]
async fn bad_parameters_and_unknown_things_are_problem_documents_naming_the_culprit()
-> anyhow::Result<()> {
    let c = Contract::start().await?;
    for (path, parameter) in [
        ("/v0.1/servers?limit=0", "limit"),
        ("/v0.1/servers?limit=101", "limit"),
        ("/v0.1/servers?limit=ten", "limit"),
        ("/v0.1/servers?cursor=not-a-cursor", "cursor"),
        ("/v0.1/servers?updated_since=yesterday", "updated_since"),
        ("/v0.1/servers/deployed?limit=-1", "limit"),
        ("/registry/default/v0.1/servers?cursor=zz", "cursor"),
        ("/v0.1/x/dev.herald/events?lastEventId=abc", "Last-Event-ID"),
    ] {
        check_problem(&c.api, path, 400, parameter).await?;
    }
    for (path, parameter) in [
        ("/v0.1/servers/io.example%2Fnope/versions", "serverName"),
        (
            "/v0.1/servers/io.example%2Fnope/versions/latest",
            "serverName",
        ),
        ("/v0.1/servers/io.example%2Falpha/versions/9.9.9", "version"),
        ("/registry/nope/v0.1/servers", "registry"),
        ("/registry/Not_A_Registry/v0.1/servers", "registry"),
        ("/registry/herald_clusters/v0.1/servers", "registry"),
        ("/registry/nope/", "registry"),
        ("/registry/nope/v0.1/x/dev.herald/events", "registry"),
    ] {
        check_problem(&c.api, path, 404, parameter).await?;
    }
    Ok(())
}

#[tokio::test]
async fn publish_and_writes_are_not_served() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let api = &c.api;
    // Read-only: publish and status are not served.
    let publish = api
        .http
        .post(format!("{}/v0.1/publish", api.base))
        .body("{}")
        .send()
        .await?;
    assert!(
        matches!(publish.status().as_u16(), 404 | 405),
        "{}",
        publish.status()
    );
    let put = api
        .http
        .put(format!(
            "{}/v0.1/servers/io.example%2Falpha/versions/1.0.0",
            api.base
        ))
        .body("{}")
        .send()
        .await?;
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

#[tokio::test]
async fn etags_round_trip_and_change_when_a_cluster_withdraws() -> anyhow::Result<()> {
    let mut c = Contract::start().await?;
    let api = &c.api;
    // ETag round trip on list and get.
    for path in [
        "/v0.1/servers",
        "/v0.1/servers/io.example%2Falpha/versions/latest",
    ] {
        let first = api.get(path).await?;
        let etag = first.headers()["etag"].to_str()?.to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong ETag {etag}"
        );
        let again = api
            .http
            .get(format!("{}{path}", api.base))
            .header("if-none-match", &etag)
            .send()
            .await?;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()["etag"].to_str()?, etag);
        let other = api
            .http
            .get(format!("{}{path}", api.base))
            .header("if-none-match", "\"other\"")
            .send()
            .await?;
        assert_eq!(other.status(), StatusCode::OK);
    }
    let etag_before = api.get("/v0.1/servers").await?.headers()["etag"]
        .to_str()?
        .to_owned();

    // Withdrawing one of three clusters leaves two remotes, and changes the ETag.
    c.default.withdraw(&c.alpha[1]).await?;
    let api = &c.api;
    let after = api
        .until("/v0.1/servers/io.example%2Falpha/versions/1.0.0", |e| {
            e["server"]["remotes"].as_array().map(Vec::len) == Some(2)
        })
        .await?;
    let clusters: Vec<&str> = after["_meta"]["dev.herald"]["deployments"]
        .as_array()
        .context("deployments")?
        .iter()
        .filter_map(|d| d["cluster"].as_str())
        .collect();
    assert_eq!(clusters, ["ap-1", "eu-1"]);
    let stale = api
        .http
        .get(format!("{}/v0.1/servers", api.base))
        .header("if-none-match", &etag_before)
        .send()
        .await?;
    assert_eq!(stale.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn withdrawing_every_deployment_of_a_version_removes_it() -> anyhow::Result<()> {
    let mut c = Contract::start().await?;
    // The other version stays, and becomes the latest.
    c.default.withdraw(&c.alpha2).await?;
    let api = &c.api;
    api.until("/v0.1/servers/io.example%2Falpha/versions", |l| {
        l["servers"].as_array().map(Vec::len) == Some(1)
    })
    .await?;
    let now_latest = api
        .json("/v0.1/servers/io.example%2Falpha/versions/latest")
        .await?;
    assert_eq!(now_latest["server"]["version"], "1.0.0");
    check_problem(
        api,
        "/v0.1/servers/io.example%2Falpha/versions/2.0.0",
        404,
        "version",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_registry_bucket_created_later_is_discovered_and_served() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let team_list = c.team_a().await?;
    check_server_list(&team_list)?;
    assert_eq!(c.api.get("/readyz").await?.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_deleted_registry_bucket_leaves_service_and_is_served_afresh_when_created_again()
-> anyhow::Result<()> {
    let c = Contract::start().await?;
    let api = &c.api;
    c.team_a().await?;
    // Its subscribers are disconnected and its paths answer 404.
    let mut team_feed =
        Sse::connect(api, "/registry/team-a/v0.1/x/dev.herald/events", None).await?;
    assert_eq!(team_feed.next().await?.event, "snapshot");
    c.js.delete_key_value(bucket_name(&"team-a".parse()?))
        .await?;
    let ended = within(STEP, "the team-a feed to end", team_feed.next_unbounded()).await?;
    assert!(ended.is_err(), "{ended:?}");
    eventually(STEP, "team-a gone", || async {
        Ok(
            (api.get("/registry/team-a/v0.1/servers").await?.status() == StatusCode::NOT_FOUND)
                .then_some(()),
        )
    })
    .await?;
    let mut team = Bucket::create(&c.js, "team-a").await?;
    team.put(&dep("eu-1", "gamma", "io.example/gamma", "1.0.0"))
        .await?;
    let again = api
        .until("/registry/team-a/v0.1/servers", |l| {
            l["servers"].as_array().map(Vec::len) == Some(1)
        })
        .await?;
    assert_eq!(again["servers"][0]["server"]["name"], "io.example/gamma");
    Ok(())
}

#[tokio::test]
async fn the_openapi_document_describes_the_read_only_subset_and_the_feed() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let doc = c.api.json("/openapi.json").await?;
    let paths = doc["paths"].as_object().context("paths")?;
    for p in [
        "/v0.1/servers",
        "/v0.1/servers/{serverName}/versions",
        "/v0.1/servers/{serverName}/versions/{version}",
        "/v0.1/servers/deployed",
        "/v0.1/x/dev.herald/events",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }
    assert!(!paths.contains_key("/v0.1/publish"));
    assert!(doc["components"]["schemas"]["ServerResponse"].is_object());
    Ok(())
}

#[tokio::test]
async fn no_cors_unless_configured() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let cors = c
        .api
        .http
        .get(format!("{}/v0.1/servers", c.api.base))
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert!(cors.headers().get("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_size_the_views() -> anyhow::Result<()> {
    let c = Contract::start().await?;
    let api = &c.api;
    // A request of each status, and a registry with one entry.
    c.entries().await?;
    check_problem(api, "/v0.1/servers?limit=0", 400, "limit").await?;
    c.team_a().await?;
    let metrics = api.get("/metrics").await?.text().await?;
    assert!(
        metrics.contains(
            "herald_api_http_requests_total{route=\"/v0.1/servers\",method=\"GET\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"400\""));
    assert!(metrics.contains("herald_api_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("herald_api_view_entries{registry=\"team-a\"} 1"));
    assert!(metrics.contains("herald_api_sse_subscribers"));
    Ok(())
}

#[tokio::test]
async fn cors_origins_are_configurable() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let api = Api::start(&nats, &["--cors-origin", "https://catalog.example"]).await?;
    let allowed = api
        .http
        .get(format!("{}/v0.1/servers", api.base))
        .header("origin", "https://catalog.example")
        .send()
        .await?;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://catalog.example"
    );
    let other = api
        .http
        .get(format!("{}/v0.1/servers", api.base))
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert!(other.headers().get("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test]
async fn sse_feed_resumes_without_loss() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let mut bucket = Bucket::create(&js, "default").await?;
    let first = bucket
        .put(&dep("eu-1", "a", "io.example/srv-a", "1.0.0"))
        .await?;
    let api = Api::start(
        &nats,
        &[
            "--sse-history",
            "4",
            "--max-sse-subscribers",
            "3",
            "--sse-keepalive",
            "100ms",
        ],
    )
    .await?;
    let feed = "/v0.1/x/dev.herald/events";

    // A new subscriber starts with a snapshot at the current position.
    let mut sse = Sse::connect(&api, feed, None).await?;
    let snapshot = sse.next().await?;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id, Some(first));
    assert_eq!(
        names_versions(&check_server_list(&snapshot.data)?),
        [("io.example/srv-a".into(), "1.0.0".into())]
    );

    // Each entry change is one event, with the data the API serves.
    let r1 = bucket
        .put(&dep("eu-1", "b", "io.example/srv-b", "1.0.0"))
        .await?;
    let e1 = sse.next().await?;
    assert_eq!((e1.event.as_str(), e1.id), ("upsert", Some(r1)));
    let served = api
        .json("/v0.1/servers/io.example%2Fsrv-b/versions/1.0.0")
        .await?;
    assert_eq!(e1.data, served);
    // A second version flips isLatest on the first: two upserts at one position.
    let r2 = bucket
        .put(&dep("eu-1", "a2", "io.example/srv-a", "2.0.0"))
        .await?;
    let e2 = [sse.next().await?, sse.next().await?];
    assert_eq!(
        e2.iter().map(upserted).collect::<Vec<_>>(),
        [
            ("upsert".into(), "io.example/srv-a".into(), "1.0.0".into()),
            ("upsert".into(), "io.example/srv-a".into(), "2.0.0".into())
        ]
    );
    // Only the last event of one bucket change carries its position.
    assert_eq!(
        e2.iter().map(|e| e.id).collect::<Vec<_>>(),
        [None, Some(r2)]
    );
    drop(sse);

    // Changes while disconnected: exactly those on resume, then live ones.
    let r3 = bucket
        .withdraw(&dep("eu-1", "b", "io.example/srv-b", "1.0.0"))
        .await?;
    let r4 = bucket
        .put(&dep("us-1", "a", "io.example/srv-a", "1.0.0"))
        .await?;
    let mut resumed = Sse::connect(&api, feed, Some(r2)).await?;
    let m1 = resumed.next().await?;
    assert_eq!(
        (upserted(&m1), m1.id),
        (
            ("delete".into(), "io.example/srv-b".into(), "1.0.0".into()),
            Some(r3)
        )
    );
    assert_eq!(
        m1.data,
        serde_json::json!({"name": "io.example/srv-b", "version": "1.0.0"})
    );
    let m2 = resumed.next().await?;
    assert_eq!(
        (upserted(&m2), m2.id),
        (
            ("upsert".into(), "io.example/srv-a".into(), "1.0.0".into()),
            Some(r4)
        )
    );
    assert_eq!(
        m2.data["server"]["remotes"].as_array().map(Vec::len),
        Some(2)
    );
    let r5 = bucket
        .put(&dep("eu-1", "c", "io.example/srv-c", "1.0.0"))
        .await?;
    let m3 = resumed.next().await?;
    assert_eq!(
        (upserted(&m3), m3.id),
        (
            ("upsert".into(), "io.example/srv-c".into(), "1.0.0".into()),
            Some(r5)
        )
    );
    // Resuming from the current position misses nothing and sends nothing old.
    let mut current = Sse::connect(&api, &format!("{feed}?lastEventId={r5}"), None).await?;
    let r6 = bucket
        .put(&dep("eu-1", "d", "io.example/srv-d", "1.0.0"))
        .await?;
    let n = current.next().await?;
    assert_eq!(
        (upserted(&n), n.id),
        (
            ("upsert".into(), "io.example/srv-d".into(), "1.0.0".into()),
            Some(r6)
        )
    );
    // Then nothing but keep-alive comments.
    let quiet = within(
        Duration::from_secs(1),
        "no further event",
        current.next_unbounded(),
    )
    .await;
    assert!(quiet.is_err(), "no event after the last change: {quiet:?}");
    assert!(current.frames.comments > 0, "keep-alive comments arrive");

    drop(resumed);
    drop(current);

    // A resume point older than the ring (4 batches) gets a snapshot.
    for i in 0..6 {
        bucket
            .put(&dep(
                "eu-1",
                &format!("e{i}"),
                &format!("io.example/e{i}"),
                "1.0.0",
            ))
            .await?;
    }
    let last = bucket
        .put(&dep("eu-1", "f", "io.example/srv-f", "1.0.0"))
        .await?;
    api.until("/v0.1/servers/io.example%2Fsrv-f/versions", |_| true)
        .await?;
    let mut old = eventually(STEP, "a free subscriber slot", || async {
        Ok(Sse::connect(&api, feed, Some(r2)).await.ok())
    })
    .await?;
    let s = old.next().await?;
    assert_eq!((s.event.as_str(), s.id), ("snapshot", Some(last)));
    let entries = check_server_list(&s.data)?;
    assert_eq!(entries.len(), 11);
    assert_eq!(s.data, api.json("/v0.1/servers?limit=100").await?);
    // An id from the future (e.g. another deployment's) also gets a snapshot.
    drop(old);
    let mut future = eventually(STEP, "a free subscriber slot", || async {
        Ok(Sse::connect(&api, feed, Some(last + 1000)).await.ok())
    })
    .await?;
    assert_eq!(future.next().await?.event, "snapshot");
    Ok(())
}

#[tokio::test]
async fn subscribers_beyond_the_cap_are_refused() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let api = Api::start(&nats, &["--max-sse-subscribers", "3"]).await?;
    let feed = "/v0.1/x/dev.herald/events";
    // The cap on subscribers: three are open.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut sse = Sse::connect(&api, feed, None).await?;
        assert_eq!(sse.next().await?.event, "snapshot");
        open.push(sse);
    }
    let refused = api.get(feed).await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    Ok(())
}

fn server_number(i: usize) -> String {
    format!("io.example/s{i:04}")
}

#[tokio::test]
async fn paginated_walk_returns_each_server_once_while_servers_change() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let mut bucket = Bucket::create(&js, "default").await?;
    let mut deps: Vec<Dep> = (0..1000)
        .map(|i| dep("eu-1", &format!("s{i:04}"), &server_number(i), "1.0.0"))
        .collect();
    for d in &deps {
        bucket.put(d).await?;
    }
    let api = Api::start(&nats, &[]).await?;
    // Ready means loaded: every server is there at once.
    let metrics = api.get("/metrics").await?.text().await?;
    assert!(
        metrics.contains("herald_api_view_entries{registry=\"default\"} 1000"),
        "{metrics}"
    );

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v0.1/servers?limit=37&cursor={c}"),
            None => "/v0.1/servers?limit=37".to_owned(),
        };
        let page = api.json(&path).await?;
        let entries = check_server_list(&page)?;
        pages += 1;
        seen.extend(names_versions(&entries).into_iter().map(|(n, _)| n));
        cursor = page["metadata"]["nextCursor"].as_str().map(str::to_owned);
        let Some(_) = &cursor else { break };
        // Change servers behind, at and ahead of the cursor, and add new ones
        // on both sides, then wait until the API has them before going on.
        let at = seen.len();
        let mut fence = None;
        for i in [
            at.saturating_sub(1),
            at,
            (at + 200) % 1000,
            at.saturating_sub(30),
        ] {
            deps[i].description = format!("updated on page {pages}");
            bucket.put(&deps[i]).await?;
            fence = Some(i);
        }
        let fresh = dep(
            "eu-1",
            &format!("n{pages}"),
            &format!("io.example/n{pages:03}"),
            "1.0.0",
        );
        bucket.put(&fresh).await?;
        let i = fence.context("updated something")?;
        let expected = deps[i].description.clone();
        api.until(
            &format!(
                "/v0.1/servers/{}/versions/1.0.0",
                server_number(i).replace('/', "%2F")
            ),
            |e| e["server"]["description"] == expected.as_str(),
        )
        .await?;
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no server appears twice in one walk"
    );
    for i in 0..1000 {
        assert!(
            unique.contains(&server_number(i)),
            "{} was returned",
            server_number(i)
        );
    }
    assert!(pages >= 28, "{pages} pages");
    Ok(())
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_does_not_grow_memory() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let mut bucket = Bucket::create(&js, "default").await?;
    let mut big = dep("eu-1", "big", "io.example/big", "1.0.0");
    bucket.put(&big).await?;
    // glibc gives each busy thread its own arena and keeps freed pages in it,
    // so RSS would measure the allocator's spread over worker threads, not a
    // kept backlog. Two arenas leave only what the process really holds.
    let process = Herald::api(&nats.url())
        .env("RUST_LOG", "info,herald_api=debug")
        .env("MALLOC_ARENA_MAX", "2")
        .args(["--sse-buffer", "8", "--sse-history", "16"])
        .start()
        .await?;
    let api = Api {
        base: process.base().to_owned(),
        process,
        http: reqwest::Client::new(),
    };

    // A subscriber that sends its request and then reads nothing.
    let address = api.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await?;
    socket
        .write_all(
            format!("GET /v0.1/x/dev.herald/events HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes(),
        )
        .await?;
    eventually(STEP, "the subscriber is counted", || async {
        let m = api.get("/metrics").await?.text().await?;
        Ok(m.contains("herald_api_sse_subscribers 1").then_some(()))
    })
    .await?;
    let before = status_kib(api.process.pid(), "VmRSS:")?;

    // 1,500 changes of ~40 KiB entries: 60 MiB if the backlog were kept.
    let rounds = 1500;
    let mut last = 0;
    for round in 0..rounds {
        big.tools = (0..1000)
            .map(|t| format!("tool-{round:05}-{t:05}-xxxxxxxxxxxxxxxx"))
            .collect();
        last = bucket.put(&big).await?;
        // Paced so the API keeps up: what is measured is the subscriber's
        // backlog, not changes queued in the NATS client during a burst.
        if round % 100 == 99 {
            api.until("/v0.1/servers/io.example%2Fbig/versions/1.0.0", |e| {
                e["_meta"]["dev.herald"]["deployments"][0]["tools"][0]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("tool-{round:05}")))
            })
            .await?;
        }
    }
    let after = status_kib(api.process.pid(), "VmRSS:")?;
    let peak = status_kib(api.process.pid(), "VmHWM:")?;
    eprintln!("RSS before {before} KiB, after {after} KiB, peak {peak} KiB");
    assert!(
        after < before + 24 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        peak < before + 32 * 1024,
        "peak RSS {peak} KiB (from {before} KiB)"
    );

    // When it reads again, it was reset: a fresh snapshot at the last position.
    let wanted = format!("event: snapshot\nid: {last}\n");
    let mut received = Vec::new();
    within(Duration::from_secs(30), "the reset snapshot", async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = socket.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the stream closed");
            received.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&received).contains(&wanted) {
                return Ok(());
            }
        }
    })
    .await??;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.matches("event: upsert").count() < rounds / 2,
        "the backlog was dropped, not delivered"
    );
    Ok(())
}

#[tokio::test]
async fn restart_rebuilds_the_same_responses_and_sigterm_closes_streams() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let mut default = Bucket::create(&js, "default").await?;
    let mut team = Bucket::create(&js, "team-b").await?;
    for (i, cluster) in ["eu-1", "us-1", "ap-1"].iter().enumerate() {
        for s in 0..20 {
            default
                .put(&dep(
                    cluster,
                    &format!("o{s}"),
                    &format!("io.example/r{s:02}"),
                    &format!("1.{}.0", s % 3),
                ))
                .await?;
        }
        team.put(&dep(cluster, "t", "io.example/team", &format!("0.{i}.0")))
            .await?;
    }
    default
        .withdraw(&dep("us-1", "o3", "io.example/r03", "1.0.0"))
        .await?;
    let paths = [
        "/v0.1/servers",
        "/v0.1/servers?limit=7",
        "/v0.1/servers?limit=100&version=latest",
        "/v0.1/servers/deployed",
        "/v0.1/servers/io.example%2Fr03/versions",
        "/v0.1/servers/io.example%2Fr04/versions/latest",
        "/registry/team-b/v0.1/servers",
        "/registry/team-b/v0.1/servers/io.example%2Fteam/versions",
        "/v0/servers?search=R1",
    ];
    let mut api = Api::start(&nats, &[]).await?;
    let mut before = Vec::new();
    for p in paths {
        let r = api.get(p).await?;
        assert_eq!(r.status(), StatusCode::OK, "{p}");
        let etag = r.headers()["etag"].to_str()?.to_owned();
        before.push((etag, r.text().await?));
    }

    // SIGTERM with a subscriber connected: the stream ends and the process exits 0.
    let mut sse = Sse::connect(&api, "/v0.1/x/dev.herald/events", None).await?;
    assert_eq!(sse.next().await?.event, "snapshot");
    let status = api.process.terminate();
    assert!(status.success(), "exit status {status}");
    let end = within(STEP, "the stream to end", sse.next_unbounded()).await?;
    assert!(end.is_err(), "the stream ended: {end:?}");

    let api = Api::start(&nats, &[]).await?;
    for (p, (etag, body)) in paths.iter().zip(&before) {
        let r = api.get(p).await?;
        assert_eq!(r.headers()["etag"].to_str()?, etag, "{p}");
        assert_eq!(&r.text().await?, body, "{p}");
    }
    Ok(())
}

#[tokio::test]
async fn catalog_page_shows_live_servers_in_headless_chromium() -> anyhow::Result<()> {
    let dir = TestDir::new("api-browser")?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let mut bucket = Bucket::create(&js, "default").await?;
    let mut alpha = dep("eu-1", "alpha", "io.example/alpha", "1.0.0");
    alpha.title = Some("Alpha Tools".into());
    bucket.put(&alpha).await?;
    bucket
        .put(&dep("us-1", "alpha", "io.example/alpha", "1.0.0"))
        .await?;
    let mut evil = dep("eu-1", "evil", "io.example/evil", "0.1.0");
    evil.description =
        "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>".into();
    evil.title = Some("<b>bold</b>".into());
    bucket.put(&evil).await?;
    let mut team = Bucket::create(&js, "team-c").await?;
    team.put(&dep("eu-1", "gamma", "io.example/gamma", "2.0.0"))
        .await?;
    let api = Api::start(&nats, &[]).await?;
    let browser = Browser::start(&dir).await?;

    browser.goto(&format!("{}/", api.base)).await?;
    browser
        .until("return document.body.dataset.count", "2".into())
        .await?;
    let cards = browser
        .eval("return [...document.querySelectorAll('article')].map(a => a.innerText)")
        .await?;
    let cards: Vec<String> = serde_json::from_value(cards)?;
    assert!(
        cards[0].contains("Alpha Tools") && cards[0].contains("io.example/alpha"),
        "{cards:?}"
    );
    assert!(
        cards[0].contains("https://alpha.eu-1.example.com/mcp")
            && cards[0].contains("https://alpha.us-1.example.com/mcp")
    );
    assert!(
        cards[0].contains("requires header Authorization"),
        "{cards:?}"
    );
    assert!(cards[0].contains("runs in: eu-1, us-1"), "{cards:?}");
    assert!(cards[0].contains("1.0.0"));
    // The injected markup shows as text and never runs.
    assert!(
        cards[1].contains("<script>window.pwned=2</script>") && cards[1].contains("<b>bold</b>"),
        "{cards:?}"
    );
    assert_eq!(
        browser.eval("return typeof window.pwned").await?,
        "undefined"
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('script, img, b').length")
            .await?,
        1
    );

    // A change after load appears without a reload.
    browser
        .eval("window.herald_marker = 'still here'; return 1")
        .await?;
    bucket
        .put(&dep("ap-1", "delta", "io.example/delta", "3.1.0"))
        .await?;
    browser
        .until("return document.body.dataset.count", "3".into())
        .await?;
    browser
        .until(
            "return [...document.querySelectorAll('article')].some(a => a.innerText.includes('io.example/delta'))",
            true.into(),
        )
        .await?;
    bucket
        .withdraw(&dep("us-1", "alpha", "io.example/alpha", "1.0.0"))
        .await?;
    browser
        .until("return document.querySelector('article').innerText.includes('runs in: eu-1\\n') || document.querySelector('article').innerText.trim().endsWith('runs in: eu-1')", true.into())
        .await?;
    assert_eq!(
        browser.eval("return window.herald_marker").await?,
        "still here"
    );

    // The search box filters.
    browser
        .eval("const s = document.getElementById('search'); s.value = 'DELTA'; s.dispatchEvent(new Event('input')); return 1")
        .await?;
    browser
        .until("return document.body.dataset.count", "1".into())
        .await?;
    assert_eq!(
        browser.eval("return typeof window.pwned").await?,
        "undefined"
    );

    // Each registry has its page.
    browser
        .goto(&format!("{}/registry/team-c/", api.base))
        .await?;
    browser
        .until("return document.body.dataset.count", "1".into())
        .await?;
    let text: String = serde_json::from_value(
        browser
            .eval("return document.querySelector('article').innerText")
            .await?,
    )?;
    assert!(text.contains("io.example/gamma"), "{text}");
    Ok(())
}

//! Deletions reach incremental syncs, end to end on a real nats-server with the real
//! `herald-projector` and `herald-api`: withdrawals published as a watcher publishes
//! them become tombstones, served as `deleted` entries to a client that walks
//! `updated_since` (exactly once per withdrawal) or asks `include_deleted`, never to a
//! plain list or get, and no longer once the retention window has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use async_nats::jetstream;
use chrono::{DateTime, TimeZone as _, Utc};
use herald_core::record::{DeploymentRecord, Phase, RECORD_VERSION, Remote, RemoteTransport};
use herald_core::{Event, EventData, Kind, ObjectRef, WithdrawReason};
use herald_integration_tests::events;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::{eventually, within};
use reqwest::StatusCode;
use serde_json::Value;

const STEP: Duration = Duration::from_secs(20);
const OFFICIAL: &str = "io.modelcontextprotocol.registry/official";

/// (name, version) → status of the entries a list served.
type Seen = BTreeMap<(String, String), String>;

struct Registry {
    stack: Stack,
    http: reqwest::Client,
}

impl Registry {
    async fn start(api_flags: &[&str]) -> anyhow::Result<Self> {
        let stack = Stack::builder("deletions")
            .clusters(&[])
            .api_flags(api_flags)
            .build()
            .await?;
        Ok(Self {
            stack,
            http: reqwest::Client::new(),
        })
    }

    async fn response(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.stack.api().base());
        Ok(within(STEP, path, self.http.get(url).send()).await??)
    }

    async fn status(&self, path: &str) -> anyhow::Result<StatusCode> {
        Ok(self.response(path).await?.status())
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.response(path).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "{path}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Every entry of a list walked page by page (`limit=2`, following cursors) from
    /// `query`; each (name, version) with its status, and how often it came.
    async fn walk(&self, query: &str) -> anyhow::Result<(Vec<Value>, Seen)> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut path = format!("/v0.1/servers?limit=2{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.json(&path).await?;
            all.extend(page["servers"].as_array().context("servers")?.clone());
            match page["metadata"]["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => {
                    let seen = all
                        .iter()
                        .map(|e| {
                            (
                                key(e),
                                e["_meta"][OFFICIAL]["status"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_owned(),
                            )
                        })
                        .collect();
                    return Ok((all, seen));
                }
            }
        }
        anyhow::bail!("more than 100 pages")
    }

    /// Waits until the plain list serves exactly `expected`.
    async fn until_listed(&self, expected: &[(&str, &str)]) -> anyhow::Result<Vec<Value>> {
        let expected: BTreeSet<(String, String)> = expected
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        eventually(STEP, "the plain list", || async {
            let (entries, seen) = self.walk("").await?;
            let keys: BTreeSet<_> = seen.keys().cloned().collect();
            Ok((keys == expected).then_some(entries))
        })
        .await
    }

    async fn publish(&self, data: EventData) -> anyhow::Result<()> {
        let js = jetstream::new(self.stack.nats.client().await);
        within(
            STEP,
            "publish",
            events::publish(&js, &Event::new(data, Utc::now())),
        )
        .await??;
        Ok(())
    }

    async fn apply(&self, record: &DeploymentRecord) -> anyhow::Result<()> {
        self.publish(EventData::Applied(Box::new(record.clone())))
            .await
    }

    async fn withdraw(&self, record: &DeploymentRecord) -> anyhow::Result<()> {
        let w = events::withdrawal(record, "2", WithdrawReason::Deleted);
        self.publish(EventData::Withdrawn(w)).await
    }
}

fn key(entry: &Value) -> (String, String) {
    let s = &entry["server"];
    (
        s["name"].as_str().unwrap_or_default().to_owned(),
        s["version"].as_str().unwrap_or_default().to_owned(),
    )
}

fn updated_at(entry: &Value) -> anyhow::Result<DateTime<Utc>> {
    let raw = entry["_meta"][OFFICIAL]["updatedAt"]
        .as_str()
        .context("updatedAt")?;
    Ok(DateTime::parse_from_rfc3339(raw)?.with_timezone(&Utc))
}

/// `com.toolhive.k8s.tools/<object>` (the name its namespace owns) at `version`.
fn deployment(object: &str, version: &str) -> anyhow::Result<DeploymentRecord> {
    let at = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .context("date")?;
    let server = object.split('-').next().unwrap_or(object);
    Ok(DeploymentRecord {
        v: RECORD_VERSION,
        cluster: "eu-1".parse()?,
        registry: "default".parse()?,
        object: ObjectRef::new(Kind::MCPServer, "tools", object).map_err(anyhow::Error::msg)?,
        uid: format!("uid-{object}"),
        resource_version: "1".into(),
        generation: Some(1),
        created_at: Some(at),
        observed_at: at,
        changed_at: None,
        epoch: 1,
        server_name: format!("com.toolhive.k8s.tools/{server}").parse()?,
        version: version.into(),
        description: format!("The {server} server"),
        title: None,
        icon: None,
        category: None,
        tools: vec![],
        remote: Remote {
            transport: RemoteTransport::StreamableHttp,
            url: format!("https://{object}.example.com/mcp"),
            headers: vec![],
            extra: Default::default(),
        },
        phase: Phase::Ready,
        package: None,
        image: None,
        transport: "streamable-http".into(),
        group: None,
        tool_definitions: Vec::new(),
        authz_claims: None,
    })
}

const ALPHA: &str = "com.toolhive.k8s.tools/alpha";
const BETA: &str = "com.toolhive.k8s.tools/beta";
const GAMMA: &str = "com.toolhive.k8s.tools/gamma";

fn path_of(name: &str) -> String {
    format!("/v0.1/servers/{}", name.replace('/', "%2F"))
}

#[tokio::test]
async fn an_updated_since_walk_sees_every_withdrawal_once_as_deleted() -> anyhow::Result<()> {
    let registry = Registry::start(&[]).await?;
    let alpha = deployment("alpha", "1.0.0")?;
    let beta_1 = deployment("beta-1", "1.0.0")?;
    let beta_2 = deployment("beta-2", "2.0.0")?;
    let gamma = deployment("gamma", "1.0.0")?;
    for r in [&alpha, &beta_1, &beta_2, &gamma] {
        registry.apply(r).await?;
    }
    // The client's first sync lists everything; it remembers the newest updatedAt.
    let first = registry
        .until_listed(&[
            (ALPHA, "1.0.0"),
            (BETA, "1.0.0"),
            (BETA, "2.0.0"),
            (GAMMA, "1.0.0"),
        ])
        .await?;
    let mut since = first
        .iter()
        .map(updated_at)
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .context("entries")?;
    let etag_before = registry
        .response("/v0.1/servers?include_deleted=true")
        .await?
        .headers()
        .get("etag")
        .cloned();

    registry.withdraw(&alpha).await?;
    registry.withdraw(&beta_2).await?;
    // A plain list drops them and never shows a tombstone.
    let plain = registry
        .until_listed(&[(BETA, "1.0.0"), (GAMMA, "1.0.0")])
        .await?;
    for e in &plain {
        assert_eq!(e["_meta"][OFFICIAL]["status"], "active", "{e}");
    }
    // Search matches descriptions too: "the gamma" is only in gamma's description.
    let (_, found) = registry.walk("&search=THE%20GAMMA").await?;
    assert_eq!(
        found.keys().cloned().collect::<Vec<_>>(),
        [(GAMMA.to_owned(), "1.0.0".to_owned())]
    );
    let beta_1_entry = plain.iter().find(|e| key(e).0 == BETA).context("beta")?;
    assert_eq!(beta_1_entry["_meta"][OFFICIAL]["isLatest"], true);

    // Both tombstones are served once the projector has folded them.
    eventually(STEP, "both deletions served", || async {
        let (_, seen) = registry.walk("&include_deleted=true").await?;
        Ok((seen.values().filter(|s| *s == "deleted").count() == 2).then_some(()))
    })
    .await?;
    // The incremental walks: each withdrawal once, as deleted, then never again.
    let mut deleted_seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for _ in 0..3 {
        let rfc = since.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let (entries, _) = registry.walk(&format!("&updated_since={rfc}")).await?;
        for e in &entries {
            let official = &e["_meta"][OFFICIAL];
            if official["status"] == "deleted" {
                *deleted_seen.entry(key(e)).or_default() += 1;
                assert_eq!(official["isLatest"], false, "{e}");
                assert_eq!(official["statusChangedAt"], official["updatedAt"], "{e}");
                assert!(e["server"].get("remotes").is_none(), "{e}");
                assert!(e["_meta"].get("dev.herald").is_none(), "{e}");
            }
            since = since.max(updated_at(e)?);
        }
    }
    let expected: BTreeMap<(String, String), usize> = [
        ((ALPHA.to_owned(), "1.0.0".to_owned()), 1),
        ((BETA.to_owned(), "2.0.0".to_owned()), 1),
    ]
    .into();
    assert_eq!(deleted_seen, expected);

    // The ETag of a list with deleted entries changed when the tombstones appeared.
    let etag_after = registry
        .response("/v0.1/servers?include_deleted=true")
        .await?
        .headers()
        .get("etag")
        .cloned();
    assert_ne!(etag_before, etag_after);

    // Gets: 404 without include_deleted, the deleted entry with it.
    let alpha_path = path_of(ALPHA);
    for path in [
        format!("{alpha_path}/versions"),
        format!("{alpha_path}/versions/1.0.0"),
        format!("{alpha_path}/versions/latest"),
        format!("{alpha_path}/versions/latest?include_deleted=true"),
    ] {
        assert_eq!(
            registry.status(&path).await?,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let gone = registry
        .json(&format!("{alpha_path}/versions/1.0.0?include_deleted=true"))
        .await?;
    assert_eq!(gone["_meta"][OFFICIAL]["status"], "deleted");
    assert_eq!(gone["server"]["description"], "The alpha server");
    let versions = registry
        .json(&format!("{}/versions?include_deleted=true", path_of(BETA)))
        .await?;
    let statuses: BTreeMap<String, (String, bool)> = versions["servers"]
        .as_array()
        .context("servers")?
        .iter()
        .map(|e| {
            (
                key(e).1,
                (
                    e["_meta"][OFFICIAL]["status"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    e["_meta"][OFFICIAL]["isLatest"] == true,
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, (String, bool)> = [
        ("1.0.0".to_owned(), ("active".to_owned(), true)),
        ("2.0.0".to_owned(), ("deleted".to_owned(), false)),
    ]
    .into();
    assert_eq!(statuses, want);
    assert_eq!(
        registry
            .status("/v0.1/servers?include_deleted=maybe")
            .await?,
        StatusCode::BAD_REQUEST
    );

    // Deployed again: live, and no longer deleted.
    let mut again = alpha.clone();
    again.resource_version = "3".into();
    registry.apply(&again).await?;
    registry
        .until_listed(&[(ALPHA, "1.0.0"), (BETA, "1.0.0"), (GAMMA, "1.0.0")])
        .await?;
    let (_, seen) = registry.walk("&include_deleted=true").await?;
    assert_eq!(
        seen.get(&(ALPHA.to_owned(), "1.0.0".to_owned()))
            .map(String::as_str),
        Some("active")
    );
    Ok(())
}

#[tokio::test]
async fn deleted_entries_expire_after_the_retention_window() -> anyhow::Result<()> {
    let registry = Registry::start(&["--deleted-retention", "6s"]).await?;
    let alpha = deployment("alpha", "1.0.0")?;
    let gamma = deployment("gamma", "1.0.0")?;
    registry.apply(&alpha).await?;
    registry.apply(&gamma).await?;
    registry
        .until_listed(&[(ALPHA, "1.0.0"), (GAMMA, "1.0.0")])
        .await?;
    registry.withdraw(&alpha).await?;
    let deleted_now = || async {
        let (_, seen) = registry.walk("&include_deleted=true").await?;
        Ok::<_, anyhow::Error>(
            seen.get(&(ALPHA.to_owned(), "1.0.0".to_owned()))
                .map(String::as_str)
                == Some("deleted"),
        )
    };
    eventually(STEP, "the deletion served", || async {
        Ok(deleted_now().await?.then_some(()))
    })
    .await?;
    let get = format!("{}/versions/1.0.0?include_deleted=true", path_of(ALPHA));
    // The window passes: neither list nor get serves it any more.
    eventually(STEP, "the deletion expired", || async {
        Ok((!deleted_now().await?).then_some(()))
    })
    .await?;
    assert_eq!(registry.status(&get).await?, StatusCode::NOT_FOUND);
    let (_, seen) = registry.walk("&updated_since=2020-01-01T00:00:00Z").await?;
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        [(GAMMA.to_owned(), "1.0.0".to_owned())]
    );
    Ok(())
}

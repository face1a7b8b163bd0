//! The attacks of issue 14 against a running hub: real nats-server without permissions
//! (anyone may publish on the stream and write the buckets), a real Kubernetes API
//! server, and the real watcher, projector and API. Each test makes one attack and checks
//! that it fails with a reason an operator can see (a dead letter on `herald.dlq.<code>`
//! and `herald_projector_dead_lettered_total`, the watcher's rejection metric and log,
//! `herald_api_refused_values_total`) and that what the API serves has not changed.
//!
//! Forged events are signed with the watcher's own key unless the test is about
//! signatures: the attacker holds a compromised watcher's key, and the hub's other checks
//! must still hold. The pure rules behind each check have unit tests in `herald-core`
//! (`core/tests/trust.rs`, `admission`, `projection`); these prove they are applied.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use chrono::{TimeZone as _, Utc};
use herald_core::annotations as ann;
use herald_core::cluster_state::ClusterState;
use herald_core::event::{Heartbeat, Resync};
use herald_core::names::{CLUSTERS_BUCKET, DLQ_PREFIX, DLQ_STREAM, DeploymentKey, STREAM};
use herald_core::ownership::{NameGrant, NameOwnership};
use herald_core::record::{Header, RECORD_VERSION};
use herald_core::stored::{DeploymentState, StoredDeployment};
use herald_core::{DeploymentRecord, Event, EventData, Kind, ObjectRef, WithdrawReason};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::events::{message, withdrawal};
use herald_integration_tests::herald::projector_ops;
use herald_integration_tests::objects::create_running;
use herald_integration_tests::oracle::{View, assert_converges, served_view};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::eventually;
use herald_projector::dead_letter::{REASON_HEADER, SEQUENCE_HEADER};
use herald_runtime::buckets;
use herald_runtime::signing::Signer;
use serde_json::json;

const STEP: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(45);
/// The clusters; every test but one needs only `east`.
const EAST: &str = "east";
const WEST: &str = "west";
/// What `tools` may publish besides its default names (watcher flag, trust file).
const GRANT: &str = "io.github.github/*=tools";
const GITHUB: &str = "io.github.github/github-mcp-server";
const TIME: &str = "com.toolhive.k8s.tools/time";
const EVIL_URL: &str = "https://evil.example.com/mcp";

// ------------------------------------------------------------------ the hub

/// The hub under attack: clusters (the first is `east`, with two servers in namespace
/// `tools`: `time` under its default name, `github` under a granted name), a watcher per
/// cluster that signs with its own key and has the grant, a projector whose trust file
/// accepts only these clusters, each signed with its key (`east` also with the next one:
/// a rotation), and has the same grant; with `requireSignatures` as the test asks (with
/// it, an unknown cluster is refused as unsigned before the allow-list is asked).
struct Hub {
    stack: Stack,
    js: jetstream::Context,
    /// The watcher's key, as a compromised watcher leaks it.
    east: Signer,
    /// The second key of `east` in the trust file.
    next: Signer,
    /// What the API served once the servers were in, and the revision of every key of
    /// `herald-default` then.
    before: (View, BTreeMap<String, u64>),
    _keys: TestDir,
}

/// Why the projector refused an event: the code of its dead letter and the reason.
#[derive(Debug)]
struct Refusal {
    code: String,
    reason: String,
}

impl Hub {
    async fn start(
        name: &str,
        clusters: &[&str],
        require_signatures: bool,
    ) -> anyhow::Result<Self> {
        let keys = TestDir::new("trust-keys")?;
        let (_, next) = Signer::generate();
        let mut signers = Vec::new();
        let mut trust = String::from("clusters:\n");
        for cluster in clusters {
            let (seed, signer) = Signer::generate();
            std::fs::write(keys.join(&format!("{cluster}.seed")), seed)?;
            let mut public = signer.public_key().to_owned();
            if signers.is_empty() {
                public = format!("{public}, {}", next.public_key());
            }
            trust += &format!("  {cluster}:\n    keys: [{public}]\n");
            signers.push(signer);
        }
        trust += &format!(
            "requireSignatures: {require_signatures}\n\
             nameGrants:\n  - names: io.github.github/*\n    namespaces: [tools]\n"
        );
        std::fs::write(keys.join("trust.yaml"), trust)?;
        let trust_file = keys.join("trust.yaml").to_string_lossy().into_owned();
        let mut stack = Stack::builder(name)
            .clusters(clusters)
            .without_watchers()
            .watcher_flags(&["--grant-name", GRANT])
            .projector_flags(&["--trust-file", &trust_file])
            .build()
            .await?;
        let url = stack.nats.url();
        let watchers = clusters.iter().enumerate().map(|(i, cluster)| {
            let seed = keys.join(&format!("{cluster}.seed"));
            stack
                .watcher(i, &url)
                .flag("--signing-key-file", &seed.to_string_lossy())
                .start()
        });
        stack.watchers = futures::future::try_join_all(watchers).await?;
        let tools = stack.mcpservers(0, "tools");
        create_running(
            &tools,
            "time",
            json!({ ann::REGISTRY_DESCRIPTION: "What time it is",
                    ann::REGISTRY_URL: "https://time.example.com/mcp" }),
        )
        .await?;
        create_running(
            &tools,
            "github",
            json!({ ann::REGISTRY_DESCRIPTION: "GitHub", ann::REGISTRY_SERVER_NAME: GITHUB,
                    ann::REGISTRY_URL: "https://github.example.com/mcp" }),
        )
        .await?;
        let js = stack.nats.jetstream().await;
        let mut hub = Self {
            stack,
            js,
            east: signers.remove(0),
            next,
            before: Default::default(),
            _keys: keys,
        };
        hub.settle().await?;
        Ok(hub)
    }

    /// Waits until the API serves exactly what the clusters hold under the watchers'
    /// policy (with the grant), and takes that as what must not change. Two entries.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let grant: NameGrant = GRANT.parse().map_err(anyhow::Error::msg)?;
        let mut clusters = self.stack.clusters();
        for c in &mut clusters {
            c.policy.names = NameOwnership::new([grant.clone()]);
        }
        let registries = self.stack.registries();
        let base = self.stack.api().base();
        let converged = assert_converges(CONVERGE, &clusters, base, &registries).await?;
        anyhow::ensure!(
            converged.entries == 2,
            "{} entries served, expected 2",
            converged.entries
        );
        self.before = (self.served().await?, self.revisions().await?);
        Ok(())
    }

    async fn served(&self) -> anyhow::Result<View> {
        served_view(self.stack.api().base(), &self.stack.registries()).await
    }

    async fn revisions(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let store = self.js.get_key_value("herald-default").await?;
        let items = buckets::scan(&store, "").await?;
        Ok(items.into_iter().map(|i| (i.key, i.revision)).collect())
    }

    /// Neither the bucket nor what the API serves changed since [`Hub::settle`].
    async fn assert_unchanged(&self) -> anyhow::Result<()> {
        assert_eq!(
            self.revisions().await?,
            self.before.1,
            "herald-default changed"
        );
        assert_eq!(
            self.served().await?,
            self.before.0,
            "the API serves other data"
        );
        Ok(())
    }

    /// The record of `tools/<name>` as stored: what a forger starts from.
    async fn live(&self, name: &str) -> anyhow::Result<DeploymentRecord> {
        let store = self.js.get_key_value("herald-default").await?;
        let key = DeploymentKey::new(
            EAST.parse()?,
            ObjectRef::new(Kind::MCPServer, "tools", name).map_err(anyhow::Error::msg)?,
        );
        let value = store
            .get(key.to_string())
            .await?
            .context("no stored record")?;
        StoredDeployment::from_json(&value)?
            .live()
            .cloned()
            .context("the record is not live")
    }

    /// Publishes `event` on its subject, signed by `signer`; its stream sequence.
    async fn publish(&self, event: &Event, signer: Option<&Signer>) -> anyhow::Result<u64> {
        let (subject, mut headers, payload) = message(event);
        if let Some(signer) = signer {
            signer.sign(&subject, &payload, &mut headers);
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Publishes `event` signed with the watcher's key and waits for its refusal.
    async fn forge(&self, event: &Event) -> anyhow::Result<Refusal> {
        let seq = self.publish(event, Some(&self.east)).await?;
        self.refusal(seq).await
    }

    /// Waits until the projector dead-letters the event at `seq`; fails at once if it
    /// acknowledged the event without doing so (it applied it).
    async fn refusal(&self, seq: u64) -> anyhow::Result<Refusal> {
        let refusal = eventually(STEP, &format!("a dead letter for event {seq}"), || async {
            if let Some(found) = self.dead_letter(seq).await? {
                return Ok(Some(found));
            }
            let stream = self.js.get_stream(STREAM).await?;
            let floor = stream
                .consumer_info("herald-projector")
                .await?
                .ack_floor
                .stream_sequence;
            if floor >= seq && self.dead_letter(seq).await?.is_none() {
                bail!("the projector applied event {seq} instead of refusing it");
            }
            Ok(None)
        })
        .await?;
        let sample = format!(
            "herald_projector_dead_lettered_total{{reason=\"{}\"}}",
            refusal.code
        );
        let projector = self.stack.projector.as_ref().context("a projector")?;
        assert!(projector.metric(&sample).await? >= 1.0, "{sample}");
        Ok(refusal)
    }

    /// The dead letter of the event at `seq`, if there is one yet.
    async fn dead_letter(&self, seq: u64) -> anyhow::Result<Option<Refusal>> {
        let mut dlq = self.js.get_stream(DLQ_STREAM).await?;
        let state = dlq.info().await?.state.clone();
        for s in state.first_sequence..=state.last_sequence {
            let Ok(m) = dlq.get_raw_message(s).await else {
                continue;
            };
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
            if header(SEQUENCE_HEADER) == Some(seq.to_string()) {
                return Ok(Some(Refusal {
                    code: m
                        .subject
                        .trim_start_matches(&format!("{DLQ_PREFIX}."))
                        .to_owned(),
                    reason: header(REASON_HEADER).unwrap_or_default(),
                }));
            }
        }
        Ok(None)
    }

    /// `east`'s liveness as stored.
    async fn east_state(&self) -> anyhow::Result<ClusterState> {
        let clusters = self.js.get_key_value(CLUSTERS_BUCKET).await?;
        let value = clusters.get(EAST).await?.context("east has no state")?;
        Ok(serde_json::from_slice(&value)?)
    }

    /// What `herald-projector status` prints.
    async fn status(&self) -> anyhow::Result<String> {
        Ok(projector_ops(&self.stack.nats.url(), &["status"], STEP)
            .await?
            .1)
    }
}

/// `record` changed by `change`, as a newer observation of the same object. Each has
/// a resource version of its own: an event's id is derived from what it says, and the
/// stream drops a repeated id as a duplicate.
fn applied(record: &DeploymentRecord, change: impl FnOnce(&mut DeploymentRecord)) -> Event {
    static FORGED: AtomicU64 = AtomicU64::new(1);
    let mut r = record.clone();
    let n = FORGED.fetch_add(1, Ordering::Relaxed);
    r.resource_version = format!("{}{n}", r.resource_version);
    r.observed_at = Utc::now();
    change(&mut r);
    Event::new(EventData::Applied(Box::new(r)), Utc::now())
}

/// A change a forger makes to a record.
type Edit = fn(&mut DeploymentRecord);

fn assert_refused(refusal: &Refusal, code: &str, says: &str) {
    assert_eq!(refusal.code, code, "{refusal:?}");
    assert!(
        refusal.reason.contains(says),
        "{refusal:?} should say {says:?}"
    );
}

// ------------------------------------------------------------------ the attacks

#[tokio::test]
async fn a_namespace_takes_no_name_it_was_not_granted_in_any_cluster() -> anyhow::Result<()> {
    let mut hub = Hub::start("trust-names", &[EAST, WEST], true).await?;
    // tools in west deploys its granted server too: the same owner, one entry.
    create_running(
        &hub.stack.mcpservers(1, "tools"),
        "github",
        json!({ ann::REGISTRY_DESCRIPTION: "GitHub", ann::REGISTRY_SERVER_NAME: GITHUB,
                ann::REGISTRY_URL: "https://github.west.example.com/mcp" }),
    )
    .await?;
    // Tenants of another namespace in both clusters claim tools' default name and the
    // granted one, with a higher version.
    for cluster in 0..2 {
        let intruders = hub.stack.mcpservers(cluster, "aaa-intruder");
        for (object, name) in [("time", TIME), ("github", GITHUB)] {
            let annotations = json!({ ann::REGISTRY_DESCRIPTION: "Intruder", ann::REGISTRY_SERVER_NAME: name,
                                      ann::REGISTRY_URL: EVIL_URL, ann::REGISTRY_VERSION: "99.0.0" });
            create_running(&intruders, object, annotations).await?;
        }
    }
    let sample = "herald_watcher_rejections_total{reason=\"name_not_owned\"}";
    for watcher in &hub.stack.watchers {
        eventually(STEP, "each watcher to reject both claims", || async {
            Ok((watcher.metric(sample).await? == 2.0).then_some(()))
        })
        .await?;
    }
    // The test API server serves no events.k8s.io, so the watcher's Kubernetes Event
    // cannot be read here; its log says who claimed what.
    let log = hub.stack.watchers[0].log_contents();
    let line = log
        .lines()
        .find(|l| l.contains("\"namespace\":\"aaa-intruder\"") && l.contains(TIME))
        .with_context(|| format!("no rejection logged for the claim of {TIME}:\n{log}"))?;
    assert!(
        line.contains("name_not_owned") && line.contains("namespace tools"),
        "{line}"
    );
    // With the grant, tools serves the chosen name from both clusters; the intruders
    // serve nothing.
    hub.settle().await?;
    let served = hub.served().await?;
    let entries: Vec<(&str, usize)> = served
        .values()
        .flatten()
        .map(|e| (e.name.as_str(), e.remotes.len()))
        .collect();
    assert_eq!(entries, [(TIME, 1), (GITHUB, 2)]);

    // A compromised watcher publishes the claim itself: the hub refuses it too.
    let time = hub.live("time").await?;
    let claim = applied(&time, |r| {
        r.object = ObjectRef::new(Kind::MCPServer, "aaa-intruder", "time").unwrap();
        r.uid = "intruder-uid".to_owned();
        r.remote.url = EVIL_URL.to_owned();
    });
    assert_refused(&hub.forge(&claim).await?, "name_not_owned", TIME);
    hub.assert_unchanged().await
}

#[tokio::test]
async fn a_forged_resync_with_a_huge_epoch_sweeps_nothing() -> anyhow::Result<()> {
    let hub = Hub::start("trust-sweep", &[EAST], true).await?;
    let state = hub.east_state().await?;
    let huge = u64::try_from((Utc::now() + chrono::Duration::days(3650)).timestamp_millis())?;
    for completed in [None, Some(0)] {
        let body = Resync {
            v: 1,
            cluster: EAST.parse()?,
            kind: Kind::MCPServer,
            epoch: huge,
            advertised: completed,
        };
        let data = match completed {
            Some(_) => EventData::ResyncCompleted(body),
            None => EventData::ResyncStarted(body),
        };
        let refusal = hub.forge(&Event::new(data, Utc::now())).await?;
        assert_refused(&refusal, "clock_skew", "the list epoch");
    }
    hub.assert_unchanged().await?;
    // `status` is not poisoned: the epoch is the watcher's own.
    assert_eq!(hub.east_state().await?.epochs, state.epochs);
    let status = hub.status().await?;
    assert!(!status.contains(&huge.to_string()), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_withdrawal_of_another_uid_leaves_the_entry() -> anyhow::Result<()> {
    let hub = Hub::start("trust-withdraw", &[EAST], true).await?;
    let time = hub.live("time").await?;
    let mut forged = withdrawal(
        &time,
        &format!("{}9", time.resource_version),
        WithdrawReason::Deleted,
    );
    forged.uid = "0000-not-the-real-uid".to_owned();
    let refusal = hub
        .forge(&Event::new(EventData::Withdrawn(forged), Utc::now()))
        .await?;
    assert_refused(&refusal, "uid_mismatch", &time.uid);
    hub.assert_unchanged().await
}

#[tokio::test]
async fn records_the_mapping_would_reject_are_refused_by_the_projector() -> anyhow::Result<()> {
    let hub = Hub::start("trust-records", &[EAST], true).await?;
    let time = hub.live("time").await?;
    let attacks: [(&str, Edit); 6] = [
        ("URL from the record", |r| {
            r.remote.url = "javascript:alert(1)".into()
        }),
        ("icon", |r| r.icon = Some("javascript:alert(1)".into())),
        ("control characters", |r| {
            r.description = "ok\u{7}\u{1b}[2J".into()
        }),
        ("description is 1000000", |r| {
            r.description = "x".repeat(1_000_000)
        }),
        ("version", |r| r.version = "1.0/../../x".into()),
        // Bounded one by one but not in number, 2,200 declarations made a ~1 MB record
        // and every list page holding it ~1 MB.
        ("2200 header declarations", |r| {
            r.remote.headers = (0..2200)
                .map(|i| Header {
                    name: format!("X-{i:05}{}", "a".repeat(120)),
                    description: Some("d".repeat(256)),
                    ..Header::bearer_token()
                })
                .collect()
        }),
    ];
    for (says, change) in attacks {
        let refusal = hub.forge(&applied(&time, change)).await?;
        assert_refused(&refusal, "invalid", says);
    }
    hub.assert_unchanged().await
}

#[tokio::test]
async fn an_invalid_value_written_into_a_bucket_is_not_served() -> anyhow::Result<()> {
    let hub = Hub::start("trust-bucket", &[EAST], true).await?;
    let store = hub.js.get_key_value("herald-default").await?;
    // Another deployment of tools' time, planted behind the projector's back: it would
    // add its remotes to the entry.
    let mut planted = hub.live("time").await?;
    planted.cluster = "ghost".parse()?;
    for url in [
        "javascript:alert(1)",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        planted.remote.url = url.to_owned();
        planted.object = ObjectRef::new(Kind::MCPServer, "tools", &format!("time-{}", url.len()))
            .map_err(anyhow::Error::msg)?;
        let value = StoredDeployment {
            v: RECORD_VERSION,
            seq: 1_000_000,
            changed_at: Utc::now(),
            state: DeploymentState::Live(Box::new(planted.clone())),
            last: None,
        };
        let key = DeploymentKey::new(planted.cluster.clone(), planted.object.clone());
        store.put(key.to_string(), value.to_json().into()).await?;
    }
    let api = hub.stack.api();
    let sample = "herald_api_refused_values_total{registry=\"default\"}";
    eventually(STEP, "the API to refuse both values", || async {
        Ok((api.metric(sample).await? >= 2.0).then_some(()))
    })
    .await?;
    assert!(
        api.log_contents()
            .contains("a stored value breaks the rules")
    );
    assert_eq!(hub.served().await?, hub.before.0);
    Ok(())
}

#[tokio::test]
async fn unsigned_and_wrongly_signed_events_are_refused_and_a_rotated_key_is_accepted()
-> anyhow::Result<()> {
    let hub = Hub::start("trust-signatures", &[EAST], true).await?;
    let time = hub.live("time").await?;
    let redirect = || applied(&time, |r| r.remote.url = EVIL_URL.into());
    let unsigned = hub.publish(&redirect(), None).await?;
    assert_refused(&hub.refusal(unsigned).await?, "unsigned", "cluster east");
    let (_, stranger) = Signer::generate();
    let wrong_key = hub.publish(&redirect(), Some(&stranger)).await?;
    assert_refused(
        &hub.refusal(wrong_key).await?,
        "bad_signature",
        "has no key",
    );
    // The watcher's signature of a harmless event, on the redirect.
    let harmless = message(&applied(&time, |_| ()));
    let (subject, mut headers, payload) = message(&redirect());
    hub.east.sign(&subject, &harmless.2, &mut headers);
    let ack = hub
        .js
        .publish_with_headers(subject, headers, payload)
        .await?
        .await?;
    assert_refused(
        &hub.refusal(ack.sequence).await?,
        "bad_signature",
        "does not verify",
    );
    // A cluster the hub does not know, unsigned.
    let ghost = applied(&time, |r| r.cluster = "ghost".parse().unwrap());
    let ghost = hub.publish(&ghost, None).await?;
    assert_refused(&hub.refusal(ghost).await?, "unsigned", "cluster ghost");
    hub.assert_unchanged().await?;

    // The next key of a rotation is trusted: its event applies.
    let rotated = applied(&time, |r| r.description = "Signed with the next key".into());
    hub.publish(&rotated, Some(&hub.next)).await?;
    eventually(
        STEP,
        "the event signed with the next key to be served",
        || async {
            let served = hub.served().await?;
            Ok(served
                .values()
                .flatten()
                .any(|e| e.description == "Signed with the next key")
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_forged_heartbeat_makes_no_cluster_healthy() -> anyhow::Result<()> {
    let hub = Hub::start("trust-heartbeat", &[EAST], false).await?;
    let year_2099 = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let beat = |cluster: &str, time| {
        let body = Heartbeat {
            v: 1,
            cluster: cluster.parse().expect("a cluster id"),
            started_at: Utc::now(),
            interval_seconds: 30,
            watcher_version: "9.9.9".to_owned(),
        };
        Event::new(EventData::Heartbeat(body), time)
    };
    // A cluster the hub does not know, and its deployment of tools' time.
    let ghost = hub.publish(&beat("ghost", year_2099), None).await?;
    assert_refused(&hub.refusal(ghost).await?, "unknown_source", "ghost");
    let joined = applied(&hub.live("time").await?, |r| {
        r.cluster = "ghost".parse().unwrap();
        r.remote.url = EVIL_URL.into();
    });
    let joined = hub.publish(&joined, None).await?;
    assert_refused(&hub.refusal(joined).await?, "unknown_source", "ghost");
    // The known cluster's key, a heartbeat from 2099.
    assert_refused(
        &hub.forge(&beat(EAST, year_2099)).await?,
        "clock_skew",
        "the event's time",
    );

    hub.assert_unchanged().await?;
    let clusters = hub.js.get_key_value(CLUSTERS_BUCKET).await?;
    assert!(
        clusters.get("ghost").await?.is_none(),
        "ghost has a liveness record"
    );
    let east = hub.east_state().await?;
    assert!(
        east.last_heartbeat.is_some_and(|t| t <= Utc::now()),
        "{east:?}"
    );
    assert_ne!(east.watcher_version.as_deref(), Some("9.9.9"));
    let status = hub.status().await?;
    assert!(!status.lines().any(|l| l.starts_with("ghost")), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_record_with_the_largest_epoch_is_refused() -> anyhow::Result<()> {
    let hub = Hub::start("trust-epoch", &[EAST], true).await?;
    let time = hub.live("time").await?;
    let planted = applied(&time, |r| {
        r.epoch = u64::MAX;
        r.remote.url = EVIL_URL.into();
    });
    assert_refused(
        &hub.forge(&planted).await?,
        "clock_skew",
        "the record's epoch",
    );
    hub.assert_unchanged().await
}

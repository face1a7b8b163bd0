//! Every rejection the watcher can make under its default flags, end to end: the
//! objects of core's `tests/fixtures/rejected.yaml` (each names the reason it must get)
//! plus a few made here, created in a real API server that serves `events.k8s.io/v1`
//! (the test-only stand-in CRD of `integration-tests/kube/`). Each gets a Warning Event
//! `RegistryRejected` regarding it, whose note explains the reason and carries no
//! secret. The reasons of the strict flags (`url_required`, `registry_not_allowed`,
//! `name_not_owned`) are `watcher.rs`'s `rejections_are_events_on_their_objects`, and
//! `too_large` is its `a_record_larger_than_nats_takes_is_rejected_not_retried`;
//! `not_normalised` is the projector's check of records, never the watcher's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_core::Kind;
use herald_core::annotations as ann;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::{self, opted_in, set_status, with};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::storm::report;
use herald_integration_tests::timeout::eventually;
use herald_integration_tests::tools::workspace_root;
use kube::api::{Api, DynamicObject, PostParams};
use serde::Deserialize as _;
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(60);

/// Words that must never reach an Event: the password of the fixture's URL with
/// credentials, and the value of the made-up claims.
const SECRETS: [&str; 2] = ["hunter2", "s3cr3t-claim-value"];

/// One object that must be rejected, and the reason code it must get.
struct Case {
    kind: Kind,
    namespace: String,
    name: String,
    body: Value,
    status: Option<Value>,
    expect: String,
}

/// The objects of `rejected.yaml`, without the bookkeeping the API server assigns.
fn fixture_cases() -> anyhow::Result<Vec<Case>> {
    let path = workspace_root().join("core/tests/fixtures/rejected.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut cases = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut object = Value::deserialize(document)?;
        if object.is_null() {
            continue;
        }
        let kind: Kind = object["kind"]
            .as_str()
            .context("a kind")?
            .parse()
            .map_err(anyhow::Error::msg)?;
        let metadata = object["metadata"].as_object_mut().context("metadata")?;
        // An object without a uid cannot exist in a cluster (the API server assigns
        // one): that fixture is the mapping's alone.
        if metadata.remove("uid").is_none() {
            continue;
        }
        metadata.remove("resourceVersion");
        let namespace = metadata["namespace"]
            .as_str()
            .context("namespace")?
            .to_owned();
        let name = metadata["name"].as_str().context("name")?.to_owned();
        let expect = object["metadata"]["annotations"]["herald.test/expect"]
            .as_str()
            .context("herald.test/expect")?
            .to_owned();
        let status = object.as_object_mut().and_then(|o| o.remove("status"));
        cases.push(Case {
            kind,
            namespace,
            name,
            body: object,
            status,
            expect,
        });
    }
    Ok(cases)
}

/// Reasons no fixture covers, made here on MCPServers in `made`.
fn made_cases() -> Vec<Case> {
    let case = |name: &str, key: &str, value: &str, expect: &str| {
        let mut body = opted_in(name, "Made to be rejected");
        body["metadata"]["annotations"][key] = json!(value);
        body["kind"] = json!("MCPServer");
        Case {
            kind: Kind::MCPServer,
            namespace: "made".into(),
            name: name.into(),
            body: with(
                body,
                &["apiVersion"],
                json!(format!(
                    "toolhive.stacklok.dev/{}",
                    Kind::MCPServer.versions()[0]
                )),
            ),
            status: Some(json!({"phase": "Running"})),
            expect: expect.into(),
        }
    };
    vec![
        case(
            "invisible",
            ann::REGISTRY_DESCRIPTION,
            "zero\u{200b}width",
            "invisible_characters",
        ),
        case(
            "long-category",
            ann::REGISTRY_CATEGORY,
            &"c".repeat(150),
            "invalid_text",
        ),
        case(
            "bad-claims",
            ann::AUTHZ_CLAIMS,
            r#"["s3cr3t-claim-value"]"#,
            "invalid_authz_claims",
        ),
        // Advertised all the same: the Event tells why the definitions are missing.
        case(
            "bad-definitions",
            ann::TOOL_DEFINITIONS,
            "not json",
            "invalid_tool_definitions",
        ),
    ]
}

large_stack_test!(every_rejection_is_an_event_on_its_object => every_rejection_steps);

async fn every_rejection_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = Stack::builder("rejection-events")
        .without_watchers()
        .build()
        .await?;
    // Before the watcher starts: it stops trying Events after a 404.
    env.kube().serve_events().await?;
    let watcher = env.watcher(0, &env.nats.url()).start().await?;
    env.watchers.push(watcher);

    let mut cases = fixture_cases()?;
    cases.extend(made_cases());
    let client = env.kube().client();
    let mut refused_by_the_api_server = Vec::new();
    let mut created = Vec::new();
    for case in cases {
        let version = case.body["apiVersion"]
            .as_str()
            .and_then(|v| v.rsplit('/').next())
            .unwrap_or(case.kind.versions()[0])
            .to_owned();
        let api = objects::api_at(client.clone(), case.kind, &version, &case.namespace);
        let object: DynamicObject = serde_json::from_value(case.body.clone())?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            // The CRD's schema refuses it: it can never reach a watcher.
            Err(kube::Error::Api(status)) if status.code == 422 && case.namespace != "made" => {
                refused_by_the_api_server.push(format!("{}: {}", case.name, status.message));
                continue;
            }
            Err(err) => return Err(err).context(case.name.clone()),
        }
        if let Some(status) = &case.status {
            set_status(&api, &case.name, status.clone()).await?;
        }
        created.push(case);
    }
    eprintln!("refused by the API server's schema: {refused_by_the_api_server:#?}");

    let events = events(&env);
    let last_missing = std::sync::Mutex::new(Vec::new());
    let last_missing = &last_missing;
    let found = eventually(STEP, "an Event on every rejected object", || async {
        let all = events.list(&Default::default()).await?;
        let by_object: BTreeMap<(String, String), Vec<Value>> = all
            .items
            .into_iter()
            .map(|e| e.data)
            .fold(BTreeMap::new(), |mut by, e| {
                let key = (
                    e["regarding"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    e["regarding"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
                by.entry(key).or_default().push(e);
                by
            });
        let missing: Vec<String> = created
            .iter()
            .filter(|c| !by_object.contains_key(&(c.namespace.clone(), c.name.clone())))
            .map(|c| format!("{}/{} ({})", c.namespace, c.name, c.expect))
            .collect();
        let all_there = missing.is_empty();
        *last_missing.lock().unwrap_or_else(|e| e.into_inner()) = missing;
        Ok(all_there.then_some(by_object))
    })
    .await
    .with_context(|| {
        format!(
            "no Event on {:?}",
            last_missing.lock().unwrap_or_else(|e| e.into_inner())
        )
    })?;

    let mut reasons = BTreeSet::new();
    for case in &created {
        let key = (case.namespace.clone(), case.name.clone());
        let on_it = &found[&key];
        let [event] = on_it.as_slice() else {
            anyhow::bail!("{key:?}: expected one Event, got {on_it:#?}");
        };
        let what = format!("{}/{} ({})", case.namespace, case.name, case.expect);
        assert_eq!(event["type"], "Warning", "{what}: {event:#}");
        assert_eq!(event["reason"], "RegistryRejected", "{what}: {event:#}");
        assert_eq!(event["reportingController"], "herald-watcher", "{what}");
        assert_eq!(event["regarding"]["kind"], case.kind.as_str(), "{what}");
        assert!(
            event["regarding"]["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "{what}"
        );
        let note = event["note"].as_str().unwrap_or_default();
        assert!(!note.is_empty(), "{what}: no note");
        for secret in SECRETS {
            assert!(
                !note.contains(secret),
                "{what}: the note shows a secret: {note}"
            );
        }
        reasons.insert(case.expect.clone());
    }
    // And the counter by reason agrees: each reason counted as often as objects got it.
    let watcher = &env.watchers[0];
    for reason in &reasons {
        let expected = created.iter().filter(|c| &c.expect == reason).count() as f64;
        let sample = format!("herald_watcher_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(watcher.metric(&sample).await?, expected, "{sample}");
    }
    report(
        "rejection-events",
        &format!(
            "objects={} reasons={} refused_by_schema={} reasons_covered={reasons:?}",
            created.len(),
            reasons.len(),
            refused_by_the_api_server.len()
        ),
        started,
    );
    Ok(())
}

fn events(env: &Stack) -> Api<DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "events");
    Api::all_with(env.kube().client(), &resource)
}

//! The event contract: CloudEvents envelopes round-trip, and every way an
//! event can be wrong is caught with a readable reason.

mod common;

use common::*;
use herald_core::catalog_record::{CatalogRecord, CatalogWithdrawal};
use herald_core::event::{DecodeError, Heartbeat, Resync};
use herald_core::import::check_entry;
use herald_core::names::EventSubject;
use herald_core::record::Withdrawal;
use herald_core::{Event, EventData, EventType, Kind, WithdrawReason};
use serde_json::{Value, json};

fn applied() -> Event {
    let r = record("prod-eu", "tools", "search", "io.example/search", "2.0.0");
    Event::new(EventData::Applied(Box::new(r)), seen_at())
}

fn all_events() -> Vec<Event> {
    let r = record("prod-eu", "tools", "search", "io.example/search", "2.0.0");
    let resync = Resync {
        v: 1,
        cluster: r.cluster.clone(),
        kind: Kind::MCPServer,
        epoch: 9,
        advertised: Some(3),
    };
    vec![
        applied(),
        Event::new(
            EventData::Withdrawn(Withdrawal {
                v: 1,
                cluster: r.cluster.clone(),
                registry: r.registry.clone(),
                object: r.object.clone(),
                uid: r.uid.clone(),
                resource_version: "99".into(),
                epoch: 9,
                reason: WithdrawReason::Deleted,
                message: None,
            }),
            seen_at(),
        ),
        Event::new(
            EventData::ResyncStarted(Resync {
                advertised: None,
                ..resync.clone()
            }),
            seen_at(),
        ),
        Event::new(EventData::ResyncCompleted(resync), seen_at()),
        Event::new(
            EventData::Heartbeat(Heartbeat {
                v: 1,
                cluster: r.cluster.clone(),
                started_at: seen_at(),
                interval_seconds: 30,
                watcher_version: "0.1.0".into(),
            }),
            seen_at(),
        ),
        catalog_applied(),
        Event::new(
            EventData::CatalogWithdrawn(CatalogWithdrawal {
                v: 1,
                source: "upstream".parse().unwrap(),
                registry: "default".parse().unwrap(),
                server_name: "io.example/search".parse().unwrap(),
                version: "2.0.0".into(),
                observed_at: seen_at(),
            }),
            seen_at(),
        ),
    ]
}

fn catalog_applied() -> Event {
    let entry = check_entry(&json!({
        "name": "io.example/search",
        "description": "Search the web",
        "version": "2.0.0",
    }))
    .unwrap();
    let record = CatalogRecord::new(
        "upstream".parse().unwrap(),
        "default".parse().unwrap(),
        entry,
        seen_at(),
    );
    Event::new(EventData::CatalogApplied(Box::new(record)), seen_at())
}

#[test]
fn catalog_events_have_their_own_subject_source_and_stable_ids() {
    let event = catalog_applied();
    assert_eq!(
        event.nats_subject().to_string(),
        "herald.events._catalog.upstream.default"
    );
    let v: Value = serde_json::from_slice(&event.to_json()).unwrap();
    assert_eq!(v["type"], "dev.herald.catalog.applied");
    assert_eq!(v["source"], "/catalogs/upstream");
    assert_eq!(v["subject"], "io.example/search@2.0.0");
    // Imported again later, unchanged: the same id, so deduplicated.
    let EventData::CatalogApplied(mut later) = event.data.clone() else {
        unreachable!()
    };
    later.observed_at = seen_at() + chrono::Duration::hours(1);
    assert_eq!(
        Event::new(EventData::CatalogApplied(later.clone()), seen_at()).id,
        event.id
    );
    later.server["description"] = json!("Search the whole web");
    later.digest = herald_core::catalog_record::digest(&later.server, later.meta.as_ref());
    assert_ne!(
        Event::new(EventData::CatalogApplied(later), seen_at()).id,
        event.id
    );
    // Published on a cluster's subject, it is refused.
    let err = Event::decode_on("herald.events.prod-eu.default", &event.to_json()).unwrap_err();
    assert_eq!(err.code(), "wrong_subject");
    let mut forged = v.clone();
    forged["source"] = json!("/clusters/prod-eu");
    let err = Event::decode(&serde_json::to_vec(&forged).unwrap()).unwrap_err();
    assert_eq!(err.code(), "inconsistent");
}

#[test]
fn every_event_type_round_trips_through_json() {
    let events = all_events();
    assert_eq!(
        events.iter().map(Event::event_type).collect::<Vec<_>>(),
        EventType::ALL
    );
    for event in events {
        let bytes = event.to_json();
        let subject = event.nats_subject().to_string();
        assert_eq!(Event::decode_on(&subject, &bytes).unwrap(), event);
    }
}

#[test]
fn envelopes_are_cloudevents_1_0() {
    let event = applied();
    let v: Value = serde_json::from_slice(&event.to_json()).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "dev.herald.deployment.applied");
    assert_eq!(v["source"], "/clusters/prod-eu");
    assert_eq!(v["subject"], "mcpserver/tools/search");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(v["id"], event.id.as_str());
    assert_eq!(v["data"]["v"], 1);
    assert_eq!(v["data"]["serverName"], "io.example/search");
    assert_eq!(
        event.nats_subject().to_string(),
        "herald.events.prod-eu.default"
    );
}

#[test]
fn ids_are_stable_for_retries_and_differ_across_epochs() {
    let a = applied();
    assert_eq!(a.id, applied().id, "a retried publish is deduplicated");
    let EventData::Applied(mut r) = a.data.clone() else {
        unreachable!()
    };
    r.epoch += 1;
    assert_ne!(
        Event::new(EventData::Applied(r), seen_at()).id,
        a.id,
        "a re-list confirms again"
    );
}

#[test]
fn unknown_fields_are_tolerated_so_old_readers_survive_new_writers() {
    let mut v: Value = serde_json::from_slice(&applied().to_json()).unwrap();
    v["extension"] = json!("x");
    v["data"]["futureField"] = json!({"nested": true});
    let decoded = Event::decode(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(decoded, applied());
}

fn decode_mutated(mutate: impl FnOnce(&mut Value)) -> DecodeError {
    let mut v: Value = serde_json::from_slice(&applied().to_json()).unwrap();
    mutate(&mut v);
    Event::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err()
}

#[test]
fn bad_events_are_refused_with_a_code_and_a_reason() {
    assert_eq!(Event::decode(b"{not json").unwrap_err().code(), "malformed");
    assert_eq!(Event::decode(b"[1,2]").unwrap_err().code(), "malformed");
    assert_eq!(
        decode_mutated(|v| v["specversion"] = json!("0.3")).code(),
        "malformed"
    );
    assert_eq!(
        decode_mutated(|v| {
            v.as_object_mut().unwrap().remove("id");
        })
        .code(),
        "malformed"
    );
    assert_eq!(
        decode_mutated(|v| v["datacontenttype"] = json!("text/xml")).code(),
        "malformed"
    );
    assert_eq!(
        decode_mutated(|v| v["type"] = json!("dev.herald.deployment.exploded")).code(),
        "unknown_type"
    );
    assert_eq!(
        decode_mutated(|v| v["data"]["v"] = json!(2)).code(),
        "newer_format"
    );
    assert_eq!(
        decode_mutated(|v| {
            v["data"].as_object_mut().unwrap().remove("v");
        })
        .code(),
        "invalid"
    );
    assert_eq!(
        decode_mutated(|v| v["data"]["cluster"] = json!("Not_Valid")).code(),
        "invalid"
    );
    assert_eq!(
        decode_mutated(|v| v["data"]["serverName"] = json!("noslash")).code(),
        "invalid"
    );
    assert_eq!(
        decode_mutated(|v| v["source"] = json!("/clusters/other")).code(),
        "inconsistent"
    );
    assert_eq!(
        decode_mutated(|v| v["subject"] = json!("mcpserver/tools/other")).code(),
        "inconsistent"
    );
    let err = decode_mutated(|v| v["data"]["v"] = json!(2));
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn an_event_on_another_clusters_subject_is_refused() {
    let event = applied();
    let bytes = event.to_json();
    for subject in [
        "herald.events.other.default",
        "herald.events.prod-eu.other",
        "herald.events.prod-eu._cluster",
        "junk",
    ] {
        let err = Event::decode_on(subject, &bytes).unwrap_err();
        assert_eq!(err.code(), "wrong_subject", "{subject}");
    }
    let resync = &all_events()[2];
    assert_eq!(
        resync.nats_subject(),
        EventSubject::Cluster {
            cluster: "prod-eu".parse().unwrap()
        }
    );
    assert!(Event::decode_on("herald.events.prod-eu.default", &resync.to_json()).is_err());
}

/// An `applied` event exactly as the watcher wrote it before MCPServerEntry,
/// groups, tool definitions and the ToolHive block: it still reads, and reads
/// as it did (no group, no tool definitions).
const APPLIED_2026_11: &str = r#"{"specversion":"1.0","id":"prod-eu/uid-prod-eu-tools-search/4004/deployment.applied/default/7","source":"/clusters/prod-eu","type":"dev.herald.deployment.applied","subject":"mcpserver/tools/search","time":"2026-11-01T12:00:00Z","datacontenttype":"application/json","data":{"cluster":"prod-eu","description":"Web search","epoch":7,"image":"mcp/search:2.3.0","kind":"MCPServer","name":"search","namespace":"tools","observedAt":"2026-11-01T12:00:00Z","phase":"Ready","registry":"default","remote":{"type":"streamable-http","url":"https://search.tools.prod-eu.example.com/mcp"},"resourceVersion":"4004","serverName":"io.example/search","transport":"streamable-http","uid":"uid-prod-eu-tools-search","v":1,"version":"2.0.0"}}"#;

#[test]
fn an_event_written_before_the_new_fields_still_reads() {
    let decoded = Event::decode(APPLIED_2026_11.as_bytes()).unwrap();
    // Written before packages and change stamps: it reads without them.
    let mut expected = applied();
    if let EventData::Applied(r) = &mut expected.data {
        r.package = None;
        r.changed_at = None;
    }
    assert_eq!(decoded, expected);
    let EventData::Applied(record) = &decoded.data else {
        panic!("{decoded:?}")
    };
    assert_eq!(record.group, None);
    assert_eq!(record.package, None);
    // And a record without the new fields writes exactly what old readers know.
    let written: Value = serde_json::from_slice(&expected.to_json()).unwrap();
    let frozen: Value = serde_json::from_str(APPLIED_2026_11).unwrap();
    assert_eq!(written, frozen);
}

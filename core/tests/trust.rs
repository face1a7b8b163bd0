//! The trust rules of the mapping, the shared validation, admission and the merge:
//! nobody takes another namespace's server name, deceptive values are
//! refused or neutralised, and the owner that was there first speaks for a
//! merged entry however the namespaces sort.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use herald_core::annotations as ann;
use herald_core::mapping::Decision;
use herald_core::merge::merge;
use herald_core::ownership::{NameGrant, NameOwnership};
use herald_core::projection::{Fold, fold_applied};
use herald_core::rejection::UrlSource;
use herald_core::stored::StoredDeployment;
use herald_core::validate::{self, UrlRules};
use serde_json::Value;

fn object(namespace: &str, name: &str, server_name: Option<&str>) -> Value {
    let mut object = fixture("advertised.yaml", "search");
    object["metadata"]["namespace"] = Value::from(namespace);
    object["metadata"]["name"] = Value::from(name);
    annotate(&mut object, ann::REGISTRY_SERVER_NAME, server_name);
    object
}

fn code(decision: Decision) -> String {
    match decision {
        Decision::Reject(r) => r.code().to_owned(),
        Decision::Advertise(r) => format!("advertised {}", r.server_name),
        Decision::Skip(reason) => format!("skipped {}", reason.as_str()),
    }
}

#[test]
fn another_namespace_cannot_claim_a_default_name() {
    let intruder = object("aaa-intruder", "time", Some("com.toolhive.k8s.tools/time"));
    assert_eq!(code(map(&intruder)), "name_not_owned");
    let Decision::Reject(reason) = map(&intruder) else {
        unreachable!()
    };
    let text = reason.to_string();
    assert!(
        text.contains("com.toolhive.k8s.tools/time") && text.contains("namespace tools"),
        "{text}"
    );
    // Its own default name is fine.
    assert_eq!(
        code(map(&object("aaa-intruder", "time", None))),
        "advertised com.toolhive.k8s.aaa-intruder/time"
    );
}

#[test]
fn a_chosen_name_needs_a_grant_for_that_namespace_and_registry() {
    let github = "io.github.github/github-mcp-server";
    let in_tools = object("tools", "github", Some(github));
    let in_other = object("aaa-other", "github", Some(github));
    assert_eq!(code(map(&in_tools)), "name_not_owned");
    let mut p = policy();
    p.names = NameOwnership::new(["io.github.github/*=tools,platform"
        .parse::<NameGrant>()
        .unwrap()]);
    assert_eq!(
        code(map_with(&in_tools, &p)),
        format!("advertised {github}")
    );
    assert_eq!(code(map_with(&in_other, &p)), "name_not_owned");
    // A grant for one registry does not reach another.
    p.names = NameOwnership::new(["engineering:io.github.github/*=tools"
        .parse::<NameGrant>()
        .unwrap()]);
    assert_eq!(code(map_with(&in_tools, &p)), "name_not_owned");
    let mut engineering = in_tools.clone();
    label(&mut engineering, ann::REGISTRY_NAME, "engineering");
    assert_eq!(
        code(map_with(&engineering, &p)),
        format!("advertised {github}")
    );
}

#[test]
fn the_same_namespace_in_two_clusters_still_merges() {
    let a = record("c1", "tools", "search", "io.example/search", "2.0.0");
    let b = record("c2", "tools", "search", "io.example/search", "2.0.0");
    let stored: Vec<StoredDeployment> = [a, b]
        .iter()
        .enumerate()
        .map(|(i, r)| match fold_applied(None, r, i as u64 + 1) {
            Fold::Write(s) => s,
            Fold::Stale { .. } => unreachable!(),
            Fold::Refused { reason } => unreachable!("{reason}"),
        })
        .collect();
    let entries = merge(&stored);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].server.remotes.len(), 2);
}

#[test]
fn the_oldest_owner_speaks_for_an_entry_however_namespaces_sort() {
    let mut owner = record("c1", "tools", "search", "io.example/search", "2.0.0");
    owner.description = "from the owner".into();
    owner.created_at = Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let mut newcomer = record(
        "a-first",
        "aaa-team",
        "search",
        "io.example/search",
        "2.0.0",
    );
    newcomer.description = "from the newcomer".into();
    newcomer.title = Some("Newcomer title".into());
    newcomer.created_at = owner.created_at.map(|t| t + Duration::days(30));
    for input in [
        vec![owner.clone(), newcomer.clone()],
        vec![newcomer.clone(), owner.clone()],
    ] {
        let stored: Vec<StoredDeployment> = input
            .iter()
            .enumerate()
            .map(|(i, r)| match fold_applied(None, r, i as u64 + 1) {
                Fold::Write(s) => s,
                Fold::Stale { .. } => unreachable!(),
                Fold::Refused { reason } => unreachable!("{reason}"),
            })
            .collect();
        let e = &merge(&stored)[0];
        assert_eq!(e.server.description, "from the owner");
        assert_eq!(
            e.server.remotes[0].url, owner.remote.url,
            "the owner's remote first"
        );
    }
}

#[test]
fn deceptive_values_are_refused_or_neutralised() {
    let with = |key: &str, value: &str| {
        let mut o = object("tools", "search", None);
        annotate(&mut o, key, Some(value));
        map(&o)
    };
    // Refused, each with its reason.
    for (key, value, expected) in [
        (
            ann::REGISTRY_TITLE,
            "Safe\u{202E}txt.exe",
            "invisible_characters",
        ),
        (
            ann::REGISTRY_DESCRIPTION,
            "zero\u{200B}width",
            "invisible_characters",
        ),
        (
            ann::REGISTRY_URL,
            "http://169.254.169.254/latest/meta-data",
            "invalid_url",
        ),
        (
            ann::REGISTRY_URL,
            "http://127.0.0.1:8080/mcp",
            "invalid_url",
        ),
        (ann::REGISTRY_URL, "javascript:alert(1)", "invalid_url"),
        (ann::REGISTRY_ICON, "javascript:alert(1)", "invalid_icon"),
        (
            ann::REGISTRY_ICON,
            "https://[fd00:ec2::254]/i.png",
            "invalid_icon",
        ),
        (ann::REGISTRY_VERSION, "1.0/../../x", "invalid_version"),
        (ann::REGISTRY_VERSION, "1.0 beta", "invalid_version"),
    ] {
        assert_eq!(code(with(key, value)), expected, "{key}={value:?}");
    }
    // Neutralised: parsed once, advertised normalised.
    for (raw, served) in [
        (
            "https://good.example.com\\@evil.example.com/mcp",
            "https://good.example.com/@evil.example.com/mcp",
        ),
        (
            "https://bücher.example/mcp",
            "https://xn--bcher-kva.example/mcp",
        ),
        ("https://x.example/a\"<b>", "https://x.example/a%22%3Cb%3E"),
    ] {
        match with(ann::REGISTRY_URL, raw) {
            Decision::Advertise(r) => assert_eq!(r.remote.url, served),
            other => panic!("{raw}: {other:?}"),
        }
    }
}

#[test]
fn the_record_check_refuses_what_a_forged_event_could_carry() {
    let good = record("c1", "tools", "search", "io.example/search", "2.0.0");
    assert_eq!(validate::record(&good, UrlRules::default()), Ok(()));
    let refused = |edit: &dyn Fn(&mut herald_core::DeploymentRecord)| {
        let mut r = good.clone();
        edit(&mut r);
        validate::record(&r, UrlRules::default())
            .unwrap_err()
            .code()
            .to_owned()
    };
    assert_eq!(
        refused(&|r| r.remote.url = "javascript:alert(1)".into()),
        "invalid_url"
    );
    assert_eq!(
        refused(&|r| r.description = "x".repeat(1_000_000)),
        "description_too_long"
    );
    assert_eq!(
        refused(&|r| r.description = "bell\u{7}".into()),
        "control_characters"
    );
    assert_eq!(
        refused(&|r| r.remote.url = "https://EXAMPLE.com/mcp".into()),
        "not_normalised"
    );
    assert_eq!(refused(&|r| r.uid = "../x".into()), "malformed");
    assert_eq!(
        refused(&|r| {
            let mut h = herald_core::record::Header::bearer_token();
            h.extra.insert("value".into(), "secret".into());
            r.remote.headers = vec![h];
        }),
        "invalid_header"
    );
    assert_eq!(
        refused(&|r| r.icon = Some("http://example.com/i.png".into())),
        "invalid_icon"
    );
    // Each declaration is bounded, so is their number: 2,200 declarations of
    // ~440 bytes made a record (and every list page holding it) ~1 MB.
    assert_eq!(
        refused(&|r| {
            r.remote.headers = (0..2200)
                .map(|i| herald_core::record::Header {
                    name: format!("X-{i:05}{}", "a".repeat(120)),
                    description: Some("d".repeat(256)),
                    ..herald_core::record::Header::bearer_token()
                })
                .collect()
        }),
        "invalid_header"
    );
}

#[test]
fn a_url_from_a_record_is_checked_like_one_from_an_annotation() {
    assert!(
        validate::url(
            "http://[::ffff:169.254.169.254]/",
            UrlSource::Record,
            UrlRules::default()
        )
        .is_err()
    );
}

#[test]
fn admission_refuses_the_future_unknown_clusters_and_what_the_rules_refuse() {
    use herald_core::admission::AdmissionPolicy;
    use herald_core::event::{Heartbeat, Resync};
    use herald_core::{Event, EventData, Kind};

    let stored_at = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
    let millis = |t: chrono::DateTime<Utc>| u64::try_from(t.timestamp_millis()).unwrap();
    let mut good = record(
        "c1",
        "tools",
        "time",
        "com.toolhive.k8s.tools/time",
        "1.0.0",
    );
    // Published a day late: an outbox held it through an outage.
    good.epoch = millis(stored_at - Duration::days(1));
    good.observed_at = stored_at - Duration::days(1);
    let applied = |edit: &dyn Fn(&mut herald_core::DeploymentRecord)| {
        let mut r = good.clone();
        edit(&mut r);
        Event::new(EventData::Applied(Box::new(r)), stored_at)
    };
    let policy = AdmissionPolicy::default();
    let code = |p: &AdmissionPolicy, e: &Event| p.admit(e, stored_at).err().map(|r| r.code());
    assert_eq!(code(&policy, &applied(&|_| ())), None);

    let skew = Some("clock_skew");
    assert_eq!(code(&policy, &applied(&|r| r.epoch = u64::MAX)), skew);
    let ahead = |minutes| millis(stored_at + Duration::minutes(minutes));
    assert_eq!(code(&policy, &applied(&|r| r.epoch = ahead(14))), None);
    assert_eq!(code(&policy, &applied(&|r| r.epoch = ahead(16))), skew);
    let year_2099 = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let mut late = applied(&|_| ());
    late.time = year_2099;
    assert_eq!(code(&policy, &late), skew);
    let resync = Resync {
        v: 1,
        cluster: "c1".parse().unwrap(),
        kind: Kind::MCPServer,
        epoch: millis(year_2099),
        advertised: Some(0),
    };
    let sweep = Event::new(EventData::ResyncCompleted(resync), stored_at);
    assert_eq!(code(&policy, &sweep), skew);
    let beat = Heartbeat {
        v: 1,
        cluster: "ghost".parse().unwrap(),
        started_at: year_2099,
        interval_seconds: 30,
        watcher_version: "1".into(),
    };
    let beat = Event::new(EventData::Heartbeat(beat), stored_at);
    assert_eq!(code(&policy, &beat), skew);

    // The rules of the mapping, and the names a namespace owns.
    let evil = applied(&|r| r.remote.url = "javascript:alert(1)".into());
    assert_eq!(code(&policy, &evil), Some("invalid"));
    let intruder = applied(&|r| {
        r.object = herald_core::ObjectRef::new(Kind::MCPServer, "aaa-intruder", "time").unwrap()
    });
    assert_eq!(code(&policy, &intruder), Some("name_not_owned"));

    // Only the clusters the hub knows, when it was told any.
    let known = AdmissionPolicy {
        clusters: Some(["c1".parse().unwrap()].into()),
        ..AdmissionPolicy::default()
    };
    assert_eq!(code(&known, &applied(&|_| ())), None);
    assert_eq!(code(&known, &beat), Some("unknown_source"));
}

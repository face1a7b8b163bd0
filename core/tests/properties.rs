//! Property tests: the mapping and the event decoder never panic on
//! arbitrary input, and names round-trip.

mod common;

use common::*;
use herald_core::mapping::decide;
use herald_core::names::{DeploymentKey, EventSubject, is_valid_kv_key};
use herald_core::{Event, Kind, ObjectRef};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z./-]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A real object with arbitrary values grafted at the paths the mapping reads.
fn mutated_object() -> impl Strategy<Value = Value> {
    let paths = prop::sample::select(vec![
        "/metadata/annotations/toolhive.stacklok.dev~1registry-description",
        "/metadata/annotations/toolhive.stacklok.dev~1registry-url",
        "/metadata/annotations/toolhive.stacklok.dev~1tools",
        "/metadata/annotations/toolhive.stacklok.dev~1registry-version",
        "/metadata/annotations/toolhive.stacklok.dev~1registry-server-name",
        "/metadata/annotations/toolhive.stacklok.dev~1registry-icon",
        "/metadata/labels/toolhive.stacklok.dev~1registry-name",
        "/metadata/name",
        "/metadata/namespace",
        "/metadata/generation",
        "/spec/transport",
        "/spec/proxyMode",
        "/spec/proxyPort",
        "/spec/image",
        "/spec/oidcConfig",
        "/spec/incomingAuth",
        "/status/phase",
        "/status/url",
        "/status",
        "/spec",
        "/metadata/annotations",
    ]);
    let base = load("advertised.yaml");
    (
        prop::sample::select(base),
        prop::collection::vec((paths, arbitrary_json()), 1..5),
    )
        .prop_map(|(mut object, grafts)| {
            for (path, value) in grafts {
                if let Some(slot) = object.pointer_mut(path) {
                    *slot = value;
                }
            }
            object
        })
}

proptest! {
    #[test]
    fn the_mapping_never_panics_on_arbitrary_json(object in arbitrary_json()) {
        for kind in Kind::ALL {
            let _ = decide(kind, &object, &policy(), observation());
        }
    }

    #[test]
    fn the_mapping_never_panics_on_mutated_real_objects(object in mutated_object()) {
        let decision = decide(kind_of(&object), &object, &policy(), observation());
        if let herald_core::Decision::Advertise(record) = decision {
            // What the mapping advertises passes the projector's re-check.
            prop_assert_eq!(herald_core::validate::record(&record, policy().urls), Ok(()));
            // Whatever got in must still be a valid, serializable record.
            let event = Event::new(herald_core::EventData::Applied(record), seen_at());
            prop_assert_eq!(Event::decode_on(&event.nats_subject().to_string(), &event.to_json()).unwrap(), event);
        }
    }

    #[test]
    fn decoding_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Event::decode(&bytes);
    }

    #[test]
    fn decoding_never_panics_on_arbitrary_envelopes(data in arbitrary_json(), ty in prop::sample::select(vec!["dev.herald.deployment.applied", "dev.herald.deployment.withdrawn", "dev.herald.resync.completed", "dev.herald.cluster.heartbeat", "x"])) {
        let envelope = serde_json::json!({"specversion": "1.0", "id": "x", "source": "/clusters/c1", "type": ty, "time": "2026-01-01T00:00:00Z", "data": data});
        let _ = Event::decode_on("herald.events.c1.default", &serde_json::to_vec(&envelope).unwrap());
    }

    #[test]
    fn deployment_keys_round_trip(
        cluster in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        namespace in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        name in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}",
        kind in prop::sample::select(Kind::ALL.to_vec()),
    ) {
        let key = DeploymentKey::new(cluster.parse().unwrap(), ObjectRef::new(kind, &namespace, &name).unwrap());
        let text = key.to_string();
        prop_assert!(is_valid_kv_key(&text));
        prop_assert_eq!(DeploymentKey::parse(&text).unwrap(), key);
    }

    #[test]
    fn subjects_round_trip(cluster in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", registry in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?") {
        let s = EventSubject::Deployment { cluster: cluster.parse().unwrap(), registry: registry.parse().unwrap() };
        prop_assert_eq!(EventSubject::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn the_shared_validation_never_panics_and_refuses_what_the_mapping_would(
        fields in prop::collection::vec(".{0,120}", 6),
    ) {
        let mut record = record("c1", "tools", "search", "io.example/search", "2.0.0");
        record.description = fields[0].clone();
        record.title = Some(fields[1].clone());
        record.version = fields[2].clone();
        record.remote.url = fields[3].clone();
        record.icon = Some(fields[4].clone());
        record.tools = vec![fields[5].clone()];
        let verdict = herald_core::validate::record(&record, policy().urls);
        if verdict.is_ok() {
            // Accepted text is plain: nothing a reader cannot see.
            for text in [&record.description, record.title.as_ref().unwrap(), &record.tools[0]] {
                prop_assert!(!text.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || herald_core::validate::is_invisible(c)));
            }
            prop_assert!(record.remote.url.starts_with("http://") || record.remote.url.starts_with("https://"));
            prop_assert!(!record.version.contains('/') && !record.version.contains(".."));
        }
    }

    #[test]
    fn url_normalisation_is_idempotent(raw in r#"(https?://)?[a-zA-Z0-9.:@\\/\[\]%<>"{}-]{0,60}"#) {
        let rules = herald_core::validate::UrlRules::default();
        let source = herald_core::rejection::UrlSource::Annotation;
        if let Ok(once) = herald_core::validate::url(&raw, source, rules) {
            prop_assert_eq!(herald_core::validate::url(&once, source, rules), Ok(once.clone()));
        }
    }

    #[test]
    fn key_parsing_never_panics(key in ".{0,80}") {
        let _ = DeploymentKey::parse(&key);
        let _ = EventSubject::parse(&key);
    }

    #[test]
    fn version_order_is_total_and_puts_semver_above_the_rest(
        versions in prop::collection::vec(
            prop_oneof![
                "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}(-[a-z0-9.]{1,4})?(\\+[a-z0-9]{1,3})?",
                "v?[0-9a-z.+_-]{1,8}",
                // Hostile spellings: leading zeros, unicode, control and bidi characters,
                // case variants of one semver, empty.
                "0[0-9]\\.0\\.0|1\\.0\\.0(\\+B|\\+b)?|1\\.0\\.0-[Aa]",
                ".{0,6}",
            ],
            4,
        )
    ) {
        use herald_core::version::compare;
        use std::cmp::Ordering;
        let semver = |s: &str| semver::Version::parse(s).is_ok();
        for a in &versions {
            prop_assert_eq!(compare(a, a), Ordering::Equal, "reflexive");
            for b in &versions {
                prop_assert_eq!(compare(a, b), compare(b, a).reverse(), "antisymmetric");
                prop_assert_eq!(compare(a, b) == Ordering::Equal, a == b, "equal only when spelled the same");
                if semver(a) && !semver(b) {
                    prop_assert_eq!(compare(a, b), Ordering::Greater, "semver above non-semver");
                }
                if let (Ok(x), Ok(y)) = (semver::Version::parse(a), semver::Version::parse(b))
                    && x != y
                {
                    prop_assert_eq!(compare(a, b), x.cmp(&y), "semver precedence first");
                }
                for c in &versions {
                    if compare(a, b) != Ordering::Less && compare(b, c) != Ordering::Less {
                        prop_assert_ne!(compare(a, c), Ordering::Less, "transitive");
                    }
                }
            }
        }
        // Sorting is then independent of the input order.
        let mut forward = versions.clone();
        forward.sort_by(|a, b| compare(a, b));
        let mut backward: Vec<String> = versions.iter().rev().cloned().collect();
        backward.sort_by(|a, b| compare(a, b));
        prop_assert_eq!(forward, backward);
    }

    #[test]
    fn version_resolution_never_panics_and_yields_only_publishable_versions(
        annotation in prop::option::of(prop_oneof![
            ".{0,40}",
            "(latest|stable|edge|main|nightly|LATEST|Stable)([-_.][a-z0-9]{1,4})?",
            "[\\^~>=<*]?[0-9x*]{1,3}(\\.[0-9x*]{1,3}){0,2}( \\|\\| 2)?",
        ]),
        image in prop_oneof![
            ".{0,40}",
            "[a-z0-9./:-]{1,20}(:[A-Za-z0-9_.-]{1,12})?(@sha256:[0-9a-f]{64})?",
            "[a-z]{1,8}:(latest|stable|edge|main|nightly)",
            "[a-z]{1,8}@sha256:[0-9a-f]{64}",
        ],
    ) {
        use herald_core::version::{is_channel, resolve};
        match resolve(annotation.as_deref(), Some(&image)) {
            Ok(v) => {
                prop_assert_eq!(herald_core::validate::version(&v), Ok(v.clone()));
                prop_assert!(!is_channel(&v), "{v}");
                prop_assert!(!v.contains('@') && !v.contains(':') && !v.contains('/'), "{v}");
                if annotation.is_none() && image.contains('@') && !image.split('@').next().unwrap().rsplit('/').next().unwrap().contains(':') {
                    prop_assert_eq!(v, "1.0.0", "a digest is never a version");
                }
            }
            Err(rejection) => {
                prop_assert!(annotation.is_some(), "only the annotation is ever refused");
                prop_assert_eq!(rejection.code(), "invalid_version");
            }
        }
    }

    #[test]
    fn tool_definitions_and_entry_urls_never_panic(
        definitions in arbitrary_json(),
        url in r#"(https?://)?[a-zA-Z0-9.:@\\/\[\]%-]{0,60}"#,
        allow in any::<bool>(),
    ) {
        let raw = serde_json::to_string(&Value::Array(vec![definitions])).unwrap();
        if let Ok(tools) = herald_core::validate::tool_definitions(&raw) {
            // Normalised definitions are a fixed point.
            let again = serde_json::to_string(&tools).unwrap();
            prop_assert_eq!(herald_core::validate::tool_definitions(&again).unwrap(), tools);
        }
        if let Err(e) = herald_core::entry::remote_url(&url, allow, false, Default::default())
            && url.len() > 12
        {
            prop_assert!(!e.to_string().contains(&url), "never echoes the URL");
        }
    }
}

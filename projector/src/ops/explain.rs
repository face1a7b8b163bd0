//! `explain`: answers "why is my server (not) listed?" for one server name
//! or one Kubernetes object. It reads what every registry bucket holds for
//! it, what the registries serve from that (the same merge as herald-api),
//! the last events of it in a bounded window of `HERALD_EVENTS`, and the
//! dead letters of it in `HERALD_DLQ`, and turns them into one verdict per
//! deployment or catalog entry: served, hidden by claims, withdrawn (and
//! why), refused by the projector's gate (with the dead-letter code), or
//! never seen.
//!
//! Reads are bounded: both streams are read from a start point (24 hours
//! back unless told) and at most `max_read` messages each, the newest ones
//! when the window holds more.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use herald_core::merge::merge_registry;
use herald_core::names::{DLQ_PREFIX, DLQ_STREAM, STREAM, bucket_name};
use herald_core::stored::{CatalogState, DeploymentState, StoredValue};
use herald_core::{Event, EventData, ObjectRef, RegistryName, ServerName, WithdrawReason};
use herald_runtime::buckets;
use herald_runtime::clock::from_nats_time;
use serde::Serialize;

use crate::dead_letter::{REASON_HEADER, SEQUENCE_HEADER, SUBJECT_HEADER};
use crate::ops::events::{self, Row};
use crate::ops::filter::ObjectFilter;
use crate::ops::starting_point::StartingPoint;
use crate::ops::table;

/// Longest wait for the next message of a window before giving up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How far back `explain` reads without `--since` or `--from-seq`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Messages read per stream at most, without `--max-read`.
pub const DEFAULT_MAX_READ: usize = 200_000;
/// Events and dead letters shown, without `--last`.
pub const DEFAULT_LAST: usize = 20;

/// What to explain: a server name (`io.github.acme/search`) or an object
/// (`kind/namespace/name`, or `namespace/name` for any kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Server(ServerName),
    Object(ObjectFilter),
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // A Kubernetes namespace has no dots; a server name's namespace is
        // reverse DNS and always has one.
        let slashes = s.matches('/').count();
        let server_like = s.split('/').next().is_some_and(|ns| ns.contains('.'));
        if slashes == 1 && server_like {
            return s.parse().map(Target::Server).map_err(|e| e.to_string());
        }
        let object: ObjectFilter = s.parse().map_err(|e| {
            format!("{e}; expected a server name (io.github.acme/search) or kind/namespace/name")
        })?;
        if object.name.is_none() {
            return Err(format!("{s:?}: explain takes one object, not namespace/*"));
        }
        Ok(Target::Object(object))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Server(name) => write!(f, "server {name}"),
            Target::Object(o) => match o.kind {
                Some(kind) => write!(
                    f,
                    "{}/{}/{}",
                    kind.token(),
                    o.namespace,
                    o.name.as_deref().unwrap_or("*")
                ),
                None => write!(f, "{}/{}", o.namespace, o.name.as_deref().unwrap_or("*")),
            },
        }
    }
}

impl Target {
    fn matches_object(&self, object: &ObjectRef) -> bool {
        match self {
            Target::Server(_) => false,
            Target::Object(want) => {
                want.kind.is_none_or(|k| k == object.kind())
                    && want.namespace == object.namespace()
                    && want.name.as_deref() == Some(object.name())
            }
        }
    }

    fn matches_server(&self, name: &ServerName) -> bool {
        matches!(self, Target::Server(want) if want == name)
    }
}

#[derive(Debug, Clone)]
pub struct ExplainOptions {
    pub target: Target,
    /// One registry, or all.
    pub registry: Option<RegistryName>,
    /// Where both streams are read from.
    pub start: StartingPoint,
    /// Messages read per stream at most (the newest ones).
    pub max_read: usize,
    /// Events and dead letters shown at most (the newest ones).
    pub last: usize,
}

/// Why a deployment or catalog entry is (not) served: a stable code and a
/// sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub registry: Option<String>,
    /// The bucket key, or the object when no key holds it.
    pub subject: String,
    /// `served`, `hidden_by_claims`, `deleted`, `opted_out`, `not_ready`,
    /// `rejected`, `moved`, `withdrawn_by_sweep`, `catalog_withdrawn`,
    /// `refused`, `not_seen`.
    pub code: String,
    /// The dead-letter code of `refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub detail: String,
}

impl Verdict {
    pub fn is_served(&self) -> bool {
        self.code == "served"
    }
}

/// One version a registry serves for the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    pub registry: String,
    pub server_name: String,
    pub version: String,
    pub is_latest: bool,
    pub remotes: Vec<String>,
    /// `cluster/kind/namespace/name` of each live deployment behind it.
    pub deployments: Vec<String>,
    /// Catalog sources that list it.
    pub catalogs: Vec<String>,
    /// Claim names a caller's token must carry to see it (never values).
    pub claims: Vec<String>,
}

/// What one bucket key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyState {
    pub registry: String,
    pub key: String,
    pub seq: u64,
    pub changed_at: String,
    pub state: String,
}

/// A dead letter of the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterLine {
    /// Its sequence in `HERALD_DLQ`.
    pub seq: u64,
    pub time: String,
    pub code: String,
    pub reason: String,
    /// Its sequence in `HERALD_EVENTS`.
    pub original_seq: Option<u64>,
    pub original_subject: String,
    #[serde(skip)]
    key: Option<(String, String)>,
}

/// The part of a stream that was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub stream: String,
    /// First and last sequence read; `None` when nothing was.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub read: usize,
    /// The window held more than `max_read` messages: only the newest were read.
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub target: String,
    pub verdicts: Vec<Verdict>,
    pub served: Vec<Served>,
    pub keys: Vec<KeyState>,
    pub events: Vec<Row>,
    pub dead_letters: Vec<DeadLetterLine>,
    pub windows: Vec<Window>,
}

/// What the target is made of, as far as it is known: the objects with its
/// server name, and the bucket keys that hold it.
#[derive(Debug, Default)]
struct Scope {
    objects: BTreeSet<(String, ObjectRef)>,
    server_names: BTreeSet<ServerName>,
}

impl Scope {
    fn event_matches(&mut self, target: &Target, event: &Event) -> bool {
        match &event.data {
            EventData::Applied(r) => {
                let hit = target.matches_server(&r.server_name) || target.matches_object(&r.object);
                if hit {
                    self.objects
                        .insert((r.cluster.to_string(), r.object.clone()));
                    self.server_names.insert(r.server_name.clone());
                }
                hit || self
                    .objects
                    .contains(&(r.cluster.to_string(), r.object.clone()))
            }
            EventData::Withdrawn(w) => {
                target.matches_object(&w.object)
                    || self
                        .objects
                        .contains(&(w.cluster.to_string(), w.object.clone()))
            }
            EventData::CatalogApplied(r) => {
                target.matches_server(&r.server_name) || self.server_names.contains(&r.server_name)
            }
            EventData::CatalogWithdrawn(w) => {
                target.matches_server(&w.server_name) || self.server_names.contains(&w.server_name)
            }
            // A completed re-list of a cluster and kind the target has an
            // object in: the sweep that may have withdrawn it.
            EventData::ResyncCompleted(r) => self
                .objects
                .iter()
                .any(|(c, o)| *c == r.cluster.as_str() && o.kind() == r.kind),
            EventData::ResyncStarted(_) | EventData::Heartbeat(_) => false,
        }
    }
}

/// One message of a stream window.
struct Message {
    seq: u64,
    stored_at: DateTime<Utc>,
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
}

/// Reads `stream` (subjects `filter`) from `start`, at most `max_read`
/// messages (the newest when there are more), handing each to `f`.
async fn read_window(
    js: &jetstream::Context,
    stream_name: &str,
    filter: &str,
    start: StartingPoint,
    max_read: usize,
    mut f: impl FnMut(Message),
) -> anyhow::Result<Window> {
    let mut window = Window {
        stream: stream_name.to_owned(),
        ..Window::default()
    };
    let Ok(mut stream) = js.get_stream(stream_name).await else {
        return Ok(window);
    };
    let end = stream.info().await?.state.last_sequence;
    let ordered = |policy| consumer::pull::OrderedConfig {
        filter_subject: filter.to_owned(),
        deliver_policy: policy,
        description: Some("herald-projector explain".to_owned()),
        ..Default::default()
    };
    let mut reader = stream
        .create_consumer(ordered(start.deliver_policy()))
        .await
        .context("creating an ordered consumer")?;
    let max = u64::try_from(max_read.max(1)).unwrap_or(u64::MAX);
    if reader.cached_info().num_pending > max {
        // Only the newest `max_read` sequences (fewer messages when filtered).
        window.truncated = true;
        reader = stream
            .create_consumer(ordered(consumer::DeliverPolicy::ByStartSequence {
                start_sequence: end.saturating_sub(max - 1).max(1),
            }))
            .await
            .context("creating an ordered consumer")?;
    }
    if reader.cached_info().num_pending == 0 || end == 0 {
        return Ok(window);
    }
    let mut messages = reader.messages().await.context("reading the stream")?;
    while window.read < max_read {
        let next = tokio::time::timeout(IDLE_TIMEOUT, messages.next())
            .await
            .with_context(|| format!("no message from {stream_name} for {IDLE_TIMEOUT:?}"))?;
        let Some(message) = next else { break };
        let message = message.context("reading the stream")?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending, stored_at) = (
            info.stream_sequence,
            info.pending,
            from_nats_time(info.published),
        );
        if seq > end {
            break;
        }
        window.first_seq.get_or_insert(seq);
        window.last_seq = Some(seq);
        window.read += 1;
        f(Message {
            seq,
            stored_at,
            subject: message.subject.to_string(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        });
        if seq >= end || pending == 0 {
            break;
        }
    }
    Ok(window)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Keeps the newest `n` of what is pushed.
fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, n: usize) {
    queue.push_back(item);
    while queue.len() > n {
        queue.pop_front();
    }
}

/// Gathers everything about `options.target` and decides the verdicts.
pub async fn explain(
    js: &jetstream::Context,
    options: &ExplainOptions,
) -> anyhow::Result<Explanation> {
    let target = &options.target;
    let mut scope = Scope::default();
    if let Target::Server(name) = target {
        scope.server_names.insert(name.clone());
    }

    // 1. The buckets: every value of the target, by registry.
    let mut registries: Vec<RegistryName> = buckets::registry_buckets(js)
        .await?
        .into_iter()
        .filter(|r| options.registry.as_ref().is_none_or(|only| only == r))
        .collect();
    registries.sort();
    let mut values: BTreeMap<RegistryName, Vec<(String, StoredValue)>> = BTreeMap::new();
    for registry in &registries {
        let Some(store) = buckets::open_existing(js, &bucket_name(registry)).await else {
            continue;
        };
        let decoded: Vec<(String, StoredValue)> = buckets::scan(&store, "")
            .await?
            .into_iter()
            .filter_map(|item| {
                StoredValue::decode(&item.key, &item.value)
                    .ok()
                    .map(|v| (item.key, v))
            })
            .collect();
        for (_, value) in &decoded {
            if let StoredValue::Deployment(d) = value
                && let Some(r) = d.live()
                && (target.matches_server(&r.server_name) || target.matches_object(&r.object))
            {
                scope
                    .objects
                    .insert((r.cluster.to_string(), r.object.clone()));
                scope.server_names.insert(r.server_name.clone());
            }
        }
        values.insert(registry.clone(), decoded);
    }

    // 2. The dead letters: refused events of the target.
    let mut dead_letters: VecDeque<DeadLetterLine> = VecDeque::new();
    let dlq_window = read_window(
        js,
        DLQ_STREAM,
        &format!("{DLQ_PREFIX}.>"),
        options.start,
        options.max_read,
        |m| {
            let Ok(event) = Event::decode(&m.payload) else {
                return;
            };
            if options
                .registry
                .as_ref()
                .is_some_and(|r| event.data.registry() != Some(r))
                || !scope.event_matches(target, &event)
            {
                return;
            }
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let key = fold_key(&event);
            let line = DeadLetterLine {
                seq: m.seq,
                time: time(m.stored_at),
                code: m
                    .subject
                    .strip_prefix(DLQ_PREFIX)
                    .and_then(|s| s.strip_prefix('.'))
                    .unwrap_or("-")
                    .to_owned(),
                reason: header(REASON_HEADER).unwrap_or_default(),
                original_seq: header(SEQUENCE_HEADER).and_then(|s| s.parse().ok()),
                original_subject: header(SUBJECT_HEADER).unwrap_or_default(),
                key,
            };
            push_bounded(&mut dead_letters, line, options.last);
        },
    )
    .await?;

    // 3. The events of the target.
    let mut lines: VecDeque<Row> = VecDeque::new();
    let subject = crate::ops::filter::EventFilter {
        registry: options.registry.clone(),
        ..Default::default()
    }
    .subject();
    let events_window = read_window(js, STREAM, &subject, options.start, options.max_read, |m| {
        let Ok(event) = Event::decode_on(&m.subject, &m.payload) else {
            return;
        };
        if options
            .registry
            .as_ref()
            .is_some_and(|r| event.data.registry().is_some_and(|e| e != r))
            || !scope.event_matches(target, &event)
        {
            return;
        }
        let row = Row::of_event(m.seq, &m.subject, &event, &m.payload);
        push_bounded(&mut lines, row, options.last);
    })
    .await?;

    // 4. What each key holds, what is served, and why.
    let mut explanation = Explanation {
        target: target.to_string(),
        windows: vec![events_window, dlq_window],
        events: lines.into_iter().collect(),
        ..Explanation::default()
    };
    let mut held: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (registry, decoded) in &values {
        let mut catalog = Vec::new();
        let mut deployments = Vec::new();
        for (key, value) in decoded {
            let relevant = match value {
                StoredValue::Deployment(d) => {
                    let (cluster, object) = match &d.state {
                        DeploymentState::Live(r) => (r.cluster.to_string(), &r.object),
                        DeploymentState::Withdrawn(w) => (w.cluster.to_string(), &w.object),
                    };
                    target.matches_object(object)
                        || scope.objects.contains(&(cluster, object.clone()))
                }
                StoredValue::Catalog(c) => {
                    let name = match &c.state {
                        CatalogState::Listed(r) => &r.server_name,
                        CatalogState::Withdrawn(w) => &w.server_name,
                    };
                    scope.server_names.contains(name)
                }
            };
            // Every value of the server names goes to the merge (isLatest
            // is decided over all versions); only the target's are listed.
            match value {
                StoredValue::Deployment(d)
                    if d.live()
                        .is_some_and(|r| scope.server_names.contains(&r.server_name)) =>
                {
                    deployments.push(d);
                }
                StoredValue::Catalog(c) if relevant => catalog.push(c),
                _ => {}
            }
            if !relevant {
                continue;
            }
            held.insert((registry.to_string(), key.clone()), value.seq());
            explanation.keys.push(key_state(registry, key, value));
            explanation.verdicts.push(verdict(registry, key, value));
        }
        for entry in merge_registry(catalog, deployments.iter().copied()) {
            let herald = entry.meta.herald.as_ref();
            let claims = deployments
                .iter()
                .filter_map(|d| d.live())
                .filter(|r| r.server_name == entry.server.name && r.version == entry.server.version)
                .filter_map(|r| r.authz_claims.as_ref())
                .flat_map(|c| c.keys().map(str::to_owned))
                .collect::<BTreeSet<_>>();
            explanation.served.push(Served {
                registry: registry.to_string(),
                server_name: entry.server.name.to_string(),
                version: entry.server.version.clone(),
                is_latest: entry.meta.official.is_latest,
                remotes: entry.server.remotes.iter().map(|r| r.url.clone()).collect(),
                deployments: herald
                    .map(|h| {
                        h.deployments
                            .iter()
                            .map(|d| {
                                format!(
                                    "{}/{}/{}/{}",
                                    d.cluster,
                                    d.kind.token(),
                                    d.namespace,
                                    d.name
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                catalogs: herald
                    .map(|h| h.catalogs.iter().map(|c| c.source.to_string()).collect())
                    .unwrap_or_default(),
                claims: claims.into_iter().collect(),
            });
        }
    }

    // A dead letter newer than what its key holds is why the key is not
    // (or no longer) what the event said.
    let mut refused: BTreeMap<(String, String), &DeadLetterLine> = BTreeMap::new();
    for line in &dead_letters {
        if let Some(key) = &line.key {
            let newer = held
                .get(key)
                .is_none_or(|seq| line.original_seq.is_none_or(|o| o > *seq));
            if newer {
                refused.insert(key.clone(), line);
            }
        }
    }
    for ((registry, key), line) in refused {
        explanation.verdicts.retain(|v| {
            !(v.registry.as_deref() == Some(registry.as_str()) && v.subject == key && v.is_served())
        });
        explanation.verdicts.push(Verdict {
            registry: Some(registry),
            subject: key,
            code: "refused".to_owned(),
            refusal: Some(line.code.clone()),
            detail: format!(
                "the projector's gate refused event {} ({}): {}",
                line.original_seq
                    .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                line.code,
                line.reason
            ),
        });
    }
    explanation.dead_letters = dead_letters.into_iter().collect();
    if explanation.verdicts.is_empty() {
        explanation.verdicts.push(Verdict {
            registry: options.registry.as_ref().map(ToString::to_string),
            subject: target.to_string(),
            code: "not_seen".to_owned(),
            refusal: None,
            detail: not_seen_detail(target),
        });
    }
    Ok(explanation)
}

/// The (registry, key) an event folds into.
fn fold_key(event: &Event) -> Option<(String, String)> {
    crate::fold::slot(event).map(|(registry, key, _)| (registry.to_string(), key))
}

fn key_state(registry: &RegistryName, key: &str, value: &StoredValue) -> KeyState {
    let changed_at = match value {
        StoredValue::Deployment(d) => d.changed_at,
        StoredValue::Catalog(c) => c.changed_at,
    };
    KeyState {
        registry: registry.to_string(),
        key: key.to_owned(),
        seq: value.seq(),
        changed_at: time(changed_at),
        state: value.describe(),
    }
}

fn verdict(registry: &RegistryName, key: &str, value: &StoredValue) -> Verdict {
    let (code, detail) = match value {
        StoredValue::Deployment(d) => match &d.state {
            DeploymentState::Live(r) => match &r.authz_claims {
                Some(claims) => (
                    "hidden_by_claims",
                    format!(
                        "served only to callers whose token carries the claims {} (annotation authz-claims)",
                        claims.keys().collect::<Vec<_>>().join(", ")
                    ),
                ),
                None => (
                    "served",
                    format!("{} {} is served", r.server_name, r.version),
                ),
            },
            DeploymentState::Withdrawn(w) => {
                let message = w.message.as_deref().unwrap_or("");
                match w.reason {
                    WithdrawReason::Deleted => ("deleted", "the object was deleted".to_owned()),
                    WithdrawReason::OptedOut => (
                        "opted_out",
                        "the opt-in annotation was removed or is not \"true\"".to_owned(),
                    ),
                    WithdrawReason::NotReady => (
                        "not_ready",
                        "the object left the phases Herald advertises (not Ready/Running)"
                            .to_owned(),
                    ),
                    WithdrawReason::Rejected => {
                        ("rejected", format!("the watcher rejected it: {message}"))
                    }
                    WithdrawReason::Moved => (
                        "moved",
                        "the object now targets another registry".to_owned(),
                    ),
                    WithdrawReason::Unconfirmed => (
                        "withdrawn_by_sweep",
                        format!(
                            "a re-list of cluster {} did not confirm it ({message})",
                            w.cluster
                        ),
                    ),
                }
            }
        },
        StoredValue::Catalog(c) => match &c.state {
            CatalogState::Listed(r) => match &r.authz_claims {
                Some(claims) => (
                    "hidden_by_claims",
                    format!(
                        "served only to callers whose token carries the claims {}",
                        claims.keys().collect::<Vec<_>>().join(", ")
                    ),
                ),
                None => (
                    "served",
                    format!(
                        "{} {} is listed by catalog {}",
                        r.server_name, r.version, r.source
                    ),
                ),
            },
            CatalogState::Withdrawn(w) => (
                "catalog_withdrawn",
                format!("catalog {} no longer lists it", w.source),
            ),
        },
    };
    Verdict {
        registry: Some(registry.to_string()),
        subject: key.to_owned(),
        code: code.to_owned(),
        refusal: None,
        detail,
    }
}

fn not_seen_detail(target: &Target) -> String {
    let object_hint = match target {
        Target::Object(o) => format!(
            "kubectl get events -n {} --field-selector reason={}",
            o.namespace, "RegistryRejected"
        ),
        Target::Server(_) => {
            "kubectl get events -A --field-selector reason=RegistryRejected".to_owned()
        }
    };
    // A tombstone names its object, not the server name it advertised:
    // only an applied event in the window ties the two.
    let tombstone_hint = match target {
        Target::Server(_) => {
            "; a withdrawn deployment whose last applied event is older than the window \
             is found by its object (explain kind/namespace/name)"
        }
        Target::Object(_) => "",
    };
    format!(
        "no bucket holds it and no event of it is in the window: it did not opt in, \
         its watcher rejected it before it was ever advertised (such rejections reach no \
         event; see `{object_hint}` and herald_watcher_rejections_total), \
         or its last event is older than the window (--since, --from-seq){tombstone_hint}"
    )
}

impl Explanation {
    /// Whether any verdict says it is served (to everyone).
    pub fn served_anywhere(&self) -> bool {
        self.verdicts.iter().any(Verdict::is_served)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an explanation always serializes")
    }

    /// Aligned tables for people.
    pub fn render(&self) -> String {
        let mut out = format!("explain {}\n", self.target);
        for w in &self.windows {
            let range = match (w.first_seq, w.last_seq) {
                (Some(a), Some(b)) => format!("{a}..={b}"),
                _ => "nothing".to_owned(),
            };
            let truncated = if w.truncated {
                " (only the newest: raise --max-read or narrow --since)"
            } else {
                ""
            };
            out.push_str(&format!(
                "read {}: {range}, {} messages{truncated}\n",
                w.stream, w.read
            ));
        }
        let mut section = |title: &str, header: &[&str], rows: Vec<Vec<String>>| {
            out.push('\n');
            out.push_str(title);
            out.push('\n');
            if rows.is_empty() {
                out.push_str("  none\n");
                return;
            }
            let mut all = vec![header.iter().map(|h| (*h).to_owned()).collect()];
            all.extend(rows);
            out.push_str(&table::render(&all));
        };
        section(
            "VERDICT",
            &["REGISTRY", "WHAT", "WHY", "DETAIL"],
            self.verdicts
                .iter()
                .map(|v| {
                    vec![
                        v.registry.clone().unwrap_or_else(|| "-".to_owned()),
                        v.subject.clone(),
                        match &v.refusal {
                            Some(code) => format!("{}:{code}", v.code),
                            None => v.code.clone(),
                        },
                        v.detail.clone(),
                    ]
                })
                .collect(),
        );
        section(
            "SERVED NOW",
            &[
                "REGISTRY", "SERVER", "VERSION", "LATEST", "FROM", "CLAIMS", "REMOTES",
            ],
            self.served
                .iter()
                .map(|s| {
                    let from: Vec<String> = s
                        .deployments
                        .iter()
                        .cloned()
                        .chain(s.catalogs.iter().map(|c| format!("catalog:{c}")))
                        .collect();
                    vec![
                        s.registry.clone(),
                        s.server_name.clone(),
                        s.version.clone(),
                        if s.is_latest { "yes" } else { "no" }.to_owned(),
                        from.join(","),
                        if s.claims.is_empty() {
                            "-".to_owned()
                        } else {
                            s.claims.join(",")
                        },
                        s.remotes.join(" "),
                    ]
                })
                .collect(),
        );
        section(
            "KEYS",
            &["REGISTRY", "KEY", "CHANGED", "STATE"],
            self.keys
                .iter()
                .map(|k| {
                    vec![
                        k.registry.clone(),
                        k.key.clone(),
                        k.changed_at.clone(),
                        k.state.clone(),
                    ]
                })
                .collect(),
        );
        section(
            "LAST EVENTS",
            &events::HEADER,
            self.events.iter().map(Row::cells).collect(),
        );
        section(
            "DEAD LETTERS",
            &["SEQ", "TIME", "CODE", "EVENT SEQ", "REASON"],
            self.dead_letters
                .iter()
                .map(|d| {
                    vec![
                        d.seq.to_string(),
                        d.time.clone(),
                        d.code.clone(),
                        d.original_seq
                            .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                        d.reason.clone(),
                    ]
                })
                .collect(),
        );
        out
    }
}

/// The default start: `DEFAULT_WINDOW` back from `now`.
pub fn default_start(now: DateTime<Utc>) -> StartingPoint {
    let back = chrono::Duration::from_std(DEFAULT_WINDOW).unwrap_or(chrono::Duration::zero());
    StartingPoint::Since(now - back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Kind;

    #[test]
    fn targets_tell_server_names_from_objects() {
        assert_eq!(
            "io.github.acme/search".parse::<Target>().unwrap(),
            Target::Server("io.github.acme/search".parse().unwrap())
        );
        let Target::Object(o) = "mcpserver/tools/search".parse::<Target>().unwrap() else {
            panic!("an object");
        };
        assert_eq!(o.kind, Some(Kind::MCPServer));
        let Target::Object(o) = "tools/search".parse::<Target>().unwrap() else {
            panic!("an object");
        };
        assert_eq!((o.kind, o.name.as_deref()), (None, Some("search")));
        assert!("tools/*".parse::<Target>().is_err());
        assert!("nonsense".parse::<Target>().is_err());
        assert!("pod/a/b".parse::<Target>().is_err());
    }

    #[test]
    fn bounded_queues_keep_the_newest() {
        let mut q = VecDeque::new();
        for i in 0..10 {
            push_bounded(&mut q, i, 3);
        }
        assert_eq!(q.into_iter().collect::<Vec<_>>(), vec![7, 8, 9]);
    }
}

//! The wire contract: Herald's events as CloudEvents 1.0 structured JSON.
//!
//! Watchers build events with the constructors here and publish
//! `Event::to_json()` on `Event::nats_subject()` with `Event::id` as the
//! `Nats-Msg-Id`. Projectors and ops tools decode with `Event::decode_on`,
//! which checks everything a consumer must not trust blindly: the envelope,
//! the record version, and that subject, source and body name the same
//! cluster and registry.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::catalog_record::{CatalogRecord, CatalogWithdrawal};
use crate::ids::{ClusterId, RegistryName, SourceId, excerpt};
use crate::names::EventSubject;
use crate::object::{Kind, ObjectRef};
use crate::record::{DeploymentRecord, RECORD_VERSION, Withdrawal};

/// Prefix of every CloudEvents `type` Herald writes.
pub const TYPE_PREFIX: &str = "dev.herald.";
const SPEC_VERSION: &str = "1.0";
const CONTENT_TYPE: &str = "application/json";

/// The kinds of event on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    DeploymentApplied,
    DeploymentWithdrawn,
    ResyncStarted,
    ResyncCompleted,
    ClusterHeartbeat,
    CatalogApplied,
    CatalogWithdrawn,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::DeploymentApplied,
        EventType::DeploymentWithdrawn,
        EventType::ResyncStarted,
        EventType::ResyncCompleted,
        EventType::ClusterHeartbeat,
        EventType::CatalogApplied,
        EventType::CatalogWithdrawn,
    ];

    /// The part after `dev.herald.`; also a metric label.
    pub fn short(self) -> &'static str {
        match self {
            EventType::DeploymentApplied => "deployment.applied",
            EventType::DeploymentWithdrawn => "deployment.withdrawn",
            EventType::ResyncStarted => "resync.started",
            EventType::ResyncCompleted => "resync.completed",
            EventType::ClusterHeartbeat => "cluster.heartbeat",
            EventType::CatalogApplied => "catalog.applied",
            EventType::CatalogWithdrawn => "catalog.withdrawn",
        }
    }

    /// The full CloudEvents `type`.
    pub fn ce_type(self) -> String {
        format!("{TYPE_PREFIX}{}", self.short())
    }

    pub fn parse(ce_type: &str) -> Option<EventType> {
        let short = ce_type.strip_prefix(TYPE_PREFIX)?;
        EventType::ALL.into_iter().find(|t| t.short() == short)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// The body of `resync.started` and `resync.completed`.
///
/// A watcher lists every object of one kind under a new, larger epoch. Each
/// advertised object is re-applied with that epoch; `completed` then tells the
/// projector that records of this cluster and kind with an older epoch were
/// not confirmed and are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resync {
    pub v: u32,
    pub cluster: ClusterId,
    pub kind: Kind,
    pub epoch: u64,
    /// On `completed`: how many objects the list advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised: Option<u64>,
}

/// The body of `cluster.heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub v: u32,
    pub cluster: ClusterId,
    pub started_at: DateTime<Utc>,
    pub interval_seconds: u64,
    /// The watcher's build version.
    pub watcher_version: String,
}

/// The typed body of an event; the variant decides the CloudEvents `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Applied(Box<DeploymentRecord>),
    Withdrawn(Withdrawal),
    ResyncStarted(Resync),
    ResyncCompleted(Resync),
    Heartbeat(Heartbeat),
    /// A catalog source's entry, imported or changed.
    CatalogApplied(Box<CatalogRecord>),
    /// A catalog source no longer lists the entry.
    CatalogWithdrawn(CatalogWithdrawal),
}

impl EventData {
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::Applied(_) => EventType::DeploymentApplied,
            EventData::Withdrawn(_) => EventType::DeploymentWithdrawn,
            EventData::ResyncStarted(_) => EventType::ResyncStarted,
            EventData::ResyncCompleted(_) => EventType::ResyncCompleted,
            EventData::Heartbeat(_) => EventType::ClusterHeartbeat,
            EventData::CatalogApplied(_) => EventType::CatalogApplied,
            EventData::CatalogWithdrawn(_) => EventType::CatalogWithdrawn,
        }
    }

    /// The cluster a cluster's event comes from; `None` for catalog events.
    pub fn cluster(&self) -> Option<&ClusterId> {
        match self {
            EventData::Applied(r) => Some(&r.cluster),
            EventData::Withdrawn(w) => Some(&w.cluster),
            EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => Some(&r.cluster),
            EventData::Heartbeat(h) => Some(&h.cluster),
            EventData::CatalogApplied(_) | EventData::CatalogWithdrawn(_) => None,
        }
    }

    /// The catalog source a catalog event comes from.
    pub fn catalog_source(&self) -> Option<&SourceId> {
        match self {
            EventData::CatalogApplied(r) => Some(&r.source),
            EventData::CatalogWithdrawn(w) => Some(&w.source),
            _ => None,
        }
    }

    /// The object a deployment event is about.
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            EventData::Applied(r) => Some(&r.object),
            EventData::Withdrawn(w) => Some(&w.object),
            _ => None,
        }
    }

    pub fn registry(&self) -> Option<&RegistryName> {
        match self {
            EventData::Applied(r) => Some(&r.registry),
            EventData::Withdrawn(w) => Some(&w.registry),
            EventData::CatalogApplied(r) => Some(&r.registry),
            EventData::CatalogWithdrawn(w) => Some(&w.registry),
            _ => None,
        }
    }

    /// The body's format version (`v`).
    fn format_version(&self) -> u32 {
        match self {
            EventData::Applied(r) => r.v,
            EventData::Withdrawn(w) => w.v,
            EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => r.v,
            EventData::Heartbeat(h) => h.v,
            EventData::CatalogApplied(r) => r.v,
            EventData::CatalogWithdrawn(w) => w.v,
        }
    }

    fn to_value(&self) -> Value {
        let v = match self {
            EventData::Applied(r) => serde_json::to_value(r),
            EventData::Withdrawn(w) => serde_json::to_value(w),
            EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => serde_json::to_value(r),
            EventData::Heartbeat(h) => serde_json::to_value(h),
            EventData::CatalogApplied(r) => serde_json::to_value(r),
            EventData::CatalogWithdrawn(w) => serde_json::to_value(w),
        };
        v.expect("event bodies are plain data and always serialize")
    }
}

/// One event: envelope fields plus the typed body.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// CloudEvents `id`, also the `Nats-Msg-Id` used for deduplication.
    pub id: String,
    pub time: DateTime<Utc>,
    pub data: EventData,
}

/// Why bytes on the stream are not a usable event. Each variant has a short
/// code for dead-letter subjects and metric labels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a CloudEvents 1.0 structured event: {0}")]
    NotCloudEvent(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{ty} data format v{v} is newer than this reader (v{RECORD_VERSION})")]
    NewerFormat { ty: EventType, v: u64 },
    #[error("invalid {ty} data: {reason}")]
    InvalidData { ty: EventType, reason: String },
    #[error("event disagrees with itself: {0}")]
    Inconsistent(String),
    #[error("published on {subject} but its body says {body}")]
    WrongSubject { subject: String, body: String },
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) | DecodeError::NotCloudEvent(_) => "malformed",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::NewerFormat { .. } => "newer_format",
            DecodeError::InvalidData { .. } => "invalid",
            DecodeError::Inconsistent(_) => "inconsistent",
            DecodeError::WrongSubject { .. } => "wrong_subject",
        }
    }

    pub const CODES: [&'static str; 6] = [
        "malformed",
        "unknown_type",
        "newer_format",
        "invalid",
        "inconsistent",
        "wrong_subject",
    ];
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    time: DateTime<Utc>,
    #[serde(default)]
    datacontenttype: Option<String>,
    data: Value,
}

/// The envelope as read: `data` is left unparsed until the type says what
/// it holds, so an event is parsed once, straight into its typed record.
#[derive(Deserialize)]
struct IncomingEnvelope<'a> {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    subject: Option<String>,
    time: DateTime<Utc>,
    #[serde(default)]
    datacontenttype: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `/clusters/<cluster>`, or `/catalogs/<source>` for catalog events.
fn source_of(data: &EventData) -> String {
    match (data.cluster(), data.catalog_source()) {
        (Some(cluster), _) => format!("/clusters/{cluster}"),
        (None, Some(source)) => format!("/catalogs/{source}"),
        (None, None) => unreachable!("every event has a cluster or a catalog source"),
    }
}

impl Event {
    /// Builds an event; its id is derived from what it says, so publishing
    /// the same event twice is deduplicated by the server.
    pub fn new(data: EventData, time: DateTime<Utc>) -> Event {
        let id = derive_id(&data, time);
        Event { id, time, data }
    }

    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// The cluster of a cluster's event; `None` for catalog events.
    pub fn cluster(&self) -> Option<&ClusterId> {
        self.data.cluster()
    }

    /// Where the event is published.
    pub fn nats_subject(&self) -> EventSubject {
        if let (Some(source), Some(registry)) = (self.data.catalog_source(), self.data.registry()) {
            return EventSubject::Catalog {
                source: source.clone(),
                registry: registry.clone(),
            };
        }
        let cluster = self
            .cluster()
            .expect("events that are not catalog events have a cluster")
            .clone();
        match self.data.registry() {
            Some(registry) => EventSubject::Deployment {
                cluster,
                registry: registry.clone(),
            },
            None => EventSubject::Cluster { cluster },
        }
    }

    /// The CloudEvents `subject`: the object, or the kind a resync covers.
    pub fn ce_subject(&self) -> Option<String> {
        match &self.data {
            EventData::Applied(r) => Some(r.object.to_string()),
            EventData::Withdrawn(w) => Some(w.object.to_string()),
            EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => {
                Some(r.kind.token().to_owned())
            }
            EventData::Heartbeat(_) => None,
            EventData::CatalogApplied(r) => Some(format!("{}@{}", r.server_name, r.version)),
            EventData::CatalogWithdrawn(w) => Some(format!("{}@{}", w.server_name, w.version)),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id: self.id.clone(),
            source: source_of(&self.data),
            ty: self.event_type().ce_type(),
            subject: self.ce_subject(),
            time: self.time,
            datacontenttype: Some(CONTENT_TYPE.to_owned()),
            data: self.data.to_value(),
        };
        serde_json::to_vec(&envelope).expect("envelopes always serialize")
    }

    /// Decodes and checks an event found on `nats_subject`.
    pub fn decode_on(nats_subject: &str, bytes: &[u8]) -> Result<Event, DecodeError> {
        let event = Event::decode(bytes)?;
        let expected = event.nats_subject();
        let matches = EventSubject::parse(nats_subject).is_ok_and(|s| s == expected);
        if !matches {
            return Err(DecodeError::WrongSubject {
                subject: excerpt(nats_subject, 120),
                body: expected.to_string(),
            });
        }
        Ok(event)
    }

    /// Decodes and checks an event without regard to where it was found.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let envelope: IncomingEnvelope = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                DecodeError::NotCloudEvent(e.to_string())
            } else {
                DecodeError::NotJson(e.to_string())
            }
        })?;
        if envelope.specversion != SPEC_VERSION {
            return Err(DecodeError::NotCloudEvent(format!(
                "specversion is {:?}, expected \"1.0\"",
                excerpt(&envelope.specversion, 20)
            )));
        }
        if envelope.id.is_empty() {
            return Err(DecodeError::NotCloudEvent("id is empty".to_owned()));
        }
        if let Some(ct) = &envelope.datacontenttype
            && !ct.starts_with(CONTENT_TYPE)
        {
            return Err(DecodeError::NotCloudEvent(format!(
                "datacontenttype is {:?}, expected application/json",
                excerpt(ct, 40)
            )));
        }
        let ty = EventType::parse(&envelope.ty)
            .ok_or_else(|| DecodeError::UnknownType(excerpt(&envelope.ty, 80)))?;
        let data = decode_data(ty, envelope.data)?;
        let event = Event {
            id: envelope.id,
            time: envelope.time,
            data,
        };
        let expected_source = source_of(&event.data);
        if envelope.source != expected_source {
            return Err(DecodeError::Inconsistent(format!(
                "source {:?} but data says {expected_source:?}",
                excerpt(&envelope.source, 80),
            )));
        }
        if let (Some(object), Some(subject)) = (event.data.object(), &envelope.subject)
            && *subject != object.to_string()
        {
            return Err(DecodeError::Inconsistent(format!(
                "subject {:?} but data names {object}",
                excerpt(subject, 120)
            )));
        }
        Ok(event)
    }
}

fn decode_data(ty: EventType, data: &RawValue) -> Result<EventData, DecodeError> {
    fn parse<T: serde::de::DeserializeOwned>(data: &RawValue) -> Result<T, serde_json::Error> {
        serde_json::from_str(data.get())
    }
    let decoded = match ty {
        EventType::DeploymentApplied => parse(data).map(|r| EventData::Applied(Box::new(r))),
        EventType::DeploymentWithdrawn => parse(data).map(EventData::Withdrawn),
        EventType::ResyncStarted => parse(data).map(EventData::ResyncStarted),
        EventType::ResyncCompleted => parse(data).map(EventData::ResyncCompleted),
        EventType::ClusterHeartbeat => parse(data).map(EventData::Heartbeat),
        EventType::CatalogApplied => parse(data).map(|r| EventData::CatalogApplied(Box::new(r))),
        EventType::CatalogWithdrawn => parse(data).map(EventData::CatalogWithdrawn),
    };
    // The format version is only read apart when needed: a newer format may
    // not parse at all, and then the version says why.
    let v = match &decoded {
        Ok(data) => u64::from(data.format_version()),
        Err(_) => format_version(data).ok_or_else(|| DecodeError::InvalidData {
            ty,
            reason: "missing format version \"v\"".to_owned(),
        })?,
    };
    if v > u64::from(RECORD_VERSION) {
        return Err(DecodeError::NewerFormat { ty, v });
    }
    decoded.map_err(|e| DecodeError::InvalidData {
        ty,
        reason: e.to_string(),
    })
}

/// The `v` of an event body that did not parse.
fn format_version(data: &RawValue) -> Option<u64> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(default)]
        v: Option<Value>,
    }
    serde_json::from_str::<Versioned>(data.get())
        .ok()?
        .v?
        .as_u64()
}

/// `<cluster>/<what it is about>/<type>/<epoch or time>`: readable in
/// `herald-projector events`, and equal for a retried publish of the same
/// event. The epoch is part of it because a re-list re-applies unchanged
/// objects on purpose, and those must not be dropped as duplicates.
fn derive_id(data: &EventData, time: DateTime<Utc>) -> String {
    let ty = data.event_type().short();
    match data {
        EventData::Applied(r) => format!(
            "{}/{}/{}/{ty}/{}/{}",
            r.cluster, r.uid, r.resource_version, r.registry, r.epoch
        ),
        EventData::Withdrawn(w) => format!(
            "{}/{}/{}/{ty}/{}/{}",
            w.cluster, w.uid, w.resource_version, w.registry, w.epoch
        ),
        EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => {
            format!("{}/{}/{ty}/{}", r.cluster, r.kind.token(), r.epoch)
        }
        EventData::Heartbeat(h) => {
            format!("{}/{ty}/{}", h.cluster, time.timestamp_millis())
        }
        // The digest: an unchanged entry imported again is the same event.
        EventData::CatalogApplied(r) => format!(
            "_catalog/{}/{}/{}@{}/{ty}/{}",
            r.source, r.registry, r.server_name, r.version, r.digest
        ),
        EventData::CatalogWithdrawn(w) => format!(
            "_catalog/{}/{}/{}@{}/{ty}/{}",
            w.source,
            w.registry,
            w.server_name,
            w.version,
            w.observed_at.timestamp_millis()
        ),
    }
}

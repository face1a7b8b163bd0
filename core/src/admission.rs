//! Admission: whether an event read from the stream may be applied at all.
//!
//! Nothing on the stream is trusted because of where it came from. Before
//! the projector folds an event (and `replay` the same history) it checks:
//!
//! - the source is known: a cluster or catalog source the hub was told
//!   about (when it was told about any);
//! - times and epochs are sane: nothing claims a time or a list epoch more
//!   than the allowed clock skew *after* the moment the stream stored it
//!   (the stream's clock is the server's, not the publisher's); older is
//!   fine, because an outbox may hold events through an outage;
//! - the record passes every rule the watcher's mapping applies
//!   ([`crate::validate`]), and a deployment's namespace owns its server
//!   name ([`crate::ownership`]).
//!
//! Signatures are checked before this, where the key material lives
//! (`herald-runtime`'s `signing`); a withdrawal's uid is checked against
//! the stored record by the fold itself ([`crate::projection`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

use crate::event::{Event, EventData};
use crate::ids::{ClusterId, SourceId};
use crate::ownership::NameOwnership;
use crate::rejection::Rejection;
use crate::validate::{self, UrlRules};

/// What the hub accepts.
#[derive(Debug, Clone)]
pub struct AdmissionPolicy {
    /// The clusters whose events are applied; `None`: any cluster.
    pub clusters: Option<BTreeSet<ClusterId>>,
    /// The catalog sources whose events are applied; `None`: any source.
    pub sources: Option<BTreeSet<SourceId>>,
    /// How far ahead of the stream's clock an event's time or epoch may be.
    pub max_clock_skew: Duration,
    pub names: NameOwnership,
    pub urls: UrlRules,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        Self {
            clusters: None,
            sources: None,
            max_clock_skew: Duration::minutes(15),
            names: NameOwnership::default(),
            urls: UrlRules::default(),
        }
    }
}

/// Why an event is not applied. Each has a short code for dead-letter
/// subjects and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cluster {0} is not one this hub knows")]
    UnknownCluster(ClusterId),
    #[error("catalog source {0} is not one this hub knows")]
    UnknownSource(SourceId),
    #[error("{what} is {ahead} ahead of the stream's clock (at most {allowed} allowed)")]
    FromTheFuture {
        what: &'static str,
        ahead: String,
        allowed: String,
    },
    #[error("the record breaks the rules: {0}")]
    Invalid(Rejection),
    #[error("{0}")]
    NotOwner(Rejection),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownCluster(_) | Refusal::UnknownSource(_) => "unknown_source",
            Refusal::FromTheFuture { .. } => "clock_skew",
            Refusal::Invalid(_) => "invalid",
            Refusal::NotOwner(_) => "name_not_owned",
        }
    }

    pub const CODES: [&'static str; 4] =
        ["unknown_source", "clock_skew", "invalid", "name_not_owned"];
}

impl AdmissionPolicy {
    /// Checks `event`, which the stream stored at `stored_at`.
    pub fn admit(&self, event: &Event, stored_at: DateTime<Utc>) -> Result<(), Refusal> {
        if let (Some(known), Some(cluster)) = (&self.clusters, event.cluster())
            && !known.contains(cluster)
        {
            return Err(Refusal::UnknownCluster(cluster.clone()));
        }
        if let (Some(known), Some(source)) = (&self.sources, event.data.catalog_source())
            && !known.contains(source)
        {
            return Err(Refusal::UnknownSource(source.clone()));
        }
        let latest = stored_at + self.max_clock_skew;
        let not_after = |what: &'static str, t: DateTime<Utc>| {
            if t > latest {
                Err(Refusal::FromTheFuture {
                    what,
                    ahead: human(t - stored_at),
                    allowed: human(self.max_clock_skew),
                })
            } else {
                Ok(())
            }
        };
        not_after("the event's time", event.time)?;
        // Epochs are the watcher's clock in unix milliseconds at a list's start.
        let epoch_time = |epoch: u64| {
            i64::try_from(epoch)
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        match &event.data {
            EventData::Applied(r) => {
                not_after("the record's epoch", epoch_time(r.epoch))?;
                not_after("the record's observation time", r.observed_at)?;
                if let Some(changed_at) = r.changed_at {
                    not_after("the record's change time", changed_at)?;
                }
                validate::record(r, self.urls).map_err(Refusal::Invalid)?;
                self.names
                    .check(&r.registry, &r.server_name, r.object.namespace())
                    .map_err(Refusal::NotOwner)?;
            }
            EventData::Withdrawn(w) => {
                not_after("the withdrawal's epoch", epoch_time(w.epoch))?;
            }
            EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => {
                not_after("the list epoch", epoch_time(r.epoch))?;
            }
            EventData::Heartbeat(h) => {
                not_after("the watcher's start time", h.started_at)?;
            }
            EventData::CatalogApplied(r) => {
                not_after("the entry's observation time", r.observed_at)?;
                validate::catalog_record(r, self.urls).map_err(Refusal::Invalid)?;
            }
            EventData::CatalogWithdrawn(w) => {
                not_after("the withdrawal's observation time", w.observed_at)?;
            }
        }
        Ok(())
    }
}

fn human(d: Duration) -> String {
    match d.to_std() {
        Ok(std) if std.as_secs() < 10 * 365 * 24 * 3600 => {
            format!("{}s", std.as_secs())
        }
        _ => "more than ten years".to_owned(),
    }
}

//! Liveness of each cluster's watcher, folded from its control events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventData};
use crate::ids::ClusterId;
use crate::object::Kind;
use crate::record::RECORD_VERSION;

/// The value under a cluster's key in the clusters bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    pub v: u32,
    pub cluster: ClusterId,
    /// Stream sequence of the newest event folded in.
    pub seq: u64,
    /// When the stream stored the newest event folded in (its clock, not
    /// the watcher's).
    pub last_seen: DateTime<Utc>,
    /// When the stream stored the newest heartbeat folded in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watcher_started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watcher_version: Option<String>,
    /// The newest list epoch per kind, and whether its list completed.
    #[serde(default)]
    pub epochs: BTreeMap<Kind, EpochState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochState {
    pub epoch: u64,
    pub completed: bool,
}

impl ClusterState {
    /// Folds a control event (resync or heartbeat) with stream sequence
    /// `seq`, stored by the stream at `received`; `None` when it changes
    /// nothing (or is not a control event).
    ///
    /// Liveness is judged by `received`, the stream's own clock, never by
    /// the time the event claims: a watcher whose clock is off, or a forged
    /// heartbeat dated in the future, cannot make a cluster look alive
    /// longer than its events keep arriving.
    ///
    /// Order-independent: each field keeps the newest value it has seen (the
    /// latest heartbeat, the highest epoch per kind, a completion of that
    /// epoch), so two projectors folding the same events in different orders
    /// end with the same state.
    pub fn fold(
        current: Option<&ClusterState>,
        event: &Event,
        seq: u64,
        received: DateTime<Utc>,
    ) -> Option<ClusterState> {
        if matches!(
            event.data,
            EventData::Applied(_)
                | EventData::Withdrawn(_)
                | EventData::CatalogApplied(_)
                | EventData::CatalogWithdrawn(_)
        ) {
            return None;
        }
        let cluster = event.cluster()?;
        let mut next = current.cloned().unwrap_or_else(|| ClusterState {
            v: RECORD_VERSION,
            cluster: cluster.clone(),
            seq,
            last_seen: received,
            last_heartbeat: None,
            watcher_started_at: None,
            heartbeat_interval_seconds: None,
            watcher_version: None,
            epochs: BTreeMap::new(),
        });
        next.seq = next.seq.max(seq);
        next.last_seen = next.last_seen.max(received);
        match &event.data {
            EventData::Heartbeat(h) if next.last_heartbeat.is_none_or(|t| t <= received) => {
                next.last_heartbeat = Some(received);
                next.watcher_started_at = Some(h.started_at);
                next.heartbeat_interval_seconds = Some(h.interval_seconds);
                next.watcher_version = Some(h.watcher_version.clone());
            }
            EventData::ResyncStarted(r) | EventData::ResyncCompleted(r) => {
                let completed = matches!(event.data, EventData::ResyncCompleted(_));
                let entry = next.epochs.entry(r.kind).or_insert(EpochState {
                    epoch: r.epoch,
                    completed,
                });
                if r.epoch > entry.epoch {
                    *entry = EpochState {
                        epoch: r.epoch,
                        completed,
                    };
                } else if r.epoch == entry.epoch {
                    entry.completed |= completed;
                }
            }
            _ => {}
        }
        (current != Some(&next)).then_some(next)
    }

    /// Whether the watcher missed more than three heartbeats at `now`.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let interval = self.heartbeat_interval_seconds.unwrap_or(30).max(1);
        let allowed = i64::try_from(interval.saturating_mul(3)).unwrap_or(i64::MAX);
        (now - self.last_seen).num_seconds() > allowed
    }
}

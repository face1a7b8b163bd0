//! The single publisher: takes events from the outbox in order and publishes
//! each through `herald_runtime::publish` (its `Nats-Msg-Id`, the JetStream
//! ack, capped exponential backoff) for as long as the process runs. An
//! event is dropped from memory only once acknowledged, so nothing is lost;
//! a retried publish that did reach the stream is deduplicated by the server.
//! The one exception is an event larger than the server takes, which no
//! retry can publish: an applied record is withdrawn instead (it was queued
//! before the limit was known; the tracker rejects such records since), any
//! other such event is logged as an error and dropped.
//! Each failed attempt counts in the metrics and makes the watcher not ready.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_core::WithdrawReason;
use herald_core::event::{Event, EventData};
use herald_core::record::{DeploymentRecord, Withdrawal};
use herald_runtime::health::Readiness;
use herald_runtime::publish::{ATTEMPT_TIMEOUT, Producer, PublishError, PublishPolicy};
use herald_runtime::retry::{self, RetryPolicy};
use herald_runtime::stream::StreamArgs;

use crate::event_limit::EventLimit;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// Readiness condition: NATS reachable and events flowing.
pub const READY_NATS: &str = "nats";

/// Above this many pending events the watcher reports not-ready.
const BACKLOG: usize = 1000;

const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

const POLICY: PublishPolicy = PublishPolicy {
    attempt_timeout: ATTEMPT_TIMEOUT,
    retry: RETRY,
};

/// Everything the publisher needs.
#[derive(Debug)]
pub struct Publisher {
    /// The connection, and the key events are signed with.
    pub producer: Producer,
    pub outbox: Arc<Outbox>,
    /// Learnt here from the server, read by the trackers.
    pub limit: EventLimit,
    pub stream: StreamArgs,
    pub metrics: Metrics,
    pub readiness: Readiness,
}

impl Publisher {
    /// Ensures the stream, then publishes until the outbox is closed and empty.
    pub async fn run(self) {
        retry::until_ok(
            RETRY,
            || self.stream.ensure(&self.producer.js),
            |err: &anyhow::Error, _| {
                self.readiness
                    .set_not_ready(READY_NATS, format!("ensuring the stream: {err:#}"));
                tracing::warn!("ensuring the event stream failed, retrying: {err:#}");
            },
        )
        .await;
        self.readiness.set_ready(READY_NATS);
        while let Some(event) = self.outbox.pop().await {
            self.limit
                .learn(self.producer.js.client().server_info().max_payload);
            self.publish(&event).await;
        }
    }

    async fn publish(&self, event: &Event) {
        let notify = |err: &PublishError, _| {
            self.metrics.publish_failed();
            self.readiness
                .set_not_ready(READY_NATS, format!("publishing to NATS fails: {err}"));
            tracing::warn!(id = %event.id, "publish failed, retrying: {err}");
        };
        match self.producer.until_acked(event, POLICY, &notify).await {
            Ok(()) => self.metrics.published(event.event_type()),
            Err(err) => {
                self.metrics.publish_failed();
                tracing::error!(id = %event.id, "not published, no attempt can succeed: {err}");
                if let EventData::Applied(record) = &event.data {
                    let withdrawal = too_large(record, &err);
                    if self
                        .producer
                        .until_acked(&withdrawal, POLICY, &notify)
                        .await
                        .is_ok()
                    {
                        self.metrics.published(withdrawal.event_type());
                    }
                }
            }
        }
        let pending = self.outbox.len();
        if pending > BACKLOG {
            self.readiness
                .set_not_ready(READY_NATS, format!("{pending} events wait to be published"));
        } else {
            self.readiness.set_ready(READY_NATS);
        }
        tracing::debug!(id = %event.id, subject = %event.nats_subject(), "published");
    }
}

/// The withdrawal of a record the stream would not take, so the hub stops
/// serving what this object advertised before.
fn too_large(record: &DeploymentRecord, err: &PublishError) -> Event {
    let message = format!("the record is too large to publish: {err}");
    let withdrawal = Withdrawal::of(
        record,
        record.epoch,
        WithdrawReason::Rejected,
        Some(message),
    );
    Event::new(EventData::Withdrawn(withdrawal), Utc::now())
}

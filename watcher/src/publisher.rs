//! The single publisher: takes events from the outbox in order and publishes
//! each through `herald_runtime::publish` (its `Nats-Msg-Id`, the JetStream
//! ack, capped exponential backoff) for as long as the process runs. An
//! event is dropped from memory only once acknowledged, so nothing is lost;
//! a retried publish that did reach the stream is deduplicated by the server.
//! Each failed attempt counts in the metrics and makes the watcher not ready.

use std::sync::Arc;
use std::time::Duration;

use herald_core::event::Event;
use herald_runtime::health::Readiness;
use herald_runtime::publish::{ATTEMPT_TIMEOUT, Producer, PublishError, PublishPolicy};
use herald_runtime::retry::{self, RetryPolicy};
use herald_runtime::stream::StreamArgs;

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
        self.producer.until_acked(event, POLICY, notify).await;
        self.metrics.published(event.event_type());
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

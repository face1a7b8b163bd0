//! The single publisher: takes events from the outbox in order, publishes
//! each with its `Nats-Msg-Id`, waits for the JetStream ack, and retries with
//! capped exponential backoff for as long as the process runs. An event is
//! dropped from memory only once acknowledged, so nothing is lost; a retried
//! publish that did reach the stream is deduplicated by the server.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use herald_core::event::Event;
use herald_runtime::health::Readiness;
use herald_runtime::retry::{self, RetryPolicy};
use herald_runtime::stream::StreamArgs;

use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// Readiness condition: NATS reachable and events flowing.
pub const READY_NATS: &str = "nats";

/// Above this many pending events the watcher reports not-ready.
const BACKLOG: usize = 1000;
/// One attempt: the publish and its ack.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// Why one publish attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("no ack within {0:?}")]
    Timeout(Duration),
}

/// Everything the publisher needs.
#[derive(Debug)]
pub struct Publisher {
    pub js: jetstream::Context,
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
            || self.stream.ensure(&self.js),
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
        let subject = event.nats_subject().to_string();
        let body = event.to_json();
        let attempt = || async {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            let sent = async {
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), headers, body.clone().into())
                    .await?;
                ack.await?;
                Ok::<(), jetstream::context::PublishError>(())
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, sent).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(PublishError::from(e)),
                Err(_) => Err(PublishError::Timeout(ATTEMPT_TIMEOUT)),
            }
        };
        let notify = |err: &PublishError, _| {
            self.metrics.publish_failed();
            self.readiness
                .set_not_ready(READY_NATS, format!("publishing to NATS fails: {err}"));
            tracing::warn!(id = %event.id, %subject, "publish failed, retrying: {err}");
        };
        retry::until_ok(RETRY, attempt, notify).await;
        self.metrics.published(event.event_type());
        let pending = self.outbox.len();
        if pending > BACKLOG {
            self.readiness
                .set_not_ready(READY_NATS, format!("{pending} events wait to be published"));
        } else {
            self.readiness.set_ready(READY_NATS);
        }
        tracing::debug!(id = %event.id, %subject, "published");
    }
}

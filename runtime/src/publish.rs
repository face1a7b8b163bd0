//! Publishing one event on JetStream, the way every producer of Herald does
//! it (the watcher and the catalog importer): on the event's subject, with
//! the event id as `Nats-Msg-Id` (a retried publish that did reach the
//! stream is dropped by the server as a duplicate), waiting for the stream's
//! ack within a bound per attempt, and retrying through [`crate::retry`].
//!
//! The caller chooses how long to insist — for as long as the process runs
//! ([`until_acked`]: the watcher, which must lose nothing) or a few attempts
//! ([`with_attempts`]: the importer, whose sync then fails and is retried
//! whole) — and passes a `notify` hook that sees each failed attempt and the
//! pause before the next, to set readiness, count a metric and log.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use herald_core::Event;

use crate::retry::{self, RetryPolicy};

/// Bound on one attempt: the publish and its ack.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one publish attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing {id} on {subject}: {reason}")]
    Refused {
        id: String,
        subject: String,
        reason: String,
    },
    #[error("publishing {id} on {subject}: no ack within {timeout:?}")]
    Timeout {
        id: String,
        subject: String,
        timeout: Duration,
    },
}

/// How one event is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishPolicy {
    /// Bound on one attempt (publish and ack).
    pub attempt_timeout: Duration,
    /// The pauses between attempts.
    pub retry: RetryPolicy,
}

/// One attempt: publish `event` with its id as `Nats-Msg-Id` and wait for the
/// stream's ack, within `timeout`.
pub async fn publish_once(
    js: &jetstream::Context,
    event: &Event,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<(), PublishError> {
    let subject = event.nats_subject().to_string();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    let sent = async {
        js.publish_with_headers(subject.clone(), headers, body)
            .await?
            .await?;
        Ok::<(), jetstream::context::PublishError>(())
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PublishError::Refused {
            id: event.id.clone(),
            subject,
            reason: e.to_string(),
        }),
        Err(_) => Err(PublishError::Timeout {
            id: event.id.clone(),
            subject,
            timeout,
        }),
    }
}

/// Publishes `event` until the stream acks it, however long that takes.
pub async fn until_acked(
    js: &jetstream::Context,
    event: &Event,
    policy: PublishPolicy,
    notify: impl FnMut(&PublishError, Duration),
) {
    let body = bytes::Bytes::from(event.to_json());
    retry::until_ok(
        policy.retry,
        || publish_once(js, event, body.clone(), policy.attempt_timeout),
        notify,
    )
    .await;
}

/// Publishes `event` in at most `attempts` attempts; the last failure when
/// none was acked.
pub async fn with_attempts(
    js: &jetstream::Context,
    event: &Event,
    policy: PublishPolicy,
    attempts: u32,
    notify: impl FnMut(&PublishError, Duration),
) -> Result<(), PublishError> {
    let body = bytes::Bytes::from(event.to_json());
    retry::at_most(
        policy.retry,
        attempts,
        || publish_once(js, event, body.clone(), policy.attempt_timeout),
        notify,
    )
    .await
}

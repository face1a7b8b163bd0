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

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use herald_core::Event;

use crate::retry::{self, RetryPolicy};
use crate::signing::Signer;

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
    /// Larger than the server's `max_payload`: no retry can succeed.
    #[error("publishing {id} on {subject}: {reason}")]
    TooLarge {
        id: String,
        subject: String,
        reason: String,
    },
}

impl PublishError {
    /// No later attempt can succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PublishError::TooLarge { .. })
    }
}

/// How one event is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishPolicy {
    /// Bound on one attempt (publish and ack).
    pub attempt_timeout: Duration,
    /// The pauses between attempts.
    pub retry: RetryPolicy,
}

/// Where and how a producer publishes: its JetStream context, and the key it
/// signs its events with, when it has one.
#[derive(Debug, Clone)]
pub struct Producer {
    pub js: jetstream::Context,
    pub signer: Option<Arc<Signer>>,
}

/// The subject, body and headers of `event` as published: its id as
/// `Nats-Msg-Id`, and its signature when `signer` is set.
fn message(event: &Event, signer: Option<&Signer>) -> (String, bytes::Bytes, HeaderMap) {
    let subject = event.nats_subject().to_string();
    let body = bytes::Bytes::from(event.to_json());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    if let Some(signer) = signer {
        signer.sign(&subject, &body, &mut headers);
    }
    (subject, body, headers)
}

/// One attempt: publish a message of `event` and wait for the stream's ack,
/// within `timeout`.
async fn publish_once(
    js: &jetstream::Context,
    event: &Event,
    (subject, body, headers): (String, bytes::Bytes, HeaderMap),
    timeout: Duration,
) -> Result<(), PublishError> {
    let sent = async {
        js.publish_with_headers(subject.clone(), headers, body)
            .await?
            .await?;
        Ok::<(), jetstream::context::PublishError>(())
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
            Err(PublishError::TooLarge {
                id: event.id.clone(),
                subject,
                reason: e.to_string(),
            })
        }
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

impl Producer {
    /// Publishes `event` until the stream acks it, however long that takes;
    /// fails only when no attempt can succeed (the event is too large).
    pub async fn until_acked(
        &self,
        event: &Event,
        policy: PublishPolicy,
        notify: impl FnMut(&PublishError, Duration),
    ) -> Result<(), PublishError> {
        let message = message(event, self.signer.as_deref());
        retry::until_ok(
            policy.retry,
            || self.attempt(event, &message, policy),
            notify,
        )
        .await
    }

    /// Publishes `event` in at most `attempts` attempts; the last failure
    /// when none was acked (at once when none can be).
    pub async fn with_attempts(
        &self,
        event: &Event,
        policy: PublishPolicy,
        attempts: u32,
        notify: impl FnMut(&PublishError, Duration),
    ) -> Result<(), PublishError> {
        let message = message(event, self.signer.as_deref());
        retry::at_most(
            policy.retry,
            attempts,
            || self.attempt(event, &message, policy),
            notify,
        )
        .await?
    }

    /// One attempt; a permanent failure is its outcome, ending the retries.
    async fn attempt(
        &self,
        event: &Event,
        message: &(String, bytes::Bytes, HeaderMap),
        policy: PublishPolicy,
    ) -> Result<Result<(), PublishError>, PublishError> {
        let sent = publish_once(&self.js, event, message.clone(), policy.attempt_timeout);
        match sent.await {
            Err(e) if e.is_permanent() => Ok(Err(e)),
            other => other.map(Ok),
        }
    }
}

//! Events as the watcher publishes them, for tests that write HERALD_EVENTS (or the
//! buckets) directly: the withdrawal of a record, and publishing with `Nats-Msg-Id`.

use async_nats::HeaderMap;
use async_nats::jetstream;
use herald_core::record::Withdrawal;
use herald_core::{DeploymentRecord, Event, WithdrawReason};

/// The withdrawal of `record`'s deployment: its cluster, registry, object, uid and
/// epoch, at `resource_version`, for `reason`.
pub fn withdrawal(
    record: &DeploymentRecord,
    resource_version: &str,
    reason: WithdrawReason,
) -> Withdrawal {
    Withdrawal {
        resource_version: resource_version.to_owned(),
        ..Withdrawal::of(record, record.epoch, reason, None)
    }
}

/// Subject, headers (`Nats-Msg-Id`: the event's id) and payload of `event`.
pub fn message(event: &Event) -> (String, HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    (
        event.nats_subject().to_string(),
        headers,
        event.to_json().into(),
    )
}

/// Publishes `event` as the watcher does and waits for the ack; its stream sequence.
pub async fn publish(js: &jetstream::Context, event: &Event) -> anyhow::Result<u64> {
    let (subject, headers, payload) = message(event);
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await?
        .await?;
    Ok(ack.sequence)
}

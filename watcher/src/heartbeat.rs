//! `cluster.heartbeat` on an interval: consumers tell a live cluster from one
//! whose watcher stopped.

use std::sync::Arc;
use std::time::Duration;

use herald_core::ClusterId;
use herald_core::event::{Event, EventData, Heartbeat};
use herald_core::record::RECORD_VERSION;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

/// Queues a heartbeat now and every `interval` until `shutdown`.
pub async fn run(
    cluster: ClusterId,
    interval: Duration,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
) {
    let started_at = chrono::Utc::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let data = EventData::Heartbeat(Heartbeat {
            v: RECORD_VERSION,
            cluster: cluster.clone(),
            started_at,
            interval_seconds: interval.as_secs(),
            watcher_version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        outbox.push(Event::new(data, chrono::Utc::now()));
    }
}

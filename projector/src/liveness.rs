//! Cluster liveness as metrics, for alerts on a silent workload cluster:
//! every `interval` the clusters bucket is read (whichever projector folded
//! the heartbeats) and each cluster's newest heartbeat and event become
//! `herald_projector_cluster_last_heartbeat_timestamp_seconds{cluster}` and
//! `herald_projector_cluster_last_seen_timestamp_seconds{cluster}`, with
//! `herald_projector_cluster_heartbeat_interval_seconds{cluster}` (what the
//! watcher announced). Alerts compare them with `time()`; a timestamp, not an
//! age, so every projector replica reports the same value.

use std::time::Duration;

use async_nats::jetstream;
use herald_core::cluster_state::ClusterState;
use herald_core::names::CLUSTERS_BUCKET;
use herald_runtime::buckets;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ClusterReading, Metrics};

/// How often the clusters bucket is read by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// Reads the clusters bucket every `interval` until `shutdown`.
pub async fn run(
    js: jetstream::Context,
    metrics: Metrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // No bucket yet: no cluster has spoken; nothing to report.
        let Some(store) = buckets::open_existing(&js, CLUSTERS_BUCKET).await else {
            continue;
        };
        match buckets::scan(&store, "").await {
            Ok(items) => {
                let readings = items
                    .iter()
                    .filter_map(|item| serde_json::from_slice::<ClusterState>(&item.value).ok())
                    .map(|state| reading(&state))
                    .collect::<Vec<_>>();
                metrics.clusters(&readings);
            }
            Err(err) => tracing::warn!(%err, "reading cluster liveness failed"),
        }
    }
}

/// What the metrics say of one cluster.
pub fn reading(state: &ClusterState) -> ClusterReading {
    let seconds = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as f64 / 1000.0;
    ClusterReading {
        cluster: state.cluster.to_string(),
        last_seen: seconds(state.last_seen),
        last_heartbeat: state.last_heartbeat.map(seconds),
        heartbeat_interval: state.heartbeat_interval_seconds,
    }
}

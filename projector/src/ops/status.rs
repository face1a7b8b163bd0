//! `status`: the state of the stream, the durable consumer, the registry
//! buckets and the clusters, for a person at a terminal.

use std::io::Write;

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::{DateTime, SecondsFormat, Utc};
use herald_core::cluster_state::ClusterState;
use herald_core::names::{CLUSTERS_BUCKET, STREAM, bucket_name};
use herald_core::stored::StoredValue;

use herald_runtime::buckets;

use crate::ops::table;
use herald_runtime::clock::from_nats_time;

/// Live and withdrawn keys of one registry bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub live: usize,
    pub tombstones: usize,
    /// Values that are neither stored deployments nor catalog entries.
    pub other: usize,
}

pub fn count_keys(items: &[buckets::Item]) -> KeyCounts {
    let mut counts = KeyCounts::default();
    for item in items {
        // Catalog entries count like deployments: listed or tombstone.
        match StoredValue::decode(&item.key, &item.value) {
            Ok(StoredValue::Deployment(d)) if d.live().is_some() => counts.live += 1,
            Ok(StoredValue::Catalog(c)) if c.live().is_some() => counts.live += 1,
            Ok(_) => counts.tombstones += 1,
            Err(_) => counts.other += 1,
        }
    }
    counts
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A cluster as one table row.
pub fn cluster_row(state: &ClusterState, now: DateTime<Utc>) -> Vec<String> {
    let age = (now - state.last_seen).num_seconds().max(0);
    let epochs: Vec<String> = state
        .epochs
        .iter()
        .map(|(kind, e)| {
            let done = if e.completed { "" } else { " (listing)" };
            format!("{}={}{done}", kind.token(), e.epoch)
        })
        .collect();
    vec![
        state.cluster.to_string(),
        time(state.last_seen),
        format!("{age}s ago"),
        if state.is_stale(now) { "STALE" } else { "ok" }.to_owned(),
        state
            .watcher_version
            .clone()
            .unwrap_or_else(|| "-".to_owned()),
        if epochs.is_empty() {
            "-".to_owned()
        } else {
            epochs.join(" ")
        },
    ]
}

/// Prints the status of the consumer named `consumer` and everything else.
pub async fn status<W: Write>(
    js: &jetstream::Context,
    consumer: &str,
    out: &mut W,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut stream = js
        .get_stream(STREAM)
        .await
        .with_context(|| format!("looking up stream {STREAM}"))?;
    let info = stream.info().await?.clone();
    let s = &info.state;
    writeln!(
        out,
        "stream {STREAM}: {} messages, {} bytes, sequences {}..={}, {} .. {}, {} consumers",
        s.messages,
        s.bytes,
        s.first_sequence,
        s.last_sequence,
        time(from_nats_time(s.first_timestamp)),
        time(from_nats_time(s.last_timestamp)),
        s.consumer_count
    )?;
    match stream.consumer_info(consumer).await {
        Ok(c) => writeln!(
            out,
            "consumer {consumer}: {} pending, {} ack pending, {} redelivered, delivered up to {}, acknowledged up to {}, {} waiting pulls",
            c.num_pending,
            c.num_ack_pending,
            c.num_redelivered,
            c.delivered.stream_sequence,
            c.ack_floor.stream_sequence,
            c.num_waiting
        )?,
        Err(err) => writeln!(out, "consumer {consumer}: not found ({err})")?,
    }

    let mut rows = vec![vec![
        "BUCKET".to_owned(),
        "LIVE".to_owned(),
        "TOMBSTONES".to_owned(),
        "OTHER".to_owned(),
    ]];
    for registry in buckets::registry_buckets(js).await? {
        let bucket = bucket_name(&registry);
        let Some(store) = buckets::open_existing(js, &bucket).await else {
            continue;
        };
        let counts = count_keys(&buckets::scan(&store, "").await?);
        rows.push(vec![
            bucket,
            counts.live.to_string(),
            counts.tombstones.to_string(),
            counts.other.to_string(),
        ]);
    }
    writeln!(out)?;
    if rows.len() == 1 {
        writeln!(out, "no registry buckets")?;
    } else {
        write!(out, "{}", table::render(&rows))?;
    }

    let mut rows = vec![vec![
        "CLUSTER".to_owned(),
        "LAST SEEN".to_owned(),
        "AGE".to_owned(),
        "HEALTH".to_owned(),
        "WATCHER".to_owned(),
        "EPOCHS".to_owned(),
    ]];
    if let Some(store) = buckets::open_existing(js, CLUSTERS_BUCKET).await {
        for item in buckets::scan(&store, "").await? {
            match serde_json::from_slice::<ClusterState>(&item.value) {
                Ok(state) => rows.push(cluster_row(&state, now)),
                Err(err) => rows.push(vec![
                    item.key.clone(),
                    "-".to_owned(),
                    "-".to_owned(),
                    format!("unreadable: {err}"),
                ]),
            }
        }
    }
    writeln!(out)?;
    if rows.len() == 1 {
        writeln!(out, "no clusters seen")?;
    } else {
        write!(out, "{}", table::render(&rows))?;
    }
    out.flush()?;
    Ok(())
}

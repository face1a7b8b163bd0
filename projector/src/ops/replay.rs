//! `replay`: rebuilds registries from the event history in memory, with the
//! same fold as `run`, then prints how the live buckets differ. Writes the
//! rebuilt state into the live buckets only with `--apply`, and into scratch
//! buckets for a closer look only with `--keep`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use herald_core::names::{EVENTS_WILDCARD, STREAM, bucket_name, registry_of_bucket};
use herald_core::{Event, RegistryName};

use herald_runtime::buckets;

use herald_runtime::buckets::Item;
use herald_runtime::clock::from_nats_time;

use crate::gate::Gate;
use crate::ops::diff::{KeyDiff, diff};
use crate::ops::rebuild::{Folding, Rebuild};
use crate::ops::starting_point::{StartingPoint, Until};
use crate::writes::{self, BucketSettings};

/// Longest wait for the next message of the history before giving up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scratch bucket writes in flight at once (with `--keep`).
const SCRATCH_IN_FLIGHT: usize = 64;
/// Default prefix of scratch buckets: `herald_replay_<registry>`, which the
/// API never takes for a registry bucket (those are `herald-<registry>`).
pub const DEFAULT_SCRATCH_PREFIX: &str = "herald_replay_";

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// One registry, or all.
    pub registry: Option<RegistryName>,
    pub start: StartingPoint,
    /// Fold nothing after this: the registries as they were then.
    pub until: Option<Until>,
    pub scratch_prefix: String,
    /// Write the rebuilt state into scratch buckets and keep them.
    pub keep: bool,
    /// Write the rebuilt state into the live buckets.
    pub apply: bool,
    /// The same gate `run` has: what it dead-letters, replay skips.
    pub gate: Arc<Gate>,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Stream sequences replayed (inclusive); `None` when there was nothing.
    pub range: Option<(u64, u64)>,
    pub applied: usize,
    pub stale: usize,
    /// Messages that are not usable events or that the gate refuses (the
    /// projector dead-letters them).
    pub undecodable: usize,
    /// (live bucket, difference), in bucket and key order.
    pub diffs: Vec<(String, KeyDiff)>,
    /// Differences written into the live buckets (with `apply`).
    pub written: usize,
}

/// Checks that scratch buckets with `prefix` can never be taken for
/// registry buckets.
pub fn check_scratch_prefix(prefix: &str) -> Result<(), String> {
    let valid = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "scratch prefix {prefix:?} must be letters, digits, '-' and '_'"
        ));
    }
    if registry_of_bucket(&format!("{prefix}x")).is_some() || prefix.starts_with("herald-") {
        return Err(format!(
            "scratch prefix {prefix:?} would look like a registry bucket (herald-<registry>)"
        ));
    }
    Ok(())
}

/// Scratch buckets (`--keep`) are in memory: a copy for a look, rebuilt in
/// seconds, not worth a disk.
fn scratch_settings() -> BucketSettings {
    BucketSettings {
        history: 1,
        replicas: 1,
        storage: stream::StorageType::Memory,
    }
}

async fn scratch_buckets(js: &jetstream::Context, prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(buckets::bucket_names(js)
        .await?
        .into_iter()
        .filter(|b| {
            b.strip_prefix(prefix)
                .is_some_and(|r| r.parse::<RegistryName>().is_ok())
        })
        .collect())
}

/// The scratch bucket of `registry`.
fn scratch_bucket(prefix: &str, registry: &RegistryName) -> String {
    format!("{prefix}{registry}")
}

async fn items(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Vec<Item>> {
    match buckets::open_existing(js, bucket).await {
        Some(store) => Ok(buckets::scan(&store, "").await?),
        None => Ok(Vec::new()),
    }
}

/// Runs a replay and prints its findings to `out`.
pub async fn replay<W: Write>(
    js: &jetstream::Context,
    options: &ReplayOptions,
    out: &mut W,
) -> anyhow::Result<ReplayReport> {
    check_scratch_prefix(&options.scratch_prefix).map_err(anyhow::Error::msg)?;
    if matches!(options.start, StartingPoint::Last(_)) {
        bail!("replay starts at a sequence or a time, not at the last N events");
    }
    if options.apply && options.until.is_some() {
        bail!(
            "--apply with --until would roll the live buckets back; look at the past with --keep instead"
        );
    }
    // Leftovers of an earlier `--keep` would mix into this rebuild.
    for bucket in scratch_buckets(js, &options.scratch_prefix).await? {
        writes::delete(js, &bucket).await?;
    }
    let mut stream = js
        .get_stream(STREAM)
        .await
        .with_context(|| format!("looking up stream {STREAM}"))?;
    let mut end = stream.info().await?.state.last_sequence;
    if let Some(Until::Sequence(last)) = options.until {
        end = end.min(last);
    }
    let mut rebuild = Rebuild::new(options.registry.clone());
    let mut report = ReplayReport::default();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: EVENTS_WILDCARD.to_owned(),
            deliver_policy: options.start.deliver_policy(),
            description: Some("herald-projector replay".to_owned()),
            ..Default::default()
        })
        .await
        .context("creating an ordered consumer")?;
    if consumer.cached_info().num_pending > 0 && end > 0 {
        let mut messages = consumer.messages().await.context("reading the stream")?;
        loop {
            let next = tokio::time::timeout(IDLE_TIMEOUT, messages.next())
                .await
                .with_context(|| format!("no message from {STREAM} for {IDLE_TIMEOUT:?}"))?;
            let Some(message) = next else { break };
            let message = message.context("reading the stream")?;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let stored_at = from_nats_time(info.published);
            if seq > end || options.until.is_some_and(|u| u.excludes(seq, stored_at)) {
                break;
            }
            report.range = Some((report.range.map_or(seq, |r| r.0), seq));
            let event = Event::decode_on(&message.subject, &message.payload)
                .ok()
                .filter(|event| {
                    options
                        .gate
                        .check(
                            event,
                            &message.subject,
                            &message.payload,
                            message.headers.as_ref(),
                            stored_at,
                        )
                        .is_ok()
                });
            match event.map(|event| rebuild.apply(&event, seq)) {
                Some(Folding::Applied) => report.applied += 1,
                Some(Folding::Stale) => report.stale += 1,
                Some(Folding::Refused) | None => report.undecodable += 1,
                Some(Folding::Ignored) => {}
            }
            if seq >= end || pending == 0 {
                break;
            }
        }
    }
    match report.range {
        Some((first, last)) => writeln!(
            out,
            "replayed {STREAM} {first}..={last}: {} applied, {} stale, {} not usable",
            report.applied, report.stale, report.undecodable
        )?,
        None => writeln!(out, "replayed nothing: no events from the start point")?,
    }
    if let Some(until) = options.until {
        writeln!(
            out,
            "as of {until}: the live buckets are compared with the registries as they were then"
        )?;
    }
    if options.start != StartingPoint::Beginning {
        writeln!(
            out,
            "note: the rebuild starts after the beginning of the history; keys last written before it show as removed"
        )?;
    }

    // Compare every registry in scope: rebuilt ones and live ones.
    let mut registries: Vec<RegistryName> = rebuild.registries().cloned().collect();
    for registry in buckets::registry_buckets(js).await? {
        if options.registry.as_ref().is_none_or(|r| *r == registry) {
            registries.push(registry);
        }
    }
    registries.sort();
    registries.dedup();
    for registry in &registries {
        let live_bucket = bucket_name(registry);
        let live = items(js, &live_bucket).await?;
        let rebuilt = rebuild.items(registry);
        let diffs = diff(&live, &rebuilt);
        let count = |mark: char| diffs.iter().filter(|d| d.mark() == mark).count();
        writeln!(
            out,
            "{live_bucket}: {} keys live, {} rebuilt: {} added, {} removed, {} changed",
            live.len(),
            rebuilt.len(),
            count('+'),
            count('-'),
            count('~')
        )?;
        for d in &diffs {
            writeln!(out, "  {}", d.describe())?;
        }
        if options.keep && !rebuilt.is_empty() {
            let bucket = scratch_bucket(&options.scratch_prefix, registry);
            write_scratch(js, &bucket, &rebuilt).await?;
        }
        if options.apply && !diffs.is_empty() {
            let store =
                writes::open_or_create(js, &live_bucket, &BucketSettings::default()).await?;
            for d in &diffs {
                match write_back(&store, d).await {
                    Ok(()) => report.written += 1,
                    Err(err) => writeln!(out, "  not applied {}: {err}", d.key())?,
                }
            }
        }
        report
            .diffs
            .extend(diffs.into_iter().map(|d| (live_bucket.clone(), d)));
    }
    if report.diffs.is_empty() {
        writeln!(out, "no differences")?;
    } else if options.apply {
        writeln!(
            out,
            "{} differences, {} written into the live buckets",
            report.diffs.len(),
            report.written
        )?;
    } else {
        writeln!(
            out,
            "{} differences (run with --apply to write the rebuilt state into the live buckets)",
            report.diffs.len()
        )?;
    }
    if options.keep {
        writeln!(
            out,
            "wrote the rebuilt state into the scratch buckets {}*",
            options.scratch_prefix
        )?;
    }
    out.flush()?;
    Ok(report)
}

/// Writes the rebuilt `items` into the (new, empty) scratch bucket `bucket`.
async fn write_scratch(
    js: &jetstream::Context,
    bucket: &str,
    items: &[Item],
) -> anyhow::Result<()> {
    let store = writes::open_or_create(js, bucket, &scratch_settings()).await?;
    let mut puts = futures::stream::iter(items)
        .map(|item| {
            let store = &store;
            async move {
                store
                    .put(&item.key, item.value.clone())
                    .await
                    .with_context(|| format!("writing {} in bucket {bucket}", item.key))
            }
        })
        .buffer_unordered(SCRATCH_IN_FLIGHT);
    while let Some(put) = puts.next().await {
        put?;
    }
    Ok(())
}

/// Writes one rebuilt key into its live bucket, unless the live key changed
/// since it was compared (a running projector may be writing).
async fn write_back(store: &kv::Store, d: &KeyDiff) -> anyhow::Result<()> {
    match d {
        KeyDiff::Added { key, rebuilt } => {
            store.create(key, rebuilt.value.clone()).await?;
        }
        KeyDiff::Changed { key, live, rebuilt } => {
            store
                .update(key, rebuilt.value.clone(), live.revision)
                .await?;
        }
        KeyDiff::Removed { key, live } => {
            store
                .delete_expect_revision(key, Some(live.revision))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_prefixes_never_look_like_registries() {
        assert!(check_scratch_prefix(DEFAULT_SCRATCH_PREFIX).is_ok());
        assert!(check_scratch_prefix("herald-").is_err());
        assert!(check_scratch_prefix("herald-replay-").is_err());
        assert!(check_scratch_prefix("a.b").is_err());
        assert!(check_scratch_prefix("").is_err());
    }
}

//! The event stream `HERALD_EVENTS`: created when missing, checked when
//! present. Existing data is never deleted or truncated; a setting that
//! differs is reported and left as it is.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use clap::Args;
use herald_core::names::{DLQ_STREAM, DLQ_WILDCARD, EVENTS_WILDCARD, STREAM};

#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// How long events are kept: the replay window (e.g. `7d`, `12h`).
    #[arg(long, env = "HERALD_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    pub stream_max_age: Duration,
    /// Replicas of the stream (1 locally, 3 in a production NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    pub stream_replicas: u8,
    /// Window in which a republished event id is dropped as a duplicate.
    #[arg(long, env = "HERALD_STREAM_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration, global = true)]
    pub stream_duplicate_window: Duration,
}

impl StreamArgs {
    fn config(&self) -> stream::Config {
        stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![EVENTS_WILDCARD.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.stream_max_age,
            duplicate_window: self.stream_duplicate_window,
            num_replicas: usize::from(self.stream_replicas),
            ..Default::default()
        }
    }

    /// Creates the stream, or verifies that the existing one is compatible.
    pub async fn ensure(&self, js: &jetstream::Context) -> anyhow::Result<stream::Info> {
        if self.stream_duplicate_window < Duration::from_secs(120) {
            bail!(
                "--stream-duplicate-window must be at least 2m so retried publishes are deduplicated"
            );
        }
        let wanted = self.config();
        match js.get_stream(STREAM).await {
            Ok(existing) => {
                // `get_stream` has just read the info.
                let info = existing.cached_info().clone();
                let have = &info.config;
                if !have.subjects.iter().any(|s| s == EVENTS_WILDCARD) {
                    bail!(
                        "stream {STREAM} exists but does not capture {EVENTS_WILDCARD} (subjects: {:?})",
                        have.subjects
                    );
                }
                if have.storage != stream::StorageType::File {
                    tracing::warn!(
                        "stream {STREAM} uses memory storage: events are lost on restart"
                    );
                }
                if have.max_age != wanted.max_age || have.num_replicas != wanted.num_replicas {
                    tracing::warn!(
                        have_max_age = ?have.max_age, want_max_age = ?wanted.max_age,
                        have_replicas = have.num_replicas, want_replicas = wanted.num_replicas,
                        "stream {STREAM} exists with other settings; leaving it as it is"
                    );
                }
                Ok(info)
            }
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(e)
                        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                // Another process may create it at the same moment.
                let created = js
                    .get_or_create_stream(wanted)
                    .await
                    .with_context(|| {
                        format!(
                            "creating stream {STREAM}: it does not exist, and a NATS user that may not create it (a watcher's, an importer's) gets no answer; start herald-projector, which creates it"
                        )
                    })?;
                tracing::info!("created stream {STREAM}");
                Ok(created.cached_info().clone())
            }
            Err(err) => Err(anyhow::Error::new(err).context(format!("looking up stream {STREAM}"))),
        }
    }

    /// Creates the dead-letter stream when missing: dead letters are kept
    /// as long as events, so that an operator can still read why.
    pub async fn ensure_dead_letters(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        js.get_or_create_stream(stream::Config {
            name: DLQ_STREAM.to_owned(),
            subjects: vec![DLQ_WILDCARD.to_owned()],
            storage: stream::StorageType::File,
            max_age: self.stream_max_age,
            num_replicas: usize::from(self.stream_replicas),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {DLQ_STREAM}"))?;
        Ok(())
    }
}

//! The event stream `HERALD_EVENTS`: created when missing, checked when
//! present. Existing data is never deleted or truncated; a setting that
//! differs is reported and left as it is.
//!
//! Both Herald streams discard *new* messages at a size limit: a full stream
//! refuses publishes (producers keep their events and retry, see
//! [`crate::capacity`]) instead of dropping old events that no projector has
//! folded yet.

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
    /// Bytes the stream may hold (e.g. `10GiB`); unlimited when unset. At the
    /// limit, publishes are refused until old events age out.
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", value_parser = crate::byte_size::positive, global = true)]
    pub stream_max_bytes: Option<u64>,
    /// Events the stream may hold; unlimited when unset. At the limit,
    /// publishes are refused until old events age out.
    #[arg(long, env = "HERALD_STREAM_MAX_MESSAGES", value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub stream_max_messages: Option<u64>,
}

/// A limit flag as JetStream spells it: `-1` for none.
fn limit(value: Option<u64>) -> i64 {
    value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Whether `config` has a size limit and drops old messages to honour it.
fn discards_old_at_a_limit(config: &stream::Config) -> bool {
    config.discard == stream::DiscardPolicy::Old
        && (config.max_bytes > 0 || config.max_messages > 0 || config.max_messages_per_subject > 0)
}

impl StreamArgs {
    fn config(&self) -> stream::Config {
        stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![EVENTS_WILDCARD.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.stream_max_age,
            max_bytes: limit(self.stream_max_bytes),
            max_messages: limit(self.stream_max_messages),
            discard: stream::DiscardPolicy::New,
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
                if have.max_age != wanted.max_age
                    || have.num_replicas != wanted.num_replicas
                    || have.max_bytes != wanted.max_bytes
                    || have.max_messages != wanted.max_messages
                {
                    tracing::warn!(
                        have_max_age = ?have.max_age, want_max_age = ?wanted.max_age,
                        have_replicas = have.num_replicas, want_replicas = wanted.num_replicas,
                        have_max_bytes = have.max_bytes, want_max_bytes = wanted.max_bytes,
                        have_max_messages = have.max_messages, want_max_messages = wanted.max_messages,
                        "stream {STREAM} exists with other settings; leaving it as it is"
                    );
                }
                warn_if_discarding_old(STREAM, have);
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
    /// A full one refuses new dead letters, so the projector keeps their
    /// events until there is room.
    pub async fn ensure_dead_letters(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let mut dlq = js
            .get_or_create_stream(stream::Config {
                name: DLQ_STREAM.to_owned(),
                subjects: vec![DLQ_WILDCARD.to_owned()],
                storage: stream::StorageType::File,
                max_age: self.stream_max_age,
                discard: stream::DiscardPolicy::New,
                num_replicas: usize::from(self.stream_replicas),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {DLQ_STREAM}"))?;
        let info = dlq
            .info()
            .await
            .with_context(|| format!("reading stream {DLQ_STREAM}"))?;
        warn_if_discarding_old(DLQ_STREAM, &info.config);
        Ok(())
    }
}

/// Says, at every start, that a stream made by someone else loses messages
/// when it fills up: Herald never changes an existing stream's settings.
fn warn_if_discarding_old(name: &str, have: &stream::Config) {
    if discards_old_at_a_limit(have) {
        tracing::warn!(
            max_bytes = have.max_bytes,
            max_messages = have.max_messages,
            max_messages_per_subject = have.max_messages_per_subject,
            "stream {name} drops its oldest messages when it reaches a limit, which can lose \
             events not yet folded; make it refuse new ones instead: \
             nats stream edit {name} --discard new"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_limits_with_discard_old_lose_messages() {
        let unlimited = stream::Config::default();
        assert!(!discards_old_at_a_limit(&unlimited));
        let old = stream::Config {
            max_bytes: 1024,
            ..Default::default()
        };
        assert!(discards_old_at_a_limit(&old));
        let new = stream::Config {
            discard: stream::DiscardPolicy::New,
            ..old
        };
        assert!(!discards_old_at_a_limit(&new));
    }

    #[test]
    fn unset_limits_are_unlimited() {
        assert_eq!(limit(None), -1);
        assert_eq!(limit(Some(5)), 5);
        assert_eq!(limit(Some(u64::MAX)), i64::MAX);
    }
}

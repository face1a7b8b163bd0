//! Where reading the history begins: a stream sequence, a point in time
//! (RFC 3339, or a duration back from now such as `10m`), the last N
//! matching events, or the beginning.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use chrono::{DateTime, Utc};

/// A start point in `HERALD_EVENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartingPoint {
    /// The oldest event still kept.
    #[default]
    Beginning,
    /// This stream sequence and after.
    Sequence(u64),
    /// Events stored at or after this time.
    Since(DateTime<Utc>),
    /// The last N events that match the filter.
    Last(usize),
}

/// Parses `--since`: an RFC 3339 time, or a duration (`90s`, `10m`, `2h`,
/// `1d`) counted back from `now`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let back: Duration = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration such as 10m or 2h")
    })?;
    let back = chrono::Duration::from_std(back).map_err(|_| format!("{text:?} is too long ago"))?;
    now.checked_sub_signed(back)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

/// Where reading the history ends (`replay --until`): the last stream
/// sequence folded, or the last moment (events the stream stored after it
/// are left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Sequence(u64),
    Time(DateTime<Utc>),
}

impl Until {
    /// Parses `--until`: a stream sequence (digits), an RFC 3339 time, or a
    /// duration back from `now` (`2h`).
    pub fn parse(text: &str, now: DateTime<Utc>) -> Result<Until, String> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Until::Sequence)
                .map_err(|_| format!("{text:?} is not a stream sequence"));
        }
        parse_since(text, now)
            .map(Until::Time)
            .map_err(|e| format!("{e}, nor a stream sequence"))
    }

    /// Whether the message at `seq`, stored at `stored_at`, is after the end.
    pub fn excludes(&self, seq: u64, stored_at: DateTime<Utc>) -> bool {
        match self {
            Until::Sequence(last) => seq > *last,
            Until::Time(last) => stored_at > *last,
        }
    }
}

impl std::fmt::Display for Until {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Until::Sequence(seq) => write!(f, "sequence {seq}"),
            Until::Time(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        }
    }
}

impl StartingPoint {
    /// Builds a start from the mutually exclusive flags (clap enforces that
    /// at most one is given).
    pub fn from_flags(
        from_seq: Option<u64>,
        since: Option<DateTime<Utc>>,
        last: Option<usize>,
    ) -> StartingPoint {
        match (from_seq, since, last) {
            (Some(seq), _, _) => StartingPoint::Sequence(seq.max(1)),
            (None, Some(time), _) => StartingPoint::Since(time),
            (None, None, Some(n)) => StartingPoint::Last(n),
            (None, None, None) => StartingPoint::Beginning,
        }
    }

    /// How a consumer starting here is configured. `Last` reads everything
    /// and keeps the tail, since only the filter knows which events count.
    pub fn deliver_policy(&self) -> DeliverPolicy {
        match self {
            StartingPoint::Beginning | StartingPoint::Last(_) => DeliverPolicy::All,
            StartingPoint::Sequence(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: *seq,
            },
            StartingPoint::Since(time) => DeliverPolicy::ByStartTime {
                start_time: to_nats_time(*time),
            },
        }
    }
}

pub(crate) fn to_nats_time(time: DateTime<Utc>) -> time::OffsetDateTime {
    let nanos = i128::from(time.timestamp_nanos_opt().unwrap_or(0));
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use herald_runtime::clock::from_nats_time;

    #[test]
    fn since_takes_times_and_durations() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        assert_eq!(
            parse_since("10m", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 24, 11, 50, 0).unwrap()
        );
        assert_eq!(
            parse_since("2026-11-24T13:00:00+01:00", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn until_takes_sequences_times_and_durations() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        assert_eq!(Until::parse("42", now).unwrap(), Until::Sequence(42));
        let t = Until::parse("2026-11-24T11:00:00Z", now).unwrap();
        assert_eq!(t, Until::parse("1h", now).unwrap());
        assert!(t.excludes(1, now));
        assert!(!t.excludes(1, Utc.with_ymd_and_hms(2026, 11, 24, 11, 0, 0).unwrap()));
        assert!(Until::Sequence(5).excludes(6, now));
        assert!(!Until::Sequence(5).excludes(5, now));
        assert!(Until::parse("soon", now).is_err());
        assert!(Until::parse("99999999999999999999999", now).is_err());
    }

    #[test]
    fn times_round_trip_through_the_nats_type() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 1).unwrap();
        assert_eq!(from_nats_time(to_nats_time(t)), t);
    }
}

//! Times as the NATS client gives them (the `time` crate), as the chrono
//! times the rest of Herald uses: when the stream stored a message is the
//! server's clock, which the projector trusts over any publisher's.

use chrono::{DateTime, Utc};

/// A time from the NATS client as a chrono time.
pub fn from_nats_time(time: time::OffsetDateTime) -> DateTime<Utc> {
    let nanos = i64::try_from(time.unix_timestamp_nanos()).unwrap_or(0);
    DateTime::from_timestamp_nanos(nanos)
}

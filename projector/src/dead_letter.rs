//! Dead letters: a message that cannot be applied is republished, payload
//! and headers unchanged, on `herald.dlq.<reason>` with headers that say why
//! and where it came from, so the events behind it are not held up.

use async_nats::HeaderMap;
use herald_core::names::dlq_subject;

/// A readable explanation of why the message was dead-lettered.
pub const REASON_HEADER: &str = "Herald-Dlq-Reason";
/// The subject the message was found on.
pub const SUBJECT_HEADER: &str = "Herald-Original-Subject";
/// Its sequence in `HERALD_EVENTS`.
pub const SEQUENCE_HEADER: &str = "Herald-Original-Sequence";
/// Reason code of an event that decoded but could not be applied in the
/// allowed number of deliveries.
pub const APPLY_FAILED: &str = "apply_failed";
/// Reason code of a withdrawal whose uid is not the stored record's.
pub const UID_MISMATCH: &str = "uid_mismatch";

/// Every reason code a projector dead-letters with (metric labels).
pub fn reason_codes() -> impl Iterator<Item = &'static str> {
    herald_core::event::DecodeError::CODES
        .into_iter()
        .chain(crate::gate::GateRefusal::codes())
        .chain([APPLY_FAILED, UID_MISMATCH])
}

/// The subject and headers of a dead letter for a message found on
/// `subject` at `sequence` with `original` headers.
pub fn dead_letter(
    code: &str,
    reason: &str,
    subject: &str,
    sequence: u64,
    original: Option<&HeaderMap>,
) -> (String, HeaderMap) {
    let mut headers = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            // Expectations were meant for the original publish and would make a
            // stream that captures dead letters refuse this one.
            if name.to_string().starts_with("Nats-Expected") {
                continue;
            }
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    // Headers are one line each; a reason never spans lines.
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    headers.insert(REASON_HEADER, reason.as_str());
    headers.insert(SUBJECT_HEADER, subject);
    headers.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
    (dlq_subject(code), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_original_headers_and_adds_why() {
        let mut original = HeaderMap::new();
        original.insert("Nats-Msg-Id", "abc");
        original.insert("Nats-Expected-Stream", "X");
        let (subject, headers) = dead_letter(
            "malformed",
            "not JSON:\nbad",
            "herald.events.c1.default",
            42,
            Some(&original),
        );
        assert_eq!(subject, "herald.dlq.malformed");
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), "abc");
        assert!(headers.get("Nats-Expected-Stream").is_none());
        assert_eq!(
            headers.get(REASON_HEADER).unwrap().as_str(),
            "not JSON: bad"
        );
        assert_eq!(
            headers.get(SUBJECT_HEADER).unwrap().as_str(),
            "herald.events.c1.default"
        );
        assert_eq!(headers.get(SEQUENCE_HEADER).unwrap().as_str(), "42");
    }
}

//! The largest event the NATS server takes, learnt from the server once
//! connected (its `max_payload`, less room for the headers). The tracker
//! rejects a record over it, so its owner sees why; the publisher withdraws
//! one that was queued before the limit was known instead of retrying it
//! forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Room kept for the headers of a published event (its id and signature).
const HEADER_ROOM: usize = 1024;

/// Shared between the publisher, which learns it, and the trackers.
#[derive(Debug, Clone, Default)]
pub struct EventLimit(Arc<AtomicUsize>);

impl EventLimit {
    /// Records the server's `max_payload` (0 while not connected: unknown).
    pub fn learn(&self, max_payload: usize) {
        self.0
            .store(max_payload.saturating_sub(HEADER_ROOM), Ordering::Relaxed);
    }

    /// The largest event body, once known.
    pub fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            max => Some(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_learnt_and_keeps_room_for_headers() {
        let limit = EventLimit::default();
        assert_eq!(limit.get(), None);
        limit.learn(16 * 1024);
        assert_eq!(limit.get(), Some(16 * 1024 - HEADER_ROOM));
        limit.learn(0);
        assert_eq!(limit.get(), None);
    }
}

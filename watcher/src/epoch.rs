//! List epochs: unix milliseconds at the start of a list, strictly increasing
//! within the process so that every resync bracket supersedes the one before.

use std::sync::Mutex;

/// Hands out epochs; shared by all kinds.
#[derive(Debug, Default)]
pub struct EpochClock {
    last: Mutex<u64>,
}

impl EpochClock {
    /// `max(now in ms, previous + 1)`.
    pub fn next(&self) -> u64 {
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        *last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_strictly_increase() {
        let clock = EpochClock::default();
        let mut prev = 0;
        for _ in 0..1000 {
            let e = clock.next();
            assert!(e > prev);
            prev = e;
        }
    }
}

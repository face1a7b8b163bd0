//! Retrying with backoff: the one way Herald waits between attempts.
//!
//! Every retry loop uses the `backoff` crate through this module, so each
//! has the same shape: exponential growth from a first pause to a cap, with
//! jitter (so that many processes restarted together do not retry in step),
//! no limit on elapsed time (a part of Herald retries for as long as it
//! runs, [`until_ok`]; one that must give up counts attempts, [`at_most`]),
//! and a reset to the first pause after a success.

use std::future::Future;
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff as _;
use tokio_util::sync::CancellationToken;

/// How a loop backs off: from `initial` to `max`, with ±50 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    fn exponential(self) -> ExponentialBackoff {
        ExponentialBackoff {
            initial_interval: self.initial,
            current_interval: self.initial,
            max_interval: self.max,
            randomization_factor: 0.5,
            multiplier: 2.0,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        }
    }
}

/// The pauses of one retry loop: each longer than the last up to the cap,
/// back to the first after [`Backoff::reset`].
#[derive(Debug)]
pub struct Backoff {
    inner: ExponentialBackoff,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            inner: policy.exponential(),
        }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        // With no elapsed-time limit the policy always has a next pause.
        self.inner.next_backoff().unwrap_or(self.inner.max_interval)
    }

    /// After a success: the next failure waits the first pause again.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Sleeps the next pause; `false` when `shutdown` came first.
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

/// Runs `attempt` until it succeeds, calling `notify` with each failure and
/// the pause before the next attempt.
pub async fn until_ok<T, E, Fut>(
    policy: RetryPolicy,
    mut attempt: impl FnMut() -> Fut,
    mut notify: impl FnMut(&E, Duration),
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) => {
                let pause = backoff.next_pause();
                notify(&err, pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Runs `attempt` up to `attempts` times (at least once), calling `notify`
/// with each failure that is followed by another attempt and the pause
/// before it; the last failure is returned.
pub async fn at_most<T, E, Fut>(
    policy: RetryPolicy,
    attempts: u32,
    mut attempt: impl FnMut() -> Fut,
    mut notify: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(policy);
    let mut left = attempts.max(1);
    loop {
        left -= 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if left == 0 => return Err(err),
            Err(err) => {
                let pause = backoff.next_pause();
                notify(&err, pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_with_jitter_and_reset() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut backoff = Backoff::new(policy);
        let first = backoff.next_pause();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        let later: Vec<Duration> = (0..20).map(|_| backoff.next_pause()).collect();
        // Jitter is ±50 % around at most the cap.
        assert!(later.iter().all(|p| *p <= Duration::from_secs(3)));
        assert!(later.iter().any(|p| *p >= Duration::from_secs(1)));
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_until_success() {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40));
        let mut calls = 0;
        let mut failures = Vec::new();
        let value = until_ok(
            policy,
            || {
                calls += 1;
                let result = if calls < 4 { Err(calls) } else { Ok("done") };
                async move { result }
            },
            |err: &i32, _| failures.push(*err),
        )
        .await;
        assert_eq!(value, "done");
        assert_eq!(failures, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_gives_up_with_the_last_error() {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40));
        let mut calls = 0;
        let mut notified = Vec::new();
        let result: Result<(), i32> = at_most(
            policy,
            3,
            || {
                calls += 1;
                let err = calls;
                async move { Err(err) }
            },
            |err: &i32, _| notified.push(*err),
        )
        .await;
        assert_eq!(result, Err(3));
        assert_eq!(notified, vec![1, 2], "no pause after the last attempt");

        let mut calls = 0;
        let result = at_most(
            policy,
            3,
            || {
                calls += 1;
                let result = if calls < 2 { Err(calls) } else { Ok(calls) };
                async move { result }
            },
            |_: &i32, _| {},
        )
        .await;
        assert_eq!(result, Ok(2));
    }

    #[tokio::test]
    async fn pause_stops_at_shutdown() {
        let mut backoff = Backoff::new(RetryPolicy::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!backoff.pause(&shutdown).await);
    }
}

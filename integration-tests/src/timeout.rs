//! Bounded waiting: every wait in a test has a deadline and a message that says what was
//! awaited, so a hang becomes a readable failure instead of a stuck CI job.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::sleep;

/// Awaits `fut`, or fails after `d` with "timed out after … waiting for `what`".
pub async fn within<T>(d: Duration, what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(d, fut)
        .await
        .map_err(|_| anyhow!("timed out after {d:?} waiting for {what}"))
}

/// Polls `check` until it returns `Ok(Some(v))`, for conditions that cannot be awaited as
/// events. `Ok(None)` means "not yet"; an error ends the wait at once. Fails after `d`.
pub async fn eventually<T, F, Fut>(d: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let poll = async {
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(value) = check().await? {
                return Ok(value);
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    };
    within(d, what, poll).await?
}

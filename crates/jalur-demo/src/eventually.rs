//! Waiting for a condition instead of sleeping: poll with a short backoff until it holds or a
//! deadline passes (after ztunnel's `assert_eventually`).

use std::future::Future;
use std::time::Duration;

use tokio::time::{timeout, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Polls `f` until it returns `Ok`, with a backoff from 5 ms doubling up to 200 ms, and
/// returns its value; fails with the last error (or a time-out note) once `deadline` has
/// passed. An attempt that is still running at the deadline is cut short.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut last_error = String::from("no attempt finished");
    loop {
        attempts += 1;
        let left = end.saturating_duration_since(Instant::now());
        match timeout(left, f()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => last_error = err,
            Err(_) => last_error = format!("attempt still running at the deadline ({last_error})"),
        }
        let now = Instant::now();
        if now >= end {
            return Err(format!(
                "still failing after {deadline:?} and {attempts} attempts; last error: {last_error}"
            ));
        }
        tokio::time::sleep(backoff.min(end - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Like [`eventually`], but panics naming `what` and the last error when the deadline passes.
pub async fn assert_eventually<T, F, Fut>(what: &str, deadline: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match eventually(deadline, f).await {
        Ok(value) => value,
        Err(err) => panic!("assert_eventually: {what}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn returns_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let value = assert_eventually("third call succeeds", Duration::from_secs(1), || {
            let calls = calls.clone();
            async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    n if n >= 2 => Ok(n),
                    n => Err(format!("call {n} too early")),
                }
            }
        })
        .await;
        assert_eq!(value, 2);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "backend ready: still failing after 1s")]
    async fn panics_with_what_and_the_last_error() {
        assert_eventually("backend ready", Duration::from_secs(1), || async {
            Err::<(), _>("connection refused".to_string())
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_short_an_attempt_that_hangs() {
        let err = eventually(Duration::from_secs(2), || async {
            std::future::pending::<Result<(), String>>().await
        })
        .await
        .expect_err("a hanging attempt never succeeds");
        assert!(err.contains("still running at the deadline"), "{err}");
    }
}

//! Waiting for a condition instead of sleeping, for this crate's own tests (a copy of
//! `jalur_testkit::assert_eventually`: this crate cannot depend on the testkit, which depends
//! on it).

use std::future::Future;
use std::time::Duration;

use tokio::time::{timeout, Instant};

/// Polls `f` with a backoff from 5 ms doubling up to 200 ms until it returns `Ok`, and returns
/// its value; panics naming `what` and the last error once `deadline` has passed.
pub(crate) async fn assert_eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    let mut backoff = Duration::from_millis(5);
    let mut last_error = String::from("no attempt finished");
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match timeout(left, f()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(err)) => last_error = err,
            Err(_) => last_error = format!("attempt still running at the deadline ({last_error})"),
        }
        let now = Instant::now();
        if now >= end {
            panic!("assert_eventually: {what}: still failing after {deadline:?}; last error: {last_error}");
        }
        tokio::time::sleep(backoff.min(end - now)).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

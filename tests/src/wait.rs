//! Waiting for a condition instead of for a time: tests poll what they rely on and fail with
//! its name when it does not come, so a slow machine only makes them slower, never wrong.

use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(25);

/// Polls `ready` until it holds; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

//! Waiting in the use cases' unit tests: on a condition, never for a fixed time.

use std::future::Future;
use std::time::Duration;

/// Polls `ok` every 10 ms until it holds, failing after 1,000 polls. On paused tokio time
/// (with a clock that follows it) polls cost no wall time, and the deadline only moves while
/// nothing else can run, so a slow machine cannot make it pass.
pub async fn wait_until<F: Future<Output = bool>>(what: &str, mut ok: impl FnMut() -> F) {
    for _ in 0..1000 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// [`wait_until`] for a condition that needs no `await`.
pub async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    wait_until(what, || std::future::ready(ok())).await;
}

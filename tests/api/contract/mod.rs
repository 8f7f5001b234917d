//! One contract suite per port, written once and run against every adapter that implements
//! it. Each suite is a set of checks (async functions taking the port) and the adapters it
//! runs on (functions opening one, or `None` when its backend is down outside CI); every pair
//! is a test of its own: `contract::<port>::<adapter>::<check>`.
//!
//! - `event_store`: the embedded store, ClickHouse, and the journaled store (the local journal
//!   in front of a remote store) over each.
//! - `dedup_store`: the embedded store, Redis and Redis Cluster (event keys where Redis puts
//!   them, and in 16 buckets).
//! - `journal`: the SQLite journal.
//! - `feed`: the embedded store and the SQLite journal, as the feeds routing reads.

/// A test for every check on every adapter: in a module per adapter, a `#[tokio::test]` per
/// check that opens the adapter (`super::<adapter>()`, `None` to skip) and runs the check
/// (`super::<check>(&subject)`) on it.
macro_rules! contract_tests {
    (adapters: [$($adapter:ident),+ $(,)?], checks: $checks:tt $(,)?) => {
        $( contract_tests!(@adapter $adapter $checks); )+
    };
    (@adapter $adapter:ident [$($check:ident),+ $(,)?]) => {
        mod $adapter {
            $(
                #[tokio::test]
                async fn $check() {
                    if let Some(subject) = super::$adapter().await {
                        super::$check(&subject).await;
                    }
                }
            )+
        }
    };
}

pub mod dedup_store;
mod event_store;
mod feed;
mod journal;
mod paging;

//! `cartstream drain --data-dir DIR`: forwards and delivers everything an instance left in its
//! data dir (its machine gone, its disk attached elsewhere), then stops.
//!
//! What a data dir holds that nothing else does: the journal (events acked but not yet in the
//! event store) and the outbox (route deliveries not yet done). Drain takes the data dir's lock
//! (refusing, as a server does, when another process holds it), opens both with the usual
//! settings' backends and routes, runs the same forwarder and router a server runs until the
//! journal is empty and no route has a pending delivery, and reports what it did. It accepts
//! no events and listens on no port.

use crate::app::config::Settings;
use crate::app::metrics::Metrics;
use crate::app::startup::lock::DataDirLock;
use crate::app::startup::{routing, Background, Ports, StartupError};
use crate::ports::{Journal, Outbox};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often drain looks whether everything is out.
const POLL: Duration = Duration::from_millis(100);
/// How long the forwarder and router get to stop after a drain that ran out of time.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What a drain did, and what it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Events inserted into the event store, and in how many inserts.
    pub forwarded: u64,
    pub inserts: u64,
    /// Per configured route.
    pub routes: Vec<RouteDrained>,
    /// Journal entries still waiting (not yet in the event store, or not yet routed).
    pub journal_left: u64,
    /// `false`: the timeout passed first.
    pub complete: bool,
    /// From opening the data dir to stopping.
    pub elapsed: Duration,
}

/// One route's part of a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDrained {
    pub name: String,
    /// Events delivered by this drain.
    pub delivered: u64,
    /// Events moved to the dead-letter store by this drain.
    pub dead_lettered: u64,
    /// Deliveries still pending in the outbox.
    pub pending: u64,
    /// Dead letters in the outbox in all (including earlier ones), for replay on a live
    /// instance or by hand.
    pub dead_letters: u64,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "forwarded {} events to the event store in {} inserts; {} journal entries left",
            self.forwarded, self.inserts, self.journal_left
        )?;
        for r in &self.routes {
            writeln!(
                f,
                "route {:?}: delivered {} events, dead-lettered {}; {} deliveries left, {} dead letters in its outbox",
                r.name, r.delivered, r.dead_lettered, r.pending, r.dead_letters
            )?;
        }
        let secs = self.elapsed.as_secs_f64();
        if self.complete {
            write!(
                f,
                "drained in {secs:.1}s: nothing left to forward or deliver"
            )
        } else {
            write!(
                f,
                "NOT drained: the timeout passed with the above left ({secs:.1}s)"
            )
        }
    }
}

/// Drains `settings.data_dir` within `timeout`.
///
/// # Errors
/// When the data dir is held by another process, or cannot be opened, or a setting is bad.
/// Running out of time is not an error: the report says what is left.
pub async fn drain(settings: &Settings, timeout: Duration) -> Result<DrainReport, StartupError> {
    // A typo must not drain a fresh, empty directory and report success.
    if !settings.data_dir.is_dir() {
        return Err(StartupError::DataDir {
            path: settings.data_dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let started = std::time::Instant::now();
    let _lock = DataDirLock::acquire(&settings.data_dir)?;
    // A damaged file is refused as at a server's start: salvage it first.
    crate::app::integrity::check_at_startup(&settings.data_dir, timeout, &Arc::default()).await?;
    let ports = Ports::from_settings(settings)?;
    let metrics = Arc::new(Metrics::new());
    let routing = routing(settings, &ports, &Arc::new(Notify::new()), &metrics, None)?;
    let journal = ports.forwarding.as_ref().map(|f| Arc::clone(&f.journal));
    let outbox = routing.as_ref().map(|r| Arc::clone(&r.outbox));
    let names: Vec<String> = ports.routes.iter().map(|r| r.name().to_owned()).collect();
    let background = Background::start(
        routing.as_ref(),
        ports.forwarding,
        &metrics,
        Arc::clone(&ports.clock),
        None,
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let complete = loop {
        let left = Left::now(journal.as_deref(), outbox.as_deref(), &names).await;
        if left.is_none() {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(POLL).await;
    };
    background
        .stop(if complete {
            settings.shutdown_timeout
        } else {
            STOP_GRACE
        })
        .await;
    let left = Left::now(journal.as_deref(), outbox.as_deref(), &names).await;
    let routes = ports
        .routes
        .iter()
        .zip(left.routes)
        .map(|(route, (pending, dead_letters))| RouteDrained {
            name: route.name().to_owned(),
            delivered: route.status.delivered.load(Ordering::Relaxed),
            dead_lettered: route.status.dead_lettered.load(Ordering::Relaxed),
            pending,
            dead_letters,
        })
        .collect();
    Ok(DrainReport {
        forwarded: metrics.forwarded_events.get(),
        inserts: metrics.forwarded_inserts.get(),
        routes,
        journal_left: left.journal,
        complete,
        elapsed: started.elapsed(),
    })
}

/// What is still to do: journal entries, and per route its pending deliveries and dead
/// letters (`u64::MAX` pending when the outbox cannot be read: not known to be done).
struct Left {
    journal: u64,
    routes: Vec<(u64, u64)>,
}

impl Left {
    async fn now(
        journal: Option<&dyn Journal>,
        outbox: Option<&dyn Outbox>,
        routes: &[String],
    ) -> Self {
        let mut per_route = Vec::new();
        for name in routes {
            let backlog = match outbox {
                Some(o) => o.backlog(name).await.map(|b| (b.pending, b.dead)),
                None => Ok((0, 0)),
            };
            per_route.push(backlog.unwrap_or_else(|e| {
                tracing::warn!(route = %name, cause = %e, "cannot read the outbox");
                (u64::MAX, 0)
            }));
        }
        Self {
            journal: journal.map_or(0, |j| j.stats().entries),
            routes: per_route,
        }
    }

    fn is_none(&self) -> bool {
        self.journal == 0 && self.routes.iter().all(|(pending, _)| *pending == 0)
    }
}

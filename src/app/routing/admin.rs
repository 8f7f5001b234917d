//! [`Routing`] as the operator API sees it.

use super::{Route, Routing};
use crate::ports::{DeadLetter, PortError, RouteAdmin, RouteReport};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

#[async_trait::async_trait]
impl RouteAdmin for Routing {
    async fn routes(&self) -> Result<Vec<RouteReport>, PortError> {
        let mut reports = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            let backlog = self.outbox.backlog(route.name()).await?;
            reports.push(report(route, backlog.pending, backlog.dead));
        }
        Ok(reports)
    }

    async fn dead_letters(
        &self,
        route: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, PortError> {
        self.outbox.dead_letters(route, after, limit).await
    }

    async fn replay(&self, route: Option<String>, ids: Option<Vec<i64>>) -> Result<u64, PortError> {
        let replayed = self.outbox.replay(route, ids).await?;
        for r in &self.routes {
            r.wake.notify_waiters();
        }
        Ok(replayed)
    }

    async fn delete_dead_letter(&self, id: i64) -> Result<bool, PortError> {
        self.outbox.delete_dead_letter(id).await
    }
}

/// What `route` reports, with its outbox counts. A poisoned status lock still holds the
/// latest value written, which is all a report needs.
fn report(route: &Route, backlog: u64, dead_letters: u64) -> RouteReport {
    let s = &route.status;
    let last_error = s
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let last_delivered_at = *s
        .last_delivered_at
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    RouteReport {
        name: route.name().to_owned(),
        event_types: route.rule.matcher.describe(),
        target: route.target.describe(),
        retrying: s.failing.load(Ordering::Relaxed) && backlog > 0,
        backlog,
        dead_letters,
        delivered: s.delivered.load(Ordering::Relaxed),
        failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
        dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
        last_error,
        last_delivered_at,
    }
}

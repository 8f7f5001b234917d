//! Whether the forwarder gets events into the event store, and if not, why and since when:
//! what `GET /ready` shows and what the logs say, once per change rather than once per retry.

use crate::ports::{JournalStats, PortError};
use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::Duration;

/// How often a failure that goes on is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(300);

/// The failure the forwarder is in.
#[derive(Debug, Clone, PartialEq)]
pub struct Failing {
    /// [`PortError::class`]: `unreachable`, `timeout`, `refused`, `schema_mismatch`, ...
    pub class: &'static str,
    /// The event store's error code, when it gave one.
    pub code: Option<u32>,
    /// The latest error, as the event store's adapter words it.
    pub error: String,
    /// When this failure began: the first failed attempt since the last success (a change of
    /// error does not reset it: the journal has been held since then).
    pub since: DateTime<Utc>,
    /// Failed attempts since then.
    pub attempts: u64,
    last_logged: DateTime<Utc>,
}

/// What [`ForwardingHealth::failed`] logged, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// The first failure after a success: ERROR.
    Began,
    /// Another class or code than the last attempt's: ERROR.
    Changed,
    /// The same, [`REMIND_EVERY`] after the last line: ERROR.
    Reminder,
    /// The same, logged recently: nothing (a debug line).
    Quiet,
}

/// The forwarder's state, shared with the operator endpoints.
#[derive(Debug, Default)]
pub struct ForwardingHealth {
    failing: Mutex<Option<Failing>>,
}

impl ForwardingHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current failure, if forwarding fails.
    pub fn failing(&self) -> Option<Failing> {
        self.lock().clone()
    }

    /// Records a failed attempt and logs it if it is news (or due for a reminder).
    pub fn failed(&self, e: &PortError, now: DateTime<Utc>, journal: &JournalStats) -> Logged {
        let mut state = self.lock();
        let (class, code, error) = (e.class(), e.code(), e.to_string());
        let logged = match state.as_mut() {
            None => {
                *state = Some(Failing {
                    class,
                    code,
                    error: error.clone(),
                    since: now,
                    attempts: 1,
                    last_logged: now,
                });
                Logged::Began
            }
            Some(f) => {
                f.attempts += 1;
                let changed = f.class != class || f.code != code;
                f.class = class;
                f.code = code;
                f.error.clone_from(&error);
                let due = (now - f.last_logged).to_std().unwrap_or_default() >= REMIND_EVERY;
                if changed || due {
                    f.last_logged = now;
                }
                match (changed, due) {
                    (true, _) => Logged::Changed,
                    (false, true) => Logged::Reminder,
                    (false, false) => Logged::Quiet,
                }
            }
        };
        let f = state.as_ref().map(|f| (f.since, f.attempts));
        let (since, attempts) = f.unwrap_or((now, 1));
        let held = journal.entries;
        let code = code.map_or_else(String::new, |c| format!(" (code {c})"));
        match logged {
            Logged::Began => tracing::error!(
                class, cause = %error, journal_entries = held,
                "forwarding to the event store fails: {class}{code}; the journal keeps every \
                 event and retries (README: outages)"
            ),
            Logged::Changed => tracing::error!(
                class, cause = %error, journal_entries = held, %since, attempts,
                "forwarding to the event store now fails otherwise: {class}{code}"
            ),
            Logged::Reminder => tracing::error!(
                class, cause = %error, journal_entries = held, %since, attempts,
                "forwarding to the event store still fails: {class}{code}"
            ),
            Logged::Quiet => {
                tracing::debug!(class, cause = %error, attempts, "forwarding retry failed")
            }
        }
        logged
    }

    /// Records a successful insert; logs the recovery when it ends a failure.
    pub fn succeeded(&self, now: DateTime<Utc>) {
        if let Some(f) = self.lock().take() {
            let lasted = (now - f.since).to_std().unwrap_or_default();
            tracing::warn!(
                class = f.class, attempts = f.attempts, lasted = ?lasted,
                "forwarding to the event store works again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Refusal, RefusalCause};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn refused(code: u32) -> PortError {
        PortError::Refused(Refusal {
            cause: RefusalCause::Permission,
            code: Some(code),
            message: "readonly".into(),
        })
    }

    #[test]
    fn a_failure_is_logged_when_it_begins_changes_or_is_due_a_reminder() {
        let h = ForwardingHealth::default();
        let j = JournalStats::default();
        let down = PortError::Unavailable("connection refused".into());
        assert_eq!(h.failed(&down, at(0), &j), Logged::Began);
        assert_eq!(h.failed(&down, at(1), &j), Logged::Quiet);
        assert_eq!(h.failed(&down, at(299), &j), Logged::Quiet);
        assert_eq!(h.failed(&down, at(300), &j), Logged::Reminder);
        assert_eq!(h.failed(&down, at(301), &j), Logged::Quiet);
        assert_eq!(h.failed(&refused(164), at(302), &j), Logged::Changed);
        assert_eq!(h.failed(&refused(497), at(303), &j), Logged::Changed);
        let f = h.failing().unwrap();
        assert_eq!(
            (f.class, f.code, f.since, f.attempts),
            ("refused", Some(497), at(0), 7)
        );
        h.succeeded(at(400));
        assert_eq!(h.failing(), None);
        assert_eq!(h.failed(&down, at(401), &j), Logged::Began);
        assert_eq!(h.failing().unwrap().since, at(401));
    }
}

//! What the ingest use case answers for each event.

use super::{CartEvent, EventId, FieldError};

/// The answer for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Durably recorded.
    Accepted(EventId),
    /// Accepted before, within the dedup window; not recorded again.
    Duplicate(EventId),
    /// Broke the rules; not recorded.
    Rejected(Vec<FieldError>),
    /// Could not be recorded now; the client should retry.
    Unavailable(Unavailable),
}

/// Why an event could not be recorded now. Every reason is retryable; the inbound adapters
/// word it for their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The server is draining and takes no new work.
    ShuttingDown,
    /// The event store (or its journal) could not record the event.
    StoreDown,
    /// The local journal is full while the remote store catches up.
    JournalFull,
    /// Another request holds the event's dedup key and has not settled it yet.
    KeyInFlight,
    /// The dedup store cannot answer and the server is configured to fail closed.
    DedupDown,
}

/// One event as the caller validated it.
pub type Item = Result<CartEvent, Vec<FieldError>>;

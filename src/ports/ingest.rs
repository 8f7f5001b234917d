//! The driving side: what the inbound adapters ask of the ingest use case, and what it answers.

use crate::domain::{CartEvent, EventFields, EventId, FieldError, Source};
use std::future::Future;

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

/// The ingest use case as the inbound adapters drive it. Static dispatch on purpose: the
/// WebSocket adapter calls `submit` once per message, so the adapters are generic over this
/// trait instead of holding an `Arc<dyn>` that would box every returned future.
///
/// `submit` and `submit_one` queue their items before they return: two calls made one after
/// the other are committed in that order even if their futures are polled later. The futures
/// own what they need (`'static`), so an adapter can keep them in flight past the call.
pub trait IngestUseCase: Send + Sync + 'static {
    /// Validates one raw event (a JSON object as the client sent it).
    fn validate(&self, raw: serde_json::Value) -> Item;

    /// Validates one event already split into its fields.
    fn validate_fields(&self, fields: EventFields) -> Item;

    /// Submits validated items; resolves to one outcome per item, in order.
    fn submit(
        &self,
        items: Vec<Item>,
        source: Source,
    ) -> impl Future<Output = Vec<Outcome>> + Send + 'static;

    /// Submits one validated item; resolves to its outcome.
    fn submit_one(
        &self,
        item: Item,
        source: Source,
    ) -> impl Future<Output = Outcome> + Send + 'static;
}

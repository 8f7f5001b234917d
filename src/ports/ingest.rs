//! The driving side: what the inbound adapters ask of the ingest use case, and what it answers.

use crate::domain::{EventFields, Source};
use std::future::Future;

// The answers are plain values, defined with the rest of the pure rules.
pub use crate::domain::{Item, Outcome, Unavailable};

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

    /// Validates one event already split into its fields, as [`Self::validate_fields`];
    /// `as_sent` gives the event whole, as the client sent it, and is called only when the
    /// event breaks a rule while someone watches the tap (which shows a rejected event as
    /// sent: keys no rule reads included). For adapters that split events without keeping
    /// the whole value, and can rebuild it at a cost paid only then.
    fn validate_fields_as_sent(
        &self,
        fields: EventFields,
        as_sent: &dyn Fn() -> serde_json::Value,
    ) -> Item {
        let _ = as_sent;
        self.validate_fields(fields)
    }

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

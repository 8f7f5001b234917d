//! Test events: the unit tests' fixtures, the same file (`src/domain/fixtures.rs`), so the
//! crate has one definition. That file takes the domain's types from its parent module: this
//! one, which re-exports them.

pub use cartstream::domain::{
    parse_event, CartEvent, EventId, Source, StoredEvent, ValidationPolicy,
};

#[path = "../../src/domain/fixtures.rs"]
mod shared;

pub use shared::*;

/// The ids of `events`, in order.
pub fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.event_id().as_str()).collect()
}

//! Pure, synchronous rules: the event model, validation, dedup keys and the listing's filter.
//! No I/O, no async, no framework types.

pub mod address;
pub mod dedup;
pub mod error;
pub mod event;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gcra;
pub mod listing;
pub mod outcome;
pub mod routing;
pub mod sweep;
pub mod validation;

pub use dedup::{Claim, DedupKey, GroupPlan, KeyDigest, KeyHasher, KeyMap, WrongLength};
pub use error::{FieldCode, FieldError};
pub use event::{
    CartEvent, EventColumns, EventId, EventType, IdOrigin, Metadata, Source, StoredEvent,
    StoredFields,
};
pub use listing::{newest_first, EventQuery, PageKey};
pub use outcome::{Item, Outcome, Unavailable};
pub use sweep::SweepMark;
pub use validation::{
    parse_event, parse_event_owned, parse_fields, EventFields, ValidationPolicy, MAX_AMOUNT,
    MAX_COUNT,
};

//! The driving side: what the inbound adapters ask of the ingest use case, and what it answers.

// The answers are plain values, defined with the rest of the pure rules.
pub use crate::domain::{Item, Outcome, Unavailable};

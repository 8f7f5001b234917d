//! [`Ingest`] as the driving port the inbound adapters depend on.

use super::Ingest;
use crate::domain::{EventFields, Source};
use crate::ports::{IngestUseCase, Item, Outcome};
use std::future::Future;

impl IngestUseCase for Ingest {
    fn validate(&self, raw: serde_json::Value) -> Item {
        Ingest::validate(self, raw)
    }

    fn validate_fields(&self, fields: EventFields) -> Item {
        Ingest::validate_fields(self, fields)
    }

    fn validate_fields_as_sent(
        &self,
        fields: EventFields,
        as_sent: &dyn Fn() -> serde_json::Value,
    ) -> Item {
        Ingest::validate_fields_as_sent(self, fields, as_sent)
    }

    fn submit(
        &self,
        items: Vec<Item>,
        source: Source,
    ) -> impl Future<Output = Vec<Outcome>> + Send + 'static {
        Ingest::submit(self, items, source)
    }

    fn submit_one(
        &self,
        item: Item,
        source: Source,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        Ingest::submit_one(self, item, source)
    }
}

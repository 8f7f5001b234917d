//! An accepted event as JSON, with exactly the fields `GET /events` returns: what route
//! targets send downstream. A test in `inbound::wire` keeps the two identical.

use crate::domain::StoredEvent;
use chrono::SecondsFormat;
use serde_json::{Map, Value};

pub fn event_json(s: &StoredEvent) -> Value {
    let e = &s.event;
    let mut m = Map::with_capacity(7);
    m.insert("eventId".into(), Value::from(e.event_id().as_str()));
    m.insert("userId".into(), Value::from(e.user_id()));
    if let Some(session) = e.session_id() {
        m.insert("sessionId".into(), Value::from(session));
    }
    m.insert("eventType".into(), Value::from(e.event_type().as_str()));
    m.insert(
        "timestamp".into(),
        Value::from(e.occurred_at().to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    m.insert("metadata".into(), Value::Object(e.metadata().to_object()));
    m.insert(
        "receivedAt".into(),
        Value::from(s.received_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    Value::Object(m)
}

//! The operator API for the quarantine: events the event store refused alone.

use super::auth::AdminKey;
use crate::adapters::inbound::wire::{rfc3339, ErrorBody, ErrorCode, EventView};
use crate::app::forwarder::quarantine::QuarantineAdmin;
use crate::app::metrics::{Channel, Metrics};
use crate::ports::PortError;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use std::sync::Arc;

#[derive(Tags)]
enum QuarantineTags {
    /// Accepted events the event store refused alone, set aside so the rest keeps flowing.
    /// Needs the admin key when one is configured.
    Quarantine,
}

/// `None`: no journal in front of the store, so nothing is ever quarantined.
pub struct QuarantineApi {
    pub admin: Option<QuarantineAdmin>,
    pub metrics: Arc<Metrics>,
}

/// One event set aside.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QuarantinedView {
    /// Position in the list; pass the last one as `after` for the next page.
    pub id: i64,
    /// The event, as `GET /events` shows it.
    pub event: EventView,
    /// What the event store answered for this event alone.
    pub reason: String,
    /// The event store's error code, when it gave one.
    #[oai(skip_serializing_if_is_none)]
    pub code: Option<u32>,
    pub quarantined_at: String,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QuarantinePage {
    /// Oldest first.
    pub events: Vec<QuarantinedView>,
    /// How many events the quarantine holds.
    pub total: u64,
    /// Pass as `after` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<i64>,
}

/// Which quarantined events to insert into the event store again.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QuarantineReplayRequest {
    /// These events; absent: every quarantined event.
    pub event_ids: Option<Vec<String>>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct QuarantineReplayResult {
    /// Stored in the event store and gone from the quarantine.
    pub replayed: u64,
    /// Refused again, alone: still in the quarantine.
    pub still_refused: u64,
    /// What the event store said for the last of those.
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<String>,
}

#[derive(ApiResponse)]
pub enum QuarantineListResponse {
    #[oai(status = 200)]
    Ok(Json<QuarantinePage>),
    /// `invalid_parameter`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `forbidden`: the key has no scope for this operation, or may not be used from this
    /// page's origin.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `rate_limited`: too many requests, or too many failed authentications from this
    /// address; `Retry-After` says after how many seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `unavailable`: the quarantine cannot be read right now.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum QuarantineReplayResponse {
    /// Done: how many were stored, how many are still refused.
    #[oai(status = 200)]
    Ok(Json<QuarantineReplayResult>),
    /// `invalid_json`: the body is not JSON, or not of this shape.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `forbidden`: the key has no scope for this operation, or may not be used from this
    /// page's origin.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `payload_too_large`: the body (after decompression) is over 64 KiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `unsupported_media_type`: the content type is not JSON, or the content encoding is
    /// not gzip.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// `rate_limited`: too many requests, or too many failed authentications from this
    /// address; `Retry-After` says after how many seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `unavailable`: the event store failed otherwise than by refusing single events (down,
    /// a permission, a schema); what was replayed before stays replayed, the rest stays.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum QuarantineDeleteResponse {
    /// Deleted for good.
    #[oai(status = 204)]
    Deleted,
    /// `not_found`: no quarantined event with that id.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `forbidden`: the key has no scope for this operation, or may not be used from this
    /// page's origin.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `rate_limited`: too many requests, or too many failed authentications from this
    /// address; `Retry-After` says after how many seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl QuarantineApi {
    fn error(&self, code: ErrorCode, message: impl Into<String>) -> Json<ErrorBody> {
        self.metrics.error(Channel::Http, code.as_str());
        Json(ErrorBody::new(code, message))
    }

    fn unavailable(&self, what: &str, e: &PortError) -> Json<ErrorBody> {
        tracing::warn!(cause = %e, "{what} failed");
        self.error(ErrorCode::Unavailable, format!("{what} failed: {e}"))
    }
}

#[OpenApi]
impl QuarantineApi {
    /// List quarantined events
    ///
    /// Accepted events the event store refused alone (the rest of their batch was stored),
    /// oldest first, with what it answered. They still count as recorded: `GET /events` lists
    /// them and a repeat is a `duplicate`.
    #[oai(
        path = "/quarantine",
        method = "get",
        tag = "QuarantineTags::Quarantine"
    )]
    async fn list(
        &self,
        _auth: AdminKey,
        /// Only entries after this one (the `next` of the previous page).
        after: Query<Option<i64>>,
        /// Page size, 1-1000. Default 100.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> QuarantineListResponse {
        let Some(admin) = &self.admin else {
            return QuarantineListResponse::Ok(Json(QuarantinePage {
                events: Vec::new(),
                total: 0,
                next: None,
            }));
        };
        let limit = limit.0.unwrap_or(100) as usize;
        match admin.list(after.0.unwrap_or(0), limit).await {
            Ok(entries) => {
                let next = (entries.len() == limit)
                    .then(|| entries.last().map(|e| e.id))
                    .flatten();
                QuarantineListResponse::Ok(Json(QuarantinePage {
                    events: entries
                        .into_iter()
                        .map(|e| QuarantinedView {
                            id: e.id,
                            event: EventView::from(e.item.event),
                            reason: e.item.reason,
                            code: e.item.code,
                            quarantined_at: rfc3339(e.item.quarantined_at),
                        })
                        .collect(),
                    total: admin.count(),
                    next,
                }))
            }
            Err(e) => {
                QuarantineListResponse::Unavailable(self.unavailable("reading the quarantine", &e))
            }
        }
    }

    /// Replay quarantined events
    ///
    /// Inserts them into the event store again (after the table was fixed): the given ids,
    /// or all. Each one the store takes leaves the quarantine; one it still refuses stays.
    /// Events are not routed again: they were when accepted.
    #[oai(
        path = "/quarantine/replay",
        method = "post",
        tag = "QuarantineTags::Quarantine"
    )]
    async fn replay(
        &self,
        _auth: AdminKey,
        body: Json<QuarantineReplayRequest>,
    ) -> QuarantineReplayResponse {
        let Some(admin) = &self.admin else {
            return QuarantineReplayResponse::Ok(Json(QuarantineReplayResult {
                replayed: 0,
                still_refused: 0,
                last_error: None,
            }));
        };
        match admin.replay(body.0.event_ids).await {
            Ok(o) => QuarantineReplayResponse::Ok(Json(QuarantineReplayResult {
                replayed: o.replayed,
                still_refused: o.still_refused,
                last_error: o.last_error,
            })),
            Err(e) => QuarantineReplayResponse::Unavailable(
                self.unavailable("replaying the quarantine", &e),
            ),
        }
    }

    /// Delete a quarantined event
    ///
    /// Drops it for good: it was acked, so this is the one way an accepted event is lost,
    /// and only on an operator's word.
    #[oai(
        path = "/quarantine/:event_id",
        method = "delete",
        tag = "QuarantineTags::Quarantine"
    )]
    async fn delete(&self, _auth: AdminKey, event_id: Path<String>) -> QuarantineDeleteResponse {
        let not_found = || format!("no quarantined event with id {:?}", event_id.0);
        let Some(admin) = &self.admin else {
            return QuarantineDeleteResponse::NotFound(
                self.error(ErrorCode::NotFound, not_found()),
            );
        };
        match admin.delete(&event_id.0).await {
            Ok(true) => QuarantineDeleteResponse::Deleted,
            Ok(false) => {
                QuarantineDeleteResponse::NotFound(self.error(ErrorCode::NotFound, not_found()))
            }
            Err(e) => QuarantineDeleteResponse::Unavailable(
                self.unavailable("deleting from the quarantine", &e),
            ),
        }
    }
}

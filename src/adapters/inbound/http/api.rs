//! The HTTP operations of PROTOCOL.md section 4, described for the OpenAPI document.

use super::auth::{Caller, IngestKey, IngestKeyOrQuery, ReadKey};
use super::cursor;
use super::input::{BatchBody, BatchEvents, BeaconBody, EventTypeName, InstantParam, RawEvent};
use super::listing::{write_page, EventListJson};
use super::serde_body::SerdeJson;
use super::HttpState;
use crate::adapters::inbound::wire::{
    batch_answer, rfc3339, unavailable_message, BatchAnswer, BatchResult, ErrorBody, ErrorCode,
    EventView,
};
use crate::app::disk::DiskReport;
use crate::app::metrics::{Channel, Metrics};
use crate::domain::{FieldError, Source};
use crate::ports::{EventQuery, IngestUseCase, Outcome};
use chrono::{DateTime, Utc};
use poem_openapi::param::Query;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Tags)]
enum ApiTags {
    /// Sending and reading cart events.
    Events,
    /// Health, readiness and metrics, for operators.
    Operations,
}

/// The event operations, generic over the use case so the handlers can be tested against a
/// fake and the production build calls [`crate::app::ingest::Ingest`] directly.
pub struct Api<U> {
    pub state: Arc<HttpState<U>>,
}

/// The answer for one accepted or duplicate event.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventAck {
    /// The id used for the event: the one sent, or the one derived or assigned.
    pub event_id: String,
    pub status: AckStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum AckStatus {
    Accepted,
    Duplicate,
}

#[derive(ApiResponse)]
pub enum PostEventResponse {
    /// Accepted: the event is durably recorded and will reach the store and every matching
    /// route, whatever fails afterwards.
    #[oai(status = 202)]
    Accepted(Json<EventAck>),
    /// Duplicate: an event with this `eventId` was accepted within the dedup window (24 hours
    /// by default). It was not recorded again. Safe to treat as success.
    #[oai(status = 200)]
    Duplicate(Json<EventAck>),
    /// `invalid_json`: the body is not JSON, or not a JSON object.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `unauthorized`: keys are configured and no valid key was sent.
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
    /// `validation_failed`: `details` lists every broken rule, field by field.
    #[oai(status = 422)]
    ValidationFailed(Json<ErrorBody>),
    /// `rate_limited`: slow down; `Retry-After` says after how many seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `unavailable`: the event could not be recorded durably right now and was not
    /// accepted. Retry later with the same `eventId`.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum PostBatchResponse {
    /// Per-event results in request order, with counts. Each event is judged on its own: one
    /// bad event does not reject the others.
    #[oai(status = 200)]
    Ok(SerdeJson<BatchResult>),
    /// `invalid_json` (body not a JSON object) or `invalid_message` (no `events` array, or 0
    /// or more than 500 events).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `unauthorized`: keys are configured and no valid key was sent.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `forbidden`: the key has no scope for this operation, or may not be used from this
    /// page's origin.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `payload_too_large`: the body (after decompression) is over 1 MiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `unsupported_media_type`: the content type is not JSON, or the content encoding is
    /// not gzip.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// `rate_limited`: slow down; `Retry-After` says after how many seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `unavailable`: some events of the batch could not be recorded durably right now. Retry
    /// the whole batch later; events of it that were recorded come back `duplicate`.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum BeaconResponse {
    /// Every event of the batch is recorded (accepted, or a duplicate of one recorded before).
    #[oai(status = 204)]
    Recorded,
    /// `invalid_json` (body not a JSON object), `invalid_message` (no `events` array, or 0 or
    /// more than 500 events), or `validation_failed`: some events broke the rules and were not
    /// recorded (`details` names each as `events[i].field`); the others were recorded.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `unauthorized`: keys are configured and no valid ingest key was sent.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `forbidden`: the key has no `ingest` scope, or may not be used from this page's origin.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `payload_too_large`: the body (after decompression) is over 1 MiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `unsupported_media_type`: the content type is neither `text/plain` nor
    /// `application/json`, or the content encoding is not gzip.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// `rate_limited`: slow down; `Retry-After` says after how many seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `unavailable`: the batch could not be recorded durably right now. Retry it whole later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// One page of stored events.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventList {
    /// Newest `timestamp` first, then the latest `receivedAt`, then by `eventId`
    /// (descending). At most `limit` events and about 4 MiB of them (`read_max_page_bytes`;
    /// always at least one event): a page may hold fewer than `limit` while more follow.
    pub events: Vec<EventView>,
    /// Present when more events match: send it as `cursor`, with the same filters, for the
    /// next page. Absent means the listing is complete; a short page does not. Opaque: its
    /// form may change between versions.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum GetEventsResponse {
    #[oai(status = 200)]
    Ok(EventListJson),
    /// `invalid_parameter`: a query parameter is malformed or out of range, or `cursor` is
    /// not one this server gave out for these filters.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `unauthorized`: keys are configured and no valid key was sent.
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
    /// `unavailable`: too many reads are being served (the wait for a turn passed
    /// `read_queue_timeout`), or the event store cannot be read right now; `Retry-After`
    /// says after how many seconds to try again.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

/// When to retry a read the event store could not answer.
const STORE_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, Object)]
pub struct Health {
    /// Always `ok` while the process serves.
    pub status: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ComponentStatus {
    Up,
    Down,
}

/// The state of one backend.
#[derive(Debug, Object)]
pub struct Component {
    /// Which implementation serves it: `embedded`, `redis` or `clickhouse`.
    pub backend: String,
    pub status: ComponentStatus,
    /// Why it is down.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DiskStatus {
    /// Writes succeed and free space is above the warning threshold.
    Ok,
    /// Free space is below `disk_warn_free_percent`; still ready.
    Low,
    /// Local writes fail for lack of space: not ready until space is freed.
    Full,
}

/// The disk under the data dir, where the local journal and stores live.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Disk {
    pub status: DiskStatus,
    /// The data dir.
    pub data_dir: String,
    /// Free and total bytes of its file system at the last sample.
    #[oai(skip_serializing_if_is_none)]
    pub free_bytes: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub total_bytes: Option<u64>,
    /// Why it is full.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ForwardingStatus {
    /// The latest insert into the event store succeeded (or none was needed).
    Ok,
    /// Inserts fail; the journal keeps every event and they are retried.
    Failing,
}

/// The way from the local journal to the event store (ClickHouse, or the embedded store).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Forwarding {
    pub status: ForwardingStatus,
    /// While failing: `unreachable`, `timeout`, `refused` (the server answered an error:
    /// a permission, a quota, an overload, or data it refuses), `schema_mismatch` (the table
    /// is not what the service writes), `no_space`, `full` or `failed`.
    #[oai(skip_serializing_if_is_none)]
    pub class: Option<String>,
    /// The event store's error code, when it gave one (ClickHouse's `Code: N`).
    #[oai(skip_serializing_if_is_none)]
    pub code: Option<u32>,
    /// The latest error.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    /// When the failure began (RFC 3339), and the failed attempts since.
    #[oai(skip_serializing_if_is_none)]
    pub since: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub attempts: Option<u64>,
    /// Events the event store refused alone, set aside (`GET /quarantine`).
    pub quarantined: u64,
}

impl From<&crate::app::forwarder::ForwardingView> for Forwarding {
    fn from(v: &crate::app::forwarder::ForwardingView) -> Self {
        let quarantined = v.quarantine.count();
        match v.health.failing() {
            None => Self {
                status: ForwardingStatus::Ok,
                class: None,
                code: None,
                error: None,
                since: None,
                attempts: None,
                quarantined,
            },
            Some(f) => Self {
                status: ForwardingStatus::Failing,
                class: Some(f.class.to_owned()),
                code: f.code,
                error: Some(f.error),
                since: Some(rfc3339(f.since)),
                attempts: Some(f.attempts),
                quarantined,
            },
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Readiness {
    /// `ready` when every component is up, forwarding works and the disk is not full, else
    /// `not_ready`.
    pub status: String,
    pub event_store: Component,
    pub dedup_store: Component,
    #[oai(skip_serializing_if_is_none)]
    pub disk: Option<Disk>,
    /// Present when a journal is in front of the event store.
    #[oai(skip_serializing_if_is_none)]
    pub forwarding: Option<Forwarding>,
}

impl From<DiskReport> for Disk {
    fn from(r: DiskReport) -> Self {
        let data_dir = r.data_dir.display().to_string();
        let status = match (&r.full, r.low) {
            (Some(_), _) => DiskStatus::Full,
            (None, true) => DiskStatus::Low,
            (None, false) => DiskStatus::Ok,
        };
        Self {
            status,
            error: r
                .full
                .map(|cause| format!("the disk under the data dir {data_dir} is full: {cause}")),
            data_dir,
            free_bytes: r.space.map(|s| s.free),
            total_bytes: r.space.map(|s| s.total),
        }
    }
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Every backend answers.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one backend does not answer, forwarding fails, or the disk is full; the body
    /// says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

const READY_TIMEOUT: Duration = Duration::from_secs(2);

fn err(metrics: &Metrics, code: ErrorCode, message: impl Into<String>) -> Json<ErrorBody> {
    metrics.error(Channel::Http, code.as_str());
    Json(ErrorBody::new(code, message))
}

/// `Some` only for a value with something in it: a parameter sent empty (`?since=`) is as if
/// it was not sent.
fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn parse_instant(name: &str, raw: Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    non_empty(raw)
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    format!(
                        "{name} must be an RFC 3339 date-time with an offset, \
                         e.g. 2025-08-10T03:27:04.123Z"
                    )
                })
        })
        .transpose()
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl<U: IngestUseCase> Api<U> {
    /// The filters of `GET /events`, checked; empty values count as absent.
    fn events_query(
        &self,
        user_id: Option<String>,
        event_type: Option<EventTypeName>,
        since: Option<String>,
        until: Option<String>,
    ) -> Result<EventQuery, String> {
        let since = parse_instant("since", since)?;
        let until = parse_instant("until", until)?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err("since must not be after until".to_owned());
            }
        }
        Ok(EventQuery {
            user_id,
            event_type: event_type.map(Into::into),
            since,
            until,
            ..EventQuery::first(100)
        })
    }

    fn bad_parameter(&self, message: impl Into<String>) -> GetEventsResponse {
        GetEventsResponse::BadRequest(err(
            &self.state.metrics,
            ErrorCode::InvalidParameter,
            message,
        ))
    }

    /// A turn to read, or `None` when none came within `read_queue_timeout`. Held while the
    /// page is read, written and sent (up to a bound), which is when it takes memory.
    async fn read_turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let wait = self.state.limits.read_queue_timeout;
        let reads = Arc::clone(&self.state.backends.reads);
        match tokio::time::timeout(wait, reads.acquire_owned()).await {
            Ok(Ok(turn)) => Some(turn),
            // Never closed; a closed semaphore would be as busy as a full one.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    async fn rate_limited(&self, caller: Caller, events: usize) -> Option<(Json<ErrorBody>, u64)> {
        let wait = self
            .state
            .gate
            .rate_limits
            .admit_events(caller.0, events)
            .await
            .err()?;
        let mut body = err(
            &self.state.metrics,
            ErrorCode::RateLimited,
            format!("too many events; retry after {} ms", wait.as_millis()),
        );
        body.0.retryable = true;
        Some((body, retry_after_secs(wait).max(1)))
    }
}

/// What a batch comes to, for the operations that take one.
enum BatchOutcome {
    Results(BatchResult),
    BadRequest(Json<ErrorBody>),
    RateLimited(Json<ErrorBody>, u64),
    Unavailable(Json<ErrorBody>),
}

impl<U: IngestUseCase> Api<U> {
    /// Checks the envelope and the rate, then validates and records each event.
    async fn submit_batch(&self, caller: Caller, events: BatchEvents) -> BatchOutcome {
        let max = self.state.limits.max_batch_events;
        let bad = |message: String| {
            BatchOutcome::BadRequest(err(&self.state.metrics, ErrorCode::InvalidMessage, message))
        };
        let events = match events {
            BatchEvents::Items(events) => events,
            BatchEvents::NotAnArray => return bad("events must be an array of events".into()),
            BatchEvents::Missing => return bad("the body must be {\"events\": [...]}".into()),
        };
        if events.is_empty() || events.len() > max {
            return bad(format!(
                "events must hold 1 to {max} events; got {}",
                events.len()
            ));
        }
        if let Some((body, secs)) = self.rate_limited(caller, events.len()).await {
            return BatchOutcome::RateLimited(body, secs);
        }
        let ingest = &self.state.ingest;
        let items = events
            .into_iter()
            .map(|e| match e {
                Some(fields) => ingest.validate_fields(fields),
                None => Err(vec![FieldError::invalid_type("", "a JSON object")]),
            })
            .collect();
        match batch_answer(ingest.submit(items, Source::Http).await) {
            BatchAnswer::Results(r) => BatchOutcome::Results(r),
            BatchAnswer::Unavailable(reason) => {
                BatchOutcome::Unavailable(err(&self.state.metrics, ErrorCode::Unavailable, reason))
            }
        }
    }
}

#[OpenApi]
impl<U: IngestUseCase> Api<U> {
    /// Send one event
    ///
    /// The answer is `202 accepted` once the event is durably recorded, or `200 duplicate`
    /// when the same `eventId` was accepted before. Send an `eventId` to make retries safe.
    /// The body may be gzip-compressed (`Content-Encoding: gzip`); the 64 KiB limit applies
    /// after decompression too.
    #[oai(path = "/events", method = "post", tag = "ApiTags::Events")]
    async fn post_event(&self, auth: IngestKey, body: Json<RawEvent>) -> PostEventResponse {
        if let Some((body, secs)) = self.rate_limited(auth.0, 1).await {
            return PostEventResponse::RateLimited(body, secs);
        }
        let ingest = &self.state.ingest;
        let item = ingest.validate(Value::Object(body.0 .0));
        match ingest.submit_one(item, Source::Http).await {
            Outcome::Accepted(id) => PostEventResponse::Accepted(Json(EventAck {
                event_id: id.into_string(),
                status: AckStatus::Accepted,
            })),
            Outcome::Duplicate(id) => PostEventResponse::Duplicate(Json(EventAck {
                event_id: id.into_string(),
                status: AckStatus::Duplicate,
            })),
            Outcome::Rejected(errors) => {
                self.state
                    .metrics
                    .error(Channel::Http, ErrorCode::ValidationFailed.as_str());
                PostEventResponse::ValidationFailed(Json(ErrorBody::validation(errors)))
            }
            Outcome::Unavailable(reason) => PostEventResponse::Unavailable(err(
                &self.state.metrics,
                ErrorCode::Unavailable,
                unavailable_message(reason),
            )),
        }
    }

    /// Send a batch of events
    ///
    /// `{"events": [...]}` with 1 to 500 events, answered per event in request order. One bad
    /// event does not reject the others. The body may be gzip-compressed; the 1 MiB limit
    /// applies after decompression too.
    #[oai(path = "/events/batch", method = "post", tag = "ApiTags::Events")]
    async fn post_batch(&self, auth: IngestKey, body: BatchBody) -> PostBatchResponse {
        match self.submit_batch(auth.0, body.0).await {
            BatchOutcome::Results(r) => PostBatchResponse::Ok(SerdeJson(r)),
            BatchOutcome::BadRequest(e) => PostBatchResponse::BadRequest(e),
            BatchOutcome::RateLimited(e, secs) => PostBatchResponse::RateLimited(e, secs),
            BatchOutcome::Unavailable(e) => PostBatchResponse::Unavailable(e),
        }
    }

    /// Send a batch from a page that is going away
    ///
    /// For `navigator.sendBeacon` (and `fetch` with `keepalive`) on page unload: the body of
    /// `POST /events/batch`, sent as `text/plain` (what `sendBeacon` sends for a string, so a
    /// page on another origin needs no preflight) or `application/json`, with the ingest key
    /// in `?apiKey=` (a beacon cannot set headers). `204` once every event is recorded
    /// (accepted or duplicate). If some events break the rules, the others are still recorded
    /// and the answer is `400 validation_failed` with `details` naming each broken rule as
    /// `events[i].field`. Same limits as `POST /events/batch`.
    #[oai(path = "/events/beacon", method = "post", tag = "ApiTags::Events")]
    async fn post_beacon(&self, auth: IngestKeyOrQuery, body: BeaconBody) -> BeaconResponse {
        let r = match self.submit_batch(auth.0, body.into_events()).await {
            BatchOutcome::Results(r) => r,
            BatchOutcome::BadRequest(e) => return BeaconResponse::BadRequest(e),
            BatchOutcome::RateLimited(e, secs) => return BeaconResponse::RateLimited(e, secs),
            BatchOutcome::Unavailable(e) => return BeaconResponse::Unavailable(e),
        };
        if r.rejected == 0 {
            return BeaconResponse::Recorded;
        }
        let details = r
            .results
            .into_iter()
            .flat_map(|item| {
                let index = item.index;
                item.errors.into_iter().flatten().map(move |mut e| {
                    e.field = if e.field.is_empty() {
                        format!("events[{index}]")
                    } else {
                        format!("events[{index}].{}", e.field)
                    };
                    e
                })
            })
            .collect();
        let mut body = err(
            &self.state.metrics,
            ErrorCode::ValidationFailed,
            format!(
                "{} of {} events are invalid and were not recorded; the others were",
                r.rejected,
                r.accepted + r.duplicates + r.rejected
            ),
        );
        body.0.details = Some(details);
        BeaconResponse::BadRequest(body)
    }

    /// Read stored events
    ///
    /// One page of stored events, newest `timestamp` first. Every filter is optional; `since`
    /// and `until` are inclusive bounds on the event's `timestamp`. An empty value is the
    /// same as no value.
    ///
    /// **Paging.** A page holds at most `limit` events and stops early at a byte budget
    /// (4 MiB of events by default), so it may hold fewer than `limit` while more follow.
    /// While more follow, the answer has a `nextCursor`: send it back as `cursor` with the
    /// same filters for the next page. Only an answer without `nextCursor` ends the
    /// listing. Paging is by position, so events stored between pages never make a page
    /// repeat or skip an event (the newest of them appear on a listing started afresh).
    ///
    /// **Load.** Only a few reads are served at once; one that waits too long for its turn
    /// is answered `503 unavailable` with `Retry-After`.
    #[oai(path = "/events", method = "get", tag = "ApiTags::Events")]
    // One argument per query parameter of the contract.
    #[allow(clippy::too_many_arguments)]
    async fn get_events(
        &self,
        _auth: ReadKey,
        /// Only this user's events.
        #[oai(name = "userId")]
        user_id: Query<Option<String>>,
        /// Only events of this type.
        #[oai(name = "eventType")]
        event_type: Query<Option<EventTypeName>>,
        /// Only events at or after this instant (RFC 3339 with offset). Empty: no bound.
        since: Query<InstantParam>,
        /// Only events at or before this instant (RFC 3339 with offset). Empty: no bound.
        until: Query<InstantParam>,
        /// How many events at most, 1-1000. Default 100.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Where to continue: the `nextCursor` of the page before, sent with the same
        /// `userId`, `eventType`, `since` and `until` (`limit` may change). Opaque. A cursor
        /// that was altered, or made for other filters, is `400 invalid_parameter`.
        cursor: Query<Option<String>>,
    ) -> GetEventsResponse {
        let mut query = match self.events_query(user_id.0, event_type.0, since.0 .0, until.0 .0) {
            Ok(q) => q,
            Err(message) => return self.bad_parameter(message),
        };
        query.limit = limit.0.unwrap_or(100) as usize;
        query.max_bytes = self.state.limits.read_max_page_bytes;
        if let Some(c) = non_empty(cursor.0) {
            match cursor::decode(&query, &c) {
                Ok(after) => query.after = Some(after),
                Err(e) => return self.bad_parameter(e.to_string()),
            }
        }
        let Some(turn) = self.read_turn().await else {
            let wait = self.state.limits.read_queue_timeout;
            return GetEventsResponse::Unavailable(
                err(
                    &self.state.metrics,
                    ErrorCode::Unavailable,
                    "too many reads are being served; retry after the Retry-After seconds",
                ),
                retry_after_secs(wait).max(1),
            );
        };
        match self.state.backends.store.query(&query).await {
            Ok(page) => GetEventsResponse::Ok(
                write_page(page, query.max_bytes, |last| cursor::encode(&query, last))
                    .holding(turn),
            ),
            Err(e) => {
                tracing::warn!(cause = %e, "reading events failed");
                GetEventsResponse::Unavailable(
                    err(
                        &self.state.metrics,
                        ErrorCode::Unavailable,
                        "the event store cannot be read right now; retry later",
                    ),
                    STORE_RETRY_AFTER_SECS,
                )
            }
        }
    }

    /// Liveness
    ///
    /// `200 {"status":"ok"}` while the process serves.
    #[oai(path = "/health", method = "get", tag = "ApiTags::Operations")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
        })
    }

    /// Readiness
    ///
    /// `200` when the event store and the dedup store answer, the journal's events reach the
    /// event store and the data dir's disk takes writes, else `503`; the body names each
    /// component and its state, and while forwarding fails, its error class and since when.
    #[oai(path = "/ready", method = "get", tag = "ApiTags::Operations")]
    async fn ready(&self) -> ReadyResponse {
        let s = &self.state.backends;
        let (store, dedup) = tokio::join!(
            tokio::time::timeout(READY_TIMEOUT, s.store.check()),
            tokio::time::timeout(READY_TIMEOUT, s.dedup.check()),
        );
        let component = |backend: &str, r: Result<Result<(), crate::ports::PortError>, _>| {
            let error = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {READY_TIMEOUT:?}")),
            };
            Component {
                backend: backend.to_owned(),
                status: if error.is_none() {
                    ComponentStatus::Up
                } else {
                    ComponentStatus::Down
                },
                error,
            }
        };
        let mut event_store = component(s.store_kind, store);
        if let Some(found) = s.damage.found() {
            event_store.status = ComponentStatus::Down;
            event_store.error = Some(found);
        }
        let dedup_store = component(s.dedup_kind, dedup);
        let disk = s.disk.as_ref().map(|d| Disk::from(d.report()));
        let forwarding = s.forwarding.as_ref().map(Forwarding::from);
        let up = event_store.status == ComponentStatus::Up
            && dedup_store.status == ComponentStatus::Up
            && disk.as_ref().is_none_or(|d| d.status != DiskStatus::Full)
            && forwarding
                .as_ref()
                .is_none_or(|f| f.status == ForwardingStatus::Ok);
        let body = Readiness {
            status: if up { "ready" } else { "not_ready" }.into(),
            event_store,
            dedup_store,
            disk,
            forwarding,
        };
        if up {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }

    /// Metrics
    ///
    /// Prometheus text exposition: events received, accepted, duplicate, rejected and
    /// unavailable by channel, error replies by code, WebSocket connections, commit batch
    /// sizes and latencies, backend failures.
    #[oai(path = "/metrics", method = "get", tag = "ApiTags::Operations")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(self.state.metrics.render())
    }
}

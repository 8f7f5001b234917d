//! The operator API for routes: their state, and the dead-letter store.

use super::auth::AdminKey;
use crate::adapters::inbound::wire::{rfc3339, ErrorBody, ErrorCode, EventView};
use crate::app::metrics::{Channel, Metrics};
use crate::ports::RouteAdmin;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Tags)]
enum OperatorTags {
    /// Routes and dead letters, for operators. Needs the admin key when one is configured.
    Routing,
}

/// The operator API needs only route administration (`None`: no routes are configured, and
/// every operation answers so) and the error counters.
pub struct OperatorApi {
    pub routing: Option<Arc<dyn RouteAdmin>>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum RouteState {
    /// The latest attempt succeeded (or none was needed).
    Ok,
    /// The latest attempt failed; deliveries are being retried.
    Retrying,
}

/// The latest failure of a route.
#[derive(Debug, Object)]
pub struct LastError {
    pub message: String,
    pub at: String,
}

/// One configured route.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RouteView {
    pub name: String,
    /// Event types the route takes; `["*"]` for all.
    pub event_types: Vec<String>,
    /// The target, without secrets.
    pub target: String,
    pub state: RouteState,
    /// Deliveries waiting.
    pub backlog: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Since the server started: events delivered, failed attempts, events dead-lettered.
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<LastError>,
    #[oai(skip_serializing_if_is_none)]
    pub last_delivered_at: Option<String>,
}

#[derive(Debug, Object)]
pub struct RouteList {
    pub routes: Vec<RouteView>,
}

/// A delivery that failed for good.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub id: i64,
    pub route: String,
    /// The event, as `GET /events` shows it.
    pub event: EventView,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: String,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeadLetterPage {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<i64>,
}

/// Which dead letters to deliver again: those of a route, or these ids (of that route, if
/// both are given).
#[derive(Debug, Object)]
pub struct ReplayRequest {
    pub route: Option<String>,
    pub ids: Option<Vec<i64>>,
}

/// The body of `POST /dead-letters/replay`: a [`ReplayRequest`], documented as needing at
/// least one of its fields, as the server answers `{}` with `400`.
#[derive(Debug)]
pub struct ReplayBody(pub ReplayRequest);

impl Type for ReplayBody {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        <ReplayRequest as Type>::name()
    }
    fn schema_ref() -> MetaSchemaRef {
        <ReplayRequest as Type>::schema_ref()
    }
    fn register(registry: &mut Registry) {
        <ReplayRequest as Type>::register(registry);
        let required = |field: &'static str| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                required: vec![field],
                ..MetaSchema::ANY
            }))
        };
        if let Some(schema) = registry.schemas.get_mut(&*Self::name()) {
            schema.any_of = vec![required("route"), required("ids")];
        }
    }
    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }
    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromJSON for ReplayBody {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        // The schema has no `null` for either field, and a `null` read as "absent" would turn
        // `{"route": "r", "ids": null}` into a replay of the whole route.
        if let Some(serde_json::Value::Object(m)) = &value {
            if let Some(field) = ["route", "ids"]
                .into_iter()
                .find(|f| m.get(*f).is_some_and(serde_json::Value::is_null))
            {
                return Err(ParseError::custom(format!(
                    "{field} must not be null; leave it out instead"
                )));
            }
        }
        ReplayRequest::parse_from_json(value)
            .map(Self)
            .map_err(ParseError::propagate)
    }
}

impl ToJSON for ReplayBody {
    fn to_json(&self) -> Option<serde_json::Value> {
        self.0.to_json()
    }
}

#[derive(Debug, Object)]
pub struct ReplayResult {
    /// How many dead letters went back to be delivered.
    pub replayed: u64,
}

#[derive(ApiResponse)]
pub enum RoutesResponse {
    #[oai(status = 200)]
    Ok(Json<RouteList>),
    /// `unauthorized`: an admin key is configured and none valid was sent.
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
    /// `unavailable`: the outbox cannot be read right now.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum DeadLettersResponse {
    #[oai(status = 200)]
    Ok(Json<DeadLetterPage>),
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
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum ReplayResponse {
    #[oai(status = 200)]
    Ok(Json<ReplayResult>),
    /// `invalid_message`: neither `route` nor `ids` given; or `invalid_json`: the body is not
    /// JSON, or not of this shape.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `payload_too_large`: the body (after decompression) is over 64 KiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `unsupported_media_type`: the content type is not JSON, or the content encoding is
    /// not gzip.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
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

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted.
    #[oai(status = 204)]
    Deleted,
    /// `invalid_parameter`: the id is not an integer in the int64 range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `not_found`: no dead letter with that id.
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

impl OperatorApi {
    fn routing(&self) -> Option<&Arc<dyn RouteAdmin>> {
        self.routing.as_ref()
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) -> Json<ErrorBody> {
        self.metrics.error(Channel::Http, code.as_str());
        Json(ErrorBody::new(code, message))
    }

    fn unavailable(&self, e: &crate::ports::PortError) -> Json<ErrorBody> {
        tracing::warn!(cause = %e, "outbox unreadable");
        self.error(
            ErrorCode::Unavailable,
            "the outbox cannot be read right now; retry later",
        )
    }
}

#[OpenApi]
impl OperatorApi {
    /// List routes
    ///
    /// Every configured route with its state, backlog, dead letters, counts since the server
    /// started and latest error.
    #[oai(path = "/routes", method = "get", tag = "OperatorTags::Routing")]
    async fn routes(&self, _auth: AdminKey) -> RoutesResponse {
        let Some(routing) = self.routing() else {
            return RoutesResponse::Ok(Json(RouteList { routes: Vec::new() }));
        };
        let reports = match routing.routes().await {
            Ok(reports) => reports,
            Err(e) => return RoutesResponse::Unavailable(self.unavailable(&e)),
        };
        let routes = reports
            .into_iter()
            .map(|r| RouteView {
                name: r.name,
                event_types: r.event_types,
                target: r.target,
                state: if r.retrying {
                    RouteState::Retrying
                } else {
                    RouteState::Ok
                },
                backlog: r.backlog,
                dead_letters: r.dead_letters,
                delivered: r.delivered,
                failed_attempts: r.failed_attempts,
                dead_lettered: r.dead_lettered,
                last_error: r.last_error.map(|(message, at)| LastError {
                    message,
                    at: rfc3339(at),
                }),
                last_delivered_at: r.last_delivered_at.map(rfc3339),
            })
            .collect();
        RoutesResponse::Ok(Json(RouteList { routes }))
    }

    /// List dead letters
    ///
    /// Deliveries that failed for good, oldest first, a page at a time.
    #[oai(path = "/dead-letters", method = "get", tag = "OperatorTags::Routing")]
    async fn dead_letters(
        &self,
        _auth: AdminKey,
        /// Only this route's.
        route: Query<Option<String>>,
        /// Only ids above this one (the `next` of the previous page).
        after: Query<Option<i64>>,
        /// Page size, 1-1000. Default 100.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> DeadLettersResponse {
        let Some(routing) = self.routing() else {
            return DeadLettersResponse::Ok(Json(DeadLetterPage {
                dead_letters: Vec::new(),
                next: None,
            }));
        };
        let limit = limit.0.unwrap_or(100) as usize;
        match routing.dead_letters(route.0, after.0, limit).await {
            Ok(letters) => {
                let next = (letters.len() == limit)
                    .then(|| letters.last().map(|d| d.id))
                    .flatten();
                DeadLettersResponse::Ok(Json(DeadLetterPage {
                    dead_letters: letters
                        .into_iter()
                        .map(|d| DeadLetterView {
                            id: d.id,
                            route: d.route,
                            event: EventView::from(d.event),
                            attempts: d.attempts,
                            last_error: d.last_error,
                            failed_at: rfc3339(d.failed_at),
                        })
                        .collect(),
                    next,
                }))
            }
            Err(e) => DeadLettersResponse::Unavailable(self.unavailable(&e)),
        }
    }

    /// Replay dead letters
    ///
    /// Moves dead letters back to be delivered again, from scratch (attempts reset): all of a
    /// route's, or the given ids.
    #[oai(
        path = "/dead-letters/replay",
        method = "post",
        tag = "OperatorTags::Routing"
    )]
    async fn replay(&self, _auth: AdminKey, body: Json<ReplayBody>) -> ReplayResponse {
        let ReplayRequest { route, ids } = body.0 .0;
        if route.is_none() && ids.is_none() {
            return ReplayResponse::BadRequest(self.error(
                ErrorCode::InvalidMessage,
                "name what to replay: {\"route\": \"...\"} and/or {\"ids\": [...]}",
            ));
        }
        let Some(routing) = self.routing() else {
            return ReplayResponse::Ok(Json(ReplayResult { replayed: 0 }));
        };
        match routing.replay(route, ids).await {
            Ok(replayed) => ReplayResponse::Ok(Json(ReplayResult { replayed })),
            Err(e) => ReplayResponse::Unavailable(self.unavailable(&e)),
        }
    }

    /// Delete a dead letter
    ///
    /// Drops it for good.
    #[oai(
        path = "/dead-letters/:id",
        method = "delete",
        tag = "OperatorTags::Routing"
    )]
    async fn delete(&self, _auth: AdminKey, id: Path<i64>) -> DeleteResponse {
        let not_found = || format!("no dead letter with id {}", id.0);
        let Some(routing) = self.routing() else {
            return DeleteResponse::NotFound(self.error(ErrorCode::NotFound, not_found()));
        };
        match routing.delete_dead_letter(id.0).await {
            Ok(true) => DeleteResponse::Deleted,
            Ok(false) => DeleteResponse::NotFound(self.error(ErrorCode::NotFound, not_found())),
            Err(e) => DeleteResponse::Unavailable(self.unavailable(&e)),
        }
    }
}

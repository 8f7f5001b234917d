//! The HTTP edge: the OpenAPI service, the WebSocket route, and the guards every request
//! passes (API keys, body limits and gzip), with every error in the one JSON error body.

pub mod api;
mod body;
pub mod input;
pub mod operator;

use crate::adapters::inbound::wire::{ErrorBody, ErrorCode};
use crate::adapters::inbound::ws;
use crate::app::metrics::Channel;
use crate::app::state::AppState;
use poem::http::{header, Method, StatusCode};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;
use std::sync::Arc;

const DESCRIPTION: &str = "\
cartstream takes in e-commerce cart events in real time. Each event is validated, stored once \
and delivered downstream, and every event gets an answer.

**Answers.** `accepted` means the event is durably recorded: it will reach the event store and \
every route even if something fails afterwards. `duplicate` means an event with the same \
`eventId` was accepted within the dedup window (24 hours by default) and was not recorded \
again: treat it as success. A rejected event comes back with every broken rule, field by field. \
`unavailable` (`retryable: true`) means nothing was recorded: retry later with the same \
`eventId`.

**Errors** share one body: `{\"code\", \"message\", \"details\"?, \"retryable\"}`.

**Authentication.** When the server has API keys configured, the `/events` endpoints need \
`Authorization: Bearer <key>` or `X-API-Key: <key>` (WebSocket clients may pass `?apiKey=<key>`).

**Streaming.** High-volume clients should use the WebSocket channel `GET /events/stream` \
(not describable in OpenAPI): after `connection_ack`, send `cart_event`, `cart_event_batch` and \
`ping` messages, pipelined; every message gets exactly one reply, in order. See the project's \
PROTOCOL.md, section 3.";

/// The OpenAPI service for `state`. The document it serves does not depend on the state.
pub fn openapi(state: Arc<AppState>) -> OpenApiService<(api::Api, operator::OperatorApi), ()> {
    let apis = (
        api::Api {
            state: Arc::clone(&state),
        },
        operator::OperatorApi { state },
    );
    OpenApiService::new(apis, "cartstream", env!("CARGO_PKG_VERSION")).description(DESCRIPTION)
}

/// The OpenAPI document, as served at `/openapi.json` and checked in under `openapi/`.
pub fn openapi_document(state: Arc<AppState>) -> String {
    openapi(state).spec()
}

/// Every route of the server.
pub fn routes(state: Arc<AppState>) -> impl Endpoint {
    let service = openapi(Arc::clone(&state));
    let spec = service.spec_endpoint();
    let docs = service.swagger_ui();
    let guard_state = Arc::clone(&state);
    let error_state = Arc::clone(&state);
    Route::new()
        .at("/events/stream", ws::endpoint(Arc::clone(&state)))
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .nest("/", service)
        .around(move |ep, req| guard(Arc::clone(&guard_state), ep, req))
        .catch_all_error(move |e| {
            let state = Arc::clone(&error_state);
            async move { error_response(&state, e) }
        })
}

/// Rejects what must not reach a handler: a missing API key, an oversized or undecodable body.
async fn guard<E: Endpoint>(
    state: Arc<AppState>,
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path();
    if is_operator(path) && !admin_authorized(&state, &req) {
        return Ok(json_error(
            &state,
            StatusCode::UNAUTHORIZED,
            ErrorBody::new(
                ErrorCode::Unauthorized,
                "the admin key is required: Authorization: Bearer <admin key> or X-Admin-Key: <admin key>",
            ),
        ));
    }
    if is_protected(path) && !authorized(&state, &req) {
        return Ok(json_error(
            &state,
            StatusCode::UNAUTHORIZED,
            ErrorBody::new(
                ErrorCode::Unauthorized,
                "a valid API key is required: Authorization: Bearer <key> or X-API-Key: <key>",
            ),
        ));
    }
    if req.method() == Method::POST {
        let limit = match path {
            "/events" => Some(state.settings.max_event_body_bytes),
            "/events/batch" => Some(state.settings.max_batch_body_bytes),
            _ => None,
        };
        if let Some(limit) = limit {
            match body::read_limited(&mut req, limit).await {
                Ok(bytes) => req.set_body(bytes),
                Err(e) => {
                    let (status, code) = match e {
                        body::BodyError::TooLarge(_) => {
                            (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
                        }
                        body::BodyError::UnsupportedEncoding(_) => (
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            ErrorCode::UnsupportedMediaType,
                        ),
                        body::BodyError::BadGzip | body::BodyError::Read(_) => {
                            (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson)
                        }
                    };
                    return Ok(json_error(
                        &state,
                        status,
                        ErrorBody::new(code, e.to_string()),
                    ));
                }
            }
        }
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

fn is_operator(path: &str) -> bool {
    path == "/routes" || path == "/dead-letters" || path.starts_with("/dead-letters/")
}

fn admin_authorized(state: &AppState, req: &Request) -> bool {
    let Some(admin) = &state.settings.admin_key else {
        return true;
    };
    let header_key = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header_key(header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let direct = header_key("x-admin-key").map(str::trim);
    [bearer, direct]
        .into_iter()
        .flatten()
        .any(|k| constant_time_eq(admin.as_bytes(), k.as_bytes()))
}

fn is_protected(path: &str) -> bool {
    path == "/events" || path.starts_with("/events/")
}

fn authorized(state: &AppState, req: &Request) -> bool {
    let keys = &state.settings.api_keys;
    if keys.is_empty() {
        return true;
    }
    let header_key = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header_key(header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let api_key = header_key("x-api-key").map(str::trim);
    let query_key = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "apiKey")
            .map(|(_, v)| v)
    });
    [bearer, api_key, query_key].into_iter().flatten().any(|k| {
        keys.iter()
            .any(|known| constant_time_eq(known.as_bytes(), k.as_bytes()))
    })
}

/// Compares without an early exit, so response timing does not reveal key prefixes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn json_error(state: &AppState, status: StatusCode, body: ErrorBody) -> Response {
    state.metrics.error(Channel::Http, body.code.as_str());
    let text = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(text)
}

/// Maps poem's and poem-openapi's own errors (unparseable body, wrong content type, bad query
/// parameter, unknown path) into the contract's error body.
fn error_response(state: &AppState, e: poem::Error) -> Response {
    use poem_openapi::error::{ContentTypeError, ParseParamError, ParseRequestPayloadError};
    let status = e.status();
    let (status, body) = if let Some(p) = e.downcast_ref::<ParseRequestPayloadError>() {
        let message = if p.reason.contains("must be a JSON object") {
            p.reason.clone()
        } else {
            format!("the request body is not valid JSON: {}", p.reason)
        };
        (
            StatusCode::BAD_REQUEST,
            ErrorBody::new(ErrorCode::InvalidJson, message),
        )
    } else if e.is::<ContentTypeError>() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorBody::new(
                ErrorCode::UnsupportedMediaType,
                format!("{e}; send Content-Type: application/json"),
            ),
        )
    } else if e.is::<ParseParamError>() {
        (
            StatusCode::BAD_REQUEST,
            ErrorBody::new(ErrorCode::InvalidParameter, e.to_string()),
        )
    } else {
        let code = match status {
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            s if s.is_client_error() => ErrorCode::InvalidMessage,
            _ => ErrorCode::InternalError,
        };
        let message = match code {
            ErrorCode::NotFound => "no such path".to_owned(),
            ErrorCode::InternalError => {
                tracing::error!(cause = %e, "request failed");
                "internal error".to_owned()
            }
            _ => e.to_string(),
        };
        let status = if code == ErrorCode::InternalError {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            status
        };
        (status, ErrorBody::new(code, message))
    };
    json_error(state, status, body)
}

//! The HTTP edge: the OpenAPI service, the route the WebSocket endpoint is mounted at (given
//! by startup, so this adapter does not import the other), and the guards every request
//! passes (API keys, body limits and gzip), with every error in the one JSON error body.

mod allow;
pub mod api;
pub mod auth;
mod body;
mod cors;
pub mod cursor;
pub mod input;
mod listing;
pub mod operator;
pub mod quarantine;
mod sdk;
mod serde_body;

use crate::adapters::inbound::edge::client::TrustedProxies;
use crate::adapters::inbound::edge::{json_error, Caller};
use crate::adapters::inbound::wire::{ErrorBody, ErrorCode};
use crate::app::access::Access;
use crate::app::forwarder::quarantine::QuarantineAdmin;
use crate::app::metrics::Metrics;
use crate::app::rate_limit::{Client, RateLimits};
use crate::ports::{DedupStore, EventStore, IngestUseCase, RouteAdmin};
use poem::http::{header, Method, StatusCode};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

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

**Authentication.** When the server has keys configured, every operation but health, \
readiness, metrics and these documents needs a key with the right scope, sent as \
`Authorization: Bearer <key>` or `X-API-Key: <key>`: `ingest` to send events (never to read \
them; the key a page embeds), `read` for `GET /events`, `admin` for routes and dead letters \
(it includes `read`). No key or an unknown one is `401 unauthorized`; a key without the scope, or \
used from a page origin it is not allowed for, is `403 forbidden`. Where a client cannot set \
headers (`POST /events/beacon`, the WebSocket upgrade) the key may travel as `?apiKey=<key>`. \
Too many failed authentications from one address are answered `429 rate_limited`.

**Browsers.** Pages of the origins the server allows may call the ingest operations across \
origins (CORS; preflights are answered, `Retry-After` is exposed, no credentials). \
`POST /events/beacon` takes a batch as `text/plain`, so `navigator.sendBeacon` works on page \
unload without a preflight.

**Streaming.** High-volume clients should use the WebSocket channel `GET /events/stream` \
(not describable in OpenAPI): after `connection_ack`, send `cart_event`, `cart_event_batch` and \
`ping` messages, pipelined; every message gets exactly one reply, in order. Its messages, \
replies, limits, close codes and authentication are described by the AsyncAPI 3 document at \
[/asyncapi.json](/asyncapi.json), whose event schemas are this document's; see also the \
project's PROTOCOL.md, section 3.";

/// The AsyncAPI document of the WebSocket channel, as checked in and served at
/// `/asyncapi.json` (tests/api/asyncapi.rs keeps its event schemas the OpenAPI document's).
pub const ASYNCAPI_DOCUMENT: &str = include_str!("../../../../asyncapi/asyncapi.json");

/// The HTTP adapter's limits, taken from the settings once at startup.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest body of `POST /events`, after decompression; also the bound on every other
    /// route's body (the operator API's bodies are small).
    pub max_event_body_bytes: usize,
    /// Largest body of `POST /events/batch` and `POST /events/beacon`, after decompression.
    pub max_batch_body_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Byte budget of one `GET /events` page.
    pub read_max_page_bytes: usize,
    /// How long `GET /events` waits for a turn before it is answered `503`.
    pub read_queue_timeout: Duration,
    /// How long a browser may cache a preflight's answer.
    pub cors_max_age: Duration,
}

/// What the guard decides with: keys, rate limits, proxies and origins.
pub struct Gate {
    /// Every configured key, with its scopes, origins and limits.
    pub access: Arc<Access>,
    /// Shared with the WebSocket adapter: one bucket per client across both channels.
    pub rate_limits: Arc<RateLimits>,
    /// Proxies whose forwarding headers name the client.
    pub proxies: TrustedProxies,
    /// Every browser origin the server allows (`cors_origins` and every key's `origins`);
    /// empty: no CORS and no `Origin` check.
    pub allowed_origins: Vec<String>,
}

/// The stores behind `GET /events` and `GET /ready`.
pub struct Backends {
    pub store: Arc<dyn EventStore>,
    pub dedup: Arc<dyn DedupStore>,
    /// Names of the configured backends, for readiness (`embedded`, `clickhouse`, `redis`).
    pub store_kind: &'static str,
    pub dedup_kind: &'static str,
    /// Turns for `GET /events` (`read_max_concurrency` of them): a read holds a page in
    /// memory twice (events and their JSON), so at most this many pages are built at once.
    pub reads: Arc<Semaphore>,
    /// The data dir's disk, for readiness.
    pub disk: Option<Arc<crate::app::disk::DiskState>>,
    /// Damage the integrity check found after the server started: `GET /ready` answers 503.
    pub damage: Arc<crate::app::integrity::Damage>,
    /// The forwarder's health and the quarantine, when a journal is in front of the store.
    pub forwarding: Option<crate::app::forwarder::ForwardingView>,
}

/// Everything the HTTP adapter needs, built once in [`crate::app::startup`].
pub struct HttpState<U> {
    pub ingest: U,
    pub limits: HttpLimits,
    pub gate: Gate,
    pub backends: Backends,
    pub metrics: Arc<Metrics>,
    /// Route administration, when routes are configured, for the operator API.
    pub routing: Option<Arc<dyn RouteAdmin>>,
}

/// The OpenAPI service for `state`. The document it serves does not depend on the state.
pub fn openapi<U: IngestUseCase>(
    state: Arc<HttpState<U>>,
) -> OpenApiService<
    (
        api::Api<U>,
        operator::OperatorApi,
        quarantine::QuarantineApi,
    ),
    (),
> {
    let operator = operator::OperatorApi {
        routing: state.routing.clone(),
        metrics: Arc::clone(&state.metrics),
    };
    let quarantine = quarantine::QuarantineApi {
        admin: state.backends.forwarding.as_ref().map(|f| QuarantineAdmin {
            quarantine: Arc::clone(&f.quarantine),
            remote: Arc::clone(&f.remote),
            metrics: Arc::clone(&state.metrics),
        }),
        metrics: Arc::clone(&state.metrics),
    };
    let apis = (api::Api { state }, operator, quarantine);
    OpenApiService::new(apis, "cartstream", env!("CARGO_PKG_VERSION")).description(DESCRIPTION)
}

/// The OpenAPI document, as served at `/openapi.json` and checked in under `openapi/`.
pub fn openapi_document<U: IngestUseCase>(state: Arc<HttpState<U>>) -> String {
    openapi(state).spec()
}

/// Endpoints of other adapters this one mounts without knowing them: `/events/tap` (the tap)
/// and `/live` with its assets (the live view's page).
#[derive(Default)]
pub struct Mounts {
    pub tap: Option<poem::endpoint::BoxEndpoint<'static>>,
    pub live: Option<poem::endpoint::BoxEndpoint<'static>>,
}

/// Every route of the server: the OpenAPI operations, the OpenAPI and AsyncAPI documents, the
/// browser SDK's script, `stream` (the WebSocket adapter's endpoint, which this adapter mounts without knowing) at
/// `/events/stream`, and `mounts`, all behind the guard.
pub fn routes<U: IngestUseCase>(
    state: Arc<HttpState<U>>,
    stream: impl Endpoint + 'static,
    mounts: Mounts,
) -> impl Endpoint {
    let service = openapi(Arc::clone(&state));
    let allowed = Arc::new(allow::AllowedMethods::from_spec(
        &service.spec(),
        &[
            ("/openapi.json", "GET"),
            ("/asyncapi.json", "GET"),
            ("/events/stream", "GET"),
            (sdk::PATH, "GET, HEAD"),
            ("/events/tap", "GET"),
            ("/live", "GET, HEAD"),
            ("/live/app.js", "GET, HEAD"),
            ("/live/app.css", "GET, HEAD"),
            ("/live/icon.svg", "GET, HEAD"),
        ],
    ));
    let spec = service.spec_endpoint();
    let docs = service.swagger_ui();
    let metrics = Arc::clone(&state.metrics);
    let cors = Arc::new(cors::Cors {
        origins: state.gate.allowed_origins.clone(),
        max_age_secs: state.limits.cors_max_age.as_secs(),
    });
    let mut route = Route::new();
    if let Some(tap) = mounts.tap {
        route = route.at("/events/tap", tap);
    }
    if let Some(live) = mounts.live {
        route = route.nest("/live", live);
    }
    route
        .at("/events/stream", stream)
        .at("/openapi.json", spec)
        .at(
            "/asyncapi.json",
            poem::get(poem::endpoint::make_sync(|_| asyncapi_response())),
        )
        .at(sdk::PATH, poem::get(sdk::script).head(sdk::script))
        .nest("/docs", docs)
        .nest("/", service)
        .around(move |ep, req| guard(Arc::clone(&state), ep, req))
        .catch_all_error(move |e| {
            let metrics = Arc::clone(&metrics);
            async move { error_response(&metrics, e) }
        })
        .around(move |ep, req| {
            let allowed = Arc::clone(&allowed);
            async move {
                let path = req.uri().path().to_owned();
                let mut resp = ep.call(req).await?.into_response();
                allowed.complete(&path, &mut resp);
                Ok(resp)
            }
        })
        .around(move |ep, req| {
            let cors = Arc::clone(&cors);
            async move { cors.around(&ep, req).await }
        })
}

/// `GET /asyncapi.json`: the checked-in document, as it is.
fn asyncapi_response() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(ASYNCAPI_DOCUMENT)
}

/// Rejects what must not reach a handler: a request without the key its endpoint needs, a
/// client over its read rate, an oversized or undecodable body. Puts the [`auth::Caller`] in
/// the request for the handlers.
async fn guard<U, E: Endpoint>(
    state: Arc<HttpState<U>>,
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let peer = req
        .remote_addr()
        .as_socket_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let client_ip = state.gate.proxies.client_ip(peer, req.headers());
    let caller = match auth::need(req.method(), req.uri().path()) {
        None => Caller(Client {
            key: None,
            ip: client_ip,
        }),
        Some(need) => match auth::authorize(
            &state.gate.access,
            &state.gate.rate_limits,
            &state.gate.allowed_origins,
            &req,
            need,
            client_ip,
        ) {
            Ok(caller) => caller,
            Err(refusal) => {
                tracing::debug!(
                    uri = %auth::redacted_uri(req.uri()),
                    client = %client_ip,
                    code = refusal.body.code.as_str(),
                    "request refused"
                );
                return Ok(refused(&state.metrics, refusal));
            }
        },
    };
    if req.method() == Method::GET && req.uri().path() == "/events" {
        if let Err(wait) = state.gate.rate_limits.check_read(caller.0) {
            return Ok(refused(
                &state.metrics,
                auth::Refusal::rate_limited(
                    format!("too many reads; retry after {} ms", wait.as_millis().max(1)),
                    wait,
                ),
            ));
        }
    }
    req.extensions_mut().insert(caller);
    if let Some(limit) = body_limit(&state.limits, &req) {
        if let Err(e) = body::read_limited(&mut req, limit)
            .await
            .map(|b| req.set_body(b))
        {
            return Ok(body_refused(&state.metrics, &e));
        }
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// The answer to a body that could not be read within its limit.
fn body_refused(metrics: &Metrics, e: &body::BodyError) -> Response {
    let (status, code) = match e {
        body::BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
        body::BodyError::UnsupportedEncoding(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
        ),
        body::BodyError::BadGzip | body::BodyError::Read(_) => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson)
        }
    };
    json_error(metrics, status, ErrorBody::new(code, e.to_string()))
}

/// How much of a request's body may be read, for every request that can carry one: the event
/// and batch limits on their routes, the event limit on every other route (the operator API's
/// bodies are small), so no route buffers an unbounded body. `None` for the WebSocket upgrade
/// and for methods without a body.
fn body_limit(limits: &HttpLimits, req: &Request) -> Option<usize> {
    let path = req.uri().path();
    if path == "/events/stream"
        || matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
    {
        return None;
    }
    Some(match path {
        "/events/batch" | "/events/beacon" => limits.max_batch_body_bytes,
        _ => limits.max_event_body_bytes,
    })
}

fn refused(metrics: &Metrics, refusal: auth::Refusal) -> Response {
    let mut resp = json_error(metrics, refusal.status, refusal.body);
    if let Some(wait) = refusal.retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, secs.max(1).into());
    }
    resp
}

/// Maps poem's and poem-openapi's own errors (unparseable body, wrong content type, bad query
/// parameter, unknown path) into the contract's error body.
fn error_response(metrics: &Metrics, e: poem::Error) -> Response {
    use poem_openapi::error::{
        ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
    };
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
    } else if let Some(p) = e.downcast_ref::<ParsePathError>() {
        // poem names path parameters by position (`param0`), so the reason alone is clearer.
        (
            StatusCode::BAD_REQUEST,
            ErrorBody::new(
                ErrorCode::InvalidParameter,
                format!("a path parameter is invalid: {}", p.reason),
            ),
        )
    } else {
        by_status(&e)
    };
    json_error(metrics, status, body)
}

/// An error poem raised by itself (no such path, wrong method, ...), answered by its status.
fn by_status(e: &poem::Error) -> (StatusCode, ErrorBody) {
    let status = e.status();
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
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
}

#[cfg(test)]
mod tests;

//! Authentication at the edge: which scope a request needs, which key it presents, whether
//! that key may be used from the page's origin, and failed attempts per address. Done once,
//! in the guard every request passes; handlers receive the outcome as a [`Caller`] through
//! extractors that also document the security schemes in the OpenAPI document.

pub use crate::adapters::inbound::edge::Caller;
use crate::adapters::inbound::wire::{ErrorBody, ErrorCode};
use crate::app::access::{origin_listed, Access, Scope};
use crate::app::rate_limit::{Client, RateLimits};
use poem::http::{header, Method, StatusCode};
use poem::Request;
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use std::time::Duration;

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub scope: Scope,
    /// Whether `?apiKey=` may carry the key: only where a client cannot set headers (a
    /// WebSocket upgrade, `navigator.sendBeacon`). Elsewhere a key in a URL only ends up in
    /// logs and browser histories.
    pub query_key: bool,
}

/// The scope `method path` needs; `None`: open (health, readiness, metrics, documents).
pub fn need(method: &Method, path: &str) -> Option<Need> {
    let scope = |scope, query_key| Some(Need { scope, query_key });
    match path {
        "/events/stream" | "/events/beacon" => scope(Scope::Ingest, true),
        // Authorizes itself: its key comes in a header or in the first message.
        "/events/tap" => None,
        "/events" if method == Method::GET || method == Method::HEAD => scope(Scope::Read, false),
        "/events" => scope(Scope::Ingest, false),
        p if p.starts_with("/events/") => scope(Scope::Ingest, false),
        "/routes" | "/dead-letters" | "/quarantine" => scope(Scope::Admin, false),
        p if p.starts_with("/dead-letters/") || p.starts_with("/quarantine/") => {
            scope(Scope::Admin, false)
        }
        _ => None,
    }
}

/// Why a request is refused before its handler.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, code: ErrorCode, message: String) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    pub fn rate_limited(message: String, wait: Duration) -> Self {
        let mut r = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            message,
        );
        r.retry_after = Some(wait);
        r
    }
}

/// Decides who `req` is and whether it may go on: failed authentications per address first
/// (a blocked address is refused before its key is looked at), then the key, its scope, and
/// the page's origin (`allowed_origins`: every origin the server allows; empty: no check).
///
/// # Errors
/// 401 without a known key, 403 for a key without the scope or from an origin it may not be
/// used from, 429 for an address over its failed authentications.
pub fn authorize(
    access: &Access,
    limits: &RateLimits,
    allowed_origins: &[String],
    req: &Request,
    need: Need,
    client_ip: std::net::IpAddr,
) -> Result<Caller, Refusal> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if let Some(origin) = origin {
        if need.scope == Scope::Ingest
            && !allowed_origins.is_empty()
            && !origin_listed(allowed_origins, origin)
            && !same_origin(req, origin)
        {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!(
                    "pages of origin {origin} may not send events here (CARTSTREAM_CORS_ORIGINS)"
                ),
            ));
        }
    }
    if access.scope_open(need.scope) {
        return Ok(Caller(Client {
            key: None,
            ip: client_ip,
        }));
    }
    if let Err(wait) = limits.auth_blocked(client_ip) {
        return Err(Refusal::rate_limited(
            format!(
                "too many failed authentications from this address; retry after {} s",
                wait.as_secs().max(1)
            ),
            wait,
        ));
    }
    let Some(key) = presented_key(req, need.query_key).and_then(|k| access.lookup(k)) else {
        limits.auth_failed(client_ip);
        return Err(no_key(need));
    };
    let policy = access.key(key);
    if !policy.allows(need.scope) {
        return Err(no_scope(need.scope));
    }
    if let Some(origin) = origin {
        if !policy.allows_origin(origin) && !same_origin(req, origin) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("this key may not be used from pages of origin {origin}"),
            ));
        }
    }
    Ok(Caller(Client {
        key: Some(key),
        ip: client_ip,
    }))
}

/// The key a request presents: `Authorization: Bearer`, `X-API-Key`, `X-Admin-Key`, then (where
/// allowed) `?apiKey=`; the first one present counts. An `Authorization` header of another
/// scheme (or none) counts as presented and matches no key, so credentials that fail are never passed over
/// for others further down the list.
/// `401`: no key, or none the server knows.
fn no_key(need: Need) -> Refusal {
    let how = if need.query_key {
        "Authorization: Bearer <key>, X-API-Key: <key> or ?apiKey=<key>"
    } else {
        "Authorization: Bearer <key> or X-API-Key: <key>"
    };
    Refusal::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        format!(
            "a valid key with the {} scope is required: {how}",
            need.scope.as_str()
        ),
    )
}

/// `403`: a known key without `scope`.
fn no_scope(scope: Scope) -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!(
            "this key has no {} scope{}",
            scope.as_str(),
            match scope {
                Scope::Read => ": reading needs a read or admin key",
                Scope::Admin => ": the operator API needs the admin key",
                Scope::Ingest => ": sending events needs an ingest key",
            }
        ),
    )
}

pub(crate) fn presented_key(req: &Request, query_key: bool) -> Option<&str> {
    let header_value = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let bearer = header_value(header::AUTHORIZATION.as_str())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                // Another scheme, or a bare key: presented, and matches no key.
                .unwrap_or("")
        })
        .map(str::trim);
    bearer
        .or_else(|| header_value("x-api-key"))
        .or_else(|| header_value("x-admin-key"))
        .or_else(|| {
            query_key
                .then(|| req.uri().query())
                .flatten()
                .and_then(query_api_key)
        })
}

/// The raw value of `apiKey` in a query string. Keys are printable ASCII, so no percent-decoding
/// is needed for keys generated as the README suggests.
fn query_api_key(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "apiKey")
        .map(|(_, v)| v)
}

/// Whether `origin` is the server's own (the page was served by this host, as `/docs` is).
fn same_origin(req: &Request, origin: &str) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// A URI fit for a log line: the value of `apiKey` replaced.
pub fn redacted_uri(uri: &poem::http::Uri) -> String {
    let path = uri.path();
    match uri.query() {
        None => path.to_owned(),
        Some(q) => {
            let q: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("apikey") => format!("{k}=<redacted>"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
    }
}

const BEARER: &str = "bearer";
const API_KEY_HEADER: &str = "apiKeyHeader";
const API_KEY_QUERY: &str = "apiKeyQuery";
const ADMIN_KEY_HEADER: &str = "adminKeyHeader";

fn register_schemes(registry: &mut Registry) {
    registry.create_security_scheme(
        BEARER,
        MetaSecurityScheme {
            ty: "http",
            description: Some(
                "`Authorization: Bearer <key>`: any key, with the scope the operation needs.",
            ),
            name: None,
            key_in: None,
            scheme: Some("bearer"),
            bearer_format: None,
            flows: None,
            openid_connect_url: None,
        },
    );
    for (name, header_or_query, field, description) in [
        (API_KEY_HEADER, "header", "X-API-Key", "A key with the scope the operation needs."),
        (
            API_KEY_QUERY,
            "query",
            "apiKey",
            "An ingest key in the URL, for clients that cannot set headers (`navigator.sendBeacon`, \
             WebSocket in a browser). Accepted only where listed.",
        ),
        (ADMIN_KEY_HEADER, "header", "X-Admin-Key", "The admin key."),
    ] {
        registry.create_security_scheme(
            name,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some(description),
                name: Some(field),
                key_in: Some(header_or_query),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }
}

/// Extractors of the [`Caller`] for operations that need a scope. Each lists the ways its key
/// may travel as the operation's security schemes.
macro_rules! caller_extractor {
    ($(#[$doc:meta])* $name:ident, [$($scheme:expr),*]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name(pub Caller);

        impl<'a> ApiExtractor<'a> for $name {
            const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
            type ParamType = ();
            type ParamRawType = ();

            fn register(registry: &mut Registry) {
                register_schemes(registry);
            }

            fn security_schemes() -> Vec<&'static str> {
                vec![$($scheme),*]
            }

            async fn from_request(
                req: &'a Request,
                _body: &mut poem::RequestBody,
                _opts: ExtractParamOptions<()>,
            ) -> poem::Result<Self> {
                // The guard authorizes every request before routing; a request without a
                // `Caller` did not pass it, which is a wiring bug, not a client error.
                req.extensions()
                    .get::<Caller>()
                    .copied()
                    .map(Self)
                    .ok_or_else(|| {
                        poem::Error::from_string(
                            "request reached a handler without authorization",
                            StatusCode::INTERNAL_SERVER_ERROR,
                        )
                    })
            }
        }
    };
}

caller_extractor!(
    /// A sender with the `ingest` scope (headers only).
    IngestKey,
    [BEARER, API_KEY_HEADER]
);
caller_extractor!(
    /// A sender with the `ingest` scope; the key may also be in `?apiKey=`.
    IngestKeyOrQuery,
    [BEARER, API_KEY_HEADER, API_KEY_QUERY]
);
caller_extractor!(
    /// A reader: a key with the `read` (or `admin`) scope.
    ReadKey,
    [BEARER, API_KEY_HEADER, ADMIN_KEY_HEADER]
);
caller_extractor!(
    /// An operator: the admin key.
    AdminKey,
    [BEARER, ADMIN_KEY_HEADER, API_KEY_HEADER]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_per_endpoint() {
        let n = |m: Method, p: &str| need(&m, p).map(|n| (n.scope, n.query_key));
        assert_eq!(n(Method::POST, "/events"), Some((Scope::Ingest, false)));
        assert_eq!(n(Method::GET, "/events"), Some((Scope::Read, false)));
        assert_eq!(
            n(Method::POST, "/events/batch"),
            Some((Scope::Ingest, false))
        );
        assert_eq!(
            n(Method::POST, "/events/beacon"),
            Some((Scope::Ingest, true))
        );
        assert_eq!(
            n(Method::GET, "/events/stream"),
            Some((Scope::Ingest, true))
        );
        assert_eq!(n(Method::GET, "/routes"), Some((Scope::Admin, false)));
        assert_eq!(
            n(Method::DELETE, "/dead-letters/7"),
            Some((Scope::Admin, false))
        );
        assert_eq!(n(Method::GET, "/quarantine"), Some((Scope::Admin, false)));
        assert_eq!(
            n(Method::POST, "/quarantine/replay"),
            Some((Scope::Admin, false))
        );
        assert_eq!(
            n(Method::DELETE, "/quarantine/e-1"),
            Some((Scope::Admin, false))
        );
        for open in [
            "/health",
            "/ready",
            "/metrics",
            "/openapi.json",
            "/asyncapi.json",
            "/docs",
            "/nope",
        ] {
            assert_eq!(n(Method::GET, open), None, "{open}");
        }
    }

    #[test]
    fn api_key_values_are_redacted_from_uris() {
        let uri: poem::http::Uri = "/events/stream?x=1&apiKey=sekrit&y=2".parse().unwrap();
        let shown = redacted_uri(&uri);
        assert_eq!(shown, "/events/stream?x=1&apiKey=<redacted>&y=2");
        assert!(!shown.contains("sekrit"));
    }
}

//! CORS for the ingest routes, so a shop's pages on other origins can send events: preflights
//! answered for every allowed origin, and the CORS headers on every answer of those routes,
//! errors included, so a page can read why it was refused. No credentials: keys travel in
//! headers or the body's URL, never in cookies.

use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

/// Routes a page may call across origins.
pub fn is_cors_path(path: &str) -> bool {
    matches!(path, "/events" | "/events/batch" | "/events/beacon")
}

const ALLOW_HEADERS: &str = "authorization, content-type, content-encoding, x-api-key";

#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Every allowed origin: `CARTSTREAM_CORS_ORIGINS` and every key's `origins`. Empty: CORS
    /// off (no headers, preflights answered as any other unsupported method).
    pub origins: Vec<String>,
    pub max_age_secs: u64,
}

impl Cors {
    fn allowed<'r>(&self, req: &'r Request) -> Option<&'r HeaderValue> {
        if self.origins.is_empty() || !is_cors_path(req.uri().path()) {
            return None;
        }
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        crate::app::access::origin_listed(&self.origins, text).then_some(origin)
    }

    /// Answers preflights, and adds the CORS headers to the answers of `ep`.
    pub async fn around<E: Endpoint>(&self, ep: &E, req: Request) -> poem::Result<Response> {
        let origin = self.allowed(&req).cloned();
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && !self.origins.is_empty() && is_cors_path(req.uri().path()) {
            // A preflight carries no key, so it is answered for the union of every origin any
            // key may be used from; the request itself is then checked against its key.
            let Some(origin) = origin else {
                return Ok(Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header(header::VARY, "Origin")
                    .finish());
            };
            return Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)
                .header(header::ACCESS_CONTROL_ALLOW_METHODS, "POST")
                .header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
                .header(header::ACCESS_CONTROL_MAX_AGE, self.max_age_secs)
                .header(header::VARY, "Origin")
                .finish());
        }
        let mut resp = ep.call(req).await?.into_response();
        if let Some(origin) = origin {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                // Date too: the browser SDK sets its clock by it when it sends over HTTP.
                HeaderValue::from_static("Retry-After, Date"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        Ok(resp)
    }
}

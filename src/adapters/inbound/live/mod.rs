//! `GET /live`: the live view, a page served from the binary (no build step, no CDN). Its three
//! files are embedded as they are in the source tree; the page talks only to this server
//! (`GET /events/tap` and the operator endpoints), under a strict Content-Security-Policy.

use poem::http::{header, Method, StatusCode};
use poem::{Endpoint, Request, Response};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const ICON_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<circle cx=\"8\" cy=\"8\" r=\"6\" fill=\"#15803d\"/></svg>";

/// No inline script or style, nothing from elsewhere, no framing: event data is attacker
/// controlled, so even a rendering mistake must not run it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page and its assets, by path.
pub fn endpoint() -> impl Endpoint<Output = Response> {
    poem::endpoint::make_sync(|req: Request| {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD")
                .finish();
        }
        // Mounted under `/live`, which the router strips.
        let path = req.uri().path();
        let path = path.strip_prefix("/live").unwrap_or(path);
        let (body, content_type) = match path {
            "" | "/" => (INDEX_HTML, "text/html; charset=utf-8"),
            "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
            "/app.css" => (APP_CSS, "text/css; charset=utf-8"),
            "/icon.svg" => (ICON_SVG, "image/svg+xml"),
            _ => return Response::builder().status(StatusCode::NOT_FOUND).finish(),
        };
        Response::builder()
            .content_type(content_type)
            .header(header::CONTENT_SECURITY_POLICY, CSP)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(body)
    })
}

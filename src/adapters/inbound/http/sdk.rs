//! The browser SDK's script (`clients/js`, issue 16), embedded in the binary so a shop can
//! load it from the server it sends to, and so `cargo build` never needs Node. The file is
//! built from the TypeScript source and committed; CI rebuilds it and fails when they differ.

use poem::http::{header, StatusCode};
use poem::{handler, Response};

/// Where the script is served. The `v1` is the wire protocol's version: the script at this
/// path keeps speaking it.
pub const PATH: &str = "/sdk/v1/cartstream.min.js";

/// The minified IIFE that defines the global `cartstream`.
pub const SCRIPT: &[u8] = include_bytes!("../../../../clients/js/dist/cartstream.min.js");

/// `GET` and `HEAD` of the script: cacheable for an hour by browsers and CDNs, so a fixed SDK
/// reaches pages within the hour without a new URL.
#[handler]
pub fn script() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/javascript; charset=utf-8")
        .header(header::CACHE_CONTROL, "public, max-age=3600")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(SCRIPT)
}

//! Route target: an HTTP POST of the events as JSON, optionally signed with HMAC-SHA256.
//!
//! The signature follows Stripe's scheme: `X-Cartstream-Signature: t=<unix seconds>,v1=<hex>`
//! where `<hex>` is the lowercase hex HMAC-SHA256 of `"<t>.<raw body>"` keyed with the shared
//! secret. Binding the timestamp into the MAC lets receivers reject replays of old requests;
//! `docs/routing.md` shows the receiver side.

use super::super::redact::{scrub, url_secrets};
use crate::adapters::event_json::event_json;
use crate::domain::StoredEvent;
use crate::ports::{Clock, DeliveryError, PortError, RouteTarget};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The signature header; absent when the target has no secret.
pub const SIGNATURE_HEADER: &str = "x-cartstream-signature";
/// How many events the request carries (1 when `batch = false`).
pub const EVENT_COUNT_HEADER: &str = "x-cartstream-event-count";

/// Headers the target sets itself: configuring them would break the body or its signature.
const RESERVED_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "host",
    SIGNATURE_HEADER,
    EVENT_COUNT_HEADER,
];

/// How much of a refusing receiver's body goes into the error message.
const SNIPPET_CHARS: usize = 200;

/// `[routes.target]` with `kind = "webhook"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`; credentials in it are sent as Basic auth and never shown.
    pub url: String,
    /// Shared secret for the `X-Cartstream-Signature` header; no header without it.
    #[serde(default)]
    pub secret: Option<String>,
    /// Extra request headers, e.g. `Authorization`. Sent as sensitive (never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whole-request timeout (connect, send, answer), e.g. `"10s"`.
    #[serde(default = "default_timeout", deserialize_with = "super::timeout")]
    pub timeout: Duration,
    /// `true`: one request per delivery, body `{"events":[...]}`. `false`: one request per
    /// event, the event object as the body.
    #[serde(default = "default_batch")]
    pub batch: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_batch() -> bool {
    true
}

impl WebhookConfig {
    /// The defaults for everything but the URL: no secret, no headers, 10 s, batched.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: None,
            headers: BTreeMap::new(),
            timeout: default_timeout(),
            batch: default_batch(),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url_of(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("batch", &self.batch)
            .finish()
    }
}

/// [`RouteTarget`] that POSTs events to an HTTP endpoint. One pooled client per target.
pub struct WebhookTarget {
    client: reqwest::Client,
    url: Url,
    secret: Option<String>,
    batch: bool,
    /// `scheme://host[:port]/path`: no credentials, no query string.
    shown_url: String,
    /// The secret and the URL's password and query, scrubbed from every message.
    secrets: Vec<String>,
    /// The signature's timestamp, which receivers check for freshness.
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.shown_url)
            .field("signed", &self.secret.is_some())
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl WebhookTarget {
    /// Validates the configuration and builds the HTTP client; nothing is sent yet.
    ///
    /// # Errors
    /// `Failed` for a URL that is not http(s), an empty secret, a zero timeout, or a header name
    /// or value that is not valid HTTP (or one the target sets itself). Messages never contain
    /// the secret, header values or URL credentials.
    pub fn new(config: WebhookConfig, clock: Arc<dyn Clock>) -> Result<Self, PortError> {
        let shown_url = shown_url_of(&config.url);
        let mut secrets = url_secrets(&config.url);
        let url = Url::parse(&config.url).map_err(|e| {
            PortError::Failed(format!("webhook url {shown_url:?} is not a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PortError::Failed(format!(
                "webhook url {shown_url:?} must be http:// or https://"
            )));
        }
        if config.timeout.is_zero() {
            return Err(PortError::Failed(
                "webhook timeout must be more than 0s".to_owned(),
            ));
        }
        if let Some(query) = url.query() {
            secrets.push(query.to_owned());
        }
        if let Some(secret) = &config.secret {
            if secret.is_empty() {
                return Err(PortError::Failed(
                    "webhook secret is empty: remove it or set one".to_owned(),
                ));
            }
            secrets.push(secret.clone());
        }
        let headers = header_map(&config.headers)?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect would move a signed body to a place nobody configured; a 3xx is
            // reported as a refusal instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cartstream/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| PortError::Failed(format!("webhook client for {shown_url}: {e}")))?;
        Ok(Self {
            client,
            url,
            secret: config.secret,
            batch: config.batch,
            shown_url,
            secrets,
            clock,
        })
    }

    /// Sends one request; `count` events are in `body`.
    async fn post(&self, body: Vec<u8>, count: usize) -> Result<(), DeliveryError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_COUNT_HEADER, count);
        if let Some(secret) = &self.secret {
            let mut value = HeaderValue::try_from(signature_header(
                secret.as_bytes(),
                u64::try_from(self.clock.now().timestamp()).unwrap_or(0),
                &body,
            ))
            .map_err(|_| DeliveryError::permanent("webhook signature is not a header value"))?;
            value.set_sensitive(true);
            request = request.header(SIGNATURE_HEADER, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.send_error(&e))?;
        let status = response.status();
        if status.is_success() {
            drain(response).await;
            return Ok(());
        }
        let snippet = body_snippet(response).await;
        Err(self.refusal(status, &snippet))
    }

    fn send_error(&self, e: &reqwest::Error) -> DeliveryError {
        // The causes only: reqwest's own message names the full URL, query string and all.
        let cause = if e.is_timeout() {
            "no answer within the timeout".to_owned()
        } else if e.is_connect() {
            "cannot connect".to_owned()
        } else {
            "request failed".to_owned()
        };
        let detail = error_chain(e);
        DeliveryError::retryable(self.message(&format!("{cause}: {detail}")))
    }

    fn refusal(&self, status: StatusCode, snippet: &str) -> DeliveryError {
        let message = if snippet.is_empty() {
            self.message(&format!("answered {status}"))
        } else {
            self.message(&format!("answered {status}: {snippet}"))
        };
        if is_retryable(status) {
            DeliveryError::retryable(message)
        } else {
            DeliveryError::permanent(message)
        }
    }

    fn message(&self, what: &str) -> String {
        scrub(&format!("webhook {} {what}", self.shown_url), &self.secrets)
    }
}

#[async_trait::async_trait]
impl RouteTarget for WebhookTarget {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.batch {
            let body = serde_json::json!({
                "events": events.iter().map(event_json).collect::<Vec<_>>()
            });
            return self.post(to_bytes(&body)?, events.len()).await;
        }
        // In order, stopping at the first failure: the caller retries the whole slice, so the
        // events before it are sent again (at least once).
        for event in events {
            self.post(to_bytes(&event_json(event))?, 1).await?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("webhook {}", self.shown_url)
    }
}

fn to_bytes(v: &serde_json::Value) -> Result<Vec<u8>, DeliveryError> {
    serde_json::to_vec(v)
        .map_err(|e| DeliveryError::permanent(format!("event does not serialize: {e}")))
}

/// `t=<t>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature_header(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(signature(secret, t, body)))
}

fn signature(secret: &[u8], t: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Whether a non-2xx answer may succeed later: timeouts, "too early", rate limits and server
/// errors. Anything else (other 4xx, and 3xx since redirects are not followed) will not change
/// by sending the same events again.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error()
}

fn header_map(configured: &BTreeMap<String, String>) -> Result<HeaderMap, PortError> {
    let mut map = HeaderMap::with_capacity(configured.len());
    for (name, value) in configured {
        let header = HeaderName::try_from(name.as_str()).map_err(|_| {
            PortError::Failed(format!("webhook header name {name:?} is not a valid name"))
        })?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(PortError::Failed(format!(
                "webhook header {name:?} is set by cartstream itself and cannot be configured"
            )));
        }
        // The value may be a credential: name the header, never echo the value.
        let mut value = HeaderValue::try_from(value.as_str()).map_err(|_| {
            PortError::Failed(format!(
                "webhook header {name:?} has a value that is not a valid header value"
            ))
        })?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// `scheme://host[:port]/path` of `url`, or a placeholder when it does not parse.
fn shown_url_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{}://{host}:{port}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// The error and its causes, without the URL reqwest would print.
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = String::new();
    let mut source = e.source();
    while let Some(cause) = source {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    if out.is_empty() {
        out = e.to_string();
    }
    out
}

/// Reads a small answer to its end, so its connection goes back to the pool; a large one is
/// dropped with its connection rather than downloaded.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < 64 * 1024 {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

/// The start of a refusing receiver's body, on one line, for the error message.
async fn body_snippet(mut response: reqwest::Response) -> String {
    let mut raw = Vec::new();
    // Read only what the message shows; a huge error page is not worth buffering.
    while raw.len() < SNIPPET_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            _ => break,
        }
    }
    snippet(&raw)
}

fn snippet(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > SNIPPET_CHARS {
        let cut: String = trimmed.chars().take(SNIPPET_CHARS).collect();
        format!("{cut}…")
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independently_computed_vector() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test",
        //   b"1700000000.{\"events\":[]}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature_header(b"whsec_test", 1_700_000_000, br#"{"events":[]}"#),
            "t=1700000000,v1=4f6f9b7a41398ad124e52a1320534f978e522923f3f2b2724e31d7a9dbf78a7f"
        );
    }

    #[test]
    fn signature_agrees_with_the_hmac_crate_used_directly() {
        let body = br#"{"eventId":"e1","metadata":{"k":"\u00e9"}}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"42.");
        mac.update(body);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            signature_header(b"s3cret", 42, body),
            format!("t=42,v1={expected}")
        );
    }

    #[test]
    fn outcomes_retry_only_what_may_change() {
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [
            300, 301, 302, 304, 307, 400, 401, 403, 404, 409, 410, 413, 422,
        ] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    fn target(url: &str, secret: Option<&str>) -> WebhookTarget {
        let mut config = WebhookConfig::new(url);
        config.secret = secret.map(str::to_owned);
        WebhookTarget::new(config, Arc::new(crate::ports::SystemClock)).unwrap()
    }

    #[test]
    fn refusals_carry_status_and_snippet_but_no_secret() {
        let t = target(
            "https://user:pw-hunter2@example.com/hook?token=qs-hunter2",
            Some("sig-hunter2"),
        );
        let e = t.refusal(
            StatusCode::BAD_REQUEST,
            &snippet(b"bad\nthing sig-hunter2 pw-hunter2 token=qs-hunter2"),
        );
        assert!(!e.retryable);
        assert!(e.message.contains("400 Bad Request"), "{}", e.message);
        assert!(e.message.contains("bad thing"), "{}", e.message);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(
            t.refusal(StatusCode::SERVICE_UNAVAILABLE, "").retryable,
            "503"
        );
        assert!(!t.refusal(StatusCode::FOUND, "").retryable, "302");
    }

    #[test]
    fn snippets_are_short_and_on_one_line() {
        let long = "x".repeat(1000);
        let s = snippet(long.as_bytes());
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert_eq!(snippet(b"  a\r\nb \xff "), "a  b \u{fffd}");
    }

    #[test]
    fn describe_shows_no_credentials_or_query() {
        let t = target(
            "https://user:pw@hooks.example.com:8443/in/cart?token=abc",
            None,
        );
        assert_eq!(
            t.describe(),
            "webhook https://hooks.example.com:8443/in/cart"
        );
        let t = target("http://example.com", Some("s"));
        assert_eq!(t.describe(), "webhook http://example.com/");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("\"s\""), "{dbg}");
    }

    #[test]
    fn config_debug_hides_secret_and_header_values() {
        let mut c = WebhookConfig::new("https://u:pw-x@h/p?q=qs-x");
        c.secret = Some("sec-x".into());
        c.headers
            .insert("Authorization".into(), "Bearer tok-x".into());
        let dbg = format!("{c:?}");
        for s in ["pw-x", "qs-x", "sec-x", "tok-x"] {
            assert!(!dbg.contains(s), "{dbg}");
        }
        assert!(dbg.contains("Authorization"), "{dbg}");
    }

    #[test]
    fn invalid_headers_are_rejected_at_construction() {
        let with = |name: &str, value: &str| {
            let mut c = WebhookConfig::new("https://example.com/hook");
            c.headers.insert(name.into(), value.into());
            WebhookTarget::new(c, Arc::new(crate::ports::SystemClock))
        };
        assert!(with("Authorization", "Bearer abc").is_ok());
        assert!(with("X-Team", "carts").is_ok());
        let err = with("bad header", "v").unwrap_err();
        assert!(matches!(err, PortError::Failed(_)));
        assert!(err.to_string().contains("bad header"), "{err}");
        let err = with("X-Token", "line\nbreak-hunter2").unwrap_err();
        assert!(err.to_string().contains("X-Token"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(with("", "v").is_err());
        assert!(with("Content-Type", "text/plain").is_err());
        assert!(with("X-Cartstream-Signature", "t=1,v1=00").is_err());
    }

    #[test]
    fn bad_urls_and_empty_secrets_are_rejected() {
        assert!(WebhookTarget::new(
            WebhookConfig::new("not a url"),
            Arc::new(crate::ports::SystemClock)
        )
        .is_err());
        assert!(WebhookTarget::new(
            WebhookConfig::new("ftp://example.com/x"),
            Arc::new(crate::ports::SystemClock)
        )
        .is_err());
        let mut c = WebhookConfig::new("https://example.com");
        c.secret = Some(String::new());
        assert!(WebhookTarget::new(c, Arc::new(crate::ports::SystemClock)).is_err());
        let mut c = WebhookConfig::new("https://example.com");
        c.timeout = Duration::ZERO;
        assert!(WebhookTarget::new(c, Arc::new(crate::ports::SystemClock)).is_err());
    }
}

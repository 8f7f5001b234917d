//! The `Allow` header of a `405 Method Not Allowed`, which RFC 9110 (section 15.5.6) requires:
//! the methods the path supports, as the OpenAPI document lists them, so the header and the
//! document cannot disagree.

use poem::http::{header, HeaderValue, StatusCode};
use poem::Response;
use serde_json::Value;

/// The methods of each path of the OpenAPI document.
#[derive(Debug, Default)]
pub struct AllowedMethods {
    /// Path templates split into segments (`{id}` matches any one segment), with their
    /// `Allow` value.
    paths: Vec<(Vec<String>, HeaderValue)>,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl AllowedMethods {
    /// From the OpenAPI document `spec` (JSON), plus the routes outside it (`extra`: path and
    /// methods).
    pub fn from_spec(spec: &str, extra: &[(&str, &str)]) -> Self {
        let mut paths = Vec::new();
        let doc: Value = serde_json::from_str(spec).unwrap_or_default();
        if let Some(items) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in items {
                let Some(ops) = item.as_object() else {
                    continue;
                };
                let methods: Vec<String> = METHODS
                    .iter()
                    .filter(|m| ops.contains_key(**m))
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
                    paths.push((segments(path), v));
                }
            }
        }
        for (path, methods) in extra {
            if let Ok(v) = HeaderValue::from_str(methods) {
                paths.push((segments(path), v));
            }
        }
        Self { paths }
    }

    /// The `Allow` value for a request path, if the path is one of the server's.
    pub fn for_path(&self, path: &str) -> Option<&HeaderValue> {
        let asked: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        self.paths
            .iter()
            .find(|(template, _)| {
                template.len() == asked.len()
                    && template
                        .iter()
                        .zip(&asked)
                        .all(|(t, a)| t == a || (t.starts_with('{') && !a.is_empty()))
            })
            .map(|(_, v)| v)
    }

    /// Adds `Allow` to a 405 answer for `path` that has none.
    pub fn complete(&self, path: &str, resp: &mut Response) {
        if resp.status() != StatusCode::METHOD_NOT_ALLOWED
            || resp.headers().contains_key(header::ALLOW)
        {
            return;
        }
        if let Some(v) = self.for_path(path) {
            resp.headers_mut().insert(header::ALLOW, v.clone());
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_end_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"paths": {
        "/events": {"get": {}, "post": {}},
        "/dead-letters/{id}": {"delete": {}, "parameters": []},
        "/health": {"get": {}}
    }}"#;

    fn allow(path: &str) -> Option<String> {
        let a = AllowedMethods::from_spec(SPEC, &[("/openapi.json", "GET")]);
        a.for_path(path).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn lists_the_documented_methods_of_a_path() {
        assert_eq!(allow("/events").as_deref(), Some("GET, POST"));
        assert_eq!(allow("/health").as_deref(), Some("GET"));
        assert_eq!(allow("/openapi.json").as_deref(), Some("GET"));
    }

    #[test]
    fn templates_match_one_segment() {
        assert_eq!(allow("/dead-letters/42").as_deref(), Some("DELETE"));
        assert_eq!(allow("/dead-letters/42/x"), None);
        assert_eq!(allow("/dead-letters/"), None);
        assert_eq!(allow("/nope"), None);
    }

    #[test]
    fn only_a_405_without_allow_gets_one() {
        let a = AllowedMethods::from_spec(SPEC, &[]);
        let mut resp = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .finish();
        a.complete("/events", &mut resp);
        assert_eq!(resp.headers()[header::ALLOW], "GET, POST");
        let mut ok = Response::builder().status(StatusCode::OK).finish();
        a.complete("/events", &mut ok);
        assert!(!ok.headers().contains_key(header::ALLOW));
    }
}

//! Keeping credentials out of messages: adapters put their backend's URL in errors so an
//! operator can tell which backend failed, but never its password.

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, end)) => {
            let userinfo = &url[start..end];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[end..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// The password in `url`, raw and percent-decoded, to scrub from messages.
pub fn url_secrets(url: &str) -> Vec<String> {
    let Some((start, end)) = userinfo_span(url) else {
        return Vec::new();
    };
    let Some((_, password)) = url[start..end].split_once(':') else {
        return Vec::new();
    };
    if password.is_empty() {
        return Vec::new();
    }
    let mut out = vec![password.to_owned()];
    let decoded = percent_decode(password);
    if decoded != password && !decoded.is_empty() {
        out.push(decoded);
    }
    out
}

/// Byte range of the `user:password` part of `scheme://user:password@host/...`.
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((start, start + at))
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `message` with every secret replaced by `***`.
pub fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_owned();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password_only() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:pw@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
    }

    #[test]
    fn secrets_include_the_decoded_password() {
        assert_eq!(
            url_secrets("redis://u:p%40ss@host"),
            vec!["p%40ss".to_owned(), "p@ss".to_owned()]
        );
        assert!(url_secrets("redis://host").is_empty());
        assert_eq!(
            scrub("auth p@ss failed", &url_secrets("redis://u:p%40ss@h")),
            "auth *** failed"
        );
    }
}

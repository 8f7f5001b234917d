//! Who may do what: API keys and their scopes, origins and limits, built once from the
//! settings. Keys are kept only as SHA-256 digests, so a key configured as its hash and one
//! configured in clear are looked up the same way, and no secret stays in memory.

use crate::app::config::Settings;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send events (`POST /events`, `/events/batch`, `/events/beacon`, `/events/stream`). Never
    /// reads: safe to embed in a public page.
    Ingest,
    /// Read stored events (`GET /events`).
    Read,
    /// The operator API (`/routes`, `/dead-letters`, `/quarantine`); includes `read`.
    Admin,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

/// A configured key, by its index in [`Access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(u32);

impl KeyId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Per-key rate settings; `None` takes the server-wide setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub per_second: Option<u32>,
    pub burst: Option<u32>,
    pub total_per_second: Option<u32>,
    pub total_burst: Option<u32>,
}

/// One key: never the secret, only what it may do.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// For logs and errors: the `[[keys]]` name, or `api_keys[2]`-style for list entries.
    pub name: String,
    scopes: Vec<Scope>,
    /// Browser origins it may be used from; empty: any allowed by the server.
    pub origins: Vec<String>,
    pub limits: KeyLimits,
}

impl KeyPolicy {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|&s| s == scope || (s == Scope::Admin && scope == Scope::Read))
    }

    /// Whether a request from a page of `origin` (its `Origin` header) may use this key.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.is_empty() || origin_listed(&self.origins, origin)
    }
}

/// Every key the server knows.
#[derive(Debug, Default)]
pub struct Access {
    by_digest: HashMap<[u8; 32], KeyId>,
    keys: Vec<KeyPolicy>,
}

/// A key setting that cannot be used; names the entry, never the key.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct AccessError {
    pub at: String,
    pub reason: String,
}

impl Access {
    /// The keys of `CARTSTREAM_API_KEYS` (ingest), `CARTSTREAM_READ_KEYS` (read),
    /// `CARTSTREAM_ADMIN_KEY` (admin) and the file's `[[keys]]`.
    ///
    /// # Errors
    /// A malformed `sha256:` digest, a `[[keys]]` entry with neither or both of `key` and
    /// `sha256`, without scopes, or the same key configured twice.
    pub fn from_settings(s: &Settings) -> Result<Self, AccessError> {
        let mut access = Self::default();
        let lists = [
            ("api_keys", &s.api_keys, Scope::Ingest),
            ("read_keys", &s.read_keys, Scope::Read),
        ];
        for (setting, list, scope) in lists {
            for (i, raw) in list.iter().enumerate() {
                let at = format!("{setting}[{i}]");
                let digest = digest_of(raw).map_err(|reason| AccessError {
                    at: at.clone(),
                    reason,
                })?;
                access.add(digest, at, vec![scope], Vec::new(), KeyLimits::default())?;
            }
        }
        if let Some(admin) = &s.admin_key {
            let digest = digest_of(admin).map_err(|reason| AccessError {
                at: "admin_key".into(),
                reason,
            })?;
            access.add(
                digest,
                "admin_key".into(),
                vec![Scope::Admin],
                Vec::new(),
                KeyLimits::default(),
            )?;
        }
        for (i, k) in s.keys.iter().enumerate() {
            let at = format!("keys[{i}] ({:?})", k.name);
            let bad = |reason: &str| AccessError {
                at: at.clone(),
                reason: reason.to_owned(),
            };
            let digest = match (&k.key, &k.sha256) {
                (Some(key), None) => digest_of(key).map_err(|r| bad(&r))?,
                (None, Some(hex)) => parse_digest(hex).map_err(|r| bad(&r))?,
                _ => return Err(bad("set exactly one of `key` and `sha256`")),
            };
            if k.scopes.is_empty() {
                return Err(bad(
                    "`scopes` must name at least one of ingest, read, admin",
                ));
            }
            for origin in &k.origins {
                check_origin(origin).map_err(|r| bad(&format!("origins: {r}")))?;
            }
            let limits = KeyLimits {
                per_second: k.rate_limit_per_second,
                burst: k.rate_limit_burst,
                total_per_second: k.rate_limit_total_per_second,
                total_burst: k.rate_limit_total_burst,
            };
            access.add(
                digest,
                k.name.clone(),
                k.scopes.clone(),
                k.origins.clone(),
                limits,
            )?;
        }
        Ok(access)
    }

    fn add(
        &mut self,
        digest: [u8; 32],
        name: String,
        scopes: Vec<Scope>,
        origins: Vec<String>,
        limits: KeyLimits,
    ) -> Result<(), AccessError> {
        let id = KeyId(u32::try_from(self.keys.len()).unwrap_or(u32::MAX));
        if let Some(other) = self.by_digest.insert(digest, id) {
            return Err(AccessError {
                at: name,
                reason: format!(
                    "the same key is also configured as {}; give each key one entry with all \
                     its scopes",
                    self.keys[other.index()].name
                ),
            });
        }
        self.keys.push(KeyPolicy {
            name,
            scopes,
            origins,
            limits,
        });
        Ok(())
    }

    /// No key of any kind: every endpoint is open (local development).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `scope` needs no key. With no keys at all, nothing does (local development).
    /// Once any key is configured, `read` and `admin` always need one; `ingest` needs one only
    /// when some key has that scope, so a deployment can keep anonymous ingest from pages
    /// (limited per address) while reads and operations are guarded.
    pub fn scope_open(&self, scope: Scope) -> bool {
        self.is_open()
            || (scope == Scope::Ingest && !self.keys.iter().any(|k| k.allows(Scope::Ingest)))
    }

    /// The key `presented` is, if it is one. The lookup is by the presented key's SHA-256, so
    /// its timing says nothing about how close a guess was.
    pub fn lookup(&self, presented: &str) -> Option<KeyId> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_digest.get(&digest).copied()
    }

    pub fn key(&self, id: KeyId) -> &KeyPolicy {
        &self.keys[id.index()]
    }

    pub fn keys(&self) -> impl Iterator<Item = (KeyId, &KeyPolicy)> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| (KeyId(u32::try_from(i).unwrap_or(u32::MAX)), k))
    }
}

/// The digest of a configured key: `sha256:<hex>` is a digest already, anything else a key.
fn digest_of(raw: &str) -> Result<[u8; 32], String> {
    match raw.strip_prefix("sha256:") {
        Some(hex) => parse_digest(hex),
        None if raw.trim().is_empty() => Err("a key must not be empty".into()),
        None => Ok(Sha256::digest(raw.as_bytes()).into()),
    }
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut out)
        .map_err(|_| "a SHA-256 digest is 64 hexadecimal digits".to_owned())?;
    Ok(out)
}

/// An origin as browsers send it: `scheme://host[:port]`, no path; or `*`.
pub fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("{origin:?} is not an origin like https://shop.example"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(format!(
            "{origin:?} is not an origin like https://shop.example (no path, no trailing slash)"
        ));
    }
    Ok(())
}

/// Whether `origin` is in `list` (`*` lists every origin). Origins compare without regard to
/// ASCII case, as browsers serialize scheme and host in lower case.
pub fn origin_listed(list: &[String], origin: &str) -> bool {
    list.iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::config::KeySettings;

    fn key(name: &str, scopes: Vec<Scope>) -> KeySettings {
        KeySettings {
            name: name.into(),
            key: Some(format!("secret-{name}")),
            sha256: None,
            scopes,
            origins: Vec::new(),
            rate_limit_per_second: None,
            rate_limit_burst: None,
            rate_limit_total_per_second: None,
            rate_limit_total_burst: None,
        }
    }

    #[test]
    fn no_keys_is_open() {
        assert!(Access::from_settings(&Settings::default())
            .unwrap()
            .is_open());
    }

    #[test]
    fn each_list_gives_its_scope_and_admin_includes_read() {
        let s = Settings {
            api_keys: vec!["i".into()],
            read_keys: vec!["r".into()],
            admin_key: Some("a".into()),
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        let scopes = |k: &str| {
            let p = access.key(access.lookup(k).unwrap());
            [Scope::Ingest, Scope::Read, Scope::Admin].map(|s| p.allows(s))
        };
        assert_eq!(scopes("i"), [true, false, false]);
        assert_eq!(scopes("r"), [false, true, false]);
        assert_eq!(scopes("a"), [false, true, true]);
        assert!(access.lookup("nope").is_none());
        assert!(!access.is_open());
        assert!(!access.scope_open(Scope::Ingest));
    }

    #[test]
    fn ingest_stays_open_without_ingest_keys_but_reads_never_do() {
        let s = Settings {
            admin_key: Some("a".into()),
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        assert!(access.scope_open(Scope::Ingest));
        assert!(!access.scope_open(Scope::Read));
        assert!(!access.scope_open(Scope::Admin));
        let s = Settings {
            api_keys: vec!["i".into()],
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        assert!(
            !access.scope_open(Scope::Read),
            "an ingest key never opens reads"
        );
        assert!(!access.scope_open(Scope::Admin));
    }

    #[test]
    fn a_key_may_be_configured_by_its_sha256() {
        let hex = hex::encode(Sha256::digest(b"pk-live-1"));
        let mut entry = key("shop", vec![Scope::Ingest]);
        entry.key = None;
        entry.sha256 = Some(hex.to_uppercase());
        let s = Settings {
            api_keys: vec![format!("sha256:{}", hex::encode(Sha256::digest(b"other")))],
            keys: vec![entry],
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        assert_eq!(access.key(access.lookup("pk-live-1").unwrap()).name, "shop");
        assert!(access.lookup("other").is_some());
        assert!(
            access.lookup(&hex).is_none(),
            "the digest itself is not the key"
        );
    }

    #[test]
    fn bad_entries_are_named_without_the_key() {
        let mut both = key("both", vec![Scope::Ingest]);
        both.sha256 = Some("00".repeat(32));
        let cases = [
            (vec![both], "keys[0] (\"both\")"),
            (vec![key("none", vec![])], "scopes"),
            (
                vec![
                    key("dup", vec![Scope::Read]),
                    key("dup", vec![Scope::Ingest]),
                ],
                "also configured",
            ),
        ];
        for (keys, want) in cases {
            let s = Settings {
                keys,
                ..Settings::default()
            };
            let err = Access::from_settings(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("secret-"), "{err}");
        }
        let s = Settings {
            api_keys: vec!["sha256:xyz".into()],
            ..Settings::default()
        };
        let err = Access::from_settings(&s).unwrap_err().to_string();
        assert!(
            err.contains("api_keys[0]") && err.contains("64 hexadecimal"),
            "{err}"
        );
    }

    #[test]
    fn origins() {
        let mut k = key("o", vec![Scope::Ingest]);
        k.origins = vec!["https://Shop.example".into()];
        let s = Settings {
            keys: vec![k],
            ..Settings::default()
        };
        let access = Access::from_settings(&s).unwrap();
        let p = access.key(access.lookup("secret-o").unwrap());
        assert!(p.allows_origin("https://shop.example"));
        assert!(!p.allows_origin("https://evil.example"));
        assert!(check_origin("https://shop.example/").is_err());
        assert!(check_origin("shop.example").is_err());
        assert!(check_origin("http://localhost:5173").is_ok());
    }
}

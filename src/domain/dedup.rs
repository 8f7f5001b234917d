//! Dedup keys, what a claim on one answers, the plan that turns a group's claims into
//! outcomes, and the fingerprint behind derived event ids.

use super::event::{CartEvent, EventId, EventType};
use super::validation::integral;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

mod plan;
pub use plan::{GroupPlan, WrongLength};

/// Prefix of ids derived from a fingerprint, so they are recognisable in stored data.
pub const FINGERPRINT_PREFIX: &str = "fp-";

/// The key an event is deduplicated on: its id (sent, derived or assigned).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey(String);

impl DedupKey {
    /// The key of an event, or `None` when its id was freshly generated and so cannot repeat.
    pub fn of(event: &CartEvent) -> Option<Self> {
        event
            .is_deduplicable()
            .then(|| Self(event.event_id().as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The hasher of maps keyed by dedup keys: foldhash, seeded from the OS's randomness (through
/// `rand`) with a secret per process and another per map.
///
/// Clients choose event ids, so such a map must not be open to keys picked to collide (a
/// HashDoS): its hash is keyed by a random seed, never a fixed or guessable one (foldhash's
/// own default seed comes from addresses and the time, so it is not used). SipHash, std's
/// default, resists an attacker who can observe hashes; foldhash claims less (a random seed
/// defeats precomputed collisions, see its "HashDoS resistance"), and costs a fraction of
/// SipHash on a key of 36 bytes. These maps are never iterated or shown to clients: a group's
/// first event of each key, and the keys of groups in flight, for milliseconds each.
#[derive(Clone, Debug)]
pub struct KeyHasher(foldhash::fast::SeedableRandomState);

impl Default for KeyHasher {
    fn default() -> Self {
        static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
        let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(rand::random()));
        Self(foldhash::fast::SeedableRandomState::with_seed(
            rand::random(),
            shared,
        ))
    }
}

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A map keyed by dedup keys (or their text), hashed with [`KeyHasher`].
pub type KeyMap<K, V> = std::collections::HashMap<K, V, KeyHasher>;

/// A dedup key's 128-bit digest: what a long-lived set of keys holds in place of their text.
///
/// The embedded store remembers every id whose event waits in the journal for its table, and
/// under a sustained overload that backlog reaches millions: as text (the `String`, its heap
/// block, the map's slot) each of 2,000,000 ids took 117 bytes of memory, as a digest 52
/// (BENCHMARKS.md, 2026-12-07 18:41). Two keys with one digest would make a new event look
/// like a duplicate, so the digest is SipHash-2-4 with a 128-bit output and a secret key drawn
/// per process: a keyed function whose outputs an attacker cannot aim at, and whose chance
/// collision among even 10^9 keys is about 10^-21. Digests are never stored or shown; a
/// restart draws a new key and rebuilds what it remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(u64, u64);

impl KeyDigest {
    /// The digest of `key` (a dedup key's text) under this process's secret.
    pub fn of(key: &str) -> Self {
        static SECRET: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
        let (k0, k1) = *SECRET.get_or_init(rand::random);
        Self::keyed(k0, k1, key)
    }

    fn keyed(k0: u64, k1: u64, key: &str) -> Self {
        use siphasher::sip128::{Hasher128, SipHasher24};
        use std::hash::Hasher;
        let mut h = SipHasher24::new_with_keys(k0, k1);
        h.write(key.as_bytes());
        // Two u64s rather than a u128: aligned to 8, a map's slot of a digest and an i64 is
        // 24 bytes, not 32.
        let d = h.finish128();
        Self(d.h1, d.h2)
    }
}

/// The state of a dedup key when a claim asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds the key: it is now held, pending, for the caller.
    New,
    /// An event with this key was confirmed within the dedup window.
    Duplicate,
    /// Another request holds the key and has not yet confirmed or released it. The event may or
    /// may not end up recorded, so neither `accepted` nor `duplicate` is a safe answer yet.
    InFlight,
}

impl From<&EventId> for DedupKey {
    fn from(id: &EventId) -> Self {
        Self(id.as_str().to_owned())
    }
}

impl EventId {
    /// A server-assigned id from 16 random bytes, formatted as a UUID.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        let mut s = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            let _ = write!(s, "{b:02x}");
        }
        Self::parse(&s).unwrap_or_else(|_| unreachable!("hex and dashes are valid id chars"))
    }
}

/// The id derived from an event without `eventId`: a hash over the canonical forms of
/// (`userId`, `sessionId`, `eventType`, `timestamp` to the millisecond, `metadata`).
pub fn fingerprint_id(
    user_id: &str,
    session_id: Option<&str>,
    event_type: EventType,
    timestamp: DateTime<Utc>,
    metadata: &Map<String, Value>,
) -> EventId {
    let mut canonical = String::with_capacity(128);
    // Length-prefixed fields: no choice of field contents can make two tuples collide.
    let mut field = |s: &str| {
        let _ = write!(canonical, "{}:{s};", s.len());
    };
    field(user_id);
    match session_id {
        Some(s) => field(s),
        None => field("\u{0}none"),
    }
    field(event_type.as_str());
    field(&timestamp.to_rfc3339_opts(SecondsFormat::Millis, true));
    let mut meta = String::new();
    canonical_object(metadata, &mut meta);
    field(&meta);

    let digest = Sha256::digest(canonical.as_bytes());
    let mut id = String::with_capacity(FINGERPRINT_PREFIX.len() + 32);
    id.push_str(FINGERPRINT_PREFIX);
    for b in &digest[..16] {
        let _ = write!(id, "{b:02x}");
    }
    EventId::parse(&id).unwrap_or_else(|_| unreachable!("prefix and hex are valid id chars"))
}

/// Compact JSON with keys sorted at every level and integral numbers without a fraction.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    canonical_value(v, &mut out);
    out
}

fn canonical_object(m: &Map<String, Value>, out: &mut String) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_unstable();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        canonical_value(&m[k], out);
    }
    out.push('}');
}

fn canonical_value(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => canonical_object(m, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_value(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => match integral(n) {
            Some(f) if n.is_f64() && f.abs() < 9.007_199_254_740_992e15 => {
                let _ = write!(out, "{}", f as i64);
            }
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_key_digest_is_the_same_for_one_key_and_differs_by_key_and_by_secret() {
        let a = "9b2f6a1e-7c1d-4c53-9a55-1f0f8f0f3a10";
        assert_eq!(KeyDigest::of(a), KeyDigest::of(a));
        assert_ne!(
            KeyDigest::of(a),
            KeyDigest::of("9b2f6a1e-7c1d-4c53-9a55-1f0f8f0f3a11")
        );
        assert_ne!(KeyDigest::of(a), KeyDigest::of(""));
        // Keyed: another secret gives another digest, so no one can aim at one.
        assert_ne!(KeyDigest::keyed(1, 2, a), KeyDigest::keyed(1, 3, a));
        assert_ne!(KeyDigest::keyed(1, 2, a), KeyDigest::keyed(2, 2, a));
        // The whole 128 bits vary, not 64 of them.
        let (x, y) = (KeyDigest::keyed(1, 2, a), KeyDigest::keyed(1, 2, "b"));
        assert!(x.0 != y.0 && x.1 != y.1);
        assert_eq!(std::mem::size_of::<(KeyDigest, i64)>(), 24);
    }

    #[test]
    fn ten_thousand_keys_have_ten_thousand_digests() {
        let digests: std::collections::HashSet<KeyDigest> = (0..10_000)
            .map(|i| KeyDigest::of(&format!("id-{i}")))
            .collect();
        assert_eq!(digests.len(), 10_000);
    }

    fn ts() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 8, 10, 3, 27, 4).unwrap() + chrono::Duration::milliseconds(123)
    }

    #[test]
    fn key_maps_are_seeded_apart() {
        use std::hash::BuildHasher as _;
        let (a, b) = (KeyHasher::default(), KeyHasher::default());
        let key = "9b2f6a1e-7c1d-4c53-9a55-1f0f8f0f3a10";
        assert_eq!(a.hash_one(key), a.hash_one(key));
        // Another map, another seed: equal hashes here would mean a fixed seed (a chance of
        // 2^-64 otherwise).
        assert_ne!(a.hash_one(key), b.hash_one(key));
        let mut map: KeyMap<&str, u8> = KeyMap::default();
        map.insert(key, 1);
        assert_eq!(map.get(key), Some(&1));
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn canonical_form_sorts_keys_and_drops_integral_fractions() {
        let v = json!({"b": 2.0, "a": {"z": [1.0, 1.5], "y": null}});
        assert_eq!(canonical_json(&v), r#"{"a":{"y":null,"z":[1,1.5]},"b":2}"#);
    }

    #[test]
    fn key_order_and_integral_fractions_give_the_same_fingerprint() {
        let a = meta(json!({"productId": "p", "quantity": 2}));
        let b = meta(serde_json::from_str(r#"{"quantity": 2.0, "productId": "p"}"#).unwrap());
        let id_a = fingerprint_id("u", Some("s"), EventType::ItemAdded, ts(), &a);
        let id_b = fingerprint_id("u", Some("s"), EventType::ItemAdded, ts(), &b);
        assert_eq!(id_a, id_b);
        assert!(id_a.as_str().starts_with(FINGERPRINT_PREFIX));
        assert_eq!(id_a.as_str().len(), 35);
    }

    #[test]
    fn absent_and_empty_session_differ() {
        let m = Map::new();
        let a = fingerprint_id("u", None, EventType::CartViewed, ts(), &m);
        let b = fingerprint_id("u", Some(""), EventType::CartViewed, ts(), &m);
        assert_ne!(a, b);
    }

    #[test]
    fn random_ids_are_uuid_shaped() {
        let id = EventId::from_random_bytes([0xab; 16]);
        assert_eq!(id.as_str(), "abababab-abab-abab-abab-abababababab");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|i| json!(i)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_meta() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-zA-Z]{1,5}", arb_json(), 0..5)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn fingerprint_is_stable_and_order_independent(
            user in "[a-z0-9]{1,10}", session in proptest::option::of("[a-z0-9]{1,10}"),
            ms in 0i64..1_000_000_000, m in arb_meta()
        ) {
            let at = ts() + chrono::Duration::milliseconds(ms);
            let a = fingerprint_id(&user, session.as_deref(), EventType::CartViewed, at, &m);
            let b = fingerprint_id(&user, session.as_deref(), EventType::CartViewed, at, &m);
            prop_assert_eq!(&a, &b);
            let reversed: Map<String, Value> = m.clone().into_iter().rev().collect();
            let c = fingerprint_id(&user, session.as_deref(), EventType::CartViewed, at, &reversed);
            prop_assert_eq!(&a, &c);
            prop_assert!(EventId::parse(a.as_str()).is_ok());
        }

        #[test]
        fn any_changed_field_changes_the_fingerprint(
            user in "[a-z0-9]{1,10}", session in "[a-z0-9]{1,10}",
            ms in 0i64..1_000_000_000, m in arb_meta(), which in 0usize..5,
        ) {
            let at = ts() + chrono::Duration::milliseconds(ms);
            let base = fingerprint_id(&user, Some(&session), EventType::CartViewed, at, &m);
            let changed = match which {
                0 => fingerprint_id(&format!("{user}x"), Some(&session), EventType::CartViewed, at, &m),
                1 => fingerprint_id(&user, Some(&format!("{session}x")), EventType::CartViewed, at, &m),
                2 => fingerprint_id(&user, Some(&session), EventType::CartCleared, at, &m),
                3 => fingerprint_id(&user, Some(&session), EventType::CartViewed, at + chrono::Duration::milliseconds(1), &m),
                _ => {
                    let mut m2 = m.clone();
                    m2.insert("__changed".into(), json!(1));
                    fingerprint_id(&user, Some(&session), EventType::CartViewed, at, &m2)
                }
            };
            prop_assert_ne!(base, changed);
        }
    }
}

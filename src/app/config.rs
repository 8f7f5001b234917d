//! Typed settings: defaults, then an optional TOML file (`CARTSTREAM_CONFIG`), then
//! `CARTSTREAM_*` environment variables. A bad value fails startup with a message naming it.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use validator::Validate;

pub use crate::adapters::outbound::clickhouse::BodyCompression;

/// Every setting. Environment variable = `CARTSTREAM_` + the field name in upper case
/// (`max_message_bytes` is `CARTSTREAM_MAX_MESSAGE_BYTES`); the config file uses the field
/// names as TOML keys. Durations are written like `30s`, `5m`, `24h`, `30days`.
#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Directory of the embedded store and local journal.
    pub data_dir: PathBuf,
    /// Redis for dedup; unset: embedded.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster for dedup, instead of `redis_url`. In the environment:
    /// comma-separated `redis://` URLs. Every node is reached with the first one's credentials.
    #[serde(default, deserialize_with = "string_or_list")]
    pub redis_cluster_nodes: Vec<String>,
    /// On a cluster, 0: each event key in its own slot; `n`: event keys in `n` slots only, so
    /// a group's confirm costs at most `n` commands (see docs/backends.md).
    #[validate(range(max = 16384))]
    pub redis_cluster_buckets: u16,
    /// Prefix of every dedup key in Redis.
    #[serde(deserialize_with = "lenient_string")]
    pub redis_key_prefix: String,
    #[validate(range(min = 1, max = 1024))]
    pub redis_pool_size: u32,
    /// How long to wait for a Redis connection before answering `unavailable`.
    #[serde(with = "humantime_serde")]
    pub redis_connect_timeout: Duration,
    /// How long one Redis call may take before answering `unavailable`.
    #[serde(with = "humantime_serde")]
    pub redis_command_timeout: Duration,
    /// ClickHouse HTTP endpoint for storage; unset: embedded.
    pub clickhouse_url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub clickhouse_database: String,
    #[serde(deserialize_with = "lenient_string")]
    pub clickhouse_table: String,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub clickhouse_user: Option<String>,
    #[serde(default, skip_serializing, deserialize_with = "lenient_opt_string")]
    pub clickhouse_password: Option<String>,
    /// How long one ClickHouse request may take.
    #[serde(with = "humantime_serde")]
    pub clickhouse_timeout: Duration,
    /// A cluster in the ClickHouse servers' `remote_servers`: events are sharded over it
    /// (docs/backends.md, "ClickHouse cluster"). Unset: one server, one table.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub clickhouse_cluster: Option<String>,
    /// The HTTP URL of every server that holds a shard's local table, comma-separated: where
    /// the tables are created. Needed with `clickhouse_cluster` unless `clickhouse_manage_tables`
    /// is false.
    #[serde(default, deserialize_with = "string_or_list")]
    pub clickhouse_shard_urls: Vec<String>,
    /// false: an operator creates the ClickHouse database and tables; the service only checks
    /// that they exist and names what is missing.
    pub clickhouse_manage_tables: bool,
    /// How insert bodies are sent and query results asked for: `lz4` (fewer bytes on the
    /// wire), `none` (less CPU on both sides) or `auto` (`none` when every ClickHouse server is
    /// on this machine, else `lz4`).
    pub clickhouse_compression: BodyCompression,

    /// Most bytes of accepted events the local journal holds while ClickHouse is behind or
    /// down; when full, new events are answered `unavailable`.
    #[validate(range(min = 4096))]
    pub journal_max_bytes: u64,
    /// A warning is logged when the data dir's file system has less than this percentage of
    /// its space free (once per crossing; an info line when it is back above).
    #[validate(range(max = 100))]
    pub disk_warn_free_percent: u8,
    /// The forwarder sends one INSERT per this many journal entries at most...
    #[validate(range(min = 1, max = 1_000_000))]
    pub forward_max_rows: usize,
    /// ...or this many bytes...
    #[validate(range(min = 1024))]
    pub forward_max_bytes: usize,
    /// ...or when the oldest entry has waited this long, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub forward_interval: Duration,
    /// Longest wait between retries while ClickHouse fails.
    #[serde(with = "humantime_serde")]
    pub forward_backoff_max: Duration,
    /// Log filter, e.g. `info` or `cartstream=debug`.
    pub log: String,
    pub log_format: LogFormat,

    /// Largest WebSocket message; a larger frame closes the connection with 1009.
    #[validate(range(min = 1024, max = 16_777_216))]
    pub max_message_bytes: usize,
    /// Most events in one `cart_event_batch` or `POST /events/batch`.
    #[validate(range(min = 1, max = 10_000))]
    pub max_batch_events: usize,
    /// Largest `POST /events` body, after decompression.
    #[validate(range(min = 1024, max = 16_777_216))]
    pub max_event_body_bytes: usize,
    /// Largest `POST /events/batch` body, after decompression.
    #[validate(range(min = 1024, max = 268_435_456))]
    pub max_batch_body_bytes: usize,

    /// How long an accepted eventId is remembered.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// While the dedup store (Redis) is down: `fail_open` keeps accepting and recognises
    /// duplicates by reading the event store; `fail_closed` answers `unavailable`.
    pub dedup_outage: crate::app::ingest::DedupOutage,
    /// How long a claimed eventId stays held while its event is being recorded; after a crash,
    /// a retry of that event is accepted once this has passed.
    #[serde(with = "humantime_serde")]
    pub dedup_hold: Duration,
    /// How far ahead of the server's clock a `timestamp` may be.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How far behind the server's clock a `timestamp` may be.
    #[serde(with = "humantime_serde")]
    pub max_past_age: Duration,
    /// Events whose `timestamp` is older than this are deleted from the event store, a little
    /// at a time in the background (docs/backends.md, "Retention"). At least `dedup_window`
    /// and `max_past_age`. Unset: events are kept forever.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,

    /// Interval of server WebSocket pings.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// Unanswered pings after which a connection is closed with 1011.
    #[validate(range(min = 1, max = 100))]
    pub ws_max_missed_pings: u32,
    /// Messages a WebSocket client may have in flight before the server stops reading.
    #[validate(range(min = 1, max = 100_000))]
    pub ws_max_in_flight: usize,
    /// Events each `GET /events/tap` subscriber may lag behind before the oldest are skipped
    /// (and the count of skipped ones sent to it).
    #[validate(range(min = 1, max = 1_000_000))]
    pub tap_buffer: usize,

    /// Events per second per WebSocket connection and per HTTP client address; 0 = no limit.
    pub rate_limit_per_second: u32,
    /// Burst allowed above the rate; 0 = one second's worth.
    pub rate_limit_burst: u32,

    /// Guards the operator API (`/routes`, `/dead-letters`, `/quarantine`) when set.
    #[serde(default, skip_serializing, deserialize_with = "lenient_opt_string")]
    pub admin_key: Option<String>,

    /// Ingest keys (scope `ingest`: send events, never read them; safe to embed in a page).
    /// In the environment: comma-separated. A value `sha256:<64 hex digits>` is the SHA-256 of
    /// a key rather than the key. No keys of any kind: no authentication.
    #[serde(default, deserialize_with = "string_or_list", skip_serializing)]
    pub api_keys: Vec<String>,
    /// Read keys (scope `read`: `GET /events`). Comma-separated; `sha256:` as for `api_keys`.
    #[serde(default, deserialize_with = "string_or_list", skip_serializing)]
    pub read_keys: Vec<String>,
    /// Keys with their own scopes, rate limits and origins (configuration file only).
    #[serde(default, skip_serializing)]
    pub keys: Vec<KeySettings>,
    /// Origins (`https://shop.example`) whose pages may send events from a browser: CORS on
    /// the ingest routes and the WebSocket `Origin` check. Comma-separated; `*` for any.
    /// Unset: no CORS headers, no `Origin` check (unless keys name origins).
    #[serde(default, deserialize_with = "string_or_list")]
    pub cors_origins: Vec<String>,
    /// How long a browser may cache a CORS preflight answer.
    #[serde(with = "humantime_serde")]
    pub cors_max_age: Duration,
    /// Proxies (CIDRs, or single addresses) allowed to name the client in
    /// `X-Forwarded-For` or `Forwarded`. Comma-separated. Unset: the TCP peer is the client.
    #[serde(default, deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Events per second that one key may send in all, across every client address; 0 = no
    /// total (each key can set its own in `[[keys]]`).
    pub rate_limit_key_total_per_second: u32,
    /// Burst of that total; 0 = one second's worth.
    pub rate_limit_key_total_burst: u32,
    /// `global`: the event limits above hold for all instances together, through buckets in
    /// Redis (one round trip per request); `local`: each instance limits on its own. Unset:
    /// `global` when Redis is configured, else `local`.
    #[serde(default)]
    pub rate_limit_scope: Option<RateLimitScope>,
    /// How long a global rate-limit check may wait for Redis before this instance decides
    /// alone (and counts it in `cartstream_rate_limit_fallbacks_total`).
    #[serde(with = "humantime_serde")]
    pub rate_limit_redis_timeout: Duration,
    /// Prefix of the global rate-limit buckets' keys in Redis.
    #[serde(deserialize_with = "lenient_string")]
    pub rate_limit_key_prefix: String,
    /// `GET /events` requests per second per client (key and address); 0 = no limit. On by
    /// default: a read costs far more than a send, and a page of a listing is up to 4 MiB.
    pub read_rate_limit_per_second: u32,
    /// Burst of reads; 0 = one second's worth.
    pub read_rate_limit_burst: u32,
    /// Failed authentications one client address may make per minute before every request
    /// from it is answered 429 for a while; 0 = no limit.
    pub auth_failures_per_minute: u32,

    /// Most bytes of events one `GET /events` page holds (as serialized); a page always holds
    /// at least one event. The rest follows with the page's `nextCursor`.
    #[validate(range(min = 1024, max = 268_435_456))]
    pub read_max_page_bytes: usize,
    /// `GET /events` requests served at once; more wait for a turn.
    #[validate(range(min = 1, max = 1024))]
    pub read_max_concurrency: usize,
    /// How long a `GET /events` request may wait for a turn before it is answered
    /// `503 unavailable` with `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub read_queue_timeout: Duration,

    /// Routes: where accepted events are delivered (configuration file only).
    #[serde(default, skip_serializing)]
    pub routes: Vec<RouteSettings>,

    /// Most events the committer groups into one claim + one store call.
    #[validate(range(min = 1, max = 1_000_000))]
    pub ingest_max_batch: usize,
    /// How long shutdown may take to answer what was received and flush.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long startup waits for the integrity check of the data dir's files; past it the
    /// server starts and the check finishes in the background.
    #[serde(with = "humantime_serde")]
    pub integrity_check_timeout: Duration,

    /// The whole request head must arrive within this, counted from the connection's accept
    /// (first request) or the head's first byte (later requests); bytes do not extend it.
    #[serde(with = "humantime_serde")]
    pub http_head_timeout: Duration,
    /// A request body that sends no byte for this long is cut.
    #[serde(with = "humantime_serde")]
    pub http_body_idle_timeout: Duration,
    /// Bytes per second a body must average after `http_body_idle_timeout` (every this many
    /// bytes buy one more second); 0 = no minimum.
    pub http_body_min_rate: u64,
    /// Idle time between the end of a response and the next request on a connection.
    #[serde(with = "humantime_serde")]
    pub http_keep_alive_timeout: Duration,
    /// A WebSocket upgrade request must be answered within this of its head's start.
    #[serde(with = "humantime_serde")]
    pub ws_handshake_timeout: Duration,
    /// Open connections in all (HTTP and WebSocket); beyond it new ones get 503 and close.
    #[validate(range(min = 1))]
    pub max_connections: usize,
    /// Open connections per client address (the TCP peer; trusted proxies are exempt);
    /// 0 = no cap.
    pub max_connections_per_address: usize,
    /// Threads that run the server's tasks (tokio's workers); unset, one per core (or
    /// `TOKIO_WORKER_THREADS`). Journal and SQLite work runs on other threads either way.
    /// On a small machine whose cores Redis, ClickHouse or other services share, fewer can
    /// be faster (docs/deploy.md, "Worker threads").
    #[validate(range(min = 1, max = 1024))]
    pub worker_threads: Option<usize>,
}

/// One route of the configuration file:
///
/// ```toml
/// [[routes]]
/// name = "checkout-webhook"
/// event_types = ["checkout_started", "checkout_completed"]   # omit (or "*") for all
/// [routes.target]
/// kind = "webhook"
/// url = "https://example.com/hooks/cart"
/// secret = "…"
/// ```
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    pub name: String,
    /// Event types the route takes; empty or `["*"]` for all.
    #[serde(default)]
    pub event_types: Vec<String>,
    pub target: crate::adapters::outbound::targets::TargetConfig,
    /// Most events per delivery.
    #[serde(default = "defaults::batch_size")]
    #[validate(range(min = 1, max = 10_000))]
    pub batch_size: usize,
    /// Failed attempts after which a delivery is dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    #[validate(range(min = 1, max = 1_000))]
    pub max_attempts: u32,
    #[serde(default = "defaults::backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(default = "defaults::backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Ordered lanes delivered in parallel (one user's events always share a lane).
    #[serde(default = "defaults::concurrency")]
    #[validate(range(min = 1, max = 64))]
    pub concurrency: u32,
}

/// One key of the configuration file, with its scopes and, optionally, its own limits and
/// origins:
///
/// ```toml
/// [[keys]]
/// name = "shop-frontend"          # names the key in logs and errors; the key never appears
/// sha256 = "9f86d08…"             # or key = "pk_…"; sha256 keeps the secret out of the file
/// scopes = ["ingest"]             # ingest, read, admin (admin includes read)
/// origins = ["https://shop.example"]
/// rate_limit_per_second = 50      # per client address
/// rate_limit_burst = 500
/// rate_limit_total_per_second = 5000   # the key in all
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub name: String,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub key: Option<String>,
    /// Lowercase or uppercase hex of the key's SHA-256.
    #[serde(default)]
    pub sha256: Option<String>,
    pub scopes: Vec<crate::app::access::Scope>,
    /// Browser origins this key may be used from; empty: any (within `cors_origins`).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Overrides `rate_limit_per_second` / `rate_limit_burst` for this key.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    #[serde(default)]
    pub rate_limit_burst: Option<u32>,
    /// Overrides `rate_limit_key_total_per_second` / `…_burst` for this key.
    #[serde(default)]
    pub rate_limit_total_per_second: Option<u32>,
    #[serde(default)]
    pub rate_limit_total_burst: Option<u32>,
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySettings")
            .field("name", &self.name)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("sha256", &self.sha256.as_ref().map(|_| "<redacted>"))
            .field("scopes", &self.scopes)
            .field("origins", &self.origins)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field(
                "rate_limit_total_per_second",
                &self.rate_limit_total_per_second,
            )
            .field("rate_limit_total_burst", &self.rate_limit_total_burst)
            .finish()
    }
}

mod defaults {
    use std::time::Duration;
    pub fn batch_size() -> usize {
        100
    }
    pub fn max_attempts() -> u32 {
        10
    }
    pub fn backoff_min() -> Duration {
        Duration::from_secs(1)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn concurrency() -> u32 {
        4
    }
}

/// Where the event rate limits are kept: see `Settings::rate_limit_scope`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    Global,
    Local,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3001)),
            data_dir: PathBuf::from("./data"),
            redis_url: None,
            redis_cluster_nodes: Vec::new(),
            redis_cluster_buckets: 0,
            redis_key_prefix: "cartstream:dedup:".into(),
            redis_pool_size: 8,
            redis_connect_timeout: Duration::from_secs(2),
            redis_command_timeout: Duration::from_secs(2),
            clickhouse_url: None,
            clickhouse_database: "default".into(),
            clickhouse_table: "cart_events".into(),
            clickhouse_user: None,
            clickhouse_password: None,
            clickhouse_timeout: Duration::from_secs(10),
            clickhouse_cluster: None,
            clickhouse_shard_urls: Vec::new(),
            clickhouse_manage_tables: true,
            clickhouse_compression: BodyCompression::Auto,
            journal_max_bytes: 1 << 30,
            disk_warn_free_percent: 10,
            // A drain holds one batch in memory (about 0.5 KB an event, read and encoded):
            // 20,000 keeps that near 10 MB. At 50,000 each large drain lifted RSS for good
            // (the allocator keeps the peak; RELIABILITY.md, soak of 2026-12-06).
            forward_max_rows: 20_000,
            forward_max_bytes: 16 << 20,
            forward_interval: Duration::from_secs(1),
            forward_backoff_max: Duration::from_secs(30),
            log: "info".into(),
            log_format: LogFormat::Text,
            max_message_bytes: 65_536,
            max_batch_events: 500,
            max_event_body_bytes: 65_536,
            max_batch_body_bytes: 1_048_576,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_outage: crate::app::ingest::DedupOutage::FailOpen,
            dedup_hold: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(5 * 60),
            max_past_age: Duration::from_secs(30 * 24 * 3600),
            retention: None,
            ws_ping_interval: Duration::from_secs(30),
            ws_max_missed_pings: 2,
            ws_max_in_flight: 1024,
            tap_buffer: 8192,
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            api_keys: Vec::new(),
            read_keys: Vec::new(),
            keys: Vec::new(),
            cors_origins: Vec::new(),
            cors_max_age: Duration::from_secs(600),
            trusted_proxies: Vec::new(),
            rate_limit_key_total_per_second: 0,
            rate_limit_key_total_burst: 0,
            rate_limit_scope: None,
            rate_limit_redis_timeout: Duration::from_millis(50),
            rate_limit_key_prefix: "cartstream:rl:".into(),
            read_rate_limit_per_second: 10,
            read_rate_limit_burst: 20,
            auth_failures_per_minute: 60,
            read_max_page_bytes: 4 << 20,
            read_max_concurrency: 4,
            read_queue_timeout: Duration::from_secs(2),
            admin_key: None,
            routes: Vec::new(),
            ingest_max_batch: 4096,
            shutdown_timeout: Duration::from_secs(30),
            integrity_check_timeout: Duration::from_secs(5),
            http_head_timeout: Duration::from_secs(10),
            http_body_idle_timeout: Duration::from_secs(30),
            http_body_min_rate: 500,
            http_keep_alive_timeout: Duration::from_secs(60),
            ws_handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_address: 256,
            worker_threads: None,
        }
    }
}

/// A string setting that the environment may have spelled like a number (`CARTSTREAM_X=1234`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Lenient {
    fn into_string(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Lenient::deserialize(d).map(Lenient::into_string)
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Lenient>::deserialize(d)?.map(Lenient::into_string))
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        Raw::Many(v) => v,
    })
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Environment variables that are settings (others with the prefix are ignored, so that
/// `CARTSTREAM_CONFIG` and test-only variables do not count as unknown settings).
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "redis_url",
    "redis_cluster_nodes",
    "redis_cluster_buckets",
    "redis_key_prefix",
    "redis_pool_size",
    "redis_connect_timeout",
    "redis_command_timeout",
    "clickhouse_url",
    "clickhouse_database",
    "clickhouse_table",
    "clickhouse_user",
    "clickhouse_password",
    "clickhouse_timeout",
    "clickhouse_cluster",
    "clickhouse_shard_urls",
    "clickhouse_manage_tables",
    "clickhouse_compression",
    "journal_max_bytes",
    "disk_warn_free_percent",
    "forward_max_rows",
    "forward_max_bytes",
    "forward_interval",
    "forward_backoff_max",
    "log",
    "log_format",
    "max_message_bytes",
    "max_batch_events",
    "max_event_body_bytes",
    "max_batch_body_bytes",
    "dedup_window",
    "dedup_hold",
    "dedup_outage",
    "max_future_skew",
    "max_past_age",
    "retention",
    "ws_ping_interval",
    "ws_max_missed_pings",
    "ws_max_in_flight",
    "tap_buffer",
    "rate_limit_per_second",
    "rate_limit_burst",
    "api_keys",
    "read_keys",
    "cors_origins",
    "cors_max_age",
    "trusted_proxies",
    "rate_limit_key_total_per_second",
    "rate_limit_key_total_burst",
    "rate_limit_scope",
    "rate_limit_redis_timeout",
    "rate_limit_key_prefix",
    "read_rate_limit_per_second",
    "read_rate_limit_burst",
    "auth_failures_per_minute",
    "read_max_page_bytes",
    "read_max_concurrency",
    "read_queue_timeout",
    "admin_key",
    "ingest_max_batch",
    "shutdown_timeout",
    "integrity_check_timeout",
    "http_head_timeout",
    "http_body_idle_timeout",
    "http_body_min_rate",
    "http_keep_alive_timeout",
    "ws_handshake_timeout",
    "max_connections",
    "max_connections_per_address",
    "worker_threads",
];

impl Settings {
    /// Loads defaults, then the file named by `CARTSTREAM_CONFIG` (if set), then the
    /// environment.
    ///
    /// # Errors
    /// When the file is missing or malformed, or any value has the wrong type or range; the
    /// message names the setting.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(
            std::env::var("CARTSTREAM_CONFIG").ok(),
            Env::prefixed("CARTSTREAM_"),
        )
    }

    fn load_from(file: Option<String>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !std::path::Path::new(&path).is_file() {
                return Err(ConfigError::File {
                    path,
                    reason: "not found (CARTSTREAM_CONFIG names it)".into(),
                });
            }
            figment = figment.merge(Toml::file_exact(&path));
        }
        // Env values are parsed leniently by figment ("3001" becomes a number), except for the
        // string-typed settings, which must stay strings even when they look like numbers.
        let env = env.only(ENV_KEYS).map(|k| k.as_str().to_lowercase().into());
        let settings: Settings = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Err(errors) = self.validate() {
            return Err(ConfigError::Invalid(describe_errors(&errors, |field| {
                format!("{field} (CARTSTREAM_{})", field.to_uppercase())
            })));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Err(errors) = route.validate() {
                return Err(ConfigError::Invalid(describe_errors(&errors, |field| {
                    format!("routes[{i}].{field}")
                })));
            }
        }
        let positive = [
            ("dedup_window", self.dedup_window),
            ("dedup_hold", self.dedup_hold),
            ("ws_ping_interval", self.ws_ping_interval),
            ("redis_connect_timeout", self.redis_connect_timeout),
            ("redis_command_timeout", self.redis_command_timeout),
            ("rate_limit_redis_timeout", self.rate_limit_redis_timeout),
            ("clickhouse_timeout", self.clickhouse_timeout),
            ("forward_backoff_max", self.forward_backoff_max),
            ("http_head_timeout", self.http_head_timeout),
            ("http_body_idle_timeout", self.http_body_idle_timeout),
            ("http_keep_alive_timeout", self.http_keep_alive_timeout),
            ("ws_handshake_timeout", self.ws_handshake_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{name} (CARTSTREAM_{}): must be longer than zero",
                    name.to_uppercase()
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            crate::domain::routing::RouteName::parse(&route.name)
                .map_err(|e| ConfigError::Invalid(format!("{at}.name: {e}")))?;
            if !names.insert(route.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "{at}.name: route {:?} is defined twice",
                    route.name
                )));
            }
            crate::domain::routing::RouteMatch::parse(&route.event_types)
                .map_err(|e| ConfigError::Invalid(format!("{at}.event_types: {e}")))?;
            if route.backoff_min.is_zero() || route.backoff_max < route.backoff_min {
                return Err(ConfigError::Invalid(format!(
                    "{at}: backoff_min must be above zero and at most backoff_max"
                )));
            }
        }
        self.check_redis_cluster()?;
        self.check_retention()?;
        for (name, url) in [
            ("redis_url", &self.redis_url),
            ("clickhouse_url", &self.clickhouse_url),
        ] {
            if let Some(u) = url {
                let scheme_ok = match name {
                    "redis_url" => u.starts_with("redis://") || u.starts_with("rediss://"),
                    _ => u.starts_with("http://") || u.starts_with("https://"),
                };
                if !scheme_ok {
                    return Err(ConfigError::Invalid(format!(
                        "{name} (CARTSTREAM_{}): unsupported URL scheme",
                        name.to_uppercase()
                    )));
                }
            }
        }
        self.check_clickhouse_cluster()
    }

    /// A cluster needs the URL it is reached through, and each shard's URL unless an operator
    /// manages the tables.
    fn check_clickhouse_cluster(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        for url in &self.clickhouse_shard_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("clickhouse_shard_urls (CARTSTREAM_CLICKHOUSE_SHARD_URLS): each must be an http:// or https:// URL");
            }
        }
        match &self.clickhouse_cluster {
            None if !self.clickhouse_shard_urls.is_empty() => bad(
                "clickhouse_shard_urls (CARTSTREAM_CLICKHOUSE_SHARD_URLS): only used with \
                 CARTSTREAM_CLICKHOUSE_CLUSTER, which is not set",
            ),
            None => Ok(()),
            Some(_) if self.clickhouse_url.is_none() => bad(
                "clickhouse_cluster (CARTSTREAM_CLICKHOUSE_CLUSTER): needs CARTSTREAM_CLICKHOUSE_URL, \
                 the server (one of the shards, or any with the cluster's config) that inserts and \
                 reads go through",
            ),
            Some(_) if self.clickhouse_shard_urls.is_empty() && self.clickhouse_manage_tables => {
                bad(
                    "clickhouse_cluster (CARTSTREAM_CLICKHOUSE_CLUSTER): needs \
                     CARTSTREAM_CLICKHOUSE_SHARD_URLS (the HTTP URL of every server with a local \
                     table, comma-separated) to create the tables, or \
                     CARTSTREAM_CLICKHOUSE_MANAGE_TABLES=false when an operator creates them",
                )
            }
            Some(name) if name.trim().is_empty() => {
                bad("clickhouse_cluster (CARTSTREAM_CLICKHOUSE_CLUSTER): is empty")
            }
            Some(_) => Ok(()),
        }
    }

    /// Retention never deletes an event that dedup still answers for, nor one that ingest
    /// would still accept: it is at least the dedup window and the accepted past age.
    fn check_retention(&self) -> Result<(), ConfigError> {
        let Some(retention) = self.retention else {
            return Ok(());
        };
        let show = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        for (name, bound) in [
            ("dedup_window", self.dedup_window),
            ("max_past_age", self.max_past_age),
        ] {
            if retention < bound {
                return Err(ConfigError::Invalid(format!(
                    "retention (CARTSTREAM_RETENTION): {} is shorter than {name} \
                     (CARTSTREAM_{}, {}); events would be deleted while {}; set it to at \
                     least {}",
                    show(retention),
                    name.to_uppercase(),
                    show(bound),
                    if name == "dedup_window" {
                        "a repeat of them must still be answered duplicate"
                    } else {
                        "events that old are still accepted"
                    },
                    show(bound),
                )));
            }
        }
        Ok(())
    }

    /// A cluster's seeds are `redis://` URLs, and a cluster and a single Redis are not both
    /// named: which one holds the dedup state must not depend on a precedence rule.
    fn check_redis_cluster(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_some() && !self.redis_cluster_nodes.is_empty() {
            return Err(ConfigError::Invalid(
                "redis_url (CARTSTREAM_REDIS_URL) and redis_cluster_nodes \
                 (CARTSTREAM_REDIS_CLUSTER_NODES) are both set: set the first for a single \
                 Redis, the second for a Redis Cluster"
                    .into(),
            ));
        }
        if self
            .redis_cluster_nodes
            .iter()
            .any(|u| !u.starts_with("redis://"))
        {
            return Err(ConfigError::Invalid(
                "redis_cluster_nodes (CARTSTREAM_REDIS_CLUSTER_NODES): every seed must be a \
                 redis:// URL"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Validation bounds for events.
    pub fn validation_policy(&self) -> crate::domain::ValidationPolicy {
        let d = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        crate::domain::ValidationPolicy {
            max_future: d(self.max_future_skew),
            max_past: d(self.max_past_age),
        }
    }
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let env = if key.is_empty() {
                String::new()
            } else {
                format!(" (CARTSTREAM_{})", key.to_uppercase())
            };
            format!("{key}{env}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_errors(errors: &validator::ValidationErrors, name: impl Fn(&str) -> String) -> String {
    let mut parts: Vec<String> = errors
        .field_errors()
        .into_iter()
        .map(|(field, errs)| {
            let detail = errs
                .iter()
                .map(describe_validation)
                .collect::<Vec<_>>()
                .join(", ");
            format!("{}: {detail}", name(&field))
        })
        .collect();
    parts.sort();
    parts.join("; ")
}

fn describe_validation(e: &validator::ValidationError) -> String {
    let p = |k: &str| e.params.get(k).map(|v| v.to_string());
    match (e.code.as_ref(), p("min"), p("max"), p("value")) {
        ("range", Some(min), Some(max), Some(v)) => {
            format!("{v} is out of range, must be between {min} and {max}")
        }
        (code, ..) => code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_protocol() {
        let s = Settings::default();
        assert_eq!(s.listen.to_string(), "0.0.0.0:3001");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.max_message_bytes, 65_536);
        assert_eq!(s.max_batch_events, 500);
        assert_eq!(s.dedup_window, Duration::from_secs(86_400));
        assert!(s.check().is_ok());
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let s = run(
            &[
                ("CARTSTREAM_LISTEN", "127.0.0.1:4000"),
                ("CARTSTREAM_DEDUP_WINDOW", "2h"),
            ],
            Some("listen = \"127.0.0.1:5000\"\ndata_dir = \"/tmp/x\"\napi_keys = [\"k1\"]"),
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.dedup_window, Duration::from_secs(7200));
        assert_eq!(s.api_keys, ["k1"]);
    }

    #[test]
    fn timeouts_and_connection_caps_from_env_and_file() {
        let s = run(
            &[
                ("CARTSTREAM_HTTP_HEAD_TIMEOUT", "4s"),
                ("CARTSTREAM_MAX_CONNECTIONS_PER_ADDRESS", "0"),
            ],
            Some(
                "http_body_idle_timeout = \"5s\"\nhttp_body_min_rate = 0\n\
                 http_keep_alive_timeout = \"2m\"\nws_handshake_timeout = \"3s\"\n\
                 max_connections = 50\n",
            ),
        )
        .unwrap();
        assert_eq!(s.http_head_timeout, Duration::from_secs(4));
        assert_eq!(s.http_body_idle_timeout, Duration::from_secs(5));
        assert_eq!(s.http_body_min_rate, 0);
        assert_eq!(s.http_keep_alive_timeout, Duration::from_secs(120));
        assert_eq!(s.ws_handshake_timeout, Duration::from_secs(3));
        assert_eq!(s.max_connections, 50);
        assert_eq!(s.max_connections_per_address, 0);
        let zero = run(&[("CARTSTREAM_HTTP_HEAD_TIMEOUT", "0s")], None).unwrap_err();
        assert!(
            zero.to_string().contains("CARTSTREAM_HTTP_HEAD_TIMEOUT"),
            "{zero}"
        );
        let none = run(&[("CARTSTREAM_MAX_CONNECTIONS", "0")], None).unwrap_err();
        assert!(
            none.to_string().contains("CARTSTREAM_MAX_CONNECTIONS"),
            "{none}"
        );
    }

    #[test]
    fn worker_threads_are_one_per_core_unless_set_and_at_least_one() {
        assert_eq!(Settings::default().worker_threads, None);
        let s = run(&[("CARTSTREAM_WORKER_THREADS", "1")], None).unwrap();
        assert_eq!(s.worker_threads, Some(1));
        let s = run(&[], Some("worker_threads = 3")).unwrap();
        assert_eq!(s.worker_threads, Some(3));
        let zero = run(&[("CARTSTREAM_WORKER_THREADS", "0")], None).unwrap_err();
        assert!(
            zero.to_string().contains("CARTSTREAM_WORKER_THREADS"),
            "{zero}"
        );
    }

    #[test]
    fn clickhouse_compression_is_auto_unless_set() {
        assert_eq!(
            Settings::default().clickhouse_compression,
            BodyCompression::Auto
        );
        let s = run(&[("CARTSTREAM_CLICKHOUSE_COMPRESSION", "auto")], None).unwrap();
        assert_eq!(s.clickhouse_compression, BodyCompression::Auto);
        let s = run(&[("CARTSTREAM_CLICKHOUSE_COMPRESSION", "none")], None).unwrap();
        assert_eq!(s.clickhouse_compression, BodyCompression::None);
        let s = run(&[], Some("clickhouse_compression = \"lz4\"")).unwrap();
        assert_eq!(s.clickhouse_compression, BodyCompression::Lz4);
        let bad = run(&[("CARTSTREAM_CLICKHOUSE_COMPRESSION", "zstd")], None).unwrap_err();
        assert!(bad.to_string().contains("clickhouse_compression"), "{bad}");
    }

    #[test]
    fn api_keys_from_env_are_comma_separated() {
        let s = run(&[("CARTSTREAM_API_KEYS", "a, b,,c")], None).unwrap();
        assert_eq!(s.api_keys, ["a", "b", "c"]);
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seeds_and_never_beside_a_single_redis() {
        let seeds = "redis://127.0.0.1:7101, redis://127.0.0.1:7102";
        let s = run(
            &[
                ("CARTSTREAM_REDIS_CLUSTER_NODES", seeds),
                ("CARTSTREAM_REDIS_CLUSTER_BUCKETS", "64"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(s.redis_cluster_buckets, 64);
        assert_eq!(
            s.redis_cluster_nodes,
            ["redis://127.0.0.1:7101", "redis://127.0.0.1:7102"]
        );
        let both = run(
            &[
                ("CARTSTREAM_REDIS_CLUSTER_NODES", seeds),
                ("CARTSTREAM_REDIS_URL", "redis://127.0.0.1:6379"),
            ],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("CARTSTREAM_REDIS_URL")
                && both.contains("CARTSTREAM_REDIS_CLUSTER_NODES"),
            "{both}"
        );
        let scheme = run(&[("CARTSTREAM_REDIS_CLUSTER_NODES", "http://h:1")], None).unwrap_err();
        assert!(scheme.to_string().contains("redis://"), "{scheme}");
    }

    #[test]
    fn keys_origins_and_proxies_from_env_and_file() {
        let s = run(
            &[
                ("CARTSTREAM_READ_KEYS", "r1,r2"),
                (
                    "CARTSTREAM_CORS_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("CARTSTREAM_TRUSTED_PROXIES", "10.0.0.0/8"),
                ("CARTSTREAM_READ_RATE_LIMIT_PER_SECOND", "5"),
            ],
            Some(
                "[[keys]]\nname = \"shop\"\nsha256 = \"ab\"\nscopes = [\"ingest\", \"read\"]\n\
                 origins = [\"https://a.example\"]\nrate_limit_per_second = 50\n",
            ),
        )
        .unwrap();
        assert_eq!(s.read_keys, ["r1", "r2"]);
        assert_eq!(s.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(s.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(s.read_rate_limit_per_second, 5);
        let k = &s.keys[0];
        assert_eq!(k.name, "shop");
        assert_eq!(
            k.scopes,
            [
                crate::app::access::Scope::Ingest,
                crate::app::access::Scope::Read
            ]
        );
        assert_eq!(k.rate_limit_per_second, Some(50));
        let err = run(
            &[],
            Some("[[keys]]\nname = \"x\"\nkey = \"k\"\nscopes = [\"write\"]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("keys") && err.contains("write"), "{err}");
    }

    #[test]
    fn the_debug_form_of_a_key_hides_it() {
        let k = KeySettings {
            name: "n".into(),
            key: Some("sekrit".into()),
            sha256: Some("abc123".into()),
            scopes: vec![crate::app::access::Scope::Ingest],
            origins: vec![],
            rate_limit_per_second: None,
            rate_limit_burst: None,
            rate_limit_total_per_second: None,
            rate_limit_total_burst: None,
        };
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("sekrit") && !shown.contains("abc123"),
            "{shown}"
        );
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        let err = run(&[("CARTSTREAM_LISTEN", "nope")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CARTSTREAM_LISTEN"), "{err}");
        let err = run(&[("CARTSTREAM_MAX_MESSAGE_BYTES", "10")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CARTSTREAM_MAX_MESSAGE_BYTES"), "{err}");
        let err = run(&[("CARTSTREAM_DEDUP_WINDOW", "soon")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CARTSTREAM_DEDUP_WINDOW"), "{err}");
        let err = run(&[("CARTSTREAM_REDIS_URL", "http://x")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CARTSTREAM_REDIS_URL"), "{err}");
        let err = run(&[], Some("lisen = \"x\"")).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn read_bounds_from_env_with_defaults_and_ranges() {
        let d = Settings::default();
        assert_eq!(
            (
                d.read_max_page_bytes,
                d.read_max_concurrency,
                d.read_queue_timeout
            ),
            (4 << 20, 4, Duration::from_secs(2))
        );
        let s = run(
            &[
                ("CARTSTREAM_READ_MAX_PAGE_BYTES", "65536"),
                ("CARTSTREAM_READ_MAX_CONCURRENCY", "2"),
                ("CARTSTREAM_READ_QUEUE_TIMEOUT", "500ms"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(s.read_max_page_bytes, 65536);
        assert_eq!(s.read_max_concurrency, 2);
        assert_eq!(s.read_queue_timeout, Duration::from_millis(500));
        let err = run(&[("CARTSTREAM_READ_MAX_CONCURRENCY", "0")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CARTSTREAM_READ_MAX_CONCURRENCY"), "{err}");
    }

    #[test]
    fn a_clickhouse_cluster_needs_its_urls_or_operator_managed_tables() {
        let ch = ("CARTSTREAM_CLICKHOUSE_URL", "http://127.0.0.1:8201");
        let cluster = ("CARTSTREAM_CLICKHOUSE_CLUSTER", "cartstream_shards");
        let shards = (
            "CARTSTREAM_CLICKHOUSE_SHARD_URLS",
            "http://127.0.0.1:8201, http://127.0.0.1:8202",
        );
        let s = run(&[ch, cluster, shards], None).unwrap();
        assert_eq!(s.clickhouse_cluster.as_deref(), Some("cartstream_shards"));
        assert_eq!(
            s.clickhouse_shard_urls,
            ["http://127.0.0.1:8201", "http://127.0.0.1:8202"]
        );
        assert!(s.clickhouse_manage_tables);
        let managed = ("CARTSTREAM_CLICKHOUSE_MANAGE_TABLES", "false");
        let s = run(&[ch, cluster, managed], None).unwrap();
        assert!(!s.clickhouse_manage_tables && s.clickhouse_shard_urls.is_empty());

        let err = run(&[ch, cluster], None).unwrap_err().to_string();
        assert!(
            err.contains("CARTSTREAM_CLICKHOUSE_CLUSTER")
                && err.contains("CARTSTREAM_CLICKHOUSE_SHARD_URLS")
                && err.contains("CARTSTREAM_CLICKHOUSE_MANAGE_TABLES=false"),
            "{err}"
        );
        let err = run(&[cluster, shards], None).unwrap_err().to_string();
        assert!(err.contains("CARTSTREAM_CLICKHOUSE_URL"), "{err}");
        let err = run(&[ch, shards], None).unwrap_err().to_string();
        assert!(err.contains("CARTSTREAM_CLICKHOUSE_SHARD_URLS"), "{err}");
        let ftp = ("CARTSTREAM_CLICKHOUSE_SHARD_URLS", "ftp://h");
        let err = run(&[ch, cluster, ftp], None).unwrap_err().to_string();
        assert!(err.contains("CARTSTREAM_CLICKHOUSE_SHARD_URLS"), "{err}");
    }

    #[test]
    fn retention_is_off_by_default_and_never_shorter_than_the_dedup_window_or_past_age() {
        assert_eq!(run(&[], None).unwrap().retention, None);
        let s = run(&[("CARTSTREAM_RETENTION", "90days")], None).unwrap();
        assert_eq!(s.retention, Some(Duration::from_secs(90 * 86_400)));
        let s = run(&[("CARTSTREAM_RETENTION", "30days")], None).unwrap();
        assert_eq!(
            s.retention,
            Some(s.max_past_age),
            "equal to the bounds is allowed"
        );

        let err = run(&[("CARTSTREAM_RETENTION", "7days")], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CARTSTREAM_RETENTION")
                && err.contains("CARTSTREAM_MAX_PAST_AGE")
                && err.contains("30days"),
            "{err}"
        );
        let short_past = ("CARTSTREAM_MAX_PAST_AGE", "1h");
        let err = run(&[("CARTSTREAM_RETENTION", "12h"), short_past], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CARTSTREAM_RETENTION")
                && err.contains("CARTSTREAM_DEDUP_WINDOW")
                && err.contains("1day"),
            "{err}"
        );
        let file = "retention = \"2days\"\ndedup_window = \"1h\"\nmax_past_age = \"2days\"\n";
        let s = run(&[], Some(file)).unwrap();
        assert_eq!(s.retention, Some(Duration::from_secs(2 * 86_400)));
    }

    #[test]
    fn string_settings_may_look_like_numbers() {
        let s = run(&[("CARTSTREAM_CLICKHOUSE_PASSWORD", "1234")], None).unwrap();
        assert_eq!(s.clickhouse_password.as_deref(), Some("1234"));
    }

    #[test]
    fn unrelated_prefixed_variables_are_ignored() {
        assert!(run(
            &[
                ("CARTSTREAM_TEST_SOMETHING", "1"),
                ("CARTSTREAM_CONFIG", "x")
            ],
            None
        )
        .is_ok());
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = Settings::load_from(Some("/nonexistent/c.toml".into()), Env::prefixed("X_"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/c.toml"), "{err}");
    }

    // figment::Jail fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn run(vars: &[(&str, &str)], file: Option<&str>) -> Result<Settings, ConfigError> {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let path = file.map(|contents| {
                jail.create_file("cartstream.toml", contents).unwrap();
                jail.directory()
                    .join("cartstream.toml")
                    .display()
                    .to_string()
            });
            out = Some(Settings::load_from(path, Env::prefixed("CARTSTREAM_")));
            Ok(())
        });
        out.unwrap()
    }
}

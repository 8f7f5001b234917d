//! Events in ClickHouse, over its HTTP interface.
//!
//! The schema has to work on every server version the project supports, down to 18.16: no
//! `DateTime64` (so each instant is a `DateTime` for humans and partitioning plus an `Int64` of
//! Unix milliseconds that holds the precise value), no `LowCardinality` (experimental there), no
//! `TTL`, no server-side query parameters and no `RowBinaryWithNamesAndTypes` (so the client
//! runs with validation off and binds parameters client-side, escaped). The client's default
//! LZ4 compression works on 18.16 as on current servers (the tests run with it).
//!
//! Retries of a batch insert may repeat rows, and the store is the dedup's last line, so one
//! event can have several copies, not always equal (a retry without `timestamp` has another
//! `occurred_at`). The tables and how reads find each event once, the newest copy received,
//! are in [`layout`] and `reads`; a table created before that layout is detected and read as
//! before (with `FINAL`) until `cartstream migrate-clickhouse` (see `migrate`) replaces it.
//!
//! Credentials go in [`ClickHouseConfig::user`] and [`ClickHouseConfig::password`] (sent as
//! `X-ClickHouse-User`/`X-ClickHouse-Key` headers, which 18.16 understands), not in the URL.

pub mod cluster;
pub mod layout;
mod migrate;
mod reads;
mod refusal;
mod retention;

pub use cluster::{
    create_distributed_table_sql, create_local_table_sql, local_table, ClusterConfig,
};
pub use layout::create_legacy_table_sql;
pub use migrate::Migration;

use super::listing_sql::{page_clause, Arg, CLICKHOUSE};
use super::redact::{redact_url, scrub};
use crate::domain::{DedupKey, StoredEvent, StoredFields};
use crate::ports::{
    EventPage, EventQuery, EventStore, PageBuilder, PortError, Refusal, RefusalCause,
};
use chrono::{DateTime, TimeZone, Utc};
use clickhouse::{Client, Compression};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The table's default name.
pub const DEFAULT_TABLE: &str = "cart_events";

/// The `CREATE TABLE` statement of the main table `database.table`, exactly as
/// [`ClickHouseStore`] runs it on one server (it then creates the index tables and their views:
/// [`layout::create_layout_sql`]).
///
/// `occurred_at`/`received_at` are whole seconds for human queries; `occurred_at_ms`/
/// `received_at_ms` are the precise Unix milliseconds the service reads back. `session_id` is
/// `NULL` when the event had none. `metadata` is the metadata object as compact JSON. Rows with
/// the same `event_id` are copies of one event: the one to read is the copy with the greatest
/// `received_at_ms` (what `FINAL` or `argMax(..., received_at_ms)` give).
pub fn create_table_sql(database: &str, table: &str) -> String {
    layout::create_main_table_sql(database, table)
}

/// The table's columns, as in [`create_table_sql`] (which adds the merge version); the
/// cluster's `Distributed` table has the same.
const COLUMNS: &str = "(
    event_id        String,
    user_id         String,
    session_id      Nullable(String),
    event_type      String,
    metadata        String,
    occurred_at     DateTime('UTC'),
    occurred_at_ms  Int64,
    received_at     DateTime('UTC'),
    received_at_ms  Int64,
    source          String
)";

/// Where and how to reach ClickHouse.
#[derive(Clone)]
pub struct ClickHouseConfig {
    /// The HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database that holds the table; created if missing.
    pub database: String,
    /// Table name; created if missing.
    pub table: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// How long one request (insert, query, ping) may take before answering `Unavailable`.
    pub request_timeout: Duration,
    /// Events sharded over a cluster (see [`cluster`]); `None`: one server, one table.
    pub cluster: Option<ClusterConfig>,
    /// `true`: the service creates the database and tables. `false`: an operator does, and
    /// the service only checks that they exist, naming what is missing.
    pub manage_tables: bool,
    /// How request and response bodies travel.
    pub compression: BodyCompression,
}

/// How bodies travel between the service and ClickHouse: inserts as the service sends them,
/// query results as ClickHouse answers (it compresses when asked to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyCompression {
    /// [`None`](Self::None) when every ClickHouse server is on this machine (a loopback
    /// address or `localhost`): there are no wire bytes to save, and ClickHouse, on the same
    /// cores, saves decompressing them too. [`Lz4`](Self::Lz4) otherwise.
    #[default]
    Auto,
    /// LZ4 blocks: about 3-4x fewer bytes on the wire for the CPU of compressing every insert
    /// (about 1,200 instructions an event, net) and decompressing every read.
    Lz4,
    /// Plain: no compression work on either side, 3-4x the bytes. For a ClickHouse on the same
    /// host or a fast local network.
    None,
}

impl BodyCompression {
    /// What [`Auto`](Self::Auto) comes to for servers at `urls`; the others as they are.
    pub fn resolve<'a>(self, mut urls: impl Iterator<Item = &'a str>) -> Self {
        match self {
            Self::Auto if urls.all(is_local) => Self::None,
            Self::Auto => Self::Lz4,
            other => other,
        }
    }

    fn client(self) -> Compression {
        match self {
            Self::Lz4 | Self::Auto => Compression::Lz4,
            Self::None => Compression::None,
        }
    }
}

/// Whether `url` names a server on this machine: a loopback address or `localhost`.
fn is_local(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

impl ClickHouseConfig {
    /// Database `default`, table [`DEFAULT_TABLE`], no credentials, 10 s per request.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: "default".to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            user: None,
            password: None,
            request_timeout: Duration::from_secs(10),
            cluster: None,
            manage_tables: true,
            compression: BodyCompression::Lz4,
        }
    }
}

impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &redact_url(&self.url))
            .field("database", &self.database)
            .field("table", &self.table)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("request_timeout", &self.request_timeout)
            .field("cluster", &self.cluster.as_ref().map(|c| &c.name))
            .field(
                "shard_urls",
                &self.cluster.as_ref().map(|c| {
                    c.shard_urls
                        .iter()
                        .map(|u| redact_url(u))
                        .collect::<Vec<_>>()
                }),
            )
            .field("manage_tables", &self.manage_tables)
            .field("compression", &self.compression)
            .finish()
    }
}

/// [`EventStore`] over ClickHouse's HTTP interface.
#[derive(Clone)]
pub struct ClickHouseStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    database: String,
    table: String,
    /// The cluster's name and a client per shard, in cluster mode.
    cluster: Option<(String, Vec<Server>)>,
    manage_tables: bool,
    /// `` `database`.`table` ``, ready to put in SQL.
    qualified: String,
    /// The index tables of reads by user and by type or time, ready to put in SQL.
    qualified_by_user: String,
    qualified_by_time: String,
    /// Which layout the table has, once known: one of the `LAYOUT_*`.
    layout: AtomicU8,
    timeout: Duration,
    shown_url: String,
    secrets: Vec<String>,
    schema_ready: AtomicBool,
    /// When retention last issued its delete mutation (see [`retention`]).
    last_mutation: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("url", &self.inner.shown_url)
            .field("table", &self.inner.qualified)
            .finish_non_exhaustive()
    }
}

/// One server of a cluster, for DDL and checks.
struct Server {
    client: Client,
    shown_url: String,
}

/// A table a server must hold, and (a part of) the name of its engine.
type Expected = (String, &'static str);

const LAYOUT_UNKNOWN: u8 = 0;
/// [`layout`]: reads through the index tables.
const LAYOUT_READ: u8 = 1;
/// A table from before the read layout: read with `FINAL`, as it was.
const LAYOUT_LEGACY: u8 = 2;

/// A row of `system.tables`.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct TableRow {
    name: String,
    engine: String,
}

/// One row of the table, in column order (RowBinary without validation is positional).
#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct EventRow {
    event_id: String,
    user_id: String,
    session_id: Option<String>,
    event_type: String,
    metadata: String,
    /// `DateTime` is seconds since the epoch as `UInt32` on the wire.
    occurred_at: u32,
    occurred_at_ms: i64,
    received_at: u32,
    received_at_ms: i64,
    source: String,
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn datetime_secs(ms: i64) -> u32 {
    // `DateTime` cannot hold instants outside 1970..2106; the `_ms` column stays exact.
    u32::try_from(ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

/// [`EventRow`] as an insert writes it: the same columns in the same order, its text borrowed
/// from the event, so a row costs no allocation or copy before its RowBinary encoding.
#[derive(Debug, clickhouse::Row, Serialize)]
struct EventRowRef<'a> {
    event_id: &'a str,
    user_id: &'a str,
    session_id: Option<&'a str>,
    event_type: &'a str,
    metadata: &'a str,
    occurred_at: u32,
    occurred_at_ms: i64,
    received_at: u32,
    received_at_ms: i64,
    source: &'a str,
}

impl<'a> From<&'a StoredEvent> for EventRowRef<'a> {
    fn from(s: &'a StoredEvent) -> Self {
        let c = s.columns();
        Self {
            event_id: c.event_id,
            user_id: c.user_id,
            session_id: c.session_id,
            event_type: c.event_type,
            metadata: c.metadata,
            occurred_at: datetime_secs(c.occurred_at_ms),
            occurred_at_ms: c.occurred_at_ms,
            received_at: datetime_secs(c.received_at_ms),
            received_at_ms: c.received_at_ms,
            source: c.source,
        }
    }
}

impl EventRow {
    fn into_stored(self) -> Result<StoredEvent, PortError> {
        StoredFields {
            event_id: &self.event_id,
            user_id: self.user_id,
            session_id: self.session_id,
            event_type: &self.event_type,
            occurred_at: from_ms(self.occurred_at_ms),
            received_at: from_ms(self.received_at_ms),
            source: &self.source,
            metadata: self.metadata,
        }
        .into_stored()
        .map_err(|what| PortError::Failed(format!("clickhouse: bad {what} in row")))
    }
}

/// A ClickHouse identifier, backquoted. Names are checked in [`ClickHouseStore::new`], so no
/// escaping is needed beyond the quotes.
fn quote(name: &str) -> String {
    format!("`{name}`")
}

fn check_identifier(what: &str, name: &str) -> Result<(), PortError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PortError::Failed(format!(
            "clickhouse {what} name {name:?} must be 1-64 of A-Z a-z 0-9 _, not starting with a digit"
        )))
    }
}

impl ClickHouseStore {
    /// Builds the store without touching the network, so a ClickHouse that is down at startup
    /// makes calls answer `Unavailable` instead of crashing the process. The database and table
    /// are created on first use (or by [`ensure_schema`](Self::ensure_schema)).
    ///
    /// # Errors
    /// `Failed` when the database, table or cluster name is not a plain identifier.
    pub fn new(config: ClickHouseConfig) -> Result<Self, PortError> {
        check_identifier("database", &config.database)?;
        check_identifier("table", &config.table)?;
        // The longest name derived from the table's.
        check_identifier(
            "index table",
            &layout::view_of(&local_table(&layout::by_user_table(&config.table))),
        )?;
        let mut secrets = super::redact::url_secrets(&config.url);
        if let Some(p) = config.password.as_ref().filter(|p| !p.is_empty()) {
            secrets.push(p.clone());
        }
        let client = Self::client(&config, &config.url);
        let cluster = match &config.cluster {
            None => None,
            Some(c) => {
                cluster::check_cluster_name(&c.name)?;
                check_identifier("local table", &local_table(&config.table))?;
                let shards = c.shard_urls.iter().map(|url| {
                    secrets.extend(super::redact::url_secrets(url));
                    Server {
                        client: Self::client(&config, url),
                        shown_url: redact_url(url),
                    }
                });
                Some((c.name.clone(), shards.collect()))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                qualified: format!("{}.{}", quote(&config.database), quote(&config.table)),
                qualified_by_user: format!(
                    "{}.{}",
                    quote(&config.database),
                    quote(&layout::by_user_table(&config.table))
                ),
                qualified_by_time: format!(
                    "{}.{}",
                    quote(&config.database),
                    quote(&layout::by_time_table(&config.table))
                ),
                layout: AtomicU8::new(LAYOUT_UNKNOWN),
                database: config.database,
                table: config.table,
                cluster,
                manage_tables: config.manage_tables,
                timeout: config.request_timeout,
                shown_url: redact_url(&config.url),
                secrets,
                schema_ready: AtomicBool::new(false),
                last_mutation: std::sync::Mutex::new(None),
            }),
        })
    }

    fn client(config: &ClickHouseConfig, url: &str) -> Client {
        // No `with_database`: the database may not exist yet, and every statement names it.
        let mut client = Client::default()
            .with_url(url)
            .with_validation(false)
            .with_compression(config.compression.client());
        if let Some(user) = &config.user {
            client = client.with_user(user.as_str());
        }
        if let Some(password) = &config.password {
            client = client.with_password(password.as_str());
        }
        client
    }

    /// The `CREATE TABLE` statement this store runs (on one server; see [`cluster`] for
    /// what a cluster runs).
    pub fn create_table_sql(&self) -> String {
        create_table_sql(&self.inner.database, &self.inner.table)
    }

    /// Creates the database and the table if missing; in cluster mode, on every shard the
    /// local and the `Distributed` table, then the `Distributed` table on the configured URL.
    /// With `manage_tables` off, only checks that they exist. Idempotent; insert and query
    /// call it themselves until ClickHouse has answered it once.
    ///
    /// # Errors
    /// `Unavailable` when a server cannot be reached or refuses the DDL; `Failed` naming each
    /// table that is missing (or of another engine) when `manage_tables` is off.
    pub async fn ensure_schema(&self) -> Result<(), PortError> {
        if !self.inner.manage_tables {
            return self.verify_schema().await;
        }
        self.create_schema()
            .await
            .map_err(|(what, url, e)| self.map_err_at(what, &url, e))
    }

    /// The statements that create the schema, in order, each with its server. With a legacy
    /// table, only the database: the table is there and is not changed.
    fn ddl(&self) -> Vec<(&Client, &str, &'static str, String)> {
        let (db, table) = (&self.inner.database, &self.inner.table);
        let create_db = format!("CREATE DATABASE IF NOT EXISTS {}", quote(db));
        let main = (&self.inner.client, self.inner.shown_url.as_str());
        let legacy = self.is_legacy();
        let Some((cluster, shards)) = &self.inner.cluster else {
            let mut plan = vec![(main.0, main.1, "create database", create_db)];
            if !legacy {
                let tables = layout::create_layout_sql(db, table);
                plan.extend(
                    tables
                        .into_iter()
                        .map(|sql| (main.0, main.1, "create table", sql)),
                );
            }
            return plan;
        };
        let mut plan = Vec::new();
        for s in shards {
            let at = (&s.client, s.shown_url.as_str());
            plan.push((at.0, at.1, "create database", create_db.clone()));
            if !legacy {
                let sqls = cluster::create_shard_sql(db, table, cluster);
                plan.extend(sqls.into_iter().map(|(what, sql)| (at.0, at.1, what, sql)));
            }
        }
        // The configured URL may be a server with the cluster's config but no shard.
        plan.push((main.0, main.1, "create database", create_db));
        if !legacy {
            let sqls = cluster::create_distributed_layout_sql(db, table, cluster);
            plan.extend(
                sqls.into_iter()
                    .map(|(what, sql)| (main.0, main.1, what, sql)),
            );
        }
        plan
    }

    async fn create_schema(&self) -> Result<(), (&'static str, String, clickhouse::error::Error)> {
        self.detect_layout().await?;
        for (client, url, what, sql) in self.ddl() {
            self.timed_raw(client.query_raw(&sql).execute())
                .await
                .map_err(|e| (what, url.to_owned(), e))?;
        }
        self.inner.schema_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The server that holds the main table's rows (the first shard's local table in
    /// cluster mode), and that table's name; `None` when no shard URL is configured.
    fn storage_server(&self) -> Option<(&Client, &str, String)> {
        match &self.inner.cluster {
            None => Some((
                &self.inner.client,
                self.inner.shown_url.as_str(),
                self.inner.table.clone(),
            )),
            Some((_, shards)) => shards.first().map(|s| {
                let table = local_table(&self.inner.table);
                (&s.client, s.shown_url.as_str(), table)
            }),
        }
    }

    /// Whether the main table was created before the read layout (then it is read with
    /// `FINAL`, as before, and a warning names the migration). A missing table gets the read
    /// layout. Asked once.
    async fn detect_layout(&self) -> Result<(), (&'static str, String, clickhouse::error::Error)> {
        if self.inner.layout.load(Ordering::Acquire) != LAYOUT_UNKNOWN {
            return Ok(());
        }
        let Some((client, url, table)) = self.storage_server() else {
            self.inner.layout.store(LAYOUT_READ, Ordering::Release);
            return Ok(());
        };
        let q = client
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(self.inner.database.as_str())
            .bind(table.as_str());
        let found: Option<String> = self
            .timed_raw(q.fetch_optional())
            .await
            .map_err(|e| ("check the table's layout", url.to_owned(), e))?;
        let legacy = found.is_some_and(|engine| !layout::is_read_layout(&engine));
        if legacy {
            tracing::warn!(
                table = %self.inner.qualified,
                "the ClickHouse table has the layout from before issue 14 (ordered by event_id \
                 only): it is read as before, with FINAL, and every GET /events scans all of it. \
                 Run `cartstream migrate-clickhouse` to move it to the read layout \
                 (docs/backends.md, \"Migrating an existing table\")"
            );
        }
        let layout = if legacy { LAYOUT_LEGACY } else { LAYOUT_READ };
        self.inner.layout.store(layout, Ordering::Release);
        Ok(())
    }

    fn is_legacy(&self) -> bool {
        self.inner.layout.load(Ordering::Acquire) == LAYOUT_LEGACY
    }

    /// The tables each server must hold, each with (a part of) the engine it must have.
    fn expected_tables(&self) -> Vec<(&Client, &str, Vec<Expected>)> {
        let table = &self.inner.table;
        let main = (&self.inner.client, self.inner.shown_url.as_str());
        let (by_user, by_time) = (layout::by_user_table(table), layout::by_time_table(table));
        let legacy = self.is_legacy();
        // The main table, then (read layout) the index tables and their views.
        let stored = |main: String, user: String, time: String| -> Vec<Expected> {
            let mut all = vec![(main, "ReplacingMergeTree")];
            if !legacy {
                all.push((layout::view_of(&user), "MaterializedView"));
                all.push((layout::view_of(&time), "MaterializedView"));
                all.push((user, "ReplacingMergeTree"));
                all.push((time, "ReplacingMergeTree"));
            }
            all
        };
        let Some((_, shards)) = &self.inner.cluster else {
            return vec![(main.0, main.1, stored(table.clone(), by_user, by_time))];
        };
        let mut distributed = vec![(table.clone(), "Distributed")];
        if !legacy {
            distributed.push((by_user.clone(), "Distributed"));
            distributed.push((by_time.clone(), "Distributed"));
        }
        let mut expected = vec![(main.0, main.1, distributed.clone())];
        for s in shards {
            let (u, t) = (local_table(&by_user), local_table(&by_time));
            let mut tables = stored(local_table(table), u, t);
            tables.extend(distributed.iter().cloned());
            expected.push((&s.client, s.shown_url.as_str(), tables));
        }
        expected
    }

    /// Checks (without creating anything) that every table is there with its engine.
    async fn verify_schema(&self) -> Result<(), PortError> {
        let db = &self.inner.database;
        self.detect_layout()
            .await
            .map_err(|(what, url, e)| self.map_err_at(what, &url, e))?;
        let mut wrong = Vec::new();
        for (client, url, tables) in self.expected_tables() {
            let q = client
                .query("SELECT name, engine FROM system.tables WHERE database = ?")
                .bind(db.as_str());
            let found: Vec<TableRow> = self
                .timed_raw(q.fetch_all())
                .await
                .map_err(|e| self.map_err_at("check tables", url, e))?;
            for (name, engine) in tables {
                let shown = format!("{}.{} on {url}", quote(db), quote(&name));
                match found.iter().find(|r| r.name == name) {
                    None => wrong.push(format!("{shown} is missing")),
                    Some(r) if !r.engine.contains(engine) => {
                        wrong.push(format!("{shown} is {}, not {engine}", r.engine));
                    }
                    Some(_) => {}
                }
            }
        }
        if wrong.is_empty() {
            self.inner.schema_ready.store(true, Ordering::Release);
            return Ok(());
        }
        Err(PortError::Failed(scrub(
            &format!(
                "clickhouse tables are not as expected (CARTSTREAM_CLICKHOUSE_MANAGE_TABLES=false: \
                 an operator creates them; docs/backends.md has the DDL): {}",
                wrong.join("; ")
            ),
            &self.inner.secrets,
        )))
    }

    async fn schema(&self) -> Result<(), PortError> {
        if self.inner.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.inner.manage_tables {
            return self.verify_schema().await;
        }
        match self.create_schema().await {
            Ok(()) => Ok(()),
            // The server answered but refused, e.g. a user allowed to insert and select but not
            // to create: assume an operator created the table; the statement itself will fail
            // clearly if not. Retrying the DDL on every call would only add round trips.
            Err((what, url, e @ clickhouse::error::Error::BadResponse(_))) => {
                let err = self.map_err_at(what, &url, e);
                tracing::warn!(cause = %err, "cannot create the ClickHouse schema; assuming it exists");
                self.inner.schema_ready.store(true, Ordering::Release);
                Ok(())
            }
            Err((what, url, e)) => Err(self.map_err_at(what, &url, e)),
        }
    }

    async fn timed_raw<T>(
        &self,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> clickhouse::error::Result<T> {
        tokio::time::timeout(self.inner.timeout, fut)
            .await
            .unwrap_or(Err(clickhouse::error::Error::TimedOut))
    }

    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, PortError> {
        self.timed_raw(fut).await.map_err(|e| self.map_err(what, e))
    }

    fn map_err(&self, what: &str, e: clickhouse::error::Error) -> PortError {
        self.map_err_at(what, &self.inner.shown_url, e)
    }

    fn map_err_at(&self, what: &str, shown_url: &str, e: clickhouse::error::Error) -> PortError {
        use clickhouse::error::Error as E;
        let msg = scrub(
            &format!("clickhouse {what} at {shown_url}: {e}"),
            &self.inner.secrets,
        );
        match e {
            E::Network(_) => PortError::Unavailable(msg),
            E::TimedOut => PortError::TimedOut(msg),
            // The server's exceptions arrive as bad responses: classified by their code. One
            // without a code (a proxy's page, a server starting) is as if unreachable.
            E::BadResponse(text) => match refusal::refusal(&text, msg.clone()) {
                Some(r) => PortError::Refused(r),
                None => PortError::Unavailable(msg),
            },
            _ => PortError::Failed(msg),
        }
    }

    /// The `SELECT` of one page: the filters, the start after `query.after`, listing order,
    /// and one row past the page's `limit` to say whether there is more.
    fn page_query(&self, query: &EventQuery) -> clickhouse::query::Query {
        // Only `?` placeholders and the checked table name go into the SQL text; values are
        // bound (escaped client-side: 18.16 has no server-side parameters).
        let (clause, args) = page_clause(query, &CLICKHOUSE);
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE 1 = 1{clause}",
            self.inner.qualified
        );
        args.into_iter()
            .fold(self.inner.client.query(&sql), |q, arg| match arg {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            })
    }

    /// Compares the insert table's columns with what the service writes: a
    /// [`RefusalCause::Schema`] refusal naming each difference, so an operator sees "column
    /// x is Int32, the service writes Int64" rather than a parse error, and no row is written
    /// into a table that would misread it.
    async fn check_columns(&self) -> Result<(), PortError> {
        let q = self
            .inner
            .client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(self.inner.database.as_str())
            .bind(self.inner.table.as_str());
        let found: Vec<(String, String)> = self.timed("check columns", q.fetch_all()).await?;
        let wrong = refusal::column_differences(&found);
        if wrong.is_empty() {
            return Ok(());
        }
        let what = if found.is_empty() {
            "is missing".to_owned()
        } else {
            format!(
                "does not match what the service writes: {}",
                wrong.join("; ")
            )
        };
        Err(PortError::Refused(Refusal {
            cause: RefusalCause::Schema,
            code: None,
            message: format!(
                "clickhouse table {} at {} {what}; the journal keeps every event until the \
                 table is fixed (README: \"ClickHouse refuses\")",
                self.inner.qualified, self.inner.shown_url
            ),
        }))
    }

    /// Each row is made as it is written, not all of them up front: a batch of tens of
    /// thousands of events drained from the journal would otherwise be held twice at once,
    /// and the allocator keeps such peaks as resident memory long after (RELIABILITY.md).
    async fn do_insert(&self, events: &[StoredEvent]) -> clickhouse::error::Result<()> {
        let mut insert = self
            .inner
            .client
            .insert_unescaped::<EventRowRef<'_>>(&self.inner.qualified)
            .await?;
        if self.inner.cluster.is_some() {
            // Return only once every shard has its rows, with a shard's error as ours: the
            // journal is trimmed after this, so rows queued on one server would be at risk.
            insert = insert.with_setting("insert_distributed_sync", "1");
        }
        for event in events {
            insert.write(&EventRowRef::from(event)).await?;
        }
        insert.end().await
    }
}

#[async_trait::async_trait]
impl EventStore for ClickHouseStore {
    async fn insert(&self, events: &[StoredEvent]) -> Result<(), PortError> {
        if events.is_empty() {
            return Ok(());
        }
        self.schema().await?;
        self.check_columns().await?;
        match self.timed("insert", self.do_insert(events)).await {
            // A table changed between the check and the insert: say so, rather than blame the
            // data (and have the forwarder split the batch for nothing).
            Err(PortError::Refused(r)) if r.cause == RefusalCause::Data => {
                self.check_columns().await?;
                Err(PortError::Refused(r))
            }
            other => other,
        }
    }

    async fn known(&self, keys: &[DedupKey]) -> Result<Vec<bool>, PortError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.schema().await?;
        // Existence needs no FINAL (any copy counts), and `IN (subquery)` lets the primary
        // key (event_id, on both layouts) prune; 18.16 does not accept an array literal after
        // IN. In cluster mode each shard answers for its ids.
        let sql = format!(
            "SELECT DISTINCT event_id FROM {} WHERE event_id IN (SELECT arrayJoin(?))",
            self.inner.qualified
        );
        let ids: Vec<&str> = keys.iter().map(DedupKey::as_str).collect();
        let q = self.inner.client.query(&sql).bind(ids);
        let found: Vec<String> = self.timed("known", q.fetch_all()).await?;
        let found: std::collections::HashSet<String> = found.into_iter().collect();
        Ok(keys.iter().map(|k| found.contains(k.as_str())).collect())
    }

    async fn query(&self, query: &EventQuery) -> Result<EventPage, PortError> {
        self.schema().await?;
        if self.inner.layout.load(Ordering::Acquire) == LAYOUT_READ {
            return self.timed("query", self.read_page(query)).await?;
        }
        // A legacy table (or a layout that could not be asked): FINAL, correct on both.
        let q = self.page_query(query);
        // Rows stream in listing order and reading stops one row past the page (dropping
        // the cursor ends the response), so memory holds the page, never the whole match.
        let read = async {
            let mut cursor = q.fetch::<EventRow>()?;
            let mut page = PageBuilder::new(query);
            while let Some(row) = cursor.next().await? {
                match row.into_stored() {
                    Ok(e) => page.offer(e),
                    Err(e) => return Ok(Err(e)),
                }
                if page.is_full() {
                    break;
                }
            }
            Ok(Ok(page.finish()))
        };
        self.timed("query", read).await?
    }

    /// `SELECT 1` on the configured URL and, in cluster mode, on every shard: inserts need
    /// them all.
    async fn check(&self) -> Result<(), PortError> {
        let shards = self.inner.cluster.iter().flat_map(|(_, s)| s);
        let main = std::iter::once((&self.inner.client, self.inner.shown_url.as_str()));
        for (client, url) in main.chain(shards.map(|s| (&s.client, s.shown_url.as_str()))) {
            let one: u8 = self
                .timed_raw(client.query("SELECT 1").fetch_one())
                .await
                .map_err(|e| self.map_err_at("ping", url, e))?;
            if one != 1 {
                // One server: the message it always had; a cluster names the server.
                let at = match &self.inner.cluster {
                    Some(_) => format!(" (at {url})"),
                    None => String::new(),
                };
                return Err(PortError::Failed(format!(
                    "clickhouse SELECT 1 answered {one}{at}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` compresses for a server elsewhere and not for one on this machine; every
    /// server must be local (shards too), and an explicit choice stays as it is.
    #[test]
    fn auto_compression_is_none_only_when_every_server_is_local() {
        let auto = |urls: &[&str]| BodyCompression::Auto.resolve(urls.iter().copied());
        for local in [
            "http://127.0.0.1:8123",
            "http://127.9.9.9:8123/",
            "http://localhost:8123",
            "https://LOCALHOST",
            "http://[::1]:8123",
        ] {
            assert_eq!(auto(&[local]), BodyCompression::None, "{local}");
        }
        for remote in [
            "http://10.0.0.5:8123",
            "http://clickhouse:8123",
            "http://localhost.example.com:8123",
            "http://[2001:db8::1]:8123",
            "not a url",
        ] {
            assert_eq!(auto(&[remote]), BodyCompression::Lz4, "{remote}");
        }
        assert_eq!(
            auto(&["http://127.0.0.1:8123", "http://10.0.0.6:8123"]),
            BodyCompression::Lz4
        );
        let local = ["http://127.0.0.1:8123"];
        assert_eq!(
            BodyCompression::Lz4.resolve(local.iter().copied()),
            BodyCompression::Lz4
        );
        assert_eq!(
            BodyCompression::None.resolve(["http://10.0.0.5"].iter().copied()),
            BodyCompression::None
        );
    }

    #[test]
    fn names_must_be_plain_identifiers() {
        let mut cfg = ClickHouseConfig::new("http://127.0.0.1:8123");
        cfg.table = "events; DROP TABLE x".to_owned();
        assert!(ClickHouseStore::new(cfg).is_err());
        let mut cfg = ClickHouseConfig::new("http://127.0.0.1:8123");
        cfg.database = "1db".to_owned();
        assert!(ClickHouseStore::new(cfg).is_err());
        assert!(ClickHouseStore::new(ClickHouseConfig::new("http://127.0.0.1:8123")).is_ok());
    }

    #[test]
    fn the_documented_ddl_is_the_one_run() {
        // The README quotes this statement: change both together.
        assert_eq!(
            create_table_sql("default", DEFAULT_TABLE),
            "CREATE TABLE IF NOT EXISTS `default`.`cart_events` (
    event_id        String,
    user_id         String,
    session_id      Nullable(String),
    event_type      String,
    metadata        String,
    occurred_at     DateTime('UTC'),
    occurred_at_ms  Int64,
    received_at     DateTime('UTC'),
    received_at_ms  Int64,
    source          String,
    received_version UInt64 MATERIALIZED toUInt64(received_at_ms)
)
ENGINE = ReplacingMergeTree(received_version)
ORDER BY event_id
SETTINGS index_granularity = 256"
        );
    }

    #[test]
    fn the_ddl_names_the_configured_table_and_avoids_new_only_features() {
        let store = ClickHouseStore::new(ClickHouseConfig::new("http://h:8123")).unwrap();
        let ddl = store.create_table_sql();
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS `default`.`cart_events` ("));
        for newer in ["DateTime64", "LowCardinality", "TTL", "JSON"] {
            assert!(!ddl.contains(newer), "{newer} in {ddl}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let mut cfg = ClickHouseConfig::new("http://u:hunter2@h:8123");
        cfg.password = Some("hunter3".to_owned());
        cfg.cluster = Some(ClusterConfig {
            name: "c".to_owned(),
            shard_urls: vec!["http://u:hunter4@s1:8123".to_owned()],
        });
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3") && !shown.contains("hunter4"),
            "{shown}"
        );
        assert!(shown.contains("s1:8123"), "{shown}");
    }

    #[test]
    fn inserts_write_the_columns_reads_decode_in_the_same_order() {
        // RowBinary without validation is positional: a field out of place would put one
        // column's value into another.
        assert_eq!(
            <EventRowRef<'_> as clickhouse::Row>::COLUMN_NAMES,
            <EventRow as clickhouse::Row>::COLUMN_NAMES
        );
    }

    #[test]
    fn datetime_seconds_are_clamped_and_floored() {
        assert_eq!(datetime_secs(1_754_796_424_123), 1_754_796_424);
        assert_eq!(datetime_secs(-5), 0);
        assert_eq!(datetime_secs(i64::MAX), u32::MAX);
    }
}

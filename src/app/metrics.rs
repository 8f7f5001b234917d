//! Prometheus metrics. One registry per application instance (not a global), so several
//! servers in one test process keep their counts apart.

use crate::app::tap::TapOutcome;
use crate::domain::{EventType, Source};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Channel {
    Ws,
    Http,
}

impl EncodeLabelValue for Channel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Ws => "ws",
            Self::Http => "http",
        })
    }
}

impl From<Source> for Channel {
    fn from(s: Source) -> Self {
        match s {
            Source::Ws => Self::Ws,
            Source::Http => Self::Http,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: Channel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub channel: Channel,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub received: Family<ChannelLabels, Counter>,
    pub accepted: Family<ChannelLabels, Counter>,
    pub duplicate: Family<ChannelLabels, Counter>,
    pub rejected: Family<ChannelLabels, Counter>,
    pub unavailable: Family<ChannelLabels, Counter>,
    /// Error replies (WS `error` messages and HTTP error bodies), by code.
    pub errors: Family<CodeLabels, Counter>,
    pub ws_connections: Gauge,
    pub ws_closes: Family<ReasonLabels, Counter>,
    /// Events per committed group (one claim + one store call).
    pub commit_batch_events: Histogram,
    pub commit_seconds: Histogram,
    /// The two calls a group waits for: its dedup claim and its store call.
    pub claim_seconds: Histogram,
    pub store_seconds: Histogram,
    /// Backend failures by what failed (`claim`, `store`, `confirm`, `release`).
    pub backend_errors: Family<ReasonLabels, Counter>,
    /// Local journal: entries and bytes waiting, age of the oldest (the forwarder's lag).
    pub journal_entries: Gauge,
    pub journal_bytes: Gauge,
    pub journal_oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// INSERTs sent to the remote event store, and the events they carried.
    pub forwarded_inserts: Counter,
    pub forwarded_events: Counter,
    /// Per event forwarded: from its `receivedAt` to the event store's confirmation of the
    /// insert that carried it (how fresh `GET /events` is).
    pub store_lag_seconds: Histogram,
    /// Failed forwarding attempts (each is retried).
    pub flush_errors: Counter,
    /// 1 while forwarding to the event store fails (`GET /ready` says why and since when).
    pub forwarding_failing: Gauge,
    /// Events the event store refused alone, set aside in the quarantine: since the start,
    /// and kept now.
    pub quarantined: Counter,
    pub quarantine_size: Gauge,
    /// Dedup keys decided by the event store's reads because the dedup store was down.
    pub dedup_fallback: Counter,
    /// Rate-limit checks decided by the local limiter because the shared (Redis) buckets did
    /// not answer.
    pub rate_limit_fallbacks: Counter,
    /// Per route: events delivered, failed attempts, events dead-lettered, deliveries waiting,
    /// dead letters kept, and the time from acceptance to confirmed delivery.
    pub route_delivered: Family<RouteLabels, Counter>,
    pub route_failures: Family<RouteLabels, Counter>,
    pub route_dead_lettered: Family<RouteLabels, Counter>,
    pub route_backlog: Family<RouteLabels, Gauge>,
    pub route_dead_letters: Family<RouteLabels, Gauge>,
    pub route_latency: Family<RouteLabels, Histogram>,
    /// Open TCP connections (HTTP and WebSocket), connections cut at a deadline and refused
    /// over a cap, by reason, and failed `accept` calls.
    pub connections: Gauge,
    pub connections_cut: Family<ReasonLabels, Counter>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub accept_errors: Counter,
    /// The data dir's file system: free and total bytes, and 1 while writes fail for lack of
    /// space.
    pub disk: crate::app::disk::DiskGauges,
    /// Retention, by event store: events deleted (where the store counts them), delete
    /// mutations issued and partitions dropped (ClickHouse, which does not count rows).
    pub retention_deleted_events: Family<StoreLabels, Counter>,
    pub retention_mutations: Family<StoreLabels, Counter>,
    pub retention_dropped_partitions: Family<StoreLabels, Counter>,
    /// Events by type and outcome (`cartstream_events_total`), as precomputed handles.
    pub by_type: EventTypeCounters,
    /// `received`, `accepted`, `duplicate`, `rejected` and `unavailable` of each channel, as
    /// precomputed handles of those families.
    pub by_channel: ChannelCounters,
    /// Every event's outcome, for `GET /events/tap`.
    pub tap: std::sync::Arc<crate::app::tap::Tap>,
}

/// Label values of `cartstream_events_total`: the closed set of event types (and `other` for a
/// rejected event whose type is not one), by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub event_type: &'static str,
    pub outcome: &'static str,
}

/// One channel's event counters: handles of the `received`, `accepted`, … families.
#[derive(Clone, Default)]
pub struct ChannelCounts {
    pub received: Counter,
    pub accepted: Counter,
    pub duplicate: Counter,
    pub rejected: Counter,
    pub unavailable: Counter,
}

/// The event counters of each channel, taken once: counting an event is then one atomic add,
/// where `Family::get_or_create` hashes the labels (SipHash) under a lock, about 140
/// instructions, which ingest paid twice per WebSocket event. Every series shows from the
/// start, at 0.
#[derive(Default)]
pub struct ChannelCounters {
    ws: ChannelCounts,
    http: ChannelCounts,
}

impl ChannelCounters {
    fn new(m: &Metrics) -> Self {
        let of = |channel| {
            let labels = ChannelLabels { channel };
            ChannelCounts {
                received: m.received.get_or_create(&labels).clone(),
                accepted: m.accepted.get_or_create(&labels).clone(),
                duplicate: m.duplicate.get_or_create(&labels).clone(),
                rejected: m.rejected.get_or_create(&labels).clone(),
                unavailable: m.unavailable.get_or_create(&labels).clone(),
            }
        };
        Self {
            ws: of(Channel::Ws),
            http: of(Channel::Http),
        }
    }

    pub fn of(&self, channel: Channel) -> &ChannelCounts {
        match channel {
            Channel::Ws => &self.ws,
            Channel::Http => &self.http,
        }
    }
}

/// `cartstream_events_total{event_type, outcome}`, one handle per pair, looked up by index.
pub struct EventTypeCounters {
    family: Family<TypeLabels, Counter>,
    /// `[type][outcome]`; the last type row is `other`.
    handles: Vec<[Counter; 4]>,
}

impl EventTypeCounters {
    fn new() -> Self {
        let family = Family::<TypeLabels, Counter>::default();
        let names = EventType::ALL
            .iter()
            .map(|t| t.as_str())
            .chain(std::iter::once("other"));
        let handles = names
            .map(|event_type| {
                TapOutcome::ALL.map(|o| {
                    family
                        .get_or_create(&TypeLabels {
                            event_type,
                            outcome: o.as_str(),
                        })
                        .clone()
                })
            })
            .collect();
        Self { family, handles }
    }

    /// Adds `n` to the count of `event_type` (`None`: not one of the types) with `outcome`.
    pub fn add(&self, event_type: Option<EventType>, outcome: TapOutcome, n: u64) {
        let row = event_type.map_or(EventType::ALL.len(), |t| t as usize);
        self.handles[row][outcome.index()].inc_by(n);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("cartstream"),
            received: Family::default(),
            accepted: Family::default(),
            duplicate: Family::default(),
            rejected: Family::default(),
            unavailable: Family::default(),
            errors: Family::default(),
            ws_connections: Gauge::default(),
            ws_closes: Family::default(),
            commit_batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            claim_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            store_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            backend_errors: Family::default(),
            journal_entries: Gauge::default(),
            journal_bytes: Gauge::default(),
            journal_oldest_age_seconds: Gauge::default(),
            forwarded_inserts: Counter::default(),
            forwarded_events: Counter::default(),
            store_lag_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            flush_errors: Counter::default(),
            forwarding_failing: Gauge::default(),
            quarantined: Counter::default(),
            quarantine_size: Gauge::default(),
            dedup_fallback: Counter::default(),
            rate_limit_fallbacks: Counter::default(),
            route_delivered: Family::default(),
            route_failures: Family::default(),
            route_dead_lettered: Family::default(),
            route_backlog: Family::default(),
            route_dead_letters: Family::default(),
            route_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 20))
            }),
            connections: Gauge::default(),
            connections_cut: Family::default(),
            connections_refused: Family::default(),
            accept_errors: Counter::default(),
            disk: crate::app::disk::DiskGauges::default(),
            retention_deleted_events: Family::default(),
            retention_mutations: Family::default(),
            retention_dropped_partitions: Family::default(),
            by_type: EventTypeCounters::new(),
            by_channel: ChannelCounters::default(),
            tap: std::sync::Arc::new(crate::app::tap::Tap::default()),
        };
        m.by_channel = ChannelCounters::new(&m);
        m.register_events();
        m.register_commit();
        m.register_journal();
        m.register_routes();
        m.register_connections();
        m.register_disk();
        m.register_retention();
        m.registry.register(
            "events",
            "Events by type and outcome (`other`: a rejected event of no known type)",
            m.by_type.family.clone(),
        );
        m
    }

    /// Metrics whose tap lets each subscriber lag `tap_buffer` events behind.
    pub fn with_tap_buffer(tap_buffer: usize) -> Self {
        let mut m = Self::new();
        m.tap = std::sync::Arc::new(crate::app::tap::Tap::new(tap_buffer));
        m
    }

    /// Retention's deleting of old events.
    fn register_retention(&mut self) {
        self.registry.register(
            "retention_deleted_events",
            "Events deleted by retention, by event store (where it counts them: the embedded one)",
            self.retention_deleted_events.clone(),
        );
        self.registry.register(
            "retention_delete_mutations",
            "Delete mutations retention issued (ALTER TABLE ... DELETE, one per table and \
             server), by event store; ClickHouse deletes the rows later, uncounted",
            self.retention_mutations.clone(),
        );
        self.registry.register(
            "retention_dropped_partitions",
            "Partitions retention dropped whole (a legacy ClickHouse table's months), by event store",
            self.retention_dropped_partitions.clone(),
        );
    }

    /// Shows every retention series of `store` at 0 before its first step, so a rate is
    /// defined from the start.
    pub fn retention_started(&self, store: &str) {
        let labels = StoreLabels {
            store: store.to_owned(),
        };
        let _ = self.retention_deleted_events.get_or_create(&labels);
        let _ = self.retention_mutations.get_or_create(&labels);
        let _ = self.retention_dropped_partitions.get_or_create(&labels);
    }

    /// Counts what one retention step of `store` deleted.
    pub fn retention_step(&self, store: &str, step: &crate::ports::ExpireStep) {
        let labels = StoreLabels {
            store: store.to_owned(),
        };
        self.retention_deleted_events
            .get_or_create(&labels)
            .inc_by(step.events);
        self.retention_mutations
            .get_or_create(&labels)
            .inc_by(step.mutations);
        self.retention_dropped_partitions
            .get_or_create(&labels)
            .inc_by(step.partitions);
    }

    /// The data dir's disk.
    fn register_disk(&mut self) {
        self.registry.register(
            "data_dir_free_bytes",
            "Bytes free on the data dir's file system (sampled every few seconds)",
            self.disk.free_bytes.clone(),
        );
        self.registry.register(
            "data_dir_total_bytes",
            "Size of the data dir's file system in bytes",
            self.disk.total_bytes.clone(),
        );
        self.registry.register(
            "data_dir_full",
            "1 while local writes fail because the data dir's disk is full",
            self.disk.full.clone(),
        );
    }

    /// Events by outcome and channel, error replies, WebSocket connections.
    fn register_events(&mut self) {
        self.registry.register(
            "events_received",
            "Events received, by channel",
            self.received.clone(),
        );
        self.registry.register(
            "events_accepted",
            "Events accepted (durably recorded), by channel",
            self.accepted.clone(),
        );
        self.registry.register(
            "events_duplicate",
            "Events answered duplicate, by channel",
            self.duplicate.clone(),
        );
        self.registry.register(
            "events_rejected",
            "Events rejected by validation, by channel",
            self.rejected.clone(),
        );
        self.registry.register(
            "events_unavailable",
            "Events answered unavailable (not recorded, retryable), by channel",
            self.unavailable.clone(),
        );
        self.registry.register(
            "errors",
            "Error replies sent to clients, by channel and code",
            self.errors.clone(),
        );
        self.registry.register(
            "ws_connections",
            "Open WebSocket connections",
            self.ws_connections.clone(),
        );
        self.registry.register(
            "ws_closes",
            "WebSocket connections closed, by reason",
            self.ws_closes.clone(),
        );
    }

    /// The committer: group sizes, the time of its calls, backend failures.
    fn register_commit(&mut self) {
        self.registry.register(
            "commit_batch_events",
            "Events per committed group (one dedup claim and one store call)",
            self.commit_batch_events.clone(),
        );
        self.registry.register(
            "commit_seconds",
            "Time to claim, store and confirm one group",
            self.commit_seconds.clone(),
        );
        self.registry.register(
            "claim_seconds",
            "Time of one group's dedup claim call",
            self.claim_seconds.clone(),
        );
        self.registry.register(
            "store_seconds",
            "Time of one group's store call (the journal append, with ClickHouse configured)",
            self.store_seconds.clone(),
        );
        self.registry.register(
            "backend_errors",
            "Backend failures, by operation",
            self.backend_errors.clone(),
        );
        self.registry.register(
            "dedup_fallback",
            "Dedup keys checked against the event store because the dedup store was down",
            self.dedup_fallback.clone(),
        );
        self.registry.register(
            "rate_limit_fallbacks",
            "Rate-limit checks decided by this instance alone because the shared buckets in \
             Redis did not answer",
            self.rate_limit_fallbacks.clone(),
        );
    }

    /// The local journal and the forwarder that drains it.
    fn register_journal(&mut self) {
        self.registry.register(
            "journal_entries",
            "Accepted events waiting in the local journal for the event store",
            self.journal_entries.clone(),
        );
        self.registry.register(
            "journal_bytes",
            "Bytes of events waiting in the local journal",
            self.journal_bytes.clone(),
        );
        self.registry.register(
            "journal_oldest_age_seconds",
            "Age of the oldest journal entry: how far the event store lags behind",
            self.journal_oldest_age_seconds.clone(),
        );
        self.registry.register(
            "forwarded_inserts",
            "INSERTs sent to the event store by the forwarder",
            self.forwarded_inserts.clone(),
        );
        self.registry.register(
            "forwarded_events",
            "Events moved from the journal to the event store",
            self.forwarded_events.clone(),
        );
        self.registry.register(
            "store_lag_seconds",
            "From an event's receivedAt to the event store's confirmation of its insert",
            self.store_lag_seconds.clone(),
        );
        self.registry.register(
            "flush_errors",
            "Failed attempts to forward journal entries (each is retried)",
            self.flush_errors.clone(),
        );
        self.registry.register(
            "forwarding_failing",
            "1 while forwarding to the event store fails; GET /ready says why and since when",
            self.forwarding_failing.clone(),
        );
        self.registry.register(
            "quarantined_events",
            "Events the event store refused alone, set aside in the quarantine",
            self.quarantined.clone(),
        );
        self.registry.register(
            "quarantine_events",
            "Events in the quarantine now (GET /quarantine)",
            self.quarantine_size.clone(),
        );
    }

    /// Delivery to route targets.
    fn register_routes(&mut self) {
        self.registry.register(
            "route_delivered",
            "Events delivered to a route's target",
            self.route_delivered.clone(),
        );
        self.registry.register(
            "route_failed_attempts",
            "Failed delivery attempts (each retried or dead-lettered)",
            self.route_failures.clone(),
        );
        self.registry.register(
            "route_dead_lettered",
            "Events moved to the dead-letter store",
            self.route_dead_lettered.clone(),
        );
        self.registry.register(
            "route_backlog",
            "Deliveries waiting in the outbox",
            self.route_backlog.clone(),
        );
        self.registry.register(
            "route_dead_letters",
            "Dead letters kept for the route",
            self.route_dead_letters.clone(),
        );
        self.registry.register(
            "route_delivery_latency_seconds",
            "Time from acceptance to confirmed delivery",
            self.route_latency.clone(),
        );
    }

    /// The guarded listener: open, cut and refused connections.
    fn register_connections(&mut self) {
        self.registry.register(
            "connections",
            "Open TCP connections, HTTP and WebSocket",
            self.connections.clone(),
        );
        self.registry.register(
            "connections_cut",
            "Connections closed at a deadline, by reason",
            self.connections_cut.clone(),
        );
        self.registry.register(
            "connections_refused",
            "Connections refused over a cap, by the cap",
            self.connections_refused.clone(),
        );
        self.registry.register(
            "accept_errors",
            "Failed accept calls (each retried after a pause)",
            self.accept_errors.clone(),
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn error(&self, channel: Channel, code: &str) {
        self.errors
            .get_or_create(&CodeLabels {
                channel,
                code: code.to_owned(),
            })
            .inc();
    }

    /// The journal's figures, its oldest entry's age as of `now`.
    pub fn set_journal(
        &self,
        stats: &crate::ports::JournalStats,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        self.journal_entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        self.journal_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        let age = stats
            .oldest
            .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
        self.journal_oldest_age_seconds.set(age);
    }

    pub fn connection_cut(&self, reason: &str) {
        self.connections_cut
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn connection_refused(&self, cap: &str) {
        self.connections_refused
            .get_or_create(&ReasonLabels {
                reason: cap.to_owned(),
            })
            .inc();
    }

    pub fn backend_error(&self, what: &str) {
        self.backend_errors
            .get_or_create(&ReasonLabels {
                reason: what.to_owned(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

//! Black-box tests: the real server on a random port, driven over HTTP and WebSocket, and the
//! production adapters against real Redis and ClickHouse. One binary (modules, not files) so
//! it links once.

mod asyncapi;
mod backends;
mod binary;
mod bounds;
mod clickhouse_cluster;
mod clickhouse_layout;
mod clickhouse_refusals;
mod clickhouse_retention;
mod clickhouse_store;
mod contract;
mod disk;
mod drain;
mod edge;
mod failing;
mod faults;
mod fixtures;
mod global_limits;
mod helpers;
mod http;
mod integrity;
mod openapi;
mod production;
mod proxy;
mod reads;
mod redis_cluster_dedup;
mod redis_dedup;
mod retention;
mod routing;
mod sdk;
mod security;
mod tap;
mod targets;
mod ws;

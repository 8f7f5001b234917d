mod backends;
mod clickhouse_store;
mod redis_dedup;

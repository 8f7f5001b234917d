use cartstream::adapters::outbound::clickhouse::ClickHouseStore;
use cartstream::app::startup::{clickhouse_config, Application};
use cartstream::app::{config::Settings, telemetry};
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: the ingest path allocates per event (JSON trees,
/// ids, rows) and glibc malloc/free were over a third of its CPU profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every WebSocket client holds a file descriptor, and many systems start processes with a soft
/// limit of 1024. Raise it to the hard limit, which the operator controls (`ulimit -Hn`,
/// systemd's `LimitNOFILE`), so thousands of idle connections need no setup.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!(cause = %e, "cannot raise the open file limit"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cartstream: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings);
    // The one subcommand so far; any other argument is ignored, as before.
    if std::env::args().nth(1).as_deref() == Some("migrate-clickhouse") {
        return migrate_clickhouse(&settings).await;
    }
    raise_fd_limit();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %app.local_addr(), "cartstream listening");
    match app.run(cartstream::app::startup::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cartstream migrate-clickhouse`: moves the configured ClickHouse table from the layout before
/// issue 14 to the read layout, on one server (docs/backends.md, "Migrating an existing table").
async fn migrate_clickhouse(settings: &Settings) -> ExitCode {
    let Some(url) = &settings.clickhouse_url else {
        eprintln!("cartstream migrate-clickhouse: CARTSTREAM_CLICKHOUSE_URL is not set");
        return ExitCode::from(2);
    };
    let done = match ClickHouseStore::new(clickhouse_config(settings, url)) {
        Ok(store) => store.migrate_layout().await,
        Err(e) => Err(e),
    };
    match done {
        Ok(m) => {
            match &m.old_table {
                None => println!("nothing to migrate: the read layout is in place"),
                Some(old) => println!(
                    "old table {old} ({}): copied {} month(s) {:?}, {} copied before; {} rows \
                     in the old table, {} in the new one (copies included). Restart cartstream \
                     to read the new layout; the old table is kept.",
                    if m.renamed {
                        "renamed now"
                    } else {
                        "renamed before"
                    },
                    m.copied.len(),
                    m.copied,
                    m.already_copied,
                    m.old_rows,
                    m.new_rows,
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartstream migrate-clickhouse: {e}");
            ExitCode::FAILURE
        }
    }
}

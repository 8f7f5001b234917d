use cartstream::adapters::outbound::clickhouse::ClickHouseStore;
use cartstream::adapters::outbound::integrity::{Depth, Verdict};
use cartstream::app::startup::{self, clickhouse_config, Application};
use cartstream::app::{config::Settings, drain, integrity, telemetry};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of glibc's allocator: the ingest path allocates per event (JSON trees,
/// ids, rows) and glibc malloc/free were over a third of its CPU profile (BENCHMARKS.md).
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cart event ingestion over WebSocket and HTTP. Without a command: the server, configured by
/// CARTSTREAM_* variables and the file CARTSTREAM_CONFIG names (README: Configuration).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Forwards a data dir's journal to the event store and delivers its outbox's pending
    /// route deliveries (a dead instance's, say), with the usual settings' ClickHouse, Redis
    /// and routes; listens on no port; exits 0 once nothing is left.
    Drain {
        /// The data dir to drain (instead of CARTSTREAM_DATA_DIR); refused while another
        /// process holds it.
        #[arg(long)]
        data_dir: PathBuf,
        /// Give up after this long (e.g. 90s, 10m), exiting 1 with what is left.
        #[arg(long, default_value = "10m", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
    },
    /// Moves the configured ClickHouse table from the layout before issue 14 to the read
    /// layout, on one server: the old table is renamed and kept, and its rows are copied month
    /// by month (a rerun resumes). docs/backends.md, "Migrating an existing table".
    MigrateClickhouse,
    /// Checks each SQLite file of a data dir (the embedded store, the journal, the outbox, the
    /// quarantine) with SQLite's quick_check, and every journal batch and outbox row against
    /// its checksum; prints `ok` or `DAMAGED` (naming the batches and rows) per file; exits 1
    /// on damage. Safe while a server runs on the directory.
    Check {
        /// The data dir to check (instead of CARTSTREAM_DATA_DIR).
        #[arg(long)]
        data_dir: PathBuf,
        /// The full `integrity_check` (also compares every index with its table; slower).
        #[arg(long)]
        full: bool,
    },
    /// Copies every row that can still be read out of each damaged file of a data dir into a
    /// fresh file, moves the damaged one aside (`<name>.damaged-<time>`) and says how many
    /// rows were saved and lost. Refused while a server holds the directory.
    Salvage {
        /// The data dir to salvage (instead of CARTSTREAM_DATA_DIR).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Every WebSocket client holds a file descriptor, and many systems start processes with a soft
/// limit of 1024. Raise it to the hard limit, which the operator controls (`ulimit -Hn`,
/// systemd's `LimitNOFILE`), so thousands of idle connections need no setup.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!(cause = %e, "cannot raise the open file limit"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cartstream: {e}");
            return ExitCode::from(2);
        }
    };
    // Built here rather than by `#[tokio::main]`: its thread count is a setting.
    match startup::runtime(&settings) {
        Ok(runtime) => runtime.block_on(serve(cli, settings)),
        Err(e) => {
            eprintln!("cartstream: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli, mut settings: Settings) -> ExitCode {
    cartstream::app::allocator::start();
    telemetry::init(&settings);
    match cli.command {
        Some(Command::Drain { data_dir, timeout }) => {
            settings.data_dir = data_dir;
            return run_drain(&settings, timeout).await;
        }
        Some(Command::MigrateClickhouse) => return migrate_clickhouse(&settings).await,
        Some(Command::Check { data_dir, full }) => return check(&data_dir, full),
        Some(Command::Salvage { data_dir }) => return salvage(&data_dir),
        None => {}
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

async fn run_drain(settings: &Settings, timeout: Duration) -> ExitCode {
    let dir = settings.data_dir.display();
    match drain::drain(settings, timeout).await {
        Ok(report) => {
            println!("cartstream drain {dir}:\n{report}");
            if report.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("cartstream drain {dir}: cannot drain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cartstream check`: each file's verdict; exits 1 when one is damaged or unreadable.
fn check(dir: &Path, full: bool) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("cartstream check: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    let depth = if full { Depth::Full } else { Depth::Quick };
    let checks = integrity::check(dir, depth);
    if checks.is_empty() {
        println!("{}: no local database files", dir.display());
    }
    let mut sound = true;
    for c in checks {
        let file = c.file.display();
        match c.verdict {
            Ok(Verdict::Ok) => match c.verified {
                Some(verified) => println!("{file}: ok ({verified})"),
                None => println!("{file}: ok"),
            },
            Ok(Verdict::Damaged(detail)) => {
                sound = false;
                println!(
                    "{file}: DAMAGED ({detail}); with the server stopped, run `cartstream \
                     salvage --data-dir {}`: it keeps every row that still reads and matches \
                     its checksum, leaves the others out and moves the damaged file aside \
                     (README: Damaged files)",
                    dir.display()
                );
            }
            Err(e) => {
                sound = false;
                println!("{file}: NOT CHECKED ({e})");
            }
        }
    }
    if sound {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `cartstream salvage`: what was saved, file by file.
fn salvage(dir: &Path) -> ExitCode {
    match integrity::salvage(dir) {
        Ok(report) => {
            print!("cartstream salvage {}:\n{report}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cartstream salvage {}: {e}", dir.display());
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

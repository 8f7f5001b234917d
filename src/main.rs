use cartstream::app::{config::Settings, drain, startup::Application, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of glibc's allocator: the ingest path allocates per event (JSON trees,
/// ids, rows) and glibc malloc/free were over a third of its CPU profile (BENCHMARKS.md).
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cartstream: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings);
    if let Some(Command::Drain { data_dir, timeout }) = cli.command {
        settings.data_dir = data_dir;
        return run_drain(&settings, timeout).await;
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

use cartstream::app::{config::Settings, startup::Application, telemetry};
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

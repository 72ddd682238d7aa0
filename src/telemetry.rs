//! Logging: a `tracing` subscriber writing to stderr (stdout carries only the `listening on`
//! line), filtered by `DPMS_LOG` or `RUST_LOG`.
//!
//! Lines are formatted on the thread that logs and written by a background thread through a
//! 64 KiB buffer that is flushed whenever the queue runs empty: under load a burst of lines
//! costs one `write`, idle lines appear at once. If more than 128k lines are queued (a disk
//! that stalls), further lines are dropped rather than stalling requests; a process that
//! crashes loses at most what was still queued.

use std::io::BufWriter;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Keeps the log writer thread; dropping it flushes what is queued.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Installs the subscriber once; later calls do nothing.
pub fn init(filter: &str) -> LogGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) =
        tracing_appender::non_blocking(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
    LogGuard(installed.is_ok().then_some(guard))
}

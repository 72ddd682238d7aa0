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

/// The log writer thread's guard: dropping it flushes what is queued.
static GUARD: std::sync::Mutex<Option<WorkerGuard>> = std::sync::Mutex::new(None);

/// Installs the subscriber once; later calls do nothing. Lines are queued until [`flush`].
pub fn init(filter: &str) {
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
    if installed.is_ok() {
        if let Ok(mut slot) = GUARD.lock() {
            *slot = Some(guard);
        }
    }
}

/// Writes out every queued line and stops the writer; call before `process::exit`, which runs
/// no destructors. Later lines are dropped.
pub fn flush() {
    let guard = GUARD.lock().ok().and_then(|mut g| g.take());
    drop(guard);
}

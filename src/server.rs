//! The accept loop: one hyper HTTP/1.1 connection task per socket, a cap on open connections,
//! and a graceful shutdown that stops accepting, lets in-flight requests finish for up to
//! `DPMS_SHUTDOWN_SECS`, then returns whatever is still running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::service::{handle, App};

/// The smallest header dpms counts against `DPMS_MAX_HEADERS`: name, value and 4 bytes of
/// framing (see `service::check_sizes`), with a one-byte name and an empty value.
const SMALLEST_HEADER: usize = 5;

/// The most request headers hyper is ever asked to take. Past its default of 100, hyper
/// allocates two arrays of 32-byte slots per request head (left unwritten until used).
/// Measured in isolation with mimalloc: ~0.1 µs per head up to 16,383 slots (just under
/// 512 KiB per array), ~1.5 µs from 16,384 on, where mimalloc's large-object path starts.
/// 16,000 covers the default `DPMS_MAX_HEADERS` exactly (65,536 bytes hold 13,107 headers).
const MAX_HEADER_COUNT: usize = 16_000;

/// hyper's limit on the number of request headers (its default, 100, is far fewer than
/// `DPMS_MAX_HEADERS` bytes hold): one more than the most headers a request within
/// `max_headers` bytes can carry, so a request hyper refuses for its count is over dpms's
/// limit too and every request within it gets dpms's JSON 431; at most [`MAX_HEADER_COUNT`]
/// (a request with more gets hyper's bare 431, logged by [`connection_failed`]).
fn max_header_count(max_headers: usize) -> usize {
    (max_headers / SMALLEST_HEADER + 1).min(MAX_HEADER_COUNT)
}

/// Logs why a connection ended in error. A request hyper's parser refused (conflicting
/// `Content-Length`s, an unknown `Transfer-Encoding`, HTTP/0.9, garbage) got hyper's own bare
/// 4xx and a closed connection: it gets one warning with the peer and the reason (SPEC §4).
/// Everything else (a client that went away, a slow client past `DPMS_HEADER_SECS`) is routine.
fn connection_failed(e: &hyper::Error, remote: std::net::SocketAddr) {
    if e.is_parse() {
        tracing::warn!(remote = %remote, cause = %e, "request refused by the HTTP parser");
    } else {
        tracing::debug!(remote = %remote, cause = %e, "connection ended with an error");
    }
}

/// Serves `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    // Open connections beyond the cap wait in the kernel's accept queue: memory stays bounded.
    let limit = Arc::new(Semaphore::new(app.config.max_connections));
    let header_time = app.config.header_time;
    let shutdown_time = app.config.shutdown_time;
    // hyper answers requests over its read buffer itself, with an empty body: keep its limit
    // well above dpms's own so the JSON 414/431 are what clients see.
    // Up to 512 KiB per connection, grown only when a client actually sends that much.
    let max_buf = ((app.config.max_uri + app.config.max_headers) * 2 + 16 * 1024).max(512 * 1024);
    let max_count = max_header_count(app.config.max_headers);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Running out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |req| {
            let app = Arc::clone(&app);
            async move { Ok::<_, std::convert::Infallible>(handle(app, req, remote).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_time)
            .max_buf_size(max_buf)
            .max_headers(max_count)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                connection_failed(&e, remote);
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(shutdown_time) => {
            tracing::warn!(secs = shutdown_time.as_secs(), "shutdown deadline reached; exiting with requests still running");
        }
    }
}

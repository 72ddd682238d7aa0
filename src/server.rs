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
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "connection ended with an error");
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

//! dpms — Dynamic Pluggable MicroServices: plain Python files served as REST endpoints.
//!
//! # Layout
//! - [`config`]: every setting, read from defaults, `.env`, the environment and flags.
//! - [`telemetry`]: the log subscriber.
//! - [`supervisor`]: `dpms serve`: the listener and the worker processes kept alive.
//! - [`state_dir`]: the supervisor's private shared state folder, stale ones removed; which
//!   worker logs a message shared by all.
//! - [`store`]: the tenant registry (SQLite in `DPMS_DATA_DIR`) and its cross-process change
//!   counter; the one place state shared between processes and restarts lives.
//! - [`tenancy`]: who may call what: the admin API (`/rest/admin/…`) over [`store`], and the
//!   token gate ([`tenancy::gate`]) on the request path.
//! - [`child`]: how this binary starts processes of itself (they die with the starting
//!   thread and inherit only the descriptors given).
//! - [`fork_guard`]: what processes forked by plugin code must not keep.
//! - [`ipc`]: the framed, typed channel between the host and its child processes.
//! - [`server`]: a worker's accept loop and graceful shutdown.
//! - [`service`]: the request pipeline, the one place its steps are put in order.
//! - [`router`]: the immutable route table, method sets, `__dir__`.
//! - [`jsonrpc`]: JSON-RPC 2.0 as plain data: requests and batches read and checked, errors
//!   mapped to its codes (the service's `rpc` front door runs the calls).
//! - [`local`]: plugins loaded as a worker loads them, without serving (`dpms routes`,
//!   `dpms check`).
//! - [`openapi`]: the OpenAPI 3.1 document of a route table (`/rest/openapi.json`; the
//!   service's `docs` front door serves it and the embedded Swagger UI at `/docs`).
//! - [`marshal`]: request → `(*args, **kwargs)` in plain Rust, signature binding.
//! - [`typed`]: typed parameters: annotations as plain data and the conversion of strings to
//!   what they ask for (400 `bad_argument_type`).
//! - [`metrics`]: `/metrics`: each worker's counters in a shared region of the state folder,
//!   summed over every worker when scraped.
//! - [`health`]: `/healthz` and `/readyz`: the readiness rules over facts the service gathers.
//! - [`response`]: JSON responses and error bodies.
//! - [`cors`]: `DPMS_CORS_ORIGINS`: CORS headers and preflight answers.
//! - [`request_id`]: the `X-Request-Id` kept from the client or made.
//! - [`error`]: the catalogue of client-visible errors.
//! - [`plugins`]: plugin files and packages, ownership ([`plugins::owner`]), loading,
//!   freshness (watches on every folder a plugin folder is reached through + the per-request
//!   check).
//! - [`exec`]: the boundary between the request pipeline and plugin code, plain data only:
//!   [`exec::outcome`] (what a call produced), [`exec::code`] (the opaque reference to loaded
//!   code), [`exec::load`] (what a load asks and returns, and the `Loader` both executors
//!   implement), [`exec::wire`] (the messages to a tenant's process) and [`exec::schedule`]
//!   (where an in-process call runs).
//! - [`pyhost`]: the embedded CPython, its threads, and every conversion across the boundary.
//! - [`sandboxed`]: the sandboxed executor: a tenant's process started, spoken to, killed.
//! - [`tenants`]: tenancy on the request path: who a uuid is (an exact in-memory copy of the
//!   registry), each active tenant's view of the modules and its process.
//! - [`tenant_proc`]: `dpms tenant-proc`, one tenant's sandboxed process serving loads and
//!   calls over its channel.
//! - [`zygote`]: the single-threaded pre-imported process that forks tenant processes.
//! - [`tokens`]: temporal single-use tokens (SPEC §12): the JWT format, minting, which stored
//!   key verifies what, and the replay ledger ([`tokens::ledger`]) shared by the workers.
//! - [`sandbox`]: the layers a tenant process enters (namespaces, rlimits, Landlock, seccomp) and
//!   the kernel probe for them.

pub mod child;
pub mod config;
pub mod cors;
pub mod error;
pub mod exec;
pub mod fork_guard;
pub mod health;
pub mod ipc;
pub mod jsonrpc;
pub mod local;
pub mod marshal;
pub mod metrics;
pub mod openapi;
pub mod plugins;
pub mod pyhost;
pub mod request_id;
pub mod response;
pub mod router;
pub mod sandbox;
pub mod sandboxed;
pub mod server;
pub mod service;
pub mod state_dir;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tenancy;
pub mod tenant_proc;
pub mod tenants;
pub mod tokens;
pub mod typed;
pub mod zygote;

use std::sync::Arc;

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Host(#[from] pyhost::HostError),
    #[error("cannot start the I/O thread: {0}")]
    Io(#[from] std::io::Error),
    #[error("the I/O thread panicked")]
    Panicked,
}

/// Runs one worker: starts Python on this thread (which then never runs Python again, so
/// no plugin code runs on the interpreter's main thread and `signal.signal` cannot steal
/// SIGTERM), loads the plugins and serves `listener` until `shutdown` resolves.
///
/// Requests are served by a single-threaded runtime on the `dpms-io` thread, which keeps a
/// permanent Python thread state so short plugin calls can run inline (see
/// `exec::schedule`). `on_ready` runs once the plugins are loaded, before the first
/// connection is accepted; `worker` is sent as `X-Dpms-Worker`. `on_retire` tells the
/// supervisor to start a replacement when code stuck past its deadline retires this worker
/// (see `pyhost::Watchdog`); the worker then shuts down as on `shutdown`.
pub fn run(
    config: config::Config,
    worker: usize,
    listener: std::net::TcpListener,
    on_ready: impl FnOnce() + Send + 'static,
    on_retire: Option<supervisor::RetireNotice>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    if let Some(bytes) = config.worker_memory {
        limit_address_space(bytes)?;
    }
    // Before any plugin code runs: a child it forks must not keep the port.
    fork_guard::install(&listener);
    let config = Arc::new(config);
    // The admin API's registry. One that does not open is logged and left out: the admin API
    // then answers 503 (fail closed) while the plugins are served as usual.
    let store = config.admin_id.and_then(|_| match store::Registry::open(&config.data_dir) {
        Ok(registry) => Some(Arc::new(registry)),
        Err(e) => {
            tracing::error!(cause = %e, "tenant registry unavailable: the admin API answers 503");
            None
        }
    });
    let host = Arc::new(pyhost::PyHost::start(&config, worker)?);
    let retired = Arc::new(tokio::sync::Notify::new());
    if let Some(notify_supervisor) = on_retire {
        let retired = Arc::clone(&retired);
        let grace = config.shutdown_time;
        host.on_retire(Box::new(move |reason| {
            notify_supervisor(&reason);
            retired.notify_one();
            // The I/O thread itself may be the one stuck: exit after the grace period whatever
            // the drain achieved.
            let _ = std::thread::Builder::new()
                .name("dpms-retire".into())
                .spawn(move || {
                    std::thread::sleep(grace + std::time::Duration::from_secs(1));
                    tracing::warn!("retired worker exiting with requests still running");
                    telemetry::flush();
                    std::process::exit(0);
                });
        }));
    }
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = retired.notified() => {}
        }
    };
    let io = std::thread::Builder::new()
        .name("dpms-io".into())
        .spawn(move || {
            let io_host = Arc::clone(&host);
            io_host.with_thread_state(move || -> Result<(), std::io::Error> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    // Out of work: hand the access lines gathered so far to the log writer.
                    .on_thread_park(telemetry::flush_access)
                    .build()?;
                runtime.block_on(async move {
                    listener.set_nonblocking(true)?;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let scope = if config.multi_tenant {
                        plugins::owner::Scope::Admin(config.admin_id)
                    } else {
                        plugins::owner::Scope::All
                    };
                    let loader = Arc::clone(&host) as Arc<dyn exec::Loader>;
                    let registry =
                        plugins::Registry::start(Arc::clone(&config), loader, scope).await;
                    log_summary(&config, &registry);
                    on_ready();
                    let mut app = service::App::new(
                        Arc::clone(&config),
                        registry,
                        host,
                        store.clone(),
                        worker,
                    );
                    if config.admin_id.is_some() {
                        let gate = tenancy::gate::Gate::new(&config, store.clone());
                        app = app.with_gate(Arc::new(gate));
                    }
                    if config.multi_tenant {
                        app = app.with_tenancy(tenants::Tenants::new(Arc::clone(&config), store));
                    }
                    let app = Arc::new(app);
                    server::serve(listener, app, shutdown).await;
                    Ok(())
                })
            })
        })?;
    io.join().map_err(|_| RunError::Panicked)??;
    Ok(())
}

/// `DPMS_WORKER_MEMORY`: past this much address space, allocations fail — in Python as a
/// `MemoryError` the plugin's caller sees as a 500; an allocation that fails in Rust aborts the
/// worker, which the supervisor replaces.
fn limit_address_space(bytes: u64) -> Result<(), RunError> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(RunError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The start-up summary: folders, modules, endpoints, import errors.
fn log_summary(config: &config::Config, registry: &plugins::Registry) {
    if !state_dir::first_to_log(config.state_dir.as_deref(), "startup summary") {
        return;
    }
    let snap = registry.current();
    let modules = snap.table.modules();
    let endpoints: usize = modules.iter().map(|m| m.endpoints.len()).sum();
    let folders: Vec<String> = config
        .plugin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    tracing::info!(folders = ?folders, modules = modules.len(), endpoints, reload = ?config.reload, "plugins ready");
    for m in modules {
        let apis: Vec<String> = m
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.methods
                        .iter()
                        .map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("|"),
                    e.api
                )
            })
            .collect();
        tracing::info!(module = %m.name, alias = m.alias.as_deref().unwrap_or("-"), endpoints = ?apis, "module");
    }
    for p in snap.table.problems() {
        tracing::warn!(file = %p.key, status = p.status, error = %p.error, "plugin not served");
    }
}

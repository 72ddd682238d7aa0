//! `PyHost`: the embedded CPython and the only module tree that imports pyo3.
//!
//! The interpreter is started once with an explicit, isolated `PyConfig` whose home is the
//! prefix of `/usr/bin/python3.11` (SPEC §10: otherwise it finds its home through `PATH`).
//! Python code runs only on dedicated OS threads that attach once and detach while they wait
//! for a job ([`worker`]); the async side sends jobs over a channel and awaits a oneshot. Every
//! plugin call goes through [`PyHost::call`], the one narrow boundary later scheduling work
//! (worker processes, inline fast path) will change.

mod convert;
mod keys;
mod request;

mod watchdog;
mod worker;

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::oneshot;

pub use crate::exec::{Description, EndpointDescription, FinderEntry, LoadRequest, Loaded, Report};
pub use request::RequestInfo;

use watchdog::Call;
pub use watchdog::{RetireHook, Watchdog};

use crate::config::Config;
use crate::marshal::CallArgs;
use crate::router::Module;

/// The interpreter dpms embeds and the prefix it runs from (checked by `build.rs`).
pub const PYTHON_EXE: &CStr = c"/usr/bin/python3.11";
const PYTHON_HOME: &CStr = c"/usr";

/// The helper module, compiled into the binary so it cannot drift from the Rust that calls it.
const HOST_SOURCE: &str = include_str!("../../python/dpms/_host.py");

/// The packages plugin authors import, bundled so the binary works outside the source tree:
/// `(module name, is package, file name, source)`, in the order they must execute.
const PACKAGES: &[(&str, bool, &str, &str)] = &[
    (
        "dpms.expose",
        false,
        "dpms/expose.py",
        include_str!("../../python/dpms/expose.py"),
    ),
    (
        "dpms.response",
        false,
        "dpms/response.py",
        include_str!("../../python/dpms/response.py"),
    ),
    (
        "dpms.upload",
        false,
        "dpms/upload.py",
        include_str!("../../python/dpms/upload.py"),
    ),
    (
        "dpms",
        true,
        "dpms/__init__.py",
        include_str!("../../python/dpms/__init__.py"),
    ),
    (
        "vyperlogix",
        true,
        "vyperlogix/__init__.py",
        include_str!("../../python/vyperlogix/__init__.py"),
    ),
    (
        "vyperlogix.decorators",
        true,
        "vyperlogix/decorators/__init__.py",
        include_str!("../../python/vyperlogix/decorators/__init__.py"),
    ),
];

/// Failures starting Python.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot start the embedded Python (`/usr/bin/python3.11`): {0}")]
    Init(String),
    #[error("the dpms Python helper failed to start: {0}")]
    Setup(String),
}

/// The loaded Python objects of one module: the module and its endpoint functions.
#[derive(Debug)]
pub struct ModuleHandle {
    #[allow(dead_code)] // kept alive so the module's globals live as long as its routes
    module: Py<PyAny>,
    funcs: Vec<Py<PyAny>>,
    /// What typed parameters are finished by (`uuid.UUID`, an Enum's lookup…), by index.
    converters: Vec<Py<PyAny>>,
}

pub use crate::exec::{CallFailure, CallResult, Outcome};

/// A call's result, or where it will arrive.
pub enum Dispatch {
    Done(CallResult),
    Pending(oneshot::Receiver<CallResult>, Interrupt),
}

/// Stops a call that ran past its deadline.
pub enum Interrupt {
    /// A call in this process's interpreter.
    Watchdog {
        call: Arc<Call>,
        watchdog: Arc<Watchdog>,
    },
    /// A call in another process, which is stopped by killing that process.
    Kill(Arc<dyn Fn() + Send + Sync>),
}

impl Interrupt {
    /// In this process: hands the call to the watchdog, which raises `CallTimeout` inside
    /// the Python thread still running it, so a pure-Python runaway loop stops burning CPU and
    /// frees its thread; gives the thread up if the call is blocked outside Python, and
    /// retires the worker if it is stuck in C holding the GIL. In a tenant's process: kills
    /// it (with its pid namespace). Never blocks.
    pub fn interrupt(&self) {
        match self {
            Interrupt::Watchdog { call, watchdog } => watchdog.abandon(Arc::clone(call)),
            Interrupt::Kill(kill) => kill(),
        }
    }
}

/// The embedded interpreter and its threads.
pub struct PyHost {
    queues: worker::Queues,
    watchdog: Arc<Watchdog>,
    call_time: std::time::Duration,
    /// Numbers the calls (their coroutines are cancelled by number).
    next_call: std::sync::atomic::AtomicU64,
}

impl PyHost {
    /// Starts Python (once per process), installs the bundled packages and the helper, and
    /// starts `config.py_threads` Python threads.
    /// `worker` is this worker's index (it names its import marker in the shared state folder).
    pub fn start(config: &Config, worker: usize) -> Result<PyHost, HostError> {
        init_interpreter()?;
        let extra_paths = venv_site_packages(config);
        let watchdog = Watchdog::start(
            config.load_time,
            config.max_function_time,
            config.state_dir.as_deref().map(|dir| (dir, worker)),
        );
        Python::attach(|py| setup(py, config, &extra_paths, &watchdog))
            .map_err(HostError::Setup)?;
        let queues = worker::spawn(config.py_threads, config.max_queued, &watchdog);
        Ok(PyHost {
            queues,
            watchdog,
            call_time: config.max_function_time,
            next_call: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// What to do when code stuck past its deadline means this worker must be replaced.
    pub fn on_retire(&self, hook: RetireHook) {
        self.watchdog.on_retire(hook);
    }

    /// Runs one plugin call, inline on this thread if its endpoint is known to be short,
    /// otherwise on a Python thread of the pool (see [`crate::exec::schedule`]). The caller applies the
    /// deadline to a pending call.
    pub fn call(
        &self,
        module: Arc<Module>,
        endpoint: usize,
        args: CallArgs,
        request: Arc<RequestInfo>,
    ) -> Dispatch {
        let (reply, mut rx) = oneshot::channel();
        let call = Arc::new(Call::new(
            self.next_call
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ));
        let inline = module
            .endpoints
            .get(endpoint)
            .is_some_and(|e| e.schedule.inline());
        if inline {
            self.watchdog.inline_waiting();
            let took = Python::attach(|py| {
                self.watchdog.inline_started();
                let took = worker::invoke(py, &module, endpoint, &args, request, reply, &call);
                self.watchdog.inline_finished();
                if took > self.call_time {
                    self.watchdog.clear_interrupt(py);
                }
                took
            });
            if let Some(e) = module.endpoints.get(endpoint) {
                e.schedule.record(true, took);
            }
            return match rx.try_recv() {
                // The watchdog stopped it at the deadline (or it just ran that long).
                Ok(_) if took > self.call_time => Dispatch::Done(Err(CallFailure::TimedOut)),
                Ok(result) => Dispatch::Done(result),
                // A coroutine: the interrupt cancels it on the event loop.
                Err(_) => Dispatch::Pending(rx, self.interrupt(call)),
            };
        }
        let job = worker::Job::Call(worker::CallJob {
            module,
            endpoint,
            args,
            request,
            reply,
            call: Arc::clone(&call),
        });
        match self.queues.calls.try_send(job) {
            Ok(()) => Dispatch::Pending(rx, self.interrupt(call)),
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                Dispatch::Done(Err(CallFailure::Overloaded))
            }
            // Every Python thread is gone.
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Dispatch::Done(Err(
                CallFailure::Internal("no Python thread is running".into()),
            )),
        }
    }

    fn interrupt(&self, call: Arc<Call>) -> Interrupt {
        Interrupt::Watchdog {
            call,
            watchdog: Arc::clone(&self.watchdog),
        }
    }

    /// Runs `f` on this thread (the I/O thread) with a permanent Python thread state,
    /// detached: calls made inline from it then only take the GIL, they never create a thread
    /// state.
    pub fn with_thread_state<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        Python::attach(|py| {
            self.watchdog.set_io_thread();
            py.detach(f)
        })
    }

    /// Imports a batch of files afresh (see `_host.load_batch`). `files` is the complete
    /// stem → path map of the plugin folders when it changed; `forget` lists modules whose
    /// files are gone.
    pub async fn load(
        &self,
        files: Option<Vec<FinderEntry>>,
        forget: Vec<String>,
        requests: Vec<LoadRequest>,
    ) -> crate::exec::load::LoadResult {
        let (reply, rx) = oneshot::channel();
        let job = worker::Job::Load {
            files,
            forget,
            requests,
            reply,
        };
        self.queues
            .loads
            .send(job)
            .map_err(|_| "no Python thread is running".to_string())?;
        rx.await
            .map_err(|_| "the Python thread loading plugins stopped".to_string())?
    }
}

/// Whether this process (or the zygote it was forked from) has run `install_packages`.
static PACKAGES_INSTALLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The standard modules tenant plugins commonly import, imported once in the zygote so every
/// tenant process starts with them loaded (and shares their pages with the zygote).
const ZYGOTE_IMPORTS: &str =
    "import json, re, datetime, collections, typing, decimal, uuid, hashlib, base64, \
math, random, time, os, sys, functools, itertools, inspect, traceback, dataclasses, enum, \
string, struct, copy, io, textwrap, urllib.parse, asyncio, threading, types, importlib, \
importlib.abc, importlib.machinery, sqlite3, csv, statistics, fractions, operator, pathlib\n";

/// Readies this single-threaded process to be a zygote: the interpreter started, the dpms
/// packages and the common standard modules imported, everything frozen out of the cyclic
/// GC (a fork then copies fewer pages when the GC would have touched them).
pub fn zygote_prepare() -> Result<(), HostError> {
    init_interpreter()?;
    Python::attach(|py| -> PyResult<()> {
        let host = host_module(py)?;
        host.call_method1("install_packages", (PACKAGES.to_vec(),))?;
        PACKAGES_INSTALLED.store(true, std::sync::atomic::Ordering::Release);
        let code = std::ffi::CString::new(ZYGOTE_IMPORTS)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        py.run(&code, None, None)?;
        py.import("gc")?.call_method0("freeze")?;
        Ok(())
    })
    .map_err(|e| HostError::Setup(e.to_string()))
}

/// Makes `os.environ` exactly `env` (and the C environment with it). A process forked from
/// the zygote inherits the zygote's `os.environ`, which Python read once when it started.
pub fn replace_environ(env: &[(String, String)]) -> Result<(), HostError> {
    init_interpreter()?;
    Python::attach(|py| -> PyResult<()> {
        let environ = py.import("os")?.getattr("environ")?;
        environ.call_method0("clear")?;
        for (key, value) in env {
            environ.set_item(key, value)?;
        }
        Ok(())
    })
    .map_err(|e| HostError::Setup(e.to_string()))
}

/// Forks this single-threaded process with the interpreter's fork protocol (its locks held
/// across the fork, its state reset in the child). Returns the child's pid in the parent and
/// 0 in the child, which may then use Python as usual.
pub fn fork_with_python() -> std::io::Result<libc::pid_t> {
    use pyo3::ffi;
    // SAFETY: the caller is single-threaded (the zygote), so no other thread holds the GIL or
    // any lock; PyGILState_Ensure attaches this (main) thread's own state, BeforeFork takes
    // the interpreter's locks and AfterFork_* releases or resets them on each side.
    unsafe {
        let gil = ffi::PyGILState_Ensure();
        ffi::PyOS_BeforeFork();
        let pid = libc::fork();
        if pid == 0 {
            ffi::PyOS_AfterFork_Child();
        } else {
            ffi::PyOS_AfterFork_Parent();
        }
        ffi::PyGILState_Release(gil);
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(pid)
    }
}

/// Starts the interpreter with an isolated configuration: no environment variables (so neither
/// `PYTHONPATH` nor an activated venv can swap the standard library), no signal handlers (tokio
/// owns SIGINT/SIGTERM), no bytecode writing. Leaves the GIL released.
fn init_interpreter() -> Result<(), HostError> {
    use pyo3::ffi;
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        // SAFETY: runs once per process (OnceLock) before any other use of the C API; the
        // config is initialised by CPython before it is read and cleared after use.
        unsafe {
            if ffi::Py_IsInitialized() != 0 {
                return Ok(());
            }
            let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
            ffi::PyConfig_InitIsolatedConfig(config.as_mut_ptr());
            let mut config = config.assume_init();
            config.install_signal_handlers = 0;
            config.write_bytecode = 0;
            config.user_site_directory = 0;
            let checks = [
                ffi::PyConfig_SetBytesString(&mut config, &mut config.home, PYTHON_HOME.as_ptr()),
                ffi::PyConfig_SetBytesString(
                    &mut config,
                    &mut config.program_name,
                    PYTHON_EXE.as_ptr(),
                ),
            ];
            for status in checks {
                if ffi::PyStatus_Exception(status) != 0 {
                    ffi::PyConfig_Clear(&mut config);
                    return Err(status_message(&status));
                }
            }
            let status = ffi::Py_InitializeFromConfig(&config);
            ffi::PyConfig_Clear(&mut config);
            if ffi::PyStatus_Exception(status) != 0 {
                return Err(status_message(&status));
            }
            // Release the GIL this thread holds after initialisation: Python runs on our threads.
            ffi::PyEval_SaveThread();
        }
        Ok(())
    });
    started.clone().map_err(HostError::Init)
}

fn status_message(status: &pyo3::ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return "unknown error".into();
    }
    // SAFETY: CPython sets err_msg to a static NUL-terminated string.
    unsafe { CStr::from_ptr(status.err_msg) }
        .to_string_lossy()
        .into_owned()
}

/// `<venv>/lib/python3.11/site-packages`, if `DPMS_VENV`/`VIRTUAL_ENV` names a 3.11 venv.
fn venv_site_packages(config: &Config) -> Vec<String> {
    let Some(venv) = &config.venv else {
        return Vec::new();
    };
    let site: PathBuf = venv.join("lib/python3.11/site-packages");
    if site.is_dir() {
        vec![site.display().to_string()]
    } else {
        tracing::warn!(venv = %venv.display(), "ignoring the virtual environment: it has no lib/python3.11/site-packages");
        Vec::new()
    }
}

/// The `_host` helper module, loaded once per interpreter.
static HOST: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn host_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    HOST.get_or_try_init(py, || {
        let source = std::ffi::CString::new(HOST_SOURCE)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        let host = PyModule::from_code(py, &source, c"dpms/_host.py", c"dpms._host")?;
        // Ours alone: a plugin cannot `import dpms._host` and replace what the server calls.
        py.import("sys")?
            .getattr("modules")?
            .del_item("dpms._host")?;
        Ok(host.unbind())
    })
    .map(|m| m.bind(py))
}

fn setup(
    py: Python<'_>,
    config: &Config,
    extra_paths: &[String],
    watchdog: &Arc<Watchdog>,
) -> Result<(), String> {
    let run = || -> PyResult<()> {
        let host = host_module(py)?;
        // A tenant process forked from the zygote has them already (2 ms of its cold start).
        if !PACKAGES_INSTALLED.swap(true, std::sync::atomic::Ordering::AcqRel) {
            host.call_method1("install_packages", (PACKAGES.to_vec(),))?;
        }
        let dirs: Vec<String> = config
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let native = Py::new(
            py,
            worker::Native {
                watchdog: Arc::clone(watchdog),
            },
        )?;
        watchdog.set_exceptions(
            host.getattr("ImportTimeout")?.unbind(),
            host.getattr("CallTimeout")?.unbind(),
        );
        host.call_method1(
            "setup",
            (native, dirs, extra_paths.to_vec(), config.extra_env.clone()),
        )?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

impl crate::exec::Loader for PyHost {
    fn load(
        &self,
        files: Option<Vec<FinderEntry>>,
        forget: Vec<String>,
        requests: Vec<LoadRequest>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = crate::exec::load::LoadResult> + Send + '_>,
    > {
        Box::pin(PyHost::load(self, files, forget, requests))
    }
}

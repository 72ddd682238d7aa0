//! The Python threads. Each attaches to the interpreter once, for its whole life, and detaches
//! while it waits for the next job (SPEC §10, "Thread states"): no thread state is created per
//! call and `threading.local` survives. A call that blocks (`time.sleep`, I/O) holds only its
//! own thread; a coroutine is handed to the helper's asyncio loop and the thread moves on.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use tokio::sync::oneshot;

use super::convert::{arg_to_py, to_py, write_json};
use super::keys::Keys;
use super::request::{PyRequest, RequestInfo};
use super::watchdog::{Call, Watchdog};
use super::{
    host_module, CallFailure, CallResult, LoadRequest, Loaded, ModuleHandle, Outcome, Report,
};
use crate::marshal::CallArgs;
use crate::request_id::RequestId;
use crate::router::Module;

/// Work for a Python thread.
pub enum Job {
    Call(CallJob),
    Load {
        files: Option<Vec<crate::exec::FinderEntry>>,
        forget: Vec<String>,
        requests: Vec<LoadRequest>,
        reply: oneshot::Sender<Result<Vec<Loaded>, String>>,
    },
}

pub struct CallJob {
    pub module: Arc<Module>,
    pub endpoint: usize,
    pub args: CallArgs,
    pub request: Arc<RequestInfo>,
    pub reply: oneshot::Sender<CallResult>,
    /// Shared with the request and the watchdog (see [`super::Interrupt`]).
    pub call: Arc<Call>,
}

thread_local! {
    /// The module whose code this thread is running and the request it runs for, to tag
    /// captured `print` output.
    static CURRENT_MODULE: RefCell<Option<(Arc<Module>, RequestId)>> = const { RefCell::new(None) };
    /// Whether this thread's captured streams may hold a line printed without its newline.
    static PARTIAL_OUTPUT: Cell<bool> = const { Cell::new(false) };
}

/// Logs what this thread printed without a final newline, while the job that printed it is
/// still the current one (SPEC §6): otherwise it would be logged with the next job's line.
/// Costs nothing when nothing is pending.
fn drain_output(py: Python<'_>) {
    if PARTIAL_OUTPUT.with(|p| p.replace(false)) {
        let drained = host_module(py).and_then(|h| h.call_method0(intern!(py, "drain_output")));
        if let Err(e) = drained {
            tracing::warn!(cause = %e, "cannot log a plugin's unfinished output line");
        }
    }
}

/// Starts `count` Python threads. Calls wait in a queue of at most `max_queued` (a full queue
/// is the caller's 503); loads have their own unbounded queue and are taken first. The
/// watchdog can add a thread in place of one it gave up on (see [`Watchdog::set_pool`]).
pub fn spawn(count: usize, max_queued: usize, watchdog: &Arc<Watchdog>) -> Queues {
    let (calls, call_rx) = crossbeam_channel::bounded::<Job>(max_queued);
    let (loads, load_rx) = crossbeam_channel::unbounded::<Job>();
    let pool = Arc::new(Pool {
        calls: call_rx,
        loads: load_rx,
        watchdog: Arc::clone(watchdog),
        started: AtomicUsize::new(0),
    });
    for _ in 0..count {
        add_thread(&pool);
    }
    // Weak: the threads keep the pool alive, not the watchdog.
    let weak = Arc::downgrade(&pool);
    watchdog.set_pool(
        Box::new(move || {
            if let Some(pool) = weak.upgrade() {
                add_thread(&pool);
            }
        }),
        count,
    );
    Queues { calls, loads }
}

/// What every Python thread of the pool shares.
struct Pool {
    calls: crossbeam_channel::Receiver<Job>,
    loads: crossbeam_channel::Receiver<Job>,
    watchdog: Arc<Watchdog>,
    /// Threads started so far (names them).
    started: AtomicUsize,
}

fn add_thread(pool: &Arc<Pool>) {
    let i = pool.started.fetch_add(1, Ordering::Relaxed);
    let pool = Arc::clone(pool);
    let spawned = std::thread::Builder::new()
        .name(format!("dpms-py-{i}"))
        .spawn(move || thread_main(&pool));
    if let Err(e) = spawned {
        tracing::error!(cause = %e, "cannot start a Python thread");
    }
}

/// The two job queues of the Python threads.
pub struct Queues {
    pub calls: crossbeam_channel::Sender<Job>,
    pub loads: crossbeam_channel::Sender<Job>,
}

fn thread_main(pool: &Pool) {
    let (calls, loads, watchdog) = (&pool.calls, &pool.loads, &pool.watchdog);
    Python::attach(|py| loop {
        let next = py.detach(|| {
            if let Ok(job) = loads.try_recv() {
                return Ok(job);
            }
            crossbeam_channel::select! {
                recv(loads) -> job => job,
                recv(calls) -> job => job,
            }
        });
        let Ok(job) = next else {
            return;
        };
        // A panic in one job must not shrink the pool: the job's reply is dropped, which its
        // caller reports as an internal error.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match job {
            Job::Call(call) => run_call(py, call, watchdog),
            Job::Load {
                files,
                forget,
                requests,
                reply,
            } => {
                let _ = reply.send(
                    run_load(py, files, forget, requests, watchdog).map_err(|e| e.to_string()),
                );
                false
            }
        }));
        // After a load (a call drained already): tagged with the module that printed.
        drain_output(py);
        CURRENT_MODULE.with(|m| m.borrow_mut().take());
        match outcome {
            Err(_) => tracing::error!("a Python thread job panicked"),
            // The watchdog gave this thread up while its call was blocked; its replacement
            // serves the pool.
            Ok(true) => {
                watchdog.given_up_thread_exits();
                tracing::info!("a call given up past MAX_FUNCTION_SECS returned; its thread exits");
                return;
            }
            Ok(false) => {}
        }
    });
}

/// Runs one call; true if this thread was given up meanwhile and must exit.
fn run_call(py: Python<'_>, job: CallJob, watchdog: &Watchdog) -> bool {
    let CallJob {
        module,
        endpoint,
        args,
        request,
        reply,
        call,
    } = job;
    // Set and cleared with the GIL held, like the interrupt reads it: no interrupt can land
    // after this call returned.
    call.started();
    let took = invoke(py, &module, endpoint, &args, request, reply, &call);
    let given_up = call.finished();
    if call.abandoned() {
        watchdog.clear_interrupt(py);
    }
    if let Some(e) = module.endpoints.get(endpoint) {
        e.schedule.record(false, took);
    }
    given_up
}

/// Calls the endpoint and sends its outcome on `reply` — now, or when its coroutine finishes.
/// Returns how long the Python part took (the call and the result conversion).
pub fn invoke(
    py: Python<'_>,
    module: &Arc<Module>,
    endpoint: usize,
    args: &CallArgs,
    request: Arc<RequestInfo>,
    reply: oneshot::Sender<CallResult>,
    call: &Call,
) -> Duration {
    let started = Instant::now();
    let spec = module.endpoints.get(endpoint);
    let func = module
        .code
        .as_ref()
        .and_then(|code| code.get::<ModuleHandle>())
        .zip(spec)
        .and_then(|(handle, e)| handle.funcs.get(e.index).map(|f| (f, &handle.converters)));
    let (Some((func, converters)), Some(spec)) = (func, spec) else {
        let _ = reply.send(Err(CallFailure::Internal(format!(
            "module `{}` has no loaded code for endpoint {endpoint}",
            module.name
        ))));
        return started.elapsed();
    };
    let prefix = spec.envelope_prefix.clone();
    CURRENT_MODULE.with(|m| *m.borrow_mut() = Some((Arc::clone(module), request.id.clone())));
    let called = build_args(py, args, request, converters)
        .and_then(|(a, kw)| func.bind(py).call(a, Some(&kw)));
    match called {
        Ok(value) if needs_await(py, &value) => {
            if call.submitting() {
                if let Err(e) = submit(py, value, prefix, reply, call.id()) {
                    tracing::error!(cause = %e, "cannot schedule a coroutine");
                }
            } else if let Ok(close) = value.getattr(intern!(py, "close")) {
                // Past its deadline before it started: never run (and no "never awaited").
                let _ = close.call0();
            }
        }
        Ok(value) => {
            let _ = reply.send(outcome(py, &value, &prefix));
        }
        Err(err) => {
            let _ = reply.send(Err(raised(
                py,
                err.into_value(py).into_bound(py).into_any(),
            )));
        }
    }
    drain_output(py);
    CURRENT_MODULE.with(|m| m.borrow_mut().take());
    started.elapsed()
}

fn build_args<'py>(
    py: Python<'py>,
    args: &CallArgs,
    request: Arc<RequestInfo>,
    converters: &[Py<PyAny>],
) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
    let positional = args
        .args
        .iter()
        .map(|v| to_py(py, v))
        .collect::<PyResult<Vec<_>>>()?;
    let tuple = PyTuple::new(py, positional)?;
    let kwargs = PyDict::new(py);
    let mut keys = Keys::lock();
    for (k, v) in &args.kwargs {
        kwargs.set_item(keys.get(py, k), arg_to_py(py, v, converters)?)?;
    }
    drop(keys);
    if args.pass_request {
        kwargs.set_item(
            intern!(py, "__request__"),
            Py::new(py, PyRequest::new(request))?,
        )?;
    }
    Ok((tuple, kwargs))
}

/// Whether a result must be awaited (an `async def` endpoint, or one returning an awaitable).
/// The common result types answer without a Python call.
fn needs_await(py: Python<'_>, value: &Bound<'_, PyAny>) -> bool {
    if value.is_exact_instance_of::<PyDict>()
        || value.is_exact_instance_of::<PyList>()
        || value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyTuple>()
        || value.is_none()
    {
        return false;
    }
    static IS_AWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    IS_AWAITABLE
        .import(py, "inspect", "isawaitable")
        .and_then(|f| f.call1((value,)))
        .and_then(|r| r.is_truthy())
        .unwrap_or(false)
}

/// Converts a plugin's return value into an [`Outcome`]: a JSON result is written by the Rust
/// walk straight after the endpoint's envelope `prefix`, so the buffer is the response body.
fn outcome(py: Python<'_>, value: &Bound<'_, PyAny>, prefix: &[u8]) -> CallResult {
    static RESPONSE: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
    let is_response = RESPONSE
        .import(py, "dpms", "Response")
        .is_ok_and(|t| value.is_instance(t).unwrap_or(false));
    if is_response {
        return custom_response(py, value);
    }
    let mut out = Vec::with_capacity(prefix.len() + 512);
    out.extend_from_slice(prefix);
    write_json(py, value, &mut out).map_err(|e| CallFailure::Unserializable(e.0))?;
    out.extend_from_slice(b"}}");
    Ok(Outcome::Json(out))
}

/// A `dpms.Response`: status, headers and body as the plugin chose them. dpms owns the
/// framing (SPEC §6): a status outside 200–599 or a header that is not valid is the plugin's
/// error, never a bare or mis-framed answer.
fn custom_response(py: Python<'_>, value: &Bound<'_, PyAny>) -> CallResult {
    let bad = |what: String| CallFailure::Raised {
        exception: format!("ValueError: dpms.Response {what}"),
        traceback: String::new(),
    };
    let status: u16 = value
        .getattr(intern!(py, "status"))
        .and_then(|s| s.extract())
        .map_err(|_| bad("status must be an integer from 200 to 599".into()))?;
    if !(200..=599).contains(&status) {
        return Err(bad(format!(
            "status {status} is outside 200-599 (1xx answers are the server's own)"
        )));
    }
    const HEADERS_SHAPE: &str = "headers must be a mapping or a list of (name, value) pairs";
    let mut headers = Vec::new();
    if let Ok(h) = value.getattr(intern!(py, "headers")) {
        let pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = if h.is_none() {
            Vec::new()
        } else if let Ok(d) = h.cast::<PyDict>() {
            d.iter().collect()
        } else {
            let iter = h.try_iter().map_err(|_| bad(HEADERS_SHAPE.into()))?;
            let mut pairs = Vec::new();
            for item in iter {
                let pair = item
                    .and_then(|i| i.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>())
                    .map_err(|_| bad(HEADERS_SHAPE.into()))?;
                pairs.push(pair);
            }
            pairs
        };
        for (k, v) in pairs {
            let k = k
                .str()
                .map_err(|_| bad("header names must be strings".into()))?
                .to_string_lossy()
                .into_owned();
            let v = v
                .str()
                .map_err(|_| bad("header values must be strings".into()))?
                .to_string_lossy()
                .into_owned();
            let name = hyper::header::HeaderName::try_from(k.as_str())
                .map_err(|_| bad(format!("header name {k:?} is not a valid header name")))?;
            hyper::header::HeaderValue::from_str(&v).map_err(|_| {
                bad(format!(
                    "header {k:?} has a value that is not valid (control characters such as CR/LF)"
                ))
            })?;
            headers.push((name.as_str().to_string(), v));
        }
    }
    let content_type: Option<String> = value
        .getattr(intern!(py, "content_type"))
        .ok()
        .and_then(|c| c.extract().ok());
    let body = value
        .getattr(intern!(py, "body"))
        .map_err(|_| bad("has no body".into()))?;
    let (body, default_type) = if body.is_none() {
        (Vec::new(), "application/json; charset=utf-8")
    } else if let Ok(s) = body.cast::<PyString>() {
        (
            s.to_string_lossy().into_owned().into_bytes(),
            "text/plain; charset=utf-8",
        )
    } else if let Ok(b) = body.cast::<PyBytes>() {
        (b.as_bytes().to_vec(), "application/octet-stream")
    } else {
        let mut out = Vec::new();
        write_json(py, &body, &mut out).map_err(|e| CallFailure::Unserializable(e.0))?;
        (out, "application/json; charset=utf-8")
    };
    Ok(Outcome::Custom {
        status,
        headers,
        content_type: content_type.unwrap_or_else(|| default_type.to_string()),
        body,
    })
}

/// A raised exception as the client and the log see it.
fn raised(py: Python<'_>, exc: Bound<'_, PyAny>) -> CallFailure {
    let line = host_module(py)
        .and_then(|h| h.call_method1(intern!(py, "exception_line"), (&exc,)))
        .and_then(|s| s.extract::<String>());
    let text = host_module(py)
        .and_then(|h| h.call_method1(intern!(py, "exception_text"), (&exc,)))
        .and_then(|s| s.extract::<String>());
    match (line, text) {
        (Ok(exception), Ok(traceback)) => CallFailure::Raised {
            exception,
            traceback,
        },
        (line, _) => CallFailure::Internal(format!("cannot format a plugin exception: {line:?}")),
    }
}

/// Hands an awaitable to the helper's event loop; [`Completion`] replies when it finishes.
fn submit(
    py: Python<'_>,
    awaitable: Bound<'_, PyAny>,
    prefix: Bytes,
    reply: oneshot::Sender<CallResult>,
    id: u64,
) -> PyResult<()> {
    let completion = Py::new(
        py,
        Completion {
            prefix,
            reply: Mutex::new(Some(reply)),
        },
    )?;
    host_module(py)?.call_method1(intern!(py, "submit"), (awaitable, completion, id))?;
    Ok(())
}

/// Called by the helper on the event loop's thread with `(ok, value)` when a coroutine ends.
#[pyclass(frozen)]
struct Completion {
    /// The endpoint's envelope prefix (see [`outcome`]).
    prefix: Bytes,
    reply: Mutex<Option<oneshot::Sender<CallResult>>>,
}

#[pymethods]
impl Completion {
    fn __call__(&self, py: Python<'_>, ok: bool, value: Bound<'_, PyAny>) {
        let result = if ok {
            outcome(py, &value, &self.prefix)
        } else {
            Err(raised(py, value))
        };
        // The event loop's thread: a coroutine's unfinished line ends with it.
        drain_output(py);
        let sender = self.reply.lock().ok().and_then(|mut r| r.take());
        if let Some(sender) = sender {
            let _ = sender.send(result);
        }
    }
}

/// What `_host.load_batch` returns per module: its description, endpoint functions, module
/// object and typed-parameter converters.
type Described = (String, Vec<Py<PyAny>>, Py<PyAny>, Vec<Py<PyAny>>);

/// Rust functions the helper calls back.
#[pyclass(frozen)]
pub struct Native {
    pub watchdog: Arc<Watchdog>,
}

#[pymethods]
impl Native {
    /// A plugin module starts executing on this thread (see [`Watchdog::import_started`]).
    fn import_started(&self, name: &str, source: &[u8]) {
        self.watchdog.import_started(name, source);
    }

    /// This thread runs the event loop from now on.
    fn loop_thread(&self) {
        self.watchdog.set_loop_thread();
    }

    /// The loop ran the cancellation of coroutine `id` (it is cancelled unless it ended).
    fn cancelled(&self, id: u64) {
        self.watchdog.cancelled(id);
    }

    /// The thread of an event loop given up on ends.
    fn loop_exited(&self) {
        self.watchdog.given_up_thread_exits();
    }

    /// The innermost plugin module executing on this thread finished.
    fn import_finished(&self) {
        self.watchdog.import_finished();
    }

    /// The helper's streams on this thread hold a line printed without its newline.
    fn partial(&self) {
        PARTIAL_OUTPUT.with(|p| p.set(true));
    }

    /// One line a plugin printed, into the server log, tagged with the module running it (the
    /// endpoint's module during a call; otherwise `module`, the module whose code wrote, as the
    /// helper found it: a thread the plugin started, an import) and the request it runs for.
    fn log(&self, stream: &str, line: &str, module: &str) {
        CURRENT_MODULE.with(|m| {
            let current = m.borrow();
            let (module, id) = match current.as_ref() {
                Some((running, id)) => (running.name.as_str(), Some(id)),
                None => (module, None),
            };
            let id = tracing::field::display(id.map_or(String::from("-"), ToString::to_string));
            if stream == "stderr" {
                tracing::warn!(target: "dpms::plugin", module, stream, id, "{line}");
            } else {
                tracing::info!(target: "dpms::plugin", module, stream, id, "{line}");
            }
        });
    }
}

fn run_load(
    py: Python<'_>,
    files: Option<Vec<crate::exec::FinderEntry>>,
    forget: Vec<String>,
    requests: Vec<LoadRequest>,
    watchdog: &Watchdog,
) -> PyResult<Vec<Loaded>> {
    let host = host_module(py)?;
    if let Some(files) = files {
        let map = PyDict::new(py);
        for entry in &files {
            match &entry.source {
                Some(source) => {
                    map.set_item(&entry.name, (&entry.path, PyBytes::new(py, source)))?
                }
                None => map.set_item(&entry.name, &entry.path)?,
            }
        }
        host.call_method1(intern!(py, "set_files"), (map,))?;
    }
    for name in forget {
        host.call_method1(intern!(py, "forget"), (name,))?;
    }
    // A quarantined file is not imported: its slot gets the verdict as its import error.
    let verdicts: Vec<Option<String>> = requests
        .iter()
        .map(|r| watchdog.quarantined(&r.source))
        .collect();
    let batch = requests
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.is_none())
        .map(|(r, _)| {
            (
                r.name.as_str(),
                r.path.as_str(),
                PyBytes::new(py, &r.source),
            )
        })
        .collect::<Vec<_>>();
    let results = host.call_method1(intern!(py, "load_batch"), (batch,))?;
    let mut imported = results.try_iter()?;
    let mut loaded = Vec::with_capacity(requests.len());
    for (request, verdict) in requests.iter().zip(verdicts) {
        if let Some(error) = verdict {
            tracing::warn!(module = %request.name, "{error}");
            loaded.push(Loaded::ImportError {
                error,
                traceback: String::new(),
            });
            continue;
        }
        let name = &request.name;
        let item = imported.next().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("no load result for `{name}`"))
        })??;
        let (json, funcs, module, converters): Described = item.extract()?;
        let report: Report = serde_json::from_str(&json).map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!("bad description of `{name}`: {e}"))
        })?;
        loaded.push(match report {
            Report::Ok(description) => Loaded::Ok {
                description,
                json,
                code: crate::exec::CodeRef::new(ModuleHandle {
                    module,
                    funcs,
                    converters,
                }),
            },
            Report::ImportError { error, traceback } => Loaded::ImportError { error, traceback },
            Report::Refused { error } => Loaded::Refused { error },
        });
    }
    Ok(loaded)
}

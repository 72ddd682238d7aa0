//! The worker's watchdog: one plain Rust thread that never waits for the GIL, enforcing the
//! deadlines a Python thread cannot enforce on itself.
//!
//! - An import running past `DPMS_LOAD_SECS` gets an `ImportTimeout` raised inside it; the
//!   import fails like any other (reported in `__dir__`) and the rest of the batch loads.
//! - A call running past `MAX_FUNCTION_SECS` gets a `CallTimeout` raised inside it (the client
//!   has its 504 already, or gets it when an inline call returns).
//! - A pool call still running [`GRACE`] after that is either blocked outside the interpreter
//!   (a `time.sleep`, a slow socket: the GIL is free) or stuck in C code holding the GIL. The
//!   watchdog tells them apart by taking the GIL itself within a bounded wait. A call blocked
//!   without the GIL is *given up*: its thread is replaced in the pool and exits when the call
//!   returns, and the worker keeps its module state. Only a call holding the GIL (nothing else
//!   can run Python in this process) retires the worker, and so do more given-up threads still
//!   blocked than the pool has threads.
//! - A coroutine past its deadline is cancelled on the event loop. If the loop does not run
//!   the cancellation within [`GRACE`], whatever it runs (a coroutine that never awaits) gets
//!   a `CallTimeout`; if it still does not, the loop is *replaced*: new coroutines go to a new
//!   loop on a new thread, and the old one ends when it gets back and its coroutines finish.
//!   A plugin that stops the loop only ends one `run_forever`: the helper runs it again.
//! - The I/O thread waiting for the GIL longer than a call may run means code holds it for
//!   good (a plugin's own thread in C): the worker retires. Each watchdog thread that needs the
//!   GIL is timed the same way.
//! - Code on the I/O thread or in an import that does not return [`GRACE`] after its timeout
//!   cannot be given up: the worker is *retired* — the supervisor starts its replacement at
//!   once, this worker stops accepting, finishes what it can within `DPMS_SHUTDOWN_SECS`, and
//!   exits. An import stuck that way is quarantined first, so the replacement does not import
//!   it again.
//!
//! The quarantine is a folder the workers of one supervisor share. Before each plugin import a
//! worker writes `loading-<index>` (the file's fingerprint and name) and empties it after; a
//! worker that finds its predecessor's marker non-empty at start knows that import killed the
//! process (a segfault, `os._exit`) and appends it to `quarantine`. A file that crashed a
//! worker twice, or hung once, is not imported again until its content changes.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long code that was sent a timeout exception may take to stop before the worker retires.
pub const GRACE: Duration = Duration::from_secs(1);
/// How long a watchdog thread waits for the GIL before it concludes that code holds it for good.
/// Longer than [`GRACE`]: with many CPU-bound Python threads, a waiter's turn can take a while.
const GIL_WAIT: Duration = Duration::from_secs(3);
/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(50);
/// Crashes at import after which a file is quarantined.
const CRASHES_TO_QUARANTINE: usize = 2;

/// What the worker does when the watchdog gives up on it (see [`Watchdog::on_retire`]).
pub type RetireHook = Box<dyn FnOnce(String) + Send>;
/// Starts one more Python thread in the pool (see [`Watchdog::set_pool`]).
pub type ReplaceHook = Box<dyn Fn() + Send + Sync>;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const GIVEN_UP: u8 = 2;

/// One plugin call, shared by the request waiting for it, the pool thread running it and the
/// watchdog.
#[derive(Debug, Default)]
pub struct Call {
    /// Names its coroutine on the event loop.
    id: u64,
    /// The pool thread running it, while it runs (0: not yet, no longer, or inline).
    thread: AtomicI64,
    /// `RUNNING` until the thread finishes it (`DONE`) or the watchdog gives its thread up
    /// (`GIVEN_UP`), whichever comes first.
    phase: AtomicU8,
    /// It handed a coroutine to the event loop / its client had its 504. Each side sets its
    /// own flag before reading the other's, so a coroutine is either never started or
    /// cancelled.
    coroutine: AtomicBool,
    abandoned: AtomicBool,
}

impl Call {
    pub fn new(id: u64) -> Call {
        Call {
            id,
            ..Call::default()
        }
    }

    /// Its client had its 504 (an interrupt may have been sent).
    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// The id its coroutine runs under.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The call returned a coroutine: false if its deadline passed already (do not start it).
    pub fn submitting(&self) -> bool {
        self.coroutine.store(true, Ordering::SeqCst);
        !self.abandoned.load(Ordering::SeqCst)
    }

    /// The calling pool thread starts running the call (GIL held, like the interrupt's check).
    pub fn started(&self) {
        self.thread.store(current_thread(), Ordering::Release);
    }

    /// The call returned (GIL held). True if the watchdog gave its thread up meanwhile: a
    /// replacement is in the pool already, so this thread must exit.
    pub fn finished(&self) -> bool {
        // (GIL held; `abandoned` says an interrupt may be pending, see `clear_interrupt`.)
        self.thread.store(0, Ordering::Release);
        self.phase.swap(DONE, Ordering::AcqRel) == GIVEN_UP
    }
}

/// One import in progress (imports nest when a plugin imports a sibling).
struct Import {
    name: String,
    fingerprint: u64,
    thread: i64,
    started: Instant,
    interrupted: Option<Instant>,
    id: u64,
}

/// A coroutine past its deadline, and where its cancellation stands.
struct Cancel {
    id: u64,
    stage: CancelStage,
}

enum CancelStage {
    Queued,
    /// Asked the loop to cancel it at this time.
    Sent(Instant),
    /// The loop had not done so after [`GRACE`]: what it runs was sent a `CallTimeout`.
    Interrupted(Instant),
}

/// A thread waiting for the GIL to do some work: retire if it has not got it after [`GIL_WAIT`].
struct Probe {
    got: Arc<AtomicBool>,
    since: Instant,
}

/// A pool call whose client got its 504, while its thread still runs it.
struct Abandoned {
    call: Arc<Call>,
    thread: i64,
    stage: Stage,
}

enum Stage {
    /// To be sent a `CallTimeout`.
    Fresh,
    /// Sent one at this time.
    Interrupted(Instant),
    /// Still running after [`GRACE`]: a probe thread, started at this time, sets the flag once
    /// it holds the GIL.
    Probing(Arc<AtomicBool>, Instant),
}

/// Shared between the Python threads, the I/O thread and the watchdog thread.
pub struct Watchdog {
    load_time: Duration,
    call_time: Duration,
    base: Instant,
    imports: Mutex<Vec<Import>>,
    next_import: AtomicU64,
    abandoned: Mutex<Vec<Abandoned>>,
    /// Starts a pool thread in place of one given up, and how many given-up threads may still
    /// be blocked before the worker retires instead.
    replace: OnceLock<(ReplaceHook, usize)>,
    /// Given-up pool threads whose call has not returned yet, and given-up event loops whose
    /// thread still runs.
    given_up: AtomicUsize,
    cancels: Mutex<Vec<Cancel>>,
    /// The thread of the current event loop (Python's thread id; set with the GIL held).
    loop_thread: AtomicI64,
    probes: Mutex<Vec<Probe>>,
    /// The I/O thread's Python thread id, and the inline call it runs: nanoseconds since
    /// `base` at its start plus one (0: none) and its sequence number. Both change only with
    /// the GIL held.
    io_thread: AtomicI64,
    inline_since: AtomicU64,
    inline_seq: AtomicU64,
    /// Since when the I/O thread waits for the GIL to start an inline call (same encoding).
    io_waiting: AtomicU64,
    /// The sequence number of the last inline call the watchdog interrupted.
    inline_interrupted: AtomicU64,
    /// `(ImportTimeout, CallTimeout)` from the helper.
    exceptions: OnceLock<(Py<PyAny>, Py<PyAny>)>,
    retire: Mutex<Option<RetireHook>>,
    retiring: AtomicBool,
    quarantine: Option<Quarantine>,
}

impl Watchdog {
    /// Creates the watchdog and starts its thread. `state` is the supervisor's shared folder
    /// and this worker's index (none in `--single-process`).
    pub fn start(
        load_time: Duration,
        call_time: Duration,
        state: Option<(&Path, usize)>,
    ) -> Arc<Watchdog> {
        let quarantine = state.and_then(|(dir, index)| Quarantine::open(dir, index));
        let dog = Arc::new(Watchdog {
            load_time,
            call_time,
            base: Instant::now(),
            imports: Mutex::new(Vec::new()),
            next_import: AtomicU64::new(1),
            abandoned: Mutex::new(Vec::new()),
            replace: OnceLock::new(),
            given_up: AtomicUsize::new(0),
            cancels: Mutex::new(Vec::new()),
            loop_thread: AtomicI64::new(0),
            probes: Mutex::new(Vec::new()),
            io_thread: AtomicI64::new(0),
            inline_since: AtomicU64::new(0),
            inline_seq: AtomicU64::new(0),
            io_waiting: AtomicU64::new(0),
            inline_interrupted: AtomicU64::new(0),
            exceptions: OnceLock::new(),
            retire: Mutex::new(None),
            retiring: AtomicBool::new(false),
            quarantine,
        });
        let weak = Arc::downgrade(&dog);
        let spawned = std::thread::Builder::new()
            .name("dpms-watchdog".into())
            .spawn(move || {
                while let Some(dog) = weak.upgrade() {
                    dog.tick();
                    drop(dog);
                    std::thread::sleep(TICK);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(cause = %e, "cannot start the watchdog thread; deadlines on stuck code are not enforced");
        }
        dog
    }

    /// The exception types raised into code past its deadline.
    pub fn set_exceptions(&self, import_timeout: Py<PyAny>, call_timeout: Py<PyAny>) {
        let _ = self.exceptions.set((import_timeout, call_timeout));
    }

    /// What to do when the worker must be replaced (without it, the watchdog only logs).
    pub fn on_retire(&self, hook: RetireHook) {
        if let Ok(mut slot) = self.retire.lock() {
            *slot = Some(hook);
        }
    }

    /// How to replace a pool thread given up on, and at most how many given-up threads may be
    /// blocked at once (without it, a call blocked past its deadline retires the worker).
    pub fn set_pool(&self, replace: ReplaceHook, limit: usize) {
        let _ = self.replace.set((replace, limit));
    }

    /// A given-up pool thread's call returned and the thread exits.
    pub fn given_up_thread_exits(&self) {
        let _ = self
            .given_up
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Records this thread as the event loop's (GIL held).
    pub fn set_loop_thread(&self) {
        self.loop_thread.store(current_thread(), Ordering::Release);
    }

    /// The loop ran the cancellation of coroutine `id` (GIL held).
    pub fn cancelled(&self, id: u64) {
        if let Ok(mut list) = self.cancels.lock() {
            list.retain(|c| c.id != id);
        }
    }

    /// Records this thread as the I/O thread (call with the GIL held, once).
    pub fn set_io_thread(&self) {
        self.io_thread.store(current_thread(), Ordering::Release);
    }

    /// The I/O thread is about to take the GIL for an inline call: if it waits longer than a
    /// call may run, code holds the GIL for good and the worker retires.
    pub fn inline_waiting(&self) {
        let since = self.base.elapsed().as_nanos() as u64 + 1;
        self.io_waiting.store(since, Ordering::Release);
    }

    /// Marks the start of an inline call on the I/O thread (GIL held).
    pub fn inline_started(&self) {
        self.io_waiting.store(0, Ordering::Release);
        let since = self.base.elapsed().as_nanos() as u64 + 1;
        self.inline_seq.fetch_add(1, Ordering::AcqRel);
        self.inline_since.store(since, Ordering::Release);
    }

    /// Drops a `CallTimeout` raised into this thread that has not landed (GIL held): the call
    /// it was meant for returned first, and it must not hit the next one.
    pub fn clear_interrupt(&self, _py: Python<'_>) {
        // SAFETY: the GIL is held (`_py`); a null exception clears the thread's pending one.
        unsafe {
            pyo3::ffi::PyThreadState_SetAsyncExc(
                current_thread() as std::os::raw::c_long,
                std::ptr::null_mut(),
            );
        }
    }

    /// Marks the end of the inline call (GIL held).
    pub fn inline_finished(&self) {
        self.inline_since.store(0, Ordering::Release);
    }

    /// Hands a pool call that passed its deadline to the watchdog, which interrupts it (never
    /// the caller: taking the GIL could block the I/O thread behind code stuck in C).
    pub fn abandon(&self, call: Arc<Call>) {
        call.abandoned.store(true, Ordering::SeqCst);
        if call.coroutine.load(Ordering::SeqCst) {
            if let Ok(mut list) = self.cancels.lock() {
                list.push(Cancel {
                    id: call.id,
                    stage: CancelStage::Queued,
                });
            }
        }
        let thread = call.thread.load(Ordering::Acquire);
        if thread == 0 {
            return;
        }
        if let Ok(mut list) = self.abandoned.lock() {
            list.push(Abandoned {
                call,
                thread,
                stage: Stage::Fresh,
            });
        }
    }

    /// A plugin module starts executing on this thread (GIL held).
    pub fn import_started(&self, name: &str, source: &[u8]) {
        let fingerprint = fingerprint(source);
        if let Some(q) = &self.quarantine {
            q.mark(fingerprint, name);
        }
        if let Ok(mut imports) = self.imports.lock() {
            imports.push(Import {
                name: name.to_string(),
                fingerprint,
                thread: current_thread(),
                started: Instant::now(),
                interrupted: None,
                id: self.next_import.fetch_add(1, Ordering::Relaxed),
            });
        }
    }

    /// The innermost import on this thread ended, well or not (GIL held).
    pub fn import_finished(&self) {
        let Ok(mut imports) = self.imports.lock() else {
            return;
        };
        let me = current_thread();
        if let Some(i) = imports.iter().rposition(|x| x.thread == me) {
            imports.remove(i);
        }
        if let Some(q) = &self.quarantine {
            match imports.last() {
                Some(other) => q.mark(other.fingerprint, &other.name),
                None => q.clear(),
            }
        }
    }

    /// Why `source` must not be imported, if it is quarantined.
    pub fn quarantined(&self, source: &[u8]) -> Option<String> {
        self.quarantine
            .as_ref()
            .and_then(|q| q.verdict(fingerprint(source)))
    }

    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        self.check_import(now);
        self.check_abandoned(now);
        self.check_cancels(now);
        self.check_probes(now);
        self.check_inline(now);
    }

    fn check_cancels(self: &Arc<Self>, now: Instant) {
        let mut send = Vec::new();
        let mut interrupt = None;
        let mut replace = false;
        if let Ok(mut list) = self.cancels.lock() {
            for c in list.iter_mut() {
                match c.stage {
                    CancelStage::Queued => {
                        send.push(c.id);
                        c.stage = CancelStage::Sent(now);
                    }
                    CancelStage::Sent(at) if now.duration_since(at) > GRACE => {
                        interrupt = Some(c.id);
                        c.stage = CancelStage::Interrupted(now);
                    }
                    CancelStage::Interrupted(at) if now.duration_since(at) > GRACE => {
                        replace = true;
                    }
                    _ => {}
                }
            }
            if replace {
                // Those sent went to the loop given up; it runs them if it ever gets back.
                list.retain(|c| matches!(c.stage, CancelStage::Queued));
            }
        }
        if !send.is_empty() {
            self.with_gil(move |py| {
                let cancelled = super::host_module(py)
                    .and_then(|h| h.call_method1(pyo3::intern!(py, "cancel"), (send,)));
                if let Err(e) = cancelled {
                    tracing::error!(cause = %e, "cannot cancel coroutines past MAX_FUNCTION_SECS");
                }
            });
        }
        if let Some(id) = interrupt {
            let thread = self.loop_thread.load(Ordering::Acquire);
            tracing::warn!("the event loop has run nothing for a second past a deadline (a coroutine that never awaits?); interrupting it");
            self.raise_in(thread, false, move |dog| {
                dog.loop_thread.load(Ordering::Acquire) == thread
                    && dog
                        .cancels
                        .lock()
                        .is_ok_and(|list| list.iter().any(|c| c.id == id))
            });
        }
        if replace {
            let blocked = self.given_up.fetch_add(1, Ordering::AcqRel) + 1;
            let limit = self.replace.get().map_or(0, |(_, limit)| *limit);
            if blocked > limit {
                self.retire(format!(
                    "{blocked} calls or event loops past MAX_FUNCTION_SECS are still blocked (more than DPMS_PY_THREADS)"
                ));
                return;
            }
            tracing::warn!(
                "the event loop is still blocked past a deadline; coroutines move to a new loop"
            );
            self.with_gil(|py| {
                let replaced = super::host_module(py)
                    .and_then(|h| h.call_method0(pyo3::intern!(py, "replace_loop")));
                if let Err(e) = replaced {
                    tracing::error!(cause = %e, "cannot replace the event loop");
                }
            });
        }
    }

    fn check_probes(&self, now: Instant) {
        let mut stuck = false;
        if let Ok(mut probes) = self.probes.lock() {
            probes.retain(|p| {
                if p.got.load(Ordering::Acquire) {
                    return false;
                }
                stuck |= now.duration_since(p.since) > GIL_WAIT;
                true
            });
        }
        if stuck {
            self.retire(
                "the GIL was not released for a second past a deadline (stuck in C code)".into(),
            );
        }
    }

    /// Runs `f` with the GIL on a short-lived thread; the worker retires if the GIL does not
    /// come within [`GIL_WAIT`] (code holding it never lets go).
    fn with_gil(&self, f: impl FnOnce(Python<'_>) + Send + 'static) {
        let got = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&got);
        let spawned = std::thread::Builder::new()
            .name("dpms-watchdog-py".into())
            .spawn(move || {
                Python::attach(|py| {
                    flag.store(true, Ordering::Release);
                    f(py);
                })
            });
        match spawned {
            Ok(_) => {
                if let Ok(mut probes) = self.probes.lock() {
                    probes.push(Probe {
                        got,
                        since: Instant::now(),
                    });
                }
            }
            Err(e) => tracing::error!(cause = %e, "cannot start a watchdog Python thread"),
        }
    }

    /// Looks at the innermost import of each thread (imports nest when a plugin imports a
    /// sibling; a call may import one while a batch loads).
    fn check_import(self: &Arc<Self>, now: Instant) {
        let mut stuck = None;
        let mut interrupts = Vec::new();
        if let Ok(mut imports) = self.imports.lock() {
            let count = imports.len();
            for i in 0..count {
                if imports[i + 1..]
                    .iter()
                    .any(|x| x.thread == imports[i].thread)
                {
                    continue;
                }
                let top = &mut imports[i];
                match top.interrupted {
                    None if now.duration_since(top.started) > self.load_time => {
                        top.interrupted = Some(now);
                        interrupts.push((top.thread, top.id));
                        tracing::warn!(module = %top.name, secs = self.load_time.as_secs_f64(), "import past DPMS_LOAD_SECS; stopping it");
                    }
                    Some(at) if now.duration_since(at) > GRACE => {
                        stuck = Some((top.name.clone(), top.fingerprint));
                    }
                    _ => {}
                }
            }
        }
        for (thread, id) in interrupts {
            self.raise_in(thread, true, move |dog| {
                dog.imports.lock().is_ok_and(|i| {
                    i.iter()
                        .rev()
                        .find(|x| x.thread == thread)
                        .is_some_and(|t| t.id == id)
                })
            });
        }
        if let Some((name, fingerprint)) = stuck {
            if let Some(q) = &self.quarantine {
                q.record("hang", fingerprint, &name);
            }
            self.retire(format!(
                "importing `{name}` did not stop after DPMS_LOAD_SECS; it is quarantined"
            ));
        }
    }

    fn check_abandoned(self: &Arc<Self>, now: Instant) {
        let mut stuck = false;
        let mut interrupts = Vec::new();
        let mut give_up = Vec::new();
        if let Ok(mut list) = self.abandoned.lock() {
            list.retain_mut(|a| {
                if a.call.thread.load(Ordering::Acquire) != a.thread {
                    return false;
                }
                match &a.stage {
                    Stage::Fresh => {
                        interrupts.push((a.thread, Arc::clone(&a.call)));
                        a.stage = Stage::Interrupted(now);
                    }
                    Stage::Interrupted(at) => {
                        if now.duration_since(*at) > GRACE {
                            a.stage = Stage::Probing(self.probe_gil(), now);
                        }
                    }
                    Stage::Probing(got, at) => {
                        if got.load(Ordering::Acquire) {
                            give_up.push(Arc::clone(&a.call));
                            return false;
                        }
                        if now.duration_since(*at) > GIL_WAIT {
                            stuck = true;
                        }
                    }
                }
                true
            });
        }
        for (thread, call) in interrupts {
            self.raise_in(thread, false, move |_| {
                call.thread.load(Ordering::Acquire) == thread
            });
        }
        for call in give_up {
            self.give_up(&call);
        }
        if stuck {
            self.retire(
                "a call past MAX_FUNCTION_SECS did not stop and holds the GIL (stuck in C code)"
                    .into(),
            );
        }
    }

    /// Gives up the thread of a call blocked outside the interpreter past its deadline: a new
    /// thread takes its place in the pool, and it exits when the call returns.
    fn give_up(&self, call: &Call) {
        let Some((replace, limit)) = self.replace.get() else {
            self.retire("a call past MAX_FUNCTION_SECS did not stop".into());
            return;
        };
        if call
            .phase
            .compare_exchange(RUNNING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // it returned meanwhile; its thread is back in the pool
        }
        let blocked = self.given_up.fetch_add(1, Ordering::AcqRel) + 1;
        if blocked > *limit {
            self.retire(format!(
                "{blocked} calls past MAX_FUNCTION_SECS are still blocked (more than DPMS_PY_THREADS)"
            ));
            return;
        }
        tracing::warn!(
            blocked,
            "a call past MAX_FUNCTION_SECS is blocked outside Python (sleep, I/O); its thread is given up and replaced"
        );
        replace();
    }

    /// Starts a thread that sets the returned flag once it holds the GIL. It never comes back
    /// if code holding the GIL never lets go (the worker then retires anyway).
    fn probe_gil(&self) -> Arc<AtomicBool> {
        let got = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&got);
        let spawned = std::thread::Builder::new()
            .name("dpms-gil-probe".into())
            .spawn(move || Python::attach(|_py| flag.store(true, Ordering::Release)));
        if let Err(e) = spawned {
            tracing::error!(cause = %e, "cannot start a GIL probe thread");
            got.store(true, Ordering::Release);
        }
        got
    }

    fn check_inline(self: &Arc<Self>, now: Instant) {
        let waiting = self.io_waiting.load(Ordering::Acquire);
        if waiting != 0 {
            let since = self.base + Duration::from_nanos(waiting - 1);
            if now.saturating_duration_since(since) > self.call_time + GIL_WAIT {
                self.retire(
                    "the I/O thread waited for the GIL past MAX_FUNCTION_SECS (stuck in C code holding it)"
                        .into(),
                );
            }
        }
        let since = self.inline_since.load(Ordering::Acquire);
        if since == 0 {
            return;
        }
        let started = self.base + Duration::from_nanos(since - 1);
        let running = now.saturating_duration_since(started);
        if running <= self.call_time {
            return;
        }
        let seq = self.inline_seq.load(Ordering::Acquire);
        // Interrupted once per call, like imports and pool calls, however late the tick.
        if self.inline_interrupted.swap(seq, Ordering::AcqRel) != seq {
            let thread = self.io_thread.load(Ordering::Acquire);
            self.raise_in(thread, false, move |dog| {
                dog.inline_seq.load(Ordering::Acquire) == seq
                    && dog.inline_since.load(Ordering::Acquire) == since
            });
        } else if running > self.call_time + GRACE {
            self.retire(
                "an inline call past MAX_FUNCTION_SECS did not stop (stuck in C code)".into(),
            );
        }
    }

    /// Raises a timeout exception in `thread` if `still` holds once the GIL is taken. Runs on
    /// a short-lived thread: if the GIL never comes back, only that thread waits.
    fn raise_in(
        self: &Arc<Self>,
        thread: i64,
        import: bool,
        still: impl FnOnce(&Watchdog) -> bool + Send + 'static,
    ) {
        if thread == 0 {
            return;
        }
        let dog = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("dpms-interrupt".into())
            .spawn(move || {
                Python::attach(|_py| {
                    let Some((import_exc, call_exc)) = dog.exceptions.get() else {
                        return;
                    };
                    if still(&dog) {
                        let exc = if import { import_exc } else { call_exc };
                        // SAFETY: the GIL is held, `exc` is a live exception type, and `still`
                        // checked (under the GIL, which the target changes its state under)
                        // that `thread` is still running the code to stop.
                        unsafe {
                            pyo3::ffi::PyThreadState_SetAsyncExc(
                                thread as std::os::raw::c_long,
                                exc.as_ptr(),
                            );
                        }
                    }
                })
            });
        if let Err(e) = spawned {
            tracing::error!(cause = %e, "cannot start an interrupt thread");
        }
    }

    fn retire(&self, reason: String) {
        if self.retiring.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(reason = %reason, "retiring this worker: its replacement starts now");
        let hook = self.retire.lock().ok().and_then(|mut h| h.take());
        match hook {
            Some(hook) => hook(reason),
            None => tracing::error!(
                "nothing can replace this process (--single-process): the stuck code keeps its thread"
            ),
        }
    }
}

/// CPython's id of the calling thread (`threading.get_ident()`).
fn current_thread() -> i64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as i64 }
}

/// A fingerprint of a plugin's source: the same bytes give the same value in every worker of
/// one binary.
fn fingerprint(source: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    source.hash(&mut h);
    h.finish()
}

/// The quarantine files in the supervisor's shared folder (see the module docs).
struct Quarantine {
    marker: Mutex<File>,
    list: PathBuf,
}

impl Quarantine {
    /// Opens this worker's marker; a predecessor's leftover marker is recorded as a crash.
    fn open(dir: &Path, index: usize) -> Option<Quarantine> {
        let marker_path = dir.join(format!("loading-{index}"));
        let list = dir.join("quarantine");
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&marker_path);
        let marker = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %marker_path.display(), cause = %e, "no import quarantine");
                return None;
            }
        };
        let q = Quarantine {
            marker: Mutex::new(marker),
            list,
        };
        let left = std::fs::read_to_string(&marker_path).unwrap_or_default();
        if let Some((fp, name)) = left.trim_end().split_once('\t') {
            if let Ok(fp) = u64::from_str_radix(fp, 16) {
                tracing::error!(module = %name, "the previous worker died while importing this file");
                q.record("crash", fp, name);
            }
        }
        q.clear();
        Some(q)
    }

    fn mark(&self, fingerprint: u64, name: &str) {
        if let Ok(f) = self.marker.lock() {
            let line = format!("{fingerprint:016x}\t{name}\n");
            let _ = f
                .set_len(0)
                .and_then(|()| f.write_all_at(line.as_bytes(), 0));
        }
    }

    fn clear(&self) {
        if let Ok(f) = self.marker.lock() {
            let _ = f.set_len(0);
        }
    }

    /// Appends one event; lines under `PIPE_BUF` appended with `O_APPEND` never interleave.
    fn record(&self, kind: &str, fingerprint: u64, name: &str) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.list)
            .and_then(|mut f| {
                f.write_all(format!("{kind}\t{fingerprint:016x}\t{name}\n").as_bytes())
            });
        if let Err(e) = appended {
            tracing::error!(path = %self.list.display(), cause = %e, "cannot record a quarantined import");
        }
    }

    fn verdict(&self, fingerprint: u64) -> Option<String> {
        let text = std::fs::read_to_string(&self.list).ok()?;
        let fp = format!("{fingerprint:016x}");
        let (mut crashes, mut hangs) = (0, 0);
        for line in text.lines() {
            let mut parts = line.split('\t');
            match (parts.next(), parts.next()) {
                (Some("crash"), Some(f)) if f == fp => crashes += 1,
                (Some("hang"), Some(f)) if f == fp => hangs += 1,
                _ => {}
            }
        }
        if hangs > 0 {
            Some("quarantined: importing this file did not finish within DPMS_LOAD_SECS and could not be stopped; change the file to retry".into())
        } else if crashes >= CRASHES_TO_QUARANTINE {
            Some(format!("quarantined: importing this file killed the worker process {crashes} times; change the file to retry"))
        } else {
            None
        }
    }
}

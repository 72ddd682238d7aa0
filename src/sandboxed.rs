//! The sandboxed executor: a tenant's modules loaded and called in that tenant's own process
//! (`dpms tenant-proc`, see [`crate::tenant_proc`]), over the framed channel of [`crate::ipc`].
//!
//! The host owns the process and trusts nothing it says: a frame that does not parse, an
//! answer to a question never asked or a description that is not JSON kills it (SPEC §11.8),
//! and every call it had in flight answers 502 `worker_lost` (§11.7). Deadlines are the host's:
//! past `MAX_FUNCTION_SECS` the process is killed with its pid namespace (§11.6), whatever the
//! code inside does. The process is killed through its parent (the waiting middle process of
//! `sandbox::enter`), whose death takes pid 1 of the namespace with it.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::exec::wire::{
    files_to_wire, requests_to_wire, FromTenant, Start, ToTenant, WireArgs, WireLoaded,
    WireRequest, WireResult,
};
use crate::exec::{CallFailure, CodeRef, FinderEntry, LoadRequest, Loaded, Loader, Report};
use crate::marshal::CallArgs;
use crate::pyhost::{Dispatch, Interrupt};
use crate::router::Module;
use crate::tenant_proc::MAX_FRAME;
use crate::zygote::Zygote;

/// The descriptor number the channel has in the tenant process.
const CHANNEL_FD: i32 = 3;

/// How long a new process may take to enter its sandbox and start Python.
const START_TIME: Duration = Duration::from_secs(20);

/// One running tenant process.
pub struct TenantProcess {
    /// The host pid of the process started (the sandbox's waiting middle process).
    pid: libc::pid_t,
    out: mpsc::UnboundedSender<ToTenant>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    dead: AtomicBool,
    /// A second handle on the host's end of the channel, polled for the peer's hang-up: a
    /// process that died is known dead before a call is sent to it, even if the reader task
    /// has not run since.
    probe: std::os::unix::net::UnixStream,
    /// The module of the last call sent: what raw output (written to descriptors 1 and 2
    /// rather than printed) is tagged with.
    last_module: Mutex<String>,
    /// Whose process it is (empty while a pooled process waits), for its output's tag.
    tenant: Mutex<String>,
    /// Counted in `dpms_tenant_processes` (it serves a tenant): uncounted when dropped.
    counted: AtomicBool,
}

/// Who waits for the answer to a message sent to a tenant process.
enum Waiter {
    /// A load or a specialisation: the answer as it came.
    Message(oneshot::Sender<FromTenant>),
    /// A call: its result, checked by the reader task itself, so a call costs no task of its
    /// own between the channel and the request.
    Call(CallWaiter),
}

/// The sending end of a call's result; dropped unanswered (the process died or lied), it
/// answers `worker_lost` (SPEC §11.7).
struct CallWaiter(Option<oneshot::Sender<crate::exec::CallResult>>);

impl CallWaiter {
    fn answer(mut self, result: crate::exec::CallResult) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }
}

impl Drop for CallWaiter {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(CallFailure::WorkerLost));
        }
    }
}

/// A call's answer as the request sees it; `None` when the process lies (SPEC §11.8: a
/// status the in-process path never produces), which kills it.
fn checked_result(result: WireResult) -> Option<crate::exec::CallResult> {
    match result {
        WireResult::Custom { status, .. } if !(200..=599).contains(&status) => {
            tracing::warn!(
                status,
                "tenant process answered with an impossible status; killing it"
            );
            None
        }
        result => Some(result.into_result()),
    }
}

impl TenantProcess {
    /// Starts a tenant process from this binary and waits until it is in its sandbox with
    /// Python running. Call it from a thread that lives as long as the worker (the process
    /// dies with the thread that started it).
    pub async fn start(
        start: Start,
        zygote: Option<Arc<Zygote>>,
    ) -> Result<Arc<TenantProcess>, String> {
        let (ours, theirs) = crate::ipc::socket_pair().map_err(|e| e.to_string())?;
        // The tenant's descriptors 1 and 2: a pipe this worker reads, so whatever it writes
        // reaches the log as lines tagged with the tenant, never as lines of its own.
        let (output, output_end) = std::io::pipe().map_err(|e| e.to_string())?;
        let forked = match zygote {
            Some(z) => {
                let theirs = theirs.try_clone().map_err(|e| e.to_string())?;
                let out = output_end.try_clone().map_err(|e| e.to_string())?;
                // Blocking on the zygote's answer (a fork) off the I/O thread.
                match tokio::task::spawn_blocking(move || z.fork(&theirs, &out)).await {
                    Ok(Ok(pid)) => Some(pid),
                    Ok(Err(e)) => {
                        tracing::warn!(cause = %e, "tenant zygote failed; starting the tenant process afresh");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(cause = %e, "tenant zygote failed; starting the tenant process afresh");
                        None
                    }
                }
            }
            None => None,
        };
        let pid = match forked {
            Some(pid) => pid,
            None => exec_tenant(&theirs, &output_end)?,
        };
        drop(theirs);
        drop(output_end);
        let tenant = start.tenant.clone();
        let process = Self::connect(start, tenant, pid, ours).await?;
        relay_output(output, Arc::downgrade(&process));
        Ok(process)
    }

    async fn connect(
        start: Start,
        tenant: String,
        pid: libc::pid_t,
        ours: std::os::unix::net::UnixStream,
    ) -> Result<Arc<TenantProcess>, String> {
        let reader = ours.try_clone().map_err(|e| e.to_string())?;
        let probe = ours.try_clone().map_err(|e| e.to_string())?;
        let mut first = crate::ipc::Sender::<Start>::new(
            ours.try_clone().map_err(|e| e.to_string())?,
            MAX_FRAME,
        );
        first.send(&start).map_err(|e| e.to_string())?;
        let mut rx = crate::ipc::Receiver::<FromTenant>::new(reader, MAX_FRAME)
            .into_async()
            .map_err(|e| e.to_string())?;
        let mut tx = crate::ipc::Sender::<ToTenant>::new(ours, MAX_FRAME)
            .into_async()
            .map_err(|e| e.to_string())?;
        let kill = || kill_pid(pid);
        match tokio::time::timeout(START_TIME, rx.recv()).await {
            Ok(Ok(FromTenant::Ready { .. })) => {}
            Ok(Ok(other)) => {
                kill();
                return Err(format!("the tenant process spoke out of turn: {other:?}"));
            }
            Ok(Err(e)) => {
                kill();
                return Err(format!("the tenant process did not start: {e}"));
            }
            Err(_) => {
                kill();
                return Err("the tenant process did not start in time".into());
            }
        }
        let (out, mut queue) = mpsc::unbounded_channel::<ToTenant>();
        let process = Arc::new(TenantProcess {
            pid,
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            probe,
            last_module: Mutex::new(String::new()),
            tenant: Mutex::new(tenant),
            counted: AtomicBool::new(false),
        });
        let writer = Arc::downgrade(&process);
        tokio::spawn(async move {
            if tx.pump(&mut queue).await.is_err() {
                if let Some(p) = writer.upgrade() {
                    p.kill();
                }
            }
        });
        let reading = Arc::downgrade(&process);
        tokio::spawn(async move {
            loop {
                let message = rx.recv().await;
                let Some(p) = reading.upgrade() else { break };
                let id = match &message {
                    Ok(
                        FromTenant::Loaded { id, .. }
                        | FromTenant::Done { id, .. }
                        | FromTenant::Specialised { id },
                    ) => Some(*id),
                    _ => None,
                };
                let waiter = id.and_then(|id| p.take_pending(id));
                match (message, waiter) {
                    (Ok(m), Some(Waiter::Message(w))) => {
                        let _ = w.send(m);
                    }
                    (Ok(FromTenant::Done { result, .. }), Some(Waiter::Call(w))) => {
                        match checked_result(result) {
                            Some(result) => w.answer(result),
                            None => {
                                drop(w);
                                p.kill();
                                break;
                            }
                        }
                    }
                    (Ok(m), Some(Waiter::Call(_))) => {
                        tracing::warn!(pid = p.pid, message = ?m, "tenant process answered a call with another message; killing it");
                        p.kill();
                        break;
                    }
                    (Ok(m), None) => {
                        tracing::warn!(pid = p.pid, message = ?m, "tenant process sent an unexpected message; killing it");
                        p.kill();
                        break;
                    }
                    (Err(e), _) => {
                        if !matches!(e, crate::ipc::Error::Closed)
                            || !p.dead.load(Ordering::Acquire)
                        {
                            tracing::warn!(pid = p.pid, error = %e, "tenant process channel failed; killing it");
                        }
                        p.kill();
                        break;
                    }
                }
            }
        });
        Ok(process)
    }

    fn take_pending(&self, id: u64) -> Option<Waiter> {
        self.pending.lock().ok()?.remove(&id)
    }

    /// Whether the process is gone (killed, crashed or its channel broken).
    pub fn is_dead(&self) -> bool {
        if self.dead.load(Ordering::Acquire) {
            return true;
        }
        if self.hung_up() {
            self.kill();
            return true;
        }
        false
    }

    /// Whether the tenant's end of the channel is closed (its pid 1 died: the sandbox's
    /// middle process keeps no copy).
    fn hung_up(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.probe.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, no timeout.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        ready > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The host pid of the process (its sandbox's middle process).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Kills the process and its whole pid namespace; every call in flight gets `worker_lost`.
    pub fn kill(&self) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            kill_pid(self.pid);
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    /// Makes a pooled process this tenant's (its name, its environment, then seccomp).
    pub async fn specialise(
        &self,
        tenant: &str,
        comm: &str,
        secrets: &[(String, String)],
    ) -> Result<(), String> {
        if let Ok(mut t) = self.tenant.lock() {
            *t = tenant.to_string();
        }
        let answer = self.ask(|id| ToTenant::Specialise {
            id,
            comm: comm.to_string(),
            secrets: secrets.to_vec(),
        });
        match tokio::time::timeout(START_TIME, answer).await {
            Ok(Ok(FromTenant::Specialised { .. })) => Ok(()),
            _ => {
                self.kill();
                Err("a pooled tenant process could not be specialised".into())
            }
        }
    }

    /// Sends one request and returns where its answer arrives (dropped if the process dies).
    fn ask(&self, make: impl FnOnce(u64) -> ToTenant) -> oneshot::Receiver<FromTenant> {
        let (reply, rx) = oneshot::channel();
        self.send(make, Waiter::Message(reply));
        rx
    }

    /// Sends one call; its result arrives checked (`worker_lost` if the process dies).
    fn ask_call(
        &self,
        make: impl FnOnce(u64) -> ToTenant,
    ) -> oneshot::Receiver<crate::exec::CallResult> {
        let (reply, rx) = oneshot::channel();
        self.send(make, Waiter::Call(CallWaiter(Some(reply))));
        rx
    }

    fn send(&self, make: impl FnOnce(u64) -> ToTenant, waiter: Waiter) {
        // The flag only: a caller on the request path has just looked for a hang-up
        // (`TenantExec::lost`, one poll per request). A dead process drops the waiter.
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, waiter);
        }
        if self.out.send(make(id)).is_err() {
            self.kill();
        }
    }
}

/// Starts a tenant process by executing this binary afresh (when no zygote is available);
/// returns its pid. Reaped by a thread of its own: the worker's runtime has no child-process
/// driver.
fn exec_tenant(
    theirs: &std::os::unix::net::UnixStream,
    output: &std::io::PipeWriter,
) -> Result<libc::pid_t, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find dpms itself: {e}"))?;
    let fd = theirs.as_raw_fd();
    let stdout = output.try_clone().map_err(|e| e.to_string())?;
    let stderr = output.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["tenant-proc", "--channel", &CHANNEL_FD.to_string()])
        .env_clear()
        // The allocator's settings, read before `main`: without them it reserves address
        // space a gigabyte at a time, which the tenant's RLIMIT_AS counts in full. Fixed
        // values, never a secret (SPEC §10: `/proc/<pid>/environ` shows this block).
        .envs(crate::supervisor::MIMALLOC_DEFAULTS)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    crate::child::dies_with_this_thread(&mut cmd, vec![(fd, CHANNEL_FD)]);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start a tenant process: {e}"))?;
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
    // Reaped by a thread of its own: the worker's runtime has no child-process driver.
    let _ = std::thread::Builder::new()
        .name("dpms-t-reap".into())
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(pid)
}

impl Drop for TenantProcess {
    fn drop(&mut self) {
        if self.counted.load(Ordering::Relaxed) {
            if let Some(m) = crate::metrics::Metrics::get() {
                m.tenant_stopped();
            }
        }
        if !self.dead.swap(true, Ordering::AcqRel) {
            kill_pid(self.pid);
        }
    }
}

fn kill_pid(pid: libc::pid_t) {
    if pid > 0 {
        // SAFETY: kill(2) on the pid of our own child (a pid reaped and reused in between
        // is the window every `kill` of a child has).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Longest line of tenant output logged as one record; the rest of a longer line follows in
/// further records.
const MAX_OUTPUT_LINE: usize = 8 * 1024;

/// Logs what the tenant process writes to its descriptors 1 and 2, line by line, each line
/// one record tagged with the tenant and the module it was last asked to run. Its own log
/// lines (its `print`s, tagged with their module inside) arrive this way too.
fn relay_output(output: std::io::PipeReader, process: std::sync::Weak<TenantProcess>) {
    let fd: OwnedFd = output.into();
    let receiver = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read a tenant process's output");
            return;
        }
    };
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut receiver = receiver;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match receiver.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending
                .iter()
                .position(|&b| b == b'\n')
                .or_else(|| (pending.len() >= MAX_OUTPUT_LINE).then_some(MAX_OUTPUT_LINE))
            {
                let line: Vec<u8> = pending.drain(..=end.min(pending.len() - 1)).collect();
                log_output(&process, &line);
            }
        }
        if !pending.is_empty() {
            log_output(&process, &pending);
        }
    });
}

fn log_output(process: &std::sync::Weak<TenantProcess>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return;
    }
    let (tenant, module) = process
        .upgrade()
        .map(|p| {
            let tenant = p.tenant.lock().map(|t| t.clone()).unwrap_or_default();
            let module = p.last_module.lock().map(|m| m.clone()).unwrap_or_default();
            (tenant, module)
        })
        .unwrap_or_default();
    tracing::info!(target: "dpms::tenant", tenant = %tenant, module = %module, "{text}");
}

/// The plain-data copy of a request a tenant's process receives.
pub fn wire_request(info: &crate::pyhost::RequestInfo) -> WireRequest {
    WireRequest {
        method: info.method.as_str().to_string(),
        target: info
            .uri
            .path_and_query()
            .map_or_else(|| info.uri.path().to_string(), |p| p.as_str().to_string()),
        headers: info
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    crate::exec::wire::B64(v.as_bytes().to_vec()),
                )
            })
            .collect(),
        body: crate::exec::wire::B64(info.body.to_vec()),
        json: info.json.clone(),
        remote: info.remote.to_string(),
        uuid: info.uuid.clone(),
        role: info.role.map(str::to_string),
        id: info.id.as_str().to_string(),
    }
}

/// A tenant module's code, as the route table holds it: which process loaded it.
pub struct RemoteModule {
    pub process: Arc<TenantProcess>,
}

/// What a tenant's process needs to start, but its secrets.
pub type Starter =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Start, String>> + Send>> + Send + Sync>;

/// Takes a process from the warm pool, if one is ready.
pub type TakePooled = Arc<dyn Fn() -> Option<Arc<TenantProcess>> + Send + Sync>;

/// One tenant's executor: its process (started at the first load) and how to start another.
pub struct TenantExec {
    /// Why the last attempt to start the tenant's process failed (answered 503).
    start_failed: Mutex<Option<String>>,
    starter: Starter,
    pooled: Option<TakePooled>,
    zygote: Option<Arc<Zygote>>,
    deaths: Arc<Deaths>,
    process: tokio::sync::Mutex<Option<Arc<TenantProcess>>>,
}

impl TenantExec {
    pub fn new(
        starter: Starter,
        pooled: Option<TakePooled>,
        zygote: Option<Arc<Zygote>>,
        deaths: Arc<Deaths>,
    ) -> TenantExec {
        TenantExec {
            start_failed: Mutex::new(None),
            starter,
            pooled,
            zygote,
            deaths,
            process: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the process this executor loaded modules into is gone.
    pub fn lost(&self) -> bool {
        match self.process.try_lock() {
            Ok(p) => p.as_ref().is_some_and(|p| p.is_dead()),
            Err(_) => false,
        }
    }

    /// Whether the tenant's process could not be started (SPEC §11.9: its code does not run).
    pub fn start_failed(&self) -> bool {
        self.start_failed.lock().is_ok_and(|f| f.is_some())
    }

    /// Kills the process, if any (the tenant is removed, disabled or idle).
    pub fn stop(&self) {
        if let Ok(p) = self.process.try_lock() {
            if let Some(p) = p.as_ref() {
                p.kill();
            }
        }
    }

    /// The host pid of the current process, if one runs.
    pub fn pid(&self) -> Option<libc::pid_t> {
        self.process
            .try_lock()
            .ok()
            .and_then(|p| p.as_ref().filter(|p| !p.is_dead()).map(|p| p.pid()))
    }

    async fn process(&self) -> Result<Arc<TenantProcess>, String> {
        let mut slot = self.process.lock().await;
        if let Some(p) = slot.as_ref() {
            if !p.is_dead() {
                return Ok(Arc::clone(p));
            }
            // Modules loaded into the dead process are gone with it: the view is rebuilt.
            return Err("the tenant process died".into());
        }
        let cold = std::time::Instant::now();
        let counted = |p: &Arc<TenantProcess>| {
            if let Some(m) = crate::metrics::Metrics::get() {
                p.counted.store(true, Ordering::Relaxed);
                m.tenant_started(cold.elapsed());
            }
        };
        let start = (self.starter)().await?;
        // A pre-sandboxed process from the pool, if one is ready: only its name, its
        // environment and seccomp are left to apply.
        if let Some(p) = self.pooled.as_ref().and_then(|take| take()) {
            match p
                .specialise(&start.tenant, &start.comm, &start.secrets)
                .await
            {
                Ok(()) => {
                    counted(&p);
                    *slot = Some(Arc::clone(&p));
                    return Ok(p);
                }
                Err(e) => tracing::warn!(cause = %e, "starting the tenant process afresh"),
            }
        }
        let p = match TenantProcess::start(start, self.zygote.clone()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(cause = %e, "a tenant process could not start: its calls answer 503");
                if let Ok(mut failed) = self.start_failed.lock() {
                    *failed = Some(e.clone());
                }
                return Err(e);
            }
        };
        counted(&p);
        *slot = Some(Arc::clone(&p));
        Ok(p)
    }

    /// Runs one call in the tenant's process. The caller applies the deadline; the interrupt
    /// kills the process.
    pub fn call(
        module: &Module,
        endpoint: usize,
        args: &CallArgs,
        request: WireRequest,
    ) -> Dispatch {
        let Some(remote) = module.code.as_ref().and_then(|c| c.get::<RemoteModule>()) else {
            return Dispatch::Done(Err(CallFailure::Internal(format!(
                "module `{}` has no loaded code",
                module.name
            ))));
        };
        let process = Arc::clone(&remote.process);
        if process.dead.load(Ordering::Acquire) {
            return Dispatch::Done(Err(CallFailure::WorkerLost));
        }
        if let Ok(mut last) = process.last_module.lock() {
            last.clone_from(&module.name);
        }
        let rx = process.ask_call(|id| ToTenant::Call {
            id,
            module: module.name.clone(),
            endpoint,
            args: WireArgs::from_call(args),
            request,
        });
        let killer = Arc::clone(&process);
        Dispatch::Pending(rx, Interrupt::Kill(Arc::new(move || killer.kill())))
    }
}

/// How many times importing each source killed a tenant process (by a hash of its name and
/// bytes), shared by a worker's tenants: twice, and the source is not imported again
/// (SPEC §11.7, quarantine as in §9).
#[derive(Default)]
pub struct Deaths(Mutex<HashMap<u64, u32>>);

/// Imports that killed their process this many times are quarantined.
const QUARANTINE_AFTER: u32 = 2;

impl Deaths {
    fn key(request: &LoadRequest) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        request.name.hash(&mut h);
        request.source.hash(&mut h);
        h.finish()
    }

    fn count(&self, request: &LoadRequest) -> u32 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(&Self::key(request)).copied())
            .unwrap_or(0)
    }

    fn died(&self, requests: &[&LoadRequest]) {
        if let Ok(mut m) = self.0.lock() {
            for r in requests {
                *m.entry(Self::key(r)).or_insert(0) += 1;
            }
        }
    }

    fn survived(&self, request: &LoadRequest) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&Self::key(request));
        }
    }
}

impl TenantExec {
    /// One load message and its checked answer; `Err` when the process died or misbehaved.
    async fn load_batch(
        &self,
        process: &Arc<TenantProcess>,
        files: Option<Vec<FinderEntry>>,
        forget: Vec<String>,
        batch: &[&LoadRequest],
    ) -> Result<Vec<Loaded>, String> {
        let owned: Vec<LoadRequest> = batch.iter().map(|r| (*r).clone()).collect();
        let answer = process.ask(|id| ToTenant::Load {
            id,
            files: files.as_deref().map(files_to_wire),
            forget,
            requests: requests_to_wire(&owned),
        });
        let reports = match answer.await {
            Ok(FromTenant::Loaded { result, .. }) => result?,
            Ok(_) | Err(_) => {
                process.kill();
                self.deaths.died(batch);
                return Err("the tenant process stopped while loading".into());
            }
        };
        if reports.len() != batch.len() {
            process.kill();
            return Err("the tenant process answered a load with the wrong count".into());
        }
        let mut loaded = Vec::with_capacity(reports.len());
        for (report, request) in reports.into_iter().zip(batch) {
            self.deaths.survived(request);
            loaded.push(match report {
                WireLoaded::Ok { json } => match serde_json::from_str::<Report>(&json) {
                    Ok(Report::Ok(description)) => Loaded::Ok {
                        description,
                        json,
                        code: CodeRef::new(RemoteModule {
                            process: Arc::clone(process),
                        }),
                    },
                    _ => {
                        process.kill();
                        return Err("the tenant process sent a bad module description".into());
                    }
                },
                WireLoaded::ImportError { error, traceback } => {
                    Loaded::ImportError { error, traceback }
                }
                WireLoaded::Refused { error } => Loaded::Refused { error },
            });
        }
        Ok(loaded)
    }
}

impl Loader for TenantExec {
    /// Sources whose import killed a process before are imported one at a time after the
    /// others, so the one that kills again is the one counted; twice, and it is quarantined.
    fn load(
        &self,
        files: Option<Vec<FinderEntry>>,
        forget: Vec<String>,
        requests: Vec<LoadRequest>,
    ) -> Pin<Box<dyn Future<Output = crate::exec::load::LoadResult> + Send + '_>> {
        Box::pin(async move {
            let process = self.process().await?;
            let mut results: Vec<Option<Loaded>> = requests.iter().map(|_| None).collect();
            let mut clean: Vec<usize> = Vec::new();
            let mut suspects: Vec<usize> = Vec::new();
            for (i, r) in requests.iter().enumerate() {
                match self.deaths.count(r) {
                    0 => clean.push(i),
                    n if n >= QUARANTINE_AFTER => {
                        results[i] = Some(Loaded::ImportError {
                            error: format!(
                                "quarantined: importing this version of `{}` killed its tenant process {n} times",
                                r.name
                            ),
                            traceback: String::new(),
                        });
                    }
                    _ => suspects.push(i),
                }
            }
            let mut groups: Vec<Vec<usize>> = Vec::new();
            if !clean.is_empty() {
                groups.push(clean);
            }
            groups.extend(suspects.into_iter().map(|i| vec![i]));
            let (mut files, mut forget) = (files, forget);
            if groups.is_empty() && (files.is_some() || !forget.is_empty()) {
                groups.push(Vec::new());
            }
            for group in groups {
                let batch: Vec<&LoadRequest> = group.iter().map(|&i| &requests[i]).collect();
                let loaded = self
                    .load_batch(&process, files.take(), std::mem::take(&mut forget), &batch)
                    .await?;
                for (i, l) in group.into_iter().zip(loaded) {
                    results[i] = Some(l);
                }
            }
            results
                .into_iter()
                .map(|r| r.ok_or_else(|| "a load result is missing".to_string()))
                .collect()
        })
    }
}

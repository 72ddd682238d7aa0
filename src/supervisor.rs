//! The supervisor (SPEC §9): `dpms serve` binds the listener, never starts Python, and keeps
//! `DPMS_WORKERS` worker processes alive. Each worker re-executes this binary (`dpms worker`,
//! never a `fork()` of a process running Python or tokio), inherits the listening socket and
//! serves requests itself, so a plugin that crashes its process costs one worker, which is
//! replaced within a second while the others keep serving.
//!
//! Workers are spawned by one dedicated thread that lives as long as the supervisor: the
//! `PR_SET_PDEATHSIG` each worker sets fires when the *thread* that forked it exits, so this is
//! what makes workers die with the supervisor and never keep the port with old code.

use std::io::{PipeReader, Read};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variables a worker reads from its supervisor.
pub const ENV_LISTEN_FD: &str = "DPMS_LISTEN_FD";
pub const ENV_READY_FD: &str = "DPMS_READY_FD";
pub const ENV_WORKER_INDEX: &str = "DPMS_WORKER_INDEX";
/// A folder the workers share (see `plugins::registry::LastGood`), removed at exit.
pub const ENV_STATE_DIR: &str = "DPMS_STATE_DIR";

/// How often the monitor looks at its workers: the bound on "replaced within a second".
const POLL: Duration = Duration::from_millis(20);
/// A worker that dies sooner than this after starting is restarted with a growing delay.
const QUICK_DEATH: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the initial workers may take to load their plugins.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the supervisor needs to run its workers.
pub struct Plan {
    pub workers: usize,
    /// Arguments after `dpms worker` (the command-line overrides, passed through).
    pub args: Vec<String>,
    pub shutdown_time: Duration,
}

/// What a worker tells the supervisor over its own pipe, one line each.
enum Notice {
    /// `ready <index>`: plugins loaded, serving.
    Ready,
    /// `retire <index>`: stuck code makes it useless; replace it now, it exits by itself.
    Retire,
}

/// The longest line a worker sends; anything longer is garbage.
const MAX_LINE: usize = 32;
/// The most read from one worker's pipe per pass, so a flood cannot stall the monitor.
const MAX_READ: usize = 4096;

/// The read end of one worker's own pipe (SPEC §9). Plugin code runs in the worker and can
/// write to it, so what arrives speaks for that worker only, whatever index it names: a line
/// other than that worker's `ready`/`retire`, a second one of either, or an overlong line is
/// ignored (and logged once per worker), never acted on.
struct Channel {
    reader: PipeReader,
    pending: Vec<u8>,
    /// Inside an overlong line: drop bytes up to the next newline.
    discarding: bool,
    ready: bool,
    retire: bool,
    warned: bool,
}

impl Channel {
    fn new(reader: PipeReader) -> std::io::Result<Channel> {
        let fd = reader.as_raw_fd();
        // SAFETY: fcntl on a descriptor this process owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Channel {
            reader,
            pending: Vec::new(),
            discarding: false,
            ready: false,
            retire: false,
            warned: false,
        })
    }

    /// What worker `index` said since the last pass (never blocks).
    fn poll(&mut self, index: usize) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut buf = [0u8; 512];
        let mut total = 0;
        while total < MAX_READ {
            let n = match self.reader.read(&mut buf) {
                Ok(0) | Err(_) => break, // EOF (the worker is gone), or nothing more for now
                Ok(n) => n,
            };
            total += n;
            for &byte in &buf[..n] {
                if byte == b'\n' {
                    let line = std::mem::take(&mut self.pending);
                    if std::mem::replace(&mut self.discarding, false) {
                        self.reject(index);
                    } else if let Some(notice) = self.accept(index, &line) {
                        notices.push(notice);
                    }
                } else if !self.discarding {
                    self.pending.push(byte);
                    if self.pending.len() > MAX_LINE {
                        self.pending.clear();
                        self.discarding = true;
                    }
                }
            }
        }
        notices
    }

    fn accept(&mut self, index: usize, line: &[u8]) -> Option<Notice> {
        let (flag, notice) = if line == format!("ready {index}").as_bytes() {
            (&mut self.ready, Notice::Ready)
        } else if line == format!("retire {index}").as_bytes() {
            (&mut self.retire, Notice::Retire)
        } else {
            self.reject(index);
            return None;
        };
        if std::mem::replace(flag, true) {
            self.reject(index); // one of each per worker process
            return None;
        }
        Some(notice)
    }

    fn reject(&mut self, index: usize) {
        if !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(
                worker = index,
                "ignoring unexpected data on the worker's channel (plugin code writing to it?)"
            );
        }
    }
}

/// A retired worker draining its requests, killed if it outstays its grace period.
struct Retiring {
    child: Child,
    kill_at: Instant,
}

/// One worker slot: its process, if running, and when to (re)start it.
struct Slot {
    child: Option<Child>,
    /// The running worker's channel.
    channel: Option<Channel>,
    started: Instant,
    restart_at: Instant,
    backoff: Duration,
}

/// Runs the workers until `stop` is set, then stops them: SIGTERM, up to `shutdown_time` for
/// in-flight requests, then SIGKILL. `announce` runs once every initial worker is ready (or the
/// wait timed out with at least one ready).
pub fn run(
    plan: Plan,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    announce: impl FnOnce() + Send + 'static,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the dpms binary: {e}"))?;
    let parent = std::env::temp_dir();
    let state = crate::state_dir::create(&parent).map_err(|e| {
        format!(
            "cannot create a state folder in `{}`: {e}",
            parent.display()
        )
    })?;
    let monitor = std::thread::Builder::new()
        .name("dpms-supervisor".into())
        .spawn({
            let state = state.clone();
            move || monitor(plan, exe, &state, listener, stop, announce)
        })
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
    let result = monitor
        .join()
        .map_err(|_| "the supervisor thread panicked".to_string());
    let _ = std::fs::remove_dir_all(&state);
    result?
}

fn monitor(
    plan: Plan,
    exe: std::path::PathBuf,
    state: &std::path::Path,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    announce: impl FnOnce(),
) -> Result<(), String> {
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..plan.workers)
        .map(|_| Slot {
            child: None,
            channel: None,
            started: now,
            restart_at: now,
            backoff: Duration::from_millis(250),
        })
        .collect();
    let listen = listener.as_raw_fd();
    let mut announce = Some(announce);
    let mut ready = vec![false; plan.workers];
    let mut retiring: Vec<Retiring> = Vec::new();
    let waiting_since = Instant::now();

    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        for (index, slot) in slots.iter_mut().enumerate() {
            reap(index, slot, now);
            if slot.child.is_none() && now >= slot.restart_at {
                match spawn(&exe, &plan.args, state, index, listen) {
                    Ok((child, channel)) => {
                        tracing::info!(worker = index, pid = child.id(), "worker started");
                        slot.child = Some(child);
                        slot.channel = Some(channel);
                        slot.started = now;
                    }
                    Err(e) => {
                        tracing::error!(worker = index, cause = %e, "cannot start a worker");
                        slot.restart_at = now + MAX_BACKOFF.min(slot.backoff * 4);
                    }
                }
            }
        }
        for (index, slot) in slots.iter_mut().enumerate() {
            let notices = slot
                .channel
                .as_mut()
                .map(|c| c.poll(index))
                .unwrap_or_default();
            for notice in notices {
                match notice {
                    Notice::Ready => ready[index] = true,
                    Notice::Retire => {
                        slot.channel = None;
                        let Some(child) = slot.child.take() else {
                            continue;
                        };
                        tracing::warn!(
                            worker = index,
                            pid = child.id(),
                            "worker retiring; starting its replacement"
                        );
                        // It is shutting down already; should the notice not be its own, this
                        // makes it stop accepting and drain as it would have.
                        terminate(&child);
                        retiring.push(Retiring {
                            child,
                            kill_at: now + plan.shutdown_time + Duration::from_secs(2),
                        });
                        // The slot is empty now: the next pass starts the replacement.
                    }
                }
            }
        }
        retiring.retain_mut(|r| {
            if matches!(r.child.try_wait(), Ok(None)) && now < r.kill_at {
                return true;
            }
            let _ = r.child.kill();
            let _ = r.child.wait();
            false
        });
        if announce.is_some() {
            let all = ready.iter().all(|r| *r);
            let some = ready.iter().any(|r| *r);
            if all || (some && waiting_since.elapsed() > READY_TIMEOUT) {
                if !all {
                    tracing::warn!(
                        "not every worker became ready in time; serving with those that did"
                    );
                }
                if let Some(f) = announce.take() {
                    f();
                }
            } else if waiting_since.elapsed() > READY_TIMEOUT {
                stop_all(&mut slots, Duration::ZERO);
                return Err("no worker became ready: see the log above".into());
            }
        }
        std::thread::sleep(POLL);
    }
    drop(listener);
    for mut r in retiring {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    stop_all(&mut slots, plan.shutdown_time);
    Ok(())
}

/// Notes a worker that exited and schedules its replacement.
fn reap(index: usize, slot: &mut Slot, now: Instant) {
    let Some(child) = slot.child.as_mut() else {
        return;
    };
    let status = match child.try_wait() {
        Ok(Some(status)) => status,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(worker = index, cause = %e, "cannot check a worker");
            return;
        }
    };
    let lived = now.duration_since(slot.started);
    if lived < QUICK_DEATH {
        slot.restart_at = now + slot.backoff;
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    } else {
        slot.restart_at = now;
        slot.backoff = Duration::from_millis(250);
    }
    tracing::warn!(worker = index, %status, lived_ms = lived.as_millis() as u64, "worker exited; replacing it");
    slot.child = None;
    slot.channel = None;
}

/// mimalloc settings a worker starts with (see `spawn`).
pub const MIMALLOC_DEFAULTS: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_RESERVE", "64M"),
    ("MIMALLOC_PURGE_DELAY", "0"),
];

fn spawn(
    exe: &std::path::Path,
    args: &[String],
    state: &std::path::Path,
    index: usize,
    listen: RawFd,
) -> std::io::Result<(Child, Channel)> {
    let parent = std::process::id();
    // Its own pipe: the supervisor knows who speaks on it (see `Channel`). Both ends are
    // close-on-exec; the child's copy of the write end is made inheritable below.
    let (reader, writer) = std::io::pipe()?;
    let channel = Channel::new(reader)?;
    let ready = writer.as_raw_fd();
    let stderr: OwnedFd = std::io::stderr().as_fd().try_clone_to_owned()?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .args(args)
        .env(ENV_LISTEN_FD, listen.to_string())
        .env(ENV_READY_FD, ready.to_string())
        .env(ENV_WORKER_INDEX, index.to_string())
        .env(ENV_STATE_DIR, state)
        .stdin(Stdio::null())
        // Only the supervisor writes to stdout (the `listening on` line).
        .stdout(Stdio::from(stderr));
    // mimalloc settings for workers, unless the user chose their own. It reserves address space
    // 1 GiB at a time by default, which `DPMS_WORKER_MEMORY` (RLIMIT_AS) counts in full, while a
    // worker's Rust heap is a few MiB. And it returns freed pages to the system after a second:
    // reloads run on any of the Python threads, each with its own heap, and with the delay the
    // pages those heaps keep made a worker's RSS plateau about twice as high (bench/README.md,
    // soak); returning them at once cost nothing measurable on the request path.
    for (name, value) in MIMALLOC_DEFAULTS {
        if std::env::var_os(name).is_none() {
            cmd.env(name, value);
        }
    }
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, fcntl, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            for fd in [listen, ready] {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Only the worker holds the write end now: its exit is the pipe's end.
    drop(writer);
    Ok((child, channel))
}

/// SIGTERM to a worker: it stops accepting and drains its requests.
fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// SIGTERM to every worker, up to `grace` for them to finish, then SIGKILL.
fn stop_all(slots: &mut [Slot], grace: Duration) {
    for child in slots.iter_mut().filter_map(|s| s.child.as_mut()) {
        terminate(child);
    }
    // A second beyond the workers' own grace period, for them to exit by themselves.
    let deadline = Instant::now() + grace + Duration::from_secs(1);
    loop {
        let mut running = 0;
        for child in slots.iter_mut().filter_map(|s| s.child.as_mut()) {
            if matches!(child.try_wait(), Ok(None)) {
                running += 1;
            }
        }
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    for child in slots.iter_mut().filter_map(|s| s.child.as_mut()) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The worker's side: the inherited listener, index and readiness pipe.
pub struct WorkerEnv {
    pub listener: TcpListener,
    pub index: usize,
    pub state_dir: Option<std::path::PathBuf>,
    ready: Arc<std::fs::File>,
}

impl WorkerEnv {
    /// Reads what the supervisor passed.
    pub fn from_env() -> Result<WorkerEnv, String> {
        use std::os::fd::FromRawFd;
        let fd = |name: &str| -> Result<RawFd, String> {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("`dpms worker` is started by `dpms serve` (missing {name})"))
        };
        let listen = fd(ENV_LISTEN_FD)?;
        let ready = fd(ENV_READY_FD)?;
        let index = fd(ENV_WORKER_INDEX)? as usize;
        let state_dir = std::env::var_os(ENV_STATE_DIR).map(Into::into);
        // Plugin code must not find them in `os.environ` (SPEC §9). This process has one
        // thread yet, and Python, which copies the environment, has not started.
        for name in [ENV_LISTEN_FD, ENV_READY_FD, ENV_WORKER_INDEX, ENV_STATE_DIR] {
            std::env::remove_var(name);
        }
        for fd in [listen, ready] {
            // Inherited without close-on-exec; set it again so programs a plugin starts do not
            // hold the port or the pipe.
            // SAFETY: fcntl on descriptors this process owns.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
        // SAFETY: the supervisor passed these descriptors open and for us alone to own.
        let listener = unsafe { TcpListener::from_raw_fd(listen) };
        let ready = unsafe { std::fs::File::from_raw_fd(ready) };
        // Open for the worker's whole life (a closed number would be reused, for a client
        // socket), and closed in every child plugin code forks.
        crate::fork_guard::protect_channel(ready.as_raw_fd());
        Ok(WorkerEnv {
            listener,
            index,
            state_dir,
            ready: Arc::new(ready),
        })
    }

    /// The worker index, the listener and the readiness signal, apart.
    pub fn split(self) -> (usize, TcpListener, Ready) {
        let ready = Ready {
            index: self.index,
            pipe: self.ready,
            sent: false,
        };
        (self.index, self.listener, ready)
    }
}

/// Tells the supervisor that this worker is retiring, with the reason (for the log).
pub type RetireNotice = Box<dyn FnOnce(&str) + Send>;

/// Tells the supervisor, once, that this worker has loaded its plugins.
pub struct Ready {
    index: usize,
    pipe: Arc<std::fs::File>,
    sent: bool,
}

impl Ready {
    pub fn send(&mut self) {
        if !std::mem::replace(&mut self.sent, true) {
            notify(&self.pipe, &format!("ready {}\n", self.index));
        }
    }

    /// A handle that tells the supervisor this worker is retiring (see `pyhost::Watchdog`).
    pub fn retire_notice(&self) -> RetireNotice {
        let pipe = Arc::clone(&self.pipe);
        let index = self.index;
        Box::new(move |reason| {
            tracing::warn!(reason, "asking the supervisor for a replacement");
            notify(&pipe, &format!("retire {index}\n"));
        })
    }
}

/// One write of under PIPE_BUF bytes: atomic, so lines of workers never interleave.
fn notify(mut pipe: &std::fs::File, line: &str) {
    use std::io::Write;
    let _ = pipe.write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn said(channel: &mut Channel, index: usize) -> Vec<&'static str> {
        channel
            .poll(index)
            .into_iter()
            .map(|n| match n {
                Notice::Ready => "ready",
                Notice::Retire => "retire",
            })
            .collect()
    }

    #[test]
    fn a_channel_speaks_for_its_worker_once() -> std::io::Result<()> {
        let (reader, mut writer) = std::io::pipe()?;
        let mut channel = Channel::new(reader)?;
        assert!(
            said(&mut channel, 1).is_empty(),
            "nothing written: no notice, no block"
        );
        writer.write_all(b"retire 0\nready 2\n\xff\xfe\nready 1\nready 1\nret")?;
        assert_eq!(said(&mut channel, 1), ["ready"]);
        assert!(channel.warned);
        writer.write_all(b"ire 1\nretire 1\n")?;
        assert_eq!(
            said(&mut channel, 1),
            ["retire"],
            "a line split across reads"
        );
        Ok(())
    }

    #[test]
    fn an_overlong_line_is_dropped_whole() -> std::io::Result<()> {
        let (reader, mut writer) = std::io::pipe()?;
        let mut channel = Channel::new(reader)?;
        let mut junk = vec![b'x'; 1000];
        junk.extend_from_slice(b"retire 3\nready 3\n");
        writer.write_all(&junk)?;
        assert_eq!(said(&mut channel, 3), ["ready"]);
        Ok(())
    }
}

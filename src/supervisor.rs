//! The supervisor (SPEC §9): `dpms serve` binds the listener, never starts Python, and keeps
//! `DPMS_WORKERS` worker processes alive. Each worker re-executes this binary (`dpms worker`,
//! never a `fork()` of a process running Python or tokio), inherits the listening socket and
//! serves requests itself, so a plugin that crashes its process costs one worker, which is
//! replaced within a second while the others keep serving.
//!
//! Workers are spawned by one dedicated thread that lives as long as the supervisor: the
//! `PR_SET_PDEATHSIG` each worker sets fires when the *thread* that forked it exits, so this is
//! what makes workers die with the supervisor and never keep the port with old code.
//!
//! The supervisor is the only process that reads the settings (`.env`, the environment,
//! flags). Each worker gets the supervisor's checked [`Config`] in one [`Handoff`] on a socket
//! of its own, and refuses to start without it, so every worker — a replacement after a crash
//! too, however `.env` changed meanwhile — runs with the settings the server started with.

use std::io::{PipeReader, Read};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ipc;

/// Environment variables a worker reads from its supervisor.
pub const ENV_LISTEN_FD: &str = "DPMS_LISTEN_FD";
pub const ENV_READY_FD: &str = "DPMS_READY_FD";
pub const ENV_WORKER_INDEX: &str = "DPMS_WORKER_INDEX";
/// A folder the workers share (see `plugins::registry::LastGood`), removed at exit.
pub const ENV_STATE_DIR: &str = "DPMS_STATE_DIR";
/// The worker's end of the socket its [`Handoff`] arrives on.
pub const ENV_HANDOFF_FD: &str = "DPMS_HANDOFF_FD";

/// The largest handoff either side accepts. A Config is a few KiB; `.env` entries that are not
/// settings ride along ([`Config::extra_env`]), and a `.env` past this is not a settings file.
pub const MAX_HANDOFF: u32 = 4 << 20;
/// How long a worker waits for its handoff, and the supervisor for the send to complete (the
/// frame usually fits the socket buffer, so the send does not wait for the worker at all).
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// What the supervisor tells each worker before it starts, the one message on its handoff
/// socket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// The settings the supervisor checked at start, the same for every worker it ever starts.
    /// `state_dir` is not set here: each worker takes it from `DPMS_STATE_DIR`.
    pub config: Config,
}

/// How often the monitor looks at its workers: the bound on "replaced within a second".
const POLL: Duration = Duration::from_millis(20);
/// A worker that dies sooner than this after starting is restarted with a growing delay.
const QUICK_DEATH: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the initial workers may take to load their plugins.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the supervisor needs to run its workers.
pub struct Plan {
    /// The checked settings: sent as they are to every worker; `workers` and `shutdown_time`
    /// are the supervisor's own.
    pub config: Config,
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
    let handoff = Handoff {
        config: plan.config,
    };
    // Refused now, with one line, rather than at every worker start.
    let size = serde_json::to_vec(&handoff)
        .map_err(|e| format!("cannot encode the settings for the workers: {e}"))?
        .len();
    if size > MAX_HANDOFF as usize {
        return Err(format!(
            "the settings take {size} bytes, over the {MAX_HANDOFF} a worker accepts: is `.env` a settings file?"
        ));
    }
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
            move || monitor(&handoff, exe, &state, listener, stop, announce)
        })
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
    let result = monitor
        .join()
        .map_err(|_| "the supervisor thread panicked".to_string());
    let _ = std::fs::remove_dir_all(&state);
    result?
}

fn monitor(
    handoff: &Handoff,
    exe: std::path::PathBuf,
    state: &std::path::Path,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    announce: impl FnOnce(),
) -> Result<(), String> {
    let workers = handoff.config.workers;
    let shutdown_time = handoff.config.shutdown_time;
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..workers)
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
    let mut ready = vec![false; workers];
    let mut retiring: Vec<Retiring> = Vec::new();
    let waiting_since = Instant::now();

    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        for (index, slot) in slots.iter_mut().enumerate() {
            reap(index, slot, now);
            if slot.child.is_none() && now >= slot.restart_at {
                match spawn(&exe, handoff, state, index, listen) {
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
                            kill_at: now + shutdown_time + Duration::from_secs(2),
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
    stop_all(&mut slots, shutdown_time);
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

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
enum SpawnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot send the worker its handoff: {0}")]
    Handoff(#[source] ipc::Error),
}

fn spawn(
    exe: &std::path::Path,
    handoff: &Handoff,
    state: &std::path::Path,
    index: usize,
    listen: RawFd,
) -> Result<(Child, Channel), SpawnError> {
    // Its own pipe: the supervisor knows who speaks on it (see `Channel`). Both ends are
    // close-on-exec; the child's copy of the write end is made inheritable below.
    let (reader, writer) = std::io::pipe()?;
    let channel = Channel::new(reader)?;
    let ready = writer.as_raw_fd();
    // Its own handoff socket, close-on-exec like the pipe: no other worker can read this one's.
    let (to_worker, worker_end) = ipc::socket_pair()?;
    let handoff_fd = worker_end.as_raw_fd();
    let stderr: OwnedFd = std::io::stderr().as_fd().try_clone_to_owned()?;
    let mut cmd = Command::new(exe);
    // No flags: the worker's settings are all in the handoff.
    cmd.arg("worker")
        .env(ENV_LISTEN_FD, listen.to_string())
        .env(ENV_READY_FD, ready.to_string())
        .env(ENV_HANDOFF_FD, handoff_fd.to_string())
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
    crate::child::dies_with_this_thread(
        &mut cmd,
        vec![(listen, listen), (ready, ready), (handoff_fd, handoff_fd)],
    );
    let mut child = cmd.spawn()?;
    // Only the worker holds the write end now: its exit is the pipe's end.
    drop(writer);
    drop(worker_end);
    if let Err(e) = send_handoff(to_worker, handoff) {
        // Without its handoff it would refuse to start anyway: do not leave it waiting.
        let _ = child.kill();
        let _ = child.wait();
        return Err(SpawnError::Handoff(e));
    }
    Ok((child, channel))
}

/// Writes the one handoff and closes the supervisor's end: there is nothing more to say, and
/// nothing a worker (or plugin code in it) writes back is ever read.
fn send_handoff(stream: UnixStream, handoff: &Handoff) -> Result<(), ipc::Error> {
    stream.set_write_timeout(Some(HANDOFF_TIMEOUT))?;
    let mut sender = ipc::Sender::new(stream, MAX_HANDOFF);
    sender.send(handoff)
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

/// The worker's side: the inherited listener, index, readiness pipe and the handoff read from
/// its socket.
pub struct WorkerEnv {
    pub listener: TcpListener,
    pub index: usize,
    pub state_dir: Option<std::path::PathBuf>,
    /// What the supervisor sent; `handoff.config.state_dir` is still unset (see [`Handoff`]).
    pub handoff: Handoff,
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
        let handoff_fd = fd(ENV_HANDOFF_FD)?;
        let index = fd(ENV_WORKER_INDEX)? as usize;
        let state_dir = std::env::var_os(ENV_STATE_DIR).map(Into::into);
        // Plugin code must not find them in `os.environ` (SPEC §9). This process has one
        // thread yet, and Python, which copies the environment, has not started.
        for name in [
            ENV_LISTEN_FD,
            ENV_READY_FD,
            ENV_HANDOFF_FD,
            ENV_WORKER_INDEX,
            ENV_STATE_DIR,
        ] {
            std::env::remove_var(name);
        }
        for fd in [listen, ready, handoff_fd] {
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
        let handoff = read_handoff(handoff_fd)?;
        // Both open for the worker's whole life (a closed number would be reused, for a client
        // socket), and closed in every child plugin code forks.
        let protected = crate::fork_guard::protect_channel(ready.as_raw_fd())
            && crate::fork_guard::protect_channel(handoff_fd);
        if !protected {
            return Err("cannot keep the supervisor's channels from forked children".into());
        }
        Ok(WorkerEnv {
            listener,
            index,
            state_dir,
            handoff,
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

/// Reads the one [`Handoff`] from the inherited socket `fd` (within [`HANDOFF_TIMEOUT`]), then
/// keeps the descriptor open for the process's life (see `fork_guard`).
fn read_handoff(fd: RawFd) -> Result<Handoff, String> {
    use std::os::fd::FromRawFd;
    let refuse = |why: String| format!("`dpms worker` needs the handoff of `dpms serve`: {why}");
    if !is_unix_stream(fd) {
        return Err(refuse(format!(
            "{ENV_HANDOFF_FD}={fd} is not a Unix stream socket"
        )));
    }
    // SAFETY: the supervisor passed this descriptor open and for us alone to own; it is a
    // socket (checked above).
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    stream
        .set_read_timeout(Some(HANDOFF_TIMEOUT))
        .map_err(|e| refuse(e.to_string()))?;
    let mut receiver = ipc::Receiver::<Handoff>::new(stream, MAX_HANDOFF);
    let received = receiver.recv();
    // Kept open, like the readiness pipe, rather than closed: the worker's one channel from
    // its supervisor stays for what may follow the handoff later, and a closed number would be
    // reused (for a client socket) while `fork_guard` closes it in forked children.
    let _ = receiver.into_inner().into_raw_fd();
    received.map_err(|e| match e {
        ipc::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            refuse(format!(
                "none arrived within {} s",
                HANDOFF_TIMEOUT.as_secs()
            ))
        }
        ipc::Error::Closed => refuse("its socket closed without one".into()),
        e => refuse(format!("cannot read it: {e}")),
    })
}

/// `fd` is an open `AF_UNIX` `SOCK_STREAM` socket.
fn is_unix_stream(fd: RawFd) -> bool {
    let option = |name: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a local int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    option(libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && option(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
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

    fn handoff() -> Handoff {
        let dir = std::env::temp_dir();
        let env = [
            ("plugins".to_string(), dir.display().to_string()),
            ("NUM_URL_PARMS".to_string(), "2".to_string()),
        ];
        let dotenv = [("FOO".to_string(), "old".to_string())];
        let sources = crate::config::Sources::new(
            dotenv.into_iter().collect(),
            env.into_iter().collect(),
            crate::config::Overrides::default(),
        );
        match sources.config(&dir) {
            Ok(config) => Handoff { config },
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_worker_reads_the_handoff_it_was_sent() -> Result<(), ipc::Error> {
        let sent = handoff();
        let (ours, theirs) = ipc::socket_pair()?;
        send_handoff(ours, &sent)?;
        let fd = theirs.into_raw_fd();
        assert_eq!(read_handoff(fd), Ok(sent));
        // SAFETY: `read_handoff` left the descriptor open and this test owns it.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        Ok(())
    }

    #[test]
    fn a_worker_refuses_a_socket_without_a_handoff() -> std::io::Result<()> {
        let (ours, theirs) = ipc::socket_pair()?;
        drop(ours);
        let fd = theirs.into_raw_fd();
        let err = read_handoff(fd).err().unwrap_or_default();
        assert!(err.contains("closed without one"), "{err}");
        // SAFETY: as above.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let (reader, _writer) = std::io::pipe()?;
        let err = read_handoff(reader.as_raw_fd()).err().unwrap_or_default();
        assert!(err.contains("not a Unix stream socket"), "{err}");
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

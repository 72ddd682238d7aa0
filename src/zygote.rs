//! The tenant zygote (SPEC §9's one exception to "never fork after Python started"): a
//! single-threaded `dpms zygote` process with the interpreter initialised and the common
//! standard modules imported and frozen, which forks one child per tenant process. A fork of
//! this pre-imported parent costs a few milliseconds where a fresh interpreter costs tens.
//!
//! Protocol on its control socket: the worker sends one byte with two descriptors attached
//! (`SCM_RIGHTS`): the tenant process's end of a new channel, and the pipe its descriptors 1
//! and 2 write to. The zygote forks; the child
//! reads its `Start` from that channel and becomes the tenant process (see
//! [`crate::tenant_proc`]); the parent answers with the child's pid (4 bytes, big-endian; 0
//! when the fork failed). The zygote never reads a `Start`, so it never holds a secret, and
//! it was started with a cleared environment, so no fork can carry one (SPEC §10).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The descriptor number of the control socket in the zygote.
const CONTROL_FD: RawFd = 3;

/// Runs the zygote on the inherited control socket until it closes.
pub fn run(fd: RawFd) -> Result<(), String> {
    crate::pyhost::zygote_prepare().map_err(|e| e.to_string())?;
    // SAFETY: the worker passed this descriptor open, for this process alone.
    let control = unsafe { OwnedFd::from_raw_fd(fd) };
    // Children are reaped by the kernel: the zygote never waits for them.
    // SAFETY: plain signal disposition change in a single-threaded process.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    loop {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("control socket: {e}"))?;
        if msg.bytes == 0 {
            return Ok(()); // the worker is gone
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    for fd in received {
                        // SAFETY: the kernel just gave us this descriptor.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let mut fds = fds.into_iter();
        let pid = match (fds.next(), fds.next()) {
            (Some(channel), Some(output)) => fork_tenant(channel, output, control.as_raw_fd()),
            _ => 0,
        };
        let mut out = std::fs::File::from(control.try_clone().map_err(|e| e.to_string())?);
        out.write_all(&(pid.max(0) as u32).to_be_bytes())
            .map_err(|e| format!("control socket: {e}"))?;
    }
}

/// Forks the child that becomes a tenant process; returns its pid (0 on failure). The child
/// never returns from here.
fn fork_tenant(channel: OwnedFd, output: OwnedFd, control: RawFd) -> libc::pid_t {
    match crate::pyhost::fork_with_python() {
        Ok(0) => {
            // SAFETY: the child resets what it inherited: default SIGCHLD (the sandbox's
            // middle process waits for its child), death with the zygote, no control socket.
            unsafe {
                libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // The channel takes descriptor 3 (the control socket's number, closed by
                // the dup2), as in a tenant process started afresh.
                if control != CONTROL_FD {
                    libc::close(control);
                }
                if libc::dup2(channel.as_raw_fd(), CONTROL_FD) < 0
                    || libc::dup2(output.as_raw_fd(), 1) < 0
                    || libc::dup2(output.as_raw_fd(), 2) < 0
                {
                    libc::_exit(1);
                }
            }
            drop(channel);
            drop(output);
            let code = match crate::tenant_proc::run(CONTROL_FD) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("dpms: tenant process: {e}");
                    1
                }
            };
            crate::telemetry::flush();
            // SAFETY: the child ends here without running the zygote's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("dpms: zygote: cannot fork: {e}");
            0
        }
    }
}

/// A worker's handle on its zygote.
pub struct Zygote {
    control: Mutex<UnixStream>,
    pid: libc::pid_t,
    /// Cleared when the zygote exited (a new one is started for the next tenant process).
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Zygote {
    /// Starts `dpms zygote` with a cleared environment. Call it from a thread that lives as
    /// long as the worker (the zygote dies with the thread that started it).
    pub fn start() -> Result<Zygote, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find dpms itself: {e}"))?;
        let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        let fd = theirs.as_raw_fd();
        let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(["zygote", "--channel", &CONTROL_FD.to_string()])
            .env_clear()
            .envs(crate::supervisor::MIMALLOC_DEFAULTS)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr));
        crate::child::dies_with_this_thread(&mut cmd, vec![(fd, CONTROL_FD)]);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the tenant zygote: {e}"))?;
        drop(theirs);
        let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watching = std::sync::Arc::clone(&alive);
        let _ = std::thread::Builder::new()
            .name("dpms-zygote-reap".into())
            .spawn(move || {
                let _ = child.wait();
                watching.store(false, std::sync::atomic::Ordering::Release);
            });
        Ok(Zygote {
            control: Mutex::new(ours),
            pid,
            alive,
        })
    }

    /// Forks a new tenant process whose channel is `theirs` and whose descriptors 1 and 2
    /// are `output`; returns its host pid.
    pub fn fork(
        &self,
        theirs: &UnixStream,
        output: &std::io::PipeWriter,
    ) -> Result<libc::pid_t, String> {
        let mut control = self
            .control
            .lock()
            .map_err(|_| "the zygote's channel is poisoned".to_string())?;
        let fds = [theirs.as_raw_fd(), output.as_raw_fd()];
        let iov = [IoSlice::new(&[1u8])];
        sendmsg::<()>(
            control.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("the tenant zygote is gone: {e}"))?;
        let mut pid = [0u8; 4];
        control
            .read_exact(&mut pid)
            .map_err(|e| format!("the tenant zygote is gone: {e}"))?;
        match u32::from_be_bytes(pid) {
            0 => Err("the tenant zygote could not fork".into()),
            pid => libc::pid_t::try_from(pid).map_err(|e| e.to_string()),
        }
    }

    /// The zygote's pid.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Whether the zygote process still runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
    }
}

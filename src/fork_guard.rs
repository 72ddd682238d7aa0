//! What a process forked by plugin code must not keep (SPEC §9): the listening socket, the
//! connections accepted from it and the supervisor's channels (readiness pipe, handoff socket).
//!
//! Every server descriptor is close-on-exec, which covers `subprocess` and every other
//! fork-then-exec. A bare `fork()` (`os.fork`, `multiprocessing` with the fork start method, a C
//! library) copies every descriptor into the child, which then kept the port listening after
//! the server stopped (clients hung, a restart failed with "Address already in use"). A
//! `pthread_atfork` child handler, which runs inside every `fork()` of this process whoever
//! calls it, closes them in the child and gives SIGTERM/SIGINT back their default action (the
//! handlers tokio installed would write into the worker's signal pipe).

use std::net::TcpListener;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU16, Ordering};
use std::sync::Once;

/// The listening socket's family and port (0 until [`install`]). The listener is found by
/// these, like the connections it accepted, not by its number: the number is free for reuse
/// once the listener is dropped at shutdown.
static LISTEN_FAMILY: AtomicI32 = AtomicI32::new(-1);
static LISTEN_PORT: AtomicU16 = AtomicU16::new(0);
/// The supervisor channels' descriptors (`-1`: a free slot; all free in a single-process
/// server), each open for the worker's whole life: a closed number would be reused, and the
/// child would lose whatever took it. A fixed array, since the fork handler may not allocate.
static CHANNEL_FDS: [AtomicI32; MAX_CHANNELS] = [const { AtomicI32::new(-1) }; MAX_CHANNELS];
/// A worker has two: the readiness pipe and the handoff socket.
const MAX_CHANNELS: usize = 4;

/// Names a supervisor channel's descriptor, closed in every forked child. Returns `false`, and
/// protects nothing, when every slot is taken (a programming error: raise [`MAX_CHANNELS`]).
#[must_use]
pub fn protect_channel(fd: RawFd) -> bool {
    CHANNEL_FDS.iter().any(|slot| {
        slot.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })
}

/// Registers the fork handler (once per process) for `listener` and what it accepts.
pub fn install(listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        LISTEN_FAMILY.store(family, Ordering::Release);
        LISTEN_PORT.store(addr.port(), Ordering::Release);
    }
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function that lives as long as the process.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            tracing::warn!(
                code = rc,
                "cannot register the fork handler: processes forked by plugins keep the port"
            );
        }
    });
}

/// Runs in the child of every `fork()`, before `fork` returns there: async-signal-safe calls
/// only (no allocation, no lock), since other threads may have held any lock at the fork.
extern "C" fn in_child() {
    // SAFETY: signal(2), close(2) and the calls in `close_listening` are async-signal-safe and
    // only touch this (new, single-threaded) process.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        for slot in &CHANNEL_FDS {
            let channel = slot.load(Ordering::Acquire);
            if channel >= 0 {
                libc::close(channel);
            }
        }
        close_listening();
    }
}

/// Closes every TCP socket whose local port is the listener's: the listener and the connections
/// it accepted (a bound port is never an outgoing connection's local port, so plugins' own
/// connections stay).
fn close_listening() {
    // SAFETY: async-signal-safe system calls on this process's own descriptors, into stack buffers.
    unsafe {
        let family = LISTEN_FAMILY.load(Ordering::Acquire);
        let port = LISTEN_PORT.load(Ordering::Acquire);
        if port == 0 {
            return;
        }
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return;
        }
        // `linux_dirent64` records: inode (8), offset (8), record length (2), type (1), name.
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let mut at = 0;
            while at + 19 < n {
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen == 0 || at + reclen > n {
                    break;
                }
                let mut fd: i64 = 0;
                let mut digits = 0;
                for &b in &buf[at + 19..at + reclen] {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    fd = fd * 10 + i64::from(b - b'0');
                    digits += 1;
                    if fd > i64::from(i32::MAX) {
                        break;
                    }
                }
                at += reclen;
                if digits == 0 || fd > i64::from(i32::MAX) {
                    continue; // `.` and `..`
                }
                let fd = fd as RawFd;
                if fd != dir && is_listeners(fd, family, port) {
                    libc::close(fd);
                }
            }
        }
        libc::close(dir);
    }
}

/// A TCP stream socket of the listener's family with the listener's local port.
fn is_listeners(fd: RawFd, family: i32, port: u16) -> bool {
    // SAFETY: getsockopt/getsockname write at most the lengths given into local buffers; the address is
    // read as the type its family says.
    unsafe {
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let got = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        );
        if got != 0 || kind != libc::SOCK_STREAM {
            return false; // not a socket, or not a stream
        }
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            return false;
        }
        if i32::from(addr.ss_family) != family {
            return false;
        }
        let local = if family == libc::AF_INET {
            let v4 = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            v4.sin_port
        } else {
            let v6 = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            v6.sin6_port
        };
        u16::from_be(local) == port
    }
}

//! Child processes this binary starts of itself (workers, the tenant zygote, tenant processes
//! started afresh): each dies with the thread that started it, and inherits exactly the
//! descriptors it is given, at the numbers it is given.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Sets up `cmd` so that its process gets SIGKILL when the thread calling `spawn` ends
/// (`PR_SET_PDEATHSIG`: call it from a thread that lives as long as the parent should keep
/// it), exits at once if the parent already died, and inherits each `(fd, number)` pair: the
/// parent's `fd` becomes the child's `number` (the same number keeps it, without
/// close-on-exec). Every other descriptor keeps its close-on-exec flag.
pub fn dies_with_this_thread(cmd: &mut Command, inherit: Vec<(RawFd, RawFd)>) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, fcntl, dup2, _exit).
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
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            for &(fd, number) in &inherit {
                if fd == number {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, number) < 0 {
                    // dup2 leaves the new number without close-on-exec: it is inherited.
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

//! The raw system calls behind each sandbox layer, one small function per step, each
//! returning the layer name on failure.

use std::ffi::CString;

use super::{SandboxError, Spec};

fn check(rc: libc::c_long, layer: &'static str) -> Result<(), SandboxError> {
    if rc < 0 {
        Err(SandboxError::os(layer))
    } else {
        Ok(())
    }
}

/// Runs `f` in a forked child and reports whether it returned true. The child only makes
/// system calls and `_exit`s, which is what is safe after fork.
pub(super) fn try_in_child(f: impl FnOnce() -> bool) -> bool {
    // SAFETY: the caller is single-threaded (documented on `probe`); the child exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return false;
    }
    if pid == 0 {
        let ok = f();
        // SAFETY: leaves the child without running destructors shared with the parent.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    wait_exit(pid) == Some(0)
}

/// Waits for `pid`; its exit code, or 128 + signal.
fn wait_exit(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: plain waitpid on our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

pub(super) fn setsid() -> Result<(), SandboxError> {
    // SAFETY: no pointers.
    check(unsafe { libc::setsid() } as libc::c_long, "setsid")
}

pub(super) fn set_dumpable() -> Result<(), SandboxError> {
    // SAFETY: no pointers.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } as libc::c_long,
        "dumpable",
    )
}

/// Leaves root for the tenant's host uid and gid, with no supplementary groups.
pub(super) fn become_host_user(uid: u32, gid: u32) -> Result<(), SandboxError> {
    // SAFETY: an empty group list.
    check(
        unsafe { libc::setgroups(0, std::ptr::null()) } as libc::c_long,
        "host_uid",
    )?;
    // SAFETY: no pointers.
    check(
        unsafe { libc::setresgid(gid, gid, gid) } as libc::c_long,
        "host_uid",
    )?;
    // SAFETY: no pointers.
    check(
        unsafe { libc::setresuid(uid, uid, uid) } as libc::c_long,
        "host_uid",
    )
}

/// All six namespaces at once: the user namespace is created first by the kernel, so an
/// unprivileged uid may create the others.
pub(super) fn unshare_all() -> Result<(), SandboxError> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNS;
    // SAFETY: no pointers.
    check(
        unsafe { libc::unshare(flags) } as libc::c_long,
        "namespaces",
    )
}

fn write_file(path: &str, data: &str, layer: &'static str) -> Result<(), SandboxError> {
    std::fs::write(path, data).map_err(|source| SandboxError::Layer { layer, source })
}

pub(super) fn write_id_maps(
    inner_uid: u32,
    host_uid: u32,
    inner_gid: u32,
    host_gid: u32,
) -> Result<(), SandboxError> {
    write_file("/proc/self/setgroups", "deny", "id_maps")?;
    write_file(
        "/proc/self/uid_map",
        &format!("{inner_uid} {host_uid} 1\n"),
        "id_maps",
    )?;
    write_file(
        "/proc/self/gid_map",
        &format!("{inner_gid} {host_gid} 1\n"),
        "id_maps",
    )
}

/// Forks once more so the caller continues as pid 1 of the new pid namespace. The middle
/// process waits for it and exits with its status (it keeps no secret and runs no tenant
/// code; the host kills the whole namespace by killing pid 1 from outside).
pub(super) fn fork_into_pid_namespace() -> Result<(), SandboxError> {
    // SAFETY: single-threaded caller (documented on `enter`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SandboxError::os("pid_namespace"));
    }
    if pid > 0 {
        // The middle process keeps no descriptor but the standard ones: when pid 1 dies, the
        // host must see its channel close at once, not when this process exits too.
        // SAFETY: closes a descriptor range; no pointers.
        unsafe {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        }
        let code = wait_exit(pid).unwrap_or(127);
        // SAFETY: the middle process ends here without touching shared state.
        unsafe { libc::_exit(code) }
    }
    // The host kills the namespace by killing the middle process, its own child: pid 1 then
    // dies with it, and the kernel kills everything else in the namespace.
    // SAFETY: prctl with plain integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(SandboxError::os("pid_namespace"));
    }
    Ok(())
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), SandboxError> {
    let c = |s: &str| CString::new(s).map_err(|_| SandboxError::Spec(format!("NUL in `{s}`")));
    let (src, target, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    check(rc as libc::c_long, "mounts")
}

/// Mount propagation made private (nothing leaks back to the host), a fresh /proc that
/// shows only this pid namespace, and the size-capped scratch tmpfs.
pub(super) fn mount_proc_and_scratch(scratch: &str, bytes: u64) -> Result<(), SandboxError> {
    mount("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid, "hidepid=2")?;
    mount(
        "dpms-scratch",
        scratch,
        "tmpfs",
        nosuid,
        &format!(
            "size={bytes},mode=0700,uid={},gid={}",
            super::INNER_ID,
            super::INNER_ID
        ),
    )
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), SandboxError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit struct.
    check(
        unsafe { libc::setrlimit(resource, &lim) } as libc::c_long,
        "rlimits",
    )
}

pub(super) fn set_limits(spec: &Spec) -> Result<(), SandboxError> {
    set_limit(libc::RLIMIT_CORE, 0)?;
    set_limit(libc::RLIMIT_NOFILE, spec.nofile)?;
    set_limit(libc::RLIMIT_FSIZE, spec.fsize_bytes)?;
    // RLIMIT_NPROC counts every process and thread of the real uid: without a uid of its
    // own (`DPMS_SANDBOX=relaxed`, no host_uid layer) that count is the server's, so the
    // limit would stop the tenant's threads for the server's sake; it is left as it was.
    if spec.apply.host_uid {
        set_limit(libc::RLIMIT_NPROC, spec.nproc)?;
    }
    if let Some(bytes) = spec.memory_bytes {
        set_limit(libc::RLIMIT_AS, bytes)?;
    }
    Ok(())
}

/// The capabilities the new user namespace granted (needed for the mounts) are dropped:
/// effective, permitted and inheritable to zero (ambient follows permitted). The uid inside
/// is not 0, so an `execve` does not regain them.
pub(super) fn drop_capabilities() -> Result<(), SandboxError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data words as capset(2) v3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(rc, "capabilities")
}

/// Fork copies every descriptor whatever its close-on-exec flag: close all but `keep`.
pub(super) fn close_other_fds(keep: &[libc::c_int]) -> Result<(), SandboxError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0u32;
    for fd in keep.iter().copied().chain(std::iter::once(u32::MAX)) {
        if fd > next {
            let last = fd.saturating_sub(1);
            // SAFETY: closes a descriptor range; no pointers.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, next, last, 0) };
            check(rc, "close_fds")?;
        }
        next = fd.saturating_add(1);
    }
    Ok(())
}

/// Replaces this process's environment. (`/proc/<pid>/environ` shows the block the process
/// started with: the zygote must start with an empty one, SPEC §10.)
pub(super) fn replace_environment(env: &[(String, String)]) -> Result<(), SandboxError> {
    // SAFETY: single-threaded caller; nothing else reads the environment meanwhile.
    check(unsafe { libc::clearenv() } as libc::c_long, "environment")?;
    for (key, value) in env {
        // SAFETY: as above; keys and values were checked for `=` and NUL by `validate`.
        unsafe { std::env::set_var(key, value) };
    }
    Ok(())
}

pub(super) fn set_comm(comm: &str) -> Result<(), SandboxError> {
    let name = CString::new(comm).map_err(|_| SandboxError::Spec("NUL in comm".into()))?;
    // SAFETY: a NUL-terminated name of at most 16 bytes (checked by `validate`).
    check(
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) } as libc::c_long,
        "comm",
    )
}

pub(super) fn no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: no pointers.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long,
        "no_new_privs",
    )
}

//! The sandbox a tenant process enters before any tenant code is imported (SPEC §11
//! promises 2–5 and 9). [`enter`] applies every layer in a fixed order or returns the
//! layer that failed; [`probe`] asks this kernel which layers it supports.
//!
//! Order inside [`enter`] (SPEC §10 "Sandbox setup" explains the traps behind it):
//! setsid → dumpable → host uid/gid → unshare(user, pid, net, ipc, uts, mnt) + maps →
//! fork (the caller continues as pid 1; the middle process waits and exits with the
//! child's status) → /proc + scratch tmpfs → rlimits → capabilities dropped → fds closed →
//! environment → comm → NO_NEW_PRIVS → Landlock → seccomp.

mod landlock_layer;
mod seccomp;
mod sys;

use std::os::fd::RawFd;
use std::path::PathBuf;

/// Host uids for tenant processes are `TENANT_UID_BASE` + 1 + a number derived from the
/// tenant's uuid (see `tenants::tenant_uid`): far above the ranges distributions hand out to
/// users and services, one per tenant because `RLIMIT_NPROC` counts per real uid.
pub const TENANT_UID_BASE: u32 = 200_000;

/// Where the size-capped scratch tmpfs is mounted inside the tenant's mount namespace;
/// also its `HOME` and `TMPDIR`.
pub const SCRATCH_DIR: &str = "/tmp";

/// The uid and gid the tenant has inside its own user namespace (mapped to the host ids).
const INNER_ID: u32 = 1000;

/// Everything [`enter`] needs: plain data, so it can be built before the fork.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The unprivileged host uid (one per tenant slot, see [`TENANT_UID_BASE`]).
    pub host_uid: u32,
    pub host_gid: u32,
    /// The process name, `dpms-t-<8 hex>` (at most 15 bytes: the kernel truncates).
    pub comm: String,
    /// Readable (and executable) trees: stdlib, site-packages, the tenant's module folders,
    /// the shared libraries C extensions load.
    pub read_only: Vec<PathBuf>,
    /// Size cap of the scratch tmpfs, in bytes.
    pub scratch_bytes: u64,
    /// RLIMIT_AS; `None` leaves it unlimited.
    pub memory_bytes: Option<u64>,
    pub nofile: u64,
    pub fsize_bytes: u64,
    /// RLIMIT_NPROC for the tenant's host uid (threads count too).
    pub nproc: u64,
    /// The tenant's secrets; `HOME`, `TMPDIR` and `LANG` are added.
    pub env: Vec<(String, String)>,
    /// Descriptors that stay open (the channel to the host); every other one is closed.
    pub keep_fds: Vec<RawFd>,
    /// The layers to apply: [`Layers::ALL`], except under `DPMS_SANDBOX=relaxed`, where the
    /// ones this kernel lacks are skipped (SPEC §11.9).
    pub apply: Layers,
}

/// The layer that could not be applied; nothing after it ran.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox layer `{layer}` failed: {source}")]
    Layer {
        layer: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox layer `{layer}` is not supported by this kernel: {detail}")]
    Unsupported { layer: &'static str, detail: String },
    #[error("invalid sandbox spec: {0}")]
    Spec(String),
}

impl SandboxError {
    pub(crate) fn os(layer: &'static str) -> Self {
        Self::Layer {
            layer,
            source: std::io::Error::last_os_error(),
        }
    }
}

/// Which layers this kernel supports, as found by [`probe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layers {
    /// The server may switch a tenant process to its own unprivileged host uid (it runs
    /// with CAP_SETUID/CAP_SETGID, e.g. as root).
    pub host_uid: bool,
    pub user_namespaces: bool,
    pub landlock: bool,
    pub seccomp: bool,
    pub no_new_privs: bool,
}

impl Layers {
    /// Every layer.
    pub const ALL: Layers = Layers {
        host_uid: true,
        user_namespaces: true,
        landlock: true,
        seccomp: true,
        no_new_privs: true,
    };

    /// Every layer but those named (as [`Layers::missing`] names them); `None` when a name is
    /// not a layer's.
    pub fn all_but(names: &[String]) -> Option<Layers> {
        let mut layers = Layers::ALL;
        for name in names {
            match name.as_str() {
                "host_uid" => layers.host_uid = false,
                "namespaces" => layers.user_namespaces = false,
                "no_new_privs" => layers.no_new_privs = false,
                "landlock" => layers.landlock = false,
                "seccomp" => layers.seccomp = false,
                _ => return None,
            }
        }
        Some(layers)
    }

    /// Names of the layers missing, for the fail-closed startup line (empty = all present).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.host_uid {
            out.push("host_uid");
        }
        if !self.user_namespaces {
            out.push("namespaces");
        }
        if !self.no_new_privs {
            out.push("no_new_privs");
        }
        if !self.landlock {
            out.push("landlock");
        }
        if !self.seccomp {
            out.push("seccomp");
        }
        out
    }
}

/// Forks a throwaway child per layer and tries it there, so this process is not changed.
/// Must be called while the process is single-threaded (at startup, before any runtime).
pub fn probe() -> Layers {
    Layers {
        host_uid: sys::try_in_child(|| {
            sys::become_host_user(TENANT_UID_BASE, TENANT_UID_BASE).is_ok()
        }),
        user_namespaces: sys::try_in_child(|| sys::unshare_all().is_ok()),
        no_new_privs: sys::try_in_child(|| sys::no_new_privs().is_ok()),
        landlock: sys::try_in_child(landlock_layer::fully_supported),
        seccomp: sys::try_in_child(|| sys::no_new_privs().is_ok() && seccomp::install().is_ok()),
    }
}

/// Checks what can be checked before anything is changed.
fn validate(spec: &Spec) -> Result<(), SandboxError> {
    if spec.apply.host_uid && (spec.host_uid == 0 || spec.host_gid == 0) {
        return Err(SandboxError::Spec("host uid and gid must not be 0".into()));
    }
    if spec.comm.is_empty() || spec.comm.len() > 15 || spec.comm.contains('\0') {
        return Err(SandboxError::Spec(format!(
            "comm `{}` must be 1..=15 bytes",
            spec.comm
        )));
    }
    if spec.scratch_bytes == 0 {
        return Err(SandboxError::Spec("scratch_bytes must be > 0".into()));
    }
    for path in &spec.read_only {
        if !path.is_absolute() {
            return Err(SandboxError::Spec(format!(
                "read-only path `{}` is not absolute",
                path.display()
            )));
        }
        // landlock's `path_beneath_rules` skips paths it cannot open: a missing tree
        // would silently shrink the set, so it is refused here.
        if !path.try_exists().unwrap_or(false) {
            return Err(SandboxError::Spec(format!(
                "read-only path `{}` does not exist",
                path.display()
            )));
        }
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(SandboxError::Spec(format!("bad environment name `{key}`")));
        }
    }
    Ok(())
}

/// Puts the calling process into the sandbox. Call it in a freshly forked, single-threaded
/// child; on `Ok` the caller runs as pid 1 of a new pid namespace with every layer applied.
/// The process that called it never returns on success: it becomes the waiting middle
/// process and exits with the child's status. On `Err` the caller must exit without
/// running tenant code (some layers may already be in place; none is skipped silently).
pub fn enter(spec: &Spec) -> Result<(), SandboxError> {
    let unfinished = enter_unspecialised(spec)?;
    sys::replace_environment(&environment(spec))?;
    unfinished.finish(&spec.comm)
}

/// The sandbox without what makes it one tenant's: every layer of [`enter`] but the process
/// name and the seccomp filter, which [`Unfinished::finish`] applies once the tenant is
/// known (a warm pool's child is made before that). Between the two only dpms's own code may
/// run; the environment is the caller's to set. Same contract as [`enter`] otherwise (a
/// freshly forked, single-threaded caller continues as pid 1 of its namespace).
///
/// A layer left out of `spec.apply` (only under `DPMS_SANDBOX=relaxed`) is skipped: without
/// `host_uid` the process keeps the server's uid; without `namespaces` it shares the host's
/// namespaces, so its scratch folder is the host's `/tmp` and it is killed directly.
pub fn enter_unspecialised(spec: &Spec) -> Result<Unfinished, SandboxError> {
    validate(spec)?;
    let apply = spec.apply;
    sys::setsid()?;
    sys::set_dumpable()?;
    let (uid, gid) = if apply.host_uid {
        sys::become_host_user(spec.host_uid, spec.host_gid)?;
        // setresuid cleared the dumpable flag; the uid_map write below needs it back.
        sys::set_dumpable()?;
        (spec.host_uid, spec.host_gid)
    } else {
        // SAFETY: plain getters.
        unsafe { (libc::geteuid(), libc::getegid()) }
    };
    if apply.user_namespaces {
        sys::unshare_all()?;
        sys::write_id_maps(INNER_ID, uid, INNER_ID, gid)?;
        sys::fork_into_pid_namespace()?;
        sys::mount_proc_and_scratch(SCRATCH_DIR, spec.scratch_bytes)?;
    }
    sys::set_limits(spec)?;
    sys::drop_capabilities()?;
    sys::close_other_fds(&spec.keep_fds)?;
    if apply.no_new_privs {
        sys::no_new_privs()?;
    }
    if apply.landlock {
        landlock_layer::restrict(&spec.read_only, SCRATCH_DIR)?;
    }
    Ok(Unfinished {
        seccomp: apply.seccomp,
    })
}

/// A process inside every layer but its name and the seccomp filter (see
/// [`enter_unspecialised`]).
#[must_use = "the seccomp filter is applied only by finish"]
pub struct Unfinished {
    seccomp: bool,
}

impl Unfinished {
    /// Names the process (`dpms-t-<8 hex>`) and applies the seccomp filter to every thread:
    /// from here on it can neither rename itself nor open a socket.
    pub fn finish(self, comm: &str) -> Result<(), SandboxError> {
        if comm.is_empty() || comm.len() > 15 || comm.contains('\0') {
            return Err(SandboxError::Spec(format!(
                "comm `{comm}` must be 1..=15 bytes"
            )));
        }
        sys::set_comm(comm)?;
        if self.seccomp {
            seccomp::install()?;
        }
        Ok(())
    }
}

/// Where this process's exec-time environment strings lie (`env_start` and `env_end` of
/// `/proc/self/stat`): what `/proc/<pid>/environ` shows for as long as the process lives,
/// whatever it later does to its environment. Read it before [`enter`] (Landlock then hides
/// `/proc`); a forked child has the same span as its parent.
pub fn exec_environment_span() -> Option<ExecEnvironment> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the name's closing parenthesis start at field 3; env_start is 50.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let start: usize = fields.get(50 - 3)?.parse().ok()?;
    let end: usize = fields.get(51 - 3)?.parse().ok()?;
    (start < end && end - start <= 1 << 20).then_some(ExecEnvironment { start, end })
}

/// The span [`exec_environment_span`] found.
#[derive(Debug, Clone, Copy)]
pub struct ExecEnvironment {
    start: usize,
    end: usize,
}

impl ExecEnvironment {
    /// Zeroes the exec-time environment strings, so `/proc/<pid>/environ` shows nothing the
    /// process was started with (the zygote's allocator settings, SPEC §11.2).
    ///
    /// # Safety
    /// Only after the process's environment was replaced (C `environ` and Python's
    /// `os.environ` no longer point into the span), and with no other thread reading it.
    pub unsafe fn wipe(self) {
        // SAFETY: the span is this process's own initial stack area, mapped and writable for
        // its whole life; the caller guarantees nothing still reads it.
        unsafe { std::ptr::write_bytes(self.start as *mut u8, 0, self.end - self.start) };
    }
}

/// The tenant's whole environment: its secrets plus the fixed minimal set.
pub fn environment(spec: &Spec) -> Vec<(String, String)> {
    tenant_environment(&spec.env)
}

/// A tenant's environment from its secrets: them plus `HOME`, `TMPDIR` and `LANG`.
pub fn tenant_environment(secrets: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = secrets
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "HOME" | "TMPDIR" | "LANG"))
        .cloned()
        .collect();
    env.push(("HOME".into(), SCRATCH_DIR.into()));
    env.push(("TMPDIR".into(), SCRATCH_DIR.into()));
    env.push(("LANG".into(), "C.UTF-8".into()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            host_uid: TENANT_UID_BASE,
            host_gid: TENANT_UID_BASE,
            comm: "dpms-t-0123abcd".into(),
            read_only: vec!["/usr".into()],
            scratch_bytes: 1 << 20,
            memory_bytes: None,
            nofile: 64,
            fsize_bytes: 1 << 20,
            nproc: 32,
            env: vec![
                ("SECRET".into(), "x".into()),
                ("HOME".into(), "/root".into()),
            ],
            keep_fds: vec![],
            apply: Layers::ALL,
        }
    }

    #[test]
    fn environment_adds_the_fixed_set_and_overrides_home() {
        let env = environment(&spec());
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert!(env.contains(&("HOME".into(), SCRATCH_DIR.into())));
        assert!(env.contains(&("SECRET".into(), "x".into())));
    }

    #[test]
    fn validate_refuses_root_long_comm_and_relative_paths() {
        let mut s = spec();
        assert!(validate(&s).is_ok());
        s.host_uid = 0;
        assert!(validate(&s).is_err());
        // Relaxed without the host_uid layer: the process keeps the server's uid.
        s.apply.host_uid = false;
        assert!(validate(&s).is_ok());
        let mut s = spec();
        s.comm = "dpms-t-0123abcdef".into();
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.read_only = vec!["usr".into()];
        assert!(validate(&s).is_err());
    }

    #[test]
    fn missing_names_each_absent_layer() {
        assert!(Layers {
            host_uid: true,
            user_namespaces: true,
            landlock: true,
            seccomp: true,
            no_new_privs: true
        }
        .missing()
        .is_empty());
        assert_eq!(Layers::default().missing().len(), 5);
    }

    #[test]
    fn all_but_reads_back_what_missing_names() {
        let names: Vec<String> = Layers::default()
            .missing()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(Layers::all_but(&names), Some(Layers::default()));
        assert_eq!(Layers::all_but(&[]), Some(Layers::ALL));
        assert_eq!(
            Layers::all_but(&["host_uid".into()]).map(|l| l.missing()),
            Some(vec!["host_uid"])
        );
        assert_eq!(Layers::all_but(&["seccomp, landlock".into()]), None);
    }
}

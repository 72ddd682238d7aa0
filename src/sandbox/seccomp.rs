//! The seccomp layer (crate `seccompiler`, the filter compiler Firecracker uses): a deny
//! list on top of Landlock and the namespaces. Denied calls get `EPERM`, so Python reports an
//! ordinary `PermissionError`; the calls no tenant has any business making kill the process.
//!
//! `socket()` is refused for every family: a network namespace does not stop a connect to a
//! world-writable pathname unix socket of the host (SPEC §11.4). `socketpair()` and the
//! inherited channel keep working. `prctl(PR_SET_NAME)` is refused so a tenant keeps the
//! `comm` the host tracks it by.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;

fn err(detail: impl std::fmt::Display) -> SandboxError {
    SandboxError::Unsupported {
        layer: "seccomp",
        detail: detail.to_string(),
    }
}

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(err)
}

/// Calls refused with EPERM: unconditionally, or when one of the listed `(arg, mask)`
/// conditions holds.
fn eperm_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let always: &[libc::c_long] = &[
        libc::SYS_socket,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_fanotify_init,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_pidfd_getfd,
        libc::SYS_personality,
        libc::SYS_io_uring_setup,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        always.iter().map(|nr| (*nr, Vec::new())).collect();
    let cond = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(err)
    };
    rules.insert(
        libc::SYS_prctl,
        vec![
            SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?])
                .map_err(err)?,
        ],
    );
    // clone() with any namespace flag: the same escape as unshare().
    let ns_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    let mut clone_rules = Vec::new();
    for flag in ns_flags {
        let flag = flag as u64;
        clone_rules.push(
            SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?]).map_err(err)?,
        );
    }
    rules.insert(libc::SYS_clone, clone_rules);
    Ok(rules)
}

/// Calls that kill the process outright: no sandboxed code path makes them.
fn kill_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    [
        libc::SYS_bpf,
        libc::SYS_kexec_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
    ]
    .iter()
    .map(|nr| (*nr, Vec::new()))
    .collect()
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// Installs the filters on every thread of the process (after NO_NEW_PRIVS).
pub(super) fn install() -> Result<(), SandboxError> {
    // clone3 passes its flags in memory the filter cannot read: ENOSYS makes glibc fall
    // back to clone(), whose flags the filter does check.
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let programs = [
        compile(kill_rules(), SeccompAction::KillProcess)?,
        compile(eperm_rules()?, SeccompAction::Errno(libc::EPERM as u32))?,
        compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?,
    ];
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(|e| SandboxError::Layer {
            layer: "seccomp",
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile_for_this_arch() {
        assert!(super::eperm_rules()
            .and_then(|r| super::compile(r, seccompiler::SeccompAction::Errno(1)))
            .is_ok());
        assert!(
            super::compile(super::kill_rules(), seccompiler::SeccompAction::KillProcess).is_ok()
        );
    }
}

//! The Landlock layer (crate `landlock`): the listed trees are readable and executable, the
//! scratch folder is writable, nothing else is reachable; TCP bind/connect is refused, and
//! abstract unix sockets and signals outside the sandbox are scoped away. Targets ABI 7
//! (this kernel's) and insists on full enforcement: a partly enforced ruleset is an error.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::SandboxError;

const TARGET_ABI: ABI = ABI::V7;

fn err(detail: impl std::fmt::Display) -> SandboxError {
    SandboxError::Unsupported {
        layer: "landlock",
        detail: detail.to_string(),
    }
}

/// Applies the ruleset to the calling thread and its future children.
pub(super) fn restrict(read_only: &[PathBuf], scratch: &str) -> Result<(), SandboxError> {
    let abi = TARGET_ABI;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            [Path::new(scratch)],
            AccessFs::from_all(abi),
        ))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(err(format!("ruleset only {:?}", status.ruleset)));
    }
    Ok(())
}

/// For `probe`: whether a ruleset of the target ABI is fully enforced here.
pub(super) fn fully_supported() -> bool {
    super::sys::no_new_privs().is_ok() && restrict(&[], "/").is_ok()
}

//! The supervisor's shared state folder (last-good descriptions, crash quarantine).
//!
//! Its name is unpredictable (`dpms-<pid>-<random>` in the temp folder), it is made fresh with
//! mode 0700 (never reused: another local user cannot plant it), and folders that earlier runs
//! left behind (SIGKILL) are removed at the next start when their process is gone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Makes this run's state folder in `parent`, after removing stale ones of this user.
pub fn create(parent: &Path) -> std::io::Result<PathBuf> {
    remove_stale(parent);
    let dir = parent.join(format!(
        "dpms-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    // `create`, not `create_all`: a folder already there is an error, never reused.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Whether this process is the first of its server to log the message `key` stands for; the
/// others stay quiet (SPEC §9: the startup summary and each load error are logged once, not once
/// per worker). Without a state folder (one process), always.
pub fn first_to_log(dir: Option<&Path>, key: &str) -> bool {
    use std::hash::{Hash, Hasher};
    let Some(dir) = dir else { return true };
    let logged = dir.join("logged");
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&logged) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return true;
        }
    }
    // The same in every worker: they run one binary (SipHash with fixed keys).
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    let marker = logged.join(format!("{:016x}", hasher.finish()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
    {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AlreadyExists,
    }
}

/// A short key for some content (for [`first_to_log`]).
pub fn content_key(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The pid a state folder's name carries (`dpms-<pid>-<hex>`, or the older `dpms-<pid>`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("dpms-")?;
    let (pid, random) = match rest.split_once('-') {
        Some((pid, random)) => (pid, Some(random)),
        None => (rest, None),
    };
    if random.is_some_and(|r| r.len() != 32 || !r.bytes().all(|b| b.is_ascii_hexdigit())) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Removes state folders whose process is gone, owned by this user (never another's).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(folder = %entry.path().display(), "removed a stale state folder")
            }
            Err(e) => {
                tracing::debug!(folder = %entry.path().display(), cause = %e, "cannot remove a stale state folder")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch() -> std::io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("dpms-test-state-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    #[test]
    fn names_carry_the_pid() {
        assert_eq!(owner_pid("dpms-42"), Some(42));
        assert_eq!(owner_pid(&format!("dpms-42-{}", "a".repeat(32))), Some(42));
        assert_eq!(owner_pid("dpms-42-x"), None);
        assert_eq!(owner_pid("dpms-config-1"), None);
        assert_eq!(owner_pid("dpms-0"), None);
        assert_eq!(owner_pid("other-42"), None);
    }

    #[test]
    fn fresh_private_and_stale_ones_removed() -> std::io::Result<()> {
        let parent = scratch()?;
        // pid_max is at most 2^22: this pid never runs.
        let stale = parent.join(format!("dpms-4999999-{}", "b".repeat(32)));
        let old_style = parent.join("dpms-4999998");
        let alive = parent.join(format!("dpms-{}", std::process::id()));
        let unrelated = parent.join("dpms-notes");
        for d in [&stale, &old_style, &alive, &unrelated] {
            std::fs::create_dir(d)?;
        }
        std::fs::write(stale.join("x.json"), b"{}")?;

        let made = create(&parent)?;
        let mode = std::fs::metadata(&made)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!stale.exists() && !old_style.exists());
        assert!(alive.exists() && unrelated.exists());
        let second = create(&parent)?;
        assert_ne!(made, second, "two runs never share a name");
        std::fs::remove_dir_all(&parent)
    }
}

//! The tenant registry (SPEC §7): the one place dpms keeps state shared between processes and
//! across restarts — tenants and their secrets in `DPMS_DATA_DIR/registry.sqlite3`, plus a
//! change counter in `DPMS_DATA_DIR/registry.gen` that every process (the server's workers and
//! `dpms tenant`) bumps after each committed write.
//!
//! The request path never touches SQLite to learn whether something changed: it compares
//! [`Registry::generation`] (one atomic load from a shared mapping) with the generation of the
//! [`Snapshot`] it holds, and re-reads the snapshot only when they differ.
//!
//! Everything here is plain data; callers (the admin API, the CLI, tenancy) decide what an error
//! means for their client.

mod generation;
mod registry;

pub use generation::Generation;
pub use registry::Registry;

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use indexmap::IndexMap;
use uuid::Uuid;

/// Opens a file of state shared between processes for reading and writing: created mode 0600
/// when absent, never truncated (another process may have it mapped). The registry's change
/// counter, the replay ledger and the workers' metrics regions are opened this way.
pub fn open_shared_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Longest `userid` in characters (SPEC §7).
pub const MAX_USERID_CHARS: usize = 128;
/// Longest secret name in characters (`[A-Z_][A-Z0-9_]{0,63}`).
pub const MAX_SECRET_NAME: usize = 64;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller's input is not acceptable; the message says which field and why.
    #[error("{0}")]
    BadRequest(String),
    /// No such tenant (or secret).
    #[error("not found")]
    NotFound,
    /// The uuid or userid is taken, or the uuid is the admin's.
    #[error("{0}")]
    Conflict(String),
    /// The registry cannot be read or written (unreadable, corrupt, locked too long, a newer
    /// schema); the reason is for the log, never for a client.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// One tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub uuid: Uuid,
    pub userid: String,
    pub enabled: bool,
    /// RFC 3339, UTC, whole seconds (`2026-12-04T00:53:00Z`).
    pub created: String,
}

impl Tenant {
    /// The tenant as SPEC §7's `T` without `modules` (the registry does not know modules).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "uuid": self.uuid.to_string(),
            "userid": self.userid,
            "enabled": self.enabled,
            "created": self.created,
        })
    }
}

/// What a snapshot keeps of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEntry {
    pub userid: String,
    pub enabled: bool,
    pub created: String,
}

/// Bytes in a signing key's secret (SPEC §12: 32 random bytes).
pub const SECRET_BYTES: usize = 32;

/// A signing key just made: the only moment its secret leaves the registry (SPEC §12).
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    pub kid: String,
    pub secret: [u8; SECRET_BYTES],
}

impl NewKey {
    /// `{"kid": ..., "secret": "<base64url of 32 bytes>"}`, as handed out.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"kid": self.kid, "secret": URL_SAFE_NO_PAD.encode(self.secret)})
    }
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewKey {{ kid: {:?}, secret: *** }}", self.kid)
    }
}

/// What a snapshot keeps of one signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The tenant (or the admin) whose tokens it signs.
    pub owner: Uuid,
    pub secret: [u8; SECRET_BYTES],
    /// When a newer key replaced it (unix seconds); `None` while it is the owner's current one.
    pub retired: Option<i64>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyEntry {{ owner: {}, retired: {:?}, secret: *** }}",
            self.owner, self.retired
        )
    }
}

/// Every tenant, read at once, in creation order, and every signing key by `kid`, with the
/// generation read just before: a holder is up to date while [`Registry::generation`] still
/// returns `generation`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub tenants: IndexMap<Uuid, TenantEntry>,
    pub keys: HashMap<String, KeyEntry>,
}

impl Snapshot {
    /// Whether `uuid` is a registered, enabled tenant.
    pub fn is_enabled(&self, uuid: &Uuid) -> bool {
        self.tenants.get(uuid).is_some_and(|t| t.enabled)
    }
}

/// A userid is 1–128 characters (SPEC §7).
pub fn check_userid(userid: &str) -> Result<(), StoreError> {
    let n = userid.chars().count();
    if n == 0 || n > MAX_USERID_CHARS {
        return Err(StoreError::BadRequest(format!(
            "`userid` must be 1 to {MAX_USERID_CHARS} characters (got {n})"
        )));
    }
    Ok(())
}

/// A secret name is `[A-Z_][A-Z0-9_]{0,63}`: a portable environment variable name.
pub fn check_secret_name(name: &str) -> Result<(), StoreError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_SECRET_NAME
        && (bytes[0].is_ascii_uppercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadRequest(format!(
            "secret name `{name}` must match `[A-Z_][A-Z0-9_]{{0,63}}`"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    #[test]
    fn userids() {
        for ok in ["a", "alice@example.com", &"é".repeat(128)] {
            assert!(check_userid(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"x".repeat(129), &"é".repeat(129)] {
            assert!(matches!(check_userid(bad), Err(StoreError::BadRequest(_))));
        }
    }

    #[test]
    fn secret_names() {
        let longest = format!("A{}", "_".repeat(63));
        for ok in ["A", "_", "API_KEY", "_X9", "Z0_1", longest.as_str()] {
            assert!(check_secret_name(ok).is_ok(), "{ok}");
        }
        let too_long = format!("A{}", "B".repeat(64));
        for bad in [
            "",
            "9A",
            "api_key",
            "A-B",
            "A B",
            "É",
            "A=B",
            too_long.as_str(),
        ] {
            assert!(
                matches!(check_secret_name(bad), Err(StoreError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn snapshot_enabled() {
        let mut s = Snapshot::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        s.tenants.insert(
            a,
            TenantEntry {
                userid: "a".into(),
                enabled: true,
                created: String::new(),
            },
        );
        s.tenants.insert(
            b,
            TenantEntry {
                userid: "b".into(),
                enabled: false,
                created: String::new(),
            },
        );
        assert!(s.is_enabled(&a));
        assert!(!s.is_enabled(&b));
        assert!(!s.is_enabled(&Uuid::new_v4()));
    }
}

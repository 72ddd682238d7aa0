//! The SQLite side of the registry: opening (folder 0700, file 0600, WAL, `synchronous=FULL`,
//! a busy timeout because workers and the CLI open it at once), the versioned schema, and every
//! read and write. Each write is one `BEGIN IMMEDIATE` transaction, followed by a bump of the
//! shared [`Generation`] once it has committed.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _, Transaction};
use uuid::Uuid;

use super::{
    check_secret_name, check_userid, Generation, KeyEntry, NewKey, Snapshot, StoreError, Tenant,
    TenantEntry, SECRET_BYTES,
};

/// The database file inside `DPMS_DATA_DIR`.
pub const FILE_NAME: &str = "registry.sqlite3";
/// The change counter inside `DPMS_DATA_DIR`.
pub const GEN_FILE_NAME: &str = "registry.gen";
/// The schema this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;
/// How long a process waits for another's write lock. Writes are a few ms (one fsync'd
/// commit), so only a stuck process or a burst of hundreds waits this long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts to open a registry another process is setting up.
const OPEN_RETRY: Duration = Duration::from_millis(20);

/// Schema version 1. `seq` keeps creation order (AUTOINCREMENT: never reused, not renumbered by
/// VACUUM); secrets go with their tenant (`ON DELETE CASCADE`, foreign keys on per connection).
const SCHEMA_V1: &str = "
CREATE TABLE tenants (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid    TEXT NOT NULL UNIQUE,
    userid  TEXT NOT NULL UNIQUE,
    enabled INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE secrets (
    tenant TEXT NOT NULL REFERENCES tenants(uuid) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
";

/// Schema version 2: signing keys (SPEC §12). `owner` is a tenant's uuid or the admin's (who
/// is no row of `tenants`, hence no foreign key: a tenant's keys are deleted with it
/// explicitly). `retired` is when a newer key of the owner replaced it (unix seconds).
const SCHEMA_V2: &str = "
CREATE TABLE keys (
    kid     TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    secret  BLOB NOT NULL,
    created INTEGER NOT NULL,
    retired INTEGER
);
CREATE INDEX keys_by_owner ON keys (owner);
";

/// Random bytes in a `kid` (base64url: 12 characters).
const KID_BYTES: usize = 9;

/// An open registry. One connection, serialised by a mutex (writes are serialised by SQLite
/// anyway); [`Registry::generation`] does not take it.
pub struct Registry {
    conn: Mutex<Connection>,
    generation: Generation,
    path: PathBuf,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        unavailable(e)
    }
}

impl Registry {
    /// Opens (creating when absent) the registry in `dir`. A file that is not a registry, is
    /// corrupt or has a newer schema is `Unavailable` and is never written to.
    pub fn open(dir: &Path) -> Result<Registry, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unavailable(format!("cannot create `{}`: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        // SQLite would create the file with the umask's mode; an empty file is a valid empty
        // database, and SQLite gives the -wal and -shm files the mode of this one.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| unavailable(format!("cannot open `{}`: {e}", path.display())))?;
        let generation = Generation::open(&dir.join(GEN_FILE_NAME))?;
        // Busy handlers do not cover every lock SQLite meets while a file is being set up by
        // several processes at once (the switch to WAL, the first schema): such an attempt
        // fails at once with SQLITE_BUSY, so it is retried, within the busy timeout.
        let started = Instant::now();
        let conn = loop {
            match connect(&path) {
                Ok(conn) => break conn,
                Err(Attempt::Busy(e)) if started.elapsed() < BUSY_TIMEOUT => {
                    tracing::debug!(cause = %e, "registry busy while opening; retrying");
                    std::thread::sleep(OPEN_RETRY);
                }
                Err(Attempt::Busy(e)) => {
                    return Err(unavailable(format!("`{}`: {e}", path.display())))
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        };
        let registry = Registry {
            conn: Mutex::new(conn),
            generation,
            path,
        };
        // A process killed between a commit and its bump, or a schema just made: make every
        // process re-read once.
        registry.generation.bump();
        Ok(registry)
    }

    /// The database file (for log lines).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction (it rolls back on
        // drop), so the connection is still good.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one immediate transaction, commits, then bumps the generation.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        self.generation.bump();
        Ok(value)
    }

    /// The change counter: one atomic load from a shared mapping, no SQLite. Read it before
    /// [`Registry::snapshot`]; a different value later means something changed since.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Registers a tenant. `uuid` is made when absent; `reserved` is the admin's uuid, which no
    /// tenant may have.
    /// Its first signing key is made in the same transaction and returned: the only time its
    /// secret is seen.
    pub fn add_tenant(
        &self,
        userid: &str,
        uuid: Option<Uuid>,
        reserved: Option<Uuid>,
    ) -> Result<(Tenant, NewKey), StoreError> {
        check_userid(userid)?;
        let uuid = uuid.unwrap_or_else(Uuid::new_v4);
        if Some(uuid) == reserved {
            return Err(StoreError::Conflict(format!(
                "uuid `{uuid}` is the admin's"
            )));
        }
        let tenant = Tenant {
            uuid,
            userid: userid.to_string(),
            enabled: true,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        self.write(|tx| {
            let key = uuid.to_string();
            let taken: Option<i64> = tx
                .query_row("SELECT 1 FROM tenants WHERE uuid = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!("uuid `{uuid}` is taken")));
            }
            let taken: Option<i64> = tx
                .query_row("SELECT 1 FROM tenants WHERE userid = ?1", [userid], |r| {
                    r.get(0)
                })
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!("userid `{userid}` is taken")));
            }
            tx.execute(
                "INSERT INTO tenants (uuid, userid, enabled, created) VALUES (?1, ?2, 1, ?3)",
                params![key, tenant.userid, tenant.created],
            )?;
            insert_key(tx, uuid)
        })
        .map(|new| (tenant, new))
    }

    /// Makes a new signing key for `owner` (a tenant, or `admin`: the admin's own) and retires
    /// the ones it had, which verify for the server's grace period from now (SPEC §12).
    pub fn rotate_key(&self, owner: Uuid, admin: Option<Uuid>) -> Result<NewKey, StoreError> {
        self.write(|tx| {
            let key = owner.to_string();
            if Some(owner) != admin {
                require_tenant(tx, &key)?;
            }
            tx.execute(
                "UPDATE keys SET retired = ?1 WHERE owner = ?2 AND retired IS NULL",
                params![unix_now(), key],
            )?;
            insert_key(tx, owner)
        })
    }

    /// The current signing key of `owner` (a tenant, or `admin`), as `(kid, secret)`; `None`
    /// when it has none (the admin before its first rotation, or a tenant registered by a
    /// dpms before keys existed).
    pub fn current_key(
        &self,
        owner: Uuid,
        admin: Option<Uuid>,
    ) -> Result<Option<(String, [u8; SECRET_BYTES])>, StoreError> {
        let conn = self.conn();
        let key = owner.to_string();
        if Some(owner) != admin {
            require_tenant(&conn, &key)?;
        }
        let row: Option<(String, Vec<u8>)> = conn
            .query_row(
                "SELECT kid, secret FROM keys WHERE owner = ?1 AND retired IS NULL
                 ORDER BY created DESC, rowid DESC LIMIT 1",
                [&key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(kid, secret)| Ok((kid, secret_bytes(&secret)?)))
            .transpose()
    }

    /// Every tenant in creation order.
    pub fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT uuid, userid, enabled, created FROM tenants ORDER BY seq")?;
        let rows = stmt.query_map([], row_to_tenant)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// One tenant.
    pub fn get(&self, uuid: Uuid) -> Result<Tenant, StoreError> {
        let conn = self.conn();
        get_tenant(&conn, uuid)
    }

    /// Enables or disables a tenant and returns it.
    pub fn set_enabled(&self, uuid: Uuid, enabled: bool) -> Result<Tenant, StoreError> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE tenants SET enabled = ?1 WHERE uuid = ?2",
                params![enabled, uuid.to_string()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_tenant(tx, uuid)
        })
    }

    /// Removes a tenant and its secrets.
    pub fn remove(&self, uuid: Uuid) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM tenants WHERE uuid = ?1", [uuid.to_string()])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.execute("DELETE FROM keys WHERE owner = ?1", [uuid.to_string()])?;
            Ok(())
        })
    }

    /// Sets (or replaces) a tenant's secret.
    pub fn set_secret(&self, uuid: Uuid, name: &str, value: &str) -> Result<(), StoreError> {
        check_secret_name(name)?;
        self.write(|tx| {
            let key = uuid.to_string();
            require_tenant(tx, &key)?;
            tx.execute(
                "INSERT INTO secrets (tenant, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value",
                params![key, name, value],
            )?;
            Ok(())
        })
    }

    /// Removes a tenant's secret; an unknown tenant or secret is `NotFound`.
    pub fn unset_secret(&self, uuid: Uuid, name: &str) -> Result<(), StoreError> {
        check_secret_name(name)?;
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM secrets WHERE tenant = ?1 AND name = ?2",
                params![uuid.to_string(), name],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    /// A tenant's secret names, sorted; never the values.
    pub fn secret_names(&self, uuid: Uuid) -> Result<Vec<String>, StoreError> {
        Ok(self.secrets(uuid)?.into_iter().map(|(n, _)| n).collect())
    }

    /// A tenant's secrets as `(NAME, value)`, sorted by name: its sandbox's environment.
    pub fn secrets(&self, uuid: Uuid) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let key = uuid.to_string();
        require_tenant(&conn, &key)?;
        let mut stmt =
            conn.prepare_cached("SELECT name, value FROM secrets WHERE tenant = ?1 ORDER BY name")?;
        let rows = stmt.query_map([&key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every tenant, read in one transaction, tagged with the generation read just before.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let generation = self.generation();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut tenants = indexmap::IndexMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT uuid, userid, enabled, created FROM tenants ORDER BY seq",
            )?;
            for row in stmt.query_map([], row_to_tenant)? {
                let t = row??;
                tenants.insert(
                    t.uuid,
                    TenantEntry {
                        userid: t.userid,
                        enabled: t.enabled,
                        created: t.created,
                    },
                );
            }
        }
        let mut keys = std::collections::HashMap::new();
        {
            let mut stmt = tx.prepare_cached("SELECT kid, owner, secret, retired FROM keys")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            for row in rows {
                let (kid, owner, secret, retired) = row?;
                let owner = Uuid::parse_str(&owner)
                    .map_err(|_| unavailable(format!("corrupt owner `{owner}` in keys")))?;
                let secret = secret_bytes(&secret)?;
                keys.insert(
                    kid,
                    KeyEntry {
                        owner,
                        secret,
                        retired,
                    },
                );
            }
        }
        tx.finish()?;
        Ok(Snapshot {
            generation,
            tenants,
            keys,
        })
    }
}

/// Why one attempt to open the registry failed.
enum Attempt {
    /// Another process holds a lock SQLite would not wait for: try again.
    Busy(rusqlite::Error),
    Failed(StoreError),
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// One attempt to open `path`: checks it is a sound registry of a schema we know, then sets
/// WAL, `synchronous=FULL` and foreign keys, and makes the schema when absent. Nothing is
/// written to a file that is not a sound registry.
fn connect(path: &Path) -> Result<Connection, Attempt> {
    let why = |e: rusqlite::Error| {
        if is_busy(&e) {
            Attempt::Busy(e)
        } else {
            Attempt::Failed(unavailable(format!("`{}`: {e}", path.display())))
        }
    };
    let failed = |m: String| Attempt::Failed(unavailable(format!("`{}` {m}", path.display())));
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(why)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(why)?;
    // Reading the header first: a file that is not a database fails here, before any pragma
    // that writes.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(why)?;
    if version > SCHEMA_VERSION {
        return Err(failed(format!(
            "has schema version {version}; this dpms knows up to {SCHEMA_VERSION}"
        )));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(why)?;
    if check != "ok" {
        return Err(failed(format!("is corrupt: {check}")));
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(why)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(failed(format!("cannot use WAL (journal mode `{mode}`)")));
    }
    // FULL: a commit is on disk (the WAL fsync'd) before it is acknowledged (SPEC §7).
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(why)?;
    if version < SCHEMA_VERSION {
        // Another process may be doing the same: the version is read again under the lock.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(why)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(why)?;
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(why)?;
        }
        if version < 2 {
            // From version 1: tenants registered before keys existed have none until their
            // first rotation (a key made here could never be handed out).
            tx.execute_batch(SCHEMA_V2).map_err(why)?;
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(why)?;
        }
        tx.commit().map_err(why)?;
    }
    Ok(conn)
}

/// A row as a tenant; a uuid that does not parse means the file was changed behind our back.
fn row_to_tenant(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Tenant, StoreError>> {
    let uuid: String = r.get(0)?;
    let tenant = Uuid::parse_str(&uuid).map(|uuid| -> Result<Tenant, rusqlite::Error> {
        Ok(Tenant {
            uuid,
            userid: r.get(1)?,
            enabled: r.get(2)?,
            created: r.get(3)?,
        })
    });
    match tenant {
        Ok(t) => Ok(Ok(t?)),
        Err(_) => Ok(Err(unavailable(format!(
            "corrupt uuid `{uuid}` in tenants"
        )))),
    }
}

fn get_tenant(conn: &Connection, uuid: Uuid) -> Result<Tenant, StoreError> {
    conn.query_row(
        "SELECT uuid, userid, enabled, created FROM tenants WHERE uuid = ?1",
        [uuid.to_string()],
        row_to_tenant,
    )
    .optional()?
    .ok_or(StoreError::NotFound)?
}

/// Seconds since the epoch.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A new random key for `owner`, inserted as its current one.
fn insert_key(tx: &Transaction<'_>, owner: Uuid) -> Result<NewKey, StoreError> {
    let mut kid = [0u8; KID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut kid).map_err(|e| unavailable(format!("no randomness: {e}")))?;
    getrandom::fill(&mut secret).map_err(|e| unavailable(format!("no randomness: {e}")))?;
    let kid = URL_SAFE_NO_PAD.encode(kid);
    tx.execute(
        "INSERT INTO keys (kid, owner, secret, created) VALUES (?1, ?2, ?3, ?4)",
        params![kid, owner.to_string(), &secret[..], unix_now()],
    )?;
    Ok(NewKey { kid, secret })
}

/// A stored secret as its 32 bytes; another length means the file was changed behind our back.
fn secret_bytes(stored: &[u8]) -> Result<[u8; SECRET_BYTES], StoreError> {
    stored
        .try_into()
        .map_err(|_| unavailable("corrupt secret in keys"))
}

fn require_tenant(conn: &Connection, key: &str) -> Result<(), StoreError> {
    let found: Option<i64> = conn
        .query_row("SELECT 1 FROM tenants WHERE uuid = ?1", [key], |r| r.get(0))
        .optional()?;
    found.map(|_| ()).ok_or(StoreError::NotFound)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("dpms-store-{}", Uuid::new_v4())))
    }

    #[test]
    fn tenants_and_secrets() {
        let dir = temp();
        let reg = Registry::open(&dir.0.join("data")).unwrap();
        let admin = Uuid::new_v4();
        let g0 = reg.generation();
        let (a, _) = reg.add_tenant("alice", None, Some(admin)).unwrap();
        assert!(reg.generation() > g0);
        let b_id = Uuid::new_v4();
        let (b, _) = reg.add_tenant("bob", Some(b_id), Some(admin)).unwrap();
        assert_eq!(b.uuid, b_id);
        assert!(matches!(
            reg.add_tenant("carol", Some(admin), Some(admin)),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            reg.add_tenant("carol", Some(b_id), None),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            reg.add_tenant("alice", None, None),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            reg.add_tenant("", None, None),
            Err(StoreError::BadRequest(_))
        ));
        let list: Vec<_> = reg.list().unwrap().into_iter().map(|t| t.userid).collect();
        assert_eq!(list, ["alice", "bob"]);
        assert!(!reg.set_enabled(a.uuid, false).unwrap().enabled);
        let snap = reg.snapshot().unwrap();
        assert_eq!(snap.generation, reg.generation());
        assert!(!snap.is_enabled(&a.uuid) && snap.is_enabled(&b_id));

        reg.set_secret(b_id, "TOKEN", "x").unwrap();
        reg.set_secret(b_id, "TOKEN", "y").unwrap();
        reg.set_secret(b_id, "A", "1").unwrap();
        assert_eq!(
            reg.secrets(b_id).unwrap(),
            [("A".into(), "1".into()), ("TOKEN".into(), "y".into())]
        );
        assert!(matches!(
            reg.set_secret(b_id, "bad", "v"),
            Err(StoreError::BadRequest(_))
        ));
        assert!(matches!(
            reg.set_secret(Uuid::new_v4(), "A", "v"),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            reg.unset_secret(b_id, "NOPE"),
            Err(StoreError::NotFound)
        ));
        reg.unset_secret(b_id, "A").unwrap();
        assert_eq!(reg.secret_names(b_id).unwrap(), ["TOKEN"]);
        reg.remove(b_id).unwrap();
        assert!(matches!(reg.get(b_id), Err(StoreError::NotFound)));
        assert!(matches!(reg.secrets(b_id), Err(StoreError::NotFound)));
        assert!(matches!(reg.remove(b_id), Err(StoreError::NotFound)));
        // Re-adding the removed uuid: its secrets did not survive.
        reg.add_tenant("bob", Some(b_id), None).unwrap();
        assert!(reg.secret_names(b_id).unwrap().is_empty());
        // A second process-like handle sees the same data and the same counter.
        let other = Registry::open(&dir.0.join("data")).unwrap();
        assert_eq!(other.list().unwrap().len(), 2);
        let g = reg.generation();
        other.set_enabled(a.uuid, true).unwrap();
        assert!(reg.generation() > g);
    }

    #[test]
    fn keys_are_made_rotated_and_removed() {
        let dir = temp();
        let reg = Registry::open(&dir.0).unwrap();
        let admin = Uuid::new_v4();
        let (a, first) = reg.add_tenant("alice", None, Some(admin)).unwrap();
        assert_eq!(first.kid.len(), 12);
        assert_eq!(
            reg.current_key(a.uuid, Some(admin)).unwrap(),
            Some((first.kid.clone(), first.secret))
        );
        let second = reg.rotate_key(a.uuid, Some(admin)).unwrap();
        assert_ne!(second.kid, first.kid);
        assert_ne!(second.secret, first.secret);
        assert_eq!(
            reg.current_key(a.uuid, Some(admin)).unwrap(),
            Some((second.kid.clone(), second.secret))
        );
        let snap = reg.snapshot().unwrap();
        assert!(snap.keys[&first.kid].retired.is_some());
        assert_eq!(snap.keys[&second.kid].retired, None);
        assert_eq!(snap.keys[&second.kid].owner, a.uuid);
        // The admin has no key until its first rotation; an unknown tenant has none at all.
        assert_eq!(reg.current_key(admin, Some(admin)).unwrap(), None);
        let own = reg.rotate_key(admin, Some(admin)).unwrap();
        assert_eq!(
            reg.current_key(admin, Some(admin)).unwrap(),
            Some((own.kid.clone(), own.secret))
        );
        assert!(matches!(
            reg.rotate_key(Uuid::new_v4(), Some(admin)),
            Err(StoreError::NotFound)
        ));
        // Removal takes the tenant's keys and leaves the admin's.
        reg.remove(a.uuid).unwrap();
        let snap = reg.snapshot().unwrap();
        assert_eq!(snap.keys.len(), 1);
        assert!(snap.keys.contains_key(&own.kid));
    }

    #[test]
    fn a_version_1_registry_is_migrated_and_keeps_its_tenants() {
        let dir = temp();
        std::fs::create_dir_all(&dir.0).unwrap();
        {
            let conn = Connection::open(dir.0.join(FILE_NAME)).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO tenants (uuid, userid, enabled, created) VALUES (?1, 'old', 1, 'x')",
                [Uuid::nil().to_string()],
            )
            .unwrap();
            conn.execute_batch("PRAGMA user_version = 1").unwrap();
        }
        let reg = Registry::open(&dir.0).unwrap();
        assert_eq!(reg.list().unwrap()[0].userid, "old");
        assert_eq!(reg.current_key(Uuid::nil(), None).unwrap(), None);
        let k = reg.rotate_key(Uuid::nil(), None).unwrap();
        assert_eq!(reg.snapshot().unwrap().keys[&k.kid].owner, Uuid::nil());
    }

    #[test]
    fn a_registry_is_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Registry>();
    }

    #[test]
    fn garbage_is_unavailable_and_kept() {
        let dir = temp();
        std::fs::create_dir_all(&dir.0).unwrap();
        let garbage = vec![0x5au8; 8192];
        std::fs::write(dir.0.join(FILE_NAME), &garbage).unwrap();
        assert!(matches!(
            Registry::open(&dir.0),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(std::fs::read(dir.0.join(FILE_NAME)).unwrap(), garbage);
    }
}

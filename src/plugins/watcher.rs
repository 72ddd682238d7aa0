//! Knowing when plugin files changed (SPEC §2 and §10).
//!
//! - a `notify` watcher marks the registry dirty and triggers a background reload, so most
//!   changes are picked up before any request asks;
//! - on the request path, [`ChangeQueue::drain`]: one non-blocking read of an inotify
//!   descriptor on the plugin folders. The kernel queues the event before the writer's
//!   `write()`/`rename()` returns, so a change completed before a request was sent is always
//!   seen by that request;
//! - where inotify is unavailable (its limits are exhausted), a `stat` per plugin folder and per
//!   called module instead ([`FileState::is_current`], [`DirState::is_current`]);
//! - either way, a reload re-checks each file: a fingerprint (inode, size, mtime, ctime) that is
//!   unchanged is trusted only once the file's timestamps are older than the last verification
//!   by more than [`RACY_WINDOW_NS`] — git's "racily clean" rule. Until then, timestamps may be
//!   too coarse to show a same-size edit, so the content is compared.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use notify::{RecursiveMode, Watcher};

/// How much older than the last verification a file's timestamps must be before an unchanged
/// fingerprint is trusted without reading the content. Covers a scheduler tick (~4 ms) and
/// filesystems with one- or two-second timestamps.
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What `stat` says about a file or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Fingerprint {
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let m = std::fs::metadata(path)?;
        Ok(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
        })
    }

    /// The later of mtime and ctime (ctime cannot be set back by a user).
    fn changed_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// A file as last loaded: its fingerprint and exact bytes.
#[derive(Debug)]
pub struct FileState {
    fingerprint: Fingerprint,
    pub source: Arc<Vec<u8>>,
    /// When the content was last known to match `source` (ns since the epoch).
    verified_ns: AtomicI64,
}

impl FileState {
    /// Reads a file, fingerprinting it *before* reading so a write during the read shows up as
    /// a change at the next check.
    pub fn read(path: &Path) -> std::io::Result<FileState> {
        let verified = now_ns();
        let fingerprint = Fingerprint::of(path)?;
        let source = std::fs::read(path)?;
        Ok(FileState {
            fingerprint,
            source: Arc::new(source),
            verified_ns: AtomicI64::new(verified),
        })
    }

    /// Whether `path` still holds exactly what was loaded.
    pub fn is_current(&self, path: &Path) -> bool {
        let Ok(fp) = Fingerprint::of(path) else {
            return false;
        };
        if fp != self.fingerprint {
            return false;
        }
        if fp.changed_ns() < self.verified_ns.load(Ordering::Acquire) - RACY_WINDOW_NS {
            return true;
        }
        let now = now_ns();
        match std::fs::read(path) {
            Ok(bytes) if bytes == *self.source => {
                self.verified_ns.store(now, Ordering::Release);
                true
            }
            _ => false,
        }
    }
}

/// A plugin folder as last scanned: its fingerprint and its `*.py` names.
#[derive(Debug)]
pub struct DirState {
    pub path: PathBuf,
    fingerprint: Option<Fingerprint>,
    names: Vec<String>,
    verified_ns: AtomicI64,
}

impl DirState {
    /// Lists a folder's plugin files (`*.py`, not `__init__.py`), sorted by name.
    pub fn scan(path: &Path) -> DirState {
        let verified = now_ns();
        let fingerprint = Fingerprint::of(path).ok();
        DirState {
            path: path.to_path_buf(),
            fingerprint,
            names: list_plugins(path),
            verified_ns: AtomicI64::new(verified),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the folder still lists the same plugin files.
    pub fn is_current(&self) -> bool {
        let fp = Fingerprint::of(&self.path).ok();
        if fp != self.fingerprint {
            return false;
        }
        let trusted = fp.is_some_and(|fp| {
            fp.changed_ns() < self.verified_ns.load(Ordering::Acquire) - RACY_WINDOW_NS
        });
        if trusted {
            return true;
        }
        let now = now_ns();
        if list_plugins(&self.path) == self.names {
            self.verified_ns.store(now, Ordering::Release);
            return true;
        }
        false
    }
}

fn list_plugins(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let is_plugin = name.ends_with(".py") && name != "__init__.py" && name.len() > 3;
            // The entry's type needs no stat; only a symlink is followed to see what it names.
            let is_file = match e.file_type() {
                Ok(t) if t.is_file() => true,
                Ok(t) if t.is_symlink() => e.path().is_file(),
                _ => false,
            };
            (is_plugin && is_file).then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// An inotify descriptor on the plugin folders, read without blocking on the request path.
pub struct ChangeQueue {
    inotify: std::sync::Mutex<inotify::Inotify>,
}

impl ChangeQueue {
    pub fn new(dirs: &[PathBuf]) -> std::io::Result<ChangeQueue> {
        use inotify::WatchMask;
        let inotify = inotify::Inotify::init()?;
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        for dir in dirs {
            inotify.watches().add(dir, mask)?;
        }
        Ok(ChangeQueue {
            inotify: std::sync::Mutex::new(inotify),
        })
    }

    /// What changed since the last call. One `read` that finds nothing in the common case.
    pub fn drain(&self) -> Changes {
        let Ok(mut inotify) = self.inotify.lock() else {
            return Changes::Everything;
        };
        let mut buf = [0u8; 4096];
        let mut changes = Changes::Nothing;
        // Bounded: a folder rewritten continuously must not keep one request here.
        for _ in 0..64 {
            match inotify.read_events(&mut buf) {
                Ok(events) => {
                    let mut any = false;
                    for e in events {
                        any = true;
                        if e.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                            changes = Changes::Everything;
                            continue;
                        }
                        match e.name.and_then(|n| n.to_str()) {
                            Some(name) if name.ends_with(".py") => changes.add(name),
                            Some(_) => {}
                            // An event on a folder itself (deleted, moved).
                            None => changes = Changes::Everything,
                        }
                    }
                    if !any {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // An unreadable queue: assume the worst, a reload re-checks every file.
                Err(_) => return Changes::Everything,
            }
        }
        changes
    }
}

/// Which plugin files changed, as far as the inotify queue says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    Nothing,
    /// File names (`x.py`) with events; a reload checks only these.
    Files(std::collections::HashSet<String>),
    /// Anything may have changed (overflow, a folder event, or no queue): check every file.
    Everything,
}

impl Changes {
    fn add(&mut self, name: &str) {
        match self {
            Changes::Nothing => *self = Changes::Files([name.to_string()].into()),
            Changes::Files(names) => {
                names.insert(name.to_string());
            }
            Changes::Everything => {}
        }
    }

    pub fn merge(&mut self, other: Changes) {
        match other {
            Changes::Nothing => {}
            Changes::Everything => *self = Changes::Everything,
            Changes::Files(names) => {
                for n in names {
                    self.add(&n);
                }
            }
        }
    }

    pub fn is_nothing(&self) -> bool {
        *self == Changes::Nothing
    }

    /// Whether `file_name` must be checked against disk.
    pub fn covers(&self, file_name: &str) -> bool {
        match self {
            Changes::Nothing => false,
            Changes::Files(names) => names.contains(file_name),
            Changes::Everything => true,
        }
    }
}

/// Keeps a `notify` watcher on the plugin folders alive; dropping it stops watching.
pub struct FolderWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl FolderWatcher {
    /// Watches `dirs` (not recursively). On any event `dirty` is set and `wake` is poked.
    pub fn start(
        dirs: &[PathBuf],
        dirty: Arc<AtomicBool>,
        wake: tokio::sync::mpsc::Sender<()>,
    ) -> notify::Result<FolderWatcher> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(e) => {
                        e.paths.is_empty()
                            || e.paths
                                .iter()
                                .any(|p| p.extension().is_some_and(|x| x == "py"))
                    }
                    Err(_) => true,
                };
                if relevant {
                    dirty.store(true, Ordering::Release);
                    let _ = wake.try_send(());
                }
            })?;
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(FolderWatcher { _watcher: watcher })
    }
}

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

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
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
    /// What `stat` said when the content was last known to match `source`: a rewrite with
    /// the same bytes (rename, `touch`) moves it on without a reload.
    fingerprint: std::sync::Mutex<Fingerprint>,
    pub source: Arc<Vec<u8>>,
    /// When the content was last known to match `source` (ns since the epoch).
    verified_ns: AtomicI64,
}

impl FileState {
    /// Reads a file, fingerprinting it *before* reading so a write during the read shows up as
    /// a change at the next check.
    /// A state for bytes that came without a file (a tenant's process gets its modules' bytes
    /// over its channel): never current for any path.
    pub fn in_memory(source: Arc<Vec<u8>>) -> FileState {
        FileState {
            fingerprint: std::sync::Mutex::new(Fingerprint {
                dev: 0,
                ino: 0,
                size: u64::MAX,
                mtime_ns: 0,
                ctime_ns: 0,
            }),
            source,
            verified_ns: AtomicI64::new(0),
        }
    }

    pub fn read(path: &Path) -> std::io::Result<FileState> {
        let verified = now_ns();
        let fingerprint = Fingerprint::of(path)?;
        let source = std::fs::read(path)?;
        Ok(FileState {
            fingerprint: std::sync::Mutex::new(fingerprint),
            source: Arc::new(source),
            verified_ns: AtomicI64::new(verified),
        })
    }

    fn fingerprint(&self) -> Fingerprint {
        match self.fingerprint.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Whether `path` still holds exactly the bytes that were loaded. A new fingerprint with
    /// the same bytes (the file rewritten by rename with the same content, or touched) is
    /// current: the code is the same (SPEC §2: re-imported only when the file changed).
    pub fn is_current(&self, path: &Path) -> bool {
        self.check(path, true)
    }

    /// Whether `path` is the file that was loaded, untouched: a new fingerprint counts as a
    /// change even with the same bytes (a module that did not import is retried on `touch`).
    pub fn is_untouched(&self, path: &Path) -> bool {
        self.check(path, false)
    }

    fn check(&self, path: &Path, same_bytes_will_do: bool) -> bool {
        let now = now_ns();
        let Ok(fp) = Fingerprint::of(path) else {
            return false;
        };
        let known = self.fingerprint();
        if fp != known && !same_bytes_will_do {
            return false;
        }
        if fp == known
            && fp.changed_ns() < self.verified_ns.load(Ordering::Acquire) - RACY_WINDOW_NS
        {
            return true;
        }
        // Racily clean or rewritten: the bytes decide. `fp` was taken before the read, so a
        // write during the read changes the fingerprint again and is seen by the next check.
        match std::fs::read(path) {
            Ok(bytes) if bytes == *self.source => {
                if fp != known {
                    match self.fingerprint.lock() {
                        Ok(mut g) => *g = fp,
                        Err(poisoned) => *poisoned.into_inner() = fp,
                    }
                }
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
    /// Moves on when the folder changes but lists the same plugin files (files rewritten by
    /// rename); never to another folder (device and inode).
    fingerprint: std::sync::Mutex<Option<Fingerprint>>,
    names: Vec<String>,
    /// The plugin files that are symlinks (their targets are watched too).
    links: Vec<String>,
    /// Package folders (`name/__init__.py`): importable by plugins, not plugins themselves.
    packages: Vec<String>,
    verified_ns: AtomicI64,
}

impl DirState {
    /// Lists a folder's plugin files (`*.py`, not `__init__.py`), sorted by name.
    pub fn scan(path: &Path) -> DirState {
        let verified = now_ns();
        let fingerprint = Fingerprint::of(path).ok();
        let Listing {
            names,
            links,
            packages,
        } = list_plugins(path);
        DirState {
            path: path.to_path_buf(),
            fingerprint: std::sync::Mutex::new(fingerprint),
            names,
            links,
            packages,
            verified_ns: AtomicI64::new(verified),
        }
    }

    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The symlinked plugin files, as paths.
    pub fn links(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.links.iter().map(|n| self.path.join(n))
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        match self.fingerprint.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Whether the folder was there at the scan.
    pub fn exists(&self) -> bool {
        self.fingerprint().is_some()
    }

    /// Which folder the path named at the scan (device and inode).
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.fingerprint().map(|f| (f.dev, f.ino))
    }

    /// Whether the folder is the one scanned and still lists the same plugin files, symlinks
    /// and packages.
    pub fn is_current(&self) -> bool {
        let now = now_ns();
        let fp = Fingerprint::of(&self.path).ok();
        let known = self.fingerprint();
        if fp.map(|f| (f.dev, f.ino)) != known.map(|f| (f.dev, f.ino)) {
            return false;
        }
        let trusted = fp == known
            && fp.is_some_and(|fp| {
                fp.changed_ns() < self.verified_ns.load(Ordering::Acquire) - RACY_WINDOW_NS
            });
        if trusted {
            return true;
        }
        // Changed (or racily clean): the listing decides. `fp` was taken before it.
        let now_listed = list_plugins(&self.path);
        if now_listed.names == self.names
            && now_listed.packages == self.packages
            && now_listed.links == self.links
        {
            match self.fingerprint.lock() {
                Ok(mut g) => *g = fp,
                Err(poisoned) => *poisoned.into_inner() = fp,
            }
            self.verified_ns.store(now, Ordering::Release);
            return true;
        }
        false
    }
}

/// What a plugin folder holds.
struct Listing {
    /// Plugin files, sorted.
    names: Vec<String>,
    /// Which of them are symlinks.
    links: Vec<String>,
    /// Package folders, sorted.
    packages: Vec<String>,
}

/// Whether `name` can be imported as a top-level package.
pub fn is_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name != "__pycache__"
}

fn list_plugins(dir: &Path) -> Listing {
    let mut listing = Listing {
        names: Vec::new(),
        links: Vec::new(),
        packages: Vec::new(),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return listing;
    };
    for e in entries.filter_map(Result::ok) {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Ok(t) = e.file_type() else { continue };
        if is_package_name(&name) && (t.is_dir() || t.is_symlink()) {
            if e.path().join("__init__.py").is_file() {
                listing.packages.push(name);
            }
            continue;
        }
        if !(name.ends_with(".py") && name != "__init__.py" && name.len() > 3) {
            continue;
        }
        // The entry's type needs no stat; only a symlink is followed to see what it names.
        if t.is_file() {
            listing.names.push(name);
        } else if t.is_symlink() && e.path().is_file() {
            listing.links.push(name.clone());
            listing.names.push(name);
        }
    }
    listing.names.sort();
    listing.links.sort();
    listing.packages.sort();
    listing
}

/// At most this many files are tracked in one package, this deep: a package is source, not a
/// data folder.
pub const PACKAGE_MAX_FILES: usize = 2000;
const PACKAGE_MAX_DEPTH: usize = 16;

/// The `*.py` files of a package folder and its subfolders (not `__pycache__`, not hidden),
/// sorted, bounded by [`PACKAGE_MAX_FILES`]; and the folders walked.
pub fn package_files(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut folders = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        folders.push(dir);
        for e in entries.filter_map(Result::ok) {
            if files.len() >= PACKAGE_MAX_FILES {
                break;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if depth < PACKAGE_MAX_DEPTH && is_package_name(name) {
                    stack.push((e.path(), depth + 1));
                }
            } else if name.ends_with(".py") && (t.is_file() || e.path().is_file()) {
                files.push(e.path());
            }
        }
    }
    files.sort();
    folders.sort();
    (files, folders)
}

/// The key a package's changes are reported under in [`Changes`] (never a file name).
pub fn package_key(name: &str) -> String {
    format!("{name}/")
}

/// What one watch stands for. One folder can be several of these at once (a plugin folder
/// that is also an ancestor of another), and two paths can be one watch (a symlink).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Interest {
    /// A plugin folder: events name plugin files; an event on the folder itself (deleted,
    /// moved) re-points everything.
    folder: bool,
    /// Entries of an ancestor of a plugin folder (or of its resolved path): replacing one
    /// (`rm -rf`, `mv`, a re-pointed release symlink) re-points the folder.
    entries: HashSet<OsString>,
    /// Targets of symlinked plugin files in this folder: target name → plugin file names.
    targets: HashMap<OsString, Vec<String>>,
    /// A folder of this package: any `.py` file or subfolder in it changes the package.
    package: Option<String>,
}

/// Everything worth watching for a set of plugin folders and symlinked plugin files: every
/// path, with what it stands for. Computed from the names as configured, so a folder replaced
/// under the same name is watched again by the next [`ChangeQueue::rewatch`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    paths: Vec<(PathBuf, Interest)>,
}

impl WatchPlan {
    /// `packages`: each package's name and folders.
    pub fn new(
        dirs: &[PathBuf],
        links: &[PathBuf],
        packages: &[(String, Vec<PathBuf>)],
    ) -> WatchPlan {
        fn entry<'a>(paths: &'a mut Vec<(PathBuf, Interest)>, path: &Path) -> &'a mut Interest {
            let i = match paths.iter().position(|(p, _)| p == path) {
                Some(i) => i,
                None => {
                    paths.push((path.to_path_buf(), Interest::default()));
                    paths.len() - 1
                }
            };
            &mut paths[i].1
        }
        let mut paths: Vec<(PathBuf, Interest)> = Vec::new();
        for dir in dirs {
            entry(&mut paths, dir).folder = true;
            let real = dir.canonicalize().ok();
            for chain in std::iter::once(dir.as_path()).chain(real.as_deref()) {
                for ancestor in chain.ancestors() {
                    if let (Some(parent), Some(name)) = (ancestor.parent(), ancestor.file_name()) {
                        entry(&mut paths, parent)
                            .entries
                            .insert(name.to_os_string());
                    }
                }
            }
        }
        for link in links {
            let (Ok(target), Some(plugin)) = (
                link.canonicalize(),
                link.file_name().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            if let (Some(parent), Some(name)) = (target.parent(), target.file_name()) {
                let names = entry(&mut paths, parent)
                    .targets
                    .entry(name.to_os_string())
                    .or_default();
                if !names.iter().any(|n| n == plugin) {
                    names.push(plugin.to_string());
                }
            }
        }
        for (name, folders) in packages {
            for folder in folders {
                entry(&mut paths, folder).package = Some(name.clone());
            }
        }
        WatchPlan { paths }
    }

    /// The paths whose change matters to the background watcher: plugin files are found by
    /// their extension, these by name.
    fn entry_paths(&self) -> HashSet<PathBuf> {
        let mut out = HashSet::new();
        for (path, interest) in &self.paths {
            for name in interest.entries.iter().chain(interest.targets.keys()) {
                out.insert(path.join(name));
            }
        }
        out
    }
}

struct Watched {
    inotify: inotify::Inotify,
    by_wd: HashMap<inotify::WatchDescriptor, Interest>,
    plan: WatchPlan,
}

/// An inotify descriptor on the plugin folders (and on what they are reached through), read
/// without blocking on the request path.
pub struct ChangeQueue {
    watched: std::sync::Mutex<Watched>,
}

impl ChangeQueue {
    pub fn new(dirs: &[PathBuf]) -> std::io::Result<ChangeQueue> {
        let queue = ChangeQueue {
            watched: std::sync::Mutex::new(Watched {
                inotify: inotify::Inotify::init()?,
                by_wd: HashMap::new(),
                plan: WatchPlan::default(),
            }),
        };
        queue.rewatch(WatchPlan::new(dirs, &[], &[]), true)?;
        Ok(queue)
    }

    /// Watches what `plan` names (again, when `force`: a folder replaced under its name is
    /// a new inode) and stops watching what it no longer names. A path that does not exist
    /// now is skipped: the watch on its parent reports its return.
    pub fn rewatch(&self, plan: WatchPlan, force: bool) -> std::io::Result<()> {
        use inotify::WatchMask;
        let Ok(mut w) = self.watched.lock() else {
            return Err(std::io::Error::other("the watch list is poisoned"));
        };
        if !force && w.plan == plan {
            return Ok(());
        }
        let folder_mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let ancestor_mask =
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO;
        let mut by_wd: HashMap<inotify::WatchDescriptor, Interest> = HashMap::new();
        for (path, interest) in &plan.paths {
            let mask =
                if interest.folder || !interest.targets.is_empty() || interest.package.is_some() {
                    folder_mask
                } else {
                    ancestor_mask
                };
            // MASK_ADD: two paths can be one inode (a symlink); their masks add up.
            let Ok(wd) = w.inotify.watches().add(path, mask | WatchMask::MASK_ADD) else {
                continue;
            };
            let merged = by_wd.entry(wd).or_default();
            merged.folder |= interest.folder;
            if merged.package.is_none() {
                merged.package.clone_from(&interest.package);
            }
            merged.entries.extend(interest.entries.iter().cloned());
            for (target, names) in &interest.targets {
                merged
                    .targets
                    .entry(target.clone())
                    .or_default()
                    .extend(names.iter().cloned());
            }
        }
        let stale: Vec<inotify::WatchDescriptor> = w
            .by_wd
            .keys()
            .filter(|wd| !by_wd.contains_key(*wd))
            .cloned()
            .collect();
        for wd in stale {
            // Already gone when its folder was deleted; nothing to undo then.
            let _ = w.inotify.watches().remove(wd);
        }
        w.by_wd = by_wd;
        w.plan = plan;
        Ok(())
    }

    /// What changed since the last call. One `read` that finds nothing in the common case.
    pub fn drain(&self) -> Changes {
        let Ok(mut guard) = self.watched.lock() else {
            return Changes::Everything;
        };
        let w = &mut *guard;
        let mut buf = [0u8; 4096];
        let mut changes = Changes::Nothing;
        // Bounded: a folder rewritten continuously must not keep one request here.
        for _ in 0..64 {
            match w.inotify.read_events(&mut buf) {
                Ok(events) => {
                    let mut any = false;
                    for e in events {
                        any = true;
                        if e.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                            changes = Changes::Everything;
                            continue;
                        }
                        // A watch removed by an earlier rewatch: what it saw, the rescan
                        // that followed saw too.
                        let Some(interest) = w.by_wd.get(&e.wd) else {
                            continue;
                        };
                        match e.name {
                            Some(name) => {
                                if interest.entries.contains(name) {
                                    changes = Changes::Everything;
                                }
                                if let Some(plugins) = interest.targets.get(name) {
                                    for p in plugins {
                                        changes.add(p);
                                    }
                                }
                                let name = name.to_str();
                                match name {
                                    Some(n) if interest.folder && n.ends_with(".py") => {
                                        changes.add(n)
                                    }
                                    // A package folder made, removed or renamed.
                                    Some(n) if interest.folder && is_package_name(n) => {
                                        changes.add(&package_key(n))
                                    }
                                    _ => {}
                                }
                                if let Some(package) = &interest.package {
                                    if name
                                        .is_some_and(|n| n.ends_with(".py") || is_package_name(n))
                                    {
                                        changes.add(&package_key(package));
                                    }
                                }
                            }
                            // An event on a watched folder itself (deleted, moved, unwatched).
                            None => {
                                if interest.folder || !interest.targets.is_empty() {
                                    changes = Changes::Everything;
                                } else if let Some(package) = &interest.package {
                                    changes.add(&package_key(package));
                                }
                            }
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

    /// Whether every change names a file or package `snap` already has (a new file could
    /// take over an API, so it needs a reload before routing).
    pub fn only_known(&self, known: impl Fn(&str) -> bool) -> bool {
        match self {
            Changes::Nothing => true,
            Changes::Files(names) => names.iter().all(|n| known(n)),
            Changes::Everything => false,
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
    /// Watches the folders `plan` names (not recursively; not their ancestors). On an event for
    /// a plugin file or a symlinked plugin's target, `dirty` is set and `wake` is poked.
    pub fn start(
        plan: &WatchPlan,
        dirty: Arc<AtomicBool>,
        wake: tokio::sync::mpsc::Sender<()>,
    ) -> notify::Result<FolderWatcher> {
        let entries = plan.entry_paths();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Opening and reading (dpms's own scans and reads among them) change
                    // nothing; counting them made every scan start the next.
                    Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => false,
                    Ok(e) => {
                        e.paths.is_empty()
                            || e.paths.iter().any(|p| {
                                p.extension().is_some_and(|x| x == "py") || entries.contains(p)
                            })
                    }
                    Err(_) => true,
                };
                if relevant {
                    dirty.store(true, Ordering::Release);
                    let _ = wake.try_send(());
                }
            })?;
        let mut watching = 0;
        let mut first_error = None;
        // Not the ancestors: every write to any file in them (a log in the same temp folder)
        // would wake this thread. A folder replaced under its name is found by the request
        // path's checks; this watcher only makes most edits load before a request asks.
        let watched = plan
            .paths
            .iter()
            .filter(|(_, i)| i.folder || !i.targets.is_empty() || i.package.is_some());
        for (path, _) in watched {
            match watcher.watch(path, RecursiveMode::NonRecursive) {
                Ok(()) => watching += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if watching == 0 => Err(e),
            _ => Ok(FolderWatcher { _watcher: watcher }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest<'a>(plan: &'a WatchPlan, path: &str) -> Option<&'a Interest> {
        plan.paths
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, i)| i)
    }

    #[test]
    fn plan_watches_every_ancestor_for_the_next_component() {
        let plan = WatchPlan::new(&[PathBuf::from("/nonexistent-dpms/app/plugins")], &[], &[]);
        let folder = interest(&plan, "/nonexistent-dpms/app/plugins").map(|i| i.folder);
        assert_eq!(folder, Some(true));
        for (path, entry) in [
            ("/nonexistent-dpms/app", "plugins"),
            ("/nonexistent-dpms", "app"),
            ("/", "nonexistent-dpms"),
        ] {
            let i = interest(&plan, path);
            assert!(
                i.is_some_and(|i| !i.folder && i.entries.contains(&OsString::from(entry))),
                "{path}: {i:?}"
            );
        }
    }

    #[test]
    fn nested_folders_are_folder_and_ancestor_at_once() {
        let plan = WatchPlan::new(
            &[PathBuf::from("/nx-dpms/a"), PathBuf::from("/nx-dpms/a/b")],
            &[],
            &[("pkg".into(), vec![PathBuf::from("/nx-dpms/a/pkg")])],
        );
        let a = interest(&plan, "/nx-dpms/a");
        assert!(a.is_some_and(|i| i.folder && i.entries.contains(&OsString::from("b"))));
        let pkg = interest(&plan, "/nx-dpms/a/pkg").and_then(|i| i.package.clone());
        assert_eq!(pkg.as_deref(), Some("pkg"));
        let paths: HashSet<PathBuf> = plan.entry_paths();
        assert!(paths.contains(Path::new("/nx-dpms/a/b")));
        assert!(paths.contains(Path::new("/nx-dpms/a")));
    }

    #[test]
    fn package_names() {
        for good in ["pkg", "_private", "a1_b2"] {
            assert!(is_package_name(good), "{good}");
        }
        for bad in ["", "1abc", "a.b", "a-b", "__pycache__", "notes.db"] {
            assert!(!is_package_name(bad), "{bad}");
        }
        assert_eq!(package_key("pkg"), "pkg/");
        assert!(!package_key("pkg").ends_with(".py"));
    }
}

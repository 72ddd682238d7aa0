//! The registry: what is loaded from which file, and the current route table.
//!
//! Readers take the current [`Snapshot`] (an `Arc`, never locked for long) and check it is
//! fresh; a change found by the watcher or by a request leads to [`Registry::sync`], which
//! reconciles the folders with the snapshot under one lock (one reload at a time), imports
//! what changed — and every module that imported a changed one — and publishes a new snapshot
//! only once the imports are done. Requests already running keep the snapshot (and the module
//! objects) they started with.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde_json::Value;

use super::owner::{self, Scope, Verdict};
use super::watcher::{
    package_files, package_key, ChangeQueue, Changes, DirState, FileState, FolderWatcher, WatchPlan,
};
use crate::config::{Config, ReloadMode};
use crate::exec::{CodeRef, Schedule};
use crate::exec::{Description, FinderEntry, LoadRequest, Loaded, Loader};
use crate::marshal::Signature;
use crate::router::{is_uuid_segment, Auth, Endpoint, FileProblem, MethodSet, Module, RouteTable};

/// A plugin file the snapshot answers for.
#[derive(Debug, Clone)]
struct TrackedFile {
    stem: String,
    path: PathBuf,
    state: Arc<FileState>,
    /// What the file does in this registry's scope, from its `__ID__` (read once per content).
    verdict: Verdict,
}

/// A package folder inside a plugin folder: what plugins import from it, file by file.
#[derive(Debug, Clone)]
struct TrackedPackage {
    name: String,
    dir: PathBuf,
    folders: Vec<PathBuf>,
    files: Vec<(PathBuf, Arc<FileState>)>,
}

impl TrackedPackage {
    fn read(name: &str, dir: &std::path::Path) -> TrackedPackage {
        let (paths, folders) = package_files(dir);
        TrackedPackage {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            folders,
            files: paths
                .into_iter()
                .filter_map(|p| FileState::read(&p).ok().map(|s| (p, Arc::new(s))))
                .collect(),
        }
    }

    /// Whether the package holds the same files with the same content.
    fn is_current(&self) -> bool {
        let (paths, _) = package_files(&self.dir);
        paths.len() == self.files.len()
            && paths
                .iter()
                .zip(&self.files)
                .all(|(p, (q, state))| p == q && state.is_current(p))
    }

    fn init(&self) -> String {
        self.dir.join("__init__.py").display().to_string()
    }
}

/// Everything one request needs to route, consistent with itself.
pub struct Snapshot {
    pub table: RouteTable,
    dirs: Vec<DirState>,
    files: Vec<TrackedFile>,
    packages: Vec<TrackedPackage>,
    /// Files of other owners (`<file>.py`, the `__ID__` they name), for the admin's `__dir__`.
    foreign: Vec<(String, String)>,
    /// File stem → index in `files`: requests look files up by name while a mass change with
    /// thousands of names is pending.
    by_stem: HashMap<String, usize>,
}

impl Snapshot {
    fn new(
        table: RouteTable,
        dirs: Vec<DirState>,
        files: Vec<TrackedFile>,
        packages: Vec<TrackedPackage>,
    ) -> Snapshot {
        let by_stem = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.stem.clone(), i))
            .collect();
        let foreign = files
            .iter()
            .filter_map(|f| match &f.verdict {
                Verdict::Foreign(owner) => Some((format!("{}.py", f.stem), owner.clone())),
                _ => None,
            })
            .collect();
        Snapshot {
            table,
            dirs,
            files,
            packages,
            foreign,
            by_stem,
        }
    }

    fn empty() -> Snapshot {
        Snapshot::new(RouteTable::default(), Vec::new(), Vec::new(), Vec::new())
    }

    fn file(&self, stem: &str) -> Option<&TrackedFile> {
        self.by_stem.get(stem).and_then(|&i| self.files.get(i))
    }

    /// What the Python finder may import from the plugin folders: stem → file (a package's
    /// `__init__.py`).
    fn finder_map(
        files: &[TrackedFile],
        packages: &[TrackedPackage],
        scope: Scope,
    ) -> Vec<FinderEntry> {
        files
            .iter()
            .filter(|f| f.verdict == Verdict::Load)
            .map(|f| FinderEntry {
                name: f.stem.clone(),
                path: f.path.display().to_string(),
                source: scope.sends_sources().then(|| Arc::clone(&f.state.source)),
            })
            .chain(packages.iter().map(|p| FinderEntry {
                name: p.name.clone(),
                path: p.init(),
                source: None,
            }))
            .collect()
    }

    /// For an unknown API: a plugin file that does not import and whose source names `api`
    /// in quotes (`API="api"`), with its error: the likely reason the API is missing.
    /// Files of other owners: `(<file>.py, the `__ID__` it names)`.
    pub fn foreign(&self) -> &[(String, String)] {
        &self.foreign
    }

    pub fn broken_mention(&self, api: &str) -> Option<(String, String)> {
        let quoted = [format!("\"{api}\""), format!("'{api}'")];
        self.table
            .problems()
            .iter()
            .filter(|p| p.status == "error")
            .find_map(|p| {
                let stem = p.key.strip_suffix(".py")?;
                let file = self.file(stem)?;
                let source = String::from_utf8_lossy(&file.state.source);
                quoted
                    .iter()
                    .any(|q| source.contains(q.as_str()))
                    .then(|| (p.key.clone(), p.error.clone()))
            })
    }

    /// Whether `key` (a file name `x.py` or a package key `pkg/`) is one this snapshot has.
    fn knows(&self, key: &str) -> bool {
        match (key.strip_suffix(".py"), key.strip_suffix('/')) {
            (Some(stem), _) => self.by_stem.contains_key(stem),
            (_, Some(name)) => self.packages.iter().any(|p| p.name == name),
            _ => false,
        }
    }

    /// Whether no plugin file was added or removed.
    pub fn dirs_current(&self) -> bool {
        self.dirs.iter().all(DirState::is_current)
    }

    /// Whether every plugin file is as loaded (a stat each; content for racy ones).
    pub fn files_current(&self) -> bool {
        self.dirs_current() && self.files.iter().all(|f| f.state.is_current(&f.path))
    }

    /// Whether the folders list the same files and each of `needs` (plugin modules and
    /// packages) holds the bytes that were loaded: a stat each, content when recent or changed.
    pub fn needs_current(&self, needs: &[String]) -> bool {
        self.dirs_current() && needs.iter().all(|n| self.dep_current(n))
    }

    /// Whether the plugin module or package `name` holds what was loaded (false if unknown).
    fn dep_current(&self, name: &str) -> bool {
        match self.file(name) {
            Some(f) => f.state.is_current(&f.path),
            None => self
                .packages
                .iter()
                .find(|p| p.name == name)
                .is_some_and(TrackedPackage::is_current),
        }
    }

    /// Whether `module` and the plugin modules it imported are as loaded.
    pub fn module_current(&self, module: &Module) -> bool {
        if !module.file.is_current(&module.path) {
            return false;
        }
        module.deps.iter().all(|dep| self.dep_current(dep))
    }
}

pub struct Registry {
    config: Arc<Config>,
    loader: Arc<dyn Loader>,
    /// Which files this registry loads (SPEC §7 ownership).
    scope: Scope,
    current: RwLock<Arc<Snapshot>>,
    /// Held for the whole of a reload: one reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set by the watcher; cleared when a sync starts.
    dirty: Arc<AtomicBool>,
    /// The background watcher and what it watches; rebuilt when the folders are replaced.
    watcher: std::sync::Mutex<Option<(FolderWatcher, WatchPlan)>>,
    /// Pokes the background reload task; `None` when reloading is off.
    wake: Option<tokio::sync::mpsc::Sender<()>>,
    /// The exact request-path check; `None` falls back to `stat` checks.
    queue: Option<ChangeQueue>,
    /// Changes drained from the queue that no reload has taken yet. Every drain lands here
    /// first, so a request deciding whether it may skip a reload sees all of them.
    unprocessed: std::sync::Mutex<Changes>,
    /// What the reload under way is doing.
    load_state: tokio::sync::watch::Sender<LoadState>,
    last_good: LastGood,
}

impl Registry {
    /// Loads every plugin and, unless reloading is off, starts watching the folders.
    pub async fn start(
        config: Arc<Config>,
        loader: Arc<dyn Loader>,
        scope: Scope,
    ) -> Arc<Registry> {
        // A tenant's registry has no background reloads: its requests check its files.
        let background = !matches!(scope, Scope::Tenant(_));
        let (wake, woken) = match config.reload {
            ReloadMode::Never => (None, None),
            _ if !background => (None, None),
            _ => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                (Some(tx), Some(rx))
            }
        };
        let registry = Arc::new(Registry {
            config: Arc::clone(&config),
            loader,
            scope,
            current: RwLock::new(Arc::new(Snapshot::empty())),
            reload_lock: tokio::sync::Mutex::new(()),
            dirty: Arc::new(AtomicBool::new(false)),
            watcher: std::sync::Mutex::new(None),
            wake,
            queue: match config.reload {
                ReloadMode::Never => None,
                _ if !config.watch_inotify => None,
                _ => ChangeQueue::new(&config.plugin_dirs)
                    .map_err(|e| tracing::warn!(cause = %e, "inotify unavailable; freshness is checked with stat on each request"))
                    .ok(),
            },
            unprocessed: std::sync::Mutex::new(Changes::Nothing),
            load_state: tokio::sync::watch::Sender::new(LoadState::Idle),
            last_good: LastGood {
                dir: config.state_dir.clone(),
            },
        });
        if let Some(mut woken) = woken {
            let weak = Arc::downgrade(&registry);
            tokio::spawn(async move {
                while woken.recv().await.is_some() {
                    // Let a burst of events (an editor's save) settle into one reload.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    let Some(registry) = weak.upgrade() else {
                        break;
                    };
                    if registry.dirty.load(Ordering::Acquire) {
                        registry.sync(&[]).await;
                    }
                }
            });
        }
        registry.sync(&[]).await;
        registry
    }

    /// Whether this worker is the first to report `message` about this content of `file`.
    fn first_to_log(&self, file: &TrackedFile, message: &str) -> bool {
        let key = format!(
            "{}\0{}\0{}",
            file.path.display(),
            crate::state_dir::content_key(&file.state.source),
            message
        );
        crate::state_dir::first_to_log(self.config.state_dir.as_deref(), &key)
    }

    /// (Re)starts the background watcher on `plan` when the folders it watches were replaced
    /// or the plan changed. Only for speed: the request path's checks are exact without it.
    fn watch_in_background(&self, plan: &WatchPlan, replaced: bool) {
        let Some(wake) = &self.wake else { return };
        let Ok(mut slot) = self.watcher.lock() else {
            return;
        };
        if !replaced && slot.as_ref().is_some_and(|(_, p)| p == plan) {
            return;
        }
        // The old watcher goes first: its thread must not hold the folders' watches twice.
        *slot = None;
        match FolderWatcher::start(plan, Arc::clone(&self.dirty), wake.clone()) {
            Ok(w) => *slot = Some((w, plan.clone())),
            Err(e) => {
                tracing::warn!(cause = %e, "file watcher unavailable; changes are found by the per-request check only")
            }
        }
    }

    pub fn reload_mode(&self) -> ReloadMode {
        self.config.reload
    }

    /// The snapshot to route with, after the cheap freshness checks of the reload mode. With
    /// the inotify queue, the snapshot returned is current for every file.
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot_for(|_| None).await
    }

    /// [`Registry::snapshot`] for a request that needs only the modules `needs` names in a
    /// table (`None`: it needs the whole table). While other modules are being reloaded, or
    /// changes to them are not yet taken by a reload, such a request is served at once from the
    /// current table (SPEC §2: a slow import delays only the requests that route to the
    /// modules being loaded); it waits for the reload otherwise. See
    /// [`Registry::untouched`] for why that is exact.
    pub async fn snapshot_for(
        &self,
        needs: impl Fn(&Snapshot) -> Option<Vec<String>>,
    ) -> Arc<Snapshot> {
        if self.config.reload == ReloadMode::Never {
            return self.current();
        }
        let mut state = self.load_state.subscribe();
        // Bounded: a reload scanning again and again cannot keep a request here; it then
        // waits for the reload like any other.
        for _ in 0..8 {
            // In this order: every change completed before the request was sent is then in
            // `unprocessed`, in what the reload seen in `now` took, or in the snapshot read
            // last (published by a reload that took it).
            let unprocessed = self.drain_into_unprocessed();
            let reloading = self.reload_lock.try_lock().is_err();
            let now = if reloading {
                state.borrow_and_update().clone()
            } else {
                LoadState::Idle
            };
            let snap = self.current();
            let dirty = self.dirty.load(Ordering::Acquire);
            if !reloading && unprocessed.is_nothing() && !dirty {
                return snap;
            }
            if reloading && matches!(now, LoadState::Idle) {
                // A reload just starting or just ending: look again.
                tokio::task::yield_now().await;
                continue;
            }
            let untouched = needs(&snap)
                .is_some_and(|needs| Self::untouched(&snap, &needs, &unprocessed, &now));
            if untouched {
                if !unprocessed.is_nothing() || dirty {
                    // Taken by the next reload, which the background task starts.
                    self.dirty.store(true, Ordering::Release);
                    if let Some(wake) = &self.wake {
                        let _ = wake.try_send(());
                    }
                }
                return snap;
            }
            match now {
                // What it loads is not known yet: look again once it knows.
                LoadState::Scanning(_) => {
                    if state.changed().await.is_err() {
                        break;
                    }
                }
                LoadState::Idle | LoadState::Loading(_) => break,
            }
        }
        self.sync_with(&[], Changes::Nothing).await
    }

    /// Whether `snap` answers exactly as a reload would for a request needing the modules (and
    /// packages) `needs`: none of them is among the changes not yet taken (`unprocessed`),
    /// among those the reload under way took (`now`: scanning) or among the modules it loads
    /// (`now`: loading), and no change names a file `snap` does not have (a new file could
    /// take over the API). When the queue cannot tell (it overflowed, a folder was replaced),
    /// the disk decides: the folders list the same files and each needed file holds the bytes
    /// that were loaded ([`Snapshot::needs_current`], the check used without inotify). Either
    /// way a change to a needed file completed before the request was sent is seen, so the
    /// request waits for it; nothing stale is served.
    fn untouched(
        snap: &Snapshot,
        needs: &[String],
        unprocessed: &Changes,
        now: &LoadState,
    ) -> bool {
        let clear = |changes: &Changes| {
            needs
                .iter()
                .all(|n| !changes.covers(&format!("{n}.py")) && !changes.covers(&package_key(n)))
                && changes.only_known(|n| snap.knows(n))
        };
        let by_queue = clear(unprocessed)
            && match now {
                LoadState::Idle => true,
                LoadState::Scanning(taken) => clear(taken),
                LoadState::Loading(pending) => needs.iter().all(|n| !pending.contains(n)),
            };
        by_queue || snap.needs_current(needs)
    }

    /// Drains the queue (or, without one, checks the folders) into `unprocessed`; returns a
    /// copy of everything no reload has taken yet.
    fn drain_into_unprocessed(&self) -> Changes {
        let mut guard = match self.unprocessed.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &self.queue {
            Some(queue) => guard.merge(queue.drain()),
            None if self.current().dirs_current() => {}
            None => guard.merge(Changes::Everything),
        }
        guard.clone()
    }

    /// Whether `module` (and what it imported) is still what is on disk. Free with the inotify
    /// queue: [`Registry::snapshot`] already made sure.
    pub fn module_current(&self, snap: &Snapshot, module: &Module) -> bool {
        self.queue.is_some() || snap.module_current(module)
    }

    /// Whether every plugin file is still what is on disk (see [`Registry::module_current`]).
    pub fn files_current(&self, snap: &Snapshot) -> bool {
        self.queue.is_some() || snap.files_current()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn publish(&self, snap: Arc<Snapshot>) {
        match self.current.write() {
            Ok(mut guard) => *guard = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
    }

    /// Reconciles the folders with the current snapshot; `force` names modules to re-import
    /// even if unchanged (`DPMS_RELOAD=always`). Returns the snapshot now current.
    pub async fn sync(&self, force: &[String]) -> Arc<Snapshot> {
        self.sync_with(force, Changes::Nothing).await
    }

    /// [`Registry::sync`], told which files a drain of the queue already reported. Without the
    /// queue every file is checked; with it, only files with events (every event is drained
    /// exactly once, by the caller of the sync that then checks it), new files and `force`.
    async fn sync_with(&self, force: &[String], mut changes: Changes) -> Arc<Snapshot> {
        let _guard = self.reload_lock.lock().await;
        tracing::debug!("checking the plugin folders");
        let _state = LoadStateGuard::scanning(&self.load_state);
        self.dirty.store(false, Ordering::Release);
        // What is queued now is covered by the scan below; what comes later stays queued.
        {
            let mut unprocessed = match self.unprocessed.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(queue) = &self.queue {
                unprocessed.merge(queue.drain());
            }
            changes.merge(std::mem::replace(&mut *unprocessed, Changes::Nothing));
        }
        if self.queue.is_none() {
            changes = Changes::Everything;
        }
        self.load_state
            .send_replace(LoadState::Scanning(Arc::new(changes.clone())));
        let old = self.current();
        let old_links: Vec<PathBuf> = old.dirs.iter().flat_map(DirState::links).collect();
        if let (Some(queue), Changes::Everything) = (&self.queue, &changes) {
            // A folder (or a folder on its path) may have been replaced: watch what its name
            // means now, before the scan, so nothing written after the scan is missed.
            let old_packages: Vec<(String, Vec<PathBuf>)> = old
                .packages
                .iter()
                .map(|p| (p.name.clone(), p.folders.clone()))
                .collect();
            let plan = WatchPlan::new(&self.config.plugin_dirs, &old_links, &old_packages);
            if let Err(e) = queue.rewatch(plan, true) {
                tracing::warn!(cause = %e, "cannot watch the plugin folders again");
            }
        }

        let dirs: Vec<DirState> = self
            .config
            .plugin_dirs
            .iter()
            .map(|d| DirState::scan(d))
            .collect();
        let replaced = old.dirs.len() != dirs.len()
            || old
                .dirs
                .iter()
                .zip(&dirs)
                .any(|(a, b)| a.identity() != b.identity());
        if !old.dirs.is_empty() {
            for (before, now) in old.dirs.iter().zip(&dirs) {
                match (before.exists(), now.exists()) {
                    (true, false) => tracing::warn!(
                        folder = %now.path.display(),
                        "plugin folder vanished; nothing is served from it until it is back"
                    ),
                    (false, true) => {
                        tracing::info!(folder = %now.path.display(), "plugin folder is back")
                    }
                    _ => {}
                }
            }
        }
        let mut listing: Vec<(String, PathBuf)> = Vec::new();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut problems: Vec<FileProblem> = Vec::new();
        // Files of a name already seen in an earlier folder: the first folder wins among files
        // of this registry's scope, so which one is used is decided once the owners are known.
        let mut later: Vec<(String, PathBuf)> = Vec::new();
        for dir in &dirs {
            for name in dir.names() {
                let stem = name.trim_end_matches(".py").to_string();
                let path = dir.path.join(name);
                if first_seen.contains_key(&stem) {
                    later.push((stem, path));
                } else {
                    first_seen.insert(stem.clone(), listing.len());
                    listing.push((stem, path));
                }
            }
        }

        let mut package_listing: Vec<(String, PathBuf)> = Vec::new();
        for dir in &dirs {
            for name in dir.packages() {
                let path = dir.path.join(name);
                let earlier = first_seen
                    .get(name)
                    .map(|&i| listing[i].1.clone())
                    .or_else(|| {
                        package_listing
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, p)| p.clone())
                    });
                match earlier {
                    Some(first) => problems.push(FileProblem {
                        line: None,
                        key: path.display().to_string(),
                        status: "shadowed",
                        error: format!(
                            "package `{name}` is shadowed by {} (the first one wins)",
                            first.display()
                        ),
                    }),
                    None => package_listing.push((name.clone(), path)),
                }
            }
        }
        let old_packages: HashMap<&str, &TrackedPackage> =
            old.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut packages: Vec<TrackedPackage> = Vec::new();
        let mut changed_packages: Vec<String> = Vec::new();
        for (name, path) in &package_listing {
            let kept = old_packages.get(name.as_str()).filter(|p| {
                &p.dir == path && (!changes.covers(&package_key(name)) || p.is_current())
            });
            match kept {
                Some(p) => packages.push((*p).clone()),
                None => {
                    changed_packages.push(name.clone());
                    packages.push(TrackedPackage::read(name, path));
                }
            }
        }
        let listed: HashSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
        changed_packages.extend(
            old.packages
                .iter()
                .filter(|p| !listed.contains(p.name.as_str()))
                .map(|p| p.name.clone()),
        );

        let links: Vec<PathBuf> = dirs.iter().flat_map(DirState::links).collect();
        let watched_packages: Vec<(String, Vec<PathBuf>)> = packages
            .iter()
            .map(|p| (p.name.clone(), p.folders.clone()))
            .collect();
        let plan = WatchPlan::new(&self.config.plugin_dirs, &links, &watched_packages);
        if let Some(queue) = &self.queue {
            // Symlinked plugin files and packages: their folders are watched before the
            // files are read.
            if let Err(e) = queue.rewatch(plan.clone(), false) {
                tracing::warn!(cause = %e, "cannot watch the plugin folders again");
            }
        }

        self.watch_in_background(&plan, replaced);

        // What changed, by file.
        let old_files: HashMap<&str, &TrackedFile> =
            old.files.iter().map(|f| (f.stem.as_str(), f)).collect();
        let failed = old_modules_failed(&old);
        let mut files: Vec<TrackedFile> = Vec::new();
        let mut changed: HashSet<String> = HashSet::new();
        for (i, (stem, path)) in listing.iter().enumerate() {
            // One thread serves this worker's requests: let them in between the reads.
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let kept = old_files.get(stem.as_str()).filter(|f| {
                &f.path == path
                    && !force.contains(stem)
                    && (!changes.covers(&format!("{stem}.py"))
                        || if failed.contains(stem.as_str()) {
                            f.state.is_untouched(path)
                        } else {
                            f.state.is_current(path)
                        })
            });
            match kept {
                Some(f) => files.push((*f).clone()),
                None => match FileState::read(path) {
                    Ok(state) => {
                        changed.insert(stem.clone());
                        let verdict = self.scope.verdict(&owner::declared(&state.source));
                        files.push(TrackedFile {
                            stem: stem.clone(),
                            path: path.clone(),
                            state: Arc::new(state),
                            verdict,
                        });
                    }
                    Err(e) => problems.push(FileProblem {
                        line: None,
                        key: format!("{stem}.py"),
                        status: "error",
                        error: format!("cannot read {}: {e}", path.display()),
                    }),
                },
            }
        }
        // A name whose first file belongs to another owner is this scope's file in a later
        // folder, if one is; of two files of this scope, the later one is shadowed.
        for (stem, path) in &later {
            let Some(slot) = files.iter().position(|f| &f.stem == stem) else {
                continue;
            };
            let state = match old_files
                .get(stem.as_str())
                .filter(|f| &f.path == path && f.state.is_current(path))
            {
                Some(f) => Arc::clone(&f.state),
                None => match FileState::read(path) {
                    Ok(state) => Arc::new(state),
                    Err(_) => continue,
                },
            };
            let verdict = self.scope.verdict(&owner::declared(&state.source));
            if verdict != Verdict::Load {
                continue;
            }
            if files[slot].verdict == Verdict::Load {
                let name = format!("{stem}.py");
                problems.push(FileProblem {
                    line: None,
                    key: path.display().to_string(),
                    status: "shadowed",
                    error: format!(
                        "`{name}` is shadowed by {} (the first folder wins)",
                        files[slot].path.display()
                    ),
                });
                continue;
            }
            if old_files
                .get(stem.as_str())
                .is_none_or(|f| &f.path != path || !Arc::ptr_eq(&f.state, &state))
            {
                changed.insert(stem.clone());
            }
            files[slot] = TrackedFile {
                stem: stem.clone(),
                path: path.clone(),
                state,
                verdict,
            };
        }
        let present: HashSet<&str> = files.iter().map(|f| f.stem.as_str()).collect();
        let removed: Vec<String> = old
            .files
            .iter()
            .filter(|f| !present.contains(f.stem.as_str()))
            .map(|f| f.stem.clone())
            .collect();

        // Every module that imported a changed or removed one (or package) is re-imported
        // too; when something new appears, so is every module that did not import (it may
        // have been missing just that).
        let mut affected: HashSet<String> = changed
            .iter()
            .chain(&removed)
            .chain(&changed_packages)
            .cloned()
            .collect();
        let appeared = files
            .iter()
            .any(|f| !old_files.contains_key(f.stem.as_str()))
            || packages
                .iter()
                .any(|p| !old_packages.contains_key(p.name.as_str()));
        if appeared && !old.files.is_empty() {
            for f in &files {
                if failed.contains(f.stem.as_str()) {
                    affected.insert(f.stem.clone());
                }
            }
        }
        loop {
            let more: Vec<String> = old
                .table
                .modules()
                .iter()
                .filter(|m| present.contains(m.name.as_str()) && !affected.contains(&m.name))
                .filter(|m| m.deps.iter().any(|d| affected.contains(d)))
                .map(|m| m.name.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            affected.extend(more);
        }

        let requests: Vec<LoadRequest> = files
            .iter()
            .filter(|f| affected.contains(&f.stem) && f.verdict == Verdict::Load)
            .map(|f| LoadRequest {
                name: f.stem.clone(),
                path: f.path.display().to_string(),
                source: Arc::clone(&f.state.source),
            })
            .collect();
        // The finder's stem -> path map changes only when files or packages come or go.
        let map = Snapshot::finder_map(&files, &packages, self.scope);
        let file_map =
            (map != Snapshot::finder_map(&old.files, &old.packages, self.scope)).then_some(map);
        let mut forget = removed.clone();
        forget.extend(changed_packages.iter().cloned());
        // A module whose file now names another owner is gone from this scope.
        forget.extend(
            files
                .iter()
                .filter(|f| f.verdict != Verdict::Load && old_modules_named(&old, &f.stem))
                .map(|f| f.stem.clone()),
        );
        let mut pending: HashSet<String> = affected.clone();
        pending.extend(forget.iter().cloned());
        self.load_state
            .send_replace(LoadState::Loading(Arc::new(pending)));
        let started = std::time::Instant::now();
        let results = if requests.is_empty() && forget.is_empty() && file_map.is_none() {
            Vec::new()
        } else {
            match self.loader.load(file_map, forget, requests.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(cause = %e, "plugin reload failed; keeping the previous modules");
                    return old;
                }
            }
        };
        if let Some(m) = crate::metrics::Metrics::get().filter(|_| !requests.is_empty()) {
            m.reloaded(requests.len());
        }
        let mut loaded: HashMap<String, Loaded> = requests
            .iter()
            .map(|r| r.name.clone())
            .zip(results)
            .collect();

        let old_modules: HashMap<&str, &Arc<Module>> = old
            .table
            .modules()
            .iter()
            .map(|m| (m.name.as_str(), m))
            .collect();
        let mut modules: Vec<Arc<Module>> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            match &f.verdict {
                Verdict::Load => {}
                Verdict::Invalid(why) => {
                    problems.push(FileProblem {
                        line: None,
                        key: format!("{}.py", f.stem),
                        status: "error",
                        error: why.clone(),
                    });
                    continue;
                }
                Verdict::Foreign(_) | Verdict::Ignore => continue,
            }
            match loaded.remove(&f.stem) {
                None => {
                    if let Some(m) = old_modules.get(f.stem.as_str()) {
                        modules.push(Arc::clone(m));
                    } else if let Some(p) = old.table.problem(&format!("{}.py", f.stem)) {
                        problems.push(p.clone());
                    }
                }
                Some(Loaded::Ok {
                    description,
                    json,
                    code,
                }) => {
                    self.last_good.save(&f.stem, &f.path, &json);
                    let module = build_module(f, description, Some(code));
                    for err in &module.errors {
                        if self.first_to_log(f, err) {
                            tracing::warn!(module = %f.stem, "{err}");
                        }
                    }
                    modules.push(Arc::new(module));
                }
                Some(Loaded::ImportError { error, traceback }) => {
                    if self.first_to_log(f, &error) {
                        tracing::warn!(module = %f.stem, error = %error, "plugin does not import\n{traceback}");
                    }
                    let previous = old_modules
                        .get(f.stem.as_str())
                        .map(|m| Arc::clone(m))
                        .or_else(|| {
                            self.last_good
                                .load(&f.stem, &f.path)
                                .map(|d| Arc::new(build_module(f, d, None)))
                        });
                    match previous {
                        Some(previous) => modules.push(Arc::new(broken(&previous, f, error))),
                        None => problems.push(FileProblem {
                            key: format!("{}.py", f.stem),
                            status: "error",
                            line: import_line(&traceback, &f.path),
                            error,
                        }),
                    }
                }
                Some(Loaded::Refused { error }) => {
                    if self.first_to_log(f, &error) {
                        tracing::warn!(module = %f.stem, error = %error, "plugin refused");
                    }
                    problems.push(FileProblem {
                        line: None,
                        key: format!("{}.py", f.stem),
                        status: "error",
                        error,
                    });
                }
            }
        }
        let reloaded = requests.len();
        let snap = Arc::new(Snapshot::new(
            RouteTable::build(modules, problems),
            dirs,
            files,
            packages,
        ));
        if reloaded > 0 || !removed.is_empty() {
            tracing::info!(
                reloaded,
                removed = removed.len(),
                modules = snap.table.modules().len(),
                took_ms = started.elapsed().as_secs_f64() * 1000.0,
                "plugins loaded"
            );
        }
        self.publish(Arc::clone(&snap));
        snap
    }
}

/// A reload gives way to requests (it runs on the thread that serves them) after checking or
/// building this many files.
const YIELD_EVERY: usize = 128;

/// What the reload under way is doing, for requests deciding whether to wait for it.
#[derive(Debug, Clone)]
pub enum LoadState {
    Idle,
    /// Looking at the folders: what it will load is not known yet; what it checks (the
    /// changes it took; everything until it has taken them).
    Scanning(Arc<Changes>),
    /// Importing: the modules (and packages) being loaded or dropped.
    Loading(Arc<HashSet<String>>),
}

/// Sets [`LoadState::Scanning`] and puts back [`LoadState::Idle`] however the reload ends.
struct LoadStateGuard<'a>(&'a tokio::sync::watch::Sender<LoadState>);

impl<'a> LoadStateGuard<'a> {
    fn scanning(state: &'a tokio::sync::watch::Sender<LoadState>) -> Self {
        state.send_replace(LoadState::Scanning(Arc::new(Changes::Everything)));
        LoadStateGuard(state)
    }
}

impl Drop for LoadStateGuard<'_> {
    fn drop(&mut self) {
        self.0.send_replace(LoadState::Idle);
    }
}

/// The modules that did not import in `snap` (broken modules and import errors), by stem.
fn old_modules_failed(snap: &Snapshot) -> HashSet<&str> {
    snap.table
        .modules()
        .iter()
        .filter(|m| m.import_error.is_some())
        .map(|m| m.name.as_str())
        .chain(
            snap.table
                .problems()
                .iter()
                .filter(|p| p.status == "error")
                .filter_map(|p| p.key.strip_suffix(".py")),
        )
        .collect()
}

/// The last description of each module that imported, shared by the workers of one supervisor.
///
/// A worker that first meets a file when it no longer imports (another worker served the
/// version that did) has no endpoints of its own to answer 500 `plugin_import_error` with; it
/// takes them from here, so every worker answers alike. Without a shared folder (one process)
/// the in-memory previous version is enough.
struct LastGood {
    dir: Option<PathBuf>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LastGoodRecord {
    path: PathBuf,
    description: String,
}

impl LastGood {
    fn file(&self, stem: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{stem}.json")))
    }

    fn save(&self, stem: &str, path: &std::path::Path, description: &str) {
        let Some(file) = self.file(stem) else { return };
        let record = LastGoodRecord {
            path: path.to_path_buf(),
            description: description.to_string(),
        };
        let Ok(text) = serde_json::to_vec(&record) else {
            return;
        };
        // Written by rename: another worker never reads half a record.
        let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn load(&self, stem: &str, path: &std::path::Path) -> Option<Description> {
        let text = std::fs::read(self.file(stem)?).ok()?;
        let record: LastGoodRecord = serde_json::from_slice(&text).ok()?;
        if record.path != path {
            return None;
        }
        match serde_json::from_str(&record.description).ok()? {
            crate::pyhost::Report::Ok(d) => Some(d),
            _ => None,
        }
    }
}

/// Whether the old route table has a module of that name.
fn old_modules_named(old: &Snapshot, stem: &str) -> bool {
    old.table.modules().iter().any(|m| m.name == stem)
}

/// A route-table module for a description loaded outside any registry (a tenant's process,
/// which has the source but no folder): the same checks, so endpoint indexes agree with the
/// host's table built from the same description.
pub fn module_from(
    stem: &str,
    path: &std::path::Path,
    source: Arc<Vec<u8>>,
    d: Description,
    code: CodeRef,
) -> Module {
    let file = TrackedFile {
        stem: stem.to_string(),
        path: path.to_path_buf(),
        state: Arc::new(FileState::in_memory(source)),
        verdict: Verdict::Load,
    };
    build_module(&file, d, Some(code))
}

/// Turns a module description into a route-table module, checking each endpoint.
fn build_module(file: &TrackedFile, d: Description, code: Option<CodeRef>) -> Module {
    let mut errors = d.errors;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for e in d.endpoints {
        let methods = match MethodSet::parse(&e.methods) {
            Ok(m) => m,
            Err(why) => {
                errors.push(format!("{}: method {why}", e.func));
                continue;
            }
        };
        if let Err(why) = check_api_name(&e.api) {
            errors.push(format!("{}: API `{}` {why}", e.func, e.api));
            continue;
        }
        let clash = endpoints
            .iter()
            .find(|x| x.api == e.api && !x.methods.intersection(methods).is_empty());
        if let Some(other) = clash {
            errors.push(format!(
                "{}: API `{}` is already defined by `{}` for one of the same methods",
                e.func, e.api, other.func
            ));
            continue;
        }
        let auth = match Auth::parse(e.meta.get("auth")) {
            Ok(auth) => auth,
            Err(why) => {
                errors.push(format!("{}: {why}", e.func));
                continue;
            }
        };
        let label: Arc<str> = format!("{}.{}", file.stem, e.func).into();
        let key = serde_json::to_string(&*label).unwrap_or_default();
        let blocking = e.meta.get("blocking") == Some(&Value::Bool(true));
        let prefix = format!("{{\"status\":\"OK\",\"response\":{{{key}:");
        endpoints.push(Endpoint {
            api: e.api,
            func: e.func,
            methods,
            doc: e.doc,
            description: e.description,
            signature: e.signature,
            params: Signature::new(e.params),
            meta: if e.meta.is_object() {
                e.meta
            } else {
                Value::Null
            },
            auth,
            envelope_prefix: Bytes::from(prefix),
            label,
            index: e.index,
            schedule: Arc::new(Schedule::new(blocking)),
        });
    }
    Module {
        name: file.stem.clone(),
        path: file.path.clone(),
        alias: d.alias,
        owner: d.owner,
        public: d.public,
        endpoints,
        errors,
        import_error: None,
        code,
        file: Arc::clone(&file.state),
        deps: d.deps,
        lines: d.lines,
    }
}

/// The line of `path` an import failed on: the last frame of the traceback in that file (a
/// syntax error's own `File "…", line N` included).
fn import_line(traceback: &str, path: &std::path::Path) -> Option<u32> {
    let wanted = format!("File \"{}\", line ", path.display());
    traceback.lines().rev().find_map(|l| {
        l.trim_start()
            .strip_prefix(wanted.as_str())?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// A module whose new version does not import: the previous endpoints, answering 500.
fn broken(previous: &Module, file: &TrackedFile, error: String) -> Module {
    Module {
        name: previous.name.clone(),
        path: previous.path.clone(),
        alias: previous.alias.clone(),
        owner: previous.owner.clone(),
        public: previous.public.clone(),
        endpoints: previous.endpoints.clone(),
        errors: previous.errors.clone(),
        import_error: Some(error),
        code: None,
        file: Arc::clone(&file.state),
        deps: previous.deps.clone(),
        lines: previous.lines.clone(),
    }
}

/// An API name must be usable as one URL segment and not look like a reserved one.
fn check_api_name(api: &str) -> Result<(), &'static str> {
    if api.is_empty() {
        return Err("is empty");
    }
    if api.contains('/') {
        return Err("contains `/`");
    }
    if api.starts_with("__") {
        return Err("begins with `__`");
    }
    if is_uuid_segment(api) {
        return Err("looks like a UUID, which URLs reserve for the caller's identity");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_line_is_the_last_frame_in_the_file() {
        let path = std::path::Path::new("/p/x.py");
        let tb = "Traceback (most recent call last):\n  File \"/p/x.py\", line 3, in <module>\n    import y\n  File \"/p/y.py\", line 9, in <module>\n    boom()\n  File \"/p/x.py\", line 12, in boom\nValueError: no\n";
        assert_eq!(import_line(tb, path), Some(12));
        let syntax =
            "  File \"/p/x.py\", line 4\n    def (\n        ^\nSyntaxError: invalid syntax\n";
        assert_eq!(import_line(syntax, path), Some(4));
        assert_eq!(import_line("nothing here", path), None);
        assert_eq!(import_line(tb, std::path::Path::new("/p/z.py")), None);
    }
}

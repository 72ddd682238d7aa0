//! Tenancy on the request path (SPEC §7), one instance per worker: who a uuid is, from an
//! in-memory copy of the tenant registry that is exact (re-read when the registry's
//! cross-process generation moves, so a change by the API or the CLI is seen by every worker
//! from its next request), and each active tenant's view: its own plugin registry (the files
//! whose `__ID__` names it) loaded into its own sandboxed process, layered over the admin's
//! modules.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::config::Config;
use crate::exec::wire::Start;
use crate::plugins::owner::Scope;
use crate::plugins::{Registry, Snapshot};
use crate::router::RouteTable;
use crate::sandboxed::{Deaths, Starter, TakePooled, TenantExec, TenantProcess};
use crate::store;
use crate::zygote::Zygote;

/// Size of a tenant's scratch tmpfs.
const SCRATCH_BYTES: u64 = 64 << 20;
/// Ready pooled processes kept per worker.
const POOL_SIZE: usize = 2;
/// Host uids of pooled processes start here (above every per-tenant uid).
const POOL_UID_BASE: u32 = crate::sandbox::TENANT_UID_BASE + 1_000_001;

/// Python threads in a tenant process.
const TENANT_THREADS: usize = 1;

/// Who a request's uuid names.
pub enum Caller {
    Admin,
    Tenant(Uuid, Arc<View>),
}

/// Why a uuid could not be resolved.
pub enum Refused {
    /// Not the admin and not an enabled tenant (one answer for all of these, SPEC §7).
    Unknown,
    /// The registry cannot be read: fail closed.
    Unavailable(String),
    /// Tenant code cannot run on this machine (SPEC §11.9).
    NoSandbox(String),
}

/// One tenant's modules as this worker serves them.
pub struct View {
    pub registry: Arc<Registry>,
    pub exec: Arc<TenantExec>,
    /// Milliseconds since the worker started, at the last request.
    last_used: AtomicU64,
    /// Calls running in the tenant's process now (`DPMS_TENANT_CONCURRENCY`).
    running: Arc<AtomicUsize>,
    limit: usize,
    /// The layered table for the last pair of snapshots it was built from.
    layered: Mutex<Option<Layered>>,
}

struct Layered {
    admin: std::sync::Weak<Snapshot>,
    tenant: std::sync::Weak<Snapshot>,
    table: Arc<RouteTable>,
}

/// One call counted against its tenant's concurrency; released when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl View {
    /// A slot for one more call in the tenant's process, or `None` at its limit.
    pub fn slot(&self) -> Option<Slot> {
        let before = self.running.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(&self.running));
        (before < self.limit).then_some(slot)
    }

    /// The tenant's modules over the admin's (a tenant's name shadows the admin's), built
    /// once per pair of snapshots.
    pub fn table(&self, admin: &Arc<Snapshot>, tenant: &Arc<Snapshot>) -> Arc<RouteTable> {
        let mut slot = match self.layered.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(l) = slot.as_ref() {
            if std::ptr::eq(l.admin.as_ptr(), Arc::as_ptr(admin))
                && std::ptr::eq(l.tenant.as_ptr(), Arc::as_ptr(tenant))
            {
                return Arc::clone(&l.table);
            }
        }
        let table = Arc::new(RouteTable::layered(&tenant.table, &admin.table));
        *slot = Some(Layered {
            admin: Arc::downgrade(admin),
            tenant: Arc::downgrade(tenant),
            table: Arc::clone(&table),
        });
        table
    }
}

/// This worker's tenancy state.
pub struct Tenants {
    config: Arc<Config>,
    store: Result<Arc<store::Registry>, String>,
    known: Mutex<Option<Arc<store::Snapshot>>>,
    views: Mutex<HashMap<Uuid, Arc<View>>>,
    /// Sandbox layers this kernel lacks; tenant code does not run when any is.
    missing: Vec<&'static str>,
    started: Instant,
    /// This worker's zygote, started with the first tenant process.
    zygote: Mutex<Option<Arc<Zygote>>>,
    /// The secrets each tenant's current process started with.
    secrets: Mutex<HashMap<Uuid, Vec<(String, String)>>>,
    /// Imports that killed tenant processes (the quarantine's count).
    deaths: Arc<Deaths>,
    /// Processes inside the sandbox with Python started but no tenant yet (the warm pool),
    /// so a tenant's first call only specialises one.
    pool: Mutex<Vec<Arc<TenantProcess>>>,
    refilling: AtomicBool,
    pool_uids: AtomicU32,
}

impl Tenants {
    /// Probes the kernel's sandbox layers once; without a registry, tenant calls answer 503.
    /// `store` is the registry the worker opened (`None`: it could not, and the reason is
    /// already logged).
    pub fn new(config: Arc<Config>, store: Option<Arc<store::Registry>>) -> Arc<Tenants> {
        let store = store.ok_or_else(|| "the tenant registry could not be opened".to_string());
        let missing = crate::sandbox::probe().missing();
        if !missing.is_empty()
            && crate::state_dir::first_to_log(config.state_dir.as_deref(), "sandbox layers")
        {
            if config.sandbox_relaxed {
                tracing::error!(missing = ?missing, "sandbox layers missing: DPMS_SANDBOX=relaxed, so tenant code runs without them");
            } else {
                tracing::error!(missing = ?missing, "sandbox layers missing: tenant code will not run; the admin's modules keep serving");
            }
        }
        let tenants = Arc::new(Tenants {
            config,
            store,
            known: Mutex::new(None),
            views: Mutex::new(HashMap::new()),
            missing,
            started: Instant::now(),
            zygote: Mutex::new(None),
            secrets: Mutex::new(HashMap::new()),
            deaths: Arc::new(Deaths::default()),
            pool: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            pool_uids: AtomicU32::new(0),
        });
        let weak = Arc::downgrade(&tenants);
        let every = (tenants.config.tenant_idle / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(t) = weak.upgrade() else { break };
                t.reap();
                // A tenant removed or disabled elsewhere loses its process here too, even if
                // this worker gets no request for it.
                let _ = t.known().await;
            }
        });
        tenants
    }

    /// The sandbox layers this machine lacks.
    pub fn missing_layers(&self) -> &[&'static str] {
        &self.missing
    }

    /// `DPMS_SANDBOX`, as `__dir__` shows it.
    pub fn sandbox_mode(&self) -> &'static str {
        if self.config.sandbox_relaxed {
            "relaxed"
        } else {
            "strict"
        }
    }

    /// Whether tenant code runs here: every layer is there, or `DPMS_SANDBOX=relaxed`.
    pub fn tenant_code_runs(&self) -> bool {
        self.missing.is_empty() || self.config.sandbox_relaxed
    }

    /// Milliseconds since this worker started.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the registry can be read now (for `/readyz`).
    pub async fn registry_check(&self) -> Result<(), String> {
        self.known().await.map(|_| ())
    }

    /// The registry as of now: re-read only when another write happened.
    async fn known(&self) -> Result<Arc<store::Snapshot>, String> {
        let store = self.store.as_ref().map_err(Clone::clone)?;
        let generation = store.generation();
        if let Some(k) = self.lock_known().as_ref() {
            if k.generation == generation {
                return Ok(Arc::clone(k));
            }
        }
        // Off the I/O thread: the request path never blocks on SQLite. The secrets of the
        // tenants with a process are read too: a process whose secrets changed is replaced
        // (its environment is fixed when it starts), so the change applies from its next call.
        let reading = Arc::clone(store);
        let active: Vec<Uuid> = self.lock_views().keys().copied().collect();
        let (snap, secrets) = tokio::task::spawn_blocking(move || {
            let snap = reading.snapshot()?;
            let secrets: Vec<(Uuid, Vec<(String, String)>)> = active
                .into_iter()
                .filter_map(|u| reading.secrets(u).ok().map(|s| (u, s)))
                .collect();
            Ok::<_, store::StoreError>((snap, secrets))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let snap = Arc::new(snap);
        *self.lock_known() = Some(Arc::clone(&snap));
        self.forget_unknown(&snap);
        for (uuid, now) in secrets {
            let changed = self
                .lock_secrets()
                .get(&uuid)
                .is_some_and(|started| *started != now);
            if changed {
                self.stop(uuid);
            }
        }
        Ok(snap)
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, Option<Arc<store::Snapshot>>> {
        match self.known.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn lock_secrets(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<(String, String)>>> {
        match self.secrets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn lock_views(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<View>>> {
        match self.views.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Stops the processes of tenants removed or disabled since the last read.
    fn forget_unknown(&self, snap: &store::Snapshot) {
        self.lock_views().retain(|uuid, view| {
            let keep = snap.is_enabled(uuid);
            if !keep {
                view.exec.stop();
            }
            keep
        });
    }

    /// Of the files other owners' `__ID__` name (`(<file>.py, owner)`), those whose owner is
    /// no registered tenant: loaded for no one, shown to the admin as `unowned` (SPEC §7).
    pub async fn unowned(&self, foreign: &[(String, String)]) -> Vec<(String, String)> {
        let known = self.known().await.ok();
        foreign
            .iter()
            .filter(|(_, owner)| {
                let registered = Uuid::parse_str(owner)
                    .ok()
                    .zip(known.as_ref())
                    .is_some_and(|(u, k)| k.tenants.contains_key(&u));
                !registered
            })
            .cloned()
            .collect()
    }

    /// Drops `view` (its process could not start): the tenant's next call builds a new one.
    pub fn forget_view(&self, view: &View) {
        self.lock_views()
            .retain(|_, v| !std::ptr::eq(Arc::as_ptr(v), view as *const View));
    }

    /// Stops `uuid`'s process now (the tenant was removed).
    pub fn stop(&self, uuid: Uuid) {
        if let Some(view) = self.lock_views().remove(&uuid) {
            view.exec.stop();
        }
    }

    /// Stops tenants idle past their time.
    fn reap(&self) {
        let now = self.now();
        self.lock_views().retain(|_, view| {
            let idle = now.saturating_sub(view.last_used.load(Ordering::Relaxed));
            // A tenant with a call running is not idle, however long the call takes.
            let busy = view.running.load(Ordering::Acquire) > 0;
            let keep = busy || Duration::from_millis(idle) < self.config.tenant_idle;
            if !keep {
                view.exec.stop();
            }
            keep
        });
    }

    /// Who `segment` (a uuid in the URL) is.
    pub async fn resolve(self: &Arc<Self>, segment: &str) -> Result<Caller, Refused> {
        let Ok(uuid) = Uuid::parse_str(segment) else {
            return Err(Refused::Unknown);
        };
        if Some(uuid) == self.config.admin_id {
            return Ok(Caller::Admin);
        }
        let known = self.known().await.map_err(Refused::Unavailable)?;
        if !known.is_enabled(&uuid) {
            return Err(Refused::Unknown);
        }
        if !self.missing.is_empty() {
            if !self.config.sandbox_relaxed {
                return Err(Refused::NoSandbox(format!(
                    "Tenant code cannot run here: sandbox layers missing ({}).",
                    self.missing.join(", ")
                )));
            }
            // SPEC §11.9: every tenant call says what it runs without.
            tracing::warn!(tenant = %uuid, layers_missing = ?self.missing, "tenant call runs without these sandbox layers (DPMS_SANDBOX=relaxed)");
        }
        let existing = self.lock_views().get(&uuid).map(Arc::clone);
        let view = match existing {
            Some(v) if !v.exec.lost() => v,
            _ => {
                let v = self.open_view(uuid).await;
                self.lock_views().insert(uuid, Arc::clone(&v));
                v
            }
        };
        view.last_used.store(self.now(), Ordering::Relaxed);
        Ok(Caller::Tenant(uuid, view))
    }

    /// A new view of `uuid`: its registry loads its files into a new process.
    async fn open_view(self: &Arc<Self>, uuid: Uuid) -> Arc<View> {
        let weak = Arc::downgrade(self);
        let take: TakePooled = Arc::new(move || weak.upgrade().and_then(|t| t.take_pooled()));
        let exec = Arc::new(TenantExec::new(
            self.starter(uuid),
            Some(take),
            self.zygote(),
            Arc::clone(&self.deaths),
        ));
        self.refill();
        let mut config = (*self.config).clone();
        // Its freshness is checked with stat on each of its requests: no inotify instance
        // and no watcher thread per tenant.
        config.watch_inotify = false;
        config.state_dir = None;
        let registry = Registry::start(
            Arc::new(config),
            Arc::clone(&exec) as Arc<dyn crate::exec::Loader>,
            Scope::Tenant(uuid),
        )
        .await;
        Arc::new(View {
            registry,
            exec,
            last_used: AtomicU64::new(self.now()),
            running: Arc::new(AtomicUsize::new(0)),
            limit: self.config.tenant_concurrency,
            layered: Mutex::new(None),
        })
    }

    /// The zygote, started on first use (on the I/O thread, which lives as long as the
    /// worker: the zygote dies with the thread that started it). `None` when it cannot start:
    /// tenant processes are then started afresh.
    fn zygote(&self) -> Option<Arc<Zygote>> {
        let mut slot = match self.zygote.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(z) = slot.as_ref().filter(|z| z.is_alive()) {
            return Some(Arc::clone(z));
        }
        match Zygote::start() {
            Ok(z) => {
                let z = Arc::new(z);
                *slot = Some(Arc::clone(&z));
                Some(z)
            }
            Err(e) => {
                tracing::warn!(cause = %e, "tenant zygote unavailable; tenant processes start afresh");
                None
            }
        }
    }

    /// A ready pooled process, and a refill started behind it.
    fn take_pooled(self: &Arc<Self>) -> Option<Arc<TenantProcess>> {
        let taken = loop {
            let p = match self.pool.lock() {
                Ok(mut pool) => pool.pop(),
                Err(_) => None,
            };
            match p {
                Some(p) if p.is_dead() => continue,
                other => break other,
            }
        };
        self.refill();
        taken
    }

    /// Tops the pool up to [`POOL_SIZE`] in the background (one refill at a time).
    fn refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(t) = weak.upgrade() else { break };
                let size = t.pool.lock().map(|p| p.len()).unwrap_or(POOL_SIZE);
                if size >= POOL_SIZE {
                    t.refilling.store(false, Ordering::Release);
                    break;
                }
                let start = match t.pooled_start().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot fill the tenant pool");
                        t.refilling.store(false, Ordering::Release);
                        break;
                    }
                };
                let zygote = t.zygote();
                drop(t);
                let started = TenantProcess::start(start, zygote).await;
                let Some(t) = weak.upgrade() else { break };
                match started {
                    Ok(p) => {
                        if let Ok(mut pool) = t.pool.lock() {
                            pool.push(p);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot fill the tenant pool");
                        t.refilling.store(false, Ordering::Release);
                        break;
                    }
                }
            }
        });
    }

    /// The start message of a pooled process: the sandbox of no tenant yet, with a uid of
    /// its own (one per process: `RLIMIT_NPROC` counts per uid).
    async fn pooled_start(&self) -> Result<Start, String> {
        let mut start = self.base_start().await?;
        let n = self.pool_uids.fetch_add(1, Ordering::Relaxed) % 1000;
        start.host_uid = POOL_UID_BASE + (std::process::id() % 1000) * 1000 + n;
        start.pooled = true;
        Ok(start)
    }

    /// How to start `uuid`'s process: its secrets are read when it starts (so a change
    /// applies from the next process; SPEC §7 asks for the next call).
    fn starter(self: &Arc<Self>, uuid: Uuid) -> Starter {
        let tenants = Arc::downgrade(self);
        Arc::new(move || {
            let tenants = tenants.clone();
            Box::pin(async move {
                let t = tenants.upgrade().ok_or("the worker is stopping")?;
                t.start_message(uuid).await
            }) as Pin<Box<dyn Future<Output = Result<Start, String>> + Send>>
        })
    }

    async fn start_message(&self, uuid: Uuid) -> Result<Start, String> {
        let store = Arc::clone(self.store.as_ref().map_err(Clone::clone)?);
        let secrets = tokio::task::spawn_blocking(move || store.secrets(uuid))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.lock_secrets().insert(uuid, secrets.clone());
        let mut start = self.base_start().await?;
        let hex = uuid.simple().to_string();
        start.tenant = uuid.to_string();
        start.host_uid = tenant_uid(uuid);
        start.comm = format!("dpms-t-{}", &hex[..8]);
        start.secrets = secrets;
        Ok(start)
    }

    /// What every tenant process starts with: the limits, the read-only trees, the settings.
    async fn base_start(&self) -> Result<Start, String> {
        let c = &self.config;
        let mut read_only: Vec<String> = [
            "/usr/lib/python3.11",
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/lib64",
            "/etc/ld.so.cache",
            "/usr/share/zoneinfo",
        ]
        .iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .collect();
        let venv = c.venv.as_ref().map(|v| v.display().to_string());
        if let Some(v) = &venv {
            if std::path::Path::new(v).is_dir() {
                read_only.push(v.clone());
            }
        }
        Ok(Start {
            tenant: String::new(),
            host_uid: POOL_UID_BASE,
            comm: "dpms-t-pool".into(),
            read_only,
            scratch_bytes: SCRATCH_BYTES,
            memory_bytes: Some(c.tenant_memory),
            nofile: 256,
            fsize_bytes: SCRATCH_BYTES,
            nproc: 64,
            secrets: Vec::new(),
            venv,
            py_threads: TENANT_THREADS,
            max_queued: 64,
            max_function_ms: u64::try_from(c.max_function_time.as_millis()).unwrap_or(u64::MAX),
            load_ms: u64::try_from(c.load_time.as_millis()).unwrap_or(u64::MAX),
            skip_layers: if c.sandbox_relaxed {
                self.missing.iter().map(|l| l.to_string()).collect()
            } else {
                Vec::new()
            },
            pooled: false,
        })
    }
}

/// The host uid of a tenant's processes: one per tenant (its own `RLIMIT_NPROC` count),
/// derived from the uuid so every worker and every restart agree without coordination.
fn tenant_uid(uuid: Uuid) -> u32 {
    let b = uuid.as_bytes();
    let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    crate::sandbox::TENANT_UID_BASE + 1 + n % 1_000_000
}

//! Prometheus metrics of the whole server (SPEC §13), whichever worker a scrape reaches.
//!
//! Each worker counts into a region of its own, `metrics-<worker>.bin` in the supervisor's state
//! folder, mapped shared: one writer per region (the worker), any reader (the worker a scrape
//! reaches reads every region and sums). A worker restarted by the supervisor maps its
//! predecessor's region and counts on, so counters only reset with the server. A request costs
//! one hash of its series key, a lookup in a thread-local cache and three relaxed atomic adds
//! (measured in `bench/`); no lock, no system call.
//!
//! A region: a 4 KiB header (magic, slot count, the writer's pid, process-wide counters, the
//! tenant cold-start histogram), then [`SLOTS`] slots of [`SLOT_BYTES`] for the request series
//! `(endpoint, method, status)`: state, key, count, sum of durations, histogram buckets. A slot
//! is claimed under the worker's own mutex and published (state READY, release) after its key
//! is written; readers take only READY slots (acquire).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use memmap2::{Mmap, MmapMut};

const MAGIC: u64 = u64::from_le_bytes(*b"DPMSMET1");
const HEADER: usize = 4096;
/// Request series one worker can hold; the last one takes every series past it.
pub const SLOTS: usize = 2048;
const SLOT_BYTES: usize = 384;
const REGION: usize = HEADER + SLOTS * SLOT_BYTES;
/// Upper bounds (seconds) of the histogram buckets, `+Inf` implied.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// Header offsets.
const H_MAGIC: usize = 0;
const H_SLOTS: usize = 8;
const H_PID: usize = 16;
const H_RELOADS: usize = 24;
const H_TENANT_PROCS: usize = 32;
const H_COLD: usize = 40; // a histogram: count, sum_ns, buckets
                          // Slot offsets.
const S_STATE: usize = 0;
const S_KEY_LEN: usize = 4;
const S_HIST: usize = 8; // count, sum_ns, buckets
const S_KEY: usize = S_HIST + HIST_BYTES;
const HIST_BYTES: usize = (2 + BUCKETS.len()) * 8;
const KEY_MAX: usize = SLOT_BYTES - S_KEY;
const READY: u32 = 2;

/// One region, mapped writable.
struct Region {
    map: MmapMut,
}

impl Region {
    fn atomic64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= REGION);
        // SAFETY: the map is REGION bytes, page-aligned, so `offset` (a multiple of 8 inside
        // it) is an aligned u64 that lives as long as `self`; every process touches these
        // bytes only through atomics.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn atomic32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= REGION);
        // SAFETY: as for `atomic64`, with 4-byte alignment.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU32) }
    }

    fn observe(&self, hist: usize, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.atomic64(hist).fetch_add(1, Ordering::Relaxed);
        self.atomic64(hist + 8).fetch_add(nanos, Ordering::Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.atomic64(hist + 16 + i * 8)
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn slot(i: usize) -> usize {
        HEADER + i * SLOT_BYTES
    }
}

/// This worker's metrics.
pub struct Metrics {
    region: Region,
    /// Where the other workers' regions are (`None`: a server of one process).
    dir: Option<PathBuf>,
    /// Series key → slot, and the next free slot: taken only for a series seen first.
    claimed: Mutex<(HashMap<Vec<u8>, usize>, usize)>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

thread_local! {
    /// Hash of a series key → its slot (checked against the slot's key on use).
    static CACHE: RefCell<HashMap<u64, usize, foldhash::fast::FixedState>> =
        RefCell::new(HashMap::with_hasher(foldhash::fast::FixedState::default()));
}

/// Opens this worker's region in `dir` (the state folder), or an anonymous one without it or
/// when the file cannot be used. Called once per worker; later calls keep the first.
pub fn init(dir: Option<&Path>, worker: usize) -> &'static Metrics {
    METRICS.get_or_init(|| {
        let file_map = dir.and_then(|d| match open_region(&d.join(file_name(worker))) {
            Ok(map) => Some(map),
            Err(e) => {
                tracing::warn!(cause = %e, "metrics: this worker's region cannot be shared; /metrics shows only what it serves");
                None
            }
        });
        let shared = file_map.is_some();
        let map = file_map.or_else(|| MmapMut::map_anon(REGION).ok());
        let region = match map {
            Some(map) => Region { map },
            // No memory for 800 KiB: nothing works anyway; an empty map keeps calls safe.
            None => Region {
                map: MmapMut::map_anon(REGION).unwrap_or_else(|_| std::process::abort()),
            },
        };
        init_header(&region);
        let claimed = existing_slots(&region);
        Metrics {
            region,
            dir: shared.then(|| dir.map(Path::to_path_buf)).flatten(),
            claimed: Mutex::new(claimed),
        }
    })
}

fn file_name(worker: usize) -> String {
    format!("metrics-{worker}.bin")
}

fn open_region(path: &Path) -> std::io::Result<MmapMut> {
    let file = crate::store::open_shared_file(path)?;
    if file.metadata()?.len() != REGION as u64 {
        // New, or not ours: made anew (a predecessor's region has exactly this size).
        file.set_len(0)?;
        file.set_len(REGION as u64)?;
    }
    // SAFETY: a file of our private state folder, REGION bytes long and never shortened while
    // mapped (only this worker's predecessor and successors open it for writing).
    unsafe { MmapMut::map_mut(&file) }
}

fn init_header(region: &Region) {
    if region.atomic64(H_MAGIC).load(Ordering::Acquire) != MAGIC {
        region
            .atomic64(H_SLOTS)
            .store(SLOTS as u64, Ordering::Relaxed);
        region.atomic64(H_MAGIC).store(MAGIC, Ordering::Release);
    }
    // A predecessor's tenant processes died with it.
    region.atomic64(H_TENANT_PROCS).store(0, Ordering::Relaxed);
    region
        .atomic32(H_PID)
        .store(std::process::id(), Ordering::Release);
}

/// The slots a predecessor published, so this worker counts on into them.
fn existing_slots(region: &Region) -> (HashMap<Vec<u8>, usize>, usize) {
    let mut keys = HashMap::new();
    let mut next = 0;
    for i in 0..SLOTS {
        let at = Region::slot(i);
        if region.atomic32(at + S_STATE).load(Ordering::Acquire) != READY {
            break;
        }
        keys.insert(slot_key(&region.map, at).to_vec(), i);
        next = i + 1;
    }
    (keys, next)
}

fn slot_key(bytes: &[u8], at: usize) -> &[u8] {
    let len = u32::from_le_bytes(
        bytes[at + S_KEY_LEN..at + S_KEY_LEN + 4]
            .try_into()
            .unwrap_or([0; 4]),
    ) as usize;
    &bytes[at + S_KEY..at + S_KEY + len.min(KEY_MAX)]
}

/// The series key: `endpoint \0 method \0 status`.
fn series_key(endpoint: &str, method: &str, status: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(endpoint.len() + method.len() + 5);
    key.extend_from_slice(endpoint.as_bytes());
    key.push(0);
    key.extend_from_slice(method.as_bytes());
    key.push(0);
    key.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    key
}

/// The method as a label: the standard ones by name, anything else `other` (a client cannot
/// grow the series by inventing methods).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// The worker's metrics, if [`init`] ran.
    pub fn get() -> Option<&'static Metrics> {
        METRICS.get()
    }

    /// One answered request.
    pub fn request(&self, endpoint: &str, method: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        let hash = foldhash::fast::FixedState::default().hash_one((endpoint, method, status));
        let cached = CACHE.with(|c| c.borrow().get(&hash).copied());
        let slot = match cached {
            Some(i) if self.key_matches(i, endpoint, method, status) => i,
            _ => {
                let i = self.claim(&series_key(endpoint, method, status));
                CACHE.with(|c| c.borrow_mut().insert(hash, i));
                i
            }
        };
        self.region.observe(Region::slot(slot) + S_HIST, elapsed);
    }

    fn key_matches(&self, i: usize, endpoint: &str, method: &str, status: u16) -> bool {
        let key = slot_key(&self.region.map, Region::slot(i));
        let mut digits = itoa::Buffer::new();
        let status = digits.format(status).as_bytes();
        let (e, m) = (endpoint.as_bytes(), method.as_bytes());
        key.len() == e.len() + m.len() + status.len() + 2
            && key.starts_with(e)
            && key[e.len()] == 0
            && &key[e.len() + 1..e.len() + 1 + m.len()] == m
            && key[e.len() + 1 + m.len()] == 0
            && key.ends_with(status)
    }

    /// The slot of a series, claimed and published if it is new; the last slot takes every
    /// series once the others are taken (and any key too long for a slot).
    fn claim(&self, key: &[u8]) -> usize {
        let overflow = SLOTS - 1;
        let Ok(mut claimed) = self.claimed.lock() else {
            return overflow;
        };
        if let Some(&i) = claimed.0.get(key) {
            return i;
        }
        let (key, i) = if key.len() > KEY_MAX || claimed.1 >= overflow {
            (&b"other\x00other\x00000"[..], overflow)
        } else {
            (key, claimed.1)
        };
        let at = Region::slot(i);
        if self.region.atomic32(at + S_STATE).load(Ordering::Acquire) != READY {
            // SAFETY: slot `i` is unpublished and this worker (holding `claimed`) is its only
            // writer; readers do not look at its key until the state below says READY.
            unsafe {
                let base = self.region.map.as_ptr() as *mut u8;
                std::ptr::copy_nonoverlapping(key.as_ptr(), base.add(at + S_KEY), key.len());
            }
            self.region
                .atomic32(at + S_KEY_LEN)
                .store(key.len() as u32, Ordering::Relaxed);
            self.region
                .atomic32(at + S_STATE)
                .store(READY, Ordering::Release);
        }
        if i != overflow {
            claimed.1 = i + 1;
        }
        claimed.0.insert(key.to_vec(), i);
        i
    }

    /// Modules imported by a reload.
    pub fn reloaded(&self, modules: usize) {
        self.region
            .atomic64(H_RELOADS)
            .fetch_add(modules as u64, Ordering::Relaxed);
    }

    /// A tenant process began serving a tenant (`took`: from the first call's wait to ready).
    pub fn tenant_started(&self, took: Duration) {
        self.region
            .atomic64(H_TENANT_PROCS)
            .fetch_add(1, Ordering::Relaxed);
        self.region.observe(H_COLD, took);
    }

    /// A tenant process counted by [`Metrics::tenant_started`] is gone.
    pub fn tenant_stopped(&self) {
        let procs = self.region.atomic64(H_TENANT_PROCS);
        let _ = procs.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The Prometheus text of the whole server: every worker's region summed.
    /// `import_errors` is the scraping worker's own count (every worker loads the same files).
    pub fn render(&self, import_errors: usize) -> String {
        let mut total = Totals::default();
        match &self.dir {
            None => total.add(&self.region.map),
            Some(dir) => {
                for path in region_files(dir) {
                    let Ok(file) = std::fs::File::open(&path) else {
                        continue;
                    };
                    // SAFETY: a region of our private state folder, never shortened while in
                    // use; read through the same layout its writer uses.
                    let Ok(map) = (unsafe { Mmap::map(&file) }) else {
                        continue;
                    };
                    if map.len() == REGION {
                        total.add(&map);
                    }
                }
            }
        }
        total.text(import_errors)
    }
}

fn region_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("metrics-") && n.ends_with(".bin"))
        })
        .collect()
}

#[derive(Default, Clone)]
struct Hist {
    count: u64,
    sum_ns: u64,
    buckets: [u64; BUCKETS.len()],
}

impl Hist {
    fn read(bytes: &[u8], at: usize) -> Hist {
        let mut h = Hist {
            count: load(bytes, at),
            sum_ns: load(bytes, at + 8),
            ..Hist::default()
        };
        for (i, b) in h.buckets.iter_mut().enumerate() {
            *b = load(bytes, at + 16 + i * 8);
        }
        h
    }

    fn add(&mut self, other: &Hist) {
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }
}

/// An aligned u64 of a mapped region, read atomically.
fn load(bytes: &[u8], at: usize) -> u64 {
    debug_assert!(at.is_multiple_of(8) && at + 8 <= bytes.len());
    // SAFETY: `at` is a multiple of 8 inside a page-aligned map of REGION bytes (checked by the
    // callers), written by its worker only through atomics.
    unsafe { (*(bytes.as_ptr().add(at) as *const AtomicU64)).load(Ordering::Relaxed) }
}

fn load32(bytes: &[u8], at: usize, order: Ordering) -> u32 {
    // SAFETY: as for `load`, 4-byte aligned.
    unsafe { (*(bytes.as_ptr().add(at) as *const AtomicU32)).load(order) }
}

#[derive(Default)]
struct Totals {
    /// (endpoint, method, status) → count, and endpoint → duration histogram.
    requests: BTreeMap<(String, String, String), u64>,
    durations: BTreeMap<String, Hist>,
    reloads: u64,
    workers: u64,
    tenant_processes: u64,
    cold: Hist,
}

impl Totals {
    fn add(&mut self, bytes: &[u8]) {
        if load(bytes, H_MAGIC) != MAGIC {
            return;
        }
        let pid = load32(bytes, H_PID, Ordering::Acquire);
        let alive = pid != 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        if alive {
            self.workers += 1;
            self.tenant_processes += load(bytes, H_TENANT_PROCS);
        }
        self.reloads += load(bytes, H_RELOADS);
        self.cold.add(&Hist::read(bytes, H_COLD));
        for i in 0..SLOTS {
            let at = Region::slot(i);
            if load32(bytes, at + S_STATE, Ordering::Acquire) != READY {
                break;
            }
            let key = String::from_utf8_lossy(slot_key(bytes, at)).into_owned();
            let mut parts = key.splitn(3, '\0');
            let (Some(endpoint), Some(method), Some(status)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let hist = Hist::read(bytes, at + S_HIST);
            *self
                .requests
                .entry((endpoint.to_string(), method.to_string(), status.to_string()))
                .or_default() += hist.count;
            self.durations
                .entry(endpoint.to_string())
                .or_default()
                .add(&hist);
        }
    }

    fn text(&self, import_errors: usize) -> String {
        let mut out = String::with_capacity(4096 + self.requests.len() * 200);
        let _ = writeln!(out, "# HELP dpms_requests_total Requests answered, by endpoint (`<module>.<function>`, or what dpms answered itself), method and status.");
        let _ = writeln!(out, "# TYPE dpms_requests_total counter");
        for ((endpoint, method, status), n) in &self.requests {
            let _ = writeln!(
                out,
                "dpms_requests_total{{endpoint=\"{}\",method=\"{}\",status=\"{}\"}} {n}",
                escape(endpoint),
                escape(method),
                escape(status)
            );
        }
        let _ = writeln!(out, "# HELP dpms_request_duration_seconds Time from the request's arrival to its answer, by endpoint.");
        let _ = writeln!(out, "# TYPE dpms_request_duration_seconds histogram");
        for (endpoint, h) in &self.durations {
            histogram(
                &mut out,
                "dpms_request_duration_seconds",
                &format!("endpoint=\"{}\"", escape(endpoint)),
                h,
            );
        }
        let _ = writeln!(out, "# HELP dpms_plugin_reloads_total Plugin modules imported by reloads, summed over the workers (each imports its own copy).");
        let _ = writeln!(out, "# TYPE dpms_plugin_reloads_total counter");
        let _ = writeln!(out, "dpms_plugin_reloads_total {}", self.reloads);
        let _ = writeln!(
            out,
            "# HELP dpms_plugin_import_errors Plugin files that do not import now."
        );
        let _ = writeln!(out, "# TYPE dpms_plugin_import_errors gauge");
        let _ = writeln!(out, "dpms_plugin_import_errors {import_errors}");
        let _ = writeln!(out, "# HELP dpms_workers Worker processes running.");
        let _ = writeln!(out, "# TYPE dpms_workers gauge");
        let _ = writeln!(out, "dpms_workers {}", self.workers);
        let _ = writeln!(
            out,
            "# HELP dpms_tenant_processes Tenant processes serving a tenant now."
        );
        let _ = writeln!(out, "# TYPE dpms_tenant_processes gauge");
        let _ = writeln!(out, "dpms_tenant_processes {}", self.tenant_processes);
        let _ = writeln!(
            out,
            "# HELP dpms_tenant_cold_starts_total Tenant processes started for a tenant's call."
        );
        let _ = writeln!(out, "# TYPE dpms_tenant_cold_starts_total counter");
        let _ = writeln!(out, "dpms_tenant_cold_starts_total {}", self.cold.count);
        let _ = writeln!(out, "# HELP dpms_tenant_cold_start_seconds Time to make a tenant's process ready for its first call.");
        let _ = writeln!(out, "# TYPE dpms_tenant_cold_start_seconds histogram");
        histogram(&mut out, "dpms_tenant_cold_start_seconds", "", &self.cold);
        out
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Hist) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, n) in BUCKETS.iter().zip(h.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

/// A label value as the text format wants it (`\`, `"` and newlines escaped).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn region() -> Metrics {
        let region = Region {
            map: MmapMut::map_anon(REGION).unwrap(),
        };
        init_header(&region);
        Metrics {
            claimed: Mutex::new(existing_slots(&region)),
            region,
            dir: None,
        }
    }

    #[test]
    fn series_count_and_render() {
        let m = region();
        for _ in 0..3 {
            m.request("m.f", "GET", 200, Duration::from_micros(300));
        }
        m.request("m.f", "GET", 404, Duration::from_millis(20));
        m.request("m.f", "BREW", 501, Duration::from_secs(30));
        m.request("a\"b", "POST", 200, Duration::from_millis(2));
        let text = m.render(1);
        assert!(
            text.contains("dpms_requests_total{endpoint=\"m.f\",method=\"GET\",status=\"200\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("dpms_requests_total{endpoint=\"m.f\",method=\"GET\",status=\"404\"} 1")
        );
        assert!(text
            .contains("dpms_requests_total{endpoint=\"m.f\",method=\"other\",status=\"501\"} 1"));
        assert!(text.contains("endpoint=\"a\\\"b\""));
        assert!(
            text.contains("dpms_request_duration_seconds_bucket{endpoint=\"m.f\",le=\"0.0005\"} 3")
        );
        assert!(
            text.contains("dpms_request_duration_seconds_bucket{endpoint=\"m.f\",le=\"0.025\"} 4")
        );
        assert!(
            text.contains("dpms_request_duration_seconds_bucket{endpoint=\"m.f\",le=\"+Inf\"} 5")
        );
        assert!(text.contains("dpms_request_duration_seconds_count{endpoint=\"m.f\"} 5"));
        assert!(text.contains("dpms_plugin_import_errors 1"));
        assert!(text.contains("dpms_workers 1"));
    }

    #[test]
    fn a_successor_counts_on() {
        let m = region();
        m.request("m.f", "GET", 200, Duration::from_micros(1));
        let (keys, next) = existing_slots(&m.region);
        assert_eq!(next, 1);
        assert!(keys.contains_key(&series_key("m.f", "GET", 200)));
    }

    #[test]
    fn overflow_takes_the_rest() {
        let m = region();
        for i in 0..SLOTS + 10 {
            m.request(&format!("e{i}"), "GET", 200, Duration::from_micros(1));
        }
        let text = m.render(0);
        assert!(
            text.contains(
                "dpms_requests_total{endpoint=\"other\",method=\"other\",status=\"000\"} 11"
            ),
            "{}",
            &text[..300]
        );
        let long = "x".repeat(KEY_MAX);
        m.request(&long, "GET", 200, Duration::from_micros(1));
        assert!(m.render(0).contains("status=\"000\"} 12"));
    }

    #[test]
    fn tenants_and_reloads() {
        let m = region();
        m.tenant_started(Duration::from_millis(6));
        m.tenant_started(Duration::from_millis(3));
        m.tenant_stopped();
        m.tenant_stopped();
        m.tenant_stopped();
        m.reloaded(4);
        let text = m.render(0);
        assert!(text.contains("dpms_tenant_processes 0"));
        assert!(text.contains("dpms_tenant_cold_starts_total 2"));
        assert!(text.contains("dpms_tenant_cold_start_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("dpms_plugin_reloads_total 4"));
    }
}

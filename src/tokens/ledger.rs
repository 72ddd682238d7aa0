//! The replay ledger (SPEC §12): every accepted token id until its `exp` + skew, exact across
//! the worker processes of one machine, bounded, and refusing (never forgetting) when full.
//!
//! [`Replay`] is the seam: what the request path asks of a ledger. [`FileLedger`] is the one
//! machine's: a file in `DPMS_DATA_DIR` that every worker maps shared, so an admission is a
//! few memory operations with no system call and no process in between. Several machines on
//! one database would implement [`Replay`] over that database; nothing else changes.
//!
//! The file: a 64-byte header (magic, version, bucket count, a random seed), then buckets of
//! [`SLOTS`] slots. A token's key is 12 bytes of SHA-256(seed ‖ sub ‖ jti) (the seed keeps
//! callers from choosing which bucket their ids fall in); its first 8 bytes pick the bucket.
//! A bucket is guarded by a word holding the pid of the process inside it: a process killed
//! inside (a worker `kill -9`ed) is detected and its lock taken over, so no crash wedges a
//! bucket. A slot whose `exp` + skew has passed is free again: the sweep happens on insert.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::jwt::SKEW;

/// Slots per bucket.
pub const SLOTS: usize = 15;
/// `DPMS_TOKEN_LEDGER`'s default: how many live tokens the ledger holds.
pub const DEFAULT_CAPACITY: usize = 1 << 20;
/// The largest `DPMS_TOKEN_LEDGER` taken (a 6.4 GB file).
pub const MAX_CAPACITY: usize = 1 << 28;
/// The ledger's file name in `DPMS_DATA_DIR`.
pub const FILE_NAME: &str = "ledger.bin";

const MAGIC: &[u8; 8] = b"DPMSRPL1";
const HEADER: usize = 64;
const SLOT_BYTES: usize = 16; // key: 12, exp: 4 (unix seconds, u32)
/// The lock word and padding before a bucket's slots.
const LOCKS: usize = 16;
/// 256: four cache lines, aligned (the map is page aligned and HEADER is 64), so an admission
/// touches eight lines at most.
const BUCKET_BYTES: usize = LOCKS + SLOTS * SLOT_BYTES;
const VERSION: u32 = 2;

/// What a slot keeps of a token: 96 bits of its hash (a collision among a million live
/// tokens: about 2^-57).
type Key = [u8; 12];
/// How long an admission waits for a bucket another live process holds.
const LOCK_PATIENCE: Duration = Duration::from_millis(200);

/// What the ledger says to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// First use: recorded.
    Fresh,
    /// Seen before (and still within its lifetime): refuse.
    Replayed,
    /// No room for it: refuse, and ask again in this many seconds.
    Full { retry_after: u64 },
}

/// The request path's view of a replay ledger.
pub trait Replay: Send + Sync {
    /// Records `(sub, jti)` as used until `exp` + skew, unless it already is or there is no
    /// room; `now` is the clock (unix seconds) the caller read the token against.
    fn admit(&self, sub: Uuid, jti: &str, exp: i64, now: i64) -> Admit;
}

/// Why the ledger file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("replay ledger {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no randomness for the replay ledger's seed: {0}")]
    Random(String),
}

/// The ledger of one machine: a file mapped shared by every worker.
pub struct FileLedger {
    /// Kept mapped for as long as `base` is used.
    _map: MmapMut,
    /// The map's first byte, taken from the map while it was ours alone.
    base: *mut u8,
    buckets: usize,
    seed: [u8; 16],
    pid: u32,
}

impl FileLedger {
    /// Opens (or makes) `dir/ledger.bin` holding `capacity` tokens (rounded up to whole
    /// buckets). An existing valid ledger is used as it is, whatever capacity it was made
    /// for; an unreadable one is made anew. Two processes opening at once are serialised by an
    /// exclusive `flock`, so one makes it and the other maps what it made.
    pub fn open(dir: &Path, capacity: usize) -> Result<FileLedger, LedgerError> {
        let path = dir.join(FILE_NAME);
        let io_err = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let wanted = capacity.clamp(SLOTS, MAX_CAPACITY).div_ceil(SLOTS);
        let file = crate::store::open_shared_file(&path).map_err(io_err)?;
        let _lock = Flock::exclusive(&file).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        // A ledger in use is never resized: another server's workers (a hand-off in progress)
        // may map it, and would fault past a shorter end. One made for another capacity is kept
        // as it is until the file is removed; only an empty or unreadable one is made anew.
        let existing = existing_buckets(&file, size);
        let buckets = existing.unwrap_or(wanted);
        if existing.is_some_and(|b| b != wanted) {
            tracing::warn!(path = %path.display(), holds = buckets * SLOTS, wanted = wanted * SLOTS,
                "replay ledger made for another DPMS_TOKEN_LEDGER: kept; remove it (with the server stopped) to resize");
        }
        let fresh = existing.is_none();
        if fresh {
            if size != 0 {
                tracing::warn!(path = %path.display(), "replay ledger unreadable: made anew");
            }
            file.set_len(0).map_err(io_err)?;
            file.set_len((HEADER + buckets * BUCKET_BYTES) as u64)
                .map_err(io_err)?;
        }
        // SAFETY: the file is ours (0600 in the private data folder) and only ever mapped by
        // dpms processes, which touch it through the atomics and the bucket locks below; it
        // is never truncated once it has a valid header (only above, under the exclusive
        // flock, when it is empty or unreadable, i.e. no dpms process uses it).
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(io_err)?;
        if fresh {
            let mut seed = [0u8; 16];
            getrandom::fill(&mut seed).map_err(|e| LedgerError::Random(e.to_string()))?;
            map[8..12].copy_from_slice(&VERSION.to_le_bytes());
            map[12..20].copy_from_slice(&(buckets as u64).to_le_bytes());
            map[20..36].copy_from_slice(&seed);
            // The magic last: a crash before this leaves a file that is made anew.
            map[..8].copy_from_slice(MAGIC);
            map.flush().map_err(io_err)?;
        }
        let mut seed = [0u8; 16];
        seed.copy_from_slice(&map[20..36]);
        let base = map.as_mut_ptr();
        Ok(FileLedger {
            _map: map,
            base,
            buckets,
            seed,
            pid: std::process::id(),
        })
    }

    /// How many tokens it holds at most.
    pub fn capacity(&self) -> usize {
        self.buckets * SLOTS
    }

    /// A token's key and its two buckets (two choices: the emptier one takes it, so a bucket
    /// overflows only when both are full, far less often than one alone).
    fn hashed(&self, sub: Uuid, jti: &str) -> (Key, usize, usize) {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(sub.as_bytes());
        h.update(jti.as_bytes());
        let digest = h.finalize();
        let mut key: Key = [0; 12];
        key.copy_from_slice(&digest[..12]);
        // All zeros marks a slot never used.
        if key == [0; 12] {
            key[0] = 1;
        }
        let (mut one, mut two) = ([0u8; 8], [0u8; 8]);
        one.copy_from_slice(&digest[12..20]);
        two.copy_from_slice(&digest[20..28]);
        let n = self.buckets as u64;
        (
            key,
            (u64::from_le_bytes(one) % n) as usize,
            (u64::from_le_bytes(two) % n) as usize,
        )
    }

    fn bucket_at(&self, index: usize) -> *mut u8 {
        debug_assert!(index < self.buckets);
        // SAFETY: index < buckets, and the map is HEADER + buckets * BUCKET_BYTES long.
        unsafe { self.base.add(HEADER + index * BUCKET_BYTES) }
    }

    /// The lock word of bucket `index`.
    fn lock_of(&self, index: usize) -> &AtomicU32 {
        // SAFETY: the bucket starts 8-byte aligned (the map is page aligned, HEADER and
        // BUCKET_BYTES are multiples of 8) with its lock word, shared only as an atomic.
        unsafe { &*self.bucket_at(index).cast::<AtomicU32>() }
    }
}

/// What one bucket holds for a key at `now`.
struct Scan {
    seen: bool,
    free: Option<usize>,
    free_count: usize,
    /// When its soonest live slot frees (exp + skew).
    soonest: i64,
}

/// # Safety
/// `bucket` is a bucket of the map whose lock this process holds.
unsafe fn scan(bucket: *mut u8, key: &Key, now: i64) -> Scan {
    let mut out = Scan {
        seen: false,
        free: None,
        free_count: 0,
        soonest: i64::MAX,
    };
    // SAFETY: the slots follow the lock word inside the bucket (the caller's promise).
    let slots = unsafe { bucket.add(LOCKS) };
    for i in 0..SLOTS {
        // SAFETY: slot i is inside the locked bucket.
        let (k, e) = unsafe { read_slot(slots, i) };
        if now <= e.saturating_add(SKEW) {
            out.seen |= k == *key;
            out.soonest = out.soonest.min(e.saturating_add(SKEW));
        } else {
            out.free_count += 1;
            out.free.get_or_insert(i);
        }
    }
    out
}

// SAFETY: `base` points into the map the ledger owns; every access through it goes through a
// bucket's atomic lock word (or is that word itself), which is what sharing it between
// processes needs, and between threads it needs nothing more.
unsafe impl Send for FileLedger {}
// SAFETY: as for `Send`.
unsafe impl Sync for FileLedger {}

impl Replay for FileLedger {
    fn admit(&self, sub: Uuid, jti: &str, exp: i64, now: i64) -> Admit {
        let (key, a, b) = self.hashed(sub, jti);
        // Both locks, always the lower index first: no two processes wait on each other.
        let (low, high) = (a.min(b), a.max(b));
        let Some(_low) = BucketLock::take(self.lock_of(low), self.pid) else {
            return Admit::Full { retry_after: 1 };
        };
        let _high = if high != low {
            match BucketLock::take(self.lock_of(high), self.pid) {
                Some(held) => Some(held),
                None => return Admit::Full { retry_after: 1 },
            }
        } else {
            None
        };
        // SAFETY: both buckets are locked by this process until the guards drop.
        let (in_a, in_b) = unsafe {
            (
                scan(self.bucket_at(a), &key, now),
                scan(self.bucket_at(b), &key, now),
            )
        };
        if in_a.seen || in_b.seen {
            return Admit::Replayed;
        }
        let target = if in_b.free_count > in_a.free_count {
            (b, in_b.free)
        } else {
            (a, in_a.free)
        };
        match target {
            (bucket, Some(slot)) => {
                // SAFETY: the slot is inside a bucket this process holds locked.
                unsafe { write_slot(self.bucket_at(bucket).add(LOCKS), slot, &key, exp) };
                Admit::Fresh
            }
            (_, None) => Admit::Full {
                retry_after: u64::try_from(
                    in_a.soonest
                        .min(in_b.soonest)
                        .saturating_sub(now)
                        .saturating_add(1),
                )
                .unwrap_or(1)
                .max(1),
            },
        }
    }
}

/// # Safety
/// `slots` points at a bucket's slots, `i < SLOTS`, and the bucket's lock is held.
unsafe fn read_slot(slots: *mut u8, i: usize) -> (Key, i64) {
    // SAFETY: the caller's promise: the slot is inside the locked bucket, 4-byte aligned.
    unsafe {
        let at = slots.add(i * SLOT_BYTES);
        let key = std::ptr::read_volatile(at.cast::<Key>());
        let exp = std::ptr::read_volatile(at.add(12).cast::<u32>());
        (key, i64::from(exp))
    }
}

/// # Safety
/// As [`read_slot`]. `exp` is written before the key: a writer killed between the two leaves
/// an old key with a later expiry, never a new key with an old one. An `exp` is kept as u32
/// unix seconds (good until 2106), clamped.
unsafe fn write_slot(slots: *mut u8, i: usize, key: &Key, exp: i64) {
    let exp = u32::try_from(exp.max(0)).unwrap_or(u32::MAX);
    // SAFETY: as in `read_slot`.
    unsafe {
        let at = slots.add(i * SLOT_BYTES);
        std::ptr::write_volatile(at.add(12).cast::<u32>(), exp);
        std::ptr::write_volatile(at.cast::<Key>(), *key);
    }
}

/// A bucket's lock, held by this process until dropped.
struct BucketLock<'a>(&'a AtomicU32);

impl<'a> BucketLock<'a> {
    /// Takes the lock, stealing it from a holder that no longer exists; `None` when a live
    /// holder kept it past [`LOCK_PATIENCE`] (a stopped process, or a pid reused).
    fn take(lock: &'a AtomicU32, pid: u32) -> Option<BucketLock<'a>> {
        let mut started: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            match lock.compare_exchange_weak(0, pid, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(BucketLock(lock)),
                Err(holder) => {
                    spins = spins.wrapping_add(1);
                    if !spins.is_multiple_of(64) {
                        std::hint::spin_loop();
                        continue;
                    }
                    if holder != 0
                        && !alive(holder)
                        && lock
                            .compare_exchange(holder, pid, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(
                            holder,
                            "replay ledger: took over the lock of a dead process"
                        );
                        return Some(BucketLock(lock));
                    }
                    let since = *started.get_or_insert_with(Instant::now);
                    if since.elapsed() > LOCK_PATIENCE {
                        tracing::warn!(
                            holder,
                            "replay ledger: a bucket stayed locked; token refused"
                        );
                        return None;
                    }
                    std::thread::yield_now();
                }
            }
        }
    }
}

impl Drop for BucketLock<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Whether process `pid` exists (signal 0 only checks).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The bucket count of a valid ledger file of `size` bytes, or `None`.
fn existing_buckets(file: &File, size: u64) -> Option<usize> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 20];
    file.read_exact_at(&mut head, 0).ok()?;
    if &head[..8] != MAGIC || head[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&head[12..20]);
    let buckets = usize::try_from(u64::from_le_bytes(count)).ok()?;
    let fits = (1..=MAX_CAPACITY / SLOTS).contains(&buckets)
        && u64::try_from(HEADER + buckets * BUCKET_BYTES).ok() == Some(size);
    fits.then_some(buckets)
}

/// An exclusive `flock` on a file, released when dropped.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> io::Result<Flock<'a>> {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Flock(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn ledger(capacity: usize) -> (tempfile::TempDir, FileLedger) {
        let dir = tempfile::tempdir().unwrap();
        let l = FileLedger::open(dir.path(), capacity).unwrap();
        (dir, l)
    }

    #[test]
    fn once_only_per_subject() {
        let (_d, l) = ledger(1024);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(l.admit(a, "j1", NOW + 60, NOW), Admit::Fresh);
        assert_eq!(l.admit(a, "j1", NOW + 60, NOW), Admit::Replayed);
        assert_eq!(l.admit(a, "j1", NOW + 60, NOW + 64), Admit::Replayed);
        // The same id from another subject is another token.
        assert_eq!(l.admit(b, "j1", NOW + 60, NOW), Admit::Fresh);
        assert_eq!(l.admit(a, "j2", NOW + 60, NOW), Admit::Fresh);
    }

    #[test]
    fn full_refuses_then_recovers_after_expiry() {
        // One bucket: the 17th live token has no room.
        let (_d, l) = ledger(SLOTS);
        assert_eq!(l.capacity(), SLOTS);
        let sub = Uuid::new_v4();
        for i in 0..SLOTS {
            assert_eq!(
                l.admit(sub, &format!("j{i}"), NOW + 10 + i as i64, NOW),
                Admit::Fresh
            );
        }
        // The soonest slot frees at exp + skew = NOW + 15; asked at NOW: 16 s.
        assert_eq!(
            l.admit(sub, "extra", NOW + 60, NOW),
            Admit::Full { retry_after: 16 }
        );
        // Still remembered while full.
        assert_eq!(l.admit(sub, "j3", NOW + 13, NOW), Admit::Replayed);
        // Past the first token's exp + skew its slot is swept and reused.
        assert_eq!(l.admit(sub, "extra", NOW + 60, NOW + 16), Admit::Fresh);
        // j1 (exp NOW + 11) is kept through NOW + 16, freed at NOW + 17.
        assert_eq!(
            l.admit(sub, "again", NOW + 60, NOW + 16),
            Admit::Full { retry_after: 1 }
        );
        assert_eq!(l.admit(sub, "again", NOW + 60, NOW + 17), Admit::Fresh);
        // Long after, everything is free again.
        for i in 0..SLOTS {
            assert_eq!(
                l.admit(sub, &format!("k{i}"), NOW + 200, NOW + 150),
                Admit::Fresh
            );
        }
    }

    #[test]
    fn shared_by_every_opener_and_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let one = FileLedger::open(dir.path(), 4096).unwrap();
        let two = FileLedger::open(dir.path(), 4096).unwrap();
        let sub = Uuid::new_v4();
        assert_eq!(one.admit(sub, "shared", NOW + 60, NOW), Admit::Fresh);
        assert_eq!(two.admit(sub, "shared", NOW + 60, NOW), Admit::Replayed);
        drop((one, two));
        let again = FileLedger::open(dir.path(), 4096).unwrap();
        assert_eq!(again.admit(sub, "shared", NOW + 60, NOW), Admit::Replayed);
        // Another capacity asked: the ledger in use is kept as it is (never resized under
        // another server's workers), with what it remembers.
        let other = FileLedger::open(dir.path(), 8192).unwrap();
        assert_eq!(other.capacity(), 4096_usize.div_ceil(SLOTS) * SLOTS);
        assert_eq!(other.admit(sub, "shared", NOW + 60, NOW), Admit::Replayed);
        assert_eq!(again.admit(sub, "new", NOW + 60, NOW), Admit::Fresh);
        assert_eq!(other.admit(sub, "new", NOW + 60, NOW), Admit::Replayed);
        // An unreadable file is made anew.
        drop((again, other));
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        let anew = FileLedger::open(dir.path(), 4096).unwrap();
        assert_eq!(anew.admit(sub, "shared", NOW + 60, NOW), Admit::Fresh);
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over() {
        let (_d, l) = ledger(SLOTS);
        let sub = Uuid::new_v4();
        // A pid that exists no more: a child that was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        // One bucket: both choices are bucket 0.
        let lock = l.lock_of(0);
        lock.store(dead, Ordering::Release);
        assert_eq!(l.admit(sub, "x", NOW + 60, NOW), Admit::Fresh);
        assert_eq!(lock.load(Ordering::Acquire), 0);
        // A live holder that never lets go: refused after a bounded wait, not a hang.
        lock.store(1, Ordering::Release);
        assert_eq!(
            l.admit(sub, "y", NOW + 60, NOW),
            Admit::Full { retry_after: 1 }
        );
        lock.store(0, Ordering::Release);
    }

    #[test]
    fn two_choices_fill_most_of_the_ledger_without_refusing() {
        // With one choice, 80% full already overflows many 16-slot buckets (a refusal each);
        // with two, none of these does.
        let (_d, l) = ledger(SLOTS * 1024);
        let sub = Uuid::new_v4();
        let wanted = l.capacity() * 8 / 10;
        let refused = (0..wanted)
            .filter(|i| l.admit(sub, &format!("t{i}"), NOW + 60, NOW) != Admit::Fresh)
            .count();
        assert_eq!(refused, 0);
        // And every one of them is still remembered.
        assert!(
            (0..wanted).all(|i| l.admit(sub, &format!("t{i}"), NOW + 60, NOW) == Admit::Replayed)
        );
    }

    #[test]
    fn threads_racing_for_the_same_tokens_admit_each_once() {
        let (_d, l) = ledger(1024);
        let sub = Uuid::new_v4();
        let fresh = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for i in 0..200 {
                        if l.admit(sub, &format!("t{i}"), NOW + 60, NOW) == Admit::Fresh {
                            fresh.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(fresh.load(Ordering::Relaxed), 200);
    }
}

//! The registry's cross-process change counter: `registry.gen`, eight bytes mapped shared by
//! every process that opens the registry and used as one `AtomicU64`. A writer bumps it after
//! its transaction commits; a reader loads it (a few ns, no system call) to learn whether its
//! snapshot is still current.
//!
//! A process killed between its commit and its bump leaves the counter behind that one write
//! until the next write; opening the registry bumps it once, so a restarted process, and every
//! process watching, re-reads.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use super::StoreError;

/// Size of the counter file: one `u64`, only ever read and written through the
/// atomic (all processes are on this machine).
const LEN: u64 = 8;

/// A shared mapping of `registry.gen`.
pub struct Generation {
    /// The 8 bytes [`Generation::counter`] points into; unmapped on drop.
    map: MmapMut,
}

impl Generation {
    /// Maps `path`, creating it (mode 0600, zero) if absent.
    pub fn open(path: &Path) -> Result<Generation, StoreError> {
        let unavailable =
            |e: std::io::Error| StoreError::Unavailable(format!("`{}`: {e}", path.display()));
        let file = super::open_shared_file(path).map_err(unavailable)?;
        // Growing a new (empty) file to 8 zero bytes is the same from every process; a longer
        // file is left as it is.
        if file.metadata().map_err(unavailable)?.len() < LEN {
            file.set_len(LEN).map_err(unavailable)?;
        }
        // SAFETY: the file is ours (DPMS_DATA_DIR is 0700) and only ever changed through the
        // atomic below or grown once from empty; nobody truncates it while mapped.
        let map = unsafe { memmap2::MmapOptions::new().len(LEN as usize).map_mut(&file) }
            .map_err(unavailable)?;
        Ok(Generation { map })
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned (so 8-aligned), 8 bytes long, lives as long as
        // `self`, and every access from any process goes through atomic operations.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }
    }

    /// The current generation: one atomic load.
    #[inline]
    pub fn get(&self) -> u64 {
        self.counter().load(Ordering::Acquire)
    }

    /// Announces a committed write to every process.
    pub fn bump(&self) {
        self.counter().fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that fails to set up should panic
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_the_counter() {
        let dir = std::env::temp_dir().join(format!("dpms-gen-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("registry.gen");
        let a = Generation::open(&path).unwrap();
        let b = Generation::open(&path).unwrap();
        assert_eq!(a.get(), 0);
        a.bump();
        a.bump();
        assert_eq!(b.get(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

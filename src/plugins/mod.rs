//! Plugin files: finding them, loading them through `pyhost`, and keeping them fresh.

mod registry;
mod watcher;

pub use registry::{Registry, Snapshot};
pub use watcher::FileState;

//! Plugin files: finding them, loading them through `pyhost`, and keeping them fresh.

pub mod owner;
mod registry;
mod watcher;

pub use registry::{module_from, Registry, Snapshot};
pub use watcher::FileState;

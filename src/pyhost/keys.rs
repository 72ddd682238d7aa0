//! Interned kwargs keys. Every call passes a dozen or more keyword arguments whose names come
//! back request after request (`parm_1`…, `func`, the same query keys). Creating a Python string
//! per key and per call, and hashing it again when it goes into the kwargs dict, is work the
//! interpreter would otherwise repeat for nothing: the first time a name is seen it is interned
//! and kept here, later calls take a new reference to the same object, whose hash is cached.
//!
//! The table is bounded ([`MAX_KEYS`] names of at most [`MAX_KEY_LEN`] bytes): names past the
//! bound (a client sending endless distinct query keys) are created per call as before.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use pyo3::prelude::*;
use pyo3::types::PyString;

/// Most names kept.
pub const MAX_KEYS: usize = 4096;
/// Longest name kept, in bytes.
pub const MAX_KEY_LEN: usize = 64;

type Table = HashMap<Box<str>, Py<PyString>, foldhash::fast::RandomState>;

static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();

/// The interned-name table, locked once for all the keys of one call.
pub struct Keys {
    table: Option<MutexGuard<'static, Table>>,
}

impl Keys {
    /// Takes the table if no other thread has it. Never waits: creating a Python object can
    /// run a collection and with it a finaliser that lets another thread take the GIL, and that
    /// thread must not block on this lock while holding the GIL. Without the table, names are
    /// simply created afresh.
    pub fn lock() -> Keys {
        let table = TABLE
            .get_or_init(|| Mutex::new(Table::default()))
            .try_lock()
            .ok();
        Keys { table }
    }

    /// The Python string for `name`.
    pub fn get<'py>(&mut self, py: Python<'py>, name: &str) -> Bound<'py, PyString> {
        let Some(table) = self.table.as_mut() else {
            return PyString::new(py, name);
        };
        if let Some(key) = table.get(name) {
            return key.bind(py).clone();
        }
        if name.len() > MAX_KEY_LEN || table.len() >= MAX_KEYS {
            return PyString::new(py, name);
        }
        let key = PyString::intern(py, name);
        table.insert(name.into(), key.clone().unbind());
        key
    }
}

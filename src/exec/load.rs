//! Loading plugin modules across the seam: what the registry asks an executor to import and
//! what comes back, as plain data, and the [`Loader`] trait both executors implement (the
//! in-process one in the server's interpreter, the sandboxed one in a tenant's process).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::CodeRef;
use crate::marshal::Param;

/// One request to import a plugin file.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub name: String,
    pub path: String,
    /// The exact bytes the server fingerprinted; Python compiles these, not what it would read.
    pub source: Arc<Vec<u8>>,
}

/// What the import system may find in the plugin folders: a module name and its file, and
/// the file's bytes when the executor cannot read the folders itself (a tenant's sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinderEntry {
    pub name: String,
    pub path: String,
    pub source: Option<Arc<Vec<u8>>>,
}

/// What the Python helper (`_host._describe`) reports about a module, tagged by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    Ok(Description),
    ImportError { error: String, traceback: String },
    Refused { error: String },
}

/// A module that imported.
#[derive(Debug, Deserialize)]
pub struct Description {
    pub alias: Option<String>,
    pub owner: Option<String>,
    /// Public functions and classes defined in the module.
    pub public: Vec<String>,
    pub endpoints: Vec<EndpointDescription>,
    /// Problems with single functions (they stay unroutable).
    pub errors: Vec<String>,
    /// Other plugin modules it imported.
    pub deps: Vec<String>,
    /// Function name → the line its definition starts on (for `dpms check`).
    #[serde(default)]
    pub lines: std::collections::HashMap<String, u32>,
}

/// A decorated function, before the server validates `methods` and `api`.
#[derive(Debug, Deserialize)]
pub struct EndpointDescription {
    pub func: String,
    pub api: String,
    pub methods: Vec<String>,
    pub doc: String,
    /// The whole docstring, cleaned.
    #[serde(default)]
    pub description: String,
    pub signature: String,
    pub params: Vec<Param>,
    pub meta: Value,
    /// Position of the function object in the module's loaded code.
    pub index: usize,
}

/// The outcome of importing one file.
pub enum Loaded {
    Ok {
        description: Description,
        /// The description as the helper wrote it (kept as the last good version).
        json: String,
        code: CodeRef,
    },
    ImportError {
        error: String,
        traceback: String,
    },
    Refused {
        error: String,
    },
}

/// What a load returns: one [`Loaded`] per request, in order, or why nothing was loaded.
pub type LoadResult = Result<Vec<Loaded>, String>;

/// Imports batches of plugin files for one owner's modules.
pub trait Loader: Send + Sync {
    /// Imports `requests` afresh (see `_host.load_batch`). `files` is the complete map of what
    /// the import system may find when it changed; `forget` lists modules whose files are gone.
    fn load(
        &self,
        files: Option<Vec<FinderEntry>>,
        forget: Vec<String>,
        requests: Vec<LoadRequest>,
    ) -> Pin<Box<dyn Future<Output = LoadResult> + Send + '_>>;
}

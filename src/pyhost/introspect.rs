//! What the Python helper (`python/dpms/_host.py`) reports about a loaded module: tagged JSON
//! that deserializes into these plain-Rust types, once per load. The request path never asks
//! Python about a module again.

use serde::Deserialize;
use serde_json::Value;

use crate::marshal::Param;

/// One request to import a plugin file.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub name: String,
    pub path: String,
    /// The exact bytes the server fingerprinted; Python compiles these, not what it would read.
    pub source: std::sync::Arc<Vec<u8>>,
}

/// What `_host._describe` returns, tagged by `kind`.
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
}

/// A decorated function, before the server validates `methods` and `api`.
#[derive(Debug, Deserialize)]
pub struct EndpointDescription {
    pub func: String,
    pub api: String,
    pub methods: Vec<String>,
    pub doc: String,
    pub signature: String,
    pub params: Vec<Param>,
    pub meta: Value,
    /// Position of the function object in the functions list returned beside the JSON.
    pub index: usize,
}

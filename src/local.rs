//! Plugins loaded exactly as a worker loads them, without serving them (`dpms routes`,
//! `dpms check`), and what `dpms check` reports about them.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::Config;
use crate::plugins::{owner::Scope, Registry, Snapshot};
use crate::pyhost::PyHost;
use crate::router::RouteTable;

/// Starts the embedded Python, loads every plugin folder of `config` and returns the result.
pub fn load(config: Config) -> Result<Arc<Snapshot>, String> {
    let config = Arc::new(config);
    let host = Arc::new(PyHost::start(&config, 0).map_err(|e| e.to_string())?);
    let io = std::thread::Builder::new()
        .name("dpms-load".into())
        .spawn(move || {
            let on_thread = Arc::clone(&host);
            on_thread.with_thread_state(move || -> Result<Arc<Snapshot>, String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the async runtime: {e}"))?;
                runtime.block_on(async move {
                    let scope = if config.multi_tenant {
                        Scope::Admin(config.admin_id)
                    } else {
                        Scope::All
                    };
                    let loader = host as Arc<dyn crate::exec::Loader>;
                    let registry = Registry::start(Arc::clone(&config), loader, scope).await;
                    Ok(registry.current())
                })
            })
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    io.join()
        .map_err(|_| "the loading thread panicked".to_string())?
}

/// One problem `dpms check` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u32,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every problem of a loaded table: files that do not import or are refused, functions whose
/// decorator is wrong, clashes. Files are named as the folders were given.
pub fn problems(table: &RouteTable, dirs: &[std::path::PathBuf]) -> Vec<Problem> {
    let mut out = Vec::new();
    for m in table.modules() {
        let file = m.path.display().to_string();
        if let Some(err) = &m.import_error {
            out.push(Problem {
                file: file.clone(),
                line: 1,
                message: err.clone(),
            });
        }
        for err in &m.errors {
            // "<function>: <what>", as __dir__ shows it.
            let line = err
                .split_once(": ")
                .and_then(|(name, _)| m.lines.get(name))
                .copied()
                .unwrap_or(1);
            out.push(Problem {
                file: file.clone(),
                line,
                message: err.clone(),
            });
        }
    }
    for p in table.problems() {
        let file = if Path::new(&p.key).is_absolute() {
            p.key.clone()
        } else {
            // `<stem>.py` in one of the folders: the first that holds it.
            dirs.iter()
                .map(|d| d.join(&p.key))
                .find(|f| f.exists())
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| p.key.clone())
        };
        out.push(Problem {
            file,
            line: p.line.unwrap_or(1),
            message: format!("{}: {}", p.status, p.error),
        });
    }
    out
}

/// What `dpms routes --json` prints: one entry per (method, API) the table routes.
pub fn routes(table: &RouteTable) -> Value {
    let routes: Vec<Value> = table
        .operations()
        .map(|op| {
            let e = op.endpoint;
            let path = if op.qualified {
                format!("/rest/services/{}/{}/", op.module.name, e.api)
            } else {
                format!("/rest/services/{}/", e.api)
            };
            let params: Vec<Value> = e
                .params
                .params
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "required": !p.has_default,
                        "type": p.ty.as_ref().map(|t| t.python()),
                    })
                })
                .collect();
            json!({
                "method": op.method.as_str(),
                "path": path,
                "api": e.api,
                "module": op.module.name,
                "function": e.func,
                "signature": e.signature,
                "auth": e.auth.as_str(),
                "doc": e.doc,
                "file": op.module.path.display().to_string(),
                "line": op.module.lines.get(&e.func),
                "params": params,
            })
        })
        .collect();
    Value::Array(routes)
}

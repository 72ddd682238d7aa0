//! The everyday commands (SPEC §13): `dpms routes`, `dpms check`, `dpms new`, `dpms call`. They
//! read the same settings as `dpms serve` (`.env`, the environment, flags) and load plugins
//! exactly as a worker does; `call` runs the real request pipeline on a private loopback port.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use dpms::config::{Config, Overrides, Sources};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  dpms routes\n  dpms routes --json | jq '.[].path'\n  dpms routes --plugins ./plugins:./more"
)]
pub struct RoutesArgs {
    /// Print JSON (one object per method and API) instead of a table.
    #[arg(long)]
    json: bool,
    /// `:`-separated plugin folders (default: the server's, `plugins` / DPMS_PLUGINS).
    #[arg(long)]
    plugins: Option<String>,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  dpms check                 # the server's plugin folders\n  dpms check ./plugins ./more\n\nPrints `file:line: problem` for each, and exits 1 if there is any (0: all import and route).\nIn a pre-commit hook: `dpms check plugins || exit 1`."
)]
pub struct CheckArgs {
    /// Plugin folders (default: the server's).
    dirs: Vec<PathBuf>,
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  dpms new orders             # plugins/orders.py and tests/test_orders.py\n  pytest tests/test_orders.py\n  dpms call orders --query name=you"
)]
pub struct NewArgs {
    /// The module name: lowercase letters, digits and `_`, starting with a letter.
    name: String,
    /// Folder for the plugin (default: the first plugin folder of the settings).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Folder for the test (default: `tests` beside the plugin folder).
    #[arg(long)]
    tests: Option<PathBuf>,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  dpms call hello-world --query a=1 --query b=2\n  dpms call module1/sample-one --data '{\"args\": [1], \"x\": 2}'\n  dpms call list-orders --uuid 0b7e4f0e-5d7a-4c3e-9a57-0c1e8f2b6a11 -H 'Authorization: Bearer <token>'\n\nPrints the body the server would send (stdout) and exits 0 for a 2xx answer, 1 otherwise\n(the status goes to stderr)."
)]
pub struct CallArgs {
    /// What follows `/rest/services/`: `<api>`, `<module>/<api>`, URL parameters after it.
    api: String,
    /// A JSON body (the method becomes POST unless --method says otherwise).
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// A query parameter NAME=VALUE (repeatable).
    #[arg(long, short = 'q')]
    query: Vec<String>,
    /// The HTTP method (default GET, or POST with --data).
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// Call as this tenant (`/rest/services/<uuid>/…`).
    #[arg(long)]
    uuid: Option<String>,
    /// A request header `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// `:`-separated plugin folders (default: the server's).
    #[arg(long)]
    plugins: Option<String>,
}

fn settings(plugins: Option<String>) -> Result<Config, String> {
    let workdir =
        std::env::current_dir().map_err(|e| format!("cannot read the working folder: {e}"))?;
    let overrides = Overrides {
        plugins,
        host: Some("127.0.0.1".into()),
        port: Some("0".into()),
        ..Overrides::default()
    };
    let sources = Sources::load(&workdir, overrides).map_err(|e| e.to_string())?;
    let mut config = sources.config(&workdir).map_err(|e| e.to_string())?;
    // One process, no supervisor: nothing else to share state with.
    config.workers = 1;
    let filter = std::env::var("DPMS_LOG").unwrap_or_else(|_| "warn".into());
    dpms::telemetry::init(&filter, config.log_json);
    Ok(config)
}

fn fail(message: &str, code: u8) -> ExitCode {
    dpms::telemetry::flush();
    eprintln!("dpms: {message}");
    ExitCode::from(code)
}

fn fail_code(message: &str, code: u8) -> i32 {
    let _ = fail(message, code);
    i32::from(code)
}

pub fn routes(args: &RoutesArgs) -> ExitCode {
    let config = match settings(args.plugins.clone()) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let snap = match dpms::local::load(config) {
        Ok(s) => s,
        Err(e) => return fail(&e, 1),
    };
    let routes = dpms::local::routes(&snap.table);
    dpms::telemetry::flush();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&routes).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let rows: Vec<[String; 5]> = routes
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            [
                s("method"),
                s("path"),
                format!("{}.{}{}", s("module"), s("function"), s("signature")),
                s("auth"),
                s("doc"),
            ]
        })
        .collect();
    let head = ["METHOD", "PATH", "FUNCTION", "AUTH", "DOC"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        eprintln!("no routes: no plugin function is exposed in these folders");
    }
    ExitCode::SUCCESS
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let dirs = (!args.dirs.is_empty()).then(|| {
        args.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    });
    for d in &args.dirs {
        if !d.is_dir() {
            return fail(&format!("`{}` is not a folder", d.display()), 2);
        }
    }
    let config = match settings(dirs) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let folders = config.plugin_dirs.clone();
    let snap = match dpms::local::load(config) {
        Ok(s) => s,
        Err(e) => return fail(&e, 1),
    };
    let problems = dpms::local::problems(&snap.table, &folders);
    dpms::telemetry::flush();
    for p in &problems {
        println!("{p}");
    }
    let modules = snap.table.modules().len();
    let endpoints: usize = snap.table.modules().iter().map(|m| m.endpoints.len()).sum();
    if problems.is_empty() {
        eprintln!("ok: {modules} modules, {endpoints} endpoints");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} problem{} ({modules} modules, {endpoints} endpoints)",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        ExitCode::FAILURE
    }
}

const PLUGIN_TEMPLATE: &str = r#""""@NAME@: a dpms plugin (made by `dpms new`).

Every function decorated with `expose.endpoint` is served at /rest/services/<API>/; annotated
parameters are converted from the query string (a bad value is a 400 naming the parameter).
"""

from vyperlogix.decorators import expose


@expose.endpoint(method="GET|POST", API="@NAME@")
def @NAME@(name: str = "world", times: int = 1, **kwargs):
    """Greets `name`, `times` times."""
    return {"greeting": " ".join([f"hello, {name}"] * times)}
"#;

const TEST_TEMPLATE: &str = r#""""Plain pytest for @NAME@.py (made by `dpms new`): the function called as Python, no server."""

import importlib.util
import pathlib

PLUGIN = pathlib.Path(__file__).resolve().parent / @PATH@


def load():
    spec = importlib.util.spec_from_file_location("@NAME@", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_@NAME@_greets():
    assert load().@NAME@(name="dpms", times=2) == {"greeting": "hello, dpms hello, dpms"}


def test_@NAME@_defaults():
    assert load().@NAME@() == {"greeting": "hello, world"}
"#;

const KEYWORDS: &[&str] = &[
    "false", "none", "true", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "test", "tests",
];

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
        && !KEYWORDS.contains(&name)
}

pub fn new(args: &NewArgs) -> ExitCode {
    let name = args.name.as_str();
    if !valid_name(name) {
        return fail(
            &format!("`{name}` is not a module name: lowercase letters, digits and `_`, starting with a letter (not a Python keyword)"),
            2,
        );
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        // The server's first folder; in a new project (no folder yet) `./plugins`, made here.
        None => settings(None)
            .ok()
            .and_then(|c| c.plugin_dirs.first().cloned())
            .unwrap_or_else(|| PathBuf::from("plugins")),
    };
    let tests = args.tests.clone().unwrap_or_else(|| {
        dir.parent()
            .map(|p| p.join("tests"))
            .unwrap_or_else(|| PathBuf::from("tests"))
    });
    let plugin = dir.join(format!("{name}.py"));
    let test = tests.join(format!("test_{name}.py"));
    for f in [&plugin, &test] {
        if f.exists() {
            return fail(
                &format!("`{}` exists already; nothing written", f.display()),
                1,
            );
        }
    }
    let path = relative(&tests, &plugin);
    let plugin_text = PLUGIN_TEMPLATE.replace("@NAME@", name);
    let test_text = TEST_TEMPLATE
        .replace("@NAME@", name)
        .replace("@PATH@", &path);
    for (folder, file, text) in [(&dir, &plugin, plugin_text), (&tests, &test, test_text)] {
        if let Err(e) = std::fs::create_dir_all(folder).and_then(|()| write_new(file, &text)) {
            return fail(&format!("cannot write `{}`: {e}", file.display()), 1);
        }
        println!("{}", file.display());
    }
    eprintln!(
        "next: `pytest {}`, then `dpms call {name} --query name=you`",
        test.display()
    );
    ExitCode::SUCCESS
}

/// Writes a file that must not exist yet (another writer in between is an error, not lost).
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// The plugin's path as the test names it: relative to the test's folder when the plugin is
/// in its parent's `plugins`-like sibling (the default layout), else absolute.
fn relative(tests: &Path, plugin: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (tests, plugin) = (abs(tests), abs(plugin));
    let sibling = tests
        .parent()
        .zip(plugin.parent().and_then(Path::parent))
        .is_some_and(|(a, b)| a == b);
    match (
        sibling,
        plugin.parent().and_then(Path::file_name),
        plugin.file_name(),
    ) {
        (true, Some(folder), Some(file)) => format!(
            "\"..\" / {:?} / {:?}",
            folder.to_string_lossy(),
            file.to_string_lossy()
        ),
        _ => format!("{:?}", plugin.display().to_string()),
    }
}

/// Returns the exit code: the process must exit at once (a finished call's Python threads may
/// still run), see `main`.
pub fn call(args: &CallArgs) -> i32 {
    if let Some(data) = &args.data {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(data) {
            return fail_code(&format!("--data is not JSON: {e}"), 2);
        }
    }
    let config = match settings(args.plugins.clone()) {
        Ok(c) => c,
        Err(e) => return fail_code(&e, 2),
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                headers.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => return fail_code(&format!("`-H {h}` is not `Name: value`"), 2),
        }
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for q in &args.query {
        match q.split_once('=') {
            Some((k, v)) => query.append_pair(k, v),
            None => query.append_pair(q, ""),
        };
    }
    let query = query.finish();
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if args.data.is_some() { "POST" } else { "GET" }.into())
        .to_ascii_uppercase();
    let api = args.api.trim_matches('/');
    let mut target = match &args.uuid {
        Some(u) => format!("/rest/services/{u}/{api}/"),
        None => format!("/rest/services/{api}/"),
    };
    if !query.is_empty() {
        target = format!("{target}?{query}");
    }
    let request = Request {
        method,
        target,
        headers,
        body: args.data.clone(),
    };
    match run_one(config, request) {
        Ok((status, body)) => {
            dpms::telemetry::flush();
            println!("{}", String::from_utf8_lossy(&body));
            if (200..300).contains(&status) {
                0
            } else {
                eprintln!("dpms: HTTP {status}");
                1
            }
        }
        Err(e) => fail_code(&e, 1),
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// Serves the plugins on a private loopback port in this process, sends the one request,
/// stops the server and returns the answer.
fn run_one(config: Config, req: Request) -> Result<(u16, Vec<u8>), String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("dpms-call".into())
        .spawn(move || {
            dpms::run(
                config,
                0,
                listener,
                move || {
                    let _ = ready_tx.send(());
                },
                None,
                async move {
                    let _ = stop_rx.await;
                },
            )
            .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    if ready_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .is_err()
    {
        return match server.join() {
            Ok(Err(e)) => Err(e),
            _ => Err("the plugins did not load within 120 s".into()),
        };
    }
    let answer = send(addr, req);
    let _ = stop_tx.send(());
    let _ = server.join();
    answer
}

fn send(addr: std::net::SocketAddr, req: Request) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::{BodyExt, Full};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to the local server: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(req.method.as_str())
            .uri(req.target.as_str())
            .header(hyper::header::HOST, addr.to_string());
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let body = match req.body {
            Some(b) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
                bytes::Bytes::from(b)
            }
            None => bytes::Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body.to_vec()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["orders", "a1", "my_api"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1x", "Orders", "my-api", "class", "a.b", "test"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn templates_fill() {
        let p = PLUGIN_TEMPLATE.replace("@NAME@", "x");
        assert!(p.contains("def x(name: str = \"world\""));
        assert!(p.contains("return {\"greeting\": \" \".join([f\"hello, {name}\"] * times)}"));
    }
}

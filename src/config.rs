//! Settings: every one declared once in [`SETTINGS`], read in the order of SPEC §8 — built-in
//! defaults, then `.env` in the working folder, then the process environment, then command-line
//! flags — and checked at start-up, so a wrong value stops the server with one clear line instead
//! of failing at the first request.
//!
//! Only one process reads them: `dpms serve` (the supervisor) checks the [`Config`] once and
//! hands that same value to every worker it starts (`supervisor::Handoff`), so a `.env` edited
//! while the server runs cannot make a replacement worker differ from its siblings. That is why
//! [`Config`] is serde data.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One setting: its name (the environment variable and `.env` key), its default and what it does.
/// The README's settings table is printed from this list by `dpms settings`.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every setting dpms reads. `URL_PARM1`…`URL_PARMn` are the one family of keys not listed one by
/// one (see [`url_parm_index`]).
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "plugins",
        default: "./plugins",
        doc: "`:`-separated plugin folders, scanned in order without recursion (compat name; `DPMS_PLUGINS` is accepted too).",
    },
    Setting {
        name: "DPMS_PLUGINS",
        default: "",
        doc: "Same as `plugins`; used when `plugins` is not set.",
    },
    Setting {
        name: "DPMS_HOST",
        default: "127.0.0.1",
        doc: "Address to listen on.",
    },
    Setting {
        name: "DPMS_PORT",
        default: "8088",
        doc: "Port to listen on; `0` picks a free port and prints `listening on http://HOST:PORT` as the first stdout line.",
    },
    Setting {
        name: "DPMS_RELOAD",
        default: "changed",
        doc: "`changed`: re-import a module when its file changed; `always`: on every call; `never`: load once at start.",
    },
    Setting {
        name: "DPMS_WATCH",
        default: "inotify",
        doc: "How requests check plugin files are current: `inotify` (one read per request) or `stat` (a stat per folder and per called module; for network filesystems, where inotify misses remote writes).",
    },
    Setting {
        name: "NUM_URL_PARMS",
        default: "10",
        doc: "How many URL parameters may follow an API name; one more is a 404 `too_many_url_params`.",
    },
    Setting {
        name: "URL_PARMn",
        default: "parm_n",
        doc: "Name of the n-th URL parameter (`URL_PARM1`, `URL_PARM2`, …).",
    },
    Setting {
        name: "DPMS_MAX_BODY",
        default: "1048576",
        doc: "Largest request body in bytes; larger is a 413 `body_too_large`.",
    },
    Setting {
        name: "DPMS_MAX_URI",
        default: "8192",
        doc: "Longest request target (path and query) in bytes; longer is a 414 `uri_too_long`.",
    },
    Setting {
        name: "DPMS_MAX_HEADERS",
        default: "65536",
        doc: "Largest total size of the request headers in bytes; larger is a 431 `headers_too_large`.",
    },
    Setting {
        name: "MAX_FUNCTION_SECS",
        default: "30",
        doc: "Deadline for one plugin call in seconds (fractions allowed); past it the client gets 504 `timeout`.",
    },
    Setting {
        name: "DEBUG",
        default: "false",
        doc: "Send a plugin's traceback in error bodies (`traceback`); it is always in the log.",
    },
    Setting {
        name: "MULTI_TENANT",
        default: "false",
        doc: "`true`: every call begins with the caller's uuid (the admin's `ADMIN_ID` or an enabled tenant's), and each tenant's modules run in its own sandboxed process (SPEC §7, §11); needs `ADMIN_ID`. `false`: no uuid is needed and every call runs as admin.",
    },
    Setting {
        name: "ADMIN_ID",
        default: "",
        doc: "The admin's UUID (checked at start when set).",
    },
    Setting {
        name: "DPMS_VENV",
        default: "",
        doc: "A Python 3.11 virtual environment whose site-packages plugins may import from (`VIRTUAL_ENV` is used when this is unset).",
    },
    Setting {
        name: "DPMS_WORKERS",
        default: "number of CPUs",
        doc: "Worker processes, each with its own interpreter, sharing the port; a worker that dies is replaced.",
    },
    Setting {
        name: "DPMS_PY_THREADS",
        default: "128",
        doc: "Python threads per worker for calls not known to be short; a call that blocks holds one of them (idle threads cost only memory for their stacks).",
    },
    Setting {
        name: "DPMS_MAX_QUEUE",
        default: "1024",
        doc: "Calls that may wait for a Python thread in one worker; past it the client gets 503 `overloaded` with `Retry-After` at once.",
    },
    Setting {
        name: "DPMS_BODY_SECS",
        default: "30",
        doc: "A client must send its whole request body within this many seconds; past it, 408 `request_timeout` and the connection is closed.",
    },
    Setting {
        name: "DPMS_HEADER_SECS",
        default: "30",
        doc: "A client must send its request headers within this many seconds (an idle keep-alive connection too); past it the connection is closed.",
    },
    Setting {
        name: "DPMS_MAX_CONNECTIONS",
        default: "10000",
        doc: "Open connections one worker serves at a time; further clients wait in the kernel's accept queue (memory stays bounded).",
    },
    Setting {
        name: "DPMS_LOAD_SECS",
        default: "30",
        doc: "Deadline for importing one plugin file; past it the import is stopped and reported in `__dir__` (an import stuck in C retires the worker and the file is quarantined), other modules load.",
    },
    Setting {
        name: "DPMS_WORKER_MEMORY",
        default: "0 (no limit)",
        doc: "Address-space limit of one worker in MiB (`RLIMIT_AS`); a plugin allocating past it gets `MemoryError` (500), or the worker is replaced.",
    },
    Setting {
        name: "DPMS_SHUTDOWN_SECS",
        default: "10",
        doc: "On SIGTERM/SIGINT, how long in-flight requests may take before the process exits anyway.",
    },
    Setting {
        name: "DPMS_TENANT_IDLE_SECS",
        default: "300",
        doc: "A tenant's process is stopped after this many seconds without a call (SPEC §11.10); its next call starts a new one.",
    },
    Setting {
        name: "DPMS_TENANT_CONCURRENCY",
        default: "8",
        doc: "Calls one tenant may have running at once per worker; more answer 503 `overloaded`.",
    },
    Setting {
        name: "DPMS_TENANT_MEMORY",
        default: "512",
        doc: "Address space of a tenant process in MiB (`RLIMIT_AS`); past it allocations fail (a `MemoryError`, or the process dies: 502 `worker_lost`).",
    },
    Setting {
        name: "DPMS_SANDBOX",
        default: "strict",
        doc: "`strict`: where the kernel lacks a sandbox layer, tenant code does not run (503 `sandbox_unavailable`; the admin's modules serve). `relaxed`: it runs without the missing layers, and every tenant call logs which.",
    },
    Setting {
        name: "DPMS_REQUIRE_TOKENS",
        default: "False",
        doc: "`True`: every call needs a single-use token (`Authorization: Bearer <jwt>`), except endpoints declared `auth=\"public\"`; the admin API then takes the admin's token as its bearer. Needs `ADMIN_ID`.",
    },
    Setting {
        name: "DPMS_KEY_GRACE_SECS",
        default: "300",
        doc: "Seconds a rotated-out signing key still verifies tokens.",
    },
    Setting {
        name: "DPMS_TOKEN_LEDGER",
        default: "1048576",
        doc: "How many live (unexpired) tokens the replay ledger (`DPMS_DATA_DIR/ledger.bin`) holds; when full, new tokens get 429 `too_many_tokens` until old ones expire.",
    },
    Setting {
        name: "DPMS_CORS_ORIGINS",
        default: "",
        doc: "Origins (`https://app.example,http://127.0.0.1:3000`) or `*` whose pages may call dpms: CORS headers on their answers and preflights answered (before any token check). Empty: off.",
    },
    Setting {
        name: "DPMS_DATA_DIR",
        default: ".dpms",
        doc: "Folder of the tenant registry (`registry.sqlite3`), relative to the working folder unless absolute; created mode 0700.",
    },
    Setting {
        name: "DPMS_LOG",
        default: "info",
        doc: "Log filter (tracing `EnvFilter` syntax, e.g. `info`, `dpms=debug`); logs go to stderr.",
    },
    Setting {
        name: "DPMS_LOG_FORMAT",
        default: "text",
        doc: "`text`: one `key=value` line per record; `json`: one JSON object per line, with the same fields (`timestamp`, `level`, `target`, `message`, …).",
    },
];

/// Keys the original framework's `.env` files carry that dpms knows but does not use yet; they
/// are accepted silently so a compat `.env` loads without noise.
const ACCEPTED_UNUSED: &[&str] = &["SECRETS"];

/// How plugin modules are kept fresh (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReloadMode {
    /// Re-import a module only when its file changed (the default).
    Changed,
    /// Re-import the called module on every request (the old framework's behaviour).
    Always,
    /// Load once at start.
    Never,
}

/// The checked configuration the server runs with.
///
/// Serde data, derived field by field rather than through a mirror struct: a mirror would be a
/// second list of every field to keep in step, and serde's own impls already fit `IpAddr`,
/// `Duration` and `Uuid`. Two kinds of field need a hand: paths (serde refuses a `PathBuf` that
/// is not UTF-8, which a working folder may be) travel as their bytes, and the URL parameter
/// names, borrowed `&'static str`, are leaked again on arrival as [`Sources::config`] leaks
/// them. Unknown fields are refused, so a worker of another build fails at once with one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Plugin folders in search order; every one exists (checked at start).
    #[serde(with = "path_bytes::many")]
    pub plugin_dirs: Vec<PathBuf>,
    pub reload: ReloadMode,
    /// Check freshness with an inotify queue (`true`) or with `stat` only.
    pub watch_inotify: bool,
    /// `url_parm_names[i]` names the (i+1)-th URL parameter; its length is `NUM_URL_PARMS`.
    /// Leaked once per process (a few bytes each) so every call's kwargs borrow the names
    /// instead of copying them.
    #[serde(deserialize_with = "leaked_names")]
    pub url_parm_names: Vec<&'static str>,
    pub max_body: usize,
    pub max_uri: usize,
    pub max_headers: usize,
    pub max_function_time: Duration,
    pub debug: bool,
    pub admin_id: Option<Uuid>,
    /// `MULTI_TENANT`: callers name themselves by uuid and tenants' modules run sandboxed.
    pub multi_tenant: bool,
    /// The virtual environment whose site-packages are appended to `sys.path`.
    #[serde(with = "path_bytes::optional")]
    pub venv: Option<PathBuf>,
    pub py_threads: usize,
    /// Calls that may wait for a Python thread (per worker).
    pub max_queued: usize,
    /// Deadline for reading a request body.
    pub body_time: Duration,
    /// Deadline for reading request headers (and for an idle keep-alive connection).
    pub header_time: Duration,
    /// Open connections per worker.
    pub max_connections: usize,
    /// Deadline for importing one plugin file.
    pub load_time: Duration,
    /// Address-space limit of a worker in bytes (`None`: no limit).
    pub worker_memory: Option<u64>,
    /// Worker processes under the supervisor.
    pub workers: usize,
    pub shutdown_time: Duration,
    pub log_filter: String,
    /// `DPMS_LOG_FORMAT=json`: log records as JSON lines.
    pub log_json: bool,
    /// A folder shared by the workers of one supervisor (not a user setting: the supervisor
    /// sets it); see `plugins::registry` for what is kept there.
    #[serde(with = "path_bytes::optional")]
    pub state_dir: Option<PathBuf>,
    /// `DPMS_DATA_DIR`: the folder of the tenant registry (`store`), created mode 0700 when
    /// the registry is first opened.
    #[serde(with = "path_bytes::one")]
    pub data_dir: PathBuf,
    /// `DPMS_TENANT_IDLE_SECS`: an unused tenant's process is stopped after this long.
    pub tenant_idle: Duration,
    /// `DPMS_TENANT_CONCURRENCY`: calls one tenant may run at once (per worker).
    pub tenant_concurrency: usize,
    /// `DPMS_TENANT_MEMORY` in bytes: a tenant process's address space.
    pub tenant_memory: u64,
    /// `DPMS_REQUIRE_TOKENS`: every call needs a token but `auth="public"` ones (SPEC §12).
    pub require_tokens: bool,
    /// `DPMS_KEY_GRACE_SECS`: how long a rotated-out key still verifies.
    pub key_grace_secs: u64,
    /// `DPMS_TOKEN_LEDGER`: live tokens the replay ledger holds.
    pub token_ledger: usize,
    /// `DPMS_CORS_ORIGINS`: `None` is off.
    pub cors: Option<crate::cors::Origins>,
    /// `DPMS_SANDBOX=relaxed`: tenant code runs even where the kernel lacks sandbox layers
    /// (each call logs which); `strict`, the default, refuses it (SPEC §11.9).
    pub sandbox_relaxed: bool,
    /// `.env` entries that are not dpms settings, put into the admin interpreter's
    /// `os.environ` before the first plugin import (absent from the process environment).
    pub extra_env: Vec<(String, String)>,
}

/// The URL parameter names as [`Config::url_parm_names`] holds them: leaked, once per process
/// (a worker reads one handoff), so calls borrow them for nothing.
fn leaked_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<&'static str>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Ok(names
        .into_iter()
        .map(|name| &*Box::leak(name.into_boxed_str()))
        .collect())
}

/// Paths as the bytes the kernel knows them by (a JSON array of numbers), so any path the
/// supervisor checked reaches a worker unchanged, UTF-8 or not.
mod path_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct Ref<'a>(&'a Path);

    impl Serialize for Ref<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0.as_os_str().as_bytes())
        }
    }

    struct Owned(PathBuf);

    impl<'de> Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let bytes = Vec::<u8>::deserialize(d)?;
            Ok(Owned(PathBuf::from(OsString::from_vec(bytes))))
        }
    }

    pub mod one {
        use super::*;

        pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
            Ref(path).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
            Ok(Owned::deserialize(d)?.0)
        }
    }

    pub mod optional {
        use super::*;

        pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
            path.as_deref().map(Ref).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
            Ok(Option::<Owned>::deserialize(d)?.map(|p| p.0))
        }
    }

    pub mod many {
        use super::*;

        pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(paths.iter().map(|p| Ref(p)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
            Ok(Vec::<Owned>::deserialize(d)?
                .into_iter()
                .map(|p| p.0)
                .collect())
        }
    }
}

/// A configuration that cannot be used; the message is the one line printed at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("setting `{key}` = `{value}`: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("`.env` line {line}: cannot parse `{text}` (quote values with spaces; use single quotes for values containing `$` or `\"`)")]
    EnvFile { line: usize, text: String },
    #[error("the default plugin folder `{name}` ({path}) does not exist: create it, or name your plugin folders in `plugins` (e.g. `plugins=./services`)")]
    NoPluginFolder { name: String, path: String },
    #[error("MULTI_TENANT=True needs ADMIN_ID (a UUID): refusing to start; set it in `.env` or the environment")]
    TenancyNeedsAdmin,
    #[error("DPMS_REQUIRE_TOKENS=True needs ADMIN_ID (a UUID): tokens are signed with keys of the tenant registry, which only exists with it; refusing to start")]
    TokensNeedAdmin,
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Values given on the command line; each overrides every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<String>,
    pub plugins: Option<String>,
    pub reload: Option<String>,
    pub py_threads: Option<String>,
    pub workers: Option<String>,
}

/// Where setting values come from, before they are checked.
pub struct Sources {
    dotenv: HashMap<String, String>,
    env: HashMap<String, String>,
    overrides: HashMap<&'static str, String>,
}

impl Sources {
    /// Reads `.env` from `workdir` (only there, no search of parent folders) and the process
    /// environment.
    pub fn load(workdir: &Path, overrides: Overrides) -> Result<Sources, ConfigError> {
        let path = workdir.join(".env");
        let dotenv = if path.is_file() {
            read_dotenv(&path)?
        } else {
            Vec::new()
        };
        Ok(Sources::new(
            dotenv.into_iter().collect(),
            std::env::vars().collect(),
            overrides,
        ))
    }

    /// Sources from explicit maps (tests and embedding).
    pub fn new(
        dotenv: HashMap<String, String>,
        env: HashMap<String, String>,
        overrides: Overrides,
    ) -> Sources {
        let mut map = HashMap::new();
        let pairs = [
            ("DPMS_HOST", overrides.host),
            ("DPMS_PORT", overrides.port),
            ("plugins", overrides.plugins),
            ("DPMS_RELOAD", overrides.reload),
            ("DPMS_PY_THREADS", overrides.py_threads),
            ("DPMS_WORKERS", overrides.workers),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                map.insert(key, value);
            }
        }
        Sources {
            dotenv,
            env,
            overrides: map,
        }
    }

    /// The winning raw value of `key`: flag, then environment, then `.env`.
    fn raw(&self, key: &str) -> Option<String> {
        if let Some(v) = self.overrides.get(key) {
            return Some(v.clone());
        }
        if let Some(v) = self.env.get(key) {
            return Some(v.clone());
        }
        self.dotenv.get(key).cloned()
    }

    /// The value of `key`, or `None` when unset or empty.
    fn get(&self, key: &str) -> Option<String> {
        self.raw(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| invalid(key, &v, what)),
        }
    }

    /// A whole number within `range`.
    fn count(
        &self,
        key: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let what = format!(
            "expected a whole number from {} to {}",
            range.start(),
            range.end()
        );
        let n = self.parsed(key, default, &what)?;
        if !range.contains(&n) {
            return Err(invalid(key, &n.to_string(), &what));
        }
        Ok(n)
    }

    /// A duration in seconds (fractions allowed), more than 0 and at most `max`.
    fn seconds(&self, key: &str, default: f64, max: f64) -> Result<Duration, ConfigError> {
        let what = format!("expected seconds between 0 and {max}");
        let secs: f64 = self.parsed(key, default, &what)?;
        if !(secs.is_finite() && secs > 0.0 && secs <= max) {
            return Err(invalid(key, &secs.to_string(), &what));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| invalid(key, &v, "expected true or false")),
        }
    }

    /// `ADMIN_ID`, checked. Read on its own too by `dpms tenant`, which needs no plugin folder.
    pub fn admin_id(&self) -> Result<Option<Uuid>, ConfigError> {
        match self.get("ADMIN_ID") {
            None => Ok(None),
            Some(v) => Uuid::parse_str(&v)
                .map(Some)
                .map_err(|_| invalid("ADMIN_ID", &v, "expected a UUID")),
        }
    }

    /// `DPMS_DATA_DIR`, relative to `workdir` unless absolute. Read on its own too by
    /// `dpms tenant`, which needs no plugin folder.
    pub fn data_dir(&self, workdir: &Path) -> PathBuf {
        let dir = self.get("DPMS_DATA_DIR").unwrap_or_else(|| ".dpms".into());
        workdir.join(dir)
    }

    /// Checks every setting and builds the [`Config`].
    pub fn config(&self, workdir: &Path) -> Result<Config, ConfigError> {
        let host_raw = self.get("DPMS_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let host = host_raw
            .parse()
            .map_err(|_| invalid("DPMS_HOST", &host_raw, "expected an IP address"))?;
        let port = self.parsed("DPMS_PORT", 8088u16, "expected a port number (0-65535)")?;

        let (plugins_key, plugins_raw) = match self.get("plugins") {
            Some(v) => ("plugins", v),
            None => (
                "DPMS_PLUGINS",
                self.get("DPMS_PLUGINS")
                    .unwrap_or_else(|| "./plugins".into()),
            ),
        };
        let mut plugin_dirs: Vec<PathBuf> = Vec::new();
        let mut seen: Vec<PathBuf> = Vec::new();
        for part in plugins_raw
            .split(':')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            // Kept as written (absolute, `.` removed), never resolved: a folder that is a
            // symlink re-pointed at another release, or a folder deleted and re-created, is
            // found again by its name (SPEC §2).
            let dir: PathBuf = workdir.join(part).components().collect();
            if !dir.is_dir() {
                if plugins_key == "DPMS_PLUGINS" && self.get("DPMS_PLUGINS").is_none() {
                    return Err(ConfigError::NoPluginFolder {
                        name: part.to_string(),
                        path: dir.display().to_string(),
                    });
                }
                return Err(invalid(
                    plugins_key,
                    &plugins_raw,
                    &format!("plugin folder `{part}` does not exist"),
                ));
            }
            let real = dir.canonicalize().map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            if !seen.contains(&real) {
                seen.push(real);
                plugin_dirs.push(dir);
            }
        }
        if plugin_dirs.is_empty() {
            return Err(invalid(plugins_key, &plugins_raw, "no plugin folder given"));
        }

        let reload = match self
            .get("DPMS_RELOAD")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("changed") => ReloadMode::Changed,
            Some("always") => ReloadMode::Always,
            Some("never") => ReloadMode::Never,
            Some(other) => {
                return Err(invalid(
                    "DPMS_RELOAD",
                    other,
                    "expected changed, always or never",
                ))
            }
        };

        let watch_inotify = match self
            .get("DPMS_WATCH")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("inotify") => true,
            Some("stat") => false,
            Some(other) => return Err(invalid("DPMS_WATCH", other, "expected inotify or stat")),
        };
        let num_url_parms = self.count("NUM_URL_PARMS", 10, 0..=1000)?;
        let url_parm_names = (1..=num_url_parms)
            .map(|n| {
                let name = self
                    .get(&format!("URL_PARM{n}"))
                    .unwrap_or_else(|| format!("parm_{n}"));
                &*Box::leak(name.into_boxed_str())
            })
            .collect();

        let max_body = self.parsed(
            "DPMS_MAX_BODY",
            1024 * 1024usize,
            "expected a size in bytes",
        )?;
        let max_uri = self.count("DPMS_MAX_URI", 8192, 256..=1024 * 1024)?;
        let max_headers = self.count("DPMS_MAX_HEADERS", 65536, 256..=1024 * 1024)?;
        let max_function_time = self.seconds("MAX_FUNCTION_SECS", 30.0, 86_400.0)?;
        let admin_id = self.admin_id()?;
        let venv = self
            .get("DPMS_VENV")
            .or_else(|| self.get("VIRTUAL_ENV"))
            .map(|v| workdir.join(v));
        let py_threads = self.count("DPMS_PY_THREADS", 128, 1..=1024)?;
        let max_queued = self.count("DPMS_MAX_QUEUE", 1024, 1..=1_000_000)?;
        let body_time = self.seconds("DPMS_BODY_SECS", 30.0, 3600.0)?;
        let header_time = self.seconds("DPMS_HEADER_SECS", 30.0, 3600.0)?;
        let max_connections = self.count("DPMS_MAX_CONNECTIONS", 10_000, 1..=1_000_000)?;
        let load_time = self.seconds("DPMS_LOAD_SECS", 30.0, 86_400.0)?;
        let worker_memory = match self.count("DPMS_WORKER_MEMORY", 0, 0..=(1 << 30))? {
            0 => None,
            mib if mib < 256 => {
                return Err(invalid(
                    "DPMS_WORKER_MEMORY",
                    &mib.to_string(),
                    "expected 0 (no limit) or at least 256 MiB: Python and the worker's threads need that much address space",
                ))
            }
            mib => Some(mib as u64 * 1024 * 1024),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.count("DPMS_WORKERS", cpus, 1..=256)?;
        let shutdown_secs: u64 = self.parsed("DPMS_SHUTDOWN_SECS", 10, "expected whole seconds")?;

        // Until tenancy exists, a security switch must not fail open (SPEC §7).
        let multi_tenant = self.boolean("MULTI_TENANT", false)?;
        if multi_tenant && admin_id.is_none() {
            return Err(ConfigError::TenancyNeedsAdmin);
        }
        let require_tokens = self.boolean("DPMS_REQUIRE_TOKENS", false)?;
        if require_tokens && admin_id.is_none() {
            return Err(ConfigError::TokensNeedAdmin);
        }
        // `.env` keys that are not settings go to the admin interpreter's `os.environ`, as the
        // original framework did (SPEC §8); the process environment wins over them.
        let mut extra_env: Vec<(String, String)> = self
            .dotenv
            .iter()
            .filter(|(k, _)| !is_known(k) && !self.env.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        extra_env.sort();

        Ok(Config {
            host,
            port,
            plugin_dirs,
            reload,
            watch_inotify,
            url_parm_names,
            max_body,
            max_uri,
            max_headers,
            max_function_time,
            debug: self.boolean("DEBUG", false)?,
            admin_id,
            multi_tenant,
            venv,
            py_threads,
            max_queued,
            body_time,
            header_time,
            max_connections,
            load_time,
            worker_memory,
            workers,
            shutdown_time: Duration::from_secs(shutdown_secs),
            log_filter: self.get("DPMS_LOG").unwrap_or_else(|| "info".into()),
            log_json: self.log_json()?,
            state_dir: None,
            data_dir: self.data_dir(workdir),
            tenant_idle: self.seconds("DPMS_TENANT_IDLE_SECS", 300.0, 86_400.0 * 365.0)?,
            tenant_concurrency: self.count("DPMS_TENANT_CONCURRENCY", 8, 1..=10_000)?,
            tenant_memory: self.count("DPMS_TENANT_MEMORY", 512, 64..=(1 << 20))? as u64
                * 1024
                * 1024,
            require_tokens,
            key_grace_secs: self.parsed(
                "DPMS_KEY_GRACE_SECS",
                crate::tokens::DEFAULT_GRACE_SECS,
                "expected whole seconds",
            )?,
            token_ledger: self.count(
                "DPMS_TOKEN_LEDGER",
                crate::tokens::ledger::DEFAULT_CAPACITY,
                crate::tokens::ledger::SLOTS..=crate::tokens::ledger::MAX_CAPACITY,
            )?,
            cors: match self.get("DPMS_CORS_ORIGINS") {
                None => None,
                Some(v) => crate::cors::Origins::parse(&v)
                    .map_err(|why| invalid("DPMS_CORS_ORIGINS", &v, &why))?,
            },
            sandbox_relaxed: self.sandbox_relaxed()?,
            extra_env,
        })
    }
}

impl Sources {
    /// `DPMS_SANDBOX`: `strict` (the default) or `relaxed`, in any case.
    fn log_json(&self) -> Result<bool, ConfigError> {
        let Some(v) = self.get("DPMS_LOG_FORMAT") else {
            return Ok(false);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(false),
            "json" => Ok(true),
            _ => Err(invalid("DPMS_LOG_FORMAT", &v, "must be `text` or `json`")),
        }
    }

    fn sandbox_relaxed(&self) -> Result<bool, ConfigError> {
        let Some(v) = self.get("DPMS_SANDBOX") else {
            return Ok(false);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "strict" => Ok(false),
            "relaxed" => Ok(true),
            _ => Err(invalid("DPMS_SANDBOX", &v, "must be `strict` or `relaxed`")),
        }
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `True`, `true`, `1`, `yes`, `on` (any case) and their opposites.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "y" | "t" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// `URL_PARM<n>` → `n`.
fn url_parm_index(key: &str) -> Option<usize> {
    key.strip_prefix("URL_PARM")?.parse().ok()
}

fn is_known(key: &str) -> bool {
    SETTINGS.iter().any(|s| s.name == key)
        || ACCEPTED_UNUSED.contains(&key)
        || key == "VIRTUAL_ENV"
        || url_parm_index(key).is_some_and(|n| n >= 1)
}

/// Reads a `.env` file (see [`parse_dotenv`]).
fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_dotenv(&text).map_err(|e| match e {
        DotenvError::Line { line, text } => ConfigError::EnvFile { line, text },
        DotenvError::Other(detail) => ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(detail),
        },
    })
}

/// Why `.env` text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    #[error("line {line}: cannot parse `{text}`")]
    Line { line: usize, text: String },
    #[error("{0}")]
    Other(String),
}

/// Parses `.env` text with dotenvy's parser (inline `# comments`, spaces around `=`), turning
/// a parse failure into the line number a person can find. Never sets anything in the process
/// environment and never panics, whatever the text.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut out = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(pair) => out.push(pair),
            Err(dotenvy::Error::LineParse(bad, _)) => {
                let first = bad.lines().next().unwrap_or("").to_string();
                let line = error_line(text, &first);
                return Err(DotenvError::Line { line, text: first });
            }
            Err(e) => return Err(DotenvError::Other(e.to_string())),
        }
    }
    Ok(out)
}

/// The line (from 1) where the entry dotenvy could not parse starts: the first line holding its
/// text such that everything before it parses and everything through it does not. (A comment or
/// an earlier value may hold the same text.)
fn error_line(text: &str, bad: &str) -> usize {
    let parses = |t: &str| dotenvy::from_read_iter(t.as_bytes()).all(|item| item.is_ok());
    let mut start = 0;
    let mut fallback = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let end = start + line.len();
        if line.contains(bad) {
            if fallback == 0 {
                fallback = i + 1;
            }
            if parses(&text[..start]) && !parses(&text[..end]) {
                return i + 1;
            }
        }
        start = end;
    }
    fallback
}

/// The settings table in Markdown, for the README (`dpms settings`).
pub fn settings_table() -> String {
    let mut out = String::from("| setting | default | meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "(unset)"
        } else {
            s.default
        };
        let _ = writeln!(out, "| `{}` | `{}` | {} |", s.name, default, s.doc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dotenv: &[(&str, &str)], env: &[(&str, &str)]) -> Sources {
        let to_map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Sources::new(to_map(dotenv), to_map(env), Overrides::default())
    }

    #[test]
    fn later_sources_win() {
        let dir = std::env::temp_dir();
        let tmp = dir.display().to_string();
        let s = sources(
            &[("NUM_URL_PARMS", "3"), ("DEBUG", "True")],
            &[("NUM_URL_PARMS", "2"), ("plugins", &tmp)],
        );
        let c = s.config(&dir).map_err(|e| e.to_string());
        let c = c.as_ref().map_err(String::as_str);
        assert_eq!(
            c.map(|c| c.url_parm_names.clone()),
            Ok(vec!["parm_1", "parm_2"])
        );
        assert_eq!(c.map(|c| c.debug), Ok(true));
    }

    #[test]
    fn sandbox_mode_is_strict_unless_relaxed() {
        let dir = std::env::temp_dir();
        let tmp = dir.display().to_string();
        for (value, relaxed) in [
            (None, false),
            (Some("strict"), false),
            (Some(" Relaxed "), true),
        ] {
            let mut env = vec![("plugins", tmp.as_str())];
            env.extend(value.map(|v| ("DPMS_SANDBOX", v)));
            let c = sources(&[], &env).config(&dir).map(|c| c.sandbox_relaxed);
            assert_eq!(c.ok(), Some(relaxed), "{value:?}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = std::env::temp_dir();
        for (key, value) in [
            ("NUM_URL_PARMS", "ten"),
            ("ADMIN_ID", "not-a-uuid"),
            ("DEBUG", "maybe"),
            ("plugins", "/no/such/folder"),
            ("DPMS_RELOAD", "sometimes"),
            ("DPMS_SANDBOX", "off"),
        ] {
            let tmp = dir.display().to_string();
            let env = [("plugins", tmp.as_str()), (key, value)];
            let err = sources(&[], &env).config(&dir).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(key)),
                "{key}: {err:?}"
            );
        }
    }

    #[test]
    fn original_env_file_loads() {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join(".env"),
            "MULTI_TENANT=False\nMONGO_URI=mongodb://x:1/?a=1\nNUM_URL_PARMS = 3  # comment\nURL_PARM1=p1       # note\n",
        )
        .ok();
        std::fs::create_dir_all(dir.join("plugins")).ok();
        let s = Sources::load(&dir, Overrides::default()).map_err(|e| e.to_string());
        let s = s.as_ref().map_err(String::as_str);
        let c = s.map(|s| s.config(&dir).map(|c| (c.url_parm_names, c.extra_env)).ok());
        let mongo = vec![("MONGO_URI".to_string(), "mongodb://x:1/?a=1".to_string())];
        assert_eq!(c, Ok(Some((vec!["p1", "parm_2", "parm_3"], mongo))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn broken_env_file_reports_its_line() {
        let dir = tempfile_dir();
        std::fs::write(dir.join(".env"), "A=1\nB=two words\n").ok();
        let err = Sources::load(&dir, Overrides::default())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("line 2")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_example_lists_every_setting() {
        let example = include_str!("../.env.example");
        for setting in SETTINGS {
            assert!(
                example.contains(setting.name),
                "`.env.example` lacks {}",
                setting.name
            );
        }
    }

    #[test]
    fn a_config_round_trips_through_json() -> Result<(), serde_json::Error> {
        use std::os::unix::ffi::OsStringExt as _;
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("plugins")).ok();
        let env = [
            ("NUM_URL_PARMS", "3"),
            ("URL_PARM2", "second"),
            ("ADMIN_ID", "7f1c2a52-5b0e-4d7e-9a8f-3c1d2e4f5a6b"),
            ("MAX_FUNCTION_SECS", "2.5"),
            ("DPMS_RELOAD", "never"),
            ("DPMS_HOST", "::1"),
            ("DPMS_WORKER_MEMORY", "512"),
        ];
        let s = sources(
            &[("MONGO_URI", "mongodb://x:1/?a=1"), ("DEBUG", "on")],
            &env,
        );
        let mut config = match s.config(&dir) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        // What the checks never produce but a path may be: not UTF-8.
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/caf\xe9".to_vec()));
        config.plugin_dirs.push(odd.clone());
        config.state_dir = Some(odd);
        let json = serde_json::to_vec(&config)?;
        let back: Config = serde_json::from_slice(&json)?;
        assert_eq!(back, config);
        assert_eq!(back.url_parm_names, ["parm_1", "second", "parm_3"]);
        assert_eq!(
            back.extra_env,
            [("MONGO_URI".into(), "mongodb://x:1/?a=1".into())]
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_config_with_an_unknown_field_is_refused() -> Result<(), serde_json::Error> {
        let dir = std::env::temp_dir();
        let tmp = dir.display().to_string();
        let config = match sources(&[], &[("plugins", &tmp)]).config(&dir) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let mut value = serde_json::to_value(&config)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("from_a_newer_build".into(), serde_json::Value::Bool(true));
        }
        assert!(serde_json::from_value::<Config>(value).is_err());
        Ok(())
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dpms-config-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).ok();
        dir
    }
}

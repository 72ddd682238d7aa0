//! The test fixture: a real `dpms` process on a loopback port picked by the kernel, serving a
//! temporary plugin folder, killed when the fixture is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

/// How long a server may take to load its plugins and print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestServer {
    child: Child,
    pub base: String,
    pub plugins: PathBuf,
    workdir: TempDir,
    agent: ureq::Agent,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `(status, error code)` of an error response.
    pub fn error(&self) -> (u16, String) {
        let code = self.json()["error"].as_str().unwrap_or("").to_string();
        (self.status, code)
    }

    /// The single result under `response` in the success envelope.
    pub fn result(&self) -> Value {
        let body = self.json();
        body["response"]
            .as_object()
            .and_then(|m| m.values().next().cloned())
            .unwrap_or(Value::Null)
    }
}

/// The path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dpms")
}

impl TestServer {
    /// Starts a server with `files` written into a fresh plugin folder and `env` set.
    pub fn start(files: &[(&str, &str)], env: &[(&str, &str)]) -> TestServer {
        Self::start_with(binary(), files, env)
    }

    pub fn start_with(bin: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> TestServer {
        let workdir = tempfile::tempdir().expect("temp dir");
        let plugins = workdir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("plugin dir");
        for (name, source) in files {
            write_atomic(&plugins.join(format!("{name}.py")), source);
        }
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .current_dir(workdir.path())
            .env("plugins", &plugins)
            .env_remove("DPMS_PLUGINS")
            .env_remove("VIRTUAL_ENV")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(workdir.path().join("server.log")).expect("log file"),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start dpms");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(workdir.path().join("server.log")).unwrap_or_default();
                panic!("dpms did not start; its log:\n{log}");
            }
        };
        let base = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        );
        TestServer {
            child,
            base,
            plugins,
            workdir,
            agent,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.path().join("server.log")).unwrap_or_default()
    }

    /// The log once it contains `needle` (lines are written by a background thread, so a line
    /// for a finished request may land a moment later); the log as it is after 10 s otherwise.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a plugin by rename (what deploy tools do).
    pub fn write(&self, name: &str, source: &str) {
        write_atomic(&self.plugins.join(format!("{name}.py")), source);
    }

    /// Rewrites a plugin in place (truncate and write), the racy case for freshness.
    pub fn write_in_place(&self, name: &str, source: &str) {
        std::fs::write(self.plugins.join(format!("{name}.py")), source).expect("write plugin");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.plugins.join(format!("{name}.py"))).expect("remove plugin");
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    /// A GET on a new connection (`Connection: close`), so the kernel may hand it to any worker.
    pub fn get_fresh(&self, path: &str) -> Reply {
        self.try_get(path).expect("HTTP request")
    }

    /// The supervisor's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; its exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// [`Self::get_fresh`] where the request may fail (the worker serving it may die): `None` then.
    pub fn try_get(&self, path: &str) -> Option<Reply> {
        let request = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}{}", self.base, path))
            .header("connection", "close")
            .body(Vec::new())
            .expect("request");
        self.try_send(request)
    }

    pub fn post_json(&self, path: &str, body: &str) -> Reply {
        self.request("POST", path, Some(("application/json", body.as_bytes())))
    }

    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Reply {
        let url = format!("{}{}", self.base, path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some((ct, _)) = body {
            builder = builder.header("content-type", ct);
        }
        let request = builder
            .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
            .expect("request");
        self.send(request)
    }

    fn send(&self, request: ureq::http::Request<Vec<u8>>) -> Reply {
        self.try_send(request).expect("HTTP request")
    }

    fn try_send(&self, request: ureq::http::Request<Vec<u8>>) -> Option<Reply> {
        let mut resp = self.agent.run(request).ok()?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Some(Reply {
            status,
            headers,
            text,
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_atomic(path: &Path, source: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, source).expect("write temp plugin");
    std::fs::rename(&tmp, path).expect("rename plugin");
}

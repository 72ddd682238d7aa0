//! The sandbox layers against the real kernel (SPEC §11 promises 2–5, 9). Forking inside
//! the multi-threaded test harness is unsafe, so each test runs `dpms sandbox-exec`, which
//! enters the sandbox in a fresh single-threaded process and then runs Python 3.11.
//! Needs root (the tenant's host uid is set by `setresuid`), as on the CI machines.

// A test that cannot set up its fixture should panic there, as in tests/it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3.11";

/// The read-only set the zygote child needs for Python 3.11 and its C extensions.
const READ_ONLY: &[&str] = &["/usr", "/lib", "/lib64", "/etc/ld.so.cache"];

fn sandbox(extra: &[&str], script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpms"));
    cmd.arg("sandbox-exec");
    for path in READ_ONLY {
        cmd.args(["--ro", path]);
    }
    cmd.args(extra)
        .args(["--", PYTHON, "-I", "-c", script])
        .args(args)
        .env("DPMS_HOST_ONLY", "must-not-leak");
    cmd
}

/// A folder outside every read-only path, standing in for another tenant's files.
fn outside_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    dir
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// Kills the sandbox (the middle process exits with its child) on drop.
struct Held(Child, i32);
impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: a signal to the sandbox's pid 1, which this test started.
        unsafe { libc::kill(self.1, libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a held sandbox (it prints `ready`, then waits on stdin) and finds its pid 1, the
/// middle process's only child.
fn hold(mut cmd: Command) -> Held {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let middle = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let children = read(&format!("/proc/{middle}/task/{middle}/children"));
    let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    Held(child, pid)
}

const HOLD: &str = r#"
import sys, threading
t = threading.Thread(target=sys.stdin.read, daemon=True)
t.start()
print("ready", flush=True)
t.join()
"#;

#[test]
fn boundary_facts_seen_from_the_host() {
    let held = hold(sandbox(
        &[
            "--env",
            "SECRET=s3",
            "--comm",
            "dpms-t-0badcafe",
            "--uid",
            "200001",
            "--nofile",
            "77",
        ],
        HOLD,
        &[],
    ));
    let pid = held.1;

    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(tasks.len() >= 2, "the Python thread is running: {tasks:?}");
    for tid in &tasks {
        let status = read(&format!("/proc/{pid}/task/{tid}/status"));
        assert_eq!(
            status_field(&status, "Uid"),
            "200001\t200001\t200001\t200001"
        );
        assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
        assert_eq!(status_field(&status, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        assert_eq!(status_field(&status, "Seccomp"), "2", "thread {tid}");
    }
    for ns in ["user", "pid", "net", "ipc", "uts", "mnt"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace");
    }
    let limits = read(&format!("/proc/{pid}/limits"));
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(limit("Max core file size").contains("0 0 bytes"));
    assert!(limit("Max open files").contains("77 77 files"));
    assert!(limit("Max file size").contains("1048576 1048576 bytes"));
    assert!(limit("Max processes").contains("32 32 processes"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut env: Vec<_> = environ
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    env.sort();
    assert_eq!(
        env,
        ["HOME=/tmp", "LANG=C.UTF-8", "SECRET=s3", "TMPDIR=/tmp"]
    );
    assert_eq!(
        read(&format!("/proc/{pid}/comm")).trim(),
        PYTHON.rsplit('/').next().unwrap()
    );
    drop(held);
}

/// The checks made from inside: every one must be refused.
const INSIDE: &str = r#"
import ctypes, errno, json, os, socket, sqlite3, sys
other, link, host_pid, port, unix_path = sys.argv[1:6]
fails = []
def refused(what, fn, *codes):
    try:
        fn()
    except OSError as e:
        if codes and e.errno not in codes:
            fails.append(f"{what}: errno {e.errno}")
        return
    fails.append(f"{what}: allowed")
for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
    refused(f"socket {fam}", lambda: socket.socket(fam), errno.EPERM)
refused("connect 127.0.0.1", lambda: socket.create_connection(("127.0.0.1", int(port)), 1))
refused("connect unix path", lambda: socket.socket(socket.AF_UNIX).connect(unix_path))
a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
for p in ("/etc/shadow", other + "/secret.txt", "/usr/.." + other + "/secret.txt", link,
          "/proc/1/root/etc/passwd", "/root/.bashrc"):
    refused("read " + p, lambda: open(p).read())
refused("write outside", lambda: open("/usr/dpms-x", "w"))
refused("write other", lambda: open(other + "/new", "w"))
open("/tmp/ok", "w").write("fine")
refused("scratch cap", lambda: open("/tmp/big", "wb").write(b"x" * (3 << 20)), errno.ENOSPC, errno.EFBIG)
refused("kill -1", lambda: os.kill(-1, 9))
refused("kill host", lambda: os.kill(int(host_pid), 0))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(15, b"evil", 0, 0, 0) == 0: fails.append("PR_SET_NAME allowed")
if libc.unshare(0x10000000) == 0: fails.append("unshare allowed")
assert sqlite3.connect(":memory:").execute("select 1").fetchone() == (1,)
json.dumps({"ok": 1})
children, bomb = 0, None
for _ in range(500):
    try:
        pid = os.fork()
    except OSError as e:
        bomb = e.errno
        break
    if pid == 0:
        __import__("time").sleep(3)
        os._exit(0)
    children += 1
if bomb != errno.EAGAIN or children >= 32: fails.append(f"fork bomb: {children} {bomb}")
print(json.dumps(fails))
"#;

#[test]
fn nothing_outside_is_reachable_from_inside() {
    let other = outside_dir("sandbox-other-tenant");
    let link = other.parent().unwrap().join("sandbox-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(other.join("secret.txt"), &link).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let unix_path = other.parent().unwrap().join("sandbox-world.sock");
    let _ = std::fs::remove_file(&unix_path);
    let _unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
    std::fs::set_permissions(
        &unix_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let host_pid = std::process::id().to_string();
    let out = sandbox(
        &[
            "--uid",
            "200002",
            "--scratch-bytes",
            "2097152",
            "--fsize-bytes",
            "8388608",
        ],
        INSIDE,
        &[
            other.to_str().unwrap(),
            link.to_str().unwrap(),
            &host_pid,
            &port,
            unix_path.to_str().unwrap(),
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "[]");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing connected to the test's port"
    );
}

#[test]
fn a_spec_that_cannot_be_applied_runs_nothing() {
    for extra in [
        &["--ro", "/does/not/exist"][..],
        &["--uid", "0"][..],
        &["--comm", "a-name-longer-than-15"][..],
    ] {
        let out = sandbox(extra, "print('ran')", &[]).output().unwrap();
        assert!(!out.status.success(), "{extra:?}");
        assert!(out.stdout.is_empty(), "{extra:?} ran the command");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("sandbox") || stderr.contains("invalid"),
            "{stderr}"
        );
    }
}

/// Without an exec the process keeps the `comm` the sandbox set (the zygote's case).
#[test]
fn comm_is_kept_without_exec() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpms"));
    cmd.args([
        "sandbox-exec",
        "--comm",
        "dpms-t-1234abcd",
        "--uid",
        "200003",
    ])
    .args(["--ro", "/usr", "--", "__hold__"]);
    let held = hold(cmd);
    let pid = held.1;
    assert_eq!(read(&format!("/proc/{pid}/comm")).trim(), "dpms-t-1234abcd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let tasks = loop {
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if tasks.len() >= 2 || Instant::now() > deadline {
            break tasks;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(tasks.len() >= 2, "{tasks:?}");
    for tid in &tasks {
        let status = read(&format!("/proc/{pid}/task/{tid}/status"));
        assert_eq!(status_field(&status, "Seccomp"), "2", "thread {tid}");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "thread {tid}");
    }
    drop(held);
}

#[test]
fn probe_finds_every_layer_on_this_kernel() {
    let out = Command::new(env!("CARGO_BIN_EXE_dpms"))
        .arg("sandbox-probe")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("missing: []"), "{stdout}");
}

#[test]
fn enter_time_is_printed() {
    let started = Instant::now();
    let out = sandbox(&["--time"], "pass", &[]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sandbox-enter-us "));
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = std::io::stdout().flush();
}

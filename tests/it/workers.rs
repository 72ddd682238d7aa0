//! Worker processes (SPEC §9): every worker serves, a dead one is replaced, freshness holds
//! across all of them, and SIGTERM stops the whole tree.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::TestServer;

const PID_PLUGIN: &str = "import os\nfrom dpms import expose\n@expose.endpoint(API='pid')\ndef pid():\n    return os.getpid()\n";

fn worker_of(r: &crate::support::Reply) -> String {
    r.header("x-dpms-worker").unwrap_or("?").to_string()
}

#[test]
fn every_worker_serves() {
    let s = TestServer::start(&[("pidp", PID_PLUGIN)], &[("DPMS_WORKERS", "2")]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let r = s.get_fresh("/rest/services/pid/");
        assert_eq!(r.status, 200, "{}", r.text);
        seen.insert(worker_of(&r));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["0", "1"]);
}

#[test]
fn a_killed_worker_is_replaced_and_requests_keep_succeeding() {
    let s = TestServer::start(&[("pidp", PID_PLUGIN)], &[("DPMS_WORKERS", "2")]);
    let victim = s.get_fresh("/rest/services/pid/");
    let (index, pid) = (worker_of(&victim), victim.result());
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replaced = false;
    while Instant::now() < deadline && !replaced {
        let r = s.get_fresh("/rest/services/pid/");
        assert_eq!(r.status, 200, "a request failed after the kill: {}", r.text);
        replaced = worker_of(&r) == index && r.result() != pid;
    }
    assert!(
        replaced,
        "worker {index} was not replaced; log:\n{}",
        s.log()
    );
}

#[test]
fn freshness_holds_across_workers() {
    let version = |n: u32| {
        format!("from dpms import expose\n@expose.endpoint(API='v')\ndef v():\n    return {n}\n")
    };
    let s = TestServer::start(&[("ver", &version(0))], &[("DPMS_WORKERS", "2")]);
    for n in 1..4 {
        s.write("ver", &version(n));
        for _ in 0..20 {
            let r = s.get_fresh("/rest/services/v/");
            assert_eq!(r.result(), n, "worker {} answered stale", worker_of(&r));
        }
    }
}

#[test]
fn a_blocked_call_does_not_stall_a_fast_one_on_the_same_worker() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let plugin = format!(
        "import os, time\nfrom dpms import expose\n\
         @expose.endpoint(API='wait-for-release')\ndef wait():\n    \
         for _ in range(2000):\n        if os.path.exists({release:?}):\n            return 'released'\n        time.sleep(0.01)\n    return 'gave up'\n\
         @expose.endpoint(API='quick')\ndef quick():\n    return 'quick'\n\
         @expose.endpoint(API='hinted', blocking=True)\ndef hinted():\n    return 'hinted'\n"
    );
    let s = TestServer::start(&[("blocking", &plugin)], &[("DPMS_WORKERS", "1")]);
    // Warm up: `quick` earns the inline path, `hinted` stays on the pool whatever it takes.
    for _ in 0..40 {
        assert_eq!(s.get("/rest/services/quick/").result(), "quick");
        assert_eq!(s.get("/rest/services/hinted/").result(), "hinted");
    }
    let dir = s.get("/rest/services/__dir__/").json();
    assert_eq!(
        dir["endpoints"]["GET"]["quick"]["schedule"], "inline",
        "{dir}"
    );
    assert_eq!(
        dir["endpoints"]["GET"]["hinted"]["schedule"], "blocking",
        "{dir}"
    );
    let base = s.base.clone();
    let slow = std::thread::spawn(move || {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        agent
            .get(format!("{base}/rest/services/wait-for-release/"))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
    });
    for _ in 0..5 {
        assert_eq!(s.get_fresh("/rest/services/quick/").result(), "quick");
    }
    // The fast calls were answered while the slow one is still waiting for the release file.
    assert!(!slow.is_finished());
    release_file(&release);
    let body = slow.join().unwrap().unwrap();
    assert!(body.contains("released"), "{body}");
}

fn release_file(path: &Path) {
    std::fs::write(path, b"go").unwrap();
}

#[test]
fn sigterm_stops_the_supervisor_and_its_workers() {
    let mut s = TestServer::start(
        &[("pidp", PID_PLUGIN)],
        &[("DPMS_WORKERS", "2"), ("DPMS_SHUTDOWN_SECS", "2")],
    );
    let worker_pid = s.get_fresh("/rest/services/pid/").result();
    assert_eq!(s.terminate(Duration::from_secs(10)), Some(0));
    let alive = Path::new(&format!("/proc/{worker_pid}")).exists();
    assert!(!alive, "worker {worker_pid} outlived its supervisor");
}

/// A plugin that ends its process (`os._exit`, a segfault through ctypes) costs only the
/// worker that ran it: the other worker keeps answering, and the dead one is replaced.
#[test]
fn a_plugin_that_kills_its_worker_costs_only_that_worker() {
    let plugin = "import os, ctypes\nfrom dpms import expose\n\
                  @expose.endpoint(API='exit-now')\ndef exit_now():\n    os._exit(7)\n\
                  @expose.endpoint(API='segfault')\ndef segfault():\n    return ctypes.string_at(0)\n";
    let s = TestServer::start(
        &[("pidp", PID_PLUGIN), ("crash", plugin)],
        &[("DPMS_WORKERS", "2")],
    );
    for (n, crasher) in ["/rest/services/exit-now/", "/rest/services/segfault/"]
        .into_iter()
        .enumerate()
    {
        // The crashing call gets no answer: its connection closes with the process.
        assert!(s.try_get(crasher).is_none_or(|r| r.status >= 500));
        // Every request after the crash succeeds, and within the deadline the supervisor has
        // replaced the dead worker and both slots answer again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut slots = std::collections::BTreeSet::new();
        let replaced = |s: &TestServer| s.log().matches("worker exited; replacing it").count() > n;
        while Instant::now() < deadline && (slots.len() < 2 || !replaced(&s)) {
            let r = s.get_fresh("/rest/services/pid/");
            assert_eq!(
                r.status, 200,
                "a request failed after {crasher}: {}",
                r.text
            );
            slots.insert(worker_of(&r));
        }
        assert!(
            slots.len() == 2 && replaced(&s),
            "no replacement after {crasher}:\n{}",
            s.log()
        );
    }
}

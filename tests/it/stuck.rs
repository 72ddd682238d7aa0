//! Code that does not stop by itself (SPEC §9, the robustness issue): imports and calls past
//! their deadlines are stopped inside the interpreter; what cannot be stopped there (a C call)
//! retires the worker, and an import that kills or hangs its worker is quarantined instead of
//! being retried forever.

use std::time::{Duration, Instant};

use crate::support::TestServer;

const FINE: &str = "import os\nfrom dpms import expose\n\
                    @expose.endpoint(API='fine')\ndef fine():\n    return 'fine'\n\
                    @expose.endpoint(API='pid')\ndef pid():\n    return os.getpid()\n";

/// The problems `__dir__` lists, as text.
fn dir_problems(s: &TestServer) -> String {
    s.get("/rest/services/__dir__/").text
}

#[test]
fn an_import_that_never_returns_is_stopped_and_the_others_load() {
    let spin = "from dpms import expose\nwhile True:\n    pass\n";
    let s = TestServer::start(
        &[("spinimport", spin), ("fine", FINE)],
        &[("DPMS_LOAD_SECS", "0.5"), ("DPMS_WORKERS", "1")],
    );
    assert_eq!(s.get("/rest/services/fine/").result(), "fine");
    let dir = dir_problems(&s);
    assert!(
        dir.contains("spinimport") && dir.contains("ImportTimeout"),
        "{dir}"
    );
}

#[test]
fn an_import_stuck_in_c_is_quarantined_and_its_worker_replaced() {
    let stuck = "import ctypes\nctypes.CDLL(None).sleep(1000)\n";
    let s = TestServer::start(
        &[("stuckimport", stuck), ("fine", FINE)],
        &[
            ("DPMS_LOAD_SECS", "0.5"),
            ("DPMS_WORKERS", "1"),
            ("DPMS_SHUTDOWN_SECS", "1"),
        ],
    );
    assert_eq!(s.get("/rest/services/fine/").result(), "fine");
    let dir = dir_problems(&s);
    assert!(
        dir.contains("stuckimport") && dir.contains("quarantined"),
        "{dir}"
    );
    assert!(s
        .log_with("retiring this worker")
        .contains("retiring this worker"));
}

#[test]
fn an_import_that_kills_its_worker_is_quarantined_after_two_tries() {
    let killer = "import os\nos._exit(3)\n";
    let s = TestServer::start(
        &[("killerimport", killer), ("fine", FINE)],
        &[("DPMS_WORKERS", "1")],
    );
    assert_eq!(s.get("/rest/services/fine/").result(), "fine");
    let dir = dir_problems(&s);
    assert!(
        dir.contains("killerimport") && dir.contains("killed the worker process 2 times"),
        "{dir}"
    );
    // Changing the file lifts the quarantine: the new content is imported.
    s.write(
        "killerimport",
        "from dpms import expose\n@expose.endpoint(API='healed')\ndef healed():\n    return 'healed'\n",
    );
    assert_eq!(s.get("/rest/services/healed/").result(), "healed");
}

#[test]
fn a_call_stuck_in_c_holding_the_gil_retires_its_worker_and_a_new_one_serves() {
    // `PyDLL` keeps the GIL during the C call (`CDLL` releases it: such a call is given up,
    // see pytests/test_faults.py).
    let stuck = "import ctypes\nfrom dpms import expose\n\
                 @expose.endpoint(API='stuck', blocking=True)\ndef stuck():\n    ctypes.PyDLL(None).sleep(1000)\n";
    let s = TestServer::start(
        &[("stuck", stuck), ("fine", FINE)],
        &[
            ("MAX_FUNCTION_SECS", "0.5"),
            ("DPMS_WORKERS", "1"),
            ("DPMS_SHUTDOWN_SECS", "1"),
        ],
    );
    let before = s.get_fresh("/rest/services/pid/").result();
    assert_eq!(
        s.get_fresh("/rest/services/stuck/").error(),
        (504, "timeout".into())
    );
    // Until it stops accepting, the stuck worker answers 504 (nothing can run Python there);
    // soon a new process answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s.get_fresh("/rest/services/pid/");
        assert!(r.status == 200 || r.status == 504, "{}", r.text);
        if r.status == 200 && r.result() != before {
            break;
        }
        assert!(Instant::now() < deadline, "not replaced:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s
        .log_with("retiring this worker")
        .contains("holds the GIL (stuck in C code)"));
}

#[test]
fn an_inline_call_that_starts_looping_is_stopped_at_the_deadline() {
    let plugin = "from dpms import expose\n\
                  @expose.endpoint(API='maybe')\ndef maybe(spin='0'):\n    while spin == '1':\n        pass\n    return 'done'\n";
    let s = TestServer::start(
        &[("maybe", plugin), ("fine", FINE)],
        &[("MAX_FUNCTION_SECS", "0.5"), ("DPMS_WORKERS", "1")],
    );
    // Fast calls promote the endpoint to run inline on the I/O thread.
    for _ in 0..40 {
        assert_eq!(s.get("/rest/services/maybe/").result(), "done");
    }
    let r = s.get("/rest/services/maybe/?spin=1");
    assert_eq!(r.error(), (504, "timeout".into()), "{}", r.text);
    assert_eq!(s.get("/rest/services/fine/").result(), "fine");
    assert_eq!(s.get("/rest/services/maybe/").result(), "done");
}

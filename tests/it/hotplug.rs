//! Freshness (SPEC §2): a file written before a request is the code that request runs.

use crate::support::TestServer;

fn versioned(n: usize) -> String {
    // Same size for every single-digit n: the hard case for (mtime, size) checks.
    format!("from dpms import expose\n\n@expose.endpoint(API='version')\ndef version():\n    return {n}\n")
}

fn edit_loop(s: &TestServer, in_place: bool) {
    let mut stale = 0;
    for i in 0..25 {
        let n = i % 10;
        if in_place {
            s.write_in_place("versioned", &versioned(n));
        } else {
            s.write("versioned", &versioned(n));
        }
        let r = s.get("/rest/services/version/");
        if r.result() != n {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale answers out of 25");
}

#[test]
fn edits_are_never_stale_in_changed_mode() {
    let s = TestServer::start(&[("versioned", &versioned(0))], &[]);
    edit_loop(&s, false);
    edit_loop(&s, true);
}

#[test]
fn edits_are_never_stale_with_stat_checks() {
    let s = TestServer::start(&[("versioned", &versioned(0))], &[("DPMS_WATCH", "stat")]);
    edit_loop(&s, false);
    edit_loop(&s, true);
    s.write(
        "added",
        "from dpms import expose\n@expose.endpoint(API='added')\ndef a():\n    return 1\n",
    );
    assert_eq!(s.get("/rest/services/added/").result(), 1);
    s.remove("added");
    assert_eq!(s.get("/rest/services/added/").status, 404);
}

#[test]
fn edits_are_never_stale_in_always_mode() {
    let s = TestServer::start(
        &[("versioned", &versioned(0))],
        &[("DPMS_RELOAD", "always")],
    );
    edit_loop(&s, true);
}

#[test]
fn never_mode_keeps_the_first_version() {
    let s = TestServer::start(&[("versioned", &versioned(7))], &[("DPMS_RELOAD", "never")]);
    s.write("versioned", &versioned(3));
    assert_eq!(s.get("/rest/services/version/").result(), 7);
}

#[test]
fn add_edit_delete_and_broken_files() {
    let s = TestServer::start(&[("versioned", &versioned(1))], &[]);
    assert_eq!(s.get("/rest/services/fresh/").status, 404);
    s.write(
        "fresh",
        "from vyperlogix.decorators import expose\n@expose.endpoint(API='fresh')\ndef f():\n    return 'new'\n",
    );
    let r = s.get("/rest/services/fresh/");
    assert_eq!((r.status, r.result()), (200, "new".into()), "{}", r.text);

    s.remove("fresh");
    assert_eq!(s.get("/rest/services/fresh/").status, 404);

    s.write("broken", "def oops(:\n");
    let dir = s.get("/rest/services/__dir__/").json();
    let err = dir["imports"]["broken.py"]["error"].as_str().unwrap_or("");
    assert!(err.starts_with("SyntaxError"), "{dir}");
    assert_eq!(s.get("/rest/services/version/").result(), 1);

    // A served module that stops importing answers 500 until it is fixed.
    s.write("versioned", "raise RuntimeError('half-deployed')\n");
    let r = s.get("/rest/services/version/");
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.json()["error"], "plugin_import_error");
    assert_eq!(r.json()["exception"], "RuntimeError: half-deployed");
    s.write("versioned", &versioned(2));
    assert_eq!(s.get("/rest/services/version/").result(), 2);
}

#[test]
fn helper_changes_reimport_dependents() {
    let s = TestServer::start(
        &[
            ("shared_helper", "VALUE = 'one'\n"),
            (
                "uses_helper",
                "import shared_helper\nfrom dpms import expose\n@expose.endpoint(API='helper-value')\ndef v():\n    return shared_helper.VALUE\n",
            ),
        ],
        &[],
    );
    assert_eq!(s.get("/rest/services/helper-value/").result(), "one");
    s.write("shared_helper", "VALUE = 'two'\n");
    assert_eq!(s.get("/rest/services/helper-value/").result(), "two");
}

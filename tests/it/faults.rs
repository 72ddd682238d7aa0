//! A faulty plugin hurts only its own request.

use crate::support::TestServer;

const FAULTY: &str = r#"
import time
from dpms import expose

@expose.endpoint(API='raises')
def raises():
    raise ValueError('boom')

@expose.endpoint(API='exits')
def exits():
    raise SystemExit(3)

@expose.endpoint(API='sleeps')
def sleeps(seconds='2'):
    time.sleep(float(seconds))
    return 'slept'

@expose.endpoint(API='cycle')
def cycle():
    x = []
    x.append(x)
    return x

@expose.endpoint(API='fine')
def fine():
    return 'fine'
"#;

#[test]
fn exceptions_and_bad_results_stay_in_their_request() {
    let s = TestServer::start(&[("faulty", FAULTY)], &[]);
    let r = s.get("/rest/services/raises/");
    assert_eq!(r.status, 500);
    let body = r.json();
    assert_eq!(body["error"], "plugin_error");
    assert_eq!(body["exception"], "ValueError: boom");
    assert_eq!(body["status"], "raises raised ValueError: boom");
    assert!(body.get("traceback").is_none());

    let r = s.get("/rest/services/exits/");
    assert_eq!(
        (r.status, r.json()["exception"].clone()),
        (500, "SystemExit: 3".into())
    );

    let r = s.get("/rest/services/cycle/");
    assert_eq!(r.error(), (500, "unserializable_result".into()));

    assert_eq!(s.get("/rest/services/fine/").result(), "fine");
}

#[test]
fn deadline_answers_504() {
    let s = TestServer::start(&[("faulty", FAULTY)], &[("MAX_FUNCTION_SECS", "0.3")]);
    let r = s.get("/rest/services/sleeps/?seconds=3");
    assert_eq!(r.error(), (504, "timeout".into()));
    assert_eq!(s.get("/rest/services/fine/").result(), "fine");
}

#[test]
fn plugin_output_goes_to_the_log_tagged_with_its_module() {
    let chatty = "import sys\nfrom dpms import expose\n@expose.endpoint(API='chatty')\ndef chatty():\n    print('hello from chatty')\n    print('oops', file=sys.stderr)\n    return 'ok'\n";
    let s = TestServer::start(&[("chatty", chatty)], &[]);
    assert_eq!(s.get("/rest/services/chatty/").result(), "ok");
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("hello from chatty"))
        .unwrap_or_else(|| panic!("not in the log:\n{log}"));
    assert!(
        line.contains("module=\"chatty\"") || line.contains("module=chatty"),
        "{line}"
    );
    assert!(log.contains("oops"), "{log}");
}

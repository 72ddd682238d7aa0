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
fn plugin_output_goes_to_the_log_tagged_with_its_module_and_request() {
    let chatty = "import sys\nfrom dpms import expose\n@expose.endpoint(API='chatty')\ndef chatty():\n    print('hello from chatty')\n    print('oops', file=sys.stderr)\n    return 'ok'\n";
    let s = TestServer::start(&[("chatty", chatty)], &[]);
    let r = s.get("/rest/services/chatty/");
    assert_eq!(r.result(), "ok");
    let id = r.header("x-request-id").unwrap_or("no id").to_string();
    // The access line is written after the print lines: once it is there, all of them are.
    let log = s.log_with("status=200 endpoint=\"chatty.chatty\"");
    let line = log
        .lines()
        .find(|l| l.contains("hello from chatty"))
        .unwrap_or_else(|| panic!("not in the log:\n{log}"));
    assert!(
        line.contains("module=\"chatty\"") || line.contains("module=chatty"),
        "{line}"
    );
    assert!(line.contains(&format!("id={id}")), "{line}");
    assert!(log.contains("oops"), "{log}");
    let access = log
        .lines()
        .find(|l| l.contains("dpms::access") && l.contains("chatty"))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    for field in [
        "method=GET",
        "path=/rest/services/chatty/",
        "status=200",
        "remote=127.0.0.1:",
        &format!("id={id}"),
    ] {
        assert!(access.contains(field), "`{field}` missing: {access}");
    }
}

#[test]
fn output_from_imports_and_plugin_threads_names_its_module() {
    let threaded = "import threading\nfrom dpms import expose\nprint('importing threaded')\n\
                    @expose.endpoint(API='spawn')\ndef spawn():\n    \
                    t = threading.Thread(target=lambda: print('from a plugin thread'))\n    \
                    t.start()\n    t.join()\n    return 'spawned'\n";
    let s = TestServer::start(&[("threaded", threaded)], &[]);
    assert_eq!(s.get("/rest/services/spawn/").result(), "spawned");
    let log = s.log_with("from a plugin thread");
    for text in ["importing threaded", "from a plugin thread"] {
        let line = log
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("`{text}` not in the log:\n{log}"));
        assert!(line.contains("module=\"threaded\""), "{line}");
    }
}

#[test]
fn a_full_call_queue_answers_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (started, release) = (dir.path().join("started"), dir.path().join("release"));
    let plugin = format!(
        "import os, time\nfrom dpms import expose\n\
         @expose.endpoint(API='hold', blocking=True)\ndef hold():\n    \
         open({started:?}, 'w').close()\n    \
         for _ in range(2000):\n        if os.path.exists({release:?}):\n            return 'done'\n        time.sleep(0.01)\n    return 'gave up'\n"
    );
    let s = TestServer::start(
        &[("hold", &plugin)],
        &[
            ("DPMS_WORKERS", "1"),
            ("DPMS_PY_THREADS", "1"),
            ("DPMS_MAX_QUEUE", "1"),
        ],
    );
    let call = |base: String| {
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build(),
            );
            let mut r = agent
                .get(format!("{base}/rest/services/hold/"))
                .call()
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (
                r.status().as_u16(),
                retry,
                r.body_mut().read_to_string().unwrap_or_default(),
            )
        })
    };
    let running = call(s.base.clone());
    for _ in 0..2000 {
        if started.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(started.exists(), "the first call never started");
    // One of these two waits in the queue, the other finds it full.
    let (b, c) = (call(s.base.clone()), call(s.base.clone()));
    let mut refused = None;
    for _ in 0..2000 {
        if b.is_finished() || c.is_finished() {
            refused = Some(if b.is_finished() {
                b.join().unwrap()
            } else {
                c.join().unwrap()
            });
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (status, retry, body) =
        refused.expect("neither call was answered while the queue was full");
    assert_eq!((status, retry), (503, true), "{body}");
    assert!(body.contains("\"overloaded\""), "{body}");
    std::fs::write(&release, b"go").unwrap();
    assert_eq!(running.join().unwrap().0, 200);
}

#[test]
fn a_body_sent_too_slowly_gets_408_and_the_connection_closes() {
    use std::io::{Read, Write};
    let s = TestServer::start(&[("faulty", FAULTY)], &[("DPMS_BODY_SECS", "0.5")]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /rest/services/fine/ HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":")
        .unwrap();
    let mut answer = Vec::new();
    // read_to_end returns once the server closes the connection.
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[test]
fn a_runaway_loop_is_stopped_at_the_deadline_and_frees_its_thread() {
    let plugin = "from dpms import expose\n\
                  @expose.endpoint(API='spin', blocking=True)\ndef spin():\n    while True:\n        pass\n\
                  @expose.endpoint(API='after', blocking=True)\ndef after():\n    return 'free'\n";
    // One Python thread: `after` can only run if the loop's thread was given back.
    let s = TestServer::start(
        &[("spin", plugin)],
        &[
            ("DPMS_WORKERS", "1"),
            ("DPMS_PY_THREADS", "1"),
            ("MAX_FUNCTION_SECS", "0.5"),
        ],
    );
    assert_eq!(
        s.get("/rest/services/spin/").error(),
        (504, "timeout".into())
    );
    let r = s.get("/rest/services/after/");
    assert_eq!((r.status, r.result()), (200, "free".into()), "{}", r.text);
}

//! Limits a client or a plugin cannot get past: slow headers, too many connections, too much
//! memory. Each is a setting; the tests set it low and check what a client sees.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::TestServer;

const FINE: &str =
    "from dpms import expose\n@expose.endpoint(API='fine')\ndef fine():\n    return 'fine'\n";

fn connect(s: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Sends one keep-alive GET and reads its response head and body (`content-length` framed).
fn exchange(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

#[test]
fn headers_sent_too_slowly_close_the_connection() {
    let s = TestServer::start(&[("fine", FINE)], &[("DPMS_HEADER_SECS", "0.5")]);
    let mut stream = connect(&s);
    stream
        .write_all(b"GET /rest/services/fine/ HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // read_to_end returns once the server closes the connection (the read timeout is 20 s).
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // An idle keep-alive connection is closed the same way.
    let mut idle = connect(&s);
    assert!(exchange(&mut idle, "/rest/services/fine/").starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
}

#[test]
fn connections_past_the_cap_wait_until_one_closes() {
    let s = TestServer::start(
        &[("fine", FINE)],
        &[("DPMS_MAX_CONNECTIONS", "2"), ("DPMS_WORKERS", "1")],
    );
    let mut first = connect(&s);
    let mut second = connect(&s);
    for c in [&mut first, &mut second] {
        assert!(exchange(c, "/rest/services/fine/").starts_with("HTTP/1.1 200"));
    }
    // The third connection is accepted by the kernel but not served while two are open.
    let mut third = connect(&s);
    third
        .write_all(b"GET /rest/services/fine/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    let waited = third.read(&mut buf);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "served past the cap: {waited:?}"
    );
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = third.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(exchange(&mut second, "/rest/services/fine/").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_memory_bomb_gets_memory_error_and_the_server_keeps_serving() {
    let plugin = "from dpms import expose\n\
                  @expose.endpoint(API='bomb', blocking=True)\ndef bomb():\n    return len(bytearray(8 * 1024 ** 3))\n\
                  @expose.endpoint(API='creep', blocking=True)\ndef creep():\n    hoard = []\n    while True:\n        hoard.append(bytearray(16 * 1024 ** 2))\n\
                  @expose.endpoint(API='fine')\ndef fine():\n    return 'fine'\n";
    let s = TestServer::start(
        &[("bombs", plugin)],
        &[("DPMS_WORKER_MEMORY", "2048"), ("DPMS_WORKERS", "1")],
    );
    let r = s.get("/rest/services/bomb/");
    assert_eq!(r.error(), (500, "plugin_error".into()));
    assert_eq!(r.json()["exception"], "MemoryError");
    assert_eq!(s.get("/rest/services/fine/").result(), "fine");

    // Growing until the limit: the plugin gets MemoryError, or — if an allocation outside
    // Python failed first — the worker is replaced. Either way the server serves again.
    let creep = s.try_get("/rest/services/creep/");
    if let Some(r) = creep {
        assert_eq!(r.error(), (500, "plugin_error".into()), "{}", r.text);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match s.try_get("/rest/services/fine/") {
            Some(r) if r.status == 200 => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "not serving after the bomb: {other:?}\n{}",
                s.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

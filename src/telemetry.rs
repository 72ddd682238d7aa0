//! Logging: a `tracing` subscriber writing to stderr (stdout carries only the `listening on`
//! line), filtered by `DPMS_LOG` or `RUST_LOG`.
//!
//! Lines are formatted on the thread that logs and written by a background thread through a
//! 64 KiB buffer that is flushed whenever the queue runs empty: under load a burst of lines
//! costs one `write`, idle lines appear at once. If more than 128k lines are queued (a disk
//! that stalls), further lines are dropped rather than stalling requests; a process that
//! crashes loses at most what was still queued.
//!
//! The access log (one line per request, target `dpms::access`) takes a cheaper road: going
//! through the subscriber cost ~5.7 µs per request (field visitors, a line buffer and a queue
//! message per line, and the writer thread woken per burst), a quarter of a hello-world
//! request. [`access`] formats the line straight into a shared buffer, in the subscriber's
//! own layout, and [`flush_access`] hands the whole buffer to the same background writer as
//! one message: when it holds [`ACCESS_BATCH`] bytes and whenever the I/O thread runs out of
//! work (the runtime's park hook). A line can therefore reach the log a few milliseconds after
//! lines the request logged through `tracing`.
//!
//! Every record is one line (SPEC §6): field values and messages are written through
//! [`Escaped`], which turns control characters (`\n`, `\r`, ESC, NEL, U+2028…) into their Rust
//! escapes, so nothing a client sends or a plugin prints or raises can start a line of its own.

use std::fmt;
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};
use tracing_subscriber::EnvFilter;

/// The log writer thread's guard: dropping it flushes what is queued.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// The background writer, for the access log's batches.
static WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// Access lines not yet handed to the writer.
static ACCESS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Access-log bytes gathered before they are handed over even while the I/O thread stays busy
/// (about 150 lines).
pub const ACCESS_BATCH: usize = 32 * 1024;

/// Whether access lines are written as JSON (`DPMS_LOG_FORMAT=json`).
static ACCESS_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the subscriber once; later calls do nothing. Lines are queued until [`flush`].
/// `json`: one JSON object per record (`DPMS_LOG_FORMAT=json`), access lines included.
pub fn init(filter: &str, json: bool) {
    init_with(filter, LINES, json)
}

/// The writer's queue of lines not yet written: tracing-appender's default. Its slots are
/// allocated and touched up front (about 4 MiB).
const LINES: usize = 128_000;

/// [`init`] for a tenant process: a short queue, so an idle tenant does not keep 4 MiB of
/// empty slots (SPEC §11.10's density); a tenant that prints faster than the log is written
/// loses lines, never the server.
pub fn init_tenant(filter: &str) {
    init_with(filter, 1024, false)
}

fn init_with(filter: &str, lines: usize, json: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let installed = if json {
        // serde_json escapes every control character inside strings: one record, one line.
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(writer.clone())
            .with_ansi(false)
            .try_init()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .fmt_fields(EscapedFields)
            .with_writer(writer.clone())
            .with_ansi(false)
            .try_init()
    };
    if installed.is_ok() {
        ACCESS_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
        let _ = WRITER.set(writer);
        if let Ok(mut slot) = GUARD.lock() {
            *slot = Some(guard);
        }
    }
}

/// Whether `c` must not reach the log as itself: it could end a line (LF, CR, VT, FF, NEL,
/// U+2028, U+2029) or drive a terminal (ESC and the other C0/C1 controls, DEL).
fn must_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A `fmt::Write` adaptor that writes control characters as their Rust escapes (`\n`,
/// `\u{1b}`, see [`char::escape_debug`]) and everything else as is.
pub struct Escaped<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if must_escape(c) {
                self.0.write_str(&s[start..i])?;
                for e in c.escape_debug() {
                    self.0.write_char(e)?;
                }
                start = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[start..])
    }
}

/// Appends `text` to `buf` escaped as [`Escaped`] does; text without control characters (every
/// ordinary path) is copied as is.
fn push_escaped(buf: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    let mut out = String::with_capacity(text.len() + 8);
    let _ = fmt::Write::write_str(&mut Escaped(&mut out), text);
    buf.extend_from_slice(out.as_bytes());
}

/// The subscriber's field formatter: the default layout (`message key=value …`, strings
/// quoted, `%` values as their `Display`) with every value written through [`Escaped`].
struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            out: Escaped(writer),
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    out: Escaped<Writer<'writer>>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        // Names are the code's own (`tracing` macros), written straight to the line.
        self.result = match field.name() {
            "message" => write!(self.out, "{sep}{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.out.0, "{sep}{name}=").and_then(|()| write!(self.out, "{value:?}"))
            }
        };
    }
}

/// Writes out every queued line and stops the writer; call before `process::exit`, which runs
/// no destructors. Later lines are dropped.
pub fn flush() {
    flush_access();
    let guard = GUARD.lock().ok().and_then(|mut g| g.take());
    drop(guard);
}

/// Whether access lines are wanted (`dpms::access` at INFO passes the filter). The filter is
/// fixed at start-up, so callers ask once.
pub fn access_enabled() -> bool {
    tracing::enabled!(target: "dpms::access", tracing::Level::INFO)
}

/// One request, as the access log records it.
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// `module.function`, or `-` when no endpoint was reached.
    pub endpoint: &'a str,
    pub worker: usize,
    pub remote: SocketAddr,
    pub elapsed: Duration,
    /// The request id as sent in `X-Request-Id`.
    pub id: &'a str,
}

/// Appends one access line (see [`format_access`]), handing the buffer over once it is big.
pub fn access(line: &Access<'_>) {
    let Ok(mut buf) = ACCESS.lock() else {
        return;
    };
    if ACCESS_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        format_access_json(&mut buf, line, SystemTime::now());
    } else {
        format_access(&mut buf, line, SystemTime::now());
    }
    if buf.len() >= ACCESS_BATCH {
        hand_over(&mut buf);
    }
}

/// Writes one access line into `buf`, in the subscriber's own layout:
/// `<time>  INFO dpms::access: method=GET path=/… status=200 endpoint="m.f" worker=0 remote=… ms=0.123 id=…`.
pub fn format_access(buf: &mut Vec<u8>, line: &Access<'_>, now: SystemTime) {
    let mut num = itoa::Buffer::new();
    let _ = write!(
        buf,
        "{}  INFO dpms::access: method=",
        humantime::format_rfc3339_micros(now)
    );
    buf.extend_from_slice(line.method.as_bytes());
    buf.extend_from_slice(b" path=");
    // hyper accepts UTF-8 in a path, NEL and U+2028 included.
    push_escaped(buf, line.path);
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(num.format(line.status).as_bytes());
    // Quoted and escaped as `tracing` writes a string field: an API name is a plugin's text.
    let _ = write!(buf, " endpoint={:?} worker=", line.endpoint);
    buf.extend_from_slice(num.format(line.worker).as_bytes());
    let _ = write!(buf, " remote={} ms=", line.remote);
    let micros = line.elapsed.as_micros();
    buf.extend_from_slice(num.format(micros / 1000).as_bytes());
    buf.push(b'.');
    let frac = micros % 1000;
    if frac < 100 {
        buf.push(b'0');
    }
    if frac < 10 {
        buf.push(b'0');
    }
    buf.extend_from_slice(num.format(frac).as_bytes());
    buf.extend_from_slice(b" id=");
    buf.extend_from_slice(line.id.as_bytes());
    buf.push(b'\n');
}

/// Writes one access line as a JSON object with the fields of [`format_access`]'s line:
/// `{"timestamp":…,"level":"INFO","target":"dpms::access","method":"GET","path":…,"status":200,
/// "endpoint":"m.f","worker":0,"remote":…,"ms":0.123,"id":…}`.
pub fn format_access_json(buf: &mut Vec<u8>, line: &Access<'_>, now: SystemTime) {
    let mut num = itoa::Buffer::new();
    let _ = write!(
        buf,
        "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"target\":\"dpms::access\",\"method\":",
        humantime::format_rfc3339_micros(now)
    );
    let _ = serde_json::to_writer(&mut *buf, line.method);
    buf.extend_from_slice(b",\"path\":");
    let _ = serde_json::to_writer(&mut *buf, line.path);
    buf.extend_from_slice(b",\"status\":");
    buf.extend_from_slice(num.format(line.status).as_bytes());
    buf.extend_from_slice(b",\"endpoint\":");
    let _ = serde_json::to_writer(&mut *buf, line.endpoint);
    buf.extend_from_slice(b",\"worker\":");
    buf.extend_from_slice(num.format(line.worker).as_bytes());
    let _ = write!(buf, ",\"remote\":\"{}\",\"ms\":", line.remote);
    let micros = line.elapsed.as_micros();
    let _ = write!(buf, "{}.{:03}", micros / 1000, micros % 1000);
    buf.extend_from_slice(b",\"id\":");
    let _ = serde_json::to_writer(&mut *buf, line.id);
    buf.extend_from_slice(b"}\n");
}

/// Hands the gathered access lines to the writer (cheap when there are none).
pub fn flush_access() {
    if let Ok(mut buf) = ACCESS.lock() {
        if !buf.is_empty() {
            hand_over(&mut buf);
        }
    }
}

fn hand_over(buf: &mut Vec<u8>) {
    match WRITER.get() {
        // `NonBlocking` queues a copy of the bytes and never blocks.
        Some(writer) => {
            let _ = writer.clone().write_all(buf);
        }
        None => {
            let _ = std::io::stderr().write_all(buf);
        }
    }
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(endpoint: &str, elapsed: Duration) -> String {
        let access = Access {
            method: "GET",
            path: "/rest/services/hello-world/1/",
            status: 200,
            endpoint,
            worker: 3,
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            elapsed,
            id: "01234567-89ab-cdef-0123-456789abcdef",
        };
        let mut buf = Vec::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_590_400_123_456);
        format_access(&mut buf, &access, now);
        String::from_utf8(buf).unwrap_or_default()
    }

    #[test]
    fn the_line_has_the_subscribers_layout() {
        assert_eq!(
            line("module1.foo", Duration::from_micros(1_234)),
            "2025-12-01T12:00:00.123456Z  INFO dpms::access: method=GET \
             path=/rest/services/hello-world/1/ status=200 endpoint=\"module1.foo\" worker=3 \
             remote=127.0.0.1:40000 ms=1.234 id=01234567-89ab-cdef-0123-456789abcdef\n"
        );
    }

    #[test]
    fn milliseconds_keep_three_digits() {
        for (micros, text) in [(7, "ms=0.007 "), (45, "ms=0.045 "), (12_300, "ms=12.300 ")] {
            let l = line("-", Duration::from_micros(micros));
            assert!(l.contains(text), "{micros} us: {l}");
        }
    }

    #[test]
    fn control_characters_in_a_path_are_escaped() {
        let access = Access {
            method: "GET",
            path: "/a\u{85}b\u{2028}c\nd\u{1b}e/é",
            status: 404,
            endpoint: "-",
            worker: 0,
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            elapsed: Duration::ZERO,
            id: "x",
        };
        let mut buf = Vec::new();
        format_access(&mut buf, &access, SystemTime::UNIX_EPOCH);
        let l = String::from_utf8(buf).unwrap_or_default();
        assert!(
            l.contains(r" path=/a\u{85}b\u{2028}c\nd\u{1b}e/é status=404 "),
            "{l}"
        );
        assert_eq!(l.lines().count(), 1, "{l}");
    }

    #[test]
    fn escaped_writes_control_characters_as_escapes() {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = write!(Escaped(&mut out), "a\nb\r\tc\u{7f}d \"q\" \\ é");
        assert_eq!(out, r#"a\nb\r\tc\u{7f}d "q" \ é"#);
    }

    #[test]
    fn the_json_line_has_the_same_fields() {
        let access = Access {
            method: "GET",
            path: "/a\u{2028}\n\"b",
            status: 404,
            endpoint: "m.\"f\"",
            worker: 1,
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            elapsed: Duration::from_micros(2_045),
            id: "x",
        };
        let mut buf = Vec::new();
        format_access_json(&mut buf, &access, SystemTime::UNIX_EPOCH);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"timestamp": "1970-01-01T00:00:00.000000Z", "level": "INFO",
                "target": "dpms::access", "method": "GET", "path": "/a\u{2028}\n\"b",
                "status": 404, "endpoint": "m.\"f\"", "worker": 1, "remote": "127.0.0.1:40000",
                "ms": 2.045, "id": "x"})
        );
    }

    #[test]
    fn an_endpoint_name_cannot_forge_a_line() {
        let l = line("a\"b\nfake line", Duration::ZERO);
        assert_eq!(l.matches('\n').count(), 1, "{l}");
        assert!(l.contains(r#"endpoint="a\"b\nfake line""#), "{l}");
    }
}

"""SPEC §4, §6: the HTTP layer belongs to dpms.

Header limits answered by dpms (not hyper), requests hyper's parser refuses leave a log line,
one log event is always one log line (nothing a client sends or a plugin prints can forge one),
and output printed without a final newline is logged with the call that printed it.
"""

from __future__ import annotations

import re
import socket
import uuid

import pytest

from dpms_helpers import TIMEOUT, describe, error, ok, source, unique, wait_for, write_atomic


def stderr_text(server) -> str:
    """The whole stderr log of a server this suite started (``Server.log()`` keeps a tail)."""
    path = server.workdir / "stderr.log"
    return path.read_text("utf-8", "replace") if path.exists() else ""


def wait_in_log(server, needle: str, what: str) -> str:
    """Waits (bounded) until ``needle`` is in the stderr log; returns the log."""
    wait_for(lambda: needle in stderr_text(server), what=what)
    return stderr_text(server)


def access_line(server, request_id: str) -> str:
    """Waits for the access line of ``request_id`` and returns it."""
    def find():
        for line in stderr_text(server).splitlines():
            if "dpms::access:" in line and line.endswith(f"id={request_id}"):
                return line
        return None

    return wait_for(find, what=f"the access line of {request_id}")


def new_id() -> str:
    return f"t-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------------------------
# Header limits: dpms's JSON 431, never hyper's bare one (SPEC §4)


@pytest.fixture(scope="module")
def small_headers(start_module_server):
    """A server whose header limit is 2048 bytes (dpms counts name + value + 4 per header)."""
    return start_module_server(env={"DPMS_MAX_HEADERS": "2048"})


def test_150_headers_within_the_limit_are_served(server):
    headers = {f"X-H-{i}": "v" for i in range(150)}
    r = server.raw("GET", "/", headers=headers)
    assert r.status_code == 200, describe(r)
    assert r.json()["name"] == "dpms", describe(r)


def test_5000_headers_within_the_limit_are_served(server):
    headers = {f"h{i:04d}": "v" for i in range(5000)}  # 50,000 of 65,536 counted bytes
    r = server.raw("GET", "/", headers=headers)
    assert r.status_code == 200, describe(r)


def test_150_small_headers_under_a_small_limit_are_served(small_headers):
    # 150 x (5 + 1 + 4) = 1500 bytes < 2048: served although hyper's default count is 100.
    headers = {f"x-h{i:03d}": "v" for i in range(150)}
    r = small_headers.raw("GET", "/", headers=headers)
    assert r.status_code == 200, describe(r)


def test_150_headers_over_the_byte_limit_get_dpms_431(small_headers):
    headers = {f"X-Pad-{i:03d}": "0123456789" for i in range(150)}
    r = small_headers.raw("GET", "/", headers=headers)
    error(r, 431, "headers_too_large")
    assert r.headers.get("X-Request-Id"), describe(r)


def test_many_empty_headers_over_the_byte_limit_get_dpms_431(small_headers):
    # 400 headers of 8 counted bytes each: over 2048 bytes in very many tiny headers, still
    # answered by dpms (hyper's count limit is above what 2048 bytes can hold).
    headers = {f"h{i:03d}": "" for i in range(400)}
    r = small_headers.raw("GET", "/", headers=headers)
    error(r, 431, "headers_too_large")


# --------------------------------------------------------------------------------------------
# Requests hyper's parser refuses: hyper's bare answer, and one log line (SPEC §4)


def send_raw(server, data: bytes):
    """Sends ``data`` on a fresh connection and reads until the server closes it.
    Returns (the client's own address as the server sees it, the bytes received)."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        host, port = sock.getsockname()[:2]
        sock.sendall(data)
        got = b""
        while len(got) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    return f"{host}:{port}", got


MALFORMED = {
    "conflicting_content_length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Content-Length: 5\r\n\r\nabcde",
    "unknown_transfer_encoding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nab",
    "http_0_9": b"GET /\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
}


@pytest.fixture(scope="module")
def own_server(start_module_server):
    """A server this module started, so its log can be read."""
    return start_module_server(env={"DPMS_WORKERS": "1", "DPMS_PY_THREADS": "1"})


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_refused_requests_keep_hyper_answer_and_are_logged(own_server, name):
    remote, got = send_raw(own_server, MALFORMED[name])
    status = got.split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.1 (400|501) ", status), got[:300]
    line = None

    def find():
        nonlocal line
        for l in stderr_text(own_server).splitlines():
            if "WARN" in l and f"remote={remote}" in l:
                line = l
                return True
        return False

    wait_for(find, what=f"a warn line naming {remote}")
    assert "refused" in line and "cause=" in line, line


def test_more_headers_than_65536_bytes_hold_get_hyper_431_and_a_log_line(own_server):
    # 13,108 headers need more than 65,536 counted bytes: past hyper's count limit, which is
    # one above what the byte limit holds, hyper answers itself (see server.rs).
    lines = b"".join(b"h:\r\n" for i in range(13200))
    remote, got = send_raw(own_server, b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n")
    assert got.startswith(b"HTTP/1.1 431 "), got[:300]
    wait_in_log(own_server, f"remote={remote} cause=", f"a warn line naming {remote}")


def test_a_refused_request_does_not_stop_the_next_connection(own_server):
    send_raw(own_server, MALFORMED["garbage"])
    r = own_server.get("/")
    assert r.status_code == 200, describe(r)


# --------------------------------------------------------------------------------------------
# One event, one line (SPEC §6)

RAISES = """
from dpms import expose


@expose.endpoint(API="$api")
def raises(x=""):
    raise ValueError(x)


@expose.endpoint(API="$printer")
def printer(x=""):
    print("printed:", x.replace("|", "\\r"))
    return "printed"
"""

FORGED = "2026-01-01T00:00:00.000000Z  INFO dpms::access: method=GET path=/FORGED status=200"


def test_an_exception_message_cannot_forge_an_access_line(own_server):
    api, printer, module = unique("raises"), unique("printer"), unique("m")
    write_atomic(own_server.plugin_dir / f"{module}.py", source(RAISES, api=api, printer=printer))
    rid = new_id()
    r = own_server.get(f"{api}/?x=a%0A{FORGED}%0D%0Aagain", headers={"X-Request-Id": rid})
    body = error(r, 500, "plugin_error", extra=("exception",))
    assert "FORGED" in body["exception"], body
    access_line(own_server, rid)
    log = stderr_text(own_server)
    forged = [l for l in log.splitlines() if re.match(r"^\S*\s*INFO dpms::access: method=GET path=/FORGED", l)]
    assert not forged, forged
    # The warning is one line that carries the escaped text and the request id.
    warn = [l for l in log.splitlines() if f"id={rid}" in l and "plugin raised" in l]
    assert len(warn) == 1, log[-3000:]
    assert "\\n2026-01-01T00:00:00.000000Z  INFO dpms::access" in warn[0], warn[0]
    assert "Traceback (most recent call last):" in warn[0], warn[0]
    # Printed text with a carriage return stays inside its record too.
    rid = new_id()
    assert ok(own_server.get(f"{printer}/?x=one|two", headers={"X-Request-Id": rid})) == "printed"
    access_line(own_server, rid)
    printed = [l for l in stderr_text(own_server).splitlines() if "printed: one" in l]
    assert len(printed) == 1 and "one\\rtwo" in printed[0] and f"id={rid}" in printed[0], printed


def test_control_characters_in_the_path_are_escaped_in_the_access_line(own_server):
    rid = new_id()
    # U+0085 (NEL) and U+2028 (LINE SEPARATOR) in raw UTF-8: hyper accepts them in a path.
    path = "/rest/services/nel\u0085x\u2028y/".encode()
    request = b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Request-Id: " + rid.encode() + b"\r\n\r\n"
    _, got = send_raw(own_server, request)
    assert got.startswith(b"HTTP/1.1 404 "), got[:300]
    line = access_line(own_server, rid)
    assert "path=/rest/services/nel\\u{85}x\\u{2028}y/ " in line, line


# --------------------------------------------------------------------------------------------
# Output without a final newline belongs to the call that printed it (SPEC §6)

PARTIAL = """
import sys
from dpms import expose


@expose.endpoint(API="$a")
def partial_a():
    print("PARTIAL-A-$tag", end="")
    sys.stderr.write("PARTIAL-ERR-$tag")
    return "a"


@expose.endpoint(API="$b")
def partial_b():
    print("LINE-B-$tag")
    sys.stderr.write("LINE-ERR-B-$tag\\n")
    return "b"
"""


def test_output_without_newline_is_logged_with_its_own_call(own_server):
    a, b, module, tag = unique("a"), unique("b"), unique("m"), uuid.uuid4().hex
    write_atomic(own_server.plugin_dir / f"{module}.py", source(PARTIAL, a=a, b=b, tag=tag))
    id_a, id_b = new_id(), new_id()
    assert ok(own_server.get(f"{a}/", headers={"X-Request-Id": id_a})) == "a"
    assert ok(own_server.get(f"{b}/", headers={"X-Request-Id": id_b})) == "b"
    access_line(own_server, id_b)
    lines = stderr_text(own_server).splitlines()
    for text, rid in [
        (f"PARTIAL-A-{tag}", id_a),
        (f"PARTIAL-ERR-{tag}", id_a),
        (f"LINE-B-{tag}", id_b),
        (f"LINE-ERR-B-{tag}", id_b),
    ]:
        found = [l for l in lines if text in l]
        assert len(found) == 1, (text, found)
        assert f"id={rid}" in found[0], (text, found[0])
        assert f"PARTIAL-A-{tag}LINE" not in found[0], found[0]


ASYNC_PARTIAL = """
from dpms import expose


@expose.endpoint(API="$a")
async def async_a():
    print("ASYNC-PARTIAL-$tag", end="")
    return "a"


@expose.endpoint(API="$b")
async def async_b():
    print("ASYNC-LINE-$tag")
    return "b"
"""


def test_a_coroutine_unfinished_line_ends_with_the_coroutine(own_server):
    a, b, module, tag = unique("a"), unique("b"), unique("m"), uuid.uuid4().hex
    write_atomic(own_server.plugin_dir / f"{module}.py", source(ASYNC_PARTIAL, a=a, b=b, tag=tag))
    assert ok(own_server.get(f"{a}/")) == "a"
    id_b = new_id()
    assert ok(own_server.get(f"{b}/", headers={"X-Request-Id": id_b})) == "b"
    access_line(own_server, id_b)
    lines = stderr_text(own_server).splitlines()
    for text in (f"ASYNC-PARTIAL-{tag}", f"ASYNC-LINE-{tag}"):
        found = [l for l in lines if text in l]
        assert len(found) == 1, (text, found)
    assert not [l for l in lines if f"ASYNC-PARTIAL-{tag}ASYNC-LINE" in l]

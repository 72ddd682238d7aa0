"""Property-based HTTP fuzz (hypothesis): whatever a client sends, dpms keeps SPEC §3-§6.

Random request lines, query strings, methods, content types and bodies go to the live server over a
raw socket, byte for byte (``requests`` would re-encode paths and refuse odd methods). Targets are
the sample endpoints (``plugins/*.py``) and fuzz plugins this module writes: a ``**kwargs`` echo,
required positional parameters, positional-only and keyword-only parameters, ``*args`` only,
``async def``, two plugins that raise, and an API name defined in two modules (409).

Every response must:

* be one of the statuses SPEC §4 lists; a 5xx only as 500 ``plugin_error`` raised by the fuzz
  plugins that raise on purpose (any other plugin error, e.g. a ``TypeError`` from binding, is a
  dpms bug) or 504 ``timeout``;
* carry ``X-Request-Id`` and, except for HEAD and 204, a JSON body of type ``application/json``;
  an error body has exactly ``status`` and ``error`` plus the extras SPEC §4 names for that code;
* arrive within ``REQUEST_TIMEOUT`` (a hang fails the example instead of blocking the suite), and
  leave a kept-alive connection usable: a follow-up request on the same socket gets its own answer
  (or, after a request with a body dpms did not read, a clean close: see ``test_fuzz_http``).

After the run the server must still answer a known-good request. The number of examples comes from
``DPMS_FUZZ_EXAMPLES`` (default 3000); the number of requests sent is printed at the end of the
module and written to the file named by ``DPMS_FUZZ_REPORT``, if set. The long run:
``DPMS_FUZZ_EXAMPLES=50000 ./run-tests.sh -k fuzz``.

Not generated: bytes that hyper's request-line parser rejects before dpms sees the request (``"``,
``<``, ``>``, backtick and non-UTF-8 raw bytes in the target, non-token characters in the method).
hyper answers those with an empty-bodied 400 that dpms cannot shape.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import string
import tempfile
import time
import uuid
from urllib.parse import quote

import hypothesis.configuration
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpms_helpers import JSON_CT, ok, source

# Hypothesis keeps caches (unicode tables, constants) in ./.hypothesis even without an example
# database; keep them out of the working tree, as pytest.ini does for pytest's own cache.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    hypothesis.configuration.set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "dpms-hypothesis"))

MAX_EXAMPLES = int(os.environ.get("DPMS_FUZZ_EXAMPLES", "3000"))
REPORT_FILE = os.environ.get("DPMS_FUZZ_REPORT")
# Above MAX_FUNCTION_SECS (30 s by default) so that a 504 can still be seen; anything slower is a hang.
REQUEST_TIMEOUT = 40.0
MAX_RESPONSE = 16 * 1024 * 1024  # bytes read per response before giving up

STATS = {"requests": 0, "examples": 0, "statuses": {}}

# --------------------------------------------------------------------------------------------
# The fuzz plugins (names fixed at import time so the strategies can use them)

TAG = uuid.uuid4().hex[:10]
MOD_A = f"fz_a_{TAG}"
MOD_B = f"fz_b_{TAG}"
ALIAS_A = f"fzv_{TAG}"
API_KW = f"fz-kw-{TAG}"
API_REQ = f"fz-req-{TAG}"
API_POS = f"fz-pos-{TAG}"
API_POS2 = f"fz-pos2-{TAG}"
API_VA = f"fz-va-{TAG}"
API_ASYNC = f"fz-async-{TAG}"
API_BOOM = f"fz-boom-{TAG}"
API_ABOOM = f"fz-aboom-{TAG}"
API_DUP = f"fz-dup-{TAG}"
API_NONE = f"fz-none-{TAG}"
BOOM = f"fuzz-boom-{TAG}"  # every exception the raising plugins throw says this

PLUGIN_A = """
import asyncio

from dpms import expose

__alias__ = "$alias"
ALL = "GET|POST|PUT|DELETE|PATCH"


def _seen(args, kwargs):
    req = kwargs.get("__request__")
    return {
        "nargs": len(args),
        "keys": sorted(k for k in kwargs if k != "__request__"),
        "method": getattr(req, "method", None),
        "body_len": len(req.body) if req is not None and req.body is not None else None,
    }


@expose.endpoint(method=ALL, API="$kw")
def kw_echo(*args, **kwargs):
    return _seen(args, kwargs)


@expose.endpoint(method=ALL, API="$req")
def required(a, b, c=None):
    return [a, b, c]


@expose.endpoint(method=ALL, API="$pos")
def posonly(a, b=2, /, c=3, *, d, e=5, **rest):
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "rest": sorted(k for k in rest if k != "__request__")}


@expose.endpoint(method=ALL.split("|"), API="$pos2")
def posonly2(a, /, *, d):
    return [a, d]


@expose.endpoint(method=ALL, API="$va")
def varargs(*args):
    return len(args)


@expose.endpoint(method=ALL, API="$async")
async def aecho(x=None, *args, **kwargs):
    await asyncio.sleep(0)
    return _seen(args, kwargs)


_KINDS = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
}


@expose.endpoint(method=ALL, API="$boom")
def boom(kind="ValueError", **kwargs):
    raise _KINDS.get(kind if isinstance(kind, str) else "", ValueError)("$marker")


@expose.endpoint(method=ALL, API="$aboom")
async def aboom(*args, kind="RuntimeError", **kwargs):
    await asyncio.sleep(0)
    raise _KINDS.get(kind if isinstance(kind, str) else "", RuntimeError)("$marker")


@expose.endpoint(method="GET|POST", API="$dup")
def dup_a(**kwargs):
    return "a"
"""

PLUGIN_B = """
from vyperlogix.decorators import expose


@expose.endpoint(method=["POST", "GET"], API="$dup")
def dup_b(*args, **kwargs):
    return "b"


@expose.endpoint(method="GET|PUT", API="$none")
def nothing():
    return None
"""

# --------------------------------------------------------------------------------------------
# What may come back (SPEC §4)

STANDARD_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
ERROR_CODES = {
    400: {"bad_request", "bad_arguments", "missing_argument"},
    404: {"api_undefined", "method_undefined", "too_many_url_params", "not_found"},
    409: {"ambiguous_api"},
    413: {"body_too_large"},
    414: {"uri_too_long"},
    431: {"headers_too_large"},
    500: {"plugin_error"},  # only from the plugins that raise on purpose (checked below)
    501: {"method_not_implemented"},
    504: {"timeout"},
}
EXTRA_KEYS = {"ambiguous_api": {"candidates"}, "plugin_error": {"exception"}}
RAISING_FUNCTIONS = {"boom", "aboom"}

# --------------------------------------------------------------------------------------------
# Raw HTTP over a socket


class Reply:
    def __init__(self, status: int, reason: str, headers: list, body: bytes, raw_head: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers  # [(lower-case name, value)]
        self.body = body
        self.raw_head = raw_head

    def header(self, name: str):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def describe(self) -> str:
        return f"{self.raw_head[:1500]!r} + body {self.body[:800]!r}" + (
            f"...({len(self.body)} bytes)" if len(self.body) > 800 else ""
        )


class Conn:
    """One TCP connection with a read buffer; every read is bounded by REQUEST_TIMEOUT."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data: bytes) -> BaseException | None:
        """Send everything; a reset while sending is returned (the answer may still be readable)."""
        STATS["requests"] += 1
        try:
            self.sock.sendall(data)
        except OSError as e:  # the server answered early and closed (e.g. 413)
            return e
        return None

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        if len(self.buf) > MAX_RESPONSE:
            raise AssertionError(f"response over {MAX_RESPONSE} bytes")
        return True

    def _until(self, sep: bytes, deadline: float) -> bytes:
        while sep not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"connection closed before {sep!r}; got {self.buf[:300]!r}")
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exactly(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"connection closed after {len(self.buf)} of {n} body bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, method: str) -> Reply:
        """Read one response (skipping 1xx), framed by Content-Length, chunking or EOF."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            head = self._until(b"\r\n\r\n", deadline)
            lines = head[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            assert len(parts) >= 2 and parts[0].startswith(b"HTTP/1."), f"bad status line {head[:300]!r}"
            status = int(parts[1])
            reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
            if 100 <= status < 200:
                continue
            break
        reply = Reply(status, reason, headers, b"", head)
        if method == "HEAD" or status in (204, 304):
            return reply
        te = reply.header("transfer-encoding")
        cl = reply.header("content-length")
        if te and "chunked" in te.lower():
            body = b""
            while True:
                size_line = self._until(b"\r\n", deadline)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    self._until(b"\r\n", deadline)  # no trailers expected
                    break
                body += self._exactly(size, deadline)
                self._exactly(2, deadline)
            reply.body = body
        elif cl is not None:
            reply.body = self._exactly(int(cl), deadline)
        else:
            while self._fill(deadline):
                pass
            reply.body, self.buf = self.buf, b""
        return reply

    def rest(self) -> bytes:
        """Everything the server still sends before it closes (for HEAD: must be nothing)."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while self._fill(deadline):
            pass
        out, self.buf = self.buf, b""
        return out


class FuzzRequest:
    """One generated request; ``repr`` stays short so a failing example prints readably."""

    def __init__(self, method, target, content_type, body, chunked, expect, follow_up, extra_headers):
        self.method = method  # str
        self.target = target  # bytes, sent verbatim
        self.content_type = content_type  # str or None (header absent)
        self.body = body  # bytes or None (no body, no Content-Length)
        self.chunked = chunked
        self.expect = expect  # send "Expect: 100-continue"
        self.follow_up = follow_up  # keep the connection open and send a known-good request after
        self.extra_headers = extra_headers  # [(name, value)]

    def head(self, port: int, close: bool) -> bytes:
        lines = [self.method.encode() + b" " + self.target + b" HTTP/1.1", f"Host: 127.0.0.1:{port}".encode()]
        if close:
            lines.append(b"Connection: close")
        if self.content_type is not None:
            lines.append(b"Content-Type: " + self.content_type.encode())
        if self.body is not None:
            if self.chunked:
                lines.append(b"Transfer-Encoding: chunked")
            else:
                lines.append(b"Content-Length: " + str(len(self.body)).encode())
            if self.expect:
                lines.append(b"Expect: 100-continue")
        for name, value in self.extra_headers:
            lines.append(f"{name}: {value}".encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def encoded_body(self) -> bytes:
        if self.body is None:
            return b""
        if not self.chunked:
            return self.body
        out = b""
        step = max(1, len(self.body) // 3 or 1)
        for i in range(0, len(self.body), step):
            piece = self.body[i : i + step]
            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        return out + b"0\r\n\r\n"

    def __repr__(self):
        def cut(b, n=300):
            return repr(b[:n]) + (f"...({len(b)} bytes)" if len(b) > n else "")

        body = "None" if self.body is None else cut(self.body)
        return (
            f"FuzzRequest({self.method[:60]!r}, {cut(self.target)}, ct={self.content_type!r}, body={body}, "
            f"chunked={self.chunked}, expect={self.expect}, follow_up={self.follow_up}, "
            f"headers={self.extra_headers!r})"
        )


# --------------------------------------------------------------------------------------------
# Strategies

SAMPLE_APIS = [
    "hello-world", "bar-none", "sample-one", "sample-one2", "sample-one2a", "sample-two",
    "hello-world2", "bar2-none", "sample-put", "sample-two2",
]  # fmt: skip
FUZZ_APIS = [API_KW, API_REQ, API_POS, API_POS2, API_VA, API_ASYNC, API_BOOM, API_ABOOM, API_DUP, API_NONE]
APIS = SAMPLE_APIS + FUZZ_APIS + ["__dir__"]
MODULES = ["module1", "module2", "v1", "echo_helper", MOD_A, MOD_B, ALIAS_A]
ALL_ROUTED = ("GET", "POST", "PUT", "DELETE", "PATCH")
METHODS_OF = {
    "hello-world": ("GET", "PUT", "POST"), "bar-none": ("GET",), "sample-one": ("POST",),
    "sample-one2": ("PUT",), "sample-one2a": ("DELETE",), "sample-two": ("POST",),
    "hello-world2": ("GET",), "bar2-none": ("GET",), "sample-put": ("PUT", "POST"),
    "sample-two2": ("POST",), "__dir__": ("GET",), API_DUP: ("GET", "POST"), API_NONE: ("GET", "PUT"),
    **{api: ALL_ROUTED for api in (API_KW, API_REQ, API_POS, API_POS2, API_VA, API_ASYNC, API_BOOM, API_ABOOM)},
}  # fmt: skip
_M1 = ["hello-world", "bar-none", "sample-one", "sample-one2", "sample-one2a", "sample-two", "__dir__"]
_A = [API_KW, API_REQ, API_POS, API_POS2, API_VA, API_ASYNC, API_BOOM, API_ABOOM, API_DUP, "__dir__"]
# (module segment or None, API) pairs that route, so that enough examples reach a function.
ROUTES = (
    [(None, api) for api in SAMPLE_APIS + [API_KW, API_REQ, API_POS, API_POS2, API_VA, API_ASYNC, API_BOOM,
                                           API_ABOOM, API_DUP, API_NONE, "__dir__"]]
    + [(m, api) for m in ("module1", "v1") for api in _M1]
    + [("module2", api) for api in ["hello-world2", "bar2-none", "sample-put", "sample-two2", "__dir__"]]
    + [(m, api) for m in (MOD_A, ALIAS_A) for api in _A]
    + [(MOD_B, api) for api in [API_DUP, API_NONE, "__dir__"]]
    # The kwargs echoes again: the invariants checked on their answers are the sharpest.
    + [(None, API_KW), (ALIAS_A, API_KW), (None, API_ASYNC), (None, "hello-world"), (None, "sample-one")] * 4
)  # fmt: skip
KEY_NAMES = [
    "a", "b", "c", "d", "e", "x", "kind", "args", "__map__", "func", "module", "uuid", "__request__",
    "__body__", "parm_1", "parm_11", "rest", "",
]  # fmt: skip
KINDS = ["ValueError", "KeyError", "RuntimeError", "SystemExit", "KeyboardInterrupt", "Nope"]

# Characters hyper accepts raw in a request target (see the module docstring for what it refuses).
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@{}|^\\[]"
QUERY_CHARS = PATH_CHARS + "/?"
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


def maybe(draw, n: int) -> bool:
    """True about once in ``n`` draws (``st.integers(0, n) == 0`` would be far likelier)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


def pct(data: bytes, upper: bool = True) -> str:
    return "".join(("%%%02X" if upper else "%%%02x") % b for b in data)


def partly_encoded(draw, text: str) -> str:
    """``text`` with some characters percent-encoded (the API segment is decoded too, SPEC §3)."""
    mask = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(pct(c.encode()) if m else c for c, m in zip(text, mask))


odd_escapes = st.sampled_from(
    ["%", "%z", "%4", "%zz", "%%", "%2", "%0g", "%00", "%2F", "%2f", "%5C", "%ff", "%FE%FF", "%c3",
     "%C3%28", "%E2%9C", "%ED%A0%80", "%F4%90%80%80", "%C0%AF", "%2e%2e", "%25", "%2525"]
)  # fmt: skip
dot_segments = st.sampled_from([".", "..", "%2e", "%2E%2e", ".%2e", "...", "./", "../.."])
raw_unicode = st.text(
    alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)),
    min_size=1,
    max_size=4,
)


@st.composite
def long_segment(draw):
    n = draw(st.integers(min_value=100, max_value=5000))
    unit = draw(st.sampled_from(["x", "%41", "%ff", "%E2%9C%93", "..", "a/", "%2F"]))
    return unit * (n // len(unit))


@st.composite
def known_name(draw, names):
    name = draw(st.sampled_from(names))
    if maybe(draw, 5):
        name = partly_encoded(draw, name)
    return name


segment = st.one_of(
    known_name(APIS),
    known_name(MODULES),
    st.text(alphabet=PATH_CHARS, max_size=20),
    st.binary(min_size=1, max_size=8).map(pct),
    st.text(max_size=8).map(lambda t: quote(t, safe="")),
    odd_escapes,
    dot_segments,
    st.just(""),
    raw_unicode,
    st.integers().map(str),
    long_segment(),
)
param = st.one_of(
    st.text(alphabet=PATH_CHARS, max_size=10),
    st.just(""),
    odd_escapes,
    st.binary(max_size=6).map(pct),
    raw_unicode,
    long_segment(),
)

clean_param = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "-._~", max_size=10),
    st.text(max_size=6).map(lambda t: quote(t, safe="")),
    st.just(""),
)
clean_queries = st.lists(
    st.tuples(st.sampled_from(KEY_NAMES[:-1]), st.one_of(st.sampled_from(KINDS), st.text(max_size=8))),
    max_size=5,
).map(lambda items: "&".join(quote(k, safe="") + "=" + quote(v, safe="").replace("%20", "+") for k, v in items))


@st.composite
def query_strings(draw):
    key = st.one_of(
        st.sampled_from(KEY_NAMES),
        st.text(alphabet=QUERY_CHARS.replace("&", "").replace("=", ""), max_size=10),
        odd_escapes,
        st.binary(min_size=1, max_size=4).map(pct),
    )
    value = st.one_of(
        st.sampled_from(KINDS),
        st.text(alphabet=QUERY_CHARS.replace("&", ""), max_size=20),
        st.text(alphabet="+ab%20", max_size=10),
        odd_escapes,
        st.text(max_size=6).map(lambda t: quote(t, safe="")),
        st.binary(max_size=4).map(pct),
    )
    keys = draw(st.lists(key, max_size=8))
    if keys and draw(st.booleans()):
        keys += draw(st.lists(st.sampled_from(keys), max_size=4))  # repeated keys
    items = []
    for k in keys:
        form = draw(st.integers(0, 5))
        if form == 0:
            items.append(k)  # bare key
        elif form == 1:
            items.append(k + "=")
        elif form == 2:
            items.append("=" + draw(value))
        else:
            items.append(k + "=" + draw(value))
    sep = draw(st.sampled_from(["&", "&", "&", ";", "&&"]))
    return sep.join(items)


UUIDS = st.one_of(
    st.uuids().map(str),
    st.just("00000000-0000-0000-0000-000000000000"),
    st.uuids().map(lambda u: str(u).upper()),
    st.just("12345678-1234-1234-1234-12345678901"),  # one digit short: an API name, not a uuid
)


@st.composite
def targets(draw) -> tuple[bytes, tuple]:
    """A request target, and the methods it routes for (empty when it is not meant to route)."""
    routed = ()
    kind = draw(st.sampled_from(["route"] * 10 + ["api"] * 6 + ["free"] * 3 + ["many", "other", "absolute", "star"]))
    if kind == "star":
        return b"*", routed
    if kind == "other":
        base = draw(
            st.sampled_from(
                ["/", "/rest", "/rest/", "/rest/services", "//rest/services/", "/rest//services/",
                 "/REST/services/", "/rest/services/../", "/rest/./services/", "/favicon.ico",
                 "/rest/servicesx/", "/..", "/%2e%2e/rest/services/", "/index.html", "/__dir__/"]
            )
        )  # fmt: skip
        segs = draw(st.lists(segment, max_size=4))
        path = base + "/".join(segs)
    else:
        segs = []
        if maybe(draw, 6):
            segs.append(draw(UUIDS))
        if kind == "route":  # a path that routes, with well-formed parameters
            module, api = draw(st.sampled_from(ROUTES))
            routed = METHODS_OF[api]
            if module is not None:
                segs.append(module)
            segs.append(api)
            segs += draw(st.lists(clean_param, max_size=11))
        elif kind == "api":
            if draw(st.booleans()):
                segs.append(draw(known_name(MODULES)))
            segs.append(draw(known_name(APIS)))
            segs += draw(st.lists(param, max_size=13))
        elif kind == "free":
            segs += draw(st.lists(segment, max_size=8))
        else:  # many segments
            segs.append(draw(known_name(APIS)))
            segs += draw(st.lists(st.sampled_from(["", "p", "%41", ".."]), min_size=10, max_size=400))
        path = "/rest/services/" + "/".join(segs)
    if draw(st.booleans()):
        path += "/"
    if kind == "absolute":
        path = "http://127.0.0.1" + (path if path.startswith("/") else "/" + path)
    q = draw(st.integers(0, 4))
    if q == 1:
        path += "?"
    elif q == 2 or (q == 3 and kind != "route"):
        path += "?" + draw(query_strings())
    elif q == 3:
        path += "?" + draw(clean_queries)
    return path.encode("utf-8"), routed


odd_methods = st.one_of(
    st.sampled_from(["TRACE", "CONNECT", "get", "Post", "PROPFIND", "MKCOL", "M-SEARCH", "X", "POSTX",
                     "FOO_BAR", "BREW", "QUERY"]),  # fmt: skip
    st.text(alphabet=TCHAR, min_size=1, max_size=20),
    st.integers(100, 4000).map(lambda n: "A" * n),
)
# Mostly methods that reach a plugin; one in eight is a token dpms must answer with 501.
# (Hypothesis favours small integers and the first entries of a list: weights go by repetition.)
methods = st.sampled_from([True] * 7 + [False]).flatmap(
    lambda usual: st.sampled_from(("GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"))
    if usual
    else odd_methods
)

content_types = st.one_of(
    st.sampled_from(
        [None, "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
         "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
         "text/plain", "multipart/form-data; boundary=xyz", "multipart/form-data",
         "application/octet-stream", "garbage", "", ";", "application/json; charset=latin-1",
         "application/json;;;", "*/*", "application/problem+json", "text/json", "application/",
         "x-www-form-urlencoded", "application/x-www-form-urlencoded;application/json"]
    ),  # fmt: skip
    st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "").replace("\x0c", ""), max_size=40),
)

json_keys = st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=8))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),  # NaN and Infinity dump as invalid JSON: a 400
    st.text(max_size=20),
    st.sampled_from(KINDS),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(json_keys, inner, max_size=5),
    max_leaves=25,
)


@st.composite
def shaped_objects(draw):
    """Objects in the marshalling shape of SPEC §5 (args, __map__, reserved keys), sometimes wrong."""
    obj = draw(st.dictionaries(json_keys, json_values, max_size=6))
    if draw(st.booleans()):
        obj["args"] = draw(st.one_of(st.lists(json_values, max_size=6), json_values))
    if maybe(draw, 4):
        obj["__map__"] = draw(
            st.one_of(st.dictionaries(st.sampled_from(KEY_NAMES), st.text(max_size=6), max_size=3), json_values)
        )
    return obj


@st.composite
def rpc_arrays(draw):
    """The ``[args]`` / ``[args, kwargs]`` form, and near misses."""
    args = draw(st.one_of(st.lists(json_values, max_size=5), json_values))
    form = draw(st.integers(0, 3))
    if form == 0:
        return [args]
    if form == 1:
        return [args, draw(shaped_objects())]
    if form == 2:
        return [args, draw(json_values), draw(json_values)]
    return []


@st.composite
def big_numbers(draw):
    digits = draw(st.integers(min_value=1, max_value=6000))
    lead = draw(st.sampled_from("123456789"))
    n = lead + "7" * (digits - 1)
    n = draw(st.sampled_from([n, "-" + n, n + ".5", n + "e99999", "1e400", "-0", "0." + n, n + "e-99999"]))
    shape = draw(st.sampled_from(["{}", '{{"a": {}}}', '{{"args": [{}]}}', "[[{}]]", '[[1], {{"b": {}}}]', '{{"x": [{}, {}]}}']))
    return shape.replace("{}", n).replace("{{", "{").replace("}}", "}").encode()


@st.composite
def deep_json(draw):
    n = draw(st.integers(min_value=1, max_value=3000))
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return b"[" * n + b"]" * n
    if shape == 1:
        return b'{"a":' * n + b"1" + b"}" * n
    if shape == 2:
        return b'{"args":' + b"[" * n + b"]" * n + b"}"
    return b'[[1], {"d":' + b"[" * n + b"]" * n + b"}]"


invalid_json = st.one_of(
    st.sampled_from(
        ["{", "[", '{"a":}', "nul", "tru", "'x'", '{"a":1,}', "[1,]", '{"a" 1}', "\ufeff{}", '"\\ud800"',
         '{"a":"\\x"}', '{"a":1,"a":2}', '{"args":[1],"args":2}', '{"__map__":{"parm_1":1}}',
         '{"__map__":{"parm_1":"func"}}', '{"__map__":{"parm_1":"__request__"}}', "[[1],{\"args\":[2]}]",
         "{}{}", "[] []", " ", "\t\n", "\x00", "{\"a\":\"\x01\"}", "1 2", "01", "+1", ".5", "Infinity"]
    ),  # fmt: skip
    json_values.map(lambda v: json.dumps(v)[:-1] if json.dumps(v)[:-1] else "{"),  # truncated
).map(lambda s: s.encode("utf-8", "surrogatepass"))

form_bodies = query_strings().map(lambda s: s.encode())
multipart_bodies = st.builds(
    lambda name, value: (
        f'--xyz\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n--xyz--\r\n'.encode()
    ),
    st.sampled_from(KEY_NAMES),
    st.text(alphabet=string.ascii_letters, max_size=10),
)
# Over DPMS_MAX_BODY (1 MiB by default): a 413.
HUGE_BODY = b"[[" + b"0," * 600_000 + b"0]]"

bodies = st.one_of(
    st.none(),
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped_objects().map(lambda v: json.dumps(v).encode()),
    shaped_objects().map(lambda v: json.dumps(v).encode()),
    rpc_arrays().map(lambda v: json.dumps(v).encode()),
    big_numbers(),
    deep_json(),
    invalid_json,
    st.binary(max_size=3000),
    form_bodies,
    multipart_bodies,
    st.just(HUGE_BODY),
)

extra_headers = st.lists(
    st.one_of(
        st.tuples(st.just("Accept"), st.sampled_from(["*/*", "application/json", "text/html", ""])),
        st.tuples(st.just("X-Fuzz"), st.text(alphabet=string.ascii_letters + " ;=,", max_size=30)),
        st.tuples(st.just("Accept-Encoding"), st.sampled_from(["gzip", "identity", "br, gzip;q=0"])),
        st.tuples(st.just("Origin"), st.just("http://127.0.0.1:1")),
    ),
    max_size=2,
)


@st.composite
def fuzz_requests(draw) -> FuzzRequest:
    target, routed = draw(targets())
    if routed and draw(st.sampled_from([True, True, False])):
        # Mostly a method the route has, so that the call reaches the function.
        method = draw(st.sampled_from(routed + (("HEAD",) if "GET" in routed else ())))
    else:
        method = draw(methods)
    body = draw(bodies)
    content_type = draw(content_types)
    if body is not None and content_type is not None and maybe(draw, 3):
        # Match the body to a plausible type more often than chance would.
        content_type = draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded"]))
    chunked = body is not None and maybe(draw, 6)
    expect = body is not None and maybe(draw, 10)
    follow_up = maybe(draw, 4)
    return FuzzRequest(method, target, content_type, body, chunked, expect, follow_up, draw(extra_headers))


# --------------------------------------------------------------------------------------------
# Checks


def check_reply(req: FuzzRequest, r: Reply) -> None:
    where = f"request {req!r}\nresponse {r.describe()}"
    STATS["statuses"][r.status] = STATS["statuses"].get(r.status, 0) + 1
    assert r.status in ERROR_CODES or r.status in (200, 204), f"unexpected status {r.status}\n{where}"
    assert r.header("x-request-id"), f"no X-Request-Id\n{where}"
    if req.method not in STANDARD_METHODS:
        assert r.status >= 400, f"{req.method[:40]!r} is no routed method\n{where}"
    else:
        assert r.status != 501, f"501 for a standard method\n{where}"
    if r.status == 204:
        assert req.method == "OPTIONS", f"204 for {req.method}\n{where}"
        assert r.header("allow") is not None, f"204 without Allow\n{where}"
    if req.method == "HEAD" or r.status == 204:
        assert r.body == b"", f"HEAD/204 with a body\n{where}"
        return
    assert r.header("content-type") == JSON_CT, f"content type\n{where}"
    try:
        body = json.loads(r.body)
    except ValueError as e:
        raise AssertionError(f"body is not JSON ({e})\n{where}") from None
    assert isinstance(body, dict), where
    if r.status == 200:
        check_success(req, body, where)
        return
    code = body.get("error")
    assert code in ERROR_CODES[r.status], f"error code {code!r} for {r.status}\n{where}"
    allowed = {"status", "error"} | EXTRA_KEYS.get(code, set())
    assert set(body) == allowed, f"keys {sorted(body)}, want {sorted(allowed)}\n{where}"
    assert isinstance(body["status"], str) and body["status"], where
    if code == "method_undefined":
        assert r.header("allow"), f"method_undefined without Allow\n{where}"
    if code == "ambiguous_api":
        assert isinstance(body["candidates"], list) and len(body["candidates"]) >= 2, where
    if code == "plugin_error":
        # Only the plugins that raise on purpose may produce a plugin error: anything else (say a
        # TypeError from binding the call) is dpms failing to answer 400.
        assert isinstance(body["exception"], str) and BOOM in body["exception"], (
            f"plugin error that is not the fuzz plugin's own exception\n{where}"
        )


def check_success(req: FuzzRequest, body: dict, where: str) -> None:
    assert body.get("status") == "OK", where
    if "response" not in body:  # the index at `/` or __dir__
        return
    resp = body["response"]
    assert isinstance(resp, dict) and len(resp) == 1, where
    (key, value), = resp.items()
    module, _, function = key.rpartition(".")
    assert function not in RAISING_FUNCTIONS or module not in (MOD_A, MOD_B), f"a raising plugin returned\n{where}"
    if key in (f"{MOD_A}.kw_echo", f"{MOD_A}.aecho"):
        assert value["method"] == req.method, f"__request__.method\n{where}"
        for reserved in ("__request__",):
            assert reserved not in value["keys"], where
        if req.body is not None and req.method not in ("GET", "HEAD", "OPTIONS"):
            assert value["body_len"] == len(req.body), f"__request__.body is not the body sent\n{where}"


def known_good(port: int) -> None:
    conn = Conn(port)
    try:
        conn.send(b"GET /rest/services/hello-world/still-ok/?a=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = conn.response("GET")
    finally:
        conn.close()
    assert r.status == 200, r.describe()
    kwargs = json.loads(r.body)["response"]["module1.foo"]["kwargs"]
    assert kwargs["parm_1"] == "still-ok" and kwargs["a"] == "1", r.describe()


# --------------------------------------------------------------------------------------------
# Fixtures and tests


@pytest.fixture(scope="module")
def fuzz_server(server, write_module_plugin, request):
    write_module_plugin(MOD_A, source(PLUGIN_A, alias=ALIAS_A, kw=API_KW, req=API_REQ, pos=API_POS,
                                      pos2=API_POS2, va=API_VA, marker=BOOM, dup=API_DUP,
                                      **{"async": API_ASYNC, "boom": API_BOOM, "aboom": API_ABOOM}))  # fmt: skip
    write_module_plugin(MOD_B, source(PLUGIN_B, dup=API_DUP, none=API_NONE))
    started = time.monotonic()
    yield server
    elapsed = time.monotonic() - started
    line = (
        f"dpms fuzz: {STATS['requests']} requests, {STATS['examples']} examples, {elapsed:.1f} s, "
        f"statuses {dict(sorted(STATS['statuses'].items()))}, "
        f"unannounced closes after an unread body {STATS.get('silent_close', 0)}"
    )
    # Shown even without -s: the summary is the point of a long run.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write("\n" + line + "\n")
    else:
        print(line)
    if REPORT_FILE:
        pathlib.Path(REPORT_FILE).write_text(
            json.dumps({"requests": STATS["requests"], "examples": STATS["examples"], "seconds": round(elapsed, 1),
                        "max_examples": MAX_EXAMPLES, "statuses": STATS["statuses"]}) + "\n"  # fmt: skip
        )


def test_fuzz_plugins_answer(fuzz_server):
    """The fuzz targets are routable before the fuzz starts (else it would only ever see 404s)."""
    s = fuzz_server
    STATS["requests"] += 4
    assert ok(s.get(f"{API_KW}/p/?a=1"), f"{MOD_A}.kw_echo")["method"] == "GET"
    assert ok(s.post(f"{ALIAS_A}/{API_REQ}/", json={"args": [1, 2]}), f"{MOD_A}.required") == [1, 2, None]
    r = s.get(f"{API_BOOM}/")
    assert r.status_code == 500 and r.json()["error"] == "plugin_error", r.text
    assert s.get(f"{API_DUP}/").status_code == 409


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=False,
    database=None,  # nothing written outside pytests/; a failure prints its reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],  # fmt: skip
)
@given(req=fuzz_requests())
def test_fuzz_http(fuzz_server, req):
    STATS["examples"] += 1
    port = fuzz_server.port
    conn = Conn(port)
    try:
        send_error = conn.send(req.head(port, close=not req.follow_up) + req.encoded_body())
        try:
            r = conn.response(req.method)
        except socket.timeout:
            raise AssertionError(f"no answer within {REQUEST_TIMEOUT} s: {req!r}") from None
        except EOFError as e:
            raise AssertionError(f"connection closed without an answer ({e}; send: {send_error!r}): {req!r}") from None
        check_reply(req, r)
        closing = (r.header("connection") or "").lower() == "close"
        if req.follow_up and not closing:
            # The same connection must still be in sync: the body (read or not) is behind us.
            # Known and tolerated (counted, reported at the end): when dpms answers without
            # reading the whole body (an error, OPTIONS or `/` with a chunked body of more than one
            # chunk, a body over ~16 KB, an `Expect: 100-continue` body it never asked for), hyper
            # closes the connection without announcing `Connection: close`. HTTP lets a server
            # close an idle connection at any time, and a clean close is no desync; a wrong or
            # partial answer is, and so is a close after a request without a body.
            may_close = bool(req.body)
            follow = b"GET /rest/services/hello-world/again/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            if conn.send(follow) is not None:
                assert may_close, f"follow-up could not be sent after {r.describe()}: {req!r}"
                STATS["silent_close"] = STATS.get("silent_close", 0) + 1
                return
            try:
                r2 = conn.response("GET")
            except EOFError as e:
                if may_close and not conn.buf:
                    STATS["silent_close"] = STATS.get("silent_close", 0) + 1
                    return
                raise AssertionError(f"no answer to the follow-up ({e}) after {r.describe()}: {req!r}") from None
            except socket.timeout:
                raise AssertionError(f"no answer to the follow-up within {REQUEST_TIMEOUT} s: {req!r}") from None
            assert r2.status == 200, f"follow-up got {r2.describe()}\nafter {req!r} -> {r.describe()}"
            assert json.loads(r2.body)["response"]["module1.foo"]["kwargs"]["parm_1"] == "again", r2.describe()
        else:
            try:
                rest = conn.rest()
            except socket.timeout:
                raise AssertionError(f"connection not closed after Connection: close: {req!r}") from None
            assert rest == b"", f"bytes after the response ({rest[:200]!r}): {req!r} -> {r.describe()}"
    finally:
        conn.close()


def test_fuzz_server_still_answers(fuzz_server):
    STATS["requests"] += 1
    known_good(fuzz_server.port)

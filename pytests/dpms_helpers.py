"""Helpers shared by the dpms pytest suite: starting servers, writing plugins, checking responses.

Imported by ``conftest.py`` and the test modules (``pytests/`` is on ``sys.path`` because it has no
``__init__.py``). Everything here binds or connects to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from string import Template
from urllib.parse import urlsplit

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLE_PLUGINS = ROOT / "plugins"
TIMEOUT = 30  # seconds, every HTTP call
STARTUP_TIMEOUT = 60  # seconds to wait for the "listening on" line
STOP_TIMEOUT = 10
JSON_CT = "application/json; charset=utf-8"
ROUTED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")

# Settings a started server must not inherit from the environment running the tests.
_SETTING_RE = re.compile(
    r"^(plugins|DPMS_.*|NUM_URL_PARMS|URL_PARM\d+|MAX_FUNCTION_SECS|DEBUG|MULTI_TENANT|ADMIN_ID"
    r"|VIRTUAL_ENV|PYTHONPATH|PYTHONHOME)$"
)


def unique(prefix: str = "t") -> str:
    """A name no other test uses: a valid Python identifier (usable as a module stem)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def api_name(prefix: str = "api") -> str:
    """A unique API name with hyphens, the way public names usually look."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def source(template: str, **subs) -> str:
    """Dedent a plugin template and fill ``$name`` placeholders."""
    return Template(textwrap.dedent(template).lstrip("\n")).substitute(**subs)


def write_atomic(path: pathlib.Path, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` by rename: a temp file (not ending in .py) in the same folder."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class PluginWriter:
    """``writer(name, source, folder=None)`` writes ``<name>.py`` atomically; ``cleanup()`` removes."""

    def __init__(self, default_folder):
        self._default_folder = default_folder  # a callable giving the folder lazily
        self.paths: set[pathlib.Path] = set()

    def __call__(self, name: str, text: str, folder=None) -> pathlib.Path:
        folder = pathlib.Path(folder) if folder is not None else pathlib.Path(self._default_folder())
        path = folder / f"{name}.py"
        write_atomic(path, textwrap.dedent(text))
        self.paths.add(path)
        return path

    def delete(self, name: str, folder=None) -> None:
        folder = pathlib.Path(folder) if folder is not None else pathlib.Path(self._default_folder())
        (folder / f"{name}.py").unlink(missing_ok=True)

    def cleanup(self) -> None:
        for path in self.paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        self.paths.clear()


# --------------------------------------------------------------------------------------------
# Raw HTTP (for paths and methods requests would normalise)


class RawResponse:
    def __init__(self, status, headers, body: bytes, method: str, path: str):
        self.status_code = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive .get()
        self.content = body
        self.text = body.decode("utf-8", "replace")
        self.method = method
        self.path = path
        self.url = path

    def json(self):
        return json.loads(self.content)

    def describe(self):
        path = self.path if len(self.path) < 300 else self.path[:300] + f"...({len(self.path)} chars)"
        return f"{self.method} {path} -> {self.status_code} {dict(self.headers)} {self.text[:2000]!r}"


class Server:
    """A running dpms: ``.url`` (http://127.0.0.1:PORT) and ``.plugin_dir`` (a writable folder)."""

    def __init__(self, url, plugin_dir, plugin_dirs=None, proc=None, workdir=None):
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        assert parts.hostname == "127.0.0.1", f"tests only talk to 127.0.0.1, not {self.url}"
        self.host = parts.hostname
        self.port = parts.port
        self.base = self.url + "/rest/services"
        self.plugin_dir = pathlib.Path(plugin_dir) if plugin_dir is not None else None
        self.plugin_dirs = [pathlib.Path(p) for p in (plugin_dirs or [])]
        self.proc = proc
        self.workdir = pathlib.Path(workdir) if workdir else None

    # URLs: "/x" is relative to the server root, "x" to /rest/services/.
    def abs(self, path: str) -> str:
        if path.startswith("http://"):
            return path
        if path.startswith("/"):
            return self.url + path
        return self.base + "/" + path

    def request(self, method, path, **kw):
        kw.setdefault("timeout", TIMEOUT)
        return requests.request(method, self.abs(path), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def options(self, path, **kw):
        return self.request("OPTIONS", path, **kw)

    def dir(self, path: str = "__dir__/") -> dict:
        r = self.get(path)
        assert r.status_code == 200, describe(r)
        return body_json(r)

    def raw(self, method: str, path: str, body: bytes | None = None, headers=None) -> RawResponse:
        """Send ``path`` byte for byte ("x" is relative to /rest/services/, "/x" to the root)."""
        if not path.startswith("/"):
            path = "/rest/services/" + path
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        try:
            conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
            hdrs = dict(headers or {})
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return RawResponse(resp.status, resp.headers, data, method, path)
        finally:
            conn.close()

    # Process control (only for servers this suite started).
    def log(self) -> str:
        if not self.workdir:
            return ""
        out = []
        for name in ("stdout.log", "stderr.log"):
            p = self.workdir / name
            if p.exists():
                out.append(f"--- {name} ---\n" + p.read_text("utf-8", "replace")[-6000:])
        return "\n".join(out)

    def full_log(self) -> str:
        """All the server has logged so far (``log()`` keeps only the tail)."""
        if not self.workdir:
            return ""
        return "\n".join(
            (self.workdir / name).read_text("utf-8", "replace")
            for name in ("stdout.log", "stderr.log")
            if (self.workdir / name).exists()
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to the supervisor we started
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # Its workers share the process group we created (start_new_session): make sure none is left.
        try:
            os.killpg(proc.pid, 0)
            still_there = True
        except (ProcessLookupError, PermissionError):
            still_there = False
        if still_there:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if proc.stdout:
            try:
                proc.stdout.close()
            except OSError:
                pass


def binary_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DPMS_BIN") or ROOT / "target" / "debug" / "dpms")


def clean_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not _SETTING_RE.match(k)}
    env.update(extra or {})
    return env


def launch(tmp_root: pathlib.Path, env=None, plugin_dirs=None, name="server", dotenv=None) -> Server:
    """Start ``dpms serve`` on 127.0.0.1:0 in a fresh working folder and wait for its address.

    ``dotenv``: the text of a ``.env`` file written into the working folder first.
    ``plugin_dirs`` defaults to [<repo>/plugins, <new temp folder>]; ``.plugin_dir`` is the last
    folder given (the temp folder by default).
    """
    binary = binary_path()
    if not binary.exists():
        raise RuntimeError(f"dpms binary not found at {binary}: run `cargo build` or set DPMS_BIN")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root))
    if dotenv is not None:
        (workdir / ".env").write_text(dotenv, encoding="utf-8")
    if plugin_dirs is None:
        own = workdir / "plugins"
        own.mkdir()
        plugin_dirs = [SAMPLE_PLUGINS, own]
    plugin_dirs = [pathlib.Path(p) for p in plugin_dirs]
    full_env = clean_env({"plugins": ":".join(str(p) for p in plugin_dirs)})
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    stderr = open(workdir / "stderr.log", "wb")
    try:
        proc = subprocess.Popen(
            [str(binary), "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    finally:
        stderr.close()  # the child holds its own descriptor
    server = Server("http://127.0.0.1:1", plugin_dirs[-1], plugin_dirs, proc, workdir)
    first: queue.Queue = queue.Queue()

    def pump():
        # Drain stdout for the server's whole life so the pipe never fills.
        sent = False
        with open(workdir / "stdout.log", "ab") as out:
            for line in iter(proc.stdout.readline, b""):
                if not sent:
                    first.put(line)
                    sent = True
                out.write(line)
                out.flush()
        if not sent:
            first.put(None)

    threading.Thread(target=pump, name=f"dpms-stdout-{name}", daemon=True).start()
    try:
        line = first.get(timeout=STARTUP_TIMEOUT)
    except queue.Empty:
        server.stop()
        raise RuntimeError(f"dpms printed no address within {STARTUP_TIMEOUT} s\n{server.log()}")
    if line is None:
        try:
            rc = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        server.stop()
        raise RuntimeError(f"dpms exited (rc={rc}) before printing its address\n{server.log()}")
    m = re.match(rb"listening on (http://127\.0\.0\.1:(\d+))\s*$", line)
    if not m:
        server.stop()
        raise RuntimeError(f"unexpected first stdout line {line!r}\n{server.log()}")
    url = m.group(1).decode()
    server.url = url
    server.port = int(m.group(2))
    server.base = url + "/rest/services"
    return server


class Launcher:
    """``start_server(env=None, plugin_dirs=None)``: every server it starts is stopped at close."""

    def __init__(self, tmp_root):
        self.tmp_root = tmp_root
        self.servers: list[Server] = []

    def __call__(self, env=None, plugin_dirs=None, dotenv=None) -> Server:
        server = launch(self.tmp_root, env=env, plugin_dirs=plugin_dirs, name="dedicated", dotenv=dotenv)
        self.servers.append(server)
        return server

    def close(self):
        for server in self.servers:
            server.stop()
        self.servers.clear()


# --------------------------------------------------------------------------------------------
# Assertions


def describe(r) -> str:
    if isinstance(r, RawResponse):
        return r.describe()
    url = r.url if len(r.url) < 300 else r.url[:300] + f"...({len(r.url)} chars)"
    return f"{r.request.method} {url} -> {r.status_code} {dict(r.headers)} {r.text[:2000]!r}"


def body_json(r):
    ct = r.headers.get("Content-Type")
    assert ct == JSON_CT, f"content type {ct!r}: {describe(r)}"
    try:
        return r.json()
    except ValueError as e:  # pragma: no cover - reported as a failure
        raise AssertionError(f"not JSON ({e}): {describe(r)}")


def ok(r, key: str | None = None):
    """Assert a 200 envelope and return the single result (under ``key`` if given)."""
    assert r.status_code == 200, describe(r)
    body = body_json(r)
    assert set(body) == {"status", "response"}, body
    assert body["status"] == "OK", body
    resp = body["response"]
    assert isinstance(resp, dict) and len(resp) == 1, body
    if key is not None:
        assert list(resp) == [key], body
    return next(iter(resp.values()))


def error(r, status: int, code: str, extra=()) -> dict:
    """Assert an error response: ``status``, JSON with exactly status/error plus ``extra`` keys."""
    assert r.status_code == status, describe(r)
    body = body_json(r)
    assert isinstance(body, dict), body
    assert set(body) == {"status", "error", *extra}, f"keys {sorted(body)}: {describe(r)}"
    assert body["error"] == code, describe(r)
    assert isinstance(body["status"], str) and body["status"], body
    return body


def allow_set(r) -> set:
    allow = r.headers.get("Allow")
    assert allow is not None, f"no Allow header: {describe(r)}"
    return {m.strip().upper() for m in allow.split(",") if m.strip()}


def find_import(dir_body: dict, stem: str):
    """The ``imports`` entry that reports the file ``<stem>.py``, or None."""
    imports = dir_body.get("imports", {})
    for key in (stem, f"{stem}.py"):
        if key in imports:
            return imports[key]
    for key, entry in imports.items():
        if isinstance(entry, dict) and str(entry.get("file", "")).endswith(f"/{stem}.py"):
            return entry
        if key.endswith(f"/{stem}.py"):
            return entry
    return None


def wait_for(predicate, timeout=20.0, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Probe:
    """Calls a test plugin's APIs, all named ``<prefix>-<api>``; ``echo`` returns the result of
    its ``<prefix>-echo`` API (function ``echo_func``)."""

    def __init__(self, server, mod, prefix, echo_func="echo"):
        self.server = server
        self.mod = mod
        self.p = prefix
        self.echo_func = echo_func

    def call(self, method, api, path="", **kw):
        return self.server.request(method, f"{self.p}-{api}/{path}", **kw)

    def echo(self, method="POST", path="", **kw):
        return ok(self.call(method, "echo", path, **kw), f"{self.mod}.{self.echo_func}")


#: A plugin whose import announces itself (``<gate>.waiting``), waits until the test creates
#: ``$gate`` (bounded: ``$tries`` x 25 ms), then marks ``<gate>.done``: a slow import the test
#: controls with events.
GATED_IMPORT = """
import os, time
from vyperlogix.decorators import expose
_gate = "$gate"
open(_gate + ".waiting", "w").close()
for _ in range($tries):
    if os.path.exists(_gate):
        break
    time.sleep(0.025)
open(_gate + ".done", "w").close()

@expose.endpoint(method="GET", API="$api")
def slow():
    return "$version"
"""

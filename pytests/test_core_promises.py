"""Issue 10: the core promises under real use (SPEC §1, §2, §4, §6, §8, §9).

Each test here is a regression test for a fault found by trying dpms as a new user or an
attacker would; each one failed before its fix.
"""

import os
import subprocess
import tempfile
import uuid

import pytest
import requests

from dpms_helpers import (
    TIMEOUT,
    api_name,
    binary_path,
    clean_env,
    error,
    ok,
    source,
    unique,
)


def run_serve(workdir, env, timeout=30):
    """Runs ``dpms serve`` in ``workdir`` expecting it to refuse to start; returns (rc, stderr)."""
    proc = subprocess.run(
        [str(binary_path()), "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=workdir,
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


# --- Configuration (SPEC §7, §8) -------------------------------------------------------------


@pytest.mark.parametrize("where", ["env", "dotenv"])
def test_multi_tenant_true_without_admin_id_refuses_to_start(tmp_path, where):
    (tmp_path / "plugins").mkdir()
    env = {}
    if where == "env":
        env["MULTI_TENANT"] = "True"
    else:
        (tmp_path / ".env").write_text("MULTI_TENANT=True\n")
    rc, err = run_serve(tmp_path, env)
    assert rc != 0, err
    lines = [line for line in err.splitlines() if "MULTI_TENANT" in line]
    assert len(lines) == 1, err
    assert "refusing to start" in lines[0] and "ADMIN_ID" in lines[0], err


def test_missing_default_plugin_folder_names_no_unset_variable(tmp_path):
    rc, err = run_serve(tmp_path, {})
    assert rc != 0, err
    assert "./plugins" in err and "does not exist" in err, err
    assert "DPMS_PLUGINS" not in err, err


def test_unknown_dotenv_keys_reach_os_environ(start_server, write_plugin):
    name, api = unique("envread"), api_name("env")
    server = start_server(
        env={"DPMS_WORKERS": "2", "OVERRIDDEN_KEY": "from-process"},
        dotenv="MONGO_URI=mongodb://db:27017/?a=1  # as the old framework had it\n"
        "ADMIN_TABLE = admins\nOVERRIDDEN_KEY=from-dotenv\n",
    )
    write_plugin(
        name,
        source(
            """
            import os
            from vyperlogix.decorators import expose

            @expose.endpoint(method="GET", API="$api")
            def read(*args, **kwargs):
                return {k: os.environ.get(k) for k in ("MONGO_URI", "ADMIN_TABLE", "OVERRIDDEN_KEY")}
            """,
            api=api,
        ),
        folder=server.plugin_dir,
    )
    got = ok(server.get(f"{api}/"))
    assert got == {
        "MONGO_URI": "mongodb://db:27017/?a=1",
        "ADMIN_TABLE": "admins",
        "OVERRIDDEN_KEY": "from-process",
    }
    assert "ignoring" not in server.log()


# --- X-Request-Id (SPEC §4) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("my-trace.id:42_x", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
    ],
)
def test_client_request_id(server, sent, kept):
    r = server.get("__dir__/", headers={"X-Request-Id": sent})
    assert r.status_code == 200
    got = r.headers["X-Request-Id"]
    if kept:
        assert got == sent
    else:
        assert got != sent and uuid.UUID(got)


def test_client_request_id_on_errors_too(server):
    r = server.get("no-such-api-anywhere/", headers={"X-Request-Id": "err-trace-1"})
    error(r, 404, "api_undefined")
    assert r.headers["X-Request-Id"] == "err-trace-1"


# --- What counts as exposed (SPEC §1) --------------------------------------------------------

WRAPPED_HELPER = """
def plain_wrapper(func):
    # no functools.wraps: the wrapper knows nothing of func but its closure
    def inner(*args, **kwargs):
        return {"wrapped": func(*args, **kwargs)}
    return inner
"""

WRAPPED_SRC = """
import functools
from vyperlogix.decorators import expose
import $helper

calls = []

@functools.lru_cache(maxsize=None)
@expose.endpoint(method="GET", API="$p-cached-outer")
def cached_outer(n="1"):
    calls.append(n)
    return {"n": n, "calls": len(calls)}

@expose.endpoint(method="GET", API="$p-cached-inner")
@functools.lru_cache(maxsize=None)
def cached_inner(n="1"):
    calls.append(n)
    return {"n": n, "calls": len(calls)}

@$helper.plain_wrapper
@expose.endpoint(method="GET", API="$p-plain-outer")
def plain_outer(*args, **kwargs):
    return "outer"

@expose.endpoint(method="GET", API="$p-plain-inner")
@$helper.plain_wrapper
def plain_inner(*args, **kwargs):
    return "inner"
"""


@pytest.fixture(scope="module")
def wrapped(server, write_module_plugin):
    p = f"wr{uuid.uuid4().hex[:8]}"
    helper, mod = unique("wrhelper"), unique("wrapped")
    write_module_plugin(helper, WRAPPED_HELPER)
    write_module_plugin(mod, source(WRAPPED_SRC, p=p, helper=helper))
    return server, mod, p


@pytest.mark.parametrize("which", ["cached-outer", "cached-inner"])
def test_lru_cache_endpoint_is_routable_and_cached(wrapped, which):
    server, mod, p = wrapped
    first = ok(server.get(f"{p}-{which}/", params={"n": "7"}))
    again = ok(server.get(f"{p}-{which}/", params={"n": "7"}))
    assert first["n"] == again["n"] == "7"


@pytest.mark.parametrize("which, result", [("plain-outer", {"wrapped": "outer"}), ("plain-inner", {"wrapped": "inner"})])
def test_wrapper_without_functools_wraps_is_routable(wrapped, which, result):
    server, mod, p = wrapped
    r = server.get(f"{p}-{which}/")
    assert ok(r) == result
    key = next(iter(r.json()["response"]))
    assert key == f"{mod}.{which.replace('-', '_')}"
    assert server.dir()["imports"][mod].get("errors", []) == []


@pytest.mark.parametrize(
    "keyword, wanted",
    [('methods="POST"', "method"), ('Method="POST"', "method"), ('api="$api"', "API"),
     ('APIs="$api"', "API"), ('metod="POST"', "method")],
)
def test_misspelt_decorator_keyword_is_a_load_error(server, write_plugin, keyword, wanted):
    mod, api = unique("typo"), api_name("typo")
    write_plugin(
        mod,
        source(
            """
            from vyperlogix.decorators import expose

            @expose.endpoint($keyword)
            def ${mod}_fn(*args, **kwargs):
                return "published"

            @expose.endpoint(method="GET", API="$api-fine", owner="kept as metadata")
            def fine(*args, **kwargs):
                return "fine"
            """,
            keyword=source(keyword, api=api),
            mod=mod,
            api=api,
        ),
    )
    error(server.get(f"{mod}_fn/"), 404, "api_undefined")
    error(server.get(f"{api}/"), 404, "api_undefined")
    assert ok(server.get(f"{api}-fine/")) == "fine"
    errors = server.dir()["imports"][mod]["errors"]
    assert len(errors) == 1 and f"did you mean `{wanted}=`" in errors[0], errors


# --- Helpers (SPEC §2) -----------------------------------------------------------------------


def test_helper_sorting_after_its_importer(server, write_plugin):
    tag = uuid.uuid4().hex[:8]
    importer, helper, api = f"a_calc_{tag}", f"z_mathutil_{tag}", api_name("calc")
    write_plugin(helper, "FACTOR = 2\n\ndef times(x):\n    return x * FACTOR\n")
    write_plugin(
        importer,
        source(
            """
            from vyperlogix.decorators import expose
            import $helper

            @expose.endpoint(method="GET", API="$api")
            def calc(x="3"):
                return {"result": $helper.times(int(x)), "file": $helper.__file__.endswith("$helper.py")}
            """,
            helper=helper,
            api=api,
        ),
    )
    assert ok(server.get(f"{api}/", params={"x": "5"})) == {"result": 10, "file": True}
    write_plugin(helper, "FACTOR = 7\n\ndef times(x):\n    return x * FACTOR\n")
    assert ok(server.get(f"{api}/", params={"x": "5"})) == {"result": 35, "file": True}


def test_dotted_stdlib_stem_is_refused(server, write_plugin):
    api = api_name("urlopen")
    write_plugin("http.client", "raise RuntimeError('must never run')\n")
    mod = unique("useurllib")
    write_plugin(
        mod,
        source(
            """
            import urllib.request
            from vyperlogix.decorators import expose

            @expose.endpoint(method="GET", API="$api")
            def use(*args, **kwargs):
                return urllib.request.Request("http://127.0.0.1/").get_method()
            """,
            api=api,
        ),
    )
    try:
        assert ok(server.get(f"{api}/")) == "GET"
        entry = server.dir()["imports"]["http.client.py"]
        assert entry["status"] == "error" and "standard-library" in entry["error"], entry
    finally:
        write_plugin.delete("http.client")


# --- dpms owns the framing (SPEC §6) ---------------------------------------------------------

FRAMING_SRC = """
from dpms import Response, expose

@expose.endpoint(method="GET", API="$api")
def framed(case):
    if case == "length":
        return Response("h\\u00e9llo", headers={"Content-Length": "5", "Transfer-Encoding": "gzip", "Connection": "close"})
    if case == "cookies":
        return Response("ok", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    if case == "s101":
        return Response("up", status=101, headers={"Upgrade": "websocket"})
    if case == "s100":
        return Response("c", status=100)
    if case == "s204":
        return Response("ignored body", status=204)
    if case == "crlf":
        return Response("x", headers={"X-Bad": "a\\r\\nX-Injected: 1"})
"""


@pytest.fixture(scope="module")
def framing(server, write_module_plugin):
    api = api_name("framing")
    write_module_plugin(unique("framing"), source(FRAMING_SRC, api=api))
    return server, api


def test_plugin_framing_headers_are_ignored(framing):
    server, api = framing
    with requests.Session() as s:  # one kept-alive connection: a wrong length would desync it
        for _ in range(3):
            r = s.get(f"{server.base}/{api}/", params={"case": "length"}, timeout=TIMEOUT)
            assert r.status_code == 200 and r.text == "h\u00e9llo"
            assert r.headers["Content-Length"] == str(len("h\u00e9llo".encode()))
            assert "Transfer-Encoding" not in r.headers
            assert r.headers.get("Connection") != "close"


def test_two_set_cookie_headers(framing):
    server, api = framing
    r = server.raw("GET", f"/rest/services/{api}/?case=cookies")
    assert r.status_code == 200
    assert r.headers.get_all("Set-Cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("case", ["s101", "s100", "crlf"])
def test_bad_status_or_header_is_plugin_error(framing, case):
    server, api = framing
    body = error(server.get(f"{api}/", params={"case": case}), 500, "plugin_error", extra=("exception",))
    assert "dpms.Response" in body["exception"]


def test_204_has_no_body(framing):
    server, api = framing
    r = server.raw("GET", f"/rest/services/{api}/?case=s204")
    assert r.status_code == 204 and r.content == b""
    assert r.headers.get("Content-Type") is None

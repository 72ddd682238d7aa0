"""CORS (SPEC §13, `DPMS_CORS_ORIGINS`) through real servers: off by default; an allowed origin
gets its headers on every answer (errors too) and its preflight answered before routing and
before tokens; any other origin gets none; `*`; a bad setting stops the server with one line."""

from __future__ import annotations

import subprocess

import pytest

from dpms_helpers import TIMEOUT, binary_path, clean_env, describe, write_atomic

ADMIN = "2f6c8e1a-3b5d-4f7a-9c2e-4d6f8a0b1c3e"
APP = "http://app.example:3000"


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cors-plugins")
    write_atomic(
        folder / "cors_sample.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET|POST', API='cors-hello')\n"
        "def hello(**kwargs):\n"
        "    return 'hi'\n",
    )
    return folder


def preflight(server, path, origin, method="POST", headers="authorization, content-type"):
    return server.request(
        "OPTIONS",
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )


def test_off_by_default(start_server, plugins):
    s = start_server(env={"DPMS_WORKERS": "1"}, plugin_dirs=[plugins])
    r = s.get("/rest/services/cors-hello/", headers={"Origin": APP})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers, describe(r)
    r = preflight(s, "/rest/services/cors-hello/", APP)
    assert "Access-Control-Allow-Origin" not in r.headers, describe(r)


def test_listed_origins(start_server, plugins):
    s = start_server(
        env={"DPMS_WORKERS": "1", "DPMS_CORS_ORIGINS": f"https://other.example, {APP}/"},
        plugin_dirs=[plugins],
    )
    for method, path, status in [
        ("GET", "/rest/services/cors-hello/", 200),
        ("POST", "/rest/services/cors-hello/", 200),
        ("GET", "/rest/services/no-such-api/", 404),
        ("DELETE", "/rest/services/cors-hello/", 404),
    ]:
        r = s.request(method, path, headers={"Origin": APP})
        assert r.status_code == status, describe(r)
        assert r.headers["Access-Control-Allow-Origin"] == APP, describe(r)
        assert "Origin" in r.headers["Vary"], describe(r)
        assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"], describe(r)
    r = preflight(s, "/rest/services/cors-hello/", APP)
    assert r.status_code == 204, describe(r)
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    # Another origin: nothing, and its preflight is a plain OPTIONS.
    for origin in ["http://evil.example", "http://app.example:3001", "null"]:
        r = s.get("/rest/services/cors-hello/", headers={"Origin": origin})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers, describe(r)
        r = preflight(s, "/rest/services/cors-hello/", origin)
        assert "Access-Control-Allow-Origin" not in r.headers, describe(r)
        assert "Access-Control-Allow-Methods" not in r.headers, describe(r)
    # No Origin: a plain request, no CORS headers.
    r = s.get("/rest/services/cors-hello/")
    assert "Access-Control-Allow-Origin" not in r.headers, describe(r)


def test_any_origin_and_preflights_before_tokens(start_server, plugins, tmp_path):
    s = start_server(
        env={"DPMS_WORKERS": "1", "DPMS_CORS_ORIGINS": "*", "ADMIN_ID": ADMIN, "DPMS_REQUIRE_TOKENS": "True",
             "DPMS_DATA_DIR": str(tmp_path / "data")},
        plugin_dirs=[plugins],
    )
    # A preflight carries no token: answered anyway.
    r = preflight(s, "/rest/services/cors-hello/", "https://anywhere.example")
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*", describe(r)
    r = preflight(s, "/rest/admin/tenants", "https://anywhere.example", method="GET")
    assert r.status_code == 204, describe(r)
    # The call itself still needs its token; the 401 is readable by the page.
    r = s.get("/rest/services/cors-hello/", headers={"Origin": "https://anywhere.example"})
    assert r.status_code == 401, describe(r)
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in r.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("value", ["app.example", "ftp://x.example", "https://a.example/path", "https://*.a"])
def test_a_bad_setting_stops_the_server(value, tmp_path):
    p = subprocess.run(
        [str(binary_path()), "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,
        env=clean_env({"DPMS_CORS_ORIGINS": value, "plugins": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode != 0
    assert "DPMS_CORS_ORIGINS" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr

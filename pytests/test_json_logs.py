"""`DPMS_LOG_FORMAT=json` (SPEC §13) through a real server: every line it writes to stderr is one
JSON object with the text format's fields (startup, access lines, plugin output, a plugin's
exception with its traceback, a tenant's output), and a bad value stops the server with one
line."""

from __future__ import annotations

import json
import subprocess

import requests

from dpms_helpers import TIMEOUT, binary_path, clean_env, describe, wait_for, write_atomic
from token_helpers import add_tenant

ADMIN = "6f8a0b2c-4d5e-4f7a-9b1c-3d5e7f9a1b2c"


def records(server) -> list[dict]:
    # stderr only: stdout carries the `listening on` line, which is not a log record.
    text = (server.workdir / "stderr.log").read_text("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(rec, dict) and {"timestamp", "level", "target"} <= set(rec), line
        out.append(rec)
    return out


def test_every_line_is_json(start_server, tmp_path):
    data = tmp_path / "data"
    tenant = add_tenant(data, ADMIN, "log")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "log_admin.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='log-hello')\n"
        "def hello():\n"
        "    print('said \"hi\"\\nand a second line')\n"
        "    return 'hi'\n"
        "@expose.endpoint(method='GET', API='log-boom')\n"
        "def boom():\n"
        "    raise ValueError('bad\\nthing')\n",
    )
    write_atomic(
        plugins / "log_tenant.py",
        f"__ID__ = {tenant!r}\n"
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='log-mine')\n"
        "def mine():\n"
        "    print('from the tenant')\n"
        "    return 'mine'\n",
    )
    write_atomic(plugins / "log_broken.py", "def (\n")
    server = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "2", "DPMS_DATA_DIR": str(data),
             "DPMS_LOG_FORMAT": "json"},
        plugin_dirs=[plugins],
    )
    ids = {}
    for path in [f"/rest/services/{ADMIN}/log-hello/", f"/rest/services/{ADMIN}/log-boom/",
                 f"/rest/services/{tenant}/log-mine/", "/rest/services/nothing/"]:
        r = requests.get(server.url + path, timeout=TIMEOUT)
        assert r.status_code in (200, 404, 500), describe(r)
        ids[path] = r.headers["X-Request-Id"]

    def seen():
        recs = records(server)
        return all(any(r.get("target") == "dpms::access" and r.get("id") == i for r in recs) for i in ids.values())

    wait_for(seen, what="every access line")
    recs = records(server)
    access = {r["id"]: r for r in recs if r["target"] == "dpms::access"}
    hello = access[ids[f"/rest/services/{ADMIN}/log-hello/"]]
    assert hello["method"] == "GET" and hello["status"] == 200 and hello["endpoint"] == "log_admin.hello", hello
    assert isinstance(hello["ms"], float) and hello["worker"] in (0, 1) and hello["level"] == "INFO"
    assert access[ids["/rest/services/nothing/"]]["status"] == 404
    # The plugin's output: one record per printed line, tagged with the request id.
    printed = [r for r in recs if r.get("id") == ids[f"/rest/services/{ADMIN}/log-hello/"] and r["target"] != "dpms::access"]
    assert [r.get("message") for r in printed] == ['said "hi"', 'and a second line'], printed
    raised = [r for r in recs if r.get("exception", "").startswith("ValueError")]
    assert raised and "Traceback" in raised[0]["traceback"], raised
    wait_for(lambda: any("from the tenant" in json.dumps(r) for r in records(server)), what="the tenant's output")
    assert any("log_broken" in json.dumps(r) for r in recs), "the import error is logged"


def test_a_bad_value_stops_the_server(tmp_path):
    p = subprocess.run(
        [str(binary_path()), "serve", "--port", "0"],
        cwd=tmp_path,
        env=clean_env({"DPMS_LOG_FORMAT": "yaml", "plugins": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode != 0
    assert "DPMS_LOG_FORMAT" in p.stderr and "`text` or `json`" in p.stderr, p.stderr

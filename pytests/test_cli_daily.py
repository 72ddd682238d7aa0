"""The everyday commands (SPEC §13), run as a user runs them: `dpms check` (1 with file and line
on a syntax error and on a bad decorator, 0 on the samples), `dpms new x` then plain pytest on
the generated test, `dpms call` printing what the server sends, `dpms routes`, and `--help`
with an example for each."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import requests

from dpms_helpers import TIMEOUT, binary_path, clean_env, write_atomic

REPO = pathlib.Path(__file__).resolve().parent.parent


def dpms(*args, cwd, env=None):
    return subprocess.run(
        [str(binary_path()), *args],
        cwd=cwd,
        env=clean_env(env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["routes", "check", "new", "call"])
def test_help_shows_an_example(tmp_path, command):
    p = dpms(command, "--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Example" in p.stdout and f"dpms {command}" in p.stdout, p.stdout


def test_check_the_samples(tmp_path):
    p = dpms("check", str(REPO / "plugins"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == "" and "ok: 4 modules" in p.stderr, p.stderr


def test_check_reports_file_and_line(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    write_atomic(folder / "fine.py", "from vyperlogix.decorators import expose\n@expose.endpoint(API='fine')\ndef fine():\n    return 1\n")
    write_atomic(folder / "syntax.py", "x = 1\n\ndef broken(:\n    pass\n")
    write_atomic(folder / "raises.py", "import os\n\nraise RuntimeError('at import')\n")
    write_atomic(
        folder / "decorators.py",
        "from vyperlogix.decorators import expose\n"
        "\n"
        "\n"
        "@expose.endpoint(method='FETCH', API='bad-method')\n"
        "def bad_method():\n"
        "    return 1\n"
        "\n"
        "@expose.endpoint(methods='GET', API='typo')\n"
        "def typo():\n"
        "    return 2\n"
        "\n"
        "@expose.endpoint(method='GET', API='ok-here', auth='sometimes')\n"
        "def bad_auth():\n"
        "    return 3\n",
    )
    p = dpms("check", str(folder), cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    by_file = {}
    for line in lines:
        file, lineno, message = line.split(":", 2)
        by_file.setdefault(pathlib.Path(file).name, []).append((int(lineno), message.strip()))
    assert "fine.py" not in by_file, lines
    assert [n for n, _ in by_file["syntax.py"]] == [3], lines
    assert "SyntaxError" in by_file["syntax.py"][0][1]
    assert [n for n, _ in by_file["raises.py"]] == [3], lines
    assert "RuntimeError: at import" in by_file["raises.py"][0][1]
    got = dict((m.split(":", 1)[0], n) for n, m in by_file["decorators.py"])
    assert got == {"bad_method": 4, "typo": 8, "bad_auth": 12}, lines
    assert "3 problems" not in p.stderr and "5 problems" in p.stderr, p.stderr


def test_new_then_plain_pytest_then_call(tmp_path):
    p = dpms("new", "orders", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    plugin, test = tmp_path / "plugins" / "orders.py", tmp_path / "tests" / "test_orders.py"
    assert p.stdout.split() == [str(pathlib.Path("plugins") / "orders.py"), str(pathlib.Path("tests") / "test_orders.py")]
    assert plugin.is_file() and test.is_file()
    # Plain pytest, in a fresh process, from another folder: no server, no dpms fixtures.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                         cwd=tmp_path / "tests", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert dpms("check", cwd=tmp_path).returncode == 0
    p = dpms("call", "orders", "-q", "name=you", "-q", "times=2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"status": "OK", "response": {"orders.orders": {"greeting": "hello, you hello, you"}}}
    p = dpms("call", "orders", "-q", "times=lots", cwd=tmp_path)
    assert p.returncode == 1 and json.loads(p.stdout)["error"] == "bad_argument_type", p.stdout
    # Never overwrites; a bad name is refused.
    p = dpms("new", "orders", cwd=tmp_path)
    assert p.returncode == 1 and "exists" in p.stderr
    for bad in ["Orders", "my-api", "class", "1x"]:
        assert dpms("new", bad, cwd=tmp_path).returncode == 2, bad


def test_call_prints_what_the_server_sends(server, tmp_path):
    cases = [
        (["hello-world", "-q", "a=1", "-q", "b=two"], "GET", "/rest/services/hello-world/?a=1&b=two", None),
        (["module1/sample-one/7", "-d", '{"args": [1], "x": {"y": [1.5, null]}}'], "POST",
         "/rest/services/module1/sample-one/7/", '{"args": [1], "x": {"y": [1.5, null]}}'),
        (["hello-world", "-X", "PUT"], "PUT", "/rest/services/hello-world/", None),
        (["no-such-api"], "GET", "/rest/services/no-such-api/", None),
        (["bar2-none", "-X", "DELETE"], "DELETE", "/rest/services/bar2-none/", None),
    ]
    for args, method, path, body in cases:
        r = requests.request(method, server.url + path, data=body, timeout=TIMEOUT,
                             headers={"Content-Type": "application/json"} if body else {})
        p = dpms("call", *args, "--plugins", str(REPO / "plugins"), cwd=tmp_path)
        assert json.loads(p.stdout) == r.json(), (args, p.stdout, r.text)
        assert p.returncode == (0 if r.ok else 1), (args, p.returncode, r.status_code)
    p = dpms("call", "hello-world", "-d", "{not json", cwd=tmp_path)
    assert p.returncode == 2 and "--data is not JSON" in p.stderr


def test_routes(server, tmp_path):
    p = dpms("routes", "--json", "--plugins", str(REPO / "plugins"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    routes = json.loads(p.stdout)
    listed = {(m, api) for m, apis in requests.get(server.url + "/rest/services/__dir__/", timeout=TIMEOUT)
              .json()["endpoints"].items() for api in apis if not api.startswith(("typed", "oa-"))}
    mine = {(r["method"], r["api"]) for r in routes}
    assert {x for x in listed if x[1] in {a for _, a in mine}} == mine, (listed ^ mine)
    hello = next(r for r in routes if r["api"] == "hello-world" and r["method"] == "GET")
    assert hello["path"] == "/rest/services/hello-world/" and hello["function"] == "foo" and hello["line"] > 1
    table = dpms("routes", "--plugins", str(REPO / "plugins"), cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == ["METHOD", "PATH", "FUNCTION", "AUTH", "DOC"]
    assert any(line.startswith("GET") and "/rest/services/hello-world/" in line for line in table.stdout.splitlines())

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
def test_multi_tenant_true_refuses_to_start(tmp_path, where):
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
    assert "refusing to start" in lines[0], err


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

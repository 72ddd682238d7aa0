"""SPEC §11.9, fail closed, on the real kernel: a server that cannot apply a sandbox layer runs
no tenant code, says so once at start and in `__dir__`, and keeps serving the admin's modules;
with `DPMS_SANDBOX=relaxed` it runs tenant code without that layer, and every call says so.

Here the missing layer is real, not simulated: the server runs as `nobody`, so it cannot give
a tenant process a host uid of its own (`host_uid`: switching uid needs CAP_SETUID).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

from dpms_helpers import binary_path, clean_env

NOBODY = 65534
ADMIN = str(uuid.uuid4())

ADMIN_MODULE = """
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="admin-ping")
def ping():
    return "pong"
"""

TENANT_MODULE = """
__ID__ = "{tenant}"
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="tenant-ping")
def ping():
    open("/tmp/ran-on-the-host", "w").close()
    return "pong"
"""


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture
def nobody_server():
    yield from start_as_nobody({})


@pytest.fixture
def relaxed_server():
    yield from start_as_nobody({"DPMS_SANDBOX": "relaxed"})


def start_as_nobody(extra_env):
    if os.geteuid() != 0:
        pytest.skip("needs root to start a server as nobody")
    work = pathlib.Path(tempfile.mkdtemp(prefix="dpms-failclosed-"))
    plugins = work / "plugins"
    plugins.mkdir()
    tenant = str(uuid.uuid4())
    (plugins / "admin_mod.py").write_text(ADMIN_MODULE)
    (plugins / "tenant_mod.py").write_text(TENANT_MODULE.format(tenant=tenant))
    for p in [work, plugins, *plugins.iterdir()]:
        os.chown(p, NOBODY, NOBODY)
    env = clean_env({"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "1", **extra_env})
    added = subprocess.run(
        [str(binary_path()), "tenant", "add", "alice", "--uuid", tenant],
        cwd=work, env=env, preexec_fn=as_nobody, capture_output=True, text=True, timeout=30,
    )
    assert added.returncode == 0, added.stderr
    log = open(work / "stderr.log", "wb")
    proc = subprocess.Popen(
        [str(binary_path()), "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=work, env=env, preexec_fn=as_nobody, stdout=subprocess.PIPE, stderr=log,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.split("listening on ", 1)[1].strip().rstrip("/"), tenant, work
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        log.close()


def test_without_a_layer_tenant_code_never_runs_and_the_admin_is_served(nobody_server):
    url, tenant, work = nobody_server
    base = f"{url}/rest/services"
    # The admin's modules keep serving.
    r = requests.get(f"{base}/{ADMIN}/admin-ping/", timeout=30)
    assert r.status_code == 200 and r.json()["response"]["admin_mod.ping"] == "pong", r.text
    # The tenant's code does not run: 503 naming the missing layer, every time.
    for _ in range(3):
        r = requests.get(f"{base}/{tenant}/tenant-ping/", timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "sandbox_unavailable", r.text
        assert "host_uid" in r.json()["status"], r.text
    assert not pathlib.Path("/tmp/ran-on-the-host").exists()
    # __dir__ says so.
    d = requests.get(f"{base}/{ADMIN}/__dir__/", timeout=30).json()
    assert d["sandbox"] == {
        "tenant_code_runs": False, "layers_missing": ["host_uid"], "mode": "strict",
    }, d
    # /readyz says why it is not ready; /healthz that the process answers.
    r = requests.get(f"{url}/readyz", timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "not_ready", r.text
    assert "host_uid" in r.json()["status"], r.text
    assert r.json()["checks"]["sandbox"] == {
        "ok": False, "layers_missing": ["host_uid"], "mode": "strict",
    }, r.text
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    # No process of this tenant was ever started (by its name: tenant processes of servers
    # that earlier tests stopped may still be exiting).
    comms = []
    for p in pathlib.Path("/proc").iterdir():
        try:
            comms.append((p / "comm").read_text().strip())
        except OSError:
            pass
    assert "dpms-t-" + tenant.replace("-", "")[:8] not in comms, comms
    # One clear line at start names the missing layer.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            line for line in (work / "stderr.log").read_text().splitlines()
            if "sandbox layers missing" in line
        ]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1 and "host_uid" in lines[0], lines


def log_lines(work, text):
    return [line for line in (work / "stderr.log").read_text().splitlines() if text in line]


def status_of(pid):
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def test_relaxed_runs_tenant_code_without_the_layer_and_every_call_says_so(relaxed_server):
    url, tenant, work = relaxed_server
    base = f"{url}/rest/services"
    r = requests.get(f"{base}/{ADMIN}/admin-ping/", timeout=30)
    assert r.status_code == 200, r.text
    calls = 3
    for _ in range(calls):
        r = requests.get(f"{base}/{tenant}/tenant-ping/", timeout=30)
        assert r.status_code == 200 and r.json()["response"]["tenant_mod.ping"] == "pong", r.text
    # The layers that are there still hold: its /tmp is its own scratch tmpfs.
    assert not pathlib.Path("/tmp/ran-on-the-host").exists()
    comm = "dpms-t-" + tenant.replace("-", "")[:8]
    pids = []
    for p in pathlib.Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "comm").read_text().strip() == comm:
                pids.append(int(p.name))
        except OSError:
            pass
    assert pids, "no process of the tenant"
    inner = max(pids)  # pid 1 of its namespace (the middle process was forked first)
    st = status_of(inner)
    # Without the host_uid layer it keeps the server's uid (nobody), and nothing else.
    assert st["Uid"][0] == str(NOBODY), st["Uid"]
    assert st["NoNewPrivs"] == ["1"] and st["Seccomp"] == ["2"], st
    assert st["CapEff"] == ["0000000000000000"], st["CapEff"]
    d = requests.get(f"{base}/{ADMIN}/__dir__/", timeout=30).json()
    assert d["sandbox"] == {
        "tenant_code_runs": True, "layers_missing": ["host_uid"], "mode": "relaxed",
    }, d
    r = requests.get(f"{url}/readyz", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["sandbox"] == {
        "ok": True, "layers_missing": ["host_uid"], "mode": "relaxed",
    }, r.text
    # One line at start, and one per tenant call naming what it runs without.
    assert len(log_lines(work, "sandbox layers missing")) == 1
    deadline = time.monotonic() + 10
    per_call = []
    while time.monotonic() < deadline:
        per_call = log_lines(work, "tenant call runs without these sandbox layers")
        if len(per_call) >= calls:
            break
        time.sleep(0.05)
    assert len(per_call) == calls, per_call
    assert all("host_uid" in line and tenant in line for line in per_call), per_call

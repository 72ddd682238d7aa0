"""The supervisor hands its checked settings to every worker (SPEC §8, §9): a worker never reads
`.env` itself, so one started after `.env` changed — a replacement after a crash — runs with the
settings the server started with, like its siblings; and a worker without a handoff refuses to
start.

Each test starts its own server or worker and cleans up every process it made.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess

import pytest
import requests

from dpms_helpers import STOP_TIMEOUT, TIMEOUT, binary_path, clean_env, ok, source, wait_for

WORKERS = 2

CONTROL_VARIABLES = ("DPMS_LISTEN_FD", "DPMS_READY_FD", "DPMS_HANDOFF_FD", "DPMS_WORKER_INDEX", "DPMS_STATE_DIR")

PLUGIN_TEMPLATE = """
import os

from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="handoff-foo")
def foo(**kwargs):
    return {
        "foo": os.environ.get("FOO"),
        "pid": os.getpid(),
        "control": sorted(k for k in os.environ if k in $control),
    }
"""


def children_of(pid: int) -> set[int]:
    """The live (non-zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat_line.rsplit(")", 1)[-1].split()
        if len(fields) >= 2 and fields[1] == str(pid) and fields[0] != "Z":
            found.add(int(entry.name))
    return found


PLUGIN = source(PLUGIN_TEMPLATE, control=repr(CONTROL_VARIABLES))


def answers(server, want_pids: set[int], what: str) -> dict[int, dict]:
    """One answer from each of ``want_pids`` (the workers), each on a new connection so the
    kernel spreads them (bounded by ``wait_for``)."""
    seen: dict[int, dict] = {}

    def every_worker_answered():
        # A new connection each time: a kept-alive one would stay with one worker.
        r = requests.get(server.abs("handoff-foo/"), timeout=TIMEOUT, headers={"Connection": "close"})
        got = ok(r)
        assert got["pid"] in want_pids, f"answered by {got['pid']}, not a worker in {want_pids}"
        assert r.headers["X-Dpms-Worker"] in {str(i) for i in range(WORKERS)}, r.headers
        seen[got["pid"]] = got
        return set(seen) == want_pids

    wait_for(every_worker_answered, timeout=30, what=what)
    return seen


@pytest.mark.parametrize(
    "edited",
    [
        # A worker that read `.env` itself would answer "new"...
        "FOO=new\n",
        # ...or refuse the bad setting and never start at all.
        "FOO=new\nMAX_FUNCTION_SECS=not-a-number\n",
    ],
    ids=["changed", "now-invalid"],
)
def test_a_replacement_worker_runs_with_the_settings_the_server_started_with(start_server, plugin_folder, edited):
    (plugin_folder / "handoff_probe.py").write_text(PLUGIN)
    server = start_server(env={"DPMS_WORKERS": str(WORKERS)}, plugin_dirs=[plugin_folder], dotenv="FOO=old\n")
    supervisor = server.proc.pid
    workers = children_of(supervisor)
    assert len(workers) == WORKERS, workers
    for got in answers(server, workers, "both workers to answer").values():
        assert got["foo"] == "old", got
        assert got["control"] == [], f"control variables reach plugin code: {got}"

    (server.workdir / ".env").write_text(edited, encoding="utf-8")
    victim = ok(requests.get(server.abs("handoff-foo/"), timeout=TIMEOUT, headers={"Connection": "close"}))["pid"]
    assert victim in workers
    os.kill(victim, signal.SIGKILL)

    def replaced():
        now = children_of(supervisor)
        return now if len(now) == WORKERS and victim not in now else None

    after = wait_for(replaced, timeout=30, what="the supervisor to start a replacement")
    (replacement,) = after - workers
    got = answers(server, after, "the replacement and its sibling to answer")
    foos = {pid: a["foo"] for pid, a in got.items()}
    assert foos == dict.fromkeys(after, "old"), f"replacement {replacement}: {foos}"
    assert got[replacement]["control"] == [], got


def run_worker(extra_env: dict, pass_fds: list[int]) -> subprocess.CompletedProcess:
    """``dpms worker`` started by hand with a listener, a readiness pipe and ``extra_env``."""
    return subprocess.run(
        [str(binary_path()), "worker"],
        env=clean_env(extra_env),
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=STOP_TIMEOUT + 20,
    )


@pytest.mark.parametrize(
    ("handoff", "says"),
    [
        ("missing", "missing DPMS_HANDOFF_FD"),
        ("closed", "its socket closed without one"),
        ("garbage", "a malformed message"),
        ("truncated", "in the middle of a frame"),
        ("not a socket", "is not a Unix stream socket"),
    ],
)
def test_a_worker_without_a_handoff_refuses_to_start(tmp_path, handoff, says):
    listener = socket.create_server(("127.0.0.1", 0))
    ready_r, ready_w = os.pipe()
    ours, theirs = socket.socketpair()
    try:
        env = {"DPMS_LISTEN_FD": str(listener.fileno()), "DPMS_READY_FD": str(ready_w), "DPMS_WORKER_INDEX": "0"}
        fds = [listener.fileno(), ready_w]
        if handoff == "garbage":
            ours.sendall(b"\0\0\0\x05hello")
        elif handoff == "truncated":
            ours.sendall(b"\0\0\1\0{")
        if handoff == "not a socket":
            env["DPMS_HANDOFF_FD"] = str(ready_r)
            fds.append(ready_r)
        elif handoff != "missing":
            env["DPMS_HANDOFF_FD"] = str(theirs.fileno())
            fds.append(theirs.fileno())
        ours.close()  # the supervisor's end: nothing more comes
        env["plugins"] = str(tmp_path)  # a usable setting it must not fall back on
        (tmp_path / ".env").write_text("FOO=from-dotenv\n")
        done = run_worker(env, fds)
    finally:
        for closable in (listener, theirs):
            closable.close()
        os.close(ready_r)
        os.close(ready_w)
    assert done.returncode != 0, done
    lines = done.stderr.decode("utf-8", "replace").splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpms: ") and says in lines[0], lines
    assert done.stdout == b"", done

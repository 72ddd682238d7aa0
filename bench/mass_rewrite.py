#!/usr/bin/env python3
"""Mass rewrite: does rewriting 10,000 plugin files stall an unrelated endpoint? (SPEC §2)

    .venv/bin/python bench/mass_rewrite.py [--bin target/release/dpms] [--files 10000]

Starts dpms (127.0.0.1, free port) on two folders: `mass/` with N small plugin files and
`other/` with one `ping` plugin. Then, for each scenario,

  same     every mass file rewritten by rename with identical content (git checkout, rsync, cp)
  changed  every mass file rewritten by rename with new content
  touch    every mass file's mtime set (os.utime)

pings are sent continuously from another thread (one at a time, a fresh connection each) while
the files are written and until the new content is served; printed: the worst ping latency, the
number of pings, how long the writes took and, for `changed`, how long until the first and last
rewritten files answer with their new content. Not a test: figures, not assertions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

PLUGIN = """from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="m{i}")
def f{i}():
    return "{version}"
"""

PING = """from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="ping")
def ping():
    return "pong"
"""


def get(port: int, path: str, timeout: float = 120.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/rest/services/" + path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def value(body: bytes):
    try:
        return next(iter(json.loads(body)["response"].values()))
    except (ValueError, KeyError, StopIteration, AttributeError):
        return None


def write_all(folder: pathlib.Path, n: int, version: str, by_rename: bool = True):
    for i in range(n):
        path = folder / f"m{i:05d}.py"
        if by_rename:
            tmp = folder / f".m{i:05d}.tmp"
            tmp.write_text(PLUGIN.format(i=i, version=version))
            os.replace(tmp, path)
        else:
            path.write_text(PLUGIN.format(i=i, version=version))


class Pinger(threading.Thread):
    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.worst = 0.0
        self.count = 0
        self.failures = 0

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status, body = get(self.port, "ping/")
                good = status == 200 and value(body) == "pong"
            except OSError:
                good = False
            took = time.monotonic() - t0
            self.worst = max(self.worst, took)
            self.count += 1
            self.failures += not good
            time.sleep(0.002)


def wait_served(port: int, i: int, version: str, limit: float = 300.0) -> float:
    t0 = time.monotonic()
    deadline = t0 + limit
    while time.monotonic() < deadline:
        status, body = get(port, f"m{i}/")
        if status == 200 and value(body) == version:
            return time.monotonic() - t0
        time.sleep(0.01)
    return float("inf")


def settle(port: int, seconds: float = 3.0):
    """Until a ping answers fast twice in a row (the previous scenario's reloads are done)."""
    deadline = time.monotonic() + 300
    fast = 0
    while time.monotonic() < deadline and fast < 2:
        t0 = time.monotonic()
        get(port, "ping/")
        fast = fast + 1 if time.monotonic() - t0 < 0.5 else 0
        time.sleep(seconds / 10)
    time.sleep(seconds)


def idle_baseline(port: int, seconds: float = 2.0) -> str:
    """Ping latency with nothing changing, for comparison (a debug build on a busy machine)."""
    took = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        get(port, "ping/")
        took.append(time.monotonic() - t0)
    took.sort()
    return f"idle ping median {took[len(took) // 2] * 1000:.1f} ms, worst {took[-1] * 1000:.1f} ms"


def scenario(name: str, port: int, mass: pathlib.Path, n: int, action, check_version=None):
    settle(port)
    baseline = idle_baseline(port)
    pinger = Pinger(port)
    pinger.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    action()
    wrote = time.monotonic() - t0
    first = last = None
    if check_version is not None:
        first = wrote + wait_served(port, 0, check_version)
        last = wrote + wait_served(port, n - 1, check_version)
    # Keep pinging while the reload may still be running.
    time.sleep(3.0)
    pinger.stop.set()
    pinger.join(130)
    line = (
        f"{name:8} worst ping {pinger.worst * 1000:8.1f} ms over {pinger.count:5d} pings"
        f" ({pinger.failures} failed); writes took {wrote:5.2f} s"
    )
    if first is not None:
        line += f"; new content served after {first:5.2f} s (first file), {last:5.2f} s (last file)"
    print(line + f" [{baseline}]", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "dpms"))
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", default="2")
    ap.add_argument("--only", default="same,changed,touch")
    args = ap.parse_args()
    n = args.files

    work = pathlib.Path(tempfile.mkdtemp(prefix="dpms-mass-"))
    mass, other = work / "mass", work / "other"
    mass.mkdir()
    other.mkdir()
    (other / "ping.py").write_text(PING)
    write_all(mass, n, "v1", by_rename=False)
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.match(r"^(plugins|DPMS_.*|VIRTUAL_ENV|PYTHONPATH|PYTHONHOME)$", k)
    }
    env.update({"plugins": f"{other}:{mass}", "DPMS_WORKERS": args.workers, "DPMS_LOAD_SECS": "600"})
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [args.bin, "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    try:
        t0 = time.monotonic()
        line = proc.stdout.readline()
        m = re.match(rb"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            sys.exit(f"unexpected first line {line!r}; log in {work / 'server.log'}")
        port = int(m.group(1))
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        wait_served(port, n - 1, "v1")
        print(f"{n} files + ping, {args.workers} workers, {args.bin}: up after {time.monotonic() - t0:.1f} s", flush=True)
        only = args.only.split(",")
        if "same" in only:
            scenario("same", port, mass, n, lambda: write_all(mass, n, "v1"))
        if "changed" in only:
            scenario("changed", port, mass, n, lambda: write_all(mass, n, "v2"), check_version="v2")
        if "touch" in only:
            def touch():
                now = time.time()
                for i in range(n):
                    os.utime(mass / f"m{i:05d}.py", (now, now))

            scenario("touch", port, mass, n, touch)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

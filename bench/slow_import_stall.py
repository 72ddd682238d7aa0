#!/usr/bin/env python3
"""How long a slow import holds up requests for unrelated, unchanged modules (SPEC §2).

Starts `dpms serve` (DPMS_BIN, default target/release/dpms) on a free 127.0.0.1 port with two
plugins: `slowmod.py`, whose import sleeps SLOW_SECS (default 3), and `fastmod.py`. It saves
`slowmod.py` (by rename) ROUNDS times; after each save it sends requests to `fastmod` for the
length of the import and reports the worst latency seen. Before issue 10 that was the whole
import (~SLOW_SECS); after, a request for an unchanged module is served from the current table.

    DPMS_BIN=target/release/dpms python3 bench/slow_import_stall.py
"""

import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = os.path.abspath(os.environ.get("DPMS_BIN", str(ROOT / "target" / "release" / "dpms")))
SLOW_SECS = float(os.environ.get("SLOW_SECS", "3"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))

SLOW = """
import time
from vyperlogix.decorators import expose
time.sleep({secs})

@expose.endpoint(method="GET", API="slow")
def slow():
    return {n}
"""
FAST = """
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="fast")
def fast():
    return "fast"
"""


def write_atomic(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def get(port, api):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/rest/services/{api}/", timeout=60) as r:
        return r.status, r.read()


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="dpms-stall-"))
    plugins = work / "plugins"
    plugins.mkdir()
    (plugins / "fastmod.py").write_text(FAST)
    (plugins / "slowmod.py").write_text(SLOW.format(secs=0, n=0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMS_")}
    env.update({"plugins": str(plugins), "DPMS_WORKERS": "1", "DPMS_LOAD_SECS": "60"})
    proc = subprocess.Popen(
        [BIN, "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        line = proc.stdout.readline().decode()
        m = re.search(r":(\d+)\s*$", line)
        if not m:
            sys.exit(f"no address from dpms: {line!r}")
        port = int(m.group(1))
        get(port, "fast")
        worst_all = []
        for n in range(1, ROUNDS + 1):
            write_atomic(plugins / "slowmod.py", SLOW.format(secs=SLOW_SECS, n=n))
            time.sleep(0.05)  # let the watcher start the reload
            worst = 0.0
            deadline = time.monotonic() + SLOW_SECS
            while time.monotonic() < deadline:  # bounded by the import's length
                t0 = time.monotonic()
                status, _ = get(port, "fast")
                worst = max(worst, time.monotonic() - t0)
                assert status == 200
            get(port, "slow")  # wait for the import to finish before the next round
            worst_all.append(worst)
            print(f"round {n}: worst fast-request latency during a {SLOW_SECS:.0f} s import: {worst * 1000:.1f} ms")
        print(f"{os.path.basename(BIN)} ({BIN}): worst over {ROUNDS} rounds {max(worst_all) * 1000:.1f} ms")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

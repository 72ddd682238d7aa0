#!/usr/bin/env python3
"""Tenant processes: cold start and density (issue 11's benchmarks; SPEC §11.10).

Starts `dpms serve` (DPMS_BIN, default target/release/dpms) with MULTI_TENANT=True, one worker,
on a free 127.0.0.1 port, registers TENANTS (default 31) tenants with the CLI, each owning one
plugin module, and then:

- cold start: the first call of each tenant (no process for it yet), measured by this client
  from request sent to answer read; the first tenant also starts the worker's zygote and is
  reported apart, the others are the figure (p50, p90, p99 over TENANTS-1 fresh tenants),
  arriving PACE_MS (default 50) apart;
- warm: one more call per tenant;
- density: unique memory (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup) of each
  tenant's processes (its sandbox's waiting middle process and pid 1), idle, after the calls,
  and how many such tenants fit in this machine's MemTotal;
- reaping: with DPMS_TENANT_IDLE_SECS=IDLE (default 2), whether the processes are gone after it.

    DPMS_BIN=target/release/dpms python3 bench/tenants.py
"""

import http.client
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = os.path.abspath(os.environ.get("DPMS_BIN", str(ROOT / "target" / "release" / "dpms")))
TENANTS = int(os.environ.get("TENANTS", "31"))
IDLE = float(os.environ.get("IDLE", "2"))
#: Pause between two tenants' first calls: tenants arriving at a steady rate find the worker's
#: warm pool refilled (PACE_MS=0: back to back, the pool drains after two).
PACE_MS = float(os.environ.get("PACE_MS", "50"))
ADMIN = str(uuid.uuid4())

MODULE = """
from vyperlogix.decorators import expose
__ID__ = "{uuid}"

@expose.endpoint(method="GET", API="hello_{n}")
def hello(*args, **kwargs):
    return {{"tenant": {n}}}
"""


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def call(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    took = time.perf_counter() - started
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {body[:300]!r}")
    return took * 1000


def unique_kib(pid):
    try:
        text = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    total = 0
    for key in ("Private_Clean", "Private_Dirty"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        total += int(m.group(1)) if m else 0
    return total


def tenant_pids(hex8):
    """Host pids of a tenant's processes: pid 1 of its namespace (named dpms-t-…) and its
    parent, the sandbox's waiting middle process."""
    pids = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == f"dpms-t-{hex8}":
                pids.append(int(d.name))
                stat = (d / "stat").read_text()
                pids.append(int(stat.rsplit(")", 1)[1].split()[1]))
        except OSError:
            continue
    return sorted(set(pids))


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="dpms-bench-tenants-"))
    plugins = work / "plugins"
    plugins.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMS_")}
    env.update({
        "MULTI_TENANT": "True",
        "ADMIN_ID": ADMIN,
        "DPMS_WORKERS": "1",
        "DPMS_DATA_DIR": str(work / "data"),
        "DPMS_TENANT_IDLE_SECS": str(IDLE if IDLE > 0 else 300),
        "DPMS_LOG": "warn",
    })
    tenants = []
    for n in range(TENANTS):
        u = str(uuid.uuid4())
        subprocess.run([BIN, "tenant", "add", f"bench{n}", "--uuid", u], env=env, cwd=work,
                       check=True, capture_output=True)
        (plugins / f"tenant_{n}.py").write_text(MODULE.format(uuid=u, n=n))
        tenants.append(u)
    proc = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", "0"], env=env,
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        first = call(port, f"/rest/services/{tenants[0]}/hello_0/")
        time.sleep(0.5)  # the pool behind the first tenant fills
        cold = []
        for n, u in enumerate(tenants):
            if n:
                time.sleep(PACE_MS / 1000)
                cold.append(call(port, f"/rest/services/{u}/hello_{n}/"))
        warm = [call(port, f"/rest/services/{u}/hello_{n}/") for n, u in enumerate(tenants)]
        time.sleep(0.3)
        per_tenant = []
        for u in tenants:
            kib = [unique_kib(p) for p in tenant_pids(u.replace("-", "")[:8])]
            per_tenant.append(sum(k for k in kib if k is not None))
        mem_total_kib = int(re.search(r"MemTotal:\s+(\d+)", pathlib.Path("/proc/meminfo").read_text()).group(1))
        med = statistics.median(per_tenant)
        result = {
            "tenants": TENANTS,
            "pace_ms": PACE_MS,
            "first_call_with_zygote_start_ms": round(first, 2),
            "cold_ms": {"p50": round(percentile(cold, 50), 2), "p90": round(percentile(cold, 90), 2),
                         "p99": round(percentile(cold, 99), 2), "max": round(max(cold), 2)},
            "warm_ms": {"p50": round(percentile(warm, 50), 2), "p99": round(percentile(warm, 99), 2)},
            "unique_kib_per_idle_tenant": {"p50": med, "max": max(per_tenant)},
            "tenants_fitting_in_memtotal": int(mem_total_kib / med) if med else None,
        }
        if IDLE > 0:
            deadline = time.monotonic() + IDLE + 10
            left = TENANTS
            while time.monotonic() < deadline:
                left = sum(1 for u in tenants if tenant_pids(u.replace("-", "")[:8]))
                if left == 0:
                    break
                time.sleep(0.2)
            result["processes_left_after_idle"] = left
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())

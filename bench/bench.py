#!/usr/bin/env python3
"""dpms benchmark: the same plugin work served by dpms, Granian (RSGI) and uvicorn (FastAPI).

Run it through bench/run.sh, which installs wrk and bench/.venv and builds dpms first. Every server
is started here on a free 127.0.0.1 port, pinned to CPU 0 (wrk runs on CPU 1), and killed with its
whole process group at the end, on error and on Ctrl-C. Standard library only.

Environment:
  BENCH_SECS=N          seconds measured per case (default 10)
  BENCH_WARMUP=N        seconds of warm-up before each measurement (default 2)
  BENCH_QUICK=1         smoke run: 2 s per case, 1 s warm-up, 100k requests for the RSS check
  BENCH_CONNECTIONS=N   wrk connections (default 64)
  BENCH_RSS_REQUESTS=N  requests for the long RSS run (default 1,000,000; 100,000 with BENCH_QUICK)
  BENCH_QUIET_WAIT=N    longest wait, per case, for other processes to stop loading the machine (60)
  BENCH_RETRIES=N       re-measurements of a case disturbed by other processes (default 2)

Server "tenant" is dpms with MULTI_TENANT=True serving hello-world from a tenant's module, so every
call crosses into that tenant's sandboxed process (forked on the server's CPU) and back.
"""

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
DPMS_BIN = os.path.join(ROOT, "target", "release", "dpms")
WRK_DIR = os.path.join(BENCH, "wrk")
HOST = "127.0.0.1"  # the only address anything here binds to or targets

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
SECS = float(os.environ.get("BENCH_SECS") or (2 if QUICK else 10))
WARMUP = float(os.environ.get("BENCH_WARMUP") or (1 if QUICK else 2))
CONNS = int(os.environ.get("BENCH_CONNECTIONS") or 64)
RSS_REQUESTS = int(os.environ.get("BENCH_RSS_REQUESTS") or (100_000 if QUICK else 1_000_000))
RSS_FIRST = 10_000
EXTRA_MODULES = 1000
RELOAD_ROUNDS = 5
READY_SECS = 30.0
QUIET_PCT = 10.0   # other processes' CPU, % of one core, below which the machine counts as quiet
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT") or 60)  # longest wait for quiet, per case
NOISY_PCT = 15.0   # a measurement with more than this is repeated ...
RETRIES = int(os.environ.get("BENCH_RETRIES") or 2)  # ... at most this many times (best kept)
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
SERVER_CPU, WRK_CPU = ("0", "1") if NCPU >= 2 else (None, None)

PARAMS = "1/2/3/4/5/6/7/8/9/10/?a=1&b=2&c=3&d=4"
POST_BODY = b'{"args":[1,2,3,4,5,6],"name1":"one","name2":"two","name3":"three","name4":"four"}'


class Case:
    def __init__(self, name, path, method="GET", lua=None, body=None):
        self.name, self.path, self.method, self.lua, self.body = name, path, method, lua, body


CASES = [
    Case("hello-world", "/rest/services/hello-world/" + PARAMS),
    Case("sample-one POST", "/rest/services/sample-one/" + PARAMS, "POST",
         os.path.join(WRK_DIR, "post_sample_one.lua"), POST_BODY),
    Case("sleep50 (sync)", "/rest/services/sleep50/" + PARAMS),
    Case("sleep50-async", "/rest/services/sleep50-async/" + PARAMS),
]
HELLO = CASES[0]
CASE_1000 = Case("hello-world +1000 mods", HELLO.path)
# hello-world again on a few-module server, alternating with CASE_1000 (its reference).
CASE_PAIRED = Case("hello-world (paired)", HELLO.path)
PAIR_ROUNDS = 2


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes: every child is tracked and killed (whole process group) on the way out.

LIVE = []  # Popen objects still to be reaped


def _on_signal(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def kill_group(proc, grace=10.0):
    """SIGTERM the process group of `proc`, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive the leader: sweep the group with SIGKILL either way.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc in LIVE:
        LIVE.remove(proc)


def kill_all():
    for proc in list(LIVE):
        kill_group(proc, grace=3.0)


def pinned(cmd, cpu):
    return (["taskset", "-c", cpu] + cmd) if cpu is not None else cmd


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# /proc readings

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()  # fields from 3 (state) on


def group_pids(pgid):
    """Every live process in process group `pgid`, plus descendants that left the group."""
    ppids, found = {}, set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat_fields(int(name))
        except (OSError, ValueError):
            continue
        pid = int(name)
        ppids[pid] = int(fields[1])
        if int(fields[2]) == pgid:
            found.add(pid)
    grew = True
    while grew:  # descendants by parent link, bounded by the process count
        grew = False
        for pid, ppid in ppids.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def cpu_ticks(pgid):
    """utime + stime + cutime + cstime (fields 14-17) summed over the server's processes."""
    total = 0
    for pid in group_pids(pgid):
        try:
            f = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total


def rss_kib(pgid):
    total = 0
    for pid in group_pids(pgid):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def machine_busy_ticks():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals[:8]) - idle


def children_cpu_secs():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------------------------
# Servers

class Server:
    def __init__(self, label, cmd, env, cwd, workdir):
        self.label = label
        self.port = None
        self.cmd, self.env, self.cwd, self.workdir = cmd, env, cwd, workdir
        self.proc = None
        self.log_path = os.path.join(workdir, "%s.log" % label.replace(" ", "_"))
        self.started_secs = None
        self.prefix = ""  # put before a case's /rest/services/... path (a tenant's uuid)

    def start(self, probe_path, ready_secs=READY_SECS):
        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(pinned(self.cmd, SERVER_CPU), env=self.env, cwd=self.cwd,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True)
        LIVE.append(self.proc)
        deadline = t0 + ready_secs
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited (code %s) before answering; log tail:\n%s"
                                   % (self.label, self.proc.returncode, self.log_tail()))
            try:
                status, _ = http_get(self.port, probe_path, timeout=2)
                if status == 200:
                    self.started_secs = time.monotonic() - t0
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("%s did not answer 200 on %s within %.0f s; log tail:\n%s"
                           % (self.label, probe_path, ready_secs, self.log_tail()))

    @property
    def pgid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            kill_group(self.proc)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"


def dpms_has_workers():
    out = subprocess.run([DPMS_BIN, "serve", "--help"], capture_output=True, text=True, timeout=30)
    return "--workers" in out.stdout


def make_dpms(label, plugin_dirs, workdir, with_workers):
    port = free_port()
    run_dir = tempfile.mkdtemp(prefix="dpms-run-", dir=workdir)  # empty cwd: no stray .env
    env = dict(os.environ)
    for k in ("DPMS_PLUGINS", "VIRTUAL_ENV", "DPMS_VENV", "DPMS_PORT", "DPMS_HOST", "DPMS_WORKERS"):
        env.pop(k, None)
    env["plugins"] = ":".join(plugin_dirs)
    env.setdefault("DPMS_SHUTDOWN_SECS", "2")
    cmd = [DPMS_BIN, "serve", "--host", HOST, "--port", str(port)]
    if with_workers:
        cmd += ["--workers", "1"]
    s = Server(label, cmd, env, run_dir, workdir)
    s.port = port
    return s


TENANT_ADMIN = "00000000-0000-4000-8000-00000000a0a0"
TENANT_UUID = "6b3c1f7e-0d2a-4e59-9c61-5a8f0e4b7d21"
# module1's hello-world, self-contained: a tenant's process reads only its own files, so the echo
# helper the admin's sample imports is inlined.
TENANT_MODULE = """\
from vyperlogix.decorators import expose

__ID__ = "%s"


def echo(args, kwargs, **extra):
    response = {
        "args": {i: arg for i, arg in enumerate(args)},
        "kwargs": {k: v for k, v in kwargs.items() if k != "__request__"},
    }
    response.update(extra)
    return response


@expose.endpoint(method="GET|PUT|POST".split("|"), API="hello-world")
def foo(*args, **kwargs):
    return echo(args, kwargs, response="hello-world")
""" % TENANT_UUID


def make_dpms_tenant(workdir, with_workers):
    """dpms in MULTI_TENANT mode whose only module belongs to one registered tenant."""
    folder = os.path.join(workdir, "tenant_plugins")
    os.mkdir(folder)
    write_atomically(os.path.join(folder, "module1.py"), TENANT_MODULE)
    s = make_dpms("tenant", [folder], workdir, with_workers)
    s.env.update({"MULTI_TENANT": "True", "ADMIN_ID": TENANT_ADMIN,
                  "DPMS_DATA_DIR": os.path.join(workdir, "tenant_data"), "DPMS_LOG": "warn",
                  # every wrk connection may have a call running (over the cap: 503 overloaded)
                  "DPMS_TENANT_CONCURRENCY": str(CONNS)})
    subprocess.run([DPMS_BIN, "tenant", "add", "bench", "--uuid", TENANT_UUID], env=s.env,
                   cwd=s.cwd, check=True, capture_output=True, timeout=60)
    s.prefix = "/rest/services/%s" % TENANT_UUID
    return s


def _py_env():
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = ROOT
    return env


def make_granian(workdir):
    port = free_port()
    cmd = [os.path.join(VENV_BIN, "granian"), "--interface", "rsgi", "--workers", "1",
           "--host", HOST, "--port", str(port), "--log-level", "warning",
           "bench.peers.granian_rsgi_app:app"]
    s = Server("granian", cmd, _py_env(), ROOT, workdir)
    s.port = port
    return s


def make_uvicorn(workdir):
    port = free_port()
    cmd = [os.path.join(VENV_BIN, "uvicorn"), "--workers", "1", "--host", HOST, "--port", str(port),
           "--no-access-log", "--log-level", "warning", "bench.peers.fastapi_app:app"]
    s = Server("uvicorn", cmd, _py_env(), ROOT, workdir)
    s.port = port
    return s


# --------------------------------------------------------------------------------------------
# HTTP helpers (single requests) and wrk

def http_get(port, path, timeout=5.0, method="GET", body=None):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text):
    r = {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "non2xx": 0, "sock_err": 0}
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(r"^\s*%s(?:\.0+)?%%\s+([\d.]+)(us|ms|s|m)\s*$" % pct, text, re.M)
        if m:
            r[key] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["sock_err"] = sum(int(x) for x in m.groups())
    return r


def without_uuid(answer):
    """An echo answer without the `uuid` keyword a tenant's call also gets (the caller's uuid
    from its URL): the one way a tenant's hello-world differs from the admin's."""
    try:
        for result in answer["response"].values():
            result["kwargs"].pop("uuid", None)
    except (KeyError, TypeError, AttributeError):
        pass
    return answer


def tenant_path(server, path):
    """A case's path as this server serves it (a tenant's uuid after /rest/services)."""
    if server.prefix:
        return server.prefix + path[len("/rest/services"):]
    return path


def run_wrk(port, case, secs, extra_args=(), script=None, server=None):
    """One wrk run (1 thread, CONNS connections, --latency), bounded in time."""
    url = "http://%s:%d%s" % (HOST, port, tenant_path(server, case.path) if server else case.path)
    cmd = ["wrk", "-t1", "-c%d" % CONNS, "-d%ds" % max(1, round(secs)), "--latency"]
    lua = script or case.lua
    if lua:
        cmd += ["-s", lua]
    cmd.append(url)
    cmd += list(extra_args)
    proc = subprocess.Popen(pinned(cmd, WRK_CPU), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    LIVE.append(proc)
    try:
        out, _ = proc.communicate(timeout=secs + 30)
    except subprocess.TimeoutExpired:
        kill_group(proc, grace=1)
        raise RuntimeError("wrk did not finish within %.0f s" % (secs + 30))
    finally:
        if proc in LIVE:
            LIVE.remove(proc)
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError("wrk failed (%s): %s" % (proc.returncode, text.strip()[-400:]))
    return parse_wrk(text), text


def wait_quiet(pgid, max_secs=QUIET_WAIT):
    """Wait (bounded) until the rest of the machine uses under QUIET_PCT of a core.

    Another build or test on a 2-core machine steals the server's or wrk's core and spoils the
    figures; this cannot stop it, only avoid measuring through it. Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        b0, s0 = machine_busy_ticks(), cpu_ticks(pgid)
        time.sleep(1.0)
        other = (machine_busy_ticks() - b0 - (cpu_ticks(pgid) - s0)) / CLK_TCK
        waited = time.monotonic() - t0
        if 100.0 * other <= QUIET_PCT or waited >= max_secs:
            return waited


def measure(server, case):
    """Measure one case, again (bounded) if other processes loaded the machine meanwhile."""
    best = None
    for attempt in range(1 + RETRIES):
        waited = wait_quiet(server.pgid)
        if waited > 2:
            log("waited %.0f s for other processes to quiet down" % waited)
        r = measure_once(server, case)
        if best is None or r["other_cpu_pct"] < best["other_cpu_pct"]:
            best = r
        if r["other_cpu_pct"] <= NOISY_PCT:
            break
        log("%s %s: other processes used %.0f%% of a core meanwhile; measuring again"
            % (server.label, case.name, r["other_cpu_pct"]))
    return best


def measure_once(server, case):
    """Warm up, then measure one case: wrk figures plus the server's CPU per request."""
    run_wrk(server.port, case, WARMUP, server=server)
    ticks0, busy0, wrk0 = cpu_ticks(server.pgid), machine_busy_ticks(), children_cpu_secs()
    t0 = time.monotonic()
    r, _ = run_wrk(server.port, case, SECS, server=server)
    wall = time.monotonic() - t0
    ticks1, busy1, wrk1 = cpu_ticks(server.pgid), machine_busy_ticks(), children_cpu_secs()
    server_secs = (ticks1 - ticks0) / CLK_TCK
    r["cpu_us"] = server_secs * 1e6 / r["requests"] if r["requests"] else None
    r["server_cpu_pct"] = 100.0 * server_secs / wall
    # CPU used by anything else on the machine during the window (another build, a browser...).
    other = (busy1 - busy0) / CLK_TCK - server_secs - (wrk1 - wrk0)
    r["other_cpu_pct"] = max(0.0, 100.0 * other / wall)
    return r


def combine(runs):
    """One figure from several measurements of the same case: mean rate and CPU per request,
    worst p99 and disturbance, all errors."""
    def mean(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None
    out = dict(runs[-1])
    out.update(rps=mean("rps"), cpu_us=mean("cpu_us"), p50_ms=mean("p50_ms"),
               p99_ms=max((r["p99_ms"] for r in runs if r["p99_ms"] is not None), default=None),
               requests=sum(r["requests"] for r in runs),
               non2xx=sum(r["non2xx"] for r in runs), sock_err=sum(r["sock_err"] for r in runs),
               other_cpu_pct=max(r["other_cpu_pct"] for r in runs))
    return out


# --------------------------------------------------------------------------------------------
# Plugin files written for the run

PROBE_TEMPLATE = '''from vyperlogix.decorators import expose

VALUE = {value!r}


@expose.endpoint(method="GET", API="reload-probe")
def reload_probe():
    return VALUE
'''

GEN_TEMPLATE = '''"""Generated by bench/bench.py: one of {total} extra plugin modules."""
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="gen-{n:04d}")
def gen_{n:04d}(*args, **kwargs):
    """Echo how many keyword arguments arrived."""
    return {{"module": {n}, "kwargs": len(kwargs)}}
'''


def write_atomically(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def generate_modules(folder, count):
    for n in range(count):
        with open(os.path.join(folder, "gen_mod_%04d.py" % n), "w") as f:
            f.write(GEN_TEMPLATE.format(n=n, total=count))


def measure_reload(server, probe_file, rounds=RELOAD_ROUNDS):
    """Rewrite the probe plugin (temp file + rename) and poll its API until the new value shows.

    Returns the elapsed milliseconds of each round (from just before the rename)."""
    times = []
    conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
    try:
        for i in range(rounds):
            value = "v%d-%d" % (i, time.monotonic_ns())
            text = PROBE_TEMPLATE.format(value=value)
            tmp = os.path.join(os.path.dirname(probe_file), ".reload_probe.tmp")
            with open(tmp, "w") as f:
                f.write(text)
            t0 = time.perf_counter()
            os.replace(tmp, probe_file)
            deadline = t0 + 5.0
            seen = False
            while time.perf_counter() < deadline:  # bounded: 5 s per round
                conn.request("GET", "/rest/services/reload-probe/")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and value in body.decode("utf-8", "replace"):
                    seen = True
                    break
            elapsed = (time.perf_counter() - t0) * 1e3
            times.append(elapsed if seen else float("inf"))
            time.sleep(0.3)
    finally:
        conn.close()
    return times


def rss_run(server, results):
    """RSS of dpms after ~10k requests, then after RSS_REQUESTS, with bounded wrk loops."""
    stop_lua = os.path.join(WRK_DIR, "stop_after.lua")
    total = 0
    for _ in range(30):  # ~10k GETs: the lua script stops wrk's thread at the count
        if total >= RSS_FIRST:
            break
        r, _ = run_wrk(server.port, HELLO, 1, extra_args=["--", str(RSS_FIRST - total)], script=stop_lua)
        total += r["requests"]
        results["rss_errors"] += r["non2xx"] + r["sock_err"]
    time.sleep(0.5)
    results["rss_first_requests"] = total
    results["rss_first_kib"] = rss_kib(server.pgid)
    chunk = 2 if QUICK else 5
    deadline = time.monotonic() + 1800
    post = CASES[1]
    for i in range(2000):  # bounded in count and time
        if total >= RSS_REQUESTS or time.monotonic() > deadline:
            break
        case = HELLO if i % 2 == 0 else post
        r, _ = run_wrk(server.port, case, chunk)
        total += r["requests"]
        results["rss_errors"] += r["non2xx"] + r["sock_err"]
    time.sleep(0.5)
    results["rss_last_requests"] = total
    results["rss_last_kib"] = rss_kib(server.pgid)


# --------------------------------------------------------------------------------------------
# Report

def fmt_rate(v):
    return "-" if v is None else "{:,.0f}".format(v)


def fmt_ms(v):
    if v is None:
        return "-"
    return "%.0fus" % (v * 1e3) if v < 1 else ("%.2fms" % v if v < 100 else "%.0fms" % v)


def fmt_num(v, spec="%.1f"):
    return "-" if v is None else spec % v


def verdict(ok):
    return "PASS" if ok else "MISS"


def print_report(rows, res, meta):
    out = []
    out.append("")
    out.append("dpms benchmark  %s" % meta)
    out.append("1 worker each, server on CPU %s, wrk -t1 -c%d on CPU %s; %g s per case after %g s warm-up"
               % (SERVER_CPU or "any", CONNS, WRK_CPU or "any", SECS, WARMUP))
    out.append("")
    hdr = "%-24s %-8s %9s %9s %9s %11s %10s %7s %7s" % (
        "case", "server", "req/s", "p50", "p99", "CPU us/req", "dpms/peer", "errors", "other%")
    out.append(hdr)
    out.append("-" * len(hdr))
    last_case = None
    for case_name, label, r in rows:
        dp = res["cases"].get((case_name, "dpms"))
        ratio = "-"
        if label not in ("dpms", "tenant") and dp and r and r["rps"]:
            ratio = "%.2fx" % (dp["rps"] / r["rps"])
        shown = case_name if case_name != last_case else ""
        last_case = case_name
        if r is None:
            out.append("%-24s %-8s %9s" % (shown, label, "failed"))
            continue
        out.append("%-24s %-8s %9s %9s %9s %11s %10s %7d %7.0f" % (
            shown, label, fmt_rate(r["rps"]), fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]),
            fmt_num(r["cpu_us"]), ratio, r["non2xx"] + r["sock_err"], r["other_cpu_pct"]))
    out.append("")
    out.append("other% = CPU used by other processes on the machine during the window, in % of one core "
               "(noise: a figure with other% above ~10 is suspect)")

    rl = res.get("reload", {})
    for key, label in (("1", "reload, %s modules" % "few"), ("1000", "reload, +%d modules" % EXTRA_MODULES)):
        if key in rl:
            t = rl[key]
            out.append("%-28s median %7.2f ms  (min %.2f, max %.2f over %d rounds)"
                       % (label, statistics.median(t), min(t), max(t), len(t)))
    if "startup" in res:
        out.append("%-28s few modules %.2f s, +%d modules %.2f s (start to first 200)"
                   % ("dpms startup", res["startup"].get("1", float("nan")), EXTRA_MODULES,
                      res["startup"].get("1000", float("nan"))))
    if "rss_first_kib" in res:
        out.append("%-28s %.1f MiB after %s requests, %.1f MiB after %s requests (%+.1f%%), errors %d"
                   % ("dpms RSS (all processes)", res["rss_first_kib"] / 1024, "{:,}".format(res["rss_first_requests"]),
                      res["rss_last_kib"] / 1024, "{:,}".format(res["rss_last_requests"]),
                      100.0 * (res["rss_last_kib"] - res["rss_first_kib"]) / res["rss_first_kib"],
                      res["rss_errors"]))

    out.append("")
    out.append("targets")
    c = res["cases"]
    hw, hg = c.get(("hello-world", "dpms")), c.get(("hello-world", "granian"))
    if hw and hg and hg["rps"]:
        x = hw["rps"] / hg["rps"]
        out.append("  %s hello-world >= 1.6x Granian req/s        : %.2fx" % (verdict(x >= 1.6), x))
    ht = c.get(("hello-world", "tenant"))
    if ht and hg and hg["rps"]:
        x = ht["rps"] / hg["rps"]
        ok = x >= 1.0 and ht["non2xx"] + ht["sock_err"] == 0
        out.append("  %s sandboxed tenant hello-world >= 1.0x Granian: %.2fx" % (verdict(ok), x))
    if hw and hw["cpu_us"] is not None:
        out.append("  %s hello-world <= 17 us CPU per request     : %.1f us" % (verdict(hw["cpu_us"] <= 17), hw["cpu_us"]))
    if hw and hw["p99_ms"] is not None:
        out.append("  %s hello-world p99 <= 2 ms                  : %s" % (verdict(hw["p99_ms"] <= 2), fmt_ms(hw["p99_ms"])))
    sl = c.get(("sleep50 (sync)", "dpms"))
    if sl:
        out.append("  %s sleep50 >= 1,200 req/s at %d connections : %s req/s"
                   % (verdict(sl["rps"] >= 1200), CONNS, fmt_rate(sl["rps"])))
    h1k, ref = c.get((CASE_1000.name, "dpms")), c.get((CASE_PAIRED.name, "dpms"))
    if ref and h1k and ref["rps"] and ref["cpu_us"] and h1k["cpu_us"] is not None:
        d = 100.0 * (h1k["cpu_us"] - ref["cpu_us"]) / ref["cpu_us"]
        out.append("  %s +1000 modules: CPU/request within 5%%     : %+.1f%% (%.1f vs %.1f us, paired runs)"
                   % (verdict(d <= 5), d, h1k["cpu_us"], ref["cpu_us"]))
        d = 100.0 * (h1k["rps"] - ref["rps"]) / ref["rps"]
        out.append("  %s +1000 modules: req/s within 5%%           : %+.1f%% (paired runs)"
                   % (verdict(d >= -5), d))
    for key, label in (("1", "few modules"), ("1000", "+1000 modules")):
        if key in rl:
            m = statistics.median(rl[key])
            out.append("  %s %-41s: %.2f ms" % (verdict(m < 5), "reload < 5 ms (%s)" % label, m))
    if "rss_first_kib" in res:
        d = 100.0 * (res["rss_last_kib"] - res["rss_first_kib"]) / res["rss_first_kib"]
        out.append("  %s RSS flat within +-10%%                    : %+.1f%%" % (verdict(abs(d) <= 10), d))
    for p in res["problems"]:
        out.append("  ! " + p)
    print("\n".join(out), flush=True)


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="dpms,tenant,granian,uvicorn",
                    help="comma-separated subset of dpms,tenant,granian,uvicorn (default: all)")
    ap.add_argument("--skip-extra", action="store_true", help="skip the 1000-module, reload and RSS parts")
    ap.add_argument("--skip-rss", action="store_true", help="skip the long RSS run")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    opts = ap.parse_args()
    wanted = [s.strip() for s in opts.servers.split(",") if s.strip()]

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit("bench: %s is missing (bench/run.sh installs wrk)" % tool)
    if not os.access(DPMS_BIN, os.X_OK):
        sys.exit("bench: %s is missing: run bench/run.sh (it builds dpms)" % DPMS_BIN)
    if SERVER_CPU is None:
        log("only one CPU: server and wrk are not pinned, figures are not comparable")

    workdir = tempfile.mkdtemp(prefix="dpms-bench-")
    res = {"cases": {}, "reload": {}, "startup": {}, "problems": [], "rss_errors": 0}
    rows = []
    try:
        with_workers = dpms_has_workers()
        version = subprocess.run([DPMS_BIN, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        meta = "(%s%s, git %s, %d CPUs, %s)" % (version, ", --workers 1" if with_workers else ", single process",
                                               rev or "?", NCPU, "QUICK" if QUICK else "full")
        log("work folder %s; %s" % (workdir, meta))

        probe_few = os.path.join(workdir, "probe_few")
        os.mkdir(probe_few)
        write_atomically(os.path.join(probe_few, "reload_probe.py"), PROBE_TEMPLATE.format(value="start"))
        base_dirs = [os.path.join(ROOT, "plugins"), os.path.join(BENCH, "plugins")]
        # The 1000 extra modules are written now, long before their server starts: dpms compares
        # the bytes of files modified less than 2 s before it last verified them (its "racily
        # clean" rule), and this benchmark measures the steady state, not the first seconds
        # after a mass deploy.
        many = os.path.join(workdir, "many")
        os.mkdir(many)
        generate_modules(many, EXTRA_MODULES)
        write_atomically(os.path.join(many, "reload_probe.py"), PROBE_TEMPLATE.format(value="start"))
        time.sleep(2.5)  # let them (and the probe written above) age past that window

        factories = {
            "dpms": lambda: make_dpms("dpms", base_dirs + [probe_few], workdir, with_workers),
            "tenant": lambda: make_dpms_tenant(workdir, with_workers),
            "granian": lambda: make_granian(workdir),
            "uvicorn": lambda: make_uvicorn(workdir),
        }
        reference = None
        for label in wanted:
            if label not in factories:
                sys.exit("bench: unknown server %r" % label)
            srv = factories[label]()
            log("starting %s on port %d" % (label, srv.port))
            # A tenant's module serves hello-world only.
            cases = [HELLO] if label == "tenant" else CASES
            try:
                srv.start(tenant_path(srv, HELLO.path))
                if label == "dpms":
                    res["startup"]["1"] = srv.started_secs
                # Same answers as dpms? (dpms is started first; compared against a fresh dpms
                # answer otherwise.)
                answers = []
                for case in cases:
                    status, body = http_get(srv.port, tenant_path(srv, case.path), method=case.method,
                                            body=case.body)
                    answers.append((status, body))
                if reference is None:
                    reference = answers
                    ref_label = label
                else:
                    for case, (st, b), (rst, rb) in zip(cases, answers, reference):
                        try:
                            same = st == rst and without_uuid(json.loads(b)) == without_uuid(json.loads(rb))
                        except ValueError:
                            same = False
                        if not same:
                            res["problems"].append("%s %s: answer differs from %s's: %s" % (
                                label, case.name, ref_label, b[:200]))
                for case in cases:
                    log("%s: %s" % (label, case.name))
                    try:
                        r = measure(srv, case)
                    except RuntimeError as exc:
                        res["problems"].append("%s %s: %s" % (label, case.name, exc))
                        r = None
                    res["cases"][(case.name, label)] = r
                if label == "dpms" and not opts.skip_extra:
                    log("dpms: reload timing, few modules")
                    res["reload"]["1"] = measure_reload(srv, os.path.join(probe_few, "reload_probe.py"))
            finally:
                srv.stop()
        if reference is not None:
            for st, _ in reference:
                if st != 200:
                    res["problems"].append("reference server answered HTTP %d" % st)

        if "dpms" in wanted and not opts.skip_extra:
            # The 1000-module figure is compared with a few-module server measured in the same
            # minute, alternating, so drift over the run (other tenants of the host, clock
            # changes) does not count as a per-request cost of the modules.
            few = make_dpms("dpms-few", base_dirs + [probe_few], workdir, with_workers)
            srv = make_dpms("dpms-1000", base_dirs + [many], workdir, with_workers)
            log("starting dpms with %d extra modules on port %d (and a few-module one on %d)"
                % (EXTRA_MODULES, srv.port, few.port))
            try:
                few.start(HELLO.path)
                srv.start(HELLO.path, ready_secs=120)
                res["startup"]["1000"] = srv.started_secs
                st, body = http_get(srv.port, "/rest/services/gen-%04d/" % (EXTRA_MODULES - 1))
                if st != 200:
                    res["problems"].append("dpms-1000: generated module answered HTTP %d %s" % (st, body[:200]))
                pairs = {CASE_PAIRED.name: [], CASE_1000.name: []}
                for round_no in range(PAIR_ROUNDS):
                    for server, case in ((few, CASE_PAIRED), (srv, CASE_1000)):
                        log("%s: hello-world (round %d of %d)" % (server.label, round_no + 1, PAIR_ROUNDS))
                        try:
                            pairs[case.name].append(measure(server, case))
                        except RuntimeError as exc:
                            res["problems"].append("%s hello-world: %s" % (server.label, exc))
                for name, runs in pairs.items():
                    res["cases"][(name, "dpms")] = combine(runs) if len(runs) == PAIR_ROUNDS else None
                log("dpms-1000: reload timing")
                res["reload"]["1000"] = measure_reload(srv, os.path.join(many, "reload_probe.py"))
            finally:
                srv.stop()
                few.stop()

            if not opts.skip_rss:
                srv = make_dpms("dpms-rss", base_dirs, workdir, with_workers)
                log("starting dpms for the RSS run (%s requests) on port %d" % ("{:,}".format(RSS_REQUESTS), srv.port))
                try:
                    srv.start(HELLO.path)
                    rss_run(srv, res)
                finally:
                    srv.stop()

        for case in CASES + [CASE_PAIRED, CASE_1000]:
            for label in wanted:
                if (case.name, label) in res["cases"]:
                    rows.append((case.name, label, res["cases"][(case.name, label)]))
        print_report(rows, res, meta)
        if opts.json:
            dump = dict(res)
            dump["cases"] = [{"case": k[0], "server": k[1], **(v or {})} for k, v in res["cases"].items()]
            with open(opts.json, "w") as f:
                json.dump(dump, f, indent=2)
    except KeyboardInterrupt:
        log("interrupted; stopping servers")
        return 130
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

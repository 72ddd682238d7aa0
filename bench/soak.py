#!/usr/bin/env python3
"""dpms soak run: many keep-alive requests while the called plugin is rewritten every 100 ms.

Run it through bench/soak.sh, which builds dpms, starts `dpms serve` on a free 127.0.0.1 port with
a temporary plugin folder holding one plugin (`soak_probe.py`, written by `soak.py --init`), runs
this script against it and stops the server with SIGTERM. Standard library only.

The plugin returns the number in its `VERSION = <n>` line. While the clients run, this process
rewrites the file with the next number every `--interval` seconds, cycling through the ways a file
gets replaced (`--write-mode mixed`):

    rename     new size   written to a temporary file, renamed over the plugin
    in-place   new size   truncated and rewritten in two write() calls
    rename     same size
    overwrite  same size  rewritten in place without truncation (size never changes)
    in-place   same size  truncated and rewritten in two write() calls

Freshness (SPEC §2): a request sent after a write completed must run that version. The rewriter
sets the shared `committed = v` once the write of version v has returned; every request reads
`committed` just before it is sent. An answer whose version is lower is **stale**. An error, or a
404 from an empty half-written file, on a request that was in flight while an in-place write
(in-place or overwrite) ran is what SPEC §2 allows for writers that do not rename: it is counted
apart ("racing an in-place write") and fails the run only with `--strict`. Everything else that is
not a 200 with the right envelope fails the run, as do stale answers, connection errors, timeouts,
a worker replaced by the supervisor and a dead server.

The clients are `--procs` forked processes, each running one thread per connection, with its
share of the `--connections` raw HTTP/1.1 keep-alive connections to 127.0.0.1 (one request in
flight per connection, as wrk does). RSS is VmRSS summed over the server's supervisor and all its
descendants (the workers, found through the ppid field of /proc/*/stat), sampled once `--warmup`
answers have arrived (under load), every second (peak) and after the last answer.

Exit status: 0 pass, 1 fail, 2 could not run.
"""

import argparse
import array
import ctypes
import json
import multiprocessing
import os
import resource
import signal
import socket
import sys
import threading
import time
import urllib.parse

HOST = "127.0.0.1"  # the only address this script connects to
MODULE = "soak_probe"
API = "soak-version"
RESULT_KEY = MODULE + ".version"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The ways one version is written (see the module docstring). Each entry: (writer, size rule).
WRITE_MODES = {
    "mixed": [("rename", "resize"), ("inplace", "resize"), ("rename", "same"),
              ("overwrite", "same"), ("inplace", "same")],
    "rename": [("rename", "resize"), ("rename", "same")],
    "inplace": [("inplace", "resize"), ("overwrite", "same"), ("inplace", "same")],
}
IN_PLACE = ("inplace", "overwrite")

# Shared state, one int64 each, written by the rewriter (parent) and read by the clients.
STARTED, COMMITTED, STOP = 0, 1, 2

TEMPLATE = '''"""dpms soak probe: rewritten by bench/soak.py every few milliseconds; do not edit."""
from vyperlogix.decorators import expose

VERSION = {version}


@expose.endpoint(method="GET", API="{api}")
def version():
    """The number in the VERSION line of the file as it was when this module was loaded."""
    return VERSION
'''
MIN_PAD = 8  # padding comment characters kept at least, so a longer number still fits "same size"


def log(msg):
    print("soak: " + msg, file=sys.stderr, flush=True)


def writer_of(mode_list, version):
    """(writer, size rule) used for `version` (version 0 is the initial file)."""
    return mode_list[(version - 1) % len(mode_list)] if version > 0 else ("rename", "resize")


def plugin_text(version, total_size):
    """The plugin source for `version`, padded with a trailing comment to exactly `total_size`."""
    body = TEMPLATE.format(version=version, api=API)
    pad = total_size - len(body) - len("# \n")
    if pad < 0:
        raise ValueError("plugin text for version %d does not fit in %d bytes" % (version, total_size))
    return (body + "# " + "." * pad + "\n").encode()


def base_size(version):
    return len(TEMPLATE.format(version=version, api=API)) + len("# \n")


# --------------------------------------------------------------------------------------------
# The rewriter (runs in the parent process)

class Rewriter:
    def __init__(self, path, mode_list, shared):
        self.path = path
        self.tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        self.modes = mode_list
        self.shared = shared
        self.version = 0
        self.size = base_size(0) + MIN_PAD + 5
        self.counts = {}
        self.write_secs_max = 0.0

    def write_initial(self):
        self._rename(plugin_text(0, self.size))

    def _rename(self, data):
        with open(self.tmp, "wb") as f:
            f.write(data)
        os.replace(self.tmp, self.path)

    def _in_place(self, data, truncate):
        # Two write() calls, so that a reader can catch a half-written (broken) file.
        flags = os.O_WRONLY | (os.O_TRUNC if truncate else 0)
        fd = os.open(self.path, flags)
        try:
            half = len(data) // 2
            for chunk in (data[:half], data[half:]):
                view = memoryview(chunk)
                for _ in range(1000):  # bounded: short writes on a regular file are rare
                    if not view:
                        break
                    view = view[os.write(fd, view):]
                else:
                    raise OSError("could not write %s" % self.path)
        finally:
            os.close(fd)

    def next(self):
        v = self.version + 1
        writer, rule = writer_of(self.modes, v)
        if rule == "same":
            size = self.size
        else:  # a different size: step the padding by 1..13 within a 40-byte band
            pad = self.size - base_size(v) - MIN_PAD
            size = base_size(v) + MIN_PAD + (pad + 1 + v % 13) % 40
            if size == self.size:
                size += 1
        data = plugin_text(v, size)
        t0 = time.perf_counter()
        self.shared[STARTED] = v
        if writer == "rename":
            self._rename(data)
        else:
            self._in_place(data, truncate=(writer == "inplace"))
        self.shared[COMMITTED] = v  # the write has returned: requests sent from now on must see v
        self.write_secs_max = max(self.write_secs_max, time.perf_counter() - t0)
        self.version, self.size = v, size
        key = "%s/%s" % (writer, rule)
        self.counts[key] = self.counts.get(key, 0) + 1


# --------------------------------------------------------------------------------------------
# /proc readings

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()  # fields from 3 (state) on


def server_pids(root):
    """`root` and all its live descendants (the supervisor and its workers)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo and len(found) < 10000:  # bounded by the process count
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(found)


def alive(pid):
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def rss_by_pid(pids):
    """{pid: VmRSS in KiB} of the processes in `pids` that are still there."""
    out = {}
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return out


def rss_kib(pids):
    return sum(rss_by_pid(pids).values())


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, ValueError, IndexError):
            continue
    return total


def all_cpu_ticks():
    """{pid: utime + stime + cutime + cstime} of every process on the machine (a process that
    exited is counted in its parent's cutime/cstime)."""
    ticks = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                f = _stat_fields(int(name))
                ticks[int(name)] = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            except (OSError, ValueError, IndexError):
                continue
    return ticks


# --------------------------------------------------------------------------------------------
# The clients: forked processes, each with one thread per connection

class Stats:
    """What one connection saw; merged over all connections at the end."""

    def __init__(self):
        self.responses = 0          # requests sent and finished, whatever the outcome
        self.ok = 0
        self.status = {}            # non-2xx status -> count (the excused ones included)
        self.excused = {}           # status -> count, for answers racing an in-place write
        self.conn_errors = 0        # requests lost to a reset, closed or garbled connection
        self.connect_failures = 0   # connect() attempts that failed
        self.timeouts = 0
        self.bad_body = 0           # a 2xx that is not 200 with the expected envelope
        self.stale = 0
        self.future = 0             # a version whose write had not even started at the answer
        self.versions_seen = set()
        self.samples = []           # a few "kind: detail" lines for the report
        self.lat = array.array("f")  # seconds per answered request

    def sample(self, kind, detail):
        if len(self.samples) < 4:
            self.samples.append("%s: %s" % (kind, detail))

    def merge(self, other):
        for k in ("responses", "ok", "conn_errors", "connect_failures", "timeouts", "bad_body",
                  "stale", "future"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for src, dst in ((other.status, self.status), (other.excused, self.excused)):
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
        self.versions_seen |= other.versions_seen
        self.samples += other.samples
        self.lat += other.lat


class ProtocolError(Exception):
    pass


class Client:
    """One client process: `conns` threads, each with its own keep-alive connection and one request
    in flight (as wrk does), drawing from a shared budget of `budget` requests.

    Threads beat an asyncio event loop here: each blocking send/recv releases the GIL, and the
    per-request Python work is a few calls instead of a trip through the loop's callbacks
    (measured on 2 cores: ~37-50k req/s for 64 threads against ~19k for one asyncio loop)."""

    MAX_HEAD = 64 * 1024
    MAX_BODY = 1024 * 1024

    def __init__(self, idx, port, conns, budget, shared, progress, modes, timeout, deadline):
        self.idx, self.port, self.conns = idx, port, conns
        self.budget = iter(range(budget))  # next() on it is atomic: threads share it safely
        self.shared, self.progress, self.modes = shared, progress, modes
        self.timeout, self.deadline = timeout, deadline
        self.deadline_hit = False
        self.request = ("GET /rest/services/%s/ HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                        % (API, HOST, port)).encode()
        self.prefix = b'{"status":"OK","response":{"' + RESULT_KEY.encode() + b'":'

    def raced_in_place(self, committed, started):
        """Did an in-place write of some version in (committed, started] overlap the request?"""
        return any(writer_of(self.modes, v)[0] in IN_PLACE for v in range(committed + 1, started + 1))

    def connect(self, st):
        """A new connection, or None once 20 attempts in a row failed (the server is gone)."""
        for _ in range(20):
            if self.shared[STOP]:
                return None
            try:
                sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except OSError as exc:
                st.connect_failures += 1
                st.sample("connect", repr(exc))
                time.sleep(0.1)
        return None

    def read_answer(self, sock):
        """(status, body, close?) of one answer; bounded in size, each recv bounded in time."""
        buf = sock.recv(65536)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if not buf or len(buf) > self.MAX_HEAD:
                raise ProtocolError("closed or oversized head after %d bytes" % len(buf))
            more = sock.recv(65536)
            if not more:
                raise ProtocolError("closed inside the head after %d bytes" % len(buf))
            buf += more
        head = buf[:end].lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            raise ProtocolError("answer without content-length: %r" % head[:200])
        j = head.find(b"\r\n", i + 17)
        clen = int(head[i + 17:j if j >= 0 else len(head)])
        if clen > self.MAX_BODY:
            raise ProtocolError("content-length %d" % clen)
        total = end + 4 + clen
        while len(buf) < total:
            more = sock.recv(65536)
            if not more:
                raise ProtocolError("closed inside the body")
            buf += more
        if len(buf) > total:
            raise ProtocolError("bytes after the answer: %r" % buf[total:total + 100])
        return int(buf[9:12]), buf[end + 4:total], b"\r\nconnection: close" in head

    def answer(self, st, status, body, committed):
        if status == 200:
            v = None
            if body.startswith(self.prefix) and body.endswith(b"}}"):
                try:
                    v = int(body[len(self.prefix):-2])
                except ValueError:
                    pass
            if v is None:
                v = self._slow_version(body)
            if v is None:
                st.bad_body += 1
                st.sample("bad body", body[:200])
                return
            st.ok += 1
            st.versions_seen.add(v)
            if v < committed:
                st.stale += 1
                st.sample("stale", "answered VERSION %d; %d was committed before the request was sent"
                          % (v, committed))
            elif v > self.shared[STARTED]:
                st.future += 1
                st.sample("future", "answered VERSION %d before its write started" % v)
            return
        if 200 < status < 300:
            st.bad_body += 1
            st.sample("HTTP %d" % status, body[:200])
            return
        st.status[status] = st.status.get(status, 0) + 1
        started = self.shared[STARTED]
        if self.raced_in_place(committed, started):
            st.excused[status] = st.excused.get(status, 0) + 1
        else:
            st.sample("HTTP %d" % status, "%s (committed %d when sent, write of %d started at the answer)"
                      % (body[:200], committed, started))

    def _slow_version(self, body):
        """The version from a 200 body laid out otherwise than the fast path expects, else None."""
        try:
            d = json.loads(body)
            if d.get("status") != "OK" or set(d) != {"status", "response"}:
                return None
            v = d["response"][RESULT_KEY]
            return v if isinstance(v, int) and len(d["response"]) == 1 else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def connection(self, slot, st):
        """Send requests on one connection until the budget is spent (reconnecting when it drops)."""
        shared, progress, request, budget = self.shared, self.progress, self.request, self.budget
        lat = st.lat
        perf = time.perf_counter
        deadline = perf() + (self.deadline - time.monotonic())
        sock = None
        try:
            while True:
                if sock is None:
                    sock = self.connect(st)
                    if sock is None:
                        return
                if next(budget, None) is None or shared[STOP]:
                    return
                committed = shared[COMMITTED]  # read before the request leaves
                t0 = perf()
                if t0 > deadline:
                    self.deadline_hit = True
                    return
                try:
                    sock.sendall(request)
                    status, body, close = self.read_answer(sock)
                except socket.timeout:
                    st.timeouts += 1
                    st.responses += 1
                    st.sample("timeout", "no answer within %g s" % self.timeout)
                    sock.close()
                    sock = None
                    continue
                except (OSError, ProtocolError, ValueError) as exc:
                    st.conn_errors += 1
                    st.responses += 1
                    st.sample("connection", repr(exc))
                    sock.close()
                    sock = None
                    continue
                lat.append(perf() - t0)
                st.responses += 1
                if st.responses & 15 == 0:
                    progress[slot] = st.responses
                self.answer(st, status, body, committed)
                if close:
                    sock.close()
                    sock = None
        finally:
            progress[slot] = st.responses
            if sock is not None:
                sock.close()

    def run(self, first_slot):
        stats = [Stats() for _ in range(self.conns)]
        threads = [threading.Thread(target=self.connection, args=(first_slot + i, stats[i]), daemon=True)
                   for i in range(self.conns)]
        for t in threads:
            t.start()
        for t in threads:  # bounded: every connection stops at the deadline or on STOP
            t.join()
        total = Stats()
        for s in stats:
            total.merge(s)
        return total


def client_main(idx, first_slot, port, conns, budget, shared, progress, modes, timeout, deadline, pipe):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    client = Client(idx, port, conns, budget, shared, progress, modes, timeout, deadline)
    st = client.run(first_slot)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send({
        "responses": st.responses, "ok": st.ok, "status": st.status, "excused": st.excused,
        "conn_errors": st.conn_errors, "connect_failures": st.connect_failures,
        "timeouts": st.timeouts, "bad_body": st.bad_body, "stale": st.stale, "future": st.future,
        "versions_seen": sorted(st.versions_seen), "samples": st.samples[:8],
        "lat": st.lat.tobytes(), "deadline_hit": client.deadline_hit,
        "cpu": ru.ru_utime + ru.ru_stime,
    })
    pipe.close()

# --------------------------------------------------------------------------------------------
# The parent: start the clients, rewrite the plugin, sample the server, report

def check_first_answer(port):
    """One plain request before the run: the server must answer VERSION 0."""
    import http.client
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/rest/services/%s/" % API)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    expect = {"status": "OK", "response": {RESULT_KEY: 0}}
    try:
        ok = resp.status == 200 and json.loads(body) == expect
    except ValueError:
        ok = False
    if not ok:
        raise RuntimeError("the first request answered HTTP %d %r, expected 200 %s"
                           % (resp.status, body[:300], json.dumps(expect)))


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def fmt_ms(secs):
    return "-" if secs is None else "%.2f ms" % (secs * 1e3)


def fmt_mib(kib):
    return "%.1f MiB" % (kib / 1024.0)


def by_process(supervisor, start, end):
    """'supervisor 5.1 -> 5.2, worker 1234 38.6 -> 40.1, ...' (MiB)."""
    parts = []
    for pid in sorted(set(start) | set(end), key=lambda p: (p != supervisor, p)):
        name = "supervisor" if pid == supervisor else "worker %d" % pid
        a = "%.1f" % (start[pid] / 1024.0) if pid in start else "-"
        b = "%.1f" % (end[pid] / 1024.0) if pid in end else "gone"
        parts.append("%s %s -> %s" % (name, a, b))
    return ", ".join(parts) + " MiB" if parts else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the server's base URL, http://127.0.0.1:PORT (from its `listening on` line)")
    ap.add_argument("--pid", type=int, help="the server's (supervisor's) pid")
    ap.add_argument("--plugin", required=True, help="the plugin file to rewrite (%s.py)" % MODULE)
    ap.add_argument("--init", action="store_true", help="only write VERSION 0 of the plugin and exit")
    ap.add_argument("--requests", type=int, default=1_000_000, help="requests in all (default 1,000,000)")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    ap.add_argument("--procs", type=int, default=2,
                    help="client processes sharing the connections (default 2: the fastest on 2 cores)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between rewrites (default 0.1)")
    ap.add_argument("--write-mode", choices=sorted(WRITE_MODES), default="mixed",
                    help="how the plugin is rewritten (default mixed; see above)")
    ap.add_argument("--warmup", type=int, default=10_000,
                    help="responses before the first RSS sample (default 10,000)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one request may take (default 10)")
    ap.add_argument("--max-secs", type=float, default=1800.0,
                    help="stop the run after this many seconds whatever happens (default 1800)")
    ap.add_argument("--strict", action="store_true",
                    help="also fail on errors that raced an in-place write (SPEC §2 allows them)")
    ap.add_argument("--label", default="", help="text for the report's title line (server version, workers)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    opts = ap.parse_args()

    modes = WRITE_MODES[opts.write_mode]
    shared = multiprocessing.RawArray(ctypes.c_int64, 3)
    rewriter = Rewriter(os.path.abspath(opts.plugin), modes, shared)
    if opts.init:
        rewriter.write_initial()
        return 0
    if not opts.url or not opts.pid:
        ap.error("--url and --pid are required (or --init)")
    u = urllib.parse.urlsplit(opts.url)
    if u.hostname != HOST or not u.port:
        ap.error("--url must be http://%s:PORT, got %r" % (HOST, opts.url))
    port = u.port
    if not (1 <= opts.procs <= opts.connections) or opts.requests < 1 or opts.interval <= 0:
        ap.error("need 1 <= --procs <= --connections, --requests >= 1 and --interval > 0")
    if not alive(opts.pid):
        log("server pid %d is not running" % opts.pid)
        return 2
    try:
        check_first_answer(port)
    except (OSError, RuntimeError) as exc:
        log("server not usable: %s" % exc)
        return 2

    # Start the clients: `--procs` processes sharing the connections and the request budget.
    ctx = multiprocessing.get_context("fork")
    progress = multiprocessing.RawArray(ctypes.c_int64, opts.connections)  # answers per connection
    t_start = time.monotonic()
    deadline = t_start + opts.max_secs
    procs, pipes = [], []
    slot = 0
    for i in range(opts.procs):
        conns = opts.connections // opts.procs + (1 if i < opts.connections % opts.procs else 0)
        budget = opts.requests // opts.procs + (1 if i < opts.requests % opts.procs else 0)
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=client_main, name="soak-client-%d" % i,
                        args=(i, slot, port, conns, budget, shared, progress, modes, opts.timeout,
                              deadline, tx))
        p.start()
        tx.close()
        procs.append(p)
        pipes.append(rx)
        slot += conns
    ours = {os.getpid()} | {p.pid for p in procs}

    pids0 = server_pids(opts.pid)
    workers_seen = set(pids0) - {opts.pid}
    rss_start = rss_end = None
    rss_start_by_pid, rss_end_by_pid = {}, {}
    rss_peak = 0
    rss_series = []  # (seconds, answers, KiB) once a second
    start = None   # at the end of the warm-up: (responses, monotonic, server ticks, all ticks)
    server_died = False
    interrupted = False
    rewrite_error = None
    next_write = time.monotonic() + opts.interval
    next_sample = time.monotonic()
    results = [None] * opts.procs
    try:
        while time.monotonic() < deadline + 30:  # bounded: the clients stop at the deadline
            now = time.monotonic()
            if now >= next_write:
                rewriter.next()
                # A late tick (a busy machine) is not made up with a burst of writes.
                next_write = max(next_write + opts.interval, time.monotonic() + opts.interval / 2)
            if now >= next_sample:
                next_sample = now + 1.0
                pids = server_pids(opts.pid)
                workers_seen.update(set(pids) - {opts.pid})
                rss = rss_kib(pids)
                rss_peak = max(rss_peak, rss)
                rss_series.append((round(now - t_start, 1), sum(progress), rss))
                if not alive(opts.pid):
                    server_died = True
                    shared[STOP] = 1
            if start is None and sum(progress) >= min(opts.warmup, opts.requests):
                pids = server_pids(opts.pid)
                rss_start_by_pid = rss_by_pid(pids)
                rss_start = sum(rss_start_by_pid.values())
                start = (sum(progress), time.monotonic(), cpu_ticks(pids), all_cpu_ticks())
            for i, rx in enumerate(pipes):
                if results[i] is None and rx.poll():
                    try:
                        results[i] = rx.recv()
                    except EOFError:
                        results[i] = {}
            if all(r is not None for r in results):
                break
            if not any(p.is_alive() for p in procs) and not any(rx.poll() for rx in pipes):
                break
            time.sleep(max(0.0, min(0.01, next_write - time.monotonic())))
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:  # the rewriter could not write: stop the clients, report it
        rewrite_error = "rewriting the plugin failed: %r" % exc
    finally:
        shared[STOP] = 1
    t_end = time.monotonic()
    pids = server_pids(opts.pid)
    server_died = server_died or not alive(opts.pid)
    if not server_died:
        rss_end_by_pid = rss_by_pid(pids)
        rss_end = sum(rss_end_by_pid.values())
        rss_peak = max(rss_peak, rss_end)
    end_server_ticks, end_all = cpu_ticks(pids), all_cpu_ticks()
    workers_seen.update(set(pids) - {opts.pid})
    for i, rx in enumerate(pipes):  # bounded: each client stops within `--timeout` of STOP
        if results[i] is None and rx.poll(opts.timeout + 5):
            try:
                results[i] = rx.recv()
            except EOFError:
                pass
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
    if start is None:
        start = (0, t_start, end_server_ticks, end_all)

    # Merge the clients' figures.
    tot = {"responses": 0, "ok": 0, "conn_errors": 0, "connect_failures": 0, "timeouts": 0,
           "bad_body": 0, "stale": 0, "future": 0}
    status, excused, samples, seen = {}, {}, [], set()
    lat = array.array("f")
    client_cpu = 0.0
    missing_clients = 0
    deadline_hit = False
    for r in results:
        if not r:
            missing_clients += 1
            continue
        for k in tot:
            tot[k] += r[k]
        for src, dst in ((r["status"], status), (r["excused"], excused)):
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
        samples.extend(r["samples"])
        seen.update(r["versions_seen"])
        lat.frombytes(r["lat"])
        client_cpu += r["cpu"]
        deadline_hit = deadline_hit or r["deadline_hit"]
    lat = sorted(lat)
    elapsed = t_end - t_start
    non2xx = sum(status.values())
    non2xx_excused = sum(excused.values())
    non2xx_counted = non2xx if opts.strict else non2xx - non2xx_excused
    measured_n = tot["responses"] - start[0]
    measured_secs = t_end - start[1]
    server_secs = (end_server_ticks - start[2]) / CLK_TCK
    # CPU of every other process on the machine while the measured part ran (another build...).
    skip = ours | set(pids) | set(pids0) | workers_seen
    other_ticks = sum(t - start[3].get(pid, 0) for pid, t in end_all.items() if pid not in skip)
    other_pct = 100.0 * other_ticks / CLK_TCK / measured_secs if measured_secs > 0 else 0.0
    replaced = max(0, len(workers_seen) - (len(pids0) - 1))

    problems = []
    if non2xx_counted:
        problems.append("%d non-2xx answers" % non2xx_counted)
    for key, label in (("stale", "stale answers"), ("conn_errors", "connection errors"),
                       ("timeouts", "timeouts"), ("bad_body", "200s with a wrong body"),
                       ("future", "versions answered before their write started")):
        if tot[key]:
            problems.append("%d %s" % (tot[key], label))
    if tot["connect_failures"]:
        problems.append("%d failed connects" % tot["connect_failures"])
    if server_died:
        problems.append("the server died")
    if replaced:
        problems.append("%d worker(s) replaced by the supervisor (a worker crashed)" % replaced)
    if tot["responses"] < opts.requests:
        problems.append("only %d of %d requests done%s" % (tot["responses"], opts.requests,
                                                        " (deadline hit)" if deadline_hit else ""))
    if missing_clients:
        problems.append("%d client process(es) sent no results" % missing_clients)
    if interrupted:
        problems.append("interrupted")
    if rewrite_error:
        problems.append(rewrite_error)

    def status_list(d):
        return ", ".join("%d: %d" % (k, d[k]) for k in sorted(d)) or "-"

    rows = [
        ("requests", "{:,}".format(tot["responses"])),
        ("elapsed", "%.1f s" % elapsed),
        ("req/s", "{:,.0f}".format(tot["responses"] / elapsed if elapsed else 0)),
        ("latency p50 / p99 / max", "%s / %s / %s" % (fmt_ms(percentile(lat, 0.5)),
                                                      fmt_ms(percentile(lat, 0.99)),
                                                      fmt_ms(lat[-1] if lat else None))),
        ("200 OK", "{:,}".format(tot["ok"])),
        ("non-2xx", "%d (%s)" % (non2xx - non2xx_excused, status_list(
            {k: n - excused.get(k, 0) for k, n in status.items() if n - excused.get(k, 0)}))),
        ("  racing in-place writes", "%d (%s)%s" % (non2xx_excused, status_list(excused),
                                                    "" if opts.strict else " allowed by SPEC §2")),
        ("connection errors", "%d (failed connects %d)" % (tot["conn_errors"], tot["connect_failures"])),
        ("timeouts (> %g s)" % opts.timeout, "%d" % tot["timeouts"]),
        ("stale answers", "%d" % tot["stale"]),
        ("bad 2xx answers", "%d" % (tot["bad_body"] + tot["future"])),
        ("plugin rewrites", "%d (%s); longest write %.2f ms"
         % (rewriter.version, ", ".join("%s %d" % kv for kv in sorted(rewriter.counts.items())),
            rewriter.write_secs_max * 1e3)),
        ("versions answered", "%d distinct, last %s" % (len(seen), max(seen) if seen else "-")),
        ("RSS start", "%s (after %s responses)" % (fmt_mib(rss_start) if rss_start else "-",
                                                  "{:,}".format(start[0]))),
        ("RSS end", "%s (%s)" % (fmt_mib(rss_end) if rss_end else "-",
                                 "%+.1f%%" % (100.0 * (rss_end - rss_start) / rss_start)
                                 if rss_end and rss_start else "server gone")),
        ("RSS peak", "%s (1 s samples)" % fmt_mib(rss_peak)),
        ("RSS by process", by_process(opts.pid, rss_start_by_pid, rss_end_by_pid)),
        ("server CPU", "%.1f us/request after warm-up (%d processes)"
         % (1e6 * server_secs / measured_n if measured_n > 0 else 0, len(pids0))),
        ("client CPU", "%.1f us/request (%d processes)"
         % (1e6 * client_cpu / tot["responses"] if tot["responses"] else 0, opts.procs)),
        ("other CPU", "%.0f%% of a core (other processes; noise above ~10)" % other_pct),
        ("server", "%s, workers seen %d, replaced %d" % ("DIED" if server_died else "alive",
                                                         len(workers_seen), replaced)),
    ]
    out = ["", "dpms soak  %s" % (opts.label or ""),
           "%s requests, %d connections, %d client processes, plugin rewritten every %g s (%s)"
           % ("{:,}".format(opts.requests), opts.connections, opts.procs, opts.interval, opts.write_mode), ""]
    width = max(len(k) for k, _ in rows)
    out += ["%-*s  %s" % (width, k, v) for k, v in rows]
    out.append("")
    for s in list(dict.fromkeys(samples))[:12]:  # distinct ones, in the order they came
        out.append("  ! " + s)
    out.append("%-*s  %s" % (width, "verdict", "FAIL: " + "; ".join(problems) if problems else "PASS"))
    print("\n".join(out), flush=True)

    if opts.json:
        dump = dict(tot)
        dump.update({
            "elapsed_secs": elapsed, "status": {str(k): n for k, n in status.items()},
            "excused": {str(k): n for k, n in excused.items()}, "non2xx_counted": non2xx_counted,
            "rewrites": rewriter.version, "rewrite_counts": rewriter.counts,
            "longest_write_ms": rewriter.write_secs_max * 1e3, "versions_answered": len(seen),
            "rss_start_kib": rss_start, "rss_end_kib": rss_end, "rss_peak_kib": rss_peak,
            "server_died": server_died, "workers_replaced": replaced, "problems": problems,
            "p50_ms": (percentile(lat, 0.5) or 0) * 1e3, "p99_ms": (percentile(lat, 0.99) or 0) * 1e3,
            "samples": samples, "rss_series": rss_series,
            "rss_start_by_pid": rss_start_by_pid, "rss_end_by_pid": rss_end_by_pid,
            "supervisor_pid": opts.pid,
        })
        with open(opts.json, "w") as f:
            json.dump(dump, f, indent=2)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

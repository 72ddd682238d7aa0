"""SPEC §11 promises 1–8 and 10 through a real server: tenants' modules run in their own
sandboxed processes (`dpms-t-<8 hex>`), and whatever tenant code does to its boundary, its
deadline, its own death or its channel, the worker keeps serving and another tenant's call
is still answered 200 afterwards (every test ends with ``site.others_still_served()``).

The server runs with one worker (so each tenant has exactly one process, found by its `comm`
and by being pid 1 of its own pid namespace) and lives outside /tmp: the tenant's /tmp is
its private tmpfs, so host files under /tmp would be hidden by the mount namespace rather
than refused by Landlock. Files the tenant must not read are world-readable on purpose, so
only the sandbox stands between them and the tenant's (unprivileged) uid.

Where tenant code must be caught in the act ("A does not hold up B"), it prints a marker
that reaches the server log (SPEC §11: tenant output goes to the log) and the test waits for
that marker, never for a fixed time.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from dpms_helpers import TIMEOUT, Launcher, binary_path, body_json, clean_env, describe, ok, source, wait_for

ADMIN = "5d1c9e27-8a43-4f6b-b2d0-93e7c4a1f856"
MAX_SECS = 2  # MAX_FUNCTION_SECS of the shared server
MEMORY_MIB = 512  # DPMS_TENANT_MEMORY of the shared server (its default)
SCRATCH_CAP = 64 << 20  # src/tenants.rs SCRATCH_BYTES
DOTENV_KEY = "STEST_DOTENV_ONLY"
DOTENV_VALUE = "dotenv-value-the-tenant-must-not-see"
SECRET_VALUE = "a-secret-for-tenant-a-only"
HOST_MARKER_ENV = "STEST_HOST_ONLY"
ROUNDS = 20  # repetitions of a check that must hold every time
# Python-level denial of a syscall by seccomp (EPERM) or Landlock (EACCES).
DENIED = (errno.EPERM, errno.EACCES)

# --------------------------------------------------------------------------------------------
# Plugins

#: Tenant A: one endpoint per hostile act; each returns what happened as plain data.
TENANT_A = '''
__ID__ = "$uuid"
import ctypes, errno, os, re, signal, socket, sys, threading, time
from vyperlogix.decorators import expose

# Import-time effect: in the host this would create a host file; in the sandbox /tmp is the
# tenant's own tmpfs.
try:
    open("$import_marker", "w").close()
except OSError:
    pass


def _attempt(fn):
    try:
        out = fn()
        return {"ok": True, "value": out}
    except OSError as e:
        return {"ok": False, "type": type(e).__name__, "errno": e.errno}
    except Exception as e:
        return {"ok": False, "type": type(e).__name__, "errno": None}


def _mark(marker):
    print(marker, file=sys.stderr, flush=True)


@expose.endpoint(method="GET", API="$p-info")
def info():
    return {"pid": os.getpid(), "uid": os.getuid(), "environ": dict(os.environ)}


@expose.endpoint(method="POST", API="$p-read")
def read(path):
    def go():
        with open(path, "rb") as f:
            return len(f.read())
    return _attempt(go)


@expose.endpoint(method="POST", API="$p-list")
def listdir(path):
    return _attempt(lambda: sorted(os.listdir(path)))


@expose.endpoint(method="POST", API="$p-symlink-read")
def symlink_read(target):
    link = "/tmp/link-" + str(os.getpid()) + "-" + str(time.monotonic_ns())
    os.symlink(target, link)
    try:
        def go():
            with open(link, "rb") as f:
                return len(f.read())
        return _attempt(go)
    finally:
        os.unlink(link)


@expose.endpoint(method="POST", API="$p-write")
def write(path):
    def go():
        with open(path, "w") as f:
            f.write("tenant was here")
        return path
    return _attempt(go)


@expose.endpoint(method="GET", API="$p-fill")
def fill():
    chunk = b"x" * (4 << 20)
    written, files, error = 0, [], None
    try:
        for i in range(1000):  # bounded: 4 GiB at most
            name = "/tmp/fill-%d" % i
            files.append(name)
            with open(name, "wb") as f:
                f.write(chunk)
            written += len(chunk)
    except OSError as e:
        error = e.errno
    for name in files:
        try:
            os.unlink(name)
        except OSError:
            pass
    # After cleanup the scratch folder is usable again.
    with open("/tmp/after-fill", "w") as f:
        f.write("ok")
    os.unlink("/tmp/after-fill")
    return {"written": written, "errno": error}


@expose.endpoint(method="GET", API="$p-fill-one")
def fill_one():
    chunk = b"x" * (1 << 20)
    written, error = 0, None
    try:
        with open("/tmp/one-big-file", "wb") as f:
            for _ in range(4096):  # bounded: 4 GiB at most
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as e:
        error = e.errno
    os.unlink("/tmp/one-big-file")
    return {"written": written, "errno": error}


@expose.endpoint(method="POST", API="$p-tcp")
def tcp(port):
    def go():
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.close()
    return _attempt(go)


@expose.endpoint(method="POST", API="$p-udp")
def udp(port):
    def go():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"hello", ("127.0.0.1", port))
        s.close()
    return _attempt(go)


@expose.endpoint(method="GET", API="$p-dns")
def dns():
    return {
        name: _attempt(lambda name=name: [a[4][0] for a in socket.getaddrinfo(name, 80)])
        for name in ("example.com", "localhost")
    }


@expose.endpoint(method="POST", API="$p-unix")
def unix(path):
    def go():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(path)
        s.close()
    def abstract():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("\\0dpms-stest-abstract")
        s.close()
    def pair():
        a, b = socket.socketpair()
        a.sendall(b"x")
        got = b.recv(1)
        a.close()
        b.close()
        return got.decode()
    return {"pathname": _attempt(go), "abstract": _attempt(abstract), "socketpair": _attempt(pair)}


@expose.endpoint(method="POST", API="$p-signal")
def signal_host(pids):
    out = {}
    for pid in pids:
        out[str(pid)] = _attempt(lambda pid=pid: os.kill(pid, signal.SIGKILL))
    libc = ctypes.CDLL(None, use_errno=True)
    out["ptrace"] = {}
    for pid in pids:
        rc = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
        out["ptrace"][str(pid)] = {"rc": rc, "errno": ctypes.get_errno()}
    out["kill_all"] = _attempt(lambda: os.kill(-1, signal.SIGTERM))
    out["proc"] = _attempt(lambda: sorted(int(e) for e in os.listdir("/proc") if e.isdigit()))
    return out


@expose.endpoint(method="GET", API="$p-forkbomb")
def forkbomb():
    r, w = os.pipe()
    children, error = [], None
    for _ in range(10000):  # bounded; RLIMIT_NPROC stops it far sooner
        try:
            pid = os.fork()
        except OSError as e:
            error = e.errno
            break
        if pid == 0:
            os.close(w)
            try:
                os.read(r, 1)  # until the parent closes the pipe
            finally:
                os._exit(0)
        children.append(pid)
    os.close(w)
    os.close(r)
    for pid in children:
        os.waitpid(pid, 0)
    return {"forked": len(children), "errno": error}


@expose.endpoint(method="GET", API="$p-threadbomb")
def threadbomb():
    stop = threading.Event()
    threads, error = [], None
    for _ in range(10000):  # bounded; RLIMIT_NPROC / RLIMIT_AS stop it far sooner
        t = threading.Thread(target=stop.wait, args=(30,), daemon=True)
        try:
            t.start()
        except RuntimeError as e:
            error = str(e)
            break
        threads.append(t)
    stop.set()
    for t in threads:
        t.join(30)
    return {"started": len(threads), "error": error}


@expose.endpoint(method="POST", API="$p-python-loop")
def python_loop(marker):
    _mark(marker)
    n = 0
    while True:
        n += 1


@expose.endpoint(method="POST", API="$p-regex")
def regex(marker):
    _mark(marker)
    return bool(re.match(r"(a+)+$$", "a" * 64 + "b"))


@expose.endpoint(method="POST", API="$p-sum")
def big_sum(marker):
    _mark(marker)
    return sum(range(10**12))


@expose.endpoint(method="POST", API="$p-sigxcpu")
def sigxcpu(marker):
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal(signal.SIGXCPU, ctypes.c_void_p(1))  # SIG_IGN, from any thread
    _mark(marker)
    while True:
        pass


@expose.endpoint(method="POST", API="$p-sleep")
def sleep(marker):
    _mark(marker)
    time.sleep(10**6)


@expose.endpoint(method="POST", API="$p-orphan")
def orphan(marker, then):
    if os.fork() == 0:
        time.sleep(10**6)
        os._exit(0)
    _mark(marker)
    if then == "exit":
        os._exit(3)
    time.sleep(10**6)


@expose.endpoint(method="POST", API="$p-say")
def say(text, raw=False):
    if raw:
        # Below Python's captured streams: the descriptors themselves.
        os.write(1, text.encode() + b"\\n")
        os.write(2, text.encode() + b"\\n")
    else:
        print(text, flush=True)
        print(text, file=sys.stderr, flush=True)
    return "said"


@expose.endpoint(method="POST", API="$p-nap")
def nap(secs):
    time.sleep(secs)
    return "rested"


@expose.endpoint(method="GET", API="$p-exit")
def exit_now():
    os._exit(3)


@expose.endpoint(method="GET", API="$p-segv")
def segv():
    ctypes.string_at(0)


@expose.endpoint(method="GET", API="$p-mem-one")
def mem_one():
    try:
        bytearray(($memory + 64) << 20)
    except MemoryError:
        return "MemoryError"
    return "allocated"


@expose.endpoint(method="GET", API="$p-mem-half")
def mem_half():
    out = {}
    try:
        block = bytearray(($memory // 2) << 20)
        out["half"] = len(block)
        del block
    except MemoryError:
        out["half"] = "MemoryError"
    stop = threading.Event()
    threads = []
    try:
        for _ in range(16):
            t = threading.Thread(target=stop.wait, args=(30,), daemon=True)
            t.start()
            threads.append(t)
    except RuntimeError as e:
        out["thread_error"] = str(e)
    out["threads"] = len(threads)
    stop.set()
    for t in threads:
        t.join(30)
    return out


@expose.endpoint(method="GET", API="$p-mem-grow")
def mem_grow():
    hoard = []
    for _ in range(100000):  # bounded: far past any limit
        hoard.append(bytearray(16 << 20))
    return len(hoard)


@expose.endpoint(method="POST", API="$p-channel")
def channel(kind):
    frames = {
        "oversized": b"\\xff\\xff\\xff\\xff",
        "garbage": len(b"not json").to_bytes(4, "big") + b"not json",
        "unexpected": (lambda body: len(body).to_bytes(4, "big") + body)(
            b'{"ready":{"layers_missing":[]}}'
        ),
        "unknown_id": (lambda body: len(body).to_bytes(4, "big") + body)(
            b'{"done":{"id":987654321,"result":{"internal":{"detail":"x"}}}}'
        ),
    }
    os.write(3, frames[kind])
    time.sleep(5)  # the host kills this process long before
    return "survived"
'''

#: A forged answer to the call `id` (the host numbers a fresh process's messages from 1).
FORGE = '''

@expose.endpoint(method="POST", API="$p-forge")
def forge(id, status, headers, body):
    import base64, json
    frame = json.dumps({"done": {
        "id": id,
        "result": {"custom": {
            "status": status,
            "headers": headers,
            "content_type": "text/plain",
            "body": base64.b64encode(body.encode()).decode(),
        }},
    }}).encode()
    os.write(3, len(frame).to_bytes(4, "big") + frame)
    time.sleep(1)
    return "real answer"
'''

#: Tenant B: the bystander every test calls afterwards.
TENANT_B = '''
__ID__ = "$uuid"
import os
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="$p-ping")
def ping():
    return "pong"


@expose.endpoint(method="GET", API="$p-info")
def info():
    return {"pid": os.getpid(), "uid": os.getuid(), "environ": dict(os.environ)}
'''

#: The admin's module: runs in the worker's own interpreter.
ADMIN_MODULE = '''
import os
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="$p-pid")
def pid():
    return os.getpid()
'''


# --------------------------------------------------------------------------------------------
# /proc helpers


def read_text(path) -> str:
    try:
        return pathlib.Path(path).read_text("utf-8", "replace")
    except OSError:
        return ""


def status_fields(path) -> dict:
    out = {}
    for line in read_text(path).splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def comm_pids(comm: str) -> list[int]:
    """Host pids of pid-1-of-its-namespace processes named ``comm`` (a tenant process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if read_text(f"/proc/{entry}/comm").strip() != comm:
            continue
        if not alive(int(entry)):
            continue  # a zombie nobody has reaped yet is no process of the tenant's
        nspid = status_fields(f"/proc/{entry}/status").get("NSpid", "").split()
        if len(nspid) >= 2 and nspid[-1] == "1":
            found.append(int(entry))
    return found


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in read_text(f"/proc/{pid}/task/{task}/children").split()]
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive.
    return status_fields(f"/proc/{pid}/status").get("State", "Z").split()[0] != "Z"


def limits(pid: int) -> dict:
    """``/proc/<pid>/limits`` as {name: (soft, hard)}."""
    out = {}
    lines = read_text(f"/proc/{pid}/limits").splitlines()[1:]
    for line in lines:
        name = line[:26].strip()
        soft, hard = line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


def environ_block(pid: int) -> dict:
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    out = {}
    for item in raw.split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            out[key.decode()] = value.decode("utf-8", "replace")
    return out


def err_code(r) -> str | None:
    try:
        return body_json(r).get("error")
    except AssertionError:
        return None


# --------------------------------------------------------------------------------------------
# The site: one server, the admin's module and two tenants


class Tenant:
    def __init__(self, site, uuid_, prefix, module):
        self.site = site
        self.uuid = uuid_
        self.p = prefix
        self.module = module
        self.comm = "dpms-t-" + uuid.UUID(uuid_).hex[:8]

    def call(self, method, api, **kw):
        return self.site.server.request(method, f"{self.uuid}/{self.p}-{api}/", **kw)

    def get(self, api, **kw):
        return self.call("GET", api, **kw)

    def post(self, api, **kw):
        return self.call("POST", api, **kw)

    def result(self, r, func):
        return ok(r, f"{self.module}.{func}")

    def info(self):
        return self.result(self.get("info"), "info")

    def pid(self) -> int:
        """The host pid of this tenant's (one) process, started by a call if none runs."""
        self.info()
        pids = wait_for(lambda: comm_pids(self.comm), timeout=10, what=f"a {self.comm} process")
        assert len(pids) == 1, f"one process per tenant with one worker, found {pids}"
        return pids[0]

    def current_pids(self) -> list[int]:
        return comm_pids(self.comm)


class Site:
    def __init__(self, server, folder, a, b, admin_prefix, admin_module):
        self.server = server
        self.folder = folder
        self.a = a
        self.b = b
        self.admin_prefix = admin_prefix
        self.admin_module = admin_module

    @property
    def supervisor(self) -> int:
        return self.server.proc.pid

    def workers(self) -> list[int]:
        return children(self.supervisor)

    def admin_pid(self) -> int:
        r = self.server.get(f"{ADMIN}/{self.admin_prefix}-pid/")
        return ok(r, f"{self.admin_module}.pid")

    def others_still_served(self, worker=None):
        """The promise's second half: the other tenant, the admin and the worker are fine."""
        assert self.b.result(self.b.get("ping"), "ping") == "pong"
        pid = self.admin_pid()
        assert pid in self.workers()
        if worker is not None:
            assert pid == worker, "the worker was replaced"
        assert alive(self.supervisor)


def cli(workdir, *args):
    p = subprocess.run(
        [str(binary_path()), "tenant", *args],
        cwd=workdir,
        env=clean_env({"ADMIN_ID": ADMIN}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def outside_root():
    """A root outside /tmp (see the module docstring), world-traversable."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="dpms-stest-", dir="/var/tmp"))
    root.chmod(0o755)
    yield root
    if not os.environ.get("DPMS_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


def make_site(root, env, tag):
    """Starts a server with MULTI_TENANT on in ``root``, with the admin's module and tenants
    A (hostile) and B (bystander) registered by `dpms tenant add`."""
    folder = root / f"plugins-{tag}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    hex_ = uuid.uuid4().hex[:8]
    a_id, b_id = str(uuid.uuid4()), str(uuid.uuid4())
    a_mod, b_mod, adm_mod = f"ta_{hex_}", f"tb_{hex_}", f"adm_{hex_}"
    a_p, b_p, adm_p = f"a{hex_}", f"b{hex_}", f"adm{hex_}"
    import_marker = f"/tmp/dpms-stest-import-{hex_}"
    (folder / f"{a_mod}.py").write_text(
        source(TENANT_A + FORGE, uuid=a_id, p=a_p, import_marker=import_marker, memory=MEMORY_MIB)
    )
    (folder / f"{b_mod}.py").write_text(source(TENANT_B, uuid=b_id, p=b_p))
    (folder / f"{adm_mod}.py").write_text(source(ADMIN_MODULE, p=adm_p))
    for f in folder.iterdir():
        f.chmod(0o644)
    launcher = Launcher(root)
    server = launcher(
        env={
            "MULTI_TENANT": "True",
            "ADMIN_ID": ADMIN,
            "DPMS_WORKERS": "1",
            HOST_MARKER_ENV: "host-env-the-tenant-must-not-see",
            **env,
        },
        plugin_dirs=[folder],
        dotenv=f"{DOTENV_KEY}={DOTENV_VALUE}\n",
    )
    server.workdir.chmod(0o755)
    (server.workdir / ".env").chmod(0o644)
    cli(server.workdir, "add", f"a-{hex_}", "--uuid", a_id)
    cli(server.workdir, "add", f"b-{hex_}", "--uuid", b_id)
    cli(server.workdir, "secret", "set", a_id, "STEST_SECRET", SECRET_VALUE)
    site = Site(
        server,
        folder,
        Tenant(None, a_id, a_p, a_mod),
        Tenant(None, b_id, b_p, b_mod),
        adm_p,
        adm_mod,
    )
    site.a.site = site.b.site = site
    site.import_marker = import_marker
    return launcher, site


@pytest.fixture(scope="module")
def site(outside_root):
    launcher, site = make_site(
        outside_root,
        {"MAX_FUNCTION_SECS": str(MAX_SECS), "DPMS_TENANT_MEMORY": str(MEMORY_MIB)},
        "main",
    )
    try:
        yield site
    finally:
        launcher.close()


# --------------------------------------------------------------------------------------------
# 1. Never shared


def test_1_each_tenant_its_own_process_and_the_admin_in_the_worker(site):
    a_pid, b_pid = site.a.pid(), site.b.pid()
    assert a_pid != b_pid
    workers = site.workers()
    assert len(workers) == 1, workers
    assert a_pid not in workers and b_pid not in workers
    # Each tenant process descends from the worker (through the sandbox's middle process and
    # the worker's zygote, or the middle process alone when it was started afresh).
    for pid in (a_pid, b_pid):
        middle = int(status_fields(f"/proc/{pid}/status")["PPid"])
        parent = int(status_fields(f"/proc/{middle}/status")["PPid"])
        if parent != workers[0]:
            parent = int(status_fields(f"/proc/{parent}/status")["PPid"])
        assert parent == workers[0]
    # Different host uids, different namespaces.
    a_uid = status_fields(f"/proc/{a_pid}/status")["Uid"].split()[0]
    b_uid = status_fields(f"/proc/{b_pid}/status")["Uid"].split()[0]
    assert a_uid != b_uid
    for ns in ("user", "pid", "net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{a_pid}/ns/{ns}") != os.readlink(f"/proc/{b_pid}/ns/{ns}"), ns
    # Inside, each is pid 1 of its own namespace.
    assert site.a.info()["pid"] == 1 and site.b.info()["pid"] == 1
    # The admin's module runs in the worker; a tenant calling it reaches the same worker.
    admin_pid = site.admin_pid()
    assert admin_pid in workers
    via_tenant = site.server.get(f"{site.a.uuid}/{site.admin_prefix}-pid/")
    assert ok(via_tenant, f"{site.admin_module}.pid") == admin_pid
    for pid in (admin_pid, site.supervisor):
        assert not read_text(f"/proc/{pid}/comm").startswith("dpms-t-")
    # The tenant module's import ran only inside the sandbox: the host's /tmp never saw it.
    assert not os.path.exists(site.import_marker)


def test_1_a_tenant_cannot_reach_another_tenants_modules(site):
    # B calling A's API, and the admin calling it under the admin's uuid: not found, the
    # same answer as for an API that does not exist.
    for caller in (site.b.uuid, ADMIN):
        r = site.server.get(f"{caller}/{site.a.p}-info/")
        assert r.status_code == 404, describe(r)
    a_pid, b_pid = site.a.pid(), site.b.pid()
    assert site.a.pid() == a_pid and site.b.pid() == b_pid, "processes are kept, never swapped"
    site.others_still_served()


# --------------------------------------------------------------------------------------------
# 2. Boundary facts, from the host's /proc


def test_2_boundary_facts(site):
    pid = site.a.pid()
    worker = site.workers()[0]
    tasks = os.listdir(f"/proc/{pid}/task")
    assert len(tasks) >= 2, f"the Python threads are running: {tasks}"
    for tid in tasks:
        st = status_fields(f"/proc/{pid}/task/{tid}/status")
        uids = st["Uid"].split()
        gids = st["Gid"].split()
        assert len(set(uids)) == 1 and uids[0] != "0", (tid, st["Uid"])
        assert len(set(gids)) == 1 and gids[0] != "0", (tid, st["Gid"])
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(st[cap], 16) == 0, (tid, cap, st[cap])
        assert st["NoNewPrivs"] == "1", tid
        assert st["Seccomp"] == "2", tid
    for ns in ("user", "pid", "net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/{worker}/ns/{ns}"), ns
    lim = limits(pid)
    assert lim["Max core file size"] == ("0", "0")
    assert lim["Max open files"][0] != "unlimited" and int(lim["Max open files"][0]) <= 4096
    assert lim["Max file size"][0] != "unlimited" and int(lim["Max file size"][0]) <= SCRATCH_CAP
    assert lim["Max address space"] == (str(MEMORY_MIB << 20),) * 2
    assert lim["Max processes"][0] != "unlimited"
    # Inside: only its secret and the fixed minimal set.
    env = site.a.info()["environ"]
    assert env == {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "STEST_SECRET": SECRET_VALUE}
    assert "STEST_SECRET" not in site.b.info()["environ"]
    # The block it started with carries nothing of the server and no secret.
    block = environ_block(pid)
    for key in (DOTENV_KEY, HOST_MARKER_ENV, "ADMIN_ID", "MULTI_TENANT", "PATH", "plugins", "STEST_SECRET"):
        assert key not in block, (key, block)
    assert not any(k.startswith("DPMS_") for k in block), block
    assert SECRET_VALUE not in repr(block) and ADMIN not in repr(block)
    site.others_still_served()


def test_2_memory_limit_is_the_tenants_to_use(site):
    """DPMS_TENANT_MEMORY is the tenant's address space: half of it is there for its own
    data, and 16 threads start (a real bug today: see the report; glibc's per-thread malloc
    arenas reserve 64 MiB of address space each, RLIMIT_AS counts them all)."""
    res = site.a.result(site.a.get("mem-half"), "mem_half")
    assert res == {"half": (MEMORY_MIB // 2) << 20, "threads": 16}, res
    site.others_still_served()


def test_2_environ_block_is_only_the_fixed_set(site):
    # The block the process was started with (the zygote's, with its allocator settings) is
    # what /proc/<pid>/environ shows; the tenant process overwrites it once its environment
    # is replaced.
    block = environ_block(site.a.pid())
    assert set(block) <= {"HOME", "TMPDIR", "LANG", "STEST_SECRET"}, block


# --------------------------------------------------------------------------------------------
# 3. Filesystem


def test_3_reads_outside_its_world_are_refused(site):
    workdir = site.server.workdir
    other = site.folder / f"{site.b.module}.py"
    admin_file = site.folder / f"{site.admin_module}.py"
    own = site.folder / f"{site.a.module}.py"
    registry = workdir / ".dpms" / "registry.sqlite3"
    assert registry.exists() and other.exists() and admin_file.exists()
    # A positive control: the standard library is readable.
    assert site.a.result(site.a.post("read", json={"path": "/usr/lib/python3.11/os.py"}), "read")["ok"]
    up = f"{site.folder}/../{site.folder.name}/{other.name}"
    targets = {
        ".env": str(workdir / ".env"),
        "registry": str(registry),
        "admin plugin": str(admin_file),
        "other tenant": str(other),
        "other tenant via ..": up,
        "other tenant via /proc/1/root": f"/proc/1/root{other}",
        "own plugin file on the host": str(own),
        "server log": str(workdir / "stderr.log"),
        "world-readable /etc/passwd": "/etc/passwd",
    }
    for what, path in targets.items():
        res = site.a.result(site.a.post("read", json={"path": path}), "read")
        assert res["ok"] is False and res["errno"] in DENIED, (what, path, res)
    res = site.a.result(site.a.post("symlink-read", json={"target": str(other)}), "symlink_read")
    assert res["ok"] is False and res["errno"] in DENIED, ("symlink", res)
    for path in (str(site.folder), str(workdir), "/"):
        res = site.a.result(site.a.post("list", json={"path": path}), "listdir")
        assert res["ok"] is False and res["errno"] in DENIED, (path, res)
    site.others_still_served()


def test_3_writes_outside_tmp_are_refused(site):
    targets = [
        site.folder / f"evil_{uuid.uuid4().hex[:8]}.py",
        site.server.workdir / f"evil-{uuid.uuid4().hex[:8]}",
        pathlib.Path("/var/tmp") / f"evil-{uuid.uuid4().hex[:8]}",
        pathlib.Path("/dev/shm") / f"evil-{uuid.uuid4().hex[:8]}",
        pathlib.Path("/usr/lib/python3.11") / f"evil-{uuid.uuid4().hex[:8]}.py",
    ]
    for path in targets:
        res = site.a.result(site.a.post("write", json={"path": str(path)}), "write")
        assert res["ok"] is False and res["errno"] in DENIED + (errno.EROFS, errno.ENOENT), (path, res)
        assert not path.exists(), path
    # Its own /tmp is writable.
    res = site.a.result(site.a.post("write", json={"path": "/tmp/mine"}), "write")
    assert res["ok"] is True, res
    site.others_still_served()


def test_3_scratch_is_capped(site):
    worker = site.admin_pid()
    res = site.a.result(site.a.get("fill"), "fill")
    assert res["errno"] in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT), res
    assert res["written"] <= SCRATCH_CAP, res
    # The tenant's process is still the one serving it, and usable.
    assert site.a.info()["pid"] == 1
    site.others_still_served(worker)


def test_3_one_file_past_the_cap_is_an_error_not_a_death(site):
    """One file written past the scratch cap fails with an OSError the tenant's code can
    handle, as on any full disk; it does not kill the process (and its other calls)."""
    worker = site.admin_pid()
    old = site.a.pid()
    r = site.a.get("fill-one")
    res = site.a.result(r, "fill_one")
    assert res["errno"] in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT), res
    assert res["written"] <= SCRATCH_CAP, res
    assert site.a.pid() == old
    site.others_still_served(worker)


# --------------------------------------------------------------------------------------------
# 4. Network


@pytest.fixture
def listeners(outside_root):
    """A TCP and a UDP socket on 127.0.0.1 and a 0777 pathname unix socket outside /tmp;
    each must receive nothing from the tenant."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    path = outside_root / f"sock-{uuid.uuid4().hex[:8]}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    os.chmod(path, 0o777)
    unix.listen(8)
    unix.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0dpms-stest-abstract")
    abstract.listen(8)
    abstract.setblocking(False)
    try:
        yield {"tcp": tcp, "udp": udp, "unix": unix, "unix_path": str(path), "abstract": abstract}
    finally:
        for s in (tcp, udp, unix, abstract):
            s.close()
        path.unlink(missing_ok=True)


def nothing_arrived(listeners):
    for name in ("tcp", "unix", "abstract"):
        with pytest.raises(BlockingIOError):
            listeners[name].accept()
    with pytest.raises(BlockingIOError):
        listeners["udp"].recv(16)


def test_4_no_network(site, listeners):
    for port in (site.server.port, listeners["tcp"].getsockname()[1]):
        res = site.a.result(site.a.post("tcp", json={"port": port}), "tcp")
        assert res["ok"] is False and res["errno"] in DENIED, (port, res)
    res = site.a.result(site.a.post("udp", json={"port": listeners["udp"].getsockname()[1]}), "udp")
    assert res["ok"] is False and res["errno"] in DENIED, res
    res = site.a.result(site.a.get("dns"), "dns")
    for name, r in res.items():
        assert r["ok"] is False, (name, res)
    res = site.a.result(site.a.post("unix", json={"path": listeners["unix_path"]}), "unix")
    assert res["pathname"]["ok"] is False and res["pathname"]["errno"] in DENIED, res
    assert res["abstract"]["ok"] is False and res["abstract"]["errno"] in DENIED, res
    assert res["socketpair"] == {"ok": True, "value": "x"}, res
    nothing_arrived(listeners)
    site.others_still_served()


# --------------------------------------------------------------------------------------------
# 5. Signals and processes


def test_5_cannot_signal_or_see_the_host(site):
    worker = site.admin_pid()
    b_pid = site.b.pid()
    targets = [worker, site.supervisor, b_pid, os.getpid()]
    res = site.a.result(site.a.post("signal", json={"pids": targets}), "signal_host")
    for pid in targets:
        r = res[str(pid)]
        assert r["ok"] is False and r["errno"] in (errno.ESRCH, errno.EPERM), (pid, r)
        assert res["ptrace"][str(pid)]["rc"] == -1, (pid, res["ptrace"])
    # It sees no host process: /proc is refused, or lists only its own namespace's pids.
    listed = res["proc"]
    if listed["ok"]:
        assert 1 in listed["value"] and not set(listed["value"]) & set(targets), listed
    else:
        assert listed["errno"] in DENIED, listed
    for pid in targets:
        assert alive(pid), pid
    assert site.b.pid() == b_pid
    site.others_still_served(worker)


def test_5_fork_bomb_stops_at_its_limit(site):
    worker = site.admin_pid()
    res = site.a.result(site.a.get("forkbomb", timeout=60), "forkbomb")
    assert res["errno"] == errno.EAGAIN, res
    assert res["forked"] < 200, res
    site.others_still_served(worker)
    assert site.a.info()["pid"] == 1


def test_5_thread_bomb_stops_at_its_limit(site):
    worker = site.admin_pid()
    res = site.a.result(site.a.get("threadbomb", timeout=60), "threadbomb")
    assert res["error"] is not None, res
    assert res["started"] < 1000, res
    site.others_still_served(worker)
    assert site.a.info()["pid"] == 1


# --------------------------------------------------------------------------------------------
# 6. Time


def call_in_background(fn):
    box = {}
    done = threading.Event()

    def run():
        started = time.monotonic()
        try:
            box["r"] = fn()
        except Exception as e:  # reported by the test
            box["exc"] = e
        box["secs"] = time.monotonic() - started
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return box, done


@pytest.mark.parametrize("api", ["python-loop", "regex", "sum", "sigxcpu", "sleep"])
def test_6_deadline_holds_whatever_the_code_does(site, api):
    worker = site.admin_pid()
    old = site.a.pid()
    marker = f"stest-{api}-{uuid.uuid4().hex}"
    box, done = call_in_background(lambda: site.a.post(api, json={"marker": marker}))
    wait_for(lambda: marker in site.server.full_log(), timeout=20, what="the runaway call to start")
    # A does not hold up B: B answers while A's call is still running.
    site.others_still_served(worker)
    assert not done.is_set(), "the runaway call ended before the bystander was answered"
    assert done.wait(MAX_SECS + 10), "no answer at all"
    assert "exc" not in box, box
    r = box["r"]
    assert r.status_code == 504 and err_code(r) == "timeout", describe(r)
    assert box["secs"] <= MAX_SECS + 1, f"504 after {box['secs']:.2f} s"
    # The process is gone with its namespace; the next call runs in a new one.
    wait_for(lambda: not alive(old), timeout=10, what=f"process {old} to die")
    assert site.a.info()["pid"] == 1
    new = site.a.pid()
    assert new != old
    site.others_still_served(worker)


def uid_pids(uid: str) -> list[int]:
    """Live host processes whose real uid is ``uid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = status_fields(f"/proc/{entry}/status")
            if st.get("Uid", "").split()[:1] == [uid] and alive(int(entry)):
                out.append(int(entry))
    return out


@pytest.mark.parametrize("then,status,code", [("sleep", 504, "timeout"), ("exit", 502, "worker_lost")])
def test_6_7_the_whole_pid_namespace_goes(site, then, status, code):
    """Past the deadline, or at its death, the tenant's process goes with every process it
    forked: nothing of the tenant's host uid is left running."""
    worker = site.admin_pid()
    old = site.a.pid()
    uid = status_fields(f"/proc/{old}/status")["Uid"].split()[0]
    marker = f"stest-orphan-{uuid.uuid4().hex}"
    box, done = call_in_background(lambda: site.a.post("orphan", json={"marker": marker, "then": then}))
    if then == "sleep":
        # (An exiting process may lose its last output: there it is the answer that counts.)
        wait_for(lambda: marker in site.server.full_log(), timeout=20, what="the call to fork")
    assert done.wait(MAX_SECS + 10), "no answer at all"
    r = box["r"]
    assert r.status_code == status and err_code(r) == code, describe(r)
    wait_for(lambda: not uid_pids(uid), timeout=10, what=f"every process of uid {uid} to go")
    assert site.a.info()["pid"] == 1
    site.others_still_served(worker)


# --------------------------------------------------------------------------------------------
# 7. Death


@pytest.mark.parametrize("api", ["exit", "segv"])
def test_7_death_costs_only_its_own_call(site, api):
    worker = site.admin_pid()
    old = site.a.pid()
    r = site.a.get(api)
    assert r.status_code == 502 and err_code(r) == "worker_lost", describe(r)
    wait_for(lambda: not alive(old), timeout=10, what=f"process {old} to die")
    assert site.a.info()["pid"] == 1
    assert site.a.pid() != old
    site.others_still_served(worker)


def test_7_killed_process_answers_its_in_flight_call(site):
    """Killed from outside mid-call: that call gets 502 `worker_lost` at once (not the 504 of
    its deadline), and the next call gets a new process."""
    worker = site.admin_pid()
    old = site.a.pid()
    marker = f"stest-killed-{uuid.uuid4().hex}"
    box, done = call_in_background(lambda: site.a.post("sleep", json={"marker": marker}))
    wait_for(lambda: marker in site.server.full_log(), timeout=20, what="the call to start")
    assert not done.is_set()
    os.kill(old, 9)
    assert done.wait(MAX_SECS + 10), "no answer at all"
    r = box["r"]
    assert r.status_code == 502 and err_code(r) == "worker_lost", describe(r)
    assert box["secs"] < MAX_SECS, f"answered only at the deadline ({box['secs']:.2f} s)"
    assert site.a.info()["pid"] == 1
    assert site.a.pid() != old
    site.others_still_served(worker)


def killed_between_calls(site, wait_for_middle):
    """Kills A's idle process ROUNDS times; returns the status of the call sent after each."""
    answers = []
    for _ in range(ROUNDS):
        old = site.a.pid()
        middle = int(status_fields(f"/proc/{old}/status")["PPid"])
        os.kill(old, 9)
        wait_for(
            lambda: not alive(old) and not (wait_for_middle and alive(middle)),
            timeout=10,
            what=f"process {old} to die",
        )
        r = site.a.get("info")
        answers.append(r.status_code)
        if r.status_code != 200:
            assert r.status_code == 502 and err_code(r) == "worker_lost", describe(r)
    return answers


def test_7_killed_between_calls_next_call_gets_a_new_process(site):
    """Killed while idle: no call was in flight, so none is lost; the next call, sent once the
    host's own child (the sandbox's middle process) has exited, runs in a new process."""
    worker = site.admin_pid()
    assert killed_between_calls(site, wait_for_middle=True) == [200] * ROUNDS
    site.others_still_served(worker)


@pytest.mark.xfail(
    strict=False,
    reason="known gap: a call sent while the killed process's threads are still exiting (its "
    "leader already a zombie, its channel not yet closed) reaches the dying process and is "
    "answered 502 worker_lost as an in-flight call; telling such a call apart needs the exit "
    "of the whole thread group (a pidfd of pid 1), not done yet",
)
def test_7_killed_between_calls_the_race_right_after_death(site):
    """The same, with the call sent as soon as the tenant's process is dead but before the
    middle process has noticed and exited. It must hold every time, so it is tried ROUNDS
    times (a real, narrow bug today: a few rounds in each run answer 502; see the report)."""
    worker = site.admin_pid()
    assert killed_between_calls(site, wait_for_middle=False) == [200] * ROUNDS
    site.others_still_served(worker)


KILLER_IMPORT = '''
__ID__ = "$uuid"
import os
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="$p-never")
def never():
    return "never"


os._exit(7)
'''

GOOD_MODULE = '''
__ID__ = "$uuid"
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="$p-good")
def good():
    return "good"
'''


def test_7_an_import_that_kills_its_process_is_quarantined(site):
    """A third tenant whose one module exits at import: after two deaths that module is
    quarantined (SPEC §9, §11.7) and shown so in the tenant's `__dir__`, and the tenant's other
    module answers, instead of every call of the tenant answering 502 with a new process
    each (a real bug today, see the report)."""
    c_id, hex_ = str(uuid.uuid4()), uuid.uuid4().hex[:8]
    cli(site.server.workdir, "add", f"c-{hex_}", "--uuid", c_id)
    killer, good = site.folder / f"tk_{hex_}.py", site.folder / f"tg_{hex_}.py"
    killer.write_text(source(KILLER_IMPORT, uuid=c_id, p=f"c{hex_}"))
    good.write_text(source(GOOD_MODULE, uuid=c_id, p=f"c{hex_}"))
    try:
        answers = []
        for _ in range(6):  # two deaths, then the quarantine holds
            r = site.server.get(f"{c_id}/c{hex_}-good/")
            answers.append(r.status_code)
            site.others_still_served()
        assert answers[-1] == 200, answers
        assert ok(r, f"tg_{hex_}.good") == "good"
        listing = site.server.get(f"{c_id}/__dir__/")
        assert listing.status_code == 200 and "quarantined" in listing.text, describe(listing)
    finally:
        killer.unlink(missing_ok=True)
        good.unlink(missing_ok=True)


def test_7_memory_limit(site):
    worker = site.admin_pid()
    # One allocation past the limit fails inside the process, which lives on.
    assert site.a.result(site.a.get("mem-one"), "mem_one") == "MemoryError"
    old = site.a.pid()
    # Growing past it: a MemoryError in the plugin (500) or the process's death (502).
    r = site.a.get("mem-grow", timeout=60)
    code = err_code(r)
    assert (r.status_code, code) in ((502, "worker_lost"), (500, "plugin_error")), describe(r)
    if code == "plugin_error":
        assert "MemoryError" in r.text, describe(r)
    else:
        wait_for(lambda: not alive(old), timeout=10, what=f"process {old} to die")
    assert site.a.info()["pid"] == 1
    site.others_still_served(worker)


# --------------------------------------------------------------------------------------------
# 8. Hostile channel


@pytest.mark.parametrize("kind", ["oversized", "garbage", "unexpected", "unknown_id"])
def test_8_hostile_channel_kills_only_that_process(site, kind):
    worker = site.admin_pid()
    old = site.a.pid()
    started = time.monotonic()
    r = site.a.post("channel", json={"kind": kind})
    assert r.status_code == 502 and err_code(r) == "worker_lost", describe(r)
    assert time.monotonic() - started < 5, "answered only when the call ended by itself"
    wait_for(lambda: not alive(old), timeout=10, what=f"process {old} to die")
    assert site.a.info()["pid"] == 1
    assert site.a.pid() != old
    site.others_still_served(worker)


def forge(site, id_, status, headers=(), body="forged"):
    """On a fresh process of A (its first call after a start), A answers call ``id_`` with a
    forged frame of its own making."""
    # An in-flight death: the host has marked the process lost when the 502 arrives.
    r = site.a.get("exit")
    assert r.status_code == 502, describe(r)
    payload = {"id": id_, "status": status, "headers": [list(h) for h in headers], "body": body}
    return site.a.post("forge", json=payload)


@pytest.fixture(scope="module")
def forged_id(site):
    """The id the host gives the first call of a fresh process, found with a well-formed
    forged answer (a wrong guess is an unknown id: the process is killed, 502)."""
    for guess in range(1, 9):
        r = forge(site, guess, 200)
        if r.status_code == 200 and r.text == "forged":
            return guess
        assert r.status_code == 502, describe(r)
    pytest.fail("no id in 1..8 is the first call's")


def test_8_forged_headers_are_checked_by_the_host(site, forged_id):
    headers = [("X-Forged", "1"), ("Content-Length", "0"), ("X-Split", "a\r\nInjected: yes")]
    r = forge(site, forged_id, 200, headers, body="forged")
    assert r.status_code == 200 and r.text == "forged", describe(r)
    assert r.headers.get("X-Forged") == "1"
    assert "Injected" not in r.headers and "X-Split" not in r.headers, describe(r)
    site.others_still_served()


@pytest.mark.parametrize("status", [999, 101, 100])
def test_8_forged_status_outside_200_599_is_refused(site, forged_id, status):
    """In the server's own interpreter a status outside 200-599 is the plugin's error
    (src/pyhost/worker.rs); from a tenant's process it is a message the host must not
    trust: the process is killed and the call answers 502 `worker_lost`."""
    r = forge(site, forged_id, status)
    assert r.status_code == 502 and err_code(r) == "worker_lost", describe(r)
    assert site.a.info()["pid"] == 1
    site.others_still_served()


# --------------------------------------------------------------------------------------------
# §11's closing paragraph: output of tenant code


@pytest.mark.parametrize("raw", [False, True], ids=["print", "os.write"])
def test_output_is_tagged_and_cannot_forge_log_lines(site, raw):
    """Tenant output reaches the server log tagged with the tenant and the module, one record
    per write: a newline in it cannot start a line that looks like the server's own, whether
    it is printed or written to the descriptors 1 and 2 directly."""
    tag = uuid.uuid4().hex
    fake = f"2026-01-01T00:00:00.000000Z  INFO dpms::access: forged={tag}"
    text = f"hello-{tag}" + chr(10) + fake
    assert site.a.result(site.a.post("say", json={"text": text, "raw": raw}), "say") == "said"
    wait_for(lambda: site.server.full_log().count(f"hello-{tag}") >= 2, timeout=10, what="the output")
    lines = site.server.full_log().splitlines()
    assert not [line for line in lines if line.startswith(fake)], "a tenant wrote a log line of its own"
    for line in (line for line in lines if f"hello-{tag}" in line):
        assert site.a.module in line and site.a.uuid in line, line
    site.others_still_served()


# --------------------------------------------------------------------------------------------
# 10. Idle reaping


@pytest.fixture(scope="module")
def idle_site(outside_root):
    launcher, site = make_site(outside_root, {"DPMS_TENANT_IDLE_SECS": "1"}, "idle")
    try:
        yield site
    finally:
        launcher.close()


def test_10_idle_tenant_costs_no_process(idle_site):
    site = idle_site
    old = site.a.pid()
    # Bounded: idle 1 s plus the reaper's period (idle / 4) plus slack.
    wait_for(lambda: not site.a.current_pids(), timeout=10, what="the idle tenant process to be reaped")
    assert not alive(old)
    assert site.a.info()["pid"] == 1
    assert site.a.pid() != old
    site.others_still_served()


def test_10_a_busy_tenant_is_not_idle(idle_site):
    """A call running longer than DPMS_TENANT_IDLE_SECS keeps its process: idle means no
    call, not no new call (a real bug today, see the report)."""
    site = idle_site
    old = site.a.pid()
    r = site.a.post("nap", json={"secs": 3})
    assert r.status_code == 200, describe(r)
    assert site.a.result(r, "nap") == "rested"
    assert old in site.a.current_pids(), "the process was replaced under the call"
    site.others_still_served()

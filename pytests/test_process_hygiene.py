"""Issue 10, "faults stay where they belong" (SPEC §9): what plugin code can reach of the server
process, and what a killed server leaves behind.

Each test starts its own server (dedicated folders, its own port) and cleans up every process
it made.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import stat

import requests

from dpms_helpers import STOP_TIMEOUT, TIMEOUT, ok, source, wait_for, write_atomic

CONTROL_VARIABLES = (
    "DPMS_HANDOFF_FD",
    "DPMS_LISTEN_FD",
    "DPMS_READY_FD",
    "DPMS_WORKER_INDEX",
    "DPMS_STATE_DIR",
)


def children_of(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is ``pid``."""
    found = []
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
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port_socket_inodes(port: int) -> set[str]:
    """Inodes of every TCP socket (listening or connected) whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def fd_links(pid: int) -> dict[str, str]:
    out = {}
    folder = pathlib.Path(f"/proc/{pid}/fd")
    for entry in folder.iterdir():
        try:
            out[entry.name] = os.readlink(entry)
        except OSError:
            continue
    return out


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def terminate(server) -> None:
    """SIGTERM to the supervisor; waits (bounded) for it to exit."""
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(STOP_TIMEOUT + 10)


# --- Forked children keep nothing of the server ----------------------------------------------

FORKER = """
import multiprocessing
import os
import subprocess
import time

from vyperlogix.decorators import expose


def hold(mark):
    # Past fork() in the child (its fork handlers have run): tell the parent, then linger.
    open(mark, "w").close()
    time.sleep(60)


def wait_for(mark):
    for _ in range(3000):
        if os.path.exists(mark):
            return
        time.sleep(0.01)
    raise TimeoutError(f"the child never wrote {mark}")


@expose.endpoint(method="GET", API="fork-bare")
def fork_bare(marks, **kwargs):
    mark = os.path.join(marks, "bare")
    pid = os.fork()
    if pid == 0:
        try:
            hold(mark)
        finally:
            os._exit(0)
    wait_for(mark)
    return pid


@expose.endpoint(method="GET", API="fork-mp")
def fork_mp(marks, **kwargs):
    mark = os.path.join(marks, "mp")
    child = multiprocessing.get_context("fork").Process(target=hold, args=(mark,))
    child.start()
    wait_for(mark)
    return child.pid


@expose.endpoint(method="GET", API="fork-exec")
def fork_exec(marks, **kwargs):
    return subprocess.Popen(["sleep", "60"], close_fds=False).pid
"""


def test_forked_children_do_not_keep_the_port(start_server, plugin_folder, tmp_path):
    (plugin_folder / "forker.py").write_text(FORKER)
    server = start_server(env={"DPMS_WORKERS": "1"}, plugin_dirs=[plugin_folder])
    forked = []
    try:
        for api in ("fork-bare", "fork-mp", "fork-exec"):
            # Each answers once its child runs (past fork, or exec'd).
            forked.append(ok(server.get(f"{api}/", params={"marks": str(tmp_path)})))
        server_sockets = port_socket_inodes(server.port)
        assert server_sockets, "the listener is not in /proc/net/tcp"
        for pid in forked:
            assert alive(pid), f"child {pid} is gone"
            held = {link for link in fd_links(pid).values() if link.startswith("socket:[")}
            leaked = {link for link in held if link[len("socket:[") : -1] in server_sockets}
            assert not leaked, f"child {pid} holds the server's sockets {leaked}: {fd_links(pid)}"

        # A signal to a child is the child's: tokio's handlers, inherited, made SIGTERM to it
        # shut down its parent worker instead.
        bare = forked[0]
        os.kill(bare, signal.SIGTERM)
        wait_for(lambda: not alive(bare), timeout=STOP_TIMEOUT, what="SIGTERM to end the child")
        assert server.get("__dir__/").status_code == 200
        assert "signal received" not in server.log(), server.log()[-2000:]

        terminate(server)
        assert all(alive(pid) for pid in forked[1:]), "the children must outlive the server here"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(("127.0.0.1", server.port))
            except ConnectionRefusedError:
                pass
            else:
                raise AssertionError(f"port {server.port} still accepts connections after SIGTERM")
        # What a restarting server does (dpms binds with SO_REUSEADDR).
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", server.port))
            again.listen(1)
    finally:
        kill_all(forked)


# --- The state folder (SPEC §9) --------------------------------------------------------------


def test_state_folder_of_a_killed_server_is_removed_at_next_start(start_server, plugin_folder, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"DPMS_WORKERS": "1", "TMPDIR": str(temp)}

    def state_folders():
        return sorted(p for p in temp.iterdir() if p.name.startswith("dpms-") and p.is_dir())

    first = start_server(env=env, plugin_dirs=[plugin_folder])
    (old,) = state_folders()
    assert old.name.startswith(f"dpms-{first.proc.pid}-"), old
    workers = children_of(first.proc.pid)
    assert len(workers) == 1, workers
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(STOP_TIMEOUT)
    # The workers die with their supervisor (PR_SET_PDEATHSIG).
    wait_for(lambda: not any(alive(w) for w in workers), timeout=STOP_TIMEOUT, what="workers to die")
    assert old.exists(), "SIGKILL leaves the folder behind: the next start removes it"

    second = start_server(env=env, plugin_dirs=[plugin_folder])
    assert not old.exists(), "the stale state folder was not removed"
    (new,) = state_folders()
    assert new.name != old.name
    assert new.name.startswith(f"dpms-{second.proc.pid}-"), new
    assert stat.S_IMODE(new.stat().st_mode) == 0o700, oct(new.stat().st_mode)
    assert new.stat().st_uid == os.geteuid()


# --- Control descriptors and variables stay out of reach (SPEC §9) ---------------------------

PROBER = """
import os
import stat

from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="control-vars")
def control_vars(**kwargs):
    return sorted(k for k in os.environ if k.startswith("DPMS_"))


@expose.endpoint(method="GET", API="whoami")
def whoami(**kwargs):
    return os.getpid()


@expose.endpoint(method="GET", API="write-junk")
def write_junk(own, workers, **kwargs):
    own, workers = int(own), int(workers)
    # Lines that look like another worker's notices first, then garbage.
    junk = [f"retire {i}\\n".encode() for i in range(-1, workers + 20) if i != own]
    junk += [f"ready {i}\\n".encode() for i in range(workers + 2)]
    junk += [b"retire 1 2\\n", b"retire\\n", b"ready\\n", b"x" * 5000 + f" retire {own}\\n".encode()]
    junk += [b"\\x00\\xffgarbage\\n", b"unterminated retire 0"]
    written = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            for chunk in junk:
                os.write(fd, chunk)
        except OSError:
            continue
        written.append(fd)
    return written
"""


def test_plugins_cannot_reach_the_control_channel(start_server, plugin_folder):
    workers = 2
    (plugin_folder / "prober.py").write_text(PROBER)
    server = start_server(env={"DPMS_WORKERS": str(workers)}, plugin_dirs=[plugin_folder])
    supervisor = server.proc.pid
    started = children_of(supervisor)
    assert len(started) == workers, started

    for _ in range(2 * workers):
        got = ok(server.get("control-vars/"))
        assert not set(got) & set(CONTROL_VARIABLES), got

    with requests.Session() as session:
        # One kept-alive connection: both calls reach the same worker.
        r = session.get(server.abs("whoami/"), timeout=TIMEOUT)
        own = r.headers["X-Dpms-Worker"]
        pid = ok(r)
        r = session.get(server.abs(f"write-junk/?own={own}&workers={workers}"), timeout=TIMEOUT)
        written = ok(r)
        assert r.headers["X-Dpms-Worker"] == own and ok(session.get(server.abs("whoami/"))) == pid
    assert written, "the worker's channel is a pipe the plugin can find"

    wait_for(
        lambda: "unexpected data on the worker's channel" in server.log(),
        timeout=10,
        what="the supervisor to notice the junk",
    )
    log = server.log()
    assert "retiring" not in log, log
    assert log.count("worker started") == workers, log
    assert sorted(children_of(supervisor)) == sorted(started)
    for _ in range(2 * workers):
        assert isinstance(ok(server.get("whoami/")), int)


# --- A plugin that patches what the host uses does not stop reloading (SPEC §9) --------------

SABOTEUR = """
import builtins
import inspect
import json
import os
import traceback

from vyperlogix.decorators import expose


def boom(*args, **kwargs):
    raise ZeroDivisionError("patched by a plugin")


@expose.endpoint(method="GET", API="sabotage")
def sabotage(**kwargs):
    json.dumps = boom
    json.JSONEncoder = boom
    builtins.compile = boom
    builtins.exec = boom
    builtins.open = boom
    os.stat = boom
    inspect.signature = boom
    inspect.getdoc = boom
    traceback.format_exception = boom
    try:
        import dpms._host as host
    except ImportError:
        pass
    else:
        host.load_batch = host._describe = host.exception_text = boom
    return "patched"


@expose.endpoint(method="GET", API="sabotaged-raises")
def raises(**kwargs):
    raise ValueError("still reported")
"""

VERSIONED = """
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="$api")
def version(**kwargs):
    return "$ver"
"""


def test_patching_what_the_host_uses_does_not_stop_reloads(start_server, plugin_folder):
    (plugin_folder / "saboteur.py").write_text(SABOTEUR)
    (plugin_folder / "edited.py").write_text(source(VERSIONED, api="edited", ver="v1"))
    server = start_server(env={"DPMS_WORKERS": "1"}, plugin_dirs=[plugin_folder])
    assert ok(server.get("edited/")) == "v1"
    assert ok(server.get("sabotage/")) == "patched"

    write_atomic(plugin_folder / "edited.py", source(VERSIONED, api="edited", ver="v2"))
    r = server.get("edited/")
    assert r.status_code == 200 and ok(r) == "v2", server.log()[-3000:]
    write_atomic(plugin_folder / "added.py", source(VERSIONED, api="added", ver="new"))
    assert ok(server.get("added/")) == "new"

    # An import error and a plugin's exception are still reported (tracebacks need os.stat).
    broken = source(VERSIONED, api="edited", ver="v3") + "\nraise RuntimeError('half-saved')\n"
    write_atomic(plugin_folder / "edited.py", broken)
    r = server.get("edited/")
    assert r.status_code == 500 and "RuntimeError: half-saved" in r.json()["exception"], server.log()[-3000:]
    write_atomic(plugin_folder / "edited.py", source(VERSIONED, api="edited", ver="v4"))
    assert ok(server.get("edited/")) == "v4"
    r = server.get("sabotaged-raises/")
    assert r.status_code == 500 and r.json()["exception"] == "ValueError: still reported", r.text
    assert "Traceback" in server.log()

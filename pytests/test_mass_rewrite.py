"""Many plugin files rewritten at once (`git checkout`, rsync, `cp -r`) — SPEC §2.

A request for an unchanged module is served from the current table while the mass change is
still being reloaded, even when the inotify queue overflowed (then nothing is known from the
queue and the disk decides); a request for a rewritten module always runs the new code; a file
rewritten with the same bytes is not re-imported (its module globals live on).
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
import uuid

from dpms_helpers import GATED_IMPORT, api_name, ok, source, wait_for, write_atomic

ENDPOINT = """
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def version():
    return "$version"
"""


COUNTER = """
from vyperlogix.decorators import expose
CALLS = [0]

@expose.endpoint(method="GET", API="$api")
def count():
    CALLS[0] += 1
    return {"calls": CALLS[0], "version": "$version"}
"""

FILES = 200


def max_queued_events() -> int:
    try:
        return int(pathlib.Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        return 16384


def rename_over(path: pathlib.Path, text: str) -> None:
    """What `git checkout` and rsync do: a temporary file (not `*.py`) renamed over the plugin."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["r"] = fn()
        except Exception as e:  # reported by the assertions below
            out["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_unrelated_request_served_while_a_mass_rewrite_reloads(start_server, tmp_path):
    """A slow module among the rewritten ones holds the reload (it waits for a file the test
    creates); the files are then touched so often that the inotify queue overflows. A request
    for the unrelated `ping` must be answered while the reload is provably still under way; a
    request for a rewritten module must wait and then run the new code."""
    tag = uuid.uuid4().hex[:8]
    mass, other = tmp_path / "mass", tmp_path / "other"
    mass.mkdir()
    other.mkdir()
    ping_api, slow_api = api_name("ping"), api_name("slow")
    apis = [f"{tag}-m{i}" for i in range(FILES)]
    (other / "ping.py").write_text(source(ENDPOINT, api=ping_api, version="pong"))
    opened = tmp_path / "gate-open"
    opened.write_text("open")
    (mass / "slowmass.py").write_text(source(GATED_IMPORT, tries=2400, gate=opened, api=slow_api, version="v1"))
    for i, api in enumerate(apis):
        (mass / f"m{i:04d}.py").write_text(source(ENDPOINT, api=api, version="v1"))
    server = start_server(
        env={"DPMS_WORKERS": "1", "DPMS_LOAD_SECS": "60"}, plugin_dirs=[other, mass]
    )
    assert ok(server.get(f"{ping_api}/")) == "pong"
    assert ok(server.get(f"{apis[5]}/")) == "v1"

    gate = tmp_path / "gate"
    write_atomic(mass / "slowmass.py", source(GATED_IMPORT, tries=2400, gate=gate, api=slow_api, version="v2"))
    wait_for(lambda: pathlib.Path(f"{gate}.waiting").exists(), what="the slow import to start")

    # The mass change, then more events than the queue holds (each file touched again and
    # again): nothing drains the queue while the reload is held, so it overflows.
    for i, api in enumerate(apis):
        rename_over(mass / f"m{i:04d}.py", source(ENDPOINT, api=api, version="v2"))
    for _ in range(math.ceil(1.5 * max_queued_events() / FILES)):
        for i in range(FILES):
            os.utime(mass / f"m{i:04d}.py")

    rewritten, rewritten_out = in_thread(lambda: server.get(f"{apis[5]}/"))
    pinged, ping_out = in_thread(lambda: [server.get(f"{ping_api}/") for _ in range(3)])
    pinged.join(15)
    assert "r" in ping_out, f"ping not answered while the slow import waits: {ping_out}"
    for r in ping_out["r"]:
        assert ok(r) == "pong"
    # The reload of the mass change was still under way while ping was answered.
    assert not pathlib.Path(f"{gate}.done").exists()
    assert not rewritten_out, "a rewritten module was served before its reload"

    gate.write_text("open")
    rewritten.join(60)
    assert "r" in rewritten_out, rewritten_out
    assert ok(rewritten_out["r"]) == "v2"
    assert ok(server.get(f"{slow_api}/")) == "v2"
    for api in (apis[0], apis[-1]):
        assert ok(server.get(f"{api}/")) == "v2"
    assert ok(server.get(f"{ping_api}/")) == "pong"


def test_same_bytes_rewritten_or_touched_is_not_reimported(start_server, tmp_path):
    """SPEC §2: a module is re-imported only when its file changed. Rewriting every file by
    rename with the same bytes (what `git checkout`, rsync and `cp` do) or touching it keeps
    the module and its globals; a real edit is served on the next request."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    apis = [api_name("count") for _ in range(20)]
    texts = [source(COUNTER, api=api, version="v1") for api in apis]
    for i, text in enumerate(texts):
        (folder / f"c{i:02d}.py").write_text(text)
    server = start_server(env={"DPMS_WORKERS": "1"}, plugin_dirs=[folder])
    assert ok(server.get(f"{apis[3]}/")) == {"calls": 1, "version": "v1"}

    for i, text in enumerate(texts):
        rename_over(folder / f"c{i:02d}.py", text)
    assert ok(server.get(f"{apis[3]}/")) == {"calls": 2, "version": "v1"}

    for i in range(len(texts)):
        os.utime(folder / f"c{i:02d}.py")
    assert ok(server.get(f"{apis[3]}/")) == {"calls": 3, "version": "v1"}

    write_atomic(folder / "c03.py", source(COUNTER, api=apis[3], version="v2"))
    assert ok(server.get(f"{apis[3]}/")) == {"calls": 1, "version": "v2"}

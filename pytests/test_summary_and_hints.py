"""Issue 10: one worker's news is logged once (SPEC §9), and an unknown API says why when a
plugin that mentions it does not import (SPEC §8)."""

import uuid

from dpms_helpers import api_name, error, ok, source, wait_for, write_atomic

BROKEN = """
from vyperlogix.decorators import expose
import no_such_module_$tag

@expose.endpoint(method="GET", API="$api")
def f():
    return 1
"""


def test_summary_and_import_errors_logged_once_not_per_worker(start_server, tmp_path):
    tag = uuid.uuid4().hex[:8]
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    good, bad = api_name("good"), api_name("bad")
    (plugins / "goodmod.py").write_text(
        source('from vyperlogix.decorators import expose\n\n@expose.endpoint(method="GET", API="$api")\ndef g():\n    return 1\n', api=good)
    )
    (plugins / "badmod.py").write_text(source(BROKEN, tag=tag, api=bad))
    server = start_server(env={"DPMS_WORKERS": "3"}, plugin_dirs=[plugins])
    # Every worker has loaded (each answers), then the log is read.
    seen = set()

    def all_workers():
        r = server.get(f"{good}/")
        assert r.status_code == 200, r.text
        seen.add(r.headers["X-Dpms-Worker"])
        return len(seen) == 3

    wait_for(all_workers, what="all three workers to answer")
    log = server.full_log()
    assert log.count("plugins ready") == 1, log[-4000:]
    assert log.count(f"no_such_module_{tag}") >= 1
    assert log.count("plugin does not import") == 1, log[-4000:]

    # A new error (new content) is logged again, once.
    write_atomic(plugins / "badmod.py", source(BROKEN, tag=tag + "x", api=bad))
    for _ in range(6):
        error(server.get(f"{bad}/"), 404, "api_undefined", extra=("hint",))
    wait_for(lambda: f"no_such_module_{tag}x" in server.full_log(), what="the new error in the log")
    assert server.full_log().count("plugin does not import") == 2


def test_unknown_api_hints_at_the_plugin_that_does_not_import(server, write_plugin):
    tag = uuid.uuid4().hex[:8]
    api = api_name("hinted")
    mod = f"hinted_{tag}"
    write_plugin(mod, source(BROKEN, tag=tag, api=api))
    body = error(server.get(f"{api}/"), 404, "api_undefined", extra=("hint",))
    assert body["status"] == f"{api} is undefined."  # compat text unchanged
    assert f"`{mod}.py`" in body["hint"] and f"no_such_module_{tag}" in body["hint"], body
    assert "/" not in body["hint"].split("`")[1]  # the file's name, never its path
    # An API no broken file mentions: no hint.
    error(server.get(f"{api}-other/"), 404, "api_undefined")
    # Fixed: served.
    write_plugin(mod, source(BROKEN, tag=tag, api=api).replace(f"import no_such_module_{tag}\n", ""))
    assert ok(server.get(f"{api}/")) == 1

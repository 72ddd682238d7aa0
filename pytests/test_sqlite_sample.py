"""The SQLite CRUD sample (plugins/notes.py) through real servers on a real database file.

Also records what happens to the pattern most authors try first, a module-level
``sqlite3.connect()`` (SPEC §10 "Thread states"): dpms imports a module on one Python thread
and calls it on others, so that connection refuses every call made on another thread. The
README's plugin guide shows the patterns that work; the sample uses one connection per call.
"""

import concurrent.futures
import json
import sqlite3
import textwrap

import pytest

from dpms_helpers import SAMPLE_PLUGINS, describe, error, ok

KEY = "notes.read_notes"


def created(r):
    assert r.status_code == 201, describe(r)
    note = r.json()
    assert r.headers["Location"] == f"/rest/services/notes/{note['id']}/"
    return note


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "notes.sqlite3"


@pytest.fixture
def notes_server(start_server, db_path):
    return start_server(env={"NOTES_DB": str(db_path)}, plugin_dirs=[SAMPLE_PLUGINS])


def test_crud(notes_server, db_path):
    s = notes_server
    assert ok(s.get("notes/"), KEY) == []
    a = created(s.post("notes/", json={"title": "Buy milk", "body": "2 l"}))
    b = created(s.post("notes/", json={"title": "Call Bob"}))
    assert a["title"] == "Buy milk" and a["body"] == "2 l" and b["body"] == ""
    assert b["id"] > a["id"]
    assert a["created"] == a["updated"] and a["created"].endswith("+00:00")

    assert [n["id"] for n in ok(s.get("notes/"))] == [b["id"], a["id"]]
    assert ok(s.get(f"notes/{a['id']}/")) == a
    assert ok(s.get(f"notes/?id={a['id']}")) == a
    assert [n["title"] for n in ok(s.get("notes/?q=milk"))] == ["Buy milk"]
    assert len(ok(s.get("notes/?limit=1"))) == 1

    u = ok(s.put(f"notes/{a['id']}/", json={"body": "3 l"}), "notes.update_note")
    assert u["title"] == "Buy milk" and u["body"] == "3 l"
    u = ok(s.patch(f"notes/{a['id']}/", json={"title": "Buy oat milk"}))
    assert u["title"] == "Buy oat milk" and u["body"] == "3 l"

    d = ok(s.delete(f"notes/{b['id']}/"), "notes.delete_note")
    assert d["id"] == b["id"]
    assert error(s.get(f"notes/{b['id']}/"), 404, "note_not_found")
    assert error(s.delete(f"notes/{b['id']}/"), 404, "note_not_found")
    assert error(s.put(f"notes/{b['id']}/", json={"body": "x"}), 404, "note_not_found")

    # The data is in the file the setting names, as SQLite sees it.
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id, title, body FROM notes ORDER BY id").fetchall()
    assert rows == [(a["id"], "Buy oat milk", "3 l")]


def test_bad_requests(notes_server):
    s = notes_server
    body = error(s.post("notes/", json={"body": "no title"}), 400, "missing_argument")
    assert "title" in body["status"]
    error(s.post("notes/", json={"title": "  "}), 400, "bad_title")
    for bad in ("abc", "0", "-1", "1.5"):
        error(s.get(f"notes/{bad}/"), 400, "bad_id")
        error(s.delete(f"notes/{bad}/"), 400, "bad_id")
    error(s.put("notes/", json={"body": "x"}), 400, "missing_id")
    error(s.delete("notes/"), 400, "missing_id")
    error(s.get("notes/?limit=many"), 400, "bad_limit")


def test_form_and_multipart_bodies(notes_server):
    s = notes_server
    f = created(s.post("notes/", data={"title": "From a form", "body": "b"}))
    m = created(s.post("notes/", files={"title": (None, "From multipart"), "body": (None, "x")}))
    assert (f["title"], f["body"]) == ("From a form", "b")
    assert (m["title"], m["body"]) == ("From multipart", "x")


def test_every_call_works_on_every_thread(notes_server):
    # Sequential and concurrent calls land on many Python threads and both workers: none may
    # trip over sqlite3's same-thread check.
    s = notes_server
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        posts = list(pool.map(lambda i: s.post("notes/", json={"title": f"n{i}"}), range(40)))
    ids = [created(r)["id"] for r in posts]
    assert len(set(ids)) == 40
    for _ in range(20):
        assert len(ok(s.get("notes/"))) == 40


def test_data_survives_restart(start_server, db_path):
    env = {"NOTES_DB": str(db_path)}
    first = start_server(env=env, plugin_dirs=[SAMPLE_PLUGINS])
    note = created(first.post("notes/", json={"title": "Persistent", "body": "kept"}))
    first.stop()
    assert db_path.exists()
    second = start_server(env=env, plugin_dirs=[SAMPLE_PLUGINS])
    assert ok(second.get(f"notes/{note['id']}/")) == note
    assert created(second.post("notes/", json={"title": "After"}))["id"] > note["id"]


def test_db_path_from_dotenv(start_server, tmp_path):
    path = tmp_path / "from-dotenv.sqlite3"
    s = start_server(dotenv=f"NOTES_DB={path}\n", plugin_dirs=[SAMPLE_PLUGINS])
    created(s.post("notes/", json={"title": "x"}))
    assert path.exists()


def test_default_db_path_is_the_state_folder(start_server, tmp_path):
    state = tmp_path / "xdg-state"
    s = start_server(env={"XDG_STATE_HOME": str(state)}, plugin_dirs=[SAMPLE_PLUGINS])
    # Loading the plugin creates nothing; the first call does.
    assert not (state / "dpms").exists()
    created(s.post("notes/", json={"title": "x"}))
    assert (state / "dpms" / "notes.sqlite3").exists()


def test_sample_runs_under_plain_python(tmp_path):
    # What an author's own unit test of the plugin looks like: no server.
    from test_plain_python import run_plain

    script = textwrap.dedent(
        """
        import json, os, sys
        os.environ["NOTES_DB"] = os.path.join(os.getcwd(), "unit.sqlite3")
        sys.path.insert(0, os.environ["SAMPLE_PLUGINS"])
        import notes
        made = notes.create_note("t", body="b")
        note_id = made.body["id"]
        print(json.dumps({
            "status": made.status,
            "one": notes.read_notes(str(note_id))["title"],
            "updated": notes.update_note(str(note_id), body="c")["body"],
            "deleted": notes.delete_note(str(note_id))["id"] == note_id,
            "gone": notes.read_notes(str(note_id)).status,
        }))
        """
    )
    assert run_plain(script, tmp_path) == {
        "status": 201, "one": "t", "updated": "c", "deleted": True, "gone": 404
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# The module-level connection


MODULE_LEVEL = """
import os, sqlite3, threading
from dpms import expose

conn = sqlite3.connect(os.environ["PROBE_DB"])
conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
IMPORTED_ON = threading.get_ident()


@expose.endpoint
def module_level_count():
    return conn.execute("SELECT count(*) FROM t").fetchone()[0]
"""

CHECKED_LATER = """
import os, sqlite3, threading
from dpms import expose

# The README's second pattern: one connection for the module, shared by every thread of this
# worker, used under a lock (sqlite3 connections are not safe to use concurrently).
conn = sqlite3.connect(os.environ["PROBE_DB"], check_same_thread=False)
conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
lock = threading.Lock()


@expose.endpoint
def shared_count():
    with lock:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
"""


@pytest.fixture
def probe_server(start_server, plugin_folder, tmp_path):
    (plugin_folder / "sqlmodule.py").write_text(MODULE_LEVEL)
    (plugin_folder / "sqlshared.py").write_text(CHECKED_LATER)
    return start_server(env={"PROBE_DB": str(tmp_path / "probe.sqlite3")}, plugin_dirs=[plugin_folder])


def test_check_same_thread_false_with_a_lock_works(probe_server):
    for _ in range(20):
        assert ok(probe_server.get("shared_count/")) == 0


@pytest.mark.xfail(
    strict=True,
    reason="SPEC §10 'Thread states': modules are imported on one Python thread and called on "
    "others, so a module-level sqlite3 connection fails on another thread. When the host "
    "imports modules on the threads that call them, this passes: update the README's guide.",
)
def test_module_level_connect_works(probe_server):
    failures = []
    for _ in range(20):
        r = probe_server.get("module_level_count/")
        if r.status_code != 200:
            failures.append(r.json().get("exception", r.text))
    assert not failures, json.dumps(failures[:1])


def test_module_level_connect_fails_with_a_clear_error(probe_server):
    # Until then, what an author sees is sqlite3's own message, not a dpms fault.
    seen = set()
    for _ in range(20):
        r = probe_server.get("module_level_count/")
        if r.status_code != 200:
            body = error(r, 500, "plugin_error", extra=("exception",))
            seen.add(body["exception"].split(":")[0])
    assert seen <= {"sqlite3.ProgrammingError"}, seen


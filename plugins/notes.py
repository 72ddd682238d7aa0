"""Sample plugin: a small CRUD service on SQLite, written the way that works under dpms.

    curl -d '{"title": "Buy milk", "body": "2 l"}' http://127.0.0.1:8088/rest/services/notes/
    curl http://127.0.0.1:8088/rest/services/notes/            # list (newest first; ?q=milk)
    curl http://127.0.0.1:8088/rest/services/notes/1/          # one note
    curl -X PUT -d '{"body": "3 l"}' http://127.0.0.1:8088/rest/services/notes/1/
    curl -X DELETE http://127.0.0.1:8088/rest/services/notes/1/

One API name, one function per method (SPEC §4): GET reads, POST creates, PUT/PATCH update,
DELETE deletes. The note id is the first URL parameter (``parm_1``), or ``?id=``.

**Open the connection in the call, not at import.** dpms imports a module on one thread and runs
its calls on others, and a ``sqlite3`` connection refuses to be used on a thread other than the
one that opened it (``ProgrammingError: SQLite objects created in a thread can only be used in
that same thread``). Opening a connection is cheap (tens of microseconds); each call opens one,
runs in one transaction and closes it. SQLite's own file locking keeps dpms's worker processes
consistent with each other.

The database file is ``NOTES_DB`` (from the environment, or a ``NOTES_DB=...`` line in the
``.env`` dpms reads), by default ``notes.sqlite3`` in ``$XDG_STATE_HOME/dpms`` (usually
``~/.local/state/dpms``): outside the source tree, and kept across restarts. Nothing is created
until the first call.
"""

import contextlib
import datetime
import os
import sqlite3

from dpms import Response, expose

DB_PATH = os.environ.get("NOTES_DB") or os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
    "dpms",
    "notes.sqlite3",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    title   TEXT NOT NULL,
    body    TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL
)
"""


@contextlib.contextmanager
def _db():
    """A connection for this call: one transaction (committed, or rolled back if the call
    raises), closed at the end. ``with sqlite3.connect(...)`` alone would commit but not close."""
    folder = os.path.dirname(DB_PATH)
    if folder:
        os.makedirs(folder, exist_ok=True)
    conn = sqlite3.connect(DB_PATH, timeout=10)  # wait up to 10 s for another writer
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(SCHEMA)
        with conn:
            yield conn
    finally:
        conn.close()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _error(status, code, message):
    return Response({"status": message, "error": code}, status=status)


def _note_id(parm_1, id):
    """The id from the URL (``notes/7/``) or the query (``?id=7``), or None if absent.
    Raises ``ValueError`` for anything but a positive integer."""
    raw = parm_1 if parm_1 not in (None, "") else id
    if raw in (None, ""):
        return None
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _bad_id(parm_1, id):
    return _error(400, "bad_id", f"A note id is a positive integer, not {parm_1 or id!r}.")


def _not_found(note_id):
    return _error(404, "note_not_found", f"There is no note {note_id}.")


def _as_dict(row):
    return dict(row) if row is not None else None


@expose.endpoint(method="GET", API="notes")
def read_notes(parm_1=None, id=None, q=None, limit="100"):
    """List notes, newest first (``?q=`` filters on title and body, ``?limit=`` caps the count),
    or return one: ``GET notes/<id>/``."""
    try:
        note_id = _note_id(parm_1, id)
    except ValueError:
        return _bad_id(parm_1, id)
    with _db() as db:
        if note_id is not None:
            row = db.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
            return _as_dict(row) if row is not None else _not_found(note_id)
        try:
            count = max(0, min(int(limit), 1000))
        except ValueError:
            return _error(400, "bad_limit", f"limit must be an integer, not {limit!r}.")
        if q:
            pattern = f"%{q}%"
            rows = db.execute(
                "SELECT * FROM notes WHERE title LIKE ? OR body LIKE ? ORDER BY id DESC LIMIT ?",
                (pattern, pattern, count),
            )
        else:
            rows = db.execute("SELECT * FROM notes ORDER BY id DESC LIMIT ?", (count,))
        return [_as_dict(r) for r in rows]


@expose.endpoint(method="POST", API="notes")
def create_note(title, body=""):
    """Create a note from a JSON, form or multipart body: ``title`` (required), ``body``.
    Answers 201 with the new note."""
    title = str(title).strip()
    if not title:
        return _error(400, "bad_title", "A note needs a non-empty title.")
    now = _now()
    with _db() as db:
        cur = db.execute(
            "INSERT INTO notes (title, body, created, updated) VALUES (?, ?, ?, ?)",
            (title, str(body), now, now),
        )
        row = db.execute("SELECT * FROM notes WHERE id = ?", (cur.lastrowid,)).fetchone()
    return Response(_as_dict(row), status=201, headers={"Location": f"/rest/services/notes/{row['id']}/"})


@expose.endpoint(method="PUT|PATCH", API="notes")
def update_note(parm_1=None, id=None, title=None, body=None):
    """Change a note's ``title`` and/or ``body``: ``PUT notes/<id>/``."""
    try:
        note_id = _note_id(parm_1, id)
    except ValueError:
        return _bad_id(parm_1, id)
    if note_id is None:
        return _error(400, "missing_id", "Say which note: PUT notes/<id>/.")
    if title is not None and not str(title).strip():
        return _error(400, "bad_title", "A note needs a non-empty title.")
    with _db() as db:
        row = db.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
        if row is None:
            return _not_found(note_id)
        db.execute(
            "UPDATE notes SET title = ?, body = ?, updated = ? WHERE id = ?",
            (
                row["title"] if title is None else str(title).strip(),
                row["body"] if body is None else str(body),
                _now(),
                note_id,
            ),
        )
        return _as_dict(db.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone())


@expose.endpoint(method="DELETE", API="notes")
def delete_note(parm_1=None, id=None):
    """Delete a note: ``DELETE notes/<id>/``. Answers with the deleted note."""
    try:
        note_id = _note_id(parm_1, id)
    except ValueError:
        return _bad_id(parm_1, id)
    if note_id is None:
        return _error(400, "missing_id", "Say which note: DELETE notes/<id>/.")
    with _db() as db:
        row = db.execute("SELECT * FROM notes WHERE id = ?", (note_id,)).fetchone()
        if row is None:
            return _not_found(note_id)
        db.execute("DELETE FROM notes WHERE id = ?", (note_id,))
        return _as_dict(row)

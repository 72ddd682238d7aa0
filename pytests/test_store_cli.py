"""`dpms tenant …` against the real binary (SPEC §7 "The registry", "CLI"): every command and
refusal with its exit code, a corrupt registry refused and left as it was, `kill -9` during a
burst of writers losing nothing acknowledged, and the file modes."""

from __future__ import annotations

import json
import os
import pathlib
import random
import sqlite3
import stat
import subprocess
import time
import uuid

import pytest

from dpms_helpers import binary_path

ADMIN = "9f5b7c1e-2d3a-4b8c-9e0f-1a2b3c4d5e6f"
TIMEOUT = 60


def clean_env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("DPMS_") or k in ("ADMIN_ID", "plugins", "MULTI_TENANT"))
    }
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path):
    """Runs `dpms tenant ARGS` in a fresh working folder; returns (code, stdout, stderr)."""
    env = clean_env(ADMIN_ID=ADMIN)

    def run(*args, stdin=None):
        p = subprocess.run(
            [str(binary_path()), "tenant", *args],
            cwd=tmp_path,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return p.returncode, p.stdout, p.stderr

    run.dir = tmp_path
    return run


def test_commands(cli):
    code, out, err = cli("add", "alice")
    assert code == 0, err
    alice = json.loads(out)
    assert alice["userid"] == "alice" and alice["enabled"] is True
    uuid.UUID(alice["uuid"])
    assert alice["created"].endswith("Z") and "T" in alice["created"]

    bob_id = str(uuid.uuid4())
    code, out, _ = cli("add", "bob", "--uuid", bob_id)
    assert code == 0 and json.loads(out)["uuid"] == bob_id

    code, out, _ = cli("list", "--json")
    assert code == 0
    assert [t["userid"] for t in json.loads(out)] == ["alice", "bob"]
    code, out, _ = cli("list")
    lines = out.splitlines()
    assert lines[0].split() == ["UUID", "USERID", "ENABLED", "CREATED"]
    assert lines[1].split()[:3] == [alice["uuid"], "alice", "yes"]

    code, out, _ = cli("disable", bob_id)
    assert code == 0 and json.loads(out)["enabled"] is False
    code, out, _ = cli("show", bob_id)
    assert code == 0 and json.loads(out)["enabled"] is False
    code, out, _ = cli("enable", bob_id)
    assert code == 0 and json.loads(out)["enabled"] is True

    assert cli("secret", "set", bob_id, "API_KEY", "v1")[0] == 0
    assert cli("secret", "set", bob_id, "TOKEN", "--stdin", stdin="s3cret\n")[0] == 0
    code, out, _ = cli("secret", "list", bob_id)
    assert code == 0 and out.split() == ["API_KEY", "TOKEN"]
    assert "s3cret" not in out
    db = sqlite3.connect(cli.dir / ".dpms" / "registry.sqlite3")
    try:
        rows = dict(db.execute("SELECT name, value FROM secrets WHERE tenant = ?", (bob_id,)))
    finally:
        db.close()
    assert rows == {"API_KEY": "v1", "TOKEN": "s3cret"}
    assert cli("secret", "unset", bob_id, "API_KEY")[0] == 0
    assert cli("secret", "list", bob_id)[1].split() == ["TOKEN"]

    assert cli("remove", bob_id)[0] == 0
    assert cli("show", bob_id)[0] == 1
    assert [t["userid"] for t in json.loads(cli("list", "--json")[1])] == ["alice"]
    # Its secrets went with it: a tenant re-added under the same uuid has none.
    assert cli("add", "bob", "--uuid", bob_id)[0] == 0
    assert cli("secret", "list", bob_id)[1] == ""


REFUSALS = [
    # (setup: add alice with this uuid first?, args, exit code, stderr contains)
    (["add", ""], 2, "userid"),
    (["add", "x" * 129], 2, "userid"),
    (["add", "carol", "--uuid", "not-a-uuid"], 2, "not a UUID"),
    (["add", "carol", "--uuid", ADMIN], 1, "admin"),
    (["add", "alice"], 1, "taken"),
    (["add", "carol", "--uuid", "{alice}"], 1, "taken"),
    (["show", "nope"], 2, "not a UUID"),
    (["show", "{unknown}"], 1, "not found"),
    (["enable", "{unknown}"], 1, "not found"),
    (["disable", "{unknown}"], 1, "not found"),
    (["remove", "{unknown}"], 1, "not found"),
    (["secret", "set", "{alice}", "lower", "v"], 2, "secret name"),
    (["secret", "set", "{alice}", "9X", "v"], 2, "secret name"),
    (["secret", "set", "{alice}", "A" * 65, "v"], 2, "secret name"),
    (["secret", "set", "{alice}", "OK"], 2, "VALUE or --stdin"),
    (["secret", "set", "{unknown}", "OK", "v"], 1, "not found"),
    (["secret", "unset", "{alice}", "NOPE"], 1, "not found"),
    (["secret", "list", "{unknown}"], 1, "not found"),
    (["frobnicate"], 2, ""),
]


@pytest.mark.parametrize("args,code,message", REFUSALS)
def test_refusals(cli, args, code, message):
    alice = json.loads(cli("add", "alice")[1])["uuid"]
    args = [a.format(alice=alice, unknown=uuid.uuid4()) for a in args]
    got, out, err = cli(*args)
    assert got == code, (args, out, err)
    assert message in err
    if code and args[0] != "frobnicate":
        assert len(err.strip().splitlines()) == 1, err
        assert out == ""


def test_help_shows_examples():
    for sub in [
        ["add"],
        ["list"],
        ["show"],
        ["enable"],
        ["disable"],
        ["remove"],
        ["secret", "set"],
        ["secret", "unset"],
        ["secret", "list"],
    ]:
        p = subprocess.run(
            [str(binary_path()), "tenant", *sub, "--help"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert p.returncode == 0, sub
        assert "Example:\n  dpms tenant " + " ".join(sub) in p.stdout, sub


def test_settings_lists_data_dir():
    p = subprocess.run(
        [str(binary_path()), "settings"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "DPMS_DATA_DIR" in p.stdout and ".dpms" in p.stdout


def test_data_dir_from_dotenv_and_modes(cli):
    (cli.dir / ".env").write_text("DPMS_DATA_DIR = elsewhere/reg  # a comment\n")
    assert cli("add", "alice")[0] == 0
    folder = cli.dir / "elsewhere" / "reg"
    assert not (cli.dir / ".dpms").exists()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ["registry.sqlite3", "registry.gen"]:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_registry_is_refused_and_kept(cli, damage):
    for i in range(40):
        assert cli("add", f"user{i:02}-" + "x" * 100)[0] == 0
    path = cli.dir / ".dpms" / "registry.sqlite3"
    data = path.read_bytes()
    assert len(data) > 3 * 4096
    if damage == "garbage":
        broken = bytes(random.Random(7).randrange(256) for _ in range(len(data)))
    else:
        broken = data[: len(data) // 3]
    path.write_bytes(broken)
    for args in [["list"], ["add", "zed"], ["show", str(uuid.uuid4())]]:
        code, out, err = cli(*args)
        assert code == 1, (args, out, err)
        assert "registry unavailable" in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == broken


@pytest.mark.parametrize("fresh", [False, True], ids=["existing", "fresh"])
def test_kill_9_during_a_burst_loses_nothing_acknowledged(cli, fresh):
    # fresh: the 20 processes also race to create the file, switch it to WAL and make the schema.
    if not fresh:
        assert cli("list")[0] == 0
    procs = [
        subprocess.Popen(
            [str(binary_path()), "tenant", "add", f"burst-{i:02}"],
            cwd=cli.dir,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    rng = random.Random(9)
    time.sleep(0.02)
    victims = rng.sample(range(20), 7)
    for i in victims:
        time.sleep(rng.uniform(0, 0.03))
        procs[i].kill()
    acknowledged = set()
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=TIMEOUT)
        if i not in victims:
            assert p.returncode == 0, err
        if out.strip():
            acknowledged.add(json.loads(out)["userid"])
    code, out, err = cli("list", "--json")
    assert code == 0, err
    listed = {t["userid"] for t in json.loads(out)}
    assert acknowledged <= listed
    assert len(acknowledged) >= 20 - len(victims)
    db = sqlite3.connect(cli.dir / ".dpms" / "registry.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()

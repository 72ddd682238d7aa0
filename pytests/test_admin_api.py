"""The admin API (SPEC §7, `/rest/admin/…`) against real servers (two workers, ADMIN_ID set,
MULTI_TENANT off): every row of the table, every refusal (401 with its challenge, 400, 404, 405,
409), secret values never sent back, the API and `dpms tenant` seeing each other's writes on the
next request, no admin API without ADMIN_ID, and a corrupt registry answered with 503 and left
byte for byte as it was."""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import tempfile
import time
import uuid

import pytest

from dpms_helpers import TIMEOUT, binary_path, body_json, clean_env, describe, error

ADMIN = "3c8e2a71-5b4f-4d9e-8a16-7f0c2b9d4e58"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CHALLENGE = 'Bearer realm="dpms"'
T_KEYS = {"uuid", "userid", "enabled", "created", "modules"}
MAX_BODY = 8192
ATTEMPTS = 300  # bounded; the kernel tends to hand a burst of connections to one worker


@pytest.fixture(scope="module")
def empty_plugins():
    folder = pathlib.Path(tempfile.mkdtemp(prefix="dpms-admin-plugins-"))
    yield folder
    folder.rmdir()


@pytest.fixture(scope="module")
def admin_server(start_module_server, empty_plugins):
    return start_module_server(
        env={
            "ADMIN_ID": ADMIN,
            "DPMS_WORKERS": "2",
            "MULTI_TENANT": "False",
            "DPMS_MAX_BODY": str(MAX_BODY),
        },
        plugin_dirs=[empty_plugins],
    )


def call(server, method, path, auth=True, **kw):
    headers = dict(AUTH) if auth else {}
    headers.update(kw.pop("headers", {}))
    return server.request(method, "/rest/admin" + path, headers=headers, **kw)


def answer(r, status=200):
    assert r.status_code == status, describe(r)
    body = body_json(r)
    assert body["status"] == "OK", body
    assert r.headers.get("X-Request-Id"), describe(r)
    return body


def tenant_of(r, status=200):
    body = answer(r, status)
    # A registration (201) hands out the tenant's first signing key, once (SPEC §12).
    assert set(body) == ({"status", "tenant", "key"} if status == 201 else {"status", "tenant"}), body
    t = body["tenant"]
    assert set(t) == T_KEYS, t
    assert t["modules"] == [], t
    assert t["created"].endswith("Z") and "T" in t["created"], t
    return t


def new_tenant(server, userid=None, **fields):
    body = {"userid": userid or f"u-{uuid.uuid4().hex[:10]}", **fields}
    return tenant_of(call(server, "POST", "/tenants", json=body), 201)


def cli(server, *args, stdin=None):
    """`dpms tenant ARGS` in the server's working folder, with its ADMIN_ID: the same registry."""
    p = subprocess.run(
        [str(binary_path()), "tenant", *args],
        cwd=server.workdir,
        env=clean_env({"ADMIN_ID": ADMIN}),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return p.returncode, p.stdout, p.stderr


def on_each_worker(server, method, path, check):
    """Repeats the request on new connections until both workers answered it, checking each."""
    seen = set()
    for _ in range(ATTEMPTS):
        r = call(server, method, path)
        check(r)
        seen.add(r.headers.get("X-Dpms-Worker"))
        if len(seen) >= 2:
            return
        time.sleep(0.02)
    pytest.fail(f"only workers {seen} answered in {ATTEMPTS} requests")


# --------------------------------------------------------------------------------------------
# The table


def test_every_row(admin_server):
    s = admin_server
    alice = new_tenant(s, "alice")
    uuid.UUID(alice["uuid"])
    assert alice["userid"] == "alice" and alice["enabled"] is True
    bob_id = str(uuid.uuid4())
    bob = new_tenant(s, "bob", uuid=bob_id)
    assert bob["uuid"] == bob_id
    # An uppercase uuid is the same uuid, stored in its canonical form.
    carol_id = str(uuid.uuid4())
    assert new_tenant(s, "carol", uuid=carol_id.upper())["uuid"] == carol_id

    body = answer(call(s, "GET", "/tenants"))
    assert set(body) == {"status", "tenants"}
    ids = [t["uuid"] for t in body["tenants"]]
    assert ids.index(alice["uuid"]) < ids.index(bob_id) < ids.index(carol_id)
    assert all(set(t) == T_KEYS for t in body["tenants"])
    assert answer(call(s, "GET", "/tenants/"))["tenants"] == body["tenants"]

    assert tenant_of(call(s, "GET", f"/tenants/{bob_id}")) == bob
    off = tenant_of(call(s, "PATCH", f"/tenants/{bob_id}", json={"enabled": False}))
    assert off == {**bob, "enabled": False}
    assert tenant_of(call(s, "GET", f"/tenants/{bob_id}"))["enabled"] is False
    assert tenant_of(call(s, "PATCH", f"/tenants/{bob_id}", json={"enabled": True}))["enabled"]

    for name, value in [("API_KEY", "k-1"), ("REGION", "eu"), ("API_KEY", "k-2"), ("_E", "")]:
        r = call(s, "PUT", f"/tenants/{bob_id}/secrets/{name}", json={"value": value})
        assert answer(r) == {"status": "OK"}
    r = call(s, "GET", f"/tenants/{bob_id}/secrets")
    assert answer(r) == {"status": "OK", "secrets": ["API_KEY", "REGION", "_E"]}
    assert answer(call(s, "DELETE", f"/tenants/{bob_id}/secrets/REGION")) == {"status": "OK"}
    assert answer(call(s, "GET", f"/tenants/{bob_id}/secrets"))["secrets"] == ["API_KEY", "_E"]
    error(call(s, "DELETE", f"/tenants/{bob_id}/secrets/REGION"), 404, "not_found")

    assert answer(call(s, "DELETE", f"/tenants/{bob_id}")) == {"status": "OK"}
    error(call(s, "GET", f"/tenants/{bob_id}"), 404, "not_found")
    error(call(s, "GET", f"/tenants/{bob_id}/secrets"), 404, "not_found")
    assert bob_id not in [t["uuid"] for t in answer(call(s, "GET", "/tenants"))["tenants"]]
    # Its secrets went with it: re-added under the same uuid, it has none.
    new_tenant(s, "bob", uuid=bob_id)
    assert answer(call(s, "GET", f"/tenants/{bob_id}/secrets"))["secrets"] == []


def test_secret_values_are_never_sent(admin_server):
    s = admin_server
    t = new_tenant(s)
    value = f"hunter2-{uuid.uuid4().hex}"
    answers = [call(s, "PUT", f"/tenants/{t['uuid']}/secrets/PASSWORD", json={"value": value})]
    for path in ["/tenants", f"/tenants/{t['uuid']}", f"/tenants/{t['uuid']}/secrets"]:
        answers.append(call(s, "GET", path))
    answers.append(call(s, "PATCH", f"/tenants/{t['uuid']}", json={"enabled": True}))
    secrets = f"/tenants/{t['uuid']}/secrets"
    answers.append(call(s, "PUT", f"{secrets}/PASSWORD", json={"value": value, "x": 1}))
    answers.append(call(s, "PUT", f"{secrets}/password", json={"value": value}))
    for r in answers:
        assert value not in r.text, describe(r)
        assert value not in str(r.headers), describe(r)
    assert value not in admin_server.full_log()


# --------------------------------------------------------------------------------------------
# Refusals

UNAUTHORIZED = [
    None,
    "",
    "Bearer",
    f"Basic {ADMIN}",
    f"Bearer {uuid.uuid4()}",
    f"Bearer {ADMIN[:-1]}0",
    f"Bearer {ADMIN}x",
    "Bearer not-a-uuid",
]


@pytest.mark.parametrize("authorization", UNAUTHORIZED)
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/tenants"),
        ("POST", "/tenants"),
        ("DELETE", f"/tenants/{uuid.uuid4()}"),
        ("GET", ""),
        ("GET", "/nope"),
    ],
)
def test_401_without_the_admins_bearer(admin_server, authorization, method, path):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = call(admin_server, method, path, auth=False, headers=headers, json={"userid": "x"})
    error(r, 401, "unauthorized")
    assert r.headers.get("WWW-Authenticate") == CHALLENGE, describe(r)


def test_401_writes_nothing(admin_server):
    userid = f"sneaky-{uuid.uuid4().hex[:8]}"
    r = call(admin_server, "POST", "/tenants", auth=False, json={"userid": userid})
    error(r, 401, "unauthorized")
    assert userid not in call(admin_server, "GET", "/tenants").text


def test_bearer_scheme_and_uuid_case_do_not_matter(admin_server):
    for token in [f"bearer {ADMIN}", f"BEARER {ADMIN.upper()}"]:
        answer(call(admin_server, "GET", "/tenants", auth=False, headers={"Authorization": token}))


BAD_BODIES = [
    # (method, path under /tenants/{t}, raw body)
    ("POST", "", b""),
    ("POST", "", b"{"),
    ("POST", "", b"[]"),
    ("POST", "", b"{}"),
    ("POST", "", b'{"userid": ""}'),
    ("POST", "", json.dumps({"userid": "x" * 129}).encode()),
    ("POST", "", b'{"userid": 5}'),
    ("POST", "", b'{"userid": null}'),
    ("POST", "", b'{"userid": "ok", "uuid": "nope"}'),
    ("POST", "", b'{"userid": "ok", "uuid": 12}'),
    ("POST", "", b'{"userid": "ok", "enabled": false}'),
    ("POST", "", b"\xff\xfe"),
    ("PATCH", "/{t}", b""),
    ("PATCH", "/{t}", b"{}"),
    ("PATCH", "/{t}", b'{"enabled": "false"}'),
    ("PATCH", "/{t}", b'{"enabled": 0}'),
    ("PATCH", "/{t}", b'{"enabled": true, "userid": "b"}'),
    ("PUT", "/{t}/secrets/K", b""),
    ("PUT", "/{t}/secrets/K", b'{"value": 5}'),
    ("PUT", "/{t}/secrets/K", b'{"value": null}'),
    ("PUT", "/{t}/secrets/K", b'{"value": ["a"]}'),
    ("PUT", "/{t}/secrets/K", b'{"value": "a\\u0000b"}'),
    ("PUT", "/{t}/secrets/K", b'{"value": "v", "name": "K"}'),
    ("PUT", "/{t}/secrets/K", b'"v"'),
    # An array is not an object, even where serde would read one by position.
    ("POST", "", b'["alice"]'),
    ("PATCH", "/{t}", b"[false]"),
    ("PUT", "/{t}/secrets/K", b'["v"]'),
    ("POST", "/{t}/tokens", b"[]"),
    # A path uuid that is not one.
    ("GET", "/not-a-uuid", b""),
    ("PATCH", "/1234", b'{"enabled": true}'),
    ("GET", "/not-a-uuid/secrets", b""),
]


@pytest.fixture(scope="module")
def some_tenant(admin_server):
    return new_tenant(admin_server)["uuid"]


@pytest.mark.parametrize("method,path,body", BAD_BODIES)
def test_400_bad_request(admin_server, some_tenant, method, path, body):
    path = "/tenants" + path.format(t=some_tenant)
    r = call(admin_server, method, path, data=body, headers={"Content-Type": "application/json"})
    error(r, 400, "bad_request")
    # Nothing changed.
    t = tenant_of(call(admin_server, "GET", f"/tenants/{some_tenant}"))
    assert t["enabled"] is True
    assert answer(call(admin_server, "GET", f"/tenants/{some_tenant}/secrets"))["secrets"] == []


NAMES_OK = ["A", "_", "API_KEY", "_X9", "Z0_1", "A" + "_" * 63]
NAMES_BAD = ["a", "api_key", "9A", "A-B", "A.B", "%C3%89", "A%20B", "A" + "B" * 64]


@pytest.mark.parametrize("name", NAMES_OK)
def test_secret_names_accepted(admin_server, name):
    t = new_tenant(admin_server)["uuid"]
    answer(call(admin_server, "PUT", f"/tenants/{t}/secrets/{name}", json={"value": "v"}))
    assert answer(call(admin_server, "GET", f"/tenants/{t}/secrets"))["secrets"] == [name]
    answer(call(admin_server, "DELETE", f"/tenants/{t}/secrets/{name}"))


@pytest.mark.parametrize("name", NAMES_BAD)
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_secret_names_refused(admin_server, some_tenant, name, method):
    r = call(admin_server, method, f"/tenants/{some_tenant}/secrets/{name}", json={"value": "v"})
    error(r, 400, "bad_request")


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/tenants/{u}", None),
        ("PATCH", "/tenants/{u}", {"enabled": False}),
        ("DELETE", "/tenants/{u}", None),
        ("GET", "/tenants/{u}/secrets", None),
        ("PUT", "/tenants/{u}/secrets/K", {"value": "v"}),
        ("DELETE", "/tenants/{u}/secrets/K", None),
    ],
)
def test_404_unknown_tenant(admin_server, method, path, body):
    unknown = str(uuid.uuid4())
    r = call(admin_server, method, path.format(u=unknown), json=body)
    err = error(r, 404, "not_found")
    assert unknown in err["status"]


@pytest.mark.parametrize(
    "path",
    ["", "/", "/nope", "/tenants//", "//tenants", "/tenants/{u}/key", "/tenants/{u}/secrets/A/B"],
)
def test_404_unknown_admin_path(admin_server, some_tenant, path):
    error(call(admin_server, "GET", path.format(u=some_tenant)), 404, "not_found")


def test_409_conflict(admin_server):
    s = admin_server
    t = new_tenant(s)
    for body in [
        {"userid": t["userid"]},
        {"userid": "other-" + uuid.uuid4().hex, "uuid": t["uuid"]},
        {"userid": "other-" + uuid.uuid4().hex, "uuid": ADMIN},
        {"userid": "other-" + uuid.uuid4().hex, "uuid": ADMIN.upper()},
    ]:
        error(call(s, "POST", "/tenants", json=body), 409, "conflict")
    assert ADMIN not in [x["uuid"] for x in answer(call(s, "GET", "/tenants"))["tenants"]]


@pytest.mark.parametrize(
    "path,refused,allow",
    [
        ("/tenants", ["PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"], {"GET", "POST"}),
        ("/tenants/{u}", ["POST", "PUT", "HEAD"], {"GET", "PATCH", "DELETE"}),
        ("/tenants/{u}/secrets", ["POST", "PUT", "PATCH", "DELETE"], {"GET"}),
        ("/tenants/{u}/secrets/K", ["GET", "POST", "PATCH"], {"PUT", "DELETE"}),
        ("/tenants/{u}/keys", ["GET", "PUT", "PATCH", "DELETE"], {"POST"}),
        ("/tenants/{u}/tokens", ["GET", "PUT", "PATCH", "DELETE"], {"POST"}),
    ],
)
def test_405_with_allow(admin_server, some_tenant, path, refused, allow):
    for method in refused:
        r = call(admin_server, method, path.format(u=some_tenant))
        assert r.status_code == 405, describe(r)
        assert {m.strip() for m in r.headers["Allow"].split(",")} == allow, describe(r)
        if method != "HEAD":
            error(r, 405, "method_not_allowed")


def test_413_body_too_large(admin_server):
    r = call(admin_server, "POST", "/tenants", data=b" " * (MAX_BODY + 1))
    error(r, 413, "body_too_large")


# --------------------------------------------------------------------------------------------
# The API and the CLI on one registry


def test_api_write_is_seen_by_the_cli(admin_server):
    s = admin_server
    t = new_tenant(s)
    call(s, "PUT", f"/tenants/{t['uuid']}/secrets/TOKEN", json={"value": "v"})
    tenant_of(call(s, "PATCH", f"/tenants/{t['uuid']}", json={"enabled": False}))
    code, out, err = cli(s, "list", "--json")
    assert code == 0, err
    listed = {x["uuid"]: x for x in json.loads(out)}
    assert listed[t["uuid"]]["userid"] == t["userid"]
    assert listed[t["uuid"]]["enabled"] is False
    assert cli(s, "secret", "list", t["uuid"])[1].split() == ["TOKEN"]
    answer(call(s, "DELETE", f"/tenants/{t['uuid']}"))
    assert t["uuid"] not in cli(s, "list", "--json")[1]


def test_cli_write_is_seen_by_the_api_on_the_next_request(admin_server):
    s = admin_server
    userid = f"cli-{uuid.uuid4().hex[:8]}"
    code, out, err = cli(s, "add", userid)
    assert code == 0, err
    added = json.loads(out)
    u = added["uuid"]

    def shows(enabled):
        def check(r):
            t = tenant_of(r)
            assert (t["userid"], t["enabled"]) == (userid, enabled), t

        return check

    on_each_worker(s, "GET", f"/tenants/{u}", shows(True))
    assert cli(s, "disable", u)[0] == 0
    on_each_worker(s, "GET", f"/tenants/{u}", shows(False))
    assert cli(s, "secret", "set", u, "FROM_CLI", "--stdin", stdin="x\n")[0] == 0

    def names(r):
        assert answer(r)["secrets"] == ["FROM_CLI"], describe(r)

    on_each_worker(s, "GET", f"/tenants/{u}/secrets", names)
    assert cli(s, "remove", u)[0] == 0
    on_each_worker(s, "GET", f"/tenants/{u}", lambda r: error(r, 404, "not_found"))
    # The API's answer in creation order includes CLI-made tenants too.
    assert cli(s, "add", userid)[0] == 0
    assert answer(call(s, "GET", "/tenants"))["tenants"][-1]["userid"] == userid


# --------------------------------------------------------------------------------------------
# No ADMIN_ID; a corrupt registry


def test_no_admin_id_no_admin_api(start_server, plugin_folder):
    s = start_server(env={"DPMS_WORKERS": "1"}, plugin_dirs=[plugin_folder])
    for method, path in [("GET", "/tenants"), ("POST", "/tenants"), ("GET", ""), ("GET", "/nope")]:
        r = call(s, method, path, json={"userid": "x"})
        error(r, 404, "not_found")
        assert "WWW-Authenticate" not in r.headers
    # Nothing was created for it.
    assert not (s.workdir / ".dpms").exists()


def test_corrupt_registry_is_503_and_kept(start_server, plugin_folder, tmp_path):
    data = tmp_path / "data"
    env = clean_env({"ADMIN_ID": ADMIN, "DPMS_DATA_DIR": str(data)})
    for i in range(20):
        p = subprocess.run(
            [str(binary_path()), "tenant", "add", f"user{i:02}-" + "x" * 100],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert p.returncode == 0, p.stderr
    path = data / "registry.sqlite3"
    size = len(path.read_bytes())
    for name in ("registry.sqlite3-wal", "registry.sqlite3-shm"):
        (data / name).unlink(missing_ok=True)
    broken = bytes(random.Random(11).randrange(256) for _ in range(size))
    path.write_bytes(broken)
    listing = sorted(os.listdir(data))

    s = start_server(
        env={"ADMIN_ID": ADMIN, "DPMS_DATA_DIR": str(data), "DPMS_WORKERS": "2"},
        plugin_dirs=[plugin_folder],
    )
    u = str(uuid.uuid4())
    for method, path_, body in [
        ("GET", "/tenants", None),
        ("POST", "/tenants", {"userid": "zed"}),
        ("GET", f"/tenants/{u}", None),
        ("PATCH", f"/tenants/{u}", {"enabled": True}),
        ("DELETE", f"/tenants/{u}", None),
        ("PUT", f"/tenants/{u}/secrets/K", {"value": "v"}),
        ("GET", f"/tenants/{u}/secrets", None),
        ("DELETE", f"/tenants/{u}/secrets/K", None),
    ]:
        err = error(call(s, method, path_, json=body), 503, "registry_unavailable")
        assert str(data) not in err["status"]
    # The bearer is still checked first, and the rest of the server still serves.
    error(call(s, "GET", "/tenants", auth=False), 401, "unauthorized")
    assert s.get("/").status_code == 200
    assert path.read_bytes() == broken
    assert sorted(os.listdir(data)) == listing
    assert "registry" in s.full_log() and "unavailable" in s.full_log()

"""Tenancy through real servers (SPEC §7, with §2 and §11 where tenancy touches them): two
workers, `MULTI_TENANT=True` and `ADMIN_ID`, tenants registered by the admin API and by
`dpms tenant`.

Every promise about "the next request" is checked on both workers (requests on new connections
until both `X-Dpms-Worker` values answered, bounded). Tenant processes are found by their `comm`
(`dpms-t-<8 hex>`) in /proc.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from dpms_helpers import (
    TIMEOUT,
    binary_path,
    body_json,
    clean_env,
    describe,
    error,
    ok,
    source,
    unique,
    wait_for,
    write_atomic,
)

ADMIN = "5d2c9b1e-7a4f-4e3d-9c8b-1f0e2d3c4b5a"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ATTEMPTS = 300  # requests (each a new connection) made to reach both workers
BOTH_WORKERS_SECS = 15  # ... within this long
PROC_GONE_SECS = 20  # a removed tenant's processes are gone within this
#: `.env` of the shared server: keys dpms does not know reach the admin's os.environ only.
DOTENV_KEYS = {"MONGO_URI": "mongodb://db:27017/x", "DOTENV_ONLY_KEY": "from-dotenv"}
#: The environment of a tenant process besides its secrets (SPEC §11.2).
FIXED_ENV = {"HOME", "TMPDIR", "LANG"}


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def plugins():
    folder = pathlib.Path(tempfile.mkdtemp(prefix="dpms-tenancy-plugins-"))
    yield folder
    for p in folder.iterdir():
        p.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture(scope="module")
def mt(start_module_server, plugins):
    """The shared multi-tenant server: two workers, only this module's plugin folder."""
    return start_module_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "2"},
        plugin_dirs=[plugins],
        dotenv="".join(f"{k}={v}  # a comment\n" for k, v in DOTENV_KEYS.items()),
    )


def admin_api(server, method, path, **kw):
    return server.request(method, "/rest/admin" + path, headers=AUTH, **kw)


def register(server, tenant=None) -> str:
    """Adds a tenant by the admin API; its uuid."""
    tenant = tenant or str(uuid.uuid4())
    body = {"userid": f"u-{uuid.uuid4().hex[:12]}", "uuid": tenant}
    r = admin_api(server, "POST", "/tenants", json=body)
    assert r.status_code == 201, describe(r)
    return tenant


def cli(server, *args):
    """`dpms tenant ARGS` on the server's registry (its working folder, its ADMIN_ID)."""
    p = subprocess.run(
        [str(binary_path()), "tenant", *args],
        cwd=server.workdir,
        env=clean_env({"ADMIN_ID": ADMIN}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def on_both(server, path, check, method="GET", **kw):
    """Sends the request on new connections until both workers answered it; checks each answer.

    Bounded by time, not only by count: the workers share one listening socket, and while
    one is busy (starting a tenant process, loading) the other may take every connection."""
    seen = set()
    deadline = time.monotonic() + BOTH_WORKERS_SECS
    for _ in range(ATTEMPTS):
        r = server.request(method, path, headers={"Connection": "close"}, **kw)
        check(r)
        seen.add(r.headers.get("X-Dpms-Worker"))
        if len(seen) >= 2:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    pytest.fail(f"only workers {seen} answered {path} in {ATTEMPTS} requests")


def answers(value):
    """A check that the call succeeded with ``value`` as its single result."""

    def check(r):
        assert ok(r) == value, describe(r)

    return check


def refused(r):
    """The one answer for a uuid that is not the admin and not an enabled tenant."""
    return error(r, 404, "not_found")


def undefined(r):
    """404 `api_undefined`; the optional `hint` (a broken file of the caller's that names the
    API) is allowed."""
    assert r.status_code == 404, describe(r)
    body = body_json(r)
    assert body.get("error") == "api_undefined", describe(r)
    assert set(body) <= {"status", "error", "hint"}, describe(r)
    return body


def comm_of(tenant: str) -> str:
    return "dpms-t-" + uuid.UUID(tenant).hex[:8]


def pids_named(comm: str) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == comm:
                pids.append(int(entry.name))
        except OSError:
            continue  # it exited while we looked
    return pids


def write(folder, name, text):
    return write_atomic(pathlib.Path(folder) / f"{name}.py", text)


#: A module owned by `$owner` (an empty owner: no `__ID__`, the admin's) with one GET API `$api`
#: answering `$value`.
SIMPLE = """
$owner_line
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def answer():
    return "$value"
"""


def simple(folder, name, api, value, owner=None):
    owner_line = f'__ID__ = "{owner}"' if owner else "# the admin's"
    return write(folder, name, source(SIMPLE, owner_line=owner_line, api=api, value=value))


#: A module of `$owner` whose API `$api` tells who called it and what its process sees.
WHOAMI = """
__ID__ = "$owner"
import os
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def whoami(**kwargs):
    r = kwargs["__request__"]
    return {"role": r.role, "uuid": r.uuid, "env": dict(os.environ), "pid": os.getpid()}
"""


# --------------------------------------------------------------------------------------------
# Refused uuids: one answer; re-enabled: served from the next request on


def test_missing_unknown_disabled_removed_are_one_answer(mt, plugins):
    mod, api = unique("ten"), unique("api")
    tenant = str(uuid.uuid4())
    simple(plugins, mod, api, "mine", owner=tenant)
    path = f"{tenant}/{api}/"

    def same_as(expected):
        def check(r):
            assert refused(r) == expected, describe(r)

        return check

    unknown = refused(mt.get(path))
    assert unknown == refused(mt.get(path)), "the answer for one path is stable"
    # Another never-registered uuid, no uuid, an API that does not exist, `__dir__`: the same
    # answer but for the path it repeats.
    stranger = str(uuid.uuid4())
    for other in [f"{stranger}/{api}/", f"{api}/", f"{tenant}/no-{api}/", f"{tenant}/__dir__/"]:
        body = refused(mt.get(other))
        assert body == {**unknown, "status": unknown["status"].replace(path, other)}, body

    register(mt, tenant)
    on_both(mt, path, answers("mine"))

    r = admin_api(mt, "PATCH", f"/tenants/{tenant}", json={"enabled": False})
    assert r.status_code == 200, describe(r)
    on_both(mt, path, same_as(unknown))
    cli(mt, "enable", tenant)
    on_both(mt, path, answers("mine"))
    cli(mt, "disable", tenant)
    on_both(mt, path, same_as(unknown))
    r = admin_api(mt, "PATCH", f"/tenants/{tenant}", json={"enabled": True})
    assert r.status_code == 200, describe(r)
    on_both(mt, path, answers("mine"))

    assert admin_api(mt, "DELETE", f"/tenants/{tenant}").status_code == 200
    on_both(mt, path, same_as(unknown))
    # Re-added under the same uuid (by the CLI): served again.
    cli(mt, "add", f"again-{tenant[:8]}", "--uuid", tenant)
    on_both(mt, path, answers("mine"))
    cli(mt, "remove", tenant)
    on_both(mt, path, same_as(unknown))


def test_no_uuid_is_refused_even_for_admin_modules(mt, plugins):
    mod, api = unique("adm"), unique("api")
    simple(plugins, mod, api, "admins")
    on_both(mt, f"{ADMIN}/{api}/", answers("admins"))
    for path in [f"{api}/", "__dir__/", f"{mod}/{api}/", f"{mod}/__dir__/", ""]:
        refused(mt.get(path))


# --------------------------------------------------------------------------------------------
# Who sees what


@pytest.fixture(scope="module")
def two_tenants(mt, plugins):
    """Tenants A and B, each with a module and a broken file, and one admin module. The
    shared API name `dup` is in both of A's modules and in B's: A's is ambiguous (409)
    between A's two modules only; B's is B's."""
    a, b = register(mt), register(mt)
    n = unique("x")
    names = {
        "adm": f"adm_{n}",
        "a1": f"a1_{n}",
        "a2": f"a2_{n}",
        "b1": f"b1_{n}",
        "bbroken": f"bbroken_{n}",
        "abroken": f"abroken_{n}",
        "dup": f"dup-{n}",
        "a_api": f"aapi-{n}",
        "b_api": f"bapi-{n}",
        "adm_api": f"admapi-{n}",
        "b_raise": f"braise-{n}",
        "b_broken_api": f"bbrokenapi-{n}",
    }
    simple(plugins, names["adm"], names["adm_api"], "admin's")
    write(
        plugins,
        names["a1"],
        source(
            """
            __ID__ = "$a"
            from vyperlogix.decorators import expose

            @expose.endpoint(method="GET", API="$a_api")
            def mine():
                return "A"

            @expose.endpoint(method="GET", API="$dup")
            def dup():
                return "A1"
            """,
            a=a,
            **names,
        ),
    )
    simple(plugins, names["a2"], names["dup"], "A2", owner=a)
    write(
        plugins,
        names["b1"],
        source(
            """
            __ID__ = "$b"
            from vyperlogix.decorators import expose

            @expose.endpoint(method="GET", API="$b_api")
            def secret_b():
                return "B"

            @expose.endpoint(method="GET", API="$dup")
            def dup():
                return "B1"

            @expose.endpoint(method="GET", API="$b_raise")
            def boom():
                raise ValueError("B's failure in $b1")
            """,
            b=b,
            **names,
        ),
    )
    write(
        plugins,
        names["bbroken"],
        f'__ID__ = "{b}"\nAPI = "{names["b_broken_api"]}"\ndef broken(:\n',
    )
    write(plugins, names["abroken"], f'__ID__ = "{a}"\ndef broken(:\n')
    return a, b, names


def assert_relative_files(body, plugins):
    text = json.dumps(body)
    assert str(plugins) not in text, text
    assert "/tmp" not in text, text
    for entry in body["imports"].values():
        assert "/" not in entry.get("file", ""), entry


def test_tenant_sees_admin_modules_and_its_own(mt, plugins, two_tenants):
    a, b, n = two_tenants

    def check(r):
        d = body_json(r)
        assert r.status_code == 200, describe(r)
        assert set(d["modules"]) >= {n["adm"], n["a1"], n["a2"]}, d
        assert n["b1"] not in d["modules"], d
        assert f"{n['abroken']}.py" in d["imports"], d
        assert d["imports"][f"{n['abroken']}.py"]["status"] == "error", d
        assert d["imports"][n["a1"]]["file"] == f"{n['a1']}.py", d
        assert d["imports"][n["adm"]]["file"] == f"{n['adm']}.py", d
        get = d["endpoints"]["GET"]
        assert get[n["a_api"]]["module"] == n["a1"], d
        assert get[n["adm_api"]]["module"] == n["adm"], d
        # The API two of A's modules define is listed by its qualified paths, B's not among them.
        assert f"{n['a1']}/{n['dup']}" in get and f"{n['a2']}/{n['dup']}" in get, d
        for key in [n["dup"], n["b_api"], n["b_raise"], f"{n['b1']}/{n['dup']}"]:
            assert key not in get, (key, d)
        text = r.text
        for secret in [b, n["b1"], n["bbroken"], n["b_api"], n["b_raise"]]:
            assert secret not in text, (secret, text)
        assert_relative_files(d, plugins)

    on_both(mt, f"{a}/__dir__/", check)
    # One module's __dir__ too.
    r = mt.get(f"{a}/{n['a1']}/__dir__/")
    d = body_json(r)
    assert list(d["modules"]) == [n["a1"]], d
    assert_relative_files(d, plugins)
    r = mt.get(f"{a}/{n['adm']}/__dir__/")
    assert_relative_files(body_json(r), plugins)


def test_admin_sees_only_admin_modules(mt, plugins, two_tenants):
    a, b, n = two_tenants
    d = mt.dir(f"{ADMIN}/__dir__/")
    assert n["adm"] in d["modules"], d
    for name in [n["a1"], n["a2"], n["b1"]]:
        assert name not in d["modules"], d
    for api in [n["a_api"], n["b_api"], n["dup"]]:
        for key in d["endpoints"].get("GET", {}):
            assert not key.endswith(api), (api, d)
    undefined(mt.get(f"{ADMIN}/{n['a_api']}/"))
    undefined(mt.get(f"{ADMIN}/{n['dup']}/"))
    on_both(mt, f"{ADMIN}/{n['adm_api']}/", answers("admin's"))


def test_tenant_a_never_learns_of_tenant_b(mt, two_tenants):
    a, b, n = two_tenants
    ghost = unique("ghost")  # a module name nobody has
    pairs = [
        # (a path naming B's things, the same path naming nothing)
        (f"{n['b_api']}/", f"{ghost}/"),
        (f"{n['b1']}/{n['b_api']}/", f"{ghost}/{n['b_api']}/"),
        (f"{n['b1']}/__dir__/", f"{ghost}/__dir__/"),
        (f"{n['b1']}/{n['dup']}/", f"{ghost}/{n['dup']}/"),
        (f"{n['bbroken']}/x/", f"{ghost}/x/"),
        (f"{n['b_raise']}/", f"{ghost}-r/"),
        # B's broken file names this API: no hint about it for A.
        (f"{n['b_broken_api']}/", f"{ghost}-b/"),
    ]
    for b_path, ghost_path in pairs:
        r_b, r_g = mt.get(f"{a}/{b_path}"), mt.get(f"{a}/{ghost_path}")
        assert r_b.status_code == r_g.status_code == 404, (describe(r_b), describe(r_g))
        body_b, body_g = body_json(r_b), body_json(r_g)
        b_first, g_first = b_path.split("/")[0], ghost_path.split("/")[0]
        assert body_b == json.loads(json.dumps(body_g).replace(g_first, b_first)), (body_b, body_g)
        assert b not in r_b.text and "B1" not in r_b.text, describe(r_b)

    # The API in several of A's modules: 409 naming A's modules only.
    body = error(mt.get(f"{a}/{n['dup']}/"), 409, "ambiguous_api", extra=("candidates",))
    assert sorted(c.strip("/") for c in body["candidates"]) == sorted(
        [f"{n['a1']}/{n['dup']}", f"{n['a2']}/{n['dup']}"]
    ), body
    assert n["b1"] not in json.dumps(body), body
    # B's calls are B's, unaffected by A.
    on_both(mt, f"{b}/{n['dup']}/", answers("B1"))
    on_both(mt, f"{b}/{n['b_api']}/", answers("B"))
    r = mt.get(f"{b}/{n['b_raise']}/")
    body = error(r, 500, "plugin_error", extra=("exception",))
    assert body["exception"] == f"ValueError: B's failure in {n['b1']}", body
    # Qualified calls of A's own modules work.
    on_both(mt, f"{a}/{n['a2']}/{n['dup']}/", answers("A2"))
    on_both(mt, f"{a}/{n['a1']}/{n['dup']}/", answers("A1"))


# --------------------------------------------------------------------------------------------
# Shadowing


def test_tenant_api_shadows_admin_api_of_the_same_name(mt, plugins):
    tenant, other = register(mt), register(mt)
    api = unique("shared")
    adm, own = unique("adm"), unique("own")
    simple(plugins, adm, api, "admin's")
    simple(plugins, own, api, "tenant's", owner=tenant)
    on_both(mt, f"{tenant}/{api}/", answers("tenant's"))
    on_both(mt, f"{ADMIN}/{api}/", answers("admin's"))
    # A tenant without its own gets the admin's.
    on_both(mt, f"{other}/{api}/", answers("admin's"))
    d = mt.dir(f"{tenant}/__dir__/")
    assert d["endpoints"]["GET"][api]["module"] == own, d


TWO_APIS = """
$owner_line
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def one():
    return "$value"

@expose.endpoint(method="GET", API="$only")
def two():
    return "$value only"
"""


@pytest.fixture
def two_folders(start_server, tmp_path):
    """A server with two plugin folders, each holding `<mod>.py`: the admin's first, the
    tenant's second (the only way one module name can have two owners)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    tenant = str(uuid.uuid4())
    mod = unique("mod")
    apis = {"a_api": unique("a"), "a_only": unique("only"), "t_api": unique("t")}
    write(
        first,
        mod,
        source(TWO_APIS, owner_line="", api=apis["a_api"], only=apis["a_only"], value="admin's"),
    )
    simple(second, mod, apis["t_api"], "tenant's", owner=tenant)
    s = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "2"},
        plugin_dirs=[first, second],
    )
    register(s, tenant)
    return s, tenant, mod, apis, (first, second)


def test_tenant_module_shadows_admin_module(two_folders):
    s, tenant, mod, apis, _ = two_folders
    on_both(s, f"{ADMIN}/{mod}/{apis['a_api']}/", answers("admin's"))
    on_both(s, f"{tenant}/{mod}/{apis['t_api']}/", answers("tenant's"))
    on_both(s, f"{tenant}/{apis['t_api']}/", answers("tenant's"))
    # For the tenant its module replaces the admin's whole: the admin's APIs of that module
    # are not reachable through the name.
    d = s.dir(f"{tenant}/{mod}/__dir__/")
    assert d["modules"] == {mod: ["answer"]}, d
    undefined(s.get(f"{tenant}/{mod}/{apis['a_api']}/"))
    d = s.dir(f"{ADMIN}/{mod}/__dir__/")
    assert set(d["modules"][mod]) == {"one", "two"}, d


def test_tenant_dir_of_two_folders_names_no_folder(two_folders):
    s, tenant, mod, apis, folders = two_folders
    r = s.get(f"{tenant}/__dir__/")
    body = body_json(r)
    for folder in folders:
        assert str(folder) not in r.text, body
    for entry in body["imports"].values():
        assert "/" not in entry.get("file", "") and "/" not in entry.get("error", ""), entry


def test_two_tenants_may_use_one_module_name(start_server, tmp_path):
    """A's `<mod>.py` in the first folder, B's in the second: each tenant is served its own,
    and B's `__dir__` names neither A's file nor a folder."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    mod, a_api, b_api = unique("mod"), unique("a"), unique("b")
    simple(first, mod, a_api, "A's", owner=a)
    simple(second, mod, b_api, "B's", owner=b)
    s = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "2"},
        plugin_dirs=[first, second],
    )
    register(s, a)
    register(s, b)
    on_both(s, f"{a}/{mod}/{a_api}/", answers("A's"))
    r = s.get(f"{b}/__dir__/")
    for leak in [str(first), str(second), a]:
        assert leak not in r.text, (leak, describe(r))
    on_both(s, f"{b}/{mod}/{b_api}/", answers("B's"))


def test_tenant_alias_shadows_admin_module_name(mt, plugins):
    """A tenant module whose `__alias__` is an admin module's name takes that name for the
    tenant; the admin keeps its module."""
    tenant = register(mt)
    adm, own = unique("adm"), unique("own")
    a_api, t_api = unique("a"), unique("t")
    write(
        plugins,
        adm,
        source(TWO_APIS, owner_line="", api=a_api, only=unique("only"), value="admin's"),
    )
    simple(plugins, own, t_api, "tenant's", owner=tenant)
    text = (plugins / f"{own}.py").read_text()
    write(plugins, own, text + f'\n__alias__ = "{adm}"\n')
    on_both(mt, f"{tenant}/{adm}/{t_api}/", answers("tenant's"))
    on_both(mt, f"{ADMIN}/{adm}/{a_api}/", answers("admin's"))
    undefined(mt.get(f"{tenant}/{adm}/{a_api}/"))


# --------------------------------------------------------------------------------------------
# Ownership declarations


def test_unregistered_owner_is_callable_by_nobody_until_registered(mt, plugins):
    tenant = str(uuid.uuid4())
    mod, api = unique("orphan"), unique("api")
    simple(plugins, mod, api, "finally", owner=tenant)
    other = register(mt)
    d = mt.dir(f"{ADMIN}/__dir__/")
    assert mod not in d["modules"], d
    on_both(mt, f"{ADMIN}/{api}/", undefined)
    on_both(mt, f"{other}/{api}/", undefined)
    on_both(mt, f"{tenant}/{api}/", refused)
    cli(mt, "add", f"late-{tenant[:8]}", "--uuid", tenant)
    on_both(mt, f"{tenant}/{api}/", answers("finally"))
    # It is the tenant's now: still nobody else's.
    on_both(mt, f"{ADMIN}/{api}/", undefined)
    t = admin_api(mt, "GET", f"/tenants/{tenant}").json()["tenant"]
    assert t["modules"] == [mod], t


def test_unregistered_owner_shows_as_unowned_in_admin_dir(mt, plugins):
    """SPEC §7: the module "shows in the admin's `__dir__` with "status": "unowned""."""
    tenant = str(uuid.uuid4())
    mod, api = unique("orphan"), unique("api")
    simple(plugins, mod, api, "x", owner=tenant)

    def check(r):
        d = body_json(r)
        entry = d["imports"].get(mod) or d["imports"].get(f"{mod}.py")
        assert entry is not None and entry.get("status") == "unowned", d

    on_both(mt, f"{ADMIN}/__dir__/", check)


def test_owner_change_is_the_next_request(mt, plugins):
    """A file whose `__ID__` is edited changes hands from the next request on: admin → A → B
    → admin."""
    a, b = register(mt), register(mt)
    mod, api = unique("moving"), unique("api")
    simple(plugins, mod, api, "v", owner=None)
    on_both(mt, f"{ADMIN}/{api}/", answers("v"))
    on_both(mt, f"{a}/{api}/", answers("v"))  # the admin's module, seen by A
    on_both(mt, f"{b}/{api}/", answers("v"))
    for owner, value in [(a, "A"), (b, "B"), (None, "admin")]:
        simple(plugins, mod, api, value, owner=owner)
        for caller in [ADMIN, a, b]:
            if owner is None or caller == owner:
                on_both(mt, f"{caller}/{api}/", answers(value))
            else:
                on_both(mt, f"{caller}/{api}/", undefined)


@pytest.mark.parametrize(
    "declaration",
    [
        "__ID__ = str(1)",
        '__ID__ = "a" + "b"',
        f'__ID__ = f"{uuid.uuid4()}"',
        f'__ID__ = x = "{uuid.uuid4()}"',
        f'__ID__ = "{uuid.uuid4()}"\n__ID__ = "{uuid.uuid4()}"',
    ],
    ids=["call", "concat", "fstring", "chained", "twice"],
)
def test_non_literal_owner_is_a_load_error(mt, plugins, declaration):
    mod, api = unique("nonlit"), unique("api")
    simple(plugins, mod, api, "never")
    text = (plugins / f"{mod}.py").read_text()
    write(plugins, mod, text.replace("# the admin's", declaration))

    def check(r):
        d = body_json(r)
        entry = d["imports"].get(f"{mod}.py")
        assert entry is not None and entry["status"] == "error", d
        assert "__ID__" in entry["error"], entry
        assert mod not in d["modules"], d

    on_both(mt, f"{ADMIN}/__dir__/", check)
    on_both(mt, f"{ADMIN}/{api}/", undefined)
    # No tenant takes it either.
    on_both(mt, f"{register(mt)}/{api}/", undefined)


# --------------------------------------------------------------------------------------------
# Freshness of tenant modules (SPEC §2 for tenant code)

VERSIONED = """
__ID__ = "$owner"
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def version():
    return "$version"
"""


@pytest.mark.parametrize("how", ["rename", "in_place"])
def test_edit_of_a_tenant_module_is_the_next_call(mt, plugins, how):
    tenant = register(mt)
    mod, api = unique("fresh"), unique("api")
    path = plugins / f"{mod}.py"
    write(plugins, mod, source(VERSIONED, owner=tenant, api=api, version="v00"))
    on_both(mt, f"{tenant}/{api}/", answers("v00"))
    for i in range(1, 6):
        text = source(VERSIONED, owner=tenant, api=api, version=f"v{i:02}")
        if how == "rename":
            write_atomic(path, text)
        else:
            with open(path, "w", encoding="utf-8") as f:  # same size, same inode
                f.write(text)
        on_both(mt, f"{tenant}/{api}/", answers(f"v{i:02}"))


def test_a_new_tenant_file_is_served_on_the_next_call(mt, plugins):
    tenant = register(mt)
    first, second = unique("first"), unique("second")
    simple(plugins, first, unique("api"), "1", owner=tenant)
    mt.dir(f"{tenant}/__dir__/")  # its view exists on the worker that answered
    api = unique("api")
    simple(plugins, second, api, "2", owner=tenant)
    on_both(mt, f"{tenant}/{api}/", answers("2"))
    (plugins / f"{second}.py").unlink()
    on_both(mt, f"{tenant}/{api}/", undefined)


USES_HELPER = """
__ID__ = "$owner"
import $helper
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def value():
    return $helper.VALUE
"""

HELPER = """
__ID__ = "$owner"
VALUE = "$value"
"""


def test_tenant_helper_module_and_its_edits(mt, plugins):
    tenant = register(mt)
    mod, helper, api = unique("user"), unique("helper"), unique("api")
    write(plugins, helper, source(HELPER, owner=tenant, value="h1"))
    write(plugins, mod, source(USES_HELPER, owner=tenant, helper=helper, api=api))
    on_both(mt, f"{tenant}/{api}/", answers("h1"))
    write(plugins, helper, source(HELPER, owner=tenant, value="h2"))
    on_both(mt, f"{tenant}/{api}/", answers("h2"))
    with open(plugins / f"{helper}.py", "w", encoding="utf-8") as f:
        f.write(source(HELPER, owner=tenant, value="h3"))
    on_both(mt, f"{tenant}/{api}/", answers("h3"))


IMPORTER = """
__ID__ = "$owner"
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def imports(parm_1):
    import importlib
    importlib.import_module(parm_1)
    return "imported " + parm_1
"""


def test_tenant_cannot_import_admin_or_other_tenants_modules(mt, plugins):
    a, b = register(mt), register(mt)
    adm, b_mod, a_mod, a_helper = unique("adm"), unique("bmod"), unique("amod"), unique("ahelp")
    simple(plugins, adm, unique("api"), "admin's")
    simple(plugins, b_mod, unique("api"), "B's", owner=b)
    write(plugins, a_helper, source(HELPER, owner=a, value="mine"))
    api = unique("imp")
    write(plugins, a_mod, source(IMPORTER, owner=a, api=api))
    on_both(mt, f"{a}/{api}/{a_helper}/", answers(f"imported {a_helper}"))
    for name in [adm, b_mod]:
        r = mt.get(f"{a}/{api}/{name}/")
        body = error(r, 500, "plugin_error", extra=("exception",))
        assert body["exception"].startswith(("ModuleNotFoundError", "ImportError")), body
        assert str(plugins) not in r.text, describe(r)
    # At import time too: the module is A's import error, nobody else's.
    broken, api2 = unique("imports_b"), unique("api")
    write(
        plugins,
        broken,
        source(
            """
            __ID__ = "$owner"
            import $b_mod
            from vyperlogix.decorators import expose

            @expose.endpoint(method="GET", API="$api")
            def f():
                return "no"
            """,
            owner=a,
            b_mod=b_mod,
            api=api2,
        ),
    )
    d = mt.dir(f"{a}/__dir__/")
    entry = d["imports"][f"{broken}.py"]
    assert entry["status"] == "error" and "ModuleNotFoundError" in entry["error"], entry
    assert_relative_files(d, plugins)


# --------------------------------------------------------------------------------------------
# __request__ and the environment


def test_request_role_and_uuid(mt, plugins):
    tenant = register(mt)
    t_api, a_api = unique("who"), unique("who")
    write(plugins, unique("tw"), source(WHOAMI, owner=tenant, api=t_api))
    write(plugins, unique("aw"), source(WHOAMI, owner=ADMIN, api=a_api))

    def role(expected_role, expected_uuid):
        def check(r):
            got = ok(r)
            assert (got["role"], got["uuid"]) == (expected_role, expected_uuid), got

        return check

    on_both(mt, f"{tenant}/{t_api}/", role("tenant", tenant))
    on_both(mt, f"{ADMIN}/{a_api}/", role("admin", ADMIN))
    # The admin's module called by a tenant runs for that tenant.
    on_both(mt, f"{tenant}/{a_api}/", role("tenant", tenant))
    # Admin's code sees the server's environment, .env included; the tenant's none of it.
    env = ok(mt.get(f"{ADMIN}/{a_api}/"))["env"]
    for k, v in DOTENV_KEYS.items():
        assert env.get(k) == v, env
    tenant_env = ok(mt.get(f"{tenant}/{t_api}/"))["env"]
    assert set(tenant_env) == FIXED_ENV, tenant_env


def test_secrets_are_the_tenants_environment(mt, plugins):
    tenant, other = register(mt), register(mt)
    api = unique("env")
    write(plugins, unique("sec"), source(WHOAMI, owner=tenant, api=api))
    o_api = unique("env")
    write(plugins, unique("sec"), source(WHOAMI, owner=other, api=o_api))
    secrets = f"/tenants/{tenant}/secrets"
    assert admin_api(mt, "PUT", f"{secrets}/API_KEY", json={"value": "k-1"}).status_code == 200
    cli(mt, "secret", "set", tenant, "REGION", "eu")

    def env_is(expected):
        def check(r):
            env = ok(r)["env"]
            assert env == {**{k: env.get(k) for k in FIXED_ENV}, **expected}, env
            assert set(env) == FIXED_ENV | set(expected), env

        return check

    on_both(mt, f"{tenant}/{api}/", env_is({"API_KEY": "k-1", "REGION": "eu"}))
    # Another tenant sees none of them.
    on_both(mt, f"{other}/{o_api}/", env_is({}))
    for k in list(DOTENV_KEYS) + ["ADMIN_ID", "MULTI_TENANT", "plugins"]:
        assert k not in ok(mt.get(f"{tenant}/{api}/"))["env"]


def token_is(value):
    def check(r):
        assert ok(r)["env"].get("TOKEN") == value, describe(r)

    return check


def test_secret_change_applies_from_a_new_process(mt, plugins):
    """What the server does today: a tenant's secrets are read when its process starts.
    A process stopped (here: the tenant disabled, seen by both workers, then enabled) and
    started again sees the change."""
    tenant = register(mt)
    api = unique("env")
    write(plugins, unique("sec"), source(WHOAMI, owner=tenant, api=api))
    secrets = f"/tenants/{tenant}/secrets"
    admin_api(mt, "PUT", f"{secrets}/TOKEN", json={"value": "old"})
    on_both(mt, f"{tenant}/{api}/", token_is("old"))
    admin_api(mt, "PUT", f"{secrets}/TOKEN", json={"value": "new"})
    admin_api(mt, "PATCH", f"/tenants/{tenant}", json={"enabled": False})
    on_both(mt, f"{tenant}/{api}/", refused)
    admin_api(mt, "PATCH", f"/tenants/{tenant}", json={"enabled": True})

    on_both(mt, f"{tenant}/{api}/", token_is("new"))


def test_secret_change_applies_from_the_next_call(mt, plugins):
    tenant = register(mt)
    api = unique("env")
    write(plugins, unique("sec"), source(WHOAMI, owner=tenant, api=api))
    secrets = f"/tenants/{tenant}/secrets"
    admin_api(mt, "PUT", f"{secrets}/TOKEN", json={"value": "old"})
    on_both(mt, f"{tenant}/{api}/", token_is("old"))
    admin_api(mt, "PUT", f"{secrets}/TOKEN", json={"value": "new"})

    on_both(mt, f"{tenant}/{api}/", token_is("new"))


# --------------------------------------------------------------------------------------------
# Removal stops the tenant's processes


@pytest.mark.parametrize("by", ["api", "cli", "disabled"])
def test_removed_tenant_has_no_process(mt, plugins, by):
    tenant, other = register(mt), register(mt)
    api, o_api = unique("who"), unique("who")
    write(plugins, unique("p"), source(WHOAMI, owner=tenant, api=api))
    write(plugins, unique("p"), source(WHOAMI, owner=other, api=o_api))
    pids = set()
    on_both(mt, f"{tenant}/{api}/", lambda r: pids.add(ok(r)["pid"]))
    on_both(mt, f"{other}/{o_api}/", answers_any)
    comm = comm_of(tenant)
    assert pids_named(comm), f"no process named {comm}"
    if by == "api":
        assert admin_api(mt, "DELETE", f"/tenants/{tenant}").status_code == 200
    elif by == "cli":
        cli(mt, "remove", tenant)
    else:
        cli(mt, "disable", tenant)
    wait_for(
        lambda: not pids_named(comm), timeout=PROC_GONE_SECS, interval=0.1, what=f"{comm} gone"
    )
    # Another tenant is still served.
    on_both(mt, f"{other}/{o_api}/", answers_any)


def answers_any(r):
    ok(r)


def is_dir(r):
    assert r.status_code == 200 and body_json(r)["status"] == "OK", describe(r)


# --------------------------------------------------------------------------------------------
# kill -9 during a burst of registrations

BURST_THREADS = 6
BURST_PER_THREAD = 40  # at most; the server is killed part of the way
KILL_ROUNDS = 3
KILL_AFTER = 25  # acknowledged registrations per round before the kill


def registration_burst(server, acknowledged, lock):
    """Starts the burst threads; returns them and the event that stops them."""
    stop = threading.Event()

    def burst(i):
        import requests

        for j in range(BURST_PER_THREAD):
            if stop.is_set():
                return
            tenant = str(uuid.uuid4())
            try:
                r = requests.post(
                    server.url + "/rest/admin/tenants",
                    json={"userid": f"b{tenant[:8]}-{i}-{j}", "uuid": tenant},
                    headers=AUTH,
                    timeout=5,
                )
            except requests.RequestException:
                return  # the server is gone
            if r.status_code == 201:
                with lock:
                    acknowledged.append(r.json()["tenant"]["uuid"])

    threads = [threading.Thread(target=burst, args=(i,), daemon=True) for i in range(BURST_THREADS)]
    for t in threads:
        t.start()
    return threads, stop


def integrity(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_kill_9_during_registrations_loses_nothing_acknowledged(start_server, tmp_path):
    data = tmp_path / "data"
    folder = tmp_path / "plugins"
    folder.mkdir()
    env = {
        "MULTI_TENANT": "True",
        "ADMIN_ID": ADMIN,
        "DPMS_WORKERS": "2",
        "DPMS_DATA_DIR": str(data),
    }
    acknowledged: list[str] = []
    lock = threading.Lock()
    for round_ in range(KILL_ROUNDS):
        s = start_server(env=env, plugin_dirs=[folder])
        before = len(acknowledged)
        threads, stop = registration_burst(s, acknowledged, lock)
        wait_for(
            lambda: len(acknowledged) >= before + KILL_AFTER,
            timeout=30,
            interval=0.002,
            what=f"{KILL_AFTER} registrations",
        )
        os.killpg(s.proc.pid, signal.SIGKILL)  # the supervisor and its workers, at once
        stop.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        s.stop()
        with lock:
            made = len(acknowledged) - before
        assert made < BURST_THREADS * BURST_PER_THREAD, f"round {round_}: killed after the burst"
        assert integrity(data / "registry.sqlite3") == "ok"

    again = start_server(env=env, plugin_dirs=[folder])
    r = admin_api(again, "GET", "/tenants")
    assert r.status_code == 200, describe(r)
    listed = {t["uuid"] for t in r.json()["tenants"]}
    with lock:
        got = list(acknowledged)
    missing = set(got) - listed
    assert not missing, f"{len(missing)} acknowledged tenants lost: {sorted(missing)[:5]}"
    # They are callers (a few: each costs a process).
    for tenant in got[:: max(1, len(got) // 3)][:3]:
        on_both(again, f"{tenant}/__dir__/", is_dir)
    assert integrity(data / "registry.sqlite3") == "ok"


# --------------------------------------------------------------------------------------------
# DPMS_TENANT_CONCURRENCY and what __dir__ says of the sandbox (SPEC §11.9)

GATED = """
__ID__ = "$owner"
import time
from vyperlogix.decorators import expose

@expose.endpoint(method="GET", API="$api")
def gated(**kwargs):
    print("$marker")
    time.sleep(3)  # long enough for the test to meet the limit meanwhile
    return "done"
"""


def test_tenant_concurrency_limit_answers_503_and_recovers(start_server, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    server = start_server(
        env={
            "MULTI_TENANT": "True",
            "ADMIN_ID": ADMIN,
            "DPMS_WORKERS": "1",
            "DPMS_TENANT_CONCURRENCY": "1",
        },
        plugin_dirs=[plugins],
    )
    tenant, other = register(server), register(server)
    api, other_api = unique("gated"), unique("o")
    marker = unique("started")
    write(plugins, unique("gmod"), source(GATED, owner=tenant, api=api, marker=marker))
    simple(plugins, unique("omod"), other_api, "other", owner=other)
    assert ok(server.get(f"{other}/{other_api}/")) == "other"
    results = {}

    def slow():
        results["slow"] = server.get(f"{tenant}/{api}/", timeout=60)

    t = threading.Thread(target=slow)
    t.start()
    try:
        # Once the first call runs (it says so in the server log), it holds the tenant's one
        # slot: another call of the tenant is refused at once.
        wait_for(lambda: marker in server.full_log(), timeout=20, what="the first call to start")
        assert "slow" not in results, "the first call ended before the second was sent"
        error(server.get(f"{tenant}/{api}/", timeout=10), 503, "overloaded")
        # Another tenant is not held up by it.
        assert ok(server.get(f"{other}/{other_api}/")) == "other"
    finally:
        t.join(60)
    assert ok(results["slow"]) == "done"
    # The slot is free again.
    assert ok(server.get(f"{tenant}/{api}/", timeout=60)) == "done"


def test_dir_says_whether_tenant_code_runs(mt, plugins):
    tenant = register(mt)
    for caller in (ADMIN, tenant):
        body = body_json(mt.get(f"{caller}/__dir__/"))
        assert body["sandbox"] == {"tenant_code_runs": True, "layers_missing": [], "mode": "strict"}, body


def processes():
    """(pid, parent pid, argv) of every process."""
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            args = (p / "cmdline").read_bytes().split(b"\0")
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(p.name), ppid, args


def zygotes(supervisor):
    """Pids of the tenant zygotes: `dpms zygote` processes whose parent is a worker."""
    workers = {pid for pid, ppid, _ in processes() if ppid == supervisor}
    return [pid for pid, ppid, args in processes() if b"zygote" in args and ppid in workers]


def test_a_dead_zygote_is_replaced(start_server, tmp_path):
    """Regression: a killed zygote stayed in use, so every later tenant process was started
    afresh (and no zygote ran again)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    server = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "1"},
        plugin_dirs=[plugins],
    )
    first, second = register(server), register(server)
    api1, api2 = unique("z1"), unique("z2")
    simple(plugins, unique("zm1"), api1, "one", owner=first)
    simple(plugins, unique("zm2"), api2, "two", owner=second)
    assert ok(server.get(f"{first}/{api1}/")) == "one"
    supervisor = server.proc.pid
    old = wait_for(lambda: zygotes(supervisor), timeout=10, what="the worker's zygote")
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not set(old) & set(zygotes(supervisor)), timeout=10, what="the zygote to die")
    assert ok(server.get(f"{second}/{api2}/")) == "two"
    new = wait_for(lambda: zygotes(supervisor), timeout=10, what="a new zygote")
    assert not set(new) & set(old), (old, new)
    assert ok(server.get(f"{first}/{api1}/")) == "one"

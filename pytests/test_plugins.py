"""SPEC §1 (plugins) and §2 (freshness / hot plug), plus isolation between requests."""

import json
import os
import pathlib
import subprocess
import threading
import uuid
from urllib.parse import quote

import pytest
import requests

from dpms_helpers import (
    ROUTED_METHODS,
    SAMPLE_PLUGINS,
    TIMEOUT,
    allow_set,
    api_name,
    describe,
    error,
    find_import,
    ok,
    source,
    unique,
    wait_for,
    write_atomic,
)

RELEASE_WAIT = 20  # seconds a blocked plugin waits for the test's release file at most


@pytest.fixture(scope="module")
def one_worker_server(start_module_server):
    return start_module_server(env={"DPMS_WORKERS": "1"})


@pytest.fixture(params=["shared", "one-worker"])
def any_server(request, server):
    """The shared server, and a dedicated one with a single worker process (DPMS_WORKERS=1)."""
    if request.param == "shared":
        return server
    return request.getfixturevalue("one_worker_server")


@pytest.fixture(scope="module")
def always_server(start_module_server):
    return start_module_server(env={"DPMS_RELOAD": "always"})


@pytest.fixture(params=["changed", "always"])
def reload_server(request, server):
    """DPMS_RELOAD=changed (the shared server, default) and =always (a dedicated server)."""
    if request.param == "changed":
        return server
    return request.getfixturevalue("always_server")


def worker_of(r):
    return r.headers.get("X-Dpms-Worker")


# --------------------------------------------------------------------------------------------
# Decorator forms

FORMS = [
    # name, decorator arguments before API=..., methods it must answer
    ("pipe", 'method="GET|POST", ', {"GET", "POST"}),
    ("lower", 'method="get|put", ', {"GET", "PUT"}),
    ("spaces", 'method=" post | Delete ", ', {"POST", "DELETE"}),
    ("list", 'method=["GET", "PATCH"], ', {"GET", "PATCH"}),
    ("tuple", 'method=("PUT",), ', {"PUT"}),
    ("list_pipe", 'method=["get|post", " delete "], ', {"GET", "POST", "DELETE"}),
    ("absent", "", {"GET"}),
    ("all", 'method="GET|POST|PUT|DELETE|PATCH", ', set(ROUTED_METHODS)),
    ("meta", 'method="GET", version="2", tags=["x"], ', {"GET"}),
]


@pytest.fixture(scope="module")
def forms_plugin(server, write_module_plugin):
    mod = unique("forms")
    tag = uuid.uuid4().hex[:8]
    lines = ["from dpms import expose", "from vyperlogix.decorators import expose as compat_expose", ""]
    for name, args, _ in FORMS:
        lines += [
            f'@expose.endpoint({args}API="forms-{tag}-{name}")',
            f"def f_{name}(*args, **kwargs):",
            f'    return "{name}"',
            "",
        ]
    lines += [
        "@expose.endpoint",
        f"def bare_{tag}():",
        '    return "bare"',
        "",
        "@expose.endpoint()",
        f"def noargs_{tag}():",
        '    return "noargs"',
        "",
        f'@compat_expose.endpoint(method="POST", API="forms-{tag}-compat")',
        "def f_compat(*args, **kwargs):",
        '    return "compat"',
        "",
    ]
    write_module_plugin(mod, "\n".join(lines))
    return server, mod, tag


ALL_FORMS = [(f"forms-{{tag}}-{n}", f"f_{n}", m, n) for n, _, m in FORMS] + [
    ("bare_{tag}", "bare_{tag}", {"GET"}, "bare"),
    ("noargs_{tag}", "noargs_{tag}", {"GET"}, "noargs"),
    ("forms-{tag}-compat", "f_compat", {"POST"}, "compat"),
]


@pytest.mark.parametrize("api,func,methods,result", ALL_FORMS, ids=[f[3] for f in ALL_FORMS])
def test_decorator_forms(forms_plugin, api, func, methods, result):
    server, mod, tag = forms_plugin
    api, func = api.format(tag=tag), func.format(tag=tag)
    for method in ROUTED_METHODS:
        r = server.request(method, f"{api}/")
        if method in methods:
            assert ok(r, f"{mod}.{func}") == result
        else:
            body = error(r, 404, "method_undefined")
            assert body["status"] == f"{api} is undefined for {method}."
            assert (allow_set(r) & set(ROUTED_METHODS)) == methods
    endpoints = server.dir()["endpoints"]
    for method in ROUTED_METHODS:
        if method in methods:
            entry = endpoints[method][api]
            assert entry["func"] == func and entry["module"] == mod
        else:
            assert api not in endpoints.get(method, {})


BAD_DECORATIONS = [
    ("fetch", 'method="FETCH", API="{p}-fetch"', "{p}-fetch"),
    ("trace", 'method="GET|TRACE", API="{p}-trace"', "{p}-trace"),
    ("head", 'method="HEAD", API="{p}-head"', "{p}-head"),
    ("int", 'method=42, API="{p}-int"', "{p}-int"),
    ("none_in_list", 'method=["GET", None], API="{p}-none"', "{p}-none"),
    ("api_int", "API=42", "42"),
    ("api_list", 'API=["{p}-x"]', "bad_api_list_{p}"),
]


@pytest.fixture(scope="module")
def bad_plugin(server, write_module_plugin):
    mod = unique("baddeco")
    p = f"bad{uuid.uuid4().hex[:8]}"
    lines = ["from dpms import expose", ""]
    for name, args, _ in BAD_DECORATIONS:
        lines += [f"@expose.endpoint({args.format(p=p)})", f"def bad_{name}_{p}():", "    return 1", ""]
    lines += [f'@expose.endpoint(API="{p}-good")', "def good():", '    return "good"', ""]
    write_module_plugin(mod, "\n".join(lines))
    return server, mod, p


@pytest.mark.parametrize("name,args,path", BAD_DECORATIONS, ids=[b[0] for b in BAD_DECORATIONS])
def test_bad_decoration_only_that_function(bad_plugin, name, args, path):
    server, mod, p = bad_plugin
    assert ok(server.get(f"{p}-good/"), f"{mod}.good") == "good"
    r = server.get(quote(path.format(p=p)) + "/")
    error(r, 404, "api_undefined")
    d = server.dir()
    entry = d["imports"][mod]
    errors = entry.get("errors")
    assert errors, entry
    assert f"bad_{name}_{p}" in json.dumps(errors), errors
    assert all(e.get("func") != f"bad_{name}_{p}" for m in d["endpoints"].values() for e in m.values())


# --------------------------------------------------------------------------------------------
# What is exposed

HELPER_SRC = """
from dpms import expose


@expose.endpoint(API="$p-shared")
def shared_fn():
    return "shared"
"""

EXPOSED_SRC = """
from dpms import expose
from $helper import shared_fn
import $helper

CONST = 5


@expose.endpoint(API="$p-visible")
def visible():
    \"\"\"Visible endpoint.

    More text.\"\"\"
    return "visible"


def plain():
    return "plain"


@expose.endpoint(API="$p-dunder")
def __hidden():
    return "hidden"


@expose.endpoint(API="$p-single")
def _single():
    return "single"


@expose.endpoint(API="$p-cls")
class Klass:
    pass


class Holder:
    @expose.endpoint(API="$p-meth")
    def meth(self):
        return "meth"

    @staticmethod
    @expose.endpoint(API="$p-static")
    def static():
        return "static"
"""


@pytest.fixture(scope="module")
def exposed(server, write_module_plugin):
    p = f"ex{uuid.uuid4().hex[:8]}"
    helper, mod = unique("exhelper"), unique("exposed")
    write_module_plugin(helper, source(HELPER_SRC, p=p))
    write_module_plugin(mod, source(EXPOSED_SRC, p=p, helper=helper))
    return server, mod, helper, p


@pytest.mark.parametrize(
    "suffix,routable",
    [("visible", True), ("single", True), ("dunder", False), ("cls", False), ("meth", False),
     ("static", False)],
)
def test_exposed_rules(exposed, suffix, routable):
    server, mod, helper, p = exposed
    r = server.get(f"{p}-{suffix}/")
    if routable:
        assert ok(r) == suffix
    else:
        error(r, 404, "api_undefined")
        assert f"{p}-{suffix}" not in json.dumps(server.dir()["endpoints"])


@pytest.mark.parametrize("path", ["plain/", "CONST/", "Klass/", "shared_fn/", "__hidden/"])
def test_undecorated_and_globals_not_routable(exposed, path):
    server, mod, helper, p = exposed
    r = server.get(f"{mod}/{path}")
    body = error(r, 404, "api_undefined")
    assert body["status"] == f"{path.rstrip('/')} is undefined in {mod}."


def test_imported_function_belongs_to_its_own_module(exposed):
    server, mod, helper, p = exposed
    # Decorated in the helper, imported by the plugin: only the helper publishes it (no 409).
    assert ok(server.get(f"{p}-shared/"), f"{helper}.shared_fn") == "shared"
    body = error(server.get(f"{mod}/{p}-shared/"), 404, "api_undefined")
    assert body["status"] == f"{p}-shared is undefined in {mod}."
    assert server.dir()["endpoints"]["GET"][f"{p}-shared"]["module"] == helper


def test_dir_lists_public_functions(exposed):
    server, mod, helper, p = exposed
    d = server.dir()
    names = d["modules"][mod]
    assert {"visible", "plain", "_single"} <= set(names), names
    assert not [n for n in names if n.startswith("__")], names
    assert "CONST" not in names
    entry = d["endpoints"]["GET"][f"{p}-visible"]
    assert entry["doc"] == "Visible endpoint."
    assert entry["signature"] == "()"
    assert entry["alias"] is None
    imp = d["imports"][mod]
    assert imp["status"] == "OK"
    assert "visible" in imp["funcs"]
    assert imp["alias"] == ""
    assert os.path.realpath(imp["file"]) == os.path.realpath(server.plugin_dir / f"{mod}.py")


def test_no_dunder_names_anywhere(server, exposed):
    d = server.dir()
    for mod, names in d["modules"].items():
        assert not mod.startswith("__")
        assert not [n for n in names if n.startswith("__")], (mod, names)
    for method, entries in d["endpoints"].items():
        for api, entry in entries.items():
            assert not entry["func"].startswith("__"), entry
    for name, entry in d["imports"].items():
        for f in entry.get("funcs", []) if isinstance(entry, dict) else []:
            assert not f.startswith("__"), (name, f)


# --------------------------------------------------------------------------------------------
# __dir__ on the samples, __alias__


def test_dir_samples(server):
    d = server.dir()
    assert d["status"] == "OK" and d["has_plugins"] is True
    for key in ("modules", "endpoints", "imports", "aliases"):
        assert isinstance(d[key], dict), key
    hw = d["endpoints"]["GET"]["hello-world"]
    assert hw["func"] == "foo" and hw["module"] == "module1" and hw["alias"] == "v1"
    assert hw["doc"] == "Echo the call: positional args by index and every keyword argument."
    assert hw["signature"] == "(*args, **kwargs)"
    for method in ("PUT", "POST"):
        assert d["endpoints"][method]["hello-world"]["func"] == "foo"
    assert "hello-world" not in d["endpoints"].get("DELETE", {})
    assert d["endpoints"]["DELETE"]["sample-one2a"]["func"] == "sample12a"
    b2 = d["endpoints"]["GET"]["bar2-none"]
    assert b2["module"] == "module2" and b2["alias"] is None and b2["signature"] == "()"
    assert {"foo", "bar", "private_function", "sample1", "sample12", "sample12a", "sample2"} <= set(
        d["modules"]["module1"]
    )
    assert "__private_function__" not in d["modules"]["module1"]
    assert "echo" in d["modules"]["echo_helper"]
    m1 = d["imports"]["module1"]
    assert m1["status"] == "OK" and m1["alias"] == "v1"
    assert {"foo", "bar", "sample1"} <= set(m1["funcs"])
    assert m1["file"].endswith("/module1.py")
    assert d["imports"]["module2"]["alias"] == ""
    assert d["imports"]["echo_helper"]["status"] == "OK"
    assert d["aliases"]["v1"] == "module1"


@pytest.mark.parametrize("segment", ["module1", "v1", "module2"])
def test_module_dir(server, segment):
    module = "module2" if segment == "module2" else "module1"
    d = server.dir(f"{segment}/__dir__/")
    assert d["status"] == "OK"
    assert set(d["modules"]) == {module}
    assert set(d["imports"]) == {module}
    apis = [e for m in d["endpoints"].values() for e in m.values()]
    assert apis and all(e["module"] == module for e in apis)
    assert d["aliases"] == ({"v1": "module1"} if module == "module1" else {})
    full = server.dir()
    # `schedule` is each worker's own measurement: the two requests may reach different workers.
    def same(entry):
        return {k: v for k, v in entry.items() if k != "schedule"}

    for method, entries in d["endpoints"].items():
        for api, entry in entries.items():
            assert same(full["endpoints"][method][api]) == same(entry)


def test_unknown_module_dir_is_404(server):
    r = server.get(f"{unique('nomod')}/__dir__/")
    assert r.status_code == 404, describe(r)


def test_alias(server, write_plugin):
    mod, alias = unique("aliased"), unique("al")
    api = api_name("alias")
    write_plugin(
        mod,
        source(
            """
            from dpms import expose
            __alias__ = "$alias"

            @expose.endpoint(method="GET|POST", API="$api")
            def f(*args, **kwargs):
                return kwargs.get("module")
            """,
            alias=alias,
            api=api,
        ),
    )
    assert ok(server.get(f"{alias}/{api}/"), f"{mod}.f") == alias
    assert ok(server.post(f"{mod}/{api}/"), f"{mod}.f") == mod
    assert ok(server.get(f"{api}/"), f"{mod}.f") is None
    d = server.dir()
    assert d["aliases"][alias] == mod
    assert d["endpoints"]["GET"][api]["alias"] == alias
    assert d["imports"][mod]["alias"] == alias
    sub = server.dir(f"{alias}/__dir__/")
    assert set(sub["modules"]) == {mod}
    body = error(server.get(f"{mod}/nope-{alias}/"), 404, "api_undefined")
    assert body["status"] == f"nope-{alias} is undefined in {mod}."


# --------------------------------------------------------------------------------------------
# Imports between plugins, sys.path, stdlib shadows, broken files

HTOKEN_SRC = """
import uuid
from dpms import expose

TOKEN = uuid.uuid4().hex
VALUE = $value


@expose.endpoint(API="$p-htoken")
def token():
    return TOKEN
"""

USER_SRC = """
import sys
import echo_helper
import $helper
from $helper import VALUE as IMPORTED_VALUE
from dpms import expose

AT_IMPORT = $helper.VALUE


@expose.endpoint(API="$p-use")
def use():
    h = $helper
    return {
        "token": h.TOKEN,
        "value": h.VALUE,
        "at_import": AT_IMPORT,
        "imported": IMPORTED_VALUE,
        "same": sys.modules.get("$helper") is h,
        "file": h.__file__,
        "sibling": echo_helper.echo([1], {"a": 2}),
    }
"""


def test_sibling_import_same_module_and_reimport(server, write_plugin):
    p = f"imp{uuid.uuid4().hex[:8]}"
    helper, user = unique("helper"), unique("user")
    write_plugin(helper, source(HTOKEN_SRC, p=p, value=1))
    write_plugin(user, source(USER_SRC, p=p, helper=helper))
    with requests.Session() as s:
        first = None
        for _ in range(20):  # same keep-alive connection: same worker; check the header anyway
            r1 = s.get(server.abs(f"{p}-use/"), timeout=TIMEOUT)
            r2 = s.get(server.abs(f"{p}-htoken/"), timeout=TIMEOUT)
            if worker_of(r1) == worker_of(r2):
                first = (r1, r2)
                break
        assert first, "no two answers from the same worker"
        used = ok(first[0], f"{user}.use")
        assert used["token"] == ok(first[1], f"{helper}.token")  # one module object per file
        assert used["value"] == used["at_import"] == used["imported"] == 1
        assert used["same"] is True
        assert os.path.realpath(used["file"]) == os.path.realpath(server.plugin_dir / f"{helper}.py")
        assert used["sibling"] == {"args": {"0": 1}, "kwargs": {"a": 2}}
        # A change to the helper re-imports it and the plugin that imported it.
        write_plugin(helper, source(HTOKEN_SRC, p=p, value=2))
        used2 = ok(s.get(server.abs(f"{p}-use/"), timeout=TIMEOUT), f"{user}.use")
        assert used2["value"] == used2["at_import"] == used2["imported"] == 2
        assert used2["same"] is True
        assert used2["token"] != used["token"]


def test_sys_path(server, write_plugin):
    mod, api = unique("syspath"), api_name("syspath")
    write_plugin(
        mod,
        source(
            """
            import os, sys
            from dpms import expose

            @expose.endpoint(API="$api")
            def paths():
                return {"path": sys.path, "os": os.__file__, "json": __import__("json").__file__}
            """,
            api=api,
        ),
    )
    res = ok(server.get(f"{api}/"))
    path = [os.path.realpath(p) for p in res["path"]]
    mine = os.path.realpath(server.plugin_dir)
    assert mine in path
    assert "/usr/lib/python3.11" in path
    assert path.index("/usr/lib/python3.11") < path.index(mine)  # appended after the stdlib
    if server.plugin_dirs:
        samples = os.path.realpath(SAMPLE_PLUGINS)
        assert samples in path and path.index(samples) < path.index(mine)
    assert res["os"].startswith("/usr/lib/python3.11/")
    assert res["json"].startswith("/usr/lib/python3.11/")


BROKEN = [
    ("syntax", "x = 1\ny = 2\ndef f(:\n    pass\n", ["SyntaxError", "line 3"]),
    ("indent", "x = 1\n    y = 2\n", ["IndentationError", "line 2"]),
    ("raise", "raise RuntimeError('at import')\n", ["RuntimeError: at import"]),
    ("missing", "import no_such_module_dpms_xyz\n", ["ModuleNotFoundError", "no_such_module_dpms_xyz"]),
    ("exit", "import sys\nsys.exit('leaving')\n", ["SystemExit"]),
]


@pytest.mark.parametrize("kind,text,mentions", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_reported_others_unaffected(server, write_plugin, kind, text, mentions):
    good, bad = unique("good"), unique("broken")
    good_api, bad_api = api_name("good"), api_name("brokenapi")
    write_plugin(
        good,
        source(
            """
            from dpms import expose

            @expose.endpoint(API="$api")
            def g():
                return "good"
            """,
            api=good_api,
        ),
    )
    if kind in ("raise", "missing", "exit"):
        # endpoints declared before the failure are not published either
        text = (
            "from dpms import expose\n\n@expose.endpoint(API='%s')\ndef f():\n    return 1\n\n" % bad_api
        ) + text
    write_plugin(bad, text)
    d = server.dir()
    entry = find_import(d, bad)
    assert entry is not None, d["imports"]
    assert entry["status"] == "error", entry
    for word in mentions:
        assert word in entry["error"], entry
    if kind in ("raise", "missing", "exit"):
        # Issue 10: the file that mentions the API is named, with its error.
        body = error(server.get(f"{bad_api}/"), 404, "api_undefined", extra=("hint",))
        assert f"`{bad}.py`" in body["hint"]
    else:
        error(server.get(f"{bad_api}/"), 404, "api_undefined")
    assert ok(server.get(f"{good_api}/")) == "good"
    assert ok(server.get("hello-world/"))["response"] == "hello-world"
    assert d["imports"]["module1"]["status"] == "OK"


BREAKS = [
    ("syntax", "def v(:\n", "SyntaxError"),
    ("raise", "raise ValueError('broken at import')\n", "ValueError: broken at import"),
]


@pytest.mark.parametrize("kind,tail,exception", BREAKS, ids=[b[0] for b in BREAKS])
def test_file_that_stops_importing(reload_server, write_plugin, kind, tail, exception):
    srv = reload_server
    mod, api, other = unique("breaks"), api_name("breaks"), api_name("other")
    tmpl = """
    from dpms import expose

    @expose.endpoint(API="$api")
    def v():
        return "$ver"
    """
    write_plugin(mod, source(tmpl, api=api, ver="v1"), folder=srv.plugin_dir)
    write_plugin(unique("bystander"), source(tmpl, api=other, ver="other"), folder=srv.plugin_dir)
    assert ok(srv.get(f"{api}/")) == "v1"
    write_plugin(mod, source(tmpl, api=api, ver="v2") + tail, folder=srv.plugin_dir)
    for _ in range(2):  # stays broken until fixed
        body = error(srv.get(f"{api}/"), 500, "plugin_import_error", extra=("exception",))
        assert exception in body["exception"], body
        assert ok(srv.get(f"{other}/")) == "other"
        assert ok(srv.get("hello-world/"))["response"] == "hello-world"
    write_plugin(mod, source(tmpl, api=api, ver="v3"), folder=srv.plugin_dir)
    assert ok(srv.get(f"{api}/")) == "v3"


def test_stdlib_shadows_refused(start_server, plugin_folder):
    p = uuid.uuid4().hex[:8]
    for stem in ("json", "colorsys"):
        write_atomic(
            plugin_folder / f"{stem}.py",
            source(
                """
                from dpms import expose

                @expose.endpoint(API="shadow-$stem-$p")
                def shadow():
                    return "shadow"
                """,
                stem=stem,
                p=p,
            ),
        )
    good = unique("fine")
    write_atomic(
        plugin_folder / f"{good}.py",
        source(
            """
            import json
            from dpms import expose

            @expose.endpoint(API="fine-$p")
            def fine():
                return json.__file__
            """,
            p=p,
        ),
    )
    srv = start_server(plugin_dirs=[SAMPLE_PLUGINS, plugin_folder])
    d = srv.dir()
    for stem in ("json", "colorsys"):
        body = error(srv.get(f"shadow-{stem}-{p}/"), 404, "api_undefined", extra=("hint",))
        assert f"`{stem}.py`" in body["hint"]
        entry = find_import(d, stem)
        assert entry is not None, d["imports"]
        assert entry.get("status") != "OK", entry
        assert stem in json.dumps(entry), entry
    assert ok(srv.get(f"fine-{p}/")).startswith("/usr/lib/python3.11/")
    assert ok(srv.get("hello-world/"))["response"] == "hello-world"
    # also when the shadow appears while the server runs
    write_atomic(plugin_folder / "fnmatch.py", "def x():\n    return 1\n")
    try:
        entry = find_import(srv.dir(), "fnmatch")
        assert entry is not None and entry.get("status") != "OK", entry
        assert ok(srv.get("hello-world/"))["response"] == "hello-world"
    finally:
        (plugin_folder / "fnmatch.py").unlink()


def test_same_stem_in_two_folders(start_server, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    stem, api = unique("dup"), api_name("dup")
    tmpl = """
    from dpms import expose

    @expose.endpoint(API="$api")
    def which():
        return "$which"
    """
    write_atomic(first / f"{stem}.py", source(tmpl, api=api, which="first"))
    write_atomic(second / f"{stem}.py", source(tmpl, api=api, which="second"))
    srv = start_server(plugin_dirs=[SAMPLE_PLUGINS, first, second])
    assert ok(srv.get(f"{api}/"), f"{stem}.which") == "first"
    d = srv.dir()
    assert os.path.realpath(d["imports"][stem]["file"]) == os.path.realpath(first / f"{stem}.py")
    assert str(second) in json.dumps(d) or os.path.realpath(second) in json.dumps(d)


@pytest.mark.parametrize("var", ["VIRTUAL_ENV", "DPMS_VENV"])
def test_third_party_packages_from_venv(start_server, plugin_folder, tmp_path, var):
    venv = tmp_path / "venv"
    subprocess.run(
        ["/usr/bin/python3.11", "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    site = venv / "lib" / "python3.11" / "site-packages"
    pkg = unique("thirdparty")
    (site / pkg).mkdir(parents=True)
    (site / pkg / "__init__.py").write_text("VALUE = 'from the venv'\n")
    api = api_name("venv")
    write_atomic(
        plugin_folder / f"{unique('usesvenv')}.py",
        source(
            """
            import os
            import $pkg
            from dpms import expose

            @expose.endpoint(API="$api")
            def f():
                return {"value": $pkg.VALUE, "os": os.__file__}
            """,
            pkg=pkg,
            api=api,
        ),
    )
    srv = start_server(env={var: str(venv)}, plugin_dirs=[SAMPLE_PLUGINS, plugin_folder])
    res = ok(srv.get(f"{api}/"))
    assert res["value"] == "from the venv"
    assert res["os"].startswith("/usr/lib/python3.11/")  # the stdlib never comes from the venv


# --------------------------------------------------------------------------------------------
# Freshness (§2)

VERSION_SRC = """
from dpms import expose


@expose.endpoint(API="$api")
def v():
    return "$ver"
"""


@pytest.mark.parametrize("write_mode", ["rename", "in_place"])
def test_edits_seen_by_the_next_request(reload_server, write_plugin, write_mode):
    srv = reload_server
    mod, api = unique("fresh"), api_name("fresh")
    path = srv.plugin_dir / f"{mod}.py"
    stale = []
    for i in range(25):
        text = source(VERSION_SRC, api=api, ver=f"{i:04d}")  # every version has the same size
        if write_mode == "rename" or i == 0:
            write_plugin(mod, text, folder=srv.plugin_dir)
        else:
            with open(path, "w", encoding="utf-8") as f:  # completed before the request is sent
                f.write(text)
        got = ok(srv.get(f"{api}/"), f"{mod}.v")
        if got != f"{i:04d}":
            stale.append((i, got))
    assert stale == [], f"stale answers (edit, answer): {stale}"


def test_new_file_delete_and_rename_api(reload_server, write_plugin):
    srv = reload_server
    mod, api, api2 = unique("plug"), api_name("plug"), api_name("plug2")
    error(srv.get(f"{api}/"), 404, "api_undefined")
    write_plugin(mod, source(VERSION_SRC, api=api, ver="one"), folder=srv.plugin_dir)
    assert ok(srv.get(f"{api}/")) == "one"  # the very next request
    assert ok(srv.get(f"{mod}/{api}/")) == "one"
    write_plugin(mod, source(VERSION_SRC, api=api2, ver="two"), folder=srv.plugin_dir)
    error(srv.get(f"{api}/"), 404, "api_undefined")
    assert ok(srv.get(f"{api2}/")) == "two"
    write_plugin.delete(mod, folder=srv.plugin_dir)
    error(srv.get(f"{api2}/"), 404, "api_undefined")
    assert srv.get(f"{mod}/{api2}/").status_code == 404
    assert find_import(srv.dir(), mod) is None
    write_plugin(mod, source(VERSION_SRC, api=api, ver="back"), folder=srv.plugin_dir)
    assert ok(srv.get(f"{api}/")) == "back"


COUNTER_SRC = """
import uuid
from dpms import expose

TOKEN = uuid.uuid4().hex
COUNT = 0


@expose.endpoint(API="$api")
def count():
    global COUNT
    COUNT += 1
    return [TOKEN, COUNT]
"""


def counter_calls(srv, api, n=6):
    with requests.Session() as s:
        out = []
        for _ in range(n):
            r = s.get(srv.abs(f"{api}/"), timeout=TIMEOUT)
            out.append((worker_of(r), ok(r)))
        return out


def test_globals_persist_in_unchanged_module(server, write_plugin):
    api = api_name("count")
    write_plugin(unique("counter"), source(COUNTER_SRC, api=api))
    calls = counter_calls(server, api)
    by_worker = {}
    for worker, (token, count) in calls:
        by_worker.setdefault(worker, []).append((token, count))
    for worker, seen in by_worker.items():
        assert len({t for t, _ in seen}) == 1, (worker, seen)  # not re-imported
        counts = [c for _, c in seen]
        assert counts == sorted(counts) and len(set(counts)) == len(counts), (worker, seen)
        assert counts[-1] >= len(counts)


def test_always_reimports_every_call(always_server, write_plugin):
    api = api_name("count")
    write_plugin(unique("counter"), source(COUNTER_SRC, api=api), folder=always_server.plugin_dir)
    calls = counter_calls(always_server, api)
    assert [c for _, (_, c) in calls] == [1] * len(calls)
    assert len({t for _, (t, _) in calls}) == len(calls)


def test_never_keeps_first_version(start_server, plugin_folder, write_plugin):
    mod, api, late = unique("frozen"), api_name("frozen"), api_name("late")
    write_plugin(mod, source(VERSION_SRC, api=api, ver="first"), folder=plugin_folder)
    srv = start_server(env={"DPMS_RELOAD": "never"}, plugin_dirs=[SAMPLE_PLUGINS, plugin_folder])
    assert ok(srv.get(f"{api}/")) == "first"
    write_plugin(mod, source(VERSION_SRC, api=api, ver="other"), folder=plugin_folder)
    write_plugin(unique("late"), source(VERSION_SRC, api=late, ver="late"), folder=plugin_folder)
    for _ in range(3):
        assert ok(srv.get(f"{api}/")) == "first"
        error(srv.get(f"{late}/"), 404, "api_undefined")


def test_never_module_globals_live(start_server, plugin_folder, write_plugin):
    api = api_name("count")
    write_plugin(unique("counter"), source(COUNTER_SRC, api=api), folder=plugin_folder)
    srv = start_server(env={"DPMS_RELOAD": "never"}, plugin_dirs=[SAMPLE_PLUGINS, plugin_folder])
    by_worker = {}
    for worker, (token, count) in counter_calls(srv, api):
        by_worker.setdefault(worker, []).append(count)
    for counts in by_worker.values():
        assert counts == sorted(counts) and len(set(counts)) == len(counts)


# --------------------------------------------------------------------------------------------
# async, blocking plugins, isolation

ASYNC_SRC = """
import asyncio
import os
import time
from dpms import expose


@expose.endpoint(API="$api-simple")
async def simple(x="none"):
    await asyncio.sleep(0.01)
    return {"x": x, "async": True}


@expose.endpoint(API="$api-meet")
async def meet(name, other, folder):
    # Say "I am here", then wait (asynchronously) until the other call is here too.
    open(os.path.join(folder, name), "w").close()
    deadline = time.monotonic() + $wait
    while not os.path.exists(os.path.join(folder, other)):
        if time.monotonic() > deadline:
            return "timed out waiting for " + other
        await asyncio.sleep(0.01)
    return "met " + other
"""


def test_async_endpoint_simple(server, write_plugin):
    api = api_name("async")
    mod = unique("asyncmod")
    write_plugin(mod, source(ASYNC_SRC, api=api, wait=RELEASE_WAIT))
    assert ok(server.get(f"{api}-simple/?x=1"), f"{mod}.simple") == {"x": "1", "async": True}


def test_two_async_calls_wait_for_each_other(any_server, write_plugin, tmp_path):
    srv = any_server
    api = api_name("async")
    write_plugin(unique("asyncmod"), source(ASYNC_SRC, api=api, wait=RELEASE_WAIT), folder=srv.plugin_dir)
    results = {}

    def call(name, other):
        try:
            results[name] = srv.get(
                f"{api}-meet/", params={"name": name, "other": other, "folder": str(tmp_path)}
            )
        except Exception as e:  # reported below
            results[name] = e

    threads = [threading.Thread(target=call, args=ab) for ab in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RELEASE_WAIT + TIMEOUT)
    assert ok(results["a"]) == "met b"
    assert ok(results["b"]) == "met a"


BLOCK_SRC = """
import os
import time
from dpms import expose


@expose.endpoint(API="$api-slow")
def slow(started, release):
    open(started, "w").close()
    deadline = time.monotonic() + $wait
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return "never released"
        time.sleep(0.01)
    return "released"


@expose.endpoint(API="$api-fast")
def fast():
    return "fast"


@expose.endpoint(API="$api-raise")
def boom():
    raise ValueError("boom")


@expose.endpoint(API="$api-cycle")
def cycle():
    x = []
    x.append(x)
    return x
"""


class SlowCall:
    """A call to the blocking endpoint in a thread; ``release()`` lets it finish."""

    def __init__(self, srv, api, folder: pathlib.Path):
        self.started = folder / f"started-{uuid.uuid4().hex}"
        self.release_file = folder / f"release-{uuid.uuid4().hex}"
        self.result = None
        self.thread = threading.Thread(
            target=self._run,
            args=(srv, api),
            daemon=True,
        )

    def _run(self, srv, api):
        try:
            self.result = srv.get(
                f"{api}-slow/",
                params={"started": str(self.started), "release": str(self.release_file)},
                timeout=RELEASE_WAIT + TIMEOUT,
            )
        except Exception as e:
            self.result = e

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.started.exists() or not self.thread.is_alive(), RELEASE_WAIT,
                 what="the slow plugin to start")
        assert self.started.exists(), f"slow call ended before starting: {self.result!r}"
        return self

    def pending(self):
        return self.thread.is_alive()

    def release(self):
        self.release_file.touch()
        self.thread.join(RELEASE_WAIT + TIMEOUT)
        return self.result

    def __exit__(self, *exc):
        self.release_file.touch()
        self.thread.join(RELEASE_WAIT + TIMEOUT)


@pytest.mark.parametrize("fast_target", ["same_module", "other_module"])
def test_blocking_plugin_does_not_stop_others(any_server, write_plugin, tmp_path, fast_target):
    srv = any_server
    api = api_name("block")
    mod = unique("blocker")
    write_plugin(mod, source(BLOCK_SRC, api=api, wait=RELEASE_WAIT), folder=srv.plugin_dir)
    with SlowCall(srv, api, tmp_path) as slow:
        if fast_target == "same_module":
            assert ok(srv.get(f"{api}-fast/", timeout=10), f"{mod}.fast") == "fast"
        else:
            assert ok(srv.get("hello-world/", timeout=10))["response"] == "hello-world"
        assert slow.pending(), "the slow call finished before it was released"
        r = slow.release()
    assert ok(r, f"{mod}.slow") == "released"


def test_failures_affect_only_their_own_request(any_server, write_plugin, tmp_path):
    srv = any_server
    api = api_name("iso")
    write_plugin(unique("isolated"), source(BLOCK_SRC, api=api, wait=RELEASE_WAIT), folder=srv.plugin_dir)
    with SlowCall(srv, api, tmp_path) as slow:
        error(srv.get(f"{api}-raise/", timeout=10), 500, "plugin_error", extra=("exception",))
        error(srv.get(f"{api}-cycle/", timeout=10), 500, "unserializable_result")
        assert ok(srv.get(f"{api}-fast/", timeout=10)) == "fast"
        assert ok(srv.get("bar-none/", timeout=10)) == "bar-none again"
        assert slow.pending()
        r = slow.release()
    assert ok(r) == "released"
    assert ok(srv.get(f"{api}-fast/")) == "fast"


# --------------------------------------------------------------------------------------------
# What counts as a plugin file; module identity; output


def test_only_top_level_py_files_are_plugins(server, write_plugin):
    p = uuid.uuid4().hex[:10]
    tmpl = """
    from dpms import expose

    @expose.endpoint(API="$api")
    def f():
        return "$api"
    """
    sub = server.plugin_dir / f"sub_{p}"
    sub.mkdir()
    try:
        write_atomic(sub / f"nested_{p}.py", source(tmpl, api=f"nested-{p}"))  # no recursion
        write_atomic(server.plugin_dir / f"notpy_{p}.txt", source(tmpl, api=f"txt-{p}"))
        write_atomic(server.plugin_dir / f"backup_{p}.py~", source(tmpl, api=f"backup-{p}"))
        write_plugin(f"real_{p}", source(tmpl, api=f"real-{p}"))
        assert ok(server.get(f"real-{p}/")) == f"real-{p}"
        for api in (f"nested-{p}", f"txt-{p}", f"backup-{p}"):
            error(server.get(f"{api}/"), 404, "api_undefined")
        d = server.dir()
        assert find_import(d, f"nested_{p}") is None
        assert f"nested_{p}" not in d["modules"]
    finally:
        for f in (sub / f"nested_{p}.py", server.plugin_dir / f"notpy_{p}.txt",
                  server.plugin_dir / f"backup_{p}.py~"):
            f.unlink(missing_ok=True)
        sub.rmdir()


def test_init_py_is_not_a_plugin(start_server, plugin_folder):
    p = uuid.uuid4().hex[:10]
    write_atomic(
        plugin_folder / "__init__.py",
        source('from dpms import expose\n\n@expose.endpoint(API="init-$p")\ndef f():\n    return 1\n', p=p),
    )
    srv = start_server(plugin_dirs=[SAMPLE_PLUGINS, plugin_folder])
    error(srv.get(f"init-{p}/"), 404, "api_undefined")
    assert "__init__" not in srv.dir()["modules"]
    assert ok(srv.get("hello-world/"))["response"] == "hello-world"


def test_editing_another_module_keeps_globals(server, write_plugin):
    api = api_name("count")
    write_plugin(unique("counter"), source(COUNTER_SRC, api=api))
    with requests.Session() as s:
        first = s.get(server.abs(f"{api}/"), timeout=TIMEOUT)
        token, count = ok(first)
        other = unique("other")
        write_plugin(other, source(VERSION_SRC, api=api_name("other"), ver="x"))
        write_plugin(other, source(VERSION_SRC, api=api_name("other"), ver="y"))
        again = s.get(server.abs(f"{api}/"), timeout=TIMEOUT)
        if worker_of(again) == worker_of(first):
            assert ok(again) == [token, count + 1]


MODULE_SRC = """
from __future__ import annotations

import dataclasses
import sys
from dpms import expose


@dataclasses.dataclass
class Item:
    name: str
    qty: int = 1


@expose.endpoint(API="$api")
def info():
    me = sys.modules.get(__name__)
    return {
        "name": __name__,
        "registered": me is not None and me.__dict__ is globals(),
        "item": dataclasses.asdict(Item("x")),
        "file": __file__,
    }
"""


def test_module_identity_and_dataclasses(server, write_plugin):
    mod, api = unique("ident"), api_name("ident")
    write_plugin(mod, source(MODULE_SRC, api=api))
    res = ok(server.get(f"{api}/"), f"{mod}.info")
    assert res["name"] == mod
    assert res["registered"] is True
    assert res["item"] == {"name": "x", "qty": 1}
    assert os.path.realpath(res["file"]) == os.path.realpath(server.plugin_dir / f"{mod}.py")


NOISY_SRC = """
import sys
from dpms import expose

print("noise at import " * 100)
print("more noise " * 1000, file=sys.stderr)


@expose.endpoint(API="$api")
def noisy():
    for _ in range(200):
        print("x" * 1000)
        print("y" * 1000, file=sys.stderr)
    return "quiet"
"""


def test_plugin_output_does_not_disturb_server(start_server, plugin_folder):
    # A plugin printing at import must not come before the "listening on" line (launch checks
    # that it is the first stdout line), and printing a lot while serving blocks nothing.
    api = api_name("noisy")
    write_atomic(plugin_folder / f"{unique('noisy')}.py", source(NOISY_SRC, api=api))
    srv = start_server(plugin_dirs=[SAMPLE_PLUGINS, plugin_folder])
    for _ in range(3):
        assert ok(srv.get(f"{api}/")) == "quiet"
    assert ok(srv.get("hello-world/"))["response"] == "hello-world"

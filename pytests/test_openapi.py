"""The API description (SPEC §13) through real servers: `/rest/openapi.json` of the sample plugins
and of a tenant's view validates with openapi-spec-validator and shows exactly what the caller
may call; a bounded Schemathesis run against it finds no 5xx but plugins' own errors; `/docs`
in headless Chromium lists the samples, and its try-it form calls one and shows the answer."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import uuid

import openapi_spec_validator
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from browser_helpers import Browser
from dpms_helpers import describe, error, write_atomic
from token_helpers import add_tenant, mint, run_dpms, serve_registry

ADMIN = "3c5e7a9b-1d2f-4b6c-8e0a-2f4d6b8c0e1a"
REPO = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = pathlib.Path(os.environ.get("DPMS_ARTIFACTS") or REPO / "target" / "test-artifacts")
#: What a plugin's own fault looks like (SPEC §4); anything else 5xx is dpms's.
PLUGIN_ERRORS = {"plugin_error", "plugin_import_error", "unserializable_result"}

TYPED = '''
import datetime, enum, uuid
from typing import Literal, Optional
from vyperlogix.decorators import expose

class Size(enum.Enum):
    S = "small"
    L = "large"


@expose.endpoint(method="GET", API="oa-search")
def search(limit: int, q: str = "", exact: bool = False, since: Optional[datetime.date] = None,
           size: Size = Size.S, order: Literal["asc", "desc"] = "asc", tag: list[int] = ()):
    """Search things.

    Returns what it was given, converted."""
    return {"limit": limit, "q": q, "tags": list(tag), "size": size.value}


@expose.endpoint(method="POST|PUT", API="oa-create")
def create(name: str, count: int = 1, owner: uuid.UUID = None, **kwargs):
    """Create a thing."""
    return {"name": name, "count": count}


@expose.endpoint(method="GET", API="oa-item")
def item(parm_1: int, parm_2: str = "x"):
    return [parm_1, parm_2]
'''


def validated(r) -> dict:
    assert r.status_code == 200, describe(r)
    assert r.headers["content-type"].startswith("application/json"), describe(r)
    doc = r.json()
    openapi_spec_validator.validate(doc)
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    return doc


def operations(doc: dict) -> dict:
    """`"METHOD path"` -> operation."""
    return {f"{m.upper()} {p}": op for p, item in doc["paths"].items() for m, op in item.items()}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openapi-plugins")
    write_atomic(folder / "oa_typed.py", TYPED)
    return folder


@pytest.fixture(scope="module")
def server(start_module_server, plugins, tmp_path_factory):
    notes = tmp_path_factory.mktemp("notes") / "notes.db"
    return start_module_server(
        env={"DPMS_WORKERS": "2", "NOTES_DB": str(notes)},
        plugin_dirs=[REPO / "plugins", plugins],
    )


def test_the_samples_document_validates(server):
    doc = validated(server.get("/rest/openapi.json"))
    ops = operations(doc)
    for key in [
        "GET /rest/services/hello-world/",
        "PUT /rest/services/hello-world/",
        "POST /rest/services/hello-world/",
        "GET /rest/services/hello-world2/",
        "POST /rest/services/sample-one/",
        "DELETE /rest/services/sample-one2a/",
        "GET /rest/services/oa-search/",
        "POST /rest/services/oa-create/",
        "GET /rest/services/oa-item/{parm_1}/{parm_2}/",
    ]:
        assert key in ops, sorted(ops)
    # Exactly what is routed: every (method, API) of __dir__ and nothing else.
    listed = {f"{m} {api}" for m, apis in server.dir()["endpoints"].items() for api in apis}
    documented = {
        f"{k.split()[0]} {k.split()[1].removeprefix('/rest/services/').split('/')[0]}"
        for k in ops
    }
    assert documented == listed, (documented ^ listed)

    search = ops["GET /rest/services/oa-search/"]
    assert search["summary"] == "Search things."
    assert "Returns what it was given" in search["description"]
    params = {p["name"]: p for p in search["parameters"]}
    assert params["limit"] == {"name": "limit", "in": "query", "required": True, "schema": {"type": "integer"}}
    assert params["exact"]["schema"] == {"type": "boolean", "default": False}
    assert params["since"]["schema"] == {"type": "string", "format": "date"}
    assert set(params["size"]["schema"]["enum"]) == {"S", "L", "small", "large"}
    assert params["order"]["schema"]["enum"] == ["asc", "desc"]
    assert params["tag"]["schema"] == {"type": "array", "items": {"type": "integer"}, "default": []}
    assert params["tag"]["explode"] is True

    create = ops["POST /rest/services/oa-create/"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["required"] == ["name"] and create["additionalProperties"] is True
    assert create["properties"]["owner"] == {"type": "string", "format": "uuid"}

    ok_schema = search["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok_schema["properties"]["response"]["required"] == ["oa_typed.search"]
    assert search["responses"]["404"] == {"$ref": "#/components/responses/Error"}

    item = ops["GET /rest/services/oa-item/{parm_1}/{parm_2}/"]
    assert [p["in"] for p in item["parameters"]] == ["path", "path"]
    # The unparametrised path stays: the URL parameters can come from the query too.
    assert "parameters" not in ops["GET /rest/services/oa-item/"]


def test_methods_and_head(server):
    r = server.post("/rest/openapi.json")
    error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, HEAD, OPTIONS"
    r = server.head("/rest/openapi.json")
    assert r.status_code == 200 and r.content == b"", describe(r)


def test_the_document_follows_the_files(server, plugins):
    path = plugins / "oa_later.py"
    write_atomic(
        path,
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='oa-later')\n"
        "def later():\n"
        "    return 1\n",
    )
    try:
        assert "/rest/services/oa-later/" in validated(server.get("/rest/openapi.json"))["paths"]
    finally:
        path.unlink()
    assert "/rest/services/oa-later/" not in validated(server.get("/rest/openapi.json"))["paths"]


def test_schemathesis_finds_no_server_errors(server):
    """A short property-based run over every operation: 5xx only from plugins' own faults."""
    doc = validated(server.get("/rest/openapi.json"))
    schema = schemathesis.openapi.from_dict(doc)
    faults, calls = [], 0
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            nonlocal calls
            calls += 1
            r = case.call(base_url=server.url, timeout=30)
            if r.status_code >= 500:
                try:
                    code = r.json().get("error")
                except ValueError:
                    code = None
                if code not in PLUGIN_ERRORS:
                    faults.append(f"{op.label}: {r.status_code} {r.text[:300]}")
            # Every answer of dpms's own (errors too) is JSON; a plugin's Response may be anything.
            if r.status_code != 200:
                assert r.headers.get("content-type") == ["application/json; charset=utf-8"], r.headers

        check()
    assert calls >= 100, calls
    assert not faults, "\n".join(faults[:10])


def test_a_tenants_view(start_server, tmp_path):
    data = tmp_path / "data"
    mine, other = add_tenant(data, ADMIN, "oa"), add_tenant(data, ADMIN, "ob")
    files = {
        f"{api.replace('-', '_')}.py":
        "from vyperlogix.decorators import expose\n" + (f"__ID__ = {owner!r}\n" if owner else "") +
        f"@expose.endpoint(method='GET', API={api!r})\n"
        "def f(n: int = 1):\n"
        "    '''One thing.'''\n"
        "    return n\n"
        for owner, api in [(mine, "oa-mine"), (other, "oa-theirs"), (None, "oa-shared")]
    }
    server = serve_registry(start_server, data, ADMIN, files, MULTI_TENANT="True")
    doc = validated(server.get(f"/rest/{mine}/openapi.json"))
    assert set(doc["paths"]) == {f"/rest/services/{mine}/oa-mine/", f"/rest/services/{mine}/oa-shared/"}, doc["paths"]
    assert mine in doc["info"]["title"]
    theirs = validated(server.get(f"/rest/{other}/openapi.json"))
    assert f"/rest/services/{other}/oa-theirs/" in theirs["paths"]
    assert not any("oa-mine" in p for p in theirs["paths"])
    admin = validated(server.get(f"/rest/{ADMIN}/openapi.json"))
    assert set(admin["paths"]) == {f"/rest/services/{ADMIN}/oa-shared/"}, admin["paths"]
    # What the document lists is callable as listed.
    r = server.get(f"/rest/services/{mine}/oa-mine/?n=3")
    assert r.json()["response"] == {"oa_mine.f": 3}, describe(r)
    # One answer for an unknown uuid and for none, as on /rest/services/.
    error(server.get(f"/rest/{uuid.uuid4()}/openapi.json"), 404, "not_found")
    error(server.get("/rest/openapi.json"), 404, "not_found")
    # So /docs without a uuid asks whose API to show, and /docs/<uuid>/ shows it.
    r = server.get("/docs")
    assert r.status_code == 200 and "Whose do you want to see?" in r.text and "openapi.json" not in r.text, r.text
    assert f"/rest/{mine}/openapi.json" in server.get(f"/docs/{mine}/").text


def test_with_tokens_required_the_document_needs_one(start_server, tmp_path):
    data = tmp_path / "data"
    key = json.loads(run_dpms(data, ADMIN, "token", "rotate", ADMIN))
    server = serve_registry(start_server, data, ADMIN, {
        "oa_tok.py":
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='oa-open', auth='public')\n"
        "def o():\n    return 1\n"
        "@expose.endpoint(method='GET', API='oa-closed')\n"
        "def c():\n    return 2\n",
    }, DPMS_REQUIRE_TOKENS="True")
    error(server.get("/rest/openapi.json"), 401, "unauthorized")
    token = mint(key, ADMIN)
    doc = validated(server.get("/rest/openapi.json", headers={"Authorization": f"Bearer {token}"}))
    ops = operations(doc)
    assert ops["GET /rest/services/oa-open/"]["security"] == []
    assert ops["GET /rest/services/oa-closed/"]["security"] == [{"token": []}]
    # The page and its files need no token: they are the same static bytes for everyone.
    assert server.get("/docs").status_code == 200


def test_docs_page_and_files(server):
    r = server.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), describe(r)
    assert "/rest/openapi.json" in r.text and "/docs/swagger-ui-bundle.js" in r.text
    for name, kind in [("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")]:
        r = server.get(f"/docs/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), describe(r)
        assert len(r.content) > 10_000
    error(server.get("/docs/nothing-here"), 404, "not_found")
    u = str(uuid.uuid4())
    assert f"/rest/{u}/openapi.json" in server.get(f"/docs/{u}/").text


def test_docs_in_a_real_browser(server, tmp_path, chromium):
    """The page lists the samples; its try-it form calls hello-world and shows the answer."""
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=server.url + "/docs")
        browser.wait_for(
            "document.querySelectorAll('.opblock').length > 5 && document.body.innerText", "the operations"
        )
        text = browser.evaluate("document.body.innerText")
        for path in ["/rest/services/hello-world/", "/rest/services/hello-world2/", "/rest/services/sample-one/"]:
            assert path in text, text[:2000]
        # Open GET hello-world, then execute it (try-it-out is on from the start).
        opened = browser.evaluate(
            """(() => {
                const blocks = [...document.querySelectorAll('.opblock.opblock-get')];
                const b = blocks.find(x => x.querySelector('.opblock-summary-path')?.innerText.trim()
                                       === '/rest/services/hello-world/');
                if (!b) return false;
                b.querySelector('.opblock-summary-control').click();
                window.dpmsBlock = b;
                return true;
            })()"""
        )
        assert opened, "no GET hello-world block"
        browser.wait_for("!!window.dpmsBlock.querySelector('button.execute')", "the execute button")
        browser.evaluate("window.dpmsBlock.querySelector('button.execute').click()")
        shown = browser.wait_for(
            "(window.dpmsBlock.querySelector('.live-responses-table tr.response .response-col_description') || {}).innerText",
            "the answer",
        )
        assert '"status": "OK"' in shown and "module1.foo" in shown, shown
        status = browser.evaluate(
            "window.dpmsBlock.querySelector('.live-responses-table tr.response .response-col_status').innerText"
        )
        assert status.strip() == "200", status
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.send("Emulation.setDeviceMetricsOverride", width=1280, height=1400, deviceScaleFactor=1, mobile=False)
        browser.evaluate("window.dpmsBlock.querySelector('.live-responses-table').scrollIntoView({block: 'center'})")
        shot = browser.send("Page.captureScreenshot", format="png")["data"]
        (ARTIFACTS / "docs.png").write_bytes(base64.b64decode(shot))
        print(f"screenshot: {ARTIFACTS / 'docs.png'}")
    finally:
        browser.close()

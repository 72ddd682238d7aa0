"""`GET /healthz` and `GET /readyz` (SPEC §13; §11.9 for what /readyz says about the sandbox).

The fail-closed and relaxed cases (a server without the host_uid layer) are in
test_sandbox_fail_closed.py; the multi-tenant case with a readable registry is here.
"""

import uuid

import pytest

ADMIN = str(uuid.uuid4())


@pytest.fixture(scope="module")
def mt(start_module_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("health-plugins")
    return start_module_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "2"},
        plugin_dirs=[folder],
    )


def test_healthz_answers_ok(server):
    r = server.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "OK"}
    assert r.headers["Content-Type"].startswith("application/json")


def test_readyz_single_tenant_is_ready_and_names_its_checks(server):
    r = server.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "OK"
    assert body["checks"]["plugins"] == {"ok": True}
    assert body["checks"]["sandbox"]["mode"] == "strict"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_and_options_and_other_methods(server, path):
    assert server.request("HEAD", path).status_code == 200
    r = server.request("OPTIONS", path)
    assert r.status_code in (200, 204), r.text
    assert "GET" in r.headers["Allow"]
    r = server.request("POST", path, data=b"{}")
    assert r.status_code == 405, r.text
    assert r.json()["error"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


def test_a_trailing_slash_or_a_suffix_is_not_a_probe(server):
    for path in ("/healthz/", "/readyz/x", "/healthzz"):
        r = server.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]


def test_readyz_multi_tenant_checks_the_registry_and_the_sandbox(mt):
    # Every worker: a probe hits whichever one accepts it.
    for _ in range(6):
        r = mt.get("/readyz")
        assert r.status_code == 200, r.text
        checks = r.json()["checks"]
        assert checks["registry"] == {"ok": True}
        assert checks["sandbox"] == {"ok": True, "layers_missing": [], "mode": "strict"}
    assert mt.get("/healthz").json() == {"status": "OK"}

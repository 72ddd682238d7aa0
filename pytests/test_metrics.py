"""`/metrics` (SPEC §13) through real servers: Prometheus text that `prometheus_client`'s parser
reads, for the whole server whichever worker a scrape reaches: counters move by exactly the
requests sent, served by either worker; reloads, import errors, workers, tenant processes and
cold starts; under MULTI_TENANT it takes the admin's bearer."""

from __future__ import annotations


import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dpms_helpers import TIMEOUT, describe, error, wait_for, write_atomic
from token_helpers import add_tenant, run_dpms

ADMIN = "5e7a9c1d-3f2b-4c6d-8e0f-2a4c6e8a0b1d"


def scrape(server, headers=None) -> dict:
    """`(name, labels as a sorted tuple)` -> value, of every sample."""
    r = requests.get(server.url + "/metrics", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200, describe(r)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), describe(r)
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def requests_total(samples, endpoint, method="GET", status="200"):
    key = ("dpms_requests_total", (("endpoint", endpoint), ("method", method), ("status", status)))
    return samples.get(key, 0)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics-plugins")
    write_atomic(
        folder / "metrics_sample.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET|POST', API='m-hello')\n"
        "def hello(**kwargs):\n"
        "    return 'hi'\n",
    )
    return folder


@pytest.fixture(scope="module")
def server(start_module_server, plugins):
    return start_module_server(env={"DPMS_WORKERS": "2"}, plugin_dirs=[plugins])


def test_counters_move_by_exactly_the_requests_sent(server):
    before = scrape(server)
    workers = set()
    sent = 0
    # Each request on a new connection: the kernel spreads them over both workers.
    for _ in range(200):
        r = requests.get(server.url + "/rest/services/m-hello/", timeout=TIMEOUT, headers={"Connection": "close"})
        assert r.status_code == 200, describe(r)
        workers.add(r.headers["X-Dpms-Worker"])
        sent += 1
        if len(workers) == 2 and sent >= 40:
            break
    assert workers == {"0", "1"}, workers
    for _ in range(7):
        assert requests.post(server.url + "/rest/services/m-hello/", timeout=TIMEOUT).status_code == 200
    for _ in range(3):
        assert requests.get(server.url + "/rest/services/m-nothing/", timeout=TIMEOUT).status_code == 404
    # Every scrape, on either worker, sees all of it.
    for _ in range(6):
        after = scrape(server)
        assert requests_total(after, "metrics_sample.hello") - requests_total(before, "metrics_sample.hello") == sent
        assert requests_total(after, "metrics_sample.hello", "POST") - requests_total(before, "metrics_sample.hello", "POST") == 7
        assert requests_total(after, "-", "GET", "404") - requests_total(before, "-", "GET", "404") == 3
    count = ("dpms_request_duration_seconds_count", (("endpoint", "metrics_sample.hello"),))
    inf = ("dpms_request_duration_seconds_bucket", (("endpoint", "metrics_sample.hello"), ("le", "+Inf")))
    assert after[count] - before.get(count, 0) == sent + 7
    assert after[inf] == after[count]
    assert after[("dpms_workers", ())] == 2


def test_reloads_and_import_errors(server, plugins):
    before = scrape(server)
    write_atomic(plugins / "metrics_broken.py", "this is not python\n")
    wait_for(lambda: scrape(server)[("dpms_plugin_import_errors", ())] == 1, what="the import error counted")
    (plugins / "metrics_broken.py").unlink()
    wait_for(lambda: scrape(server)[("dpms_plugin_import_errors", ())] == 0, what="the import error gone")
    write_atomic(
        plugins / "metrics_sample.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET|POST', API='m-hello')\n"
        "def hello(**kwargs):\n"
        "    return 'hi again'\n",
    )
    r = requests.get(server.url + "/rest/services/m-hello/", timeout=TIMEOUT)
    assert r.json()["response"] == {"metrics_sample.hello": "hi again"}, describe(r)
    after = scrape(server)
    assert after[("dpms_plugin_reloads_total", ())] > before[("dpms_plugin_reloads_total", ())]


def test_methods(server):
    r = requests.post(server.url + "/metrics", timeout=TIMEOUT)
    error(r, 405, "method_not_allowed")
    r = requests.head(server.url + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == b"", describe(r)


def test_tenants_and_the_admins_bearer(start_server, tmp_path):
    data = tmp_path / "data"
    tenants = [add_tenant(data, ADMIN, f"m{i}") for i in range(2)]
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for i, t in enumerate(tenants):
        write_atomic(
            plugins / f"metrics_tenant{i}.py",
            f"__ID__ = {t!r}\n"
            "from vyperlogix.decorators import expose\n"
            f"@expose.endpoint(method='GET', API='mt-hello')\n"
            "def hello():\n"
            f"    return {i}\n",
        )
    server = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "1", "DPMS_DATA_DIR": str(data)},
        plugin_dirs=[plugins],
    )
    auth = {"Authorization": f"Bearer {ADMIN}"}
    error(requests.get(server.url + "/metrics", timeout=TIMEOUT), 401, "unauthorized")
    error(requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {tenants[0]}"}, timeout=TIMEOUT),
          401, "unauthorized")
    before = scrape(server, auth)
    for i, t in enumerate(tenants):
        for _ in range(3):
            r = requests.get(f"{server.url}/rest/services/{t}/mt-hello/", timeout=TIMEOUT)
            assert r.json()["response"] == {f"metrics_tenant{i}.hello": i}, describe(r)
    after = scrape(server, auth)
    cold = ("dpms_tenant_cold_starts_total", ())
    assert after[cold] - before.get(cold, 0) == 2, after[cold]
    assert after[("dpms_tenant_processes", ())] == 2
    assert after[("dpms_tenant_cold_start_seconds_count", ())] == after[cold]
    for i in range(2):
        assert requests_total(after, f"metrics_tenant{i}.hello") == 3
    # Removing a tenant stops its process: the gauge follows.
    run_dpms(data, ADMIN, "tenant", "remove", tenants[0])
    r = requests.get(f"{server.url}/rest/services/{tenants[0]}/mt-hello/", timeout=TIMEOUT)
    assert r.status_code == 404, describe(r)
    wait_for(lambda: scrape(server, auth)[("dpms_tenant_processes", ())] == 1, what="the removed tenant's process gone")

"""Tokens on the request path (SPEC §12) through real servers: `DPMS_REQUIRE_TOKENS=True`,
`MULTI_TENANT=True`, two workers, the real clock. Tokens are minted here with PyJWT (a library
that knows nothing of dpms) from the keys the CLI and the admin API hand out.

Every rejection answers the same 401 (`unauthorized`, `WWW-Authenticate: Bearer realm="dpms",
error="invalid_token"`) whatever the uuid or API; a token is served once, also when 50 clients
send it at once to both workers; the ledger at its cap answers 429 and recovers after expiry."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import threading
import time
import uuid

import jwt
import requests
import pytest

from dpms_helpers import TIMEOUT, binary_path, body_json, clean_env, describe, wait_for, write_atomic
from token_helpers import b64, mint, run_dpms, secret_of

ADMIN = "0c6e1f3a-9b2d-4c7e-8a5f-3d1b7e9c2a64"
CHALLENGE = 'Bearer realm="dpms", error="invalid_token"'
GRACE = 4  # DPMS_KEY_GRACE_SECS of the shared server
BOTH_WORKERS_ROUNDS = 10


def run_cli(data: pathlib.Path, *args) -> str:
    return run_dpms(data, ADMIN, *args)


class Site:
    """The shared server, its registry folder, the admin's key and two tenants with keys."""

    def __init__(self, server, data, admin_key, tenants):
        self.server = server
        self.data = data
        self.admin_key = admin_key
        self.tenants = tenants  # uuid -> key

    def admin(self, method, path, **kw):
        headers = {"Authorization": "Bearer " + mint(self.admin_key, ADMIN), **kw.pop("headers", {})}
        return self.server.request(method, "/rest/admin" + path, headers=headers, **kw)

    def call(self, path, token=None, method="GET", header="Authorization", **kw):
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers[header] = ("Bearer " + token) if header == "Authorization" else token
        return self.server.request(method, path, headers=headers, **kw)


@pytest.fixture(scope="module")
def site(start_module_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("token-gate")
    data = root / "data"
    plugins = root / "plugins"
    plugins.mkdir()
    admin_key = json.loads(run_cli(data, "token", "rotate", ADMIN))
    tenants = {}
    for name in ("a", "b"):
        made = json.loads(run_cli(data, "tenant", "add", f"{name}-{uuid.uuid4().hex[:8]}"))
        tenants[made["uuid"]] = made["key"]
    a, b = tenants
    write_atomic(
        plugins / "gate_admin.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET|POST', API='gate-hello')\n"
        "def hello(*args, **kwargs):\n"
        "    return {'hello': 'admin', 'kwargs': kwargs}\n",
    )
    write_atomic(
        plugins / "gate_a.py",
        "from vyperlogix.decorators import expose\n"
        f"__ID__ = {a!r}\n"
        "@expose.endpoint(method='GET|POST', API='gate-mine')\n"
        "def mine(*args, **kwargs):\n"
        "    return {'owner': 'a'}\n"
        "@expose.endpoint(method='GET', API='gate-a-open', auth='public')\n"
        "def a_open(**kwargs):\n"
        "    return {'open': 'a'}\n",
    )
    write_atomic(
        plugins / "gate_public.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='gate-open', auth='public')\n"
        "def open_(**kwargs):\n"
        "    return {'open': 'admin'}\n",
    )
    server = start_module_server(
        env={
            "MULTI_TENANT": "True",
            "ADMIN_ID": ADMIN,
            "DPMS_WORKERS": "2",
            "DPMS_REQUIRE_TOKENS": "True",
            "DPMS_KEY_GRACE_SECS": str(GRACE),
            "DPMS_DATA_DIR": str(data),
        },
        plugin_dirs=[plugins],
    )
    return Site(server, data, admin_key, tenants)


def refused(r):
    """The one 401 every refusal gets."""
    assert r.status_code == 401, describe(r)
    assert r.headers.get("WWW-Authenticate") == CHALLENGE, describe(r)
    body = body_json(r)
    assert body["error"] == "unauthorized" and set(body) == {"status", "error"}, body
    return body


def served(r, owner=None):
    assert r.status_code == 200, describe(r)
    body = body_json(r)
    assert body["status"] == "OK", body
    return body


# --------------------------------------------------------------------------------------------
# Accepted, once


def test_a_tenant_token_is_served_once(site):
    a = next(iter(site.tenants))
    path = f"/rest/services/{a}/gate-mine/"
    token = mint(site.tenants[a], a)
    served(site.call(path, token))
    refused(site.call(path, token))
    # X-Dpms-Token, for clients that cannot set Authorization.
    token = mint(site.tenants[a], a)
    served(site.call(path, token, header="X-Dpms-Token"))
    refused(site.call(path, token, header="X-Dpms-Token"))
    # A tenant's token also calls the admin's modules it sees, on its own URL.
    served(site.call(f"/rest/services/{a}/gate-hello/", mint(site.tenants[a], a)))


def test_bound_tokens(site):
    a = next(iter(site.tenants))
    path = f"/rest/services/{a}/gate-mine/"
    served(site.call(path, mint(site.tenants[a], a, htm="GET", htu=path)))
    served(site.call(path + "?x=1", mint(site.tenants[a], a, htm="get", htu=site.server.url + path)))
    served(site.call(path, mint(site.tenants[a], a, htm="POST", htu=path), method="POST"))
    refused(site.call(path, mint(site.tenants[a], a, htm="POST", htu=path)))
    refused(site.call(path, mint(site.tenants[a], a, htm="GET", htu=f"/rest/services/{a}/gate-hello/")))


def test_the_admin_api_takes_the_admins_token(site):
    r = site.admin("GET", "/tenants")
    assert r.status_code == 200, describe(r)
    # ADMIN_ID alone is no longer the bearer.
    refused(site.server.request("GET", "/rest/admin/tenants", headers={"Authorization": f"Bearer {ADMIN}"}))
    refused(site.server.request("GET", "/rest/admin/tenants"))
    token = mint(site.admin_key, ADMIN)
    assert site.call("/rest/admin/tenants", token).status_code == 200
    refused(site.call("/rest/admin/tenants", token))
    # A tenant's token is not the admin's.
    a = next(iter(site.tenants))
    refused(site.call("/rest/admin/tenants", mint(site.tenants[a], a)))
    refused(site.call("/rest/admin/tenants", mint(site.tenants[a], ADMIN)))
    # The admin's own modules, on the admin's uuid, take the admin's token.
    served(site.call(f"/rest/services/{ADMIN}/gate-hello/", mint(site.admin_key, ADMIN)))
    refused(site.call(f"/rest/services/{ADMIN}/gate-hello/"))
    refused(site.call(f"/rest/services/{ADMIN}/gate-hello/", mint(site.tenants[a], a)))


# --------------------------------------------------------------------------------------------
# Every rejection: the same 401


def forged(key, sub, header=None, claims=None, sign=True) -> str:
    """A token made by hand: any header, any claims, signed with HS256 over them or not."""
    now = int(time.time())
    head = header or {"alg": "HS256", "typ": "JWT", "kid": key["kid"]}
    body = claims or {"sub": sub, "iat": now, "exp": now + 60, "jti": b64(os.urandom(16))}
    signing = b64(json.dumps(head).encode()) + "." + b64(json.dumps(body).encode())
    if not sign:
        return signing + "."
    import hashlib
    import hmac

    return signing + "." + b64(hmac.new(secret_of(key), signing.encode(), hashlib.sha256).digest())


def flip(token: str, part: int) -> str:
    parts = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part] + "=" * (-len(parts[part]) % 4)))
    raw[len(raw) // 2] ^= 0x01
    parts[part] = b64(bytes(raw))
    return ".".join(parts)


def rejections(site):
    (a, ka), (b, kb) = site.tenants.items()
    now = int(time.time())
    jti = lambda: b64(os.urandom(16))  # noqa: E731
    return {
        "missing": None,
        "empty words": "not a token",
        "two parts": "abc.def",
        "garbage parts": "a.b.c",
        "alg none": forged(ka, a, header={"alg": "none", "typ": "JWT", "kid": ka["kid"]}, sign=False),
        "alg none signed": forged(ka, a, header={"alg": "none", "kid": ka["kid"]}),
        "alg RS256": forged(ka, a, header={"alg": "RS256", "typ": "JWT", "kid": ka["kid"]}),
        "alg HS512": jwt.encode(
            {"sub": a, "iat": now, "exp": now + 60, "jti": jti()}, secret_of(ka), algorithm="HS512",
            headers={"kid": ka["kid"]},
        ),
        "flipped payload": flip(mint(ka, a), 1),
        "flipped signature": flip(mint(ka, a), 2),
        "unknown kid": mint({"kid": "nope", "secret": ka["secret"]}, a),
        "no kid": jwt.encode({"sub": a, "iat": now, "exp": now + 60, "jti": jti()}, secret_of(ka), algorithm="HS256"),
        "another tenant's token": mint(kb, b),
        "another tenant's key, this sub": mint(kb, a),
        "this key, another sub": mint(ka, b),
        "expired": mint(ka, a, iat=now - 70, ttl=60),
        "iat in the future": mint(ka, a, iat=now + 30, ttl=30),
        "lifetime over 60": mint(ka, a, ttl=61),
        "short jti": forged(ka, a, claims={"sub": a, "iat": now, "exp": now + 60, "jti": "abc"}),
        "no jti": forged(ka, a, claims={"sub": a, "iat": now, "exp": now + 60}),
        "htm mismatch": mint(ka, a, htm="DELETE"),
        "htu mismatch": mint(ka, a, htu="/rest/services/elsewhere/"),
        "admin's key": mint(site.admin_key, a),
    }


@pytest.mark.filterwarnings("ignore:The HMAC key")  # the HS512 case's key is short for HS512
def test_every_rejection_is_the_same_401(site):
    a = next(iter(site.tenants))
    path = f"/rest/services/{a}/gate-mine/"
    bodies = set()
    for name, token in rejections(site).items():
        r = site.call(path, token)
        bodies.add(json.dumps(refused(r), sort_keys=True))
        # The same through X-Dpms-Token.
        if token is not None:
            refused(site.call(path, token, header="X-Dpms-Token"))
    assert len(bodies) == 1, bodies


def test_nothing_about_what_exists_leaks(site):
    """A bad token gets the same answer for a known API, an unknown one, an unknown uuid and
    `__dir__`."""
    a = next(iter(site.tenants))
    stranger = str(uuid.uuid4())
    answers = set()
    for path in [
        f"/rest/services/{a}/gate-mine/",
        f"/rest/services/{a}/no-such-api/",
        f"/rest/services/{a}/__dir__/",
        f"/rest/services/{stranger}/gate-mine/",
        "/rest/services/gate-hello/",
        "/rest/services/no-such-api/",
        "/rest/services/",
        "/rest/admin/tenants",
        "/rest/admin/nothing-here",
    ]:
        for method in ("GET", "POST", "DELETE"):
            r = site.call(path, "x.y.z", method=method)
            answers.add(json.dumps(refused(r), sort_keys=True))
    assert len(answers) == 1, answers
    # The probes and the index need no token.
    assert site.call("/healthz").status_code == 200
    assert site.call("/").status_code == 200


def test_a_disabled_or_removed_tenants_keys_verify_nothing(site):
    made = site.admin("POST", "/tenants", json={"userid": f"c-{uuid.uuid4().hex[:8]}"})
    assert made.status_code == 201, describe(made)
    c, key = made.json()["tenant"]["uuid"], made.json()["key"]
    path = f"/rest/services/{c}/gate-hello/"
    served(site.call(path, mint(key, c)))
    assert site.admin("PATCH", f"/tenants/{c}", json={"enabled": False}).status_code == 200
    for _ in range(4):  # both workers, from the next request on
        refused(site.call(path, mint(key, c), headers={"Connection": "close"}))
    assert site.admin("PATCH", f"/tenants/{c}", json={"enabled": True}).status_code == 200
    served(site.call(path, mint(key, c)))
    assert site.admin("DELETE", f"/tenants/{c}").status_code == 200
    for _ in range(4):
        refused(site.call(path, mint(key, c), headers={"Connection": "close"}))


def test_rotation_keeps_a_grace_then_never_again(site):
    made = site.admin("POST", "/tenants", json={"userid": f"r-{uuid.uuid4().hex[:8]}"})
    assert made.status_code == 201, describe(made)
    r_id, old = made.json()["tenant"]["uuid"], made.json()["key"]
    path = f"/rest/services/{r_id}/gate-hello/"
    rotated = site.admin("POST", f"/tenants/{r_id}/keys")
    assert rotated.status_code == 201, describe(rotated)
    new = rotated.json()["key"]
    rotated_at = time.time()
    served(site.call(path, mint(new, r_id)))
    served(site.call(path, mint(old, r_id)))  # inside the grace
    time.sleep(max(0.0, rotated_at + GRACE + 1.5 - time.time()))
    refused(site.call(path, mint(old, r_id)))
    served(site.call(path, mint(new, r_id)))
    # A token the server minted verifies too.
    m = site.admin("POST", f"/tenants/{r_id}/tokens", json={"ttl": 10, "htm": "GET", "htu": path})
    assert m.status_code == 201, describe(m)
    token = m.json()["token"]
    served(site.call(path, token))
    refused(site.call(path, token))


def test_one_token_fifty_clients_both_workers_one_answer(site):
    """N=50 threads send one token at once on their own connections; exactly one is served.
    Repeated with fresh tokens until both workers took part (bounded)."""
    a = next(iter(site.tenants))
    path = f"/rest/services/{a}/gate-mine/"
    workers = set()
    for _ in range(BOTH_WORKERS_ROUNDS):
        token = mint(site.tenants[a], a)
        start = threading.Barrier(50)
        results = []
        lock = threading.Lock()

        def go():
            start.wait(TIMEOUT)
            r = site.call(path, token, headers={"Connection": "close"})
            with lock:
                results.append((r.status_code, r.headers.get("X-Dpms-Worker")))

        threads = [threading.Thread(target=go) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert len(results) == 50
        codes = sorted(c for c, _ in results)
        assert codes.count(200) == 1 and codes.count(401) == 49, codes
        workers |= {w for _, w in results}
        if len(workers) >= 2:
            return
    pytest.fail(f"only workers {workers} answered")


def test_sequential_replay_across_workers(site):
    a = next(iter(site.tenants))
    path = f"/rest/services/{a}/gate-mine/"
    token = mint(site.tenants[a], a)
    served(site.call(path, token, headers={"Connection": "close"}))
    workers = set()
    for _ in range(40):
        r = site.call(path, token, headers={"Connection": "close"})
        refused(r)
        workers.add(r.headers.get("X-Dpms-Worker"))
        if len(workers) >= 2:
            break
    assert len(workers) >= 2, workers


# --------------------------------------------------------------------------------------------
# The ledger at its cap; settings


def test_the_ledger_at_its_cap_answers_429_and_recovers(start_server, tmp_path):
    data = tmp_path / "data"
    admin_key = json.loads(run_cli(data, "token", "rotate", ADMIN))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "cap.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='cap')\n"
        "def cap(**kwargs):\n"
        "    return 'ok'\n",
    )
    server = start_server(
        env={
            "ADMIN_ID": ADMIN,
            "DPMS_WORKERS": "2",
            "DPMS_REQUIRE_TOKENS": "True",
            "DPMS_TOKEN_LEDGER": "15",  # one bucket
            "DPMS_DATA_DIR": str(data),
        },
        plugin_dirs=[plugins],
    )
    s = Site(server, data, admin_key, {})
    first = mint(admin_key, ADMIN, ttl=1)
    served(s.call("/rest/services/cap/", first))
    for _ in range(14):
        served(s.call("/rest/services/cap/", mint(admin_key, ADMIN, ttl=1)))
    r = s.call("/rest/services/cap/", mint(admin_key, ADMIN, ttl=1))
    assert r.status_code == 429, describe(r)
    body = body_json(r)
    assert body["error"] == "too_many_tokens" and set(body) == {"status", "error"}, body
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 60 + 5 + 1, retry
    # Full, it still remembers: a replay is refused as one, not forgotten.
    refused(s.call("/rest/services/cap/", first))
    # After the first tokens' exp + skew, there is room again.
    deadline = time.time() + retry + 10
    while True:
        r = s.call("/rest/services/cap/", mint(admin_key, ADMIN, ttl=1))
        if r.status_code == 200:
            break
        assert r.status_code == 429, describe(r)
        assert time.time() < deadline, "the ledger did not recover"
        time.sleep(0.5)
    assert (data / "ledger.bin").stat().st_mode & 0o777 == 0o600


def test_require_tokens_needs_admin_id(tmp_path):
    p = subprocess.run(
        [str(binary_path()), "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,
        env=clean_env({"DPMS_REQUIRE_TOKENS": "True", "plugins": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode != 0
    assert "DPMS_REQUIRE_TOKENS" in p.stderr and "ADMIN_ID" in p.stderr, p.stderr


def test_without_require_tokens_nothing_changes(start_server, tmp_path):
    """With ADMIN_ID but tokens not required, calls need none and `Bearer <ADMIN_ID>` is
    still the admin API's bearer."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "open.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='open')\n"
        "def open_(**kwargs):\n"
        "    return 'ok'\n",
    )
    server = start_server(env={"ADMIN_ID": ADMIN, "DPMS_WORKERS": "1"}, plugin_dirs=[plugins])
    assert server.get("/rest/services/open/").status_code == 200
    r = server.get("/rest/admin/tenants", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, describe(r)
    r = server.get("/rest/admin/tenants")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="dpms"', describe(r)


# --------------------------------------------------------------------------------------------
# auth="public" / auth="token"


def dir_auth(body, api):
    """The `auth` `__dir__` shows for `api` (any method)."""
    for per_method in body["endpoints"].values():
        for key, info in per_method.items():
            if key.split("/")[-1] == api:
                return info["auth"]
    raise AssertionError(f"{api} not in {body['endpoints']}")


def test_public_endpoints_need_no_token(site):
    a = next(iter(site.tenants))
    for path in [f"/rest/services/{ADMIN}/gate-open/", f"/rest/services/{a}/gate-a-open/", f"/rest/services/{a}/gate-open/"]:
        served(site.call(path))
        # A token changes nothing: junk, good or replayed, a public endpoint answers.
        served(site.call(path, "junk"))
        token = mint(site.tenants[a], a)
        served(site.call(path, token))
        served(site.call(path, token))
    # Everything else still needs one, next to the public endpoints.
    refused(site.call(f"/rest/services/{a}/gate-mine/"))
    refused(site.call(f"/rest/services/{ADMIN}/gate-hello/"))
    # Only the methods it is declared for: another method is a 401, not a 405.
    refused(site.call(f"/rest/services/{a}/gate-open/", method="POST"))
    # __dir__ (itself not public) shows each endpoint's auth.
    body = served(site.call(f"/rest/services/{a}/__dir__/", mint(site.tenants[a], a)))
    assert dir_auth(body, "gate-a-open") == "public"
    assert dir_auth(body, "gate-mine") == "default"
    assert dir_auth(body, "gate-open") == "public"


def test_tokenless_public_calls_log_no_refusal(site):
    """A public endpoint's callers send no token: that is not worth a log line each (it was an
    info line `token refused` per call). One connection, so one worker and one ordered log:
    once the refusal of a junk token sent after them is logged, theirs would be too."""
    a = next(iter(site.tenants))
    tag = uuid.uuid4().hex[:12]
    with requests.Session() as http:
        for i in range(5):
            r = http.get(site.server.url + f"/rest/services/{a}/gate-a-open/", headers={"X-Request-Id": f"pub-{tag}-{i}"},
                         timeout=TIMEOUT)
            served(r)
        r = http.get(site.server.url + f"/rest/services/{a}/gate-mine/",
                     headers={"X-Request-Id": f"junk-{tag}", "Authorization": "Bearer x.y.z"}, timeout=TIMEOUT)
        refused(r)
    wait_for(lambda: f"junk-{tag}" in site.server.full_log(), what="the junk token's refusal in the log")
    refusals = [line for line in site.server.full_log().splitlines() if "token refused" in line]
    assert any(f"junk-{tag}" in line for line in refusals)
    assert not [line for line in refusals if f"pub-{tag}" in line], refusals


def test_auth_token_and_public_without_require_tokens(start_server, tmp_path):
    data = tmp_path / "data"
    admin_key = json.loads(run_cli(data, "token", "rotate", ADMIN))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "mixed.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='m-open')\n"
        "def m_open(**kwargs):\n"
        "    return 'open'\n"
        "@expose.endpoint(method='GET', API='m-public', auth='public')\n"
        "def m_public(**kwargs):\n"
        "    return 'public'\n"
        "@expose.endpoint(method='GET|POST', API='m-private', auth='token')\n"
        "def m_private(**kwargs):\n"
        "    return 'private'\n"
        "@expose.endpoint(method='GET', API='m-bad', auth='tokens')\n"
        "def m_bad(**kwargs):\n"
        "    return 'never'\n",
    )
    server = start_server(
        env={"ADMIN_ID": ADMIN, "DPMS_WORKERS": "2", "DPMS_DATA_DIR": str(data)},
        plugin_dirs=[plugins],
    )
    s = Site(server, data, admin_key, {})
    served(s.call("/rest/services/m-open/"))
    served(s.call("/rest/services/m-public/"))
    refused(s.call("/rest/services/m-private/"))
    refused(s.call("/rest/services/m-private/", "x.y.z"))
    token = mint(admin_key, ADMIN)
    served(s.call("/rest/services/m-private/", token))
    refused(s.call("/rest/services/m-private/", token))
    served(s.call("/rest/services/m-private/", mint(admin_key, ADMIN, htm="POST"), method="POST"))
    refused(s.call("/rest/services/m-private/", mint(admin_key, ADMIN, htm="POST")))
    # Tokens not required: the admin API keeps `Bearer <ADMIN_ID>`; a token-only endpoint's
    # neighbours need nothing.
    r = server.get("/rest/admin/tenants", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, describe(r)
    body = served(s.call("/rest/services/__dir__/"))
    assert dir_auth(body, "m-private") == "token"
    assert dir_auth(body, "m-public") == "public"
    assert dir_auth(body, "m-open") == "default"
    # A bad auth= value makes that function unroutable, said in __dir__, the others serve.
    errors = json.dumps(body["imports"])
    assert "auth must be" in errors and "m_bad" in errors, errors
    r = s.call("/rest/services/m-bad/")
    assert r.status_code == 404, describe(r)

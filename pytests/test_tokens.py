"""Signing keys and minted tokens (SPEC §12) against a real server (two workers, ADMIN_ID set) and
the real `dpms token` / `dpms tenant` commands on the same registry: a key is handed out exactly
when it is made (registration, rotation) and never again, every tenant's key is its own, a
removed tenant's keys are gone from the SQLite file, and a minted token is a standard HS256 JWT
that a third-party library (PyJWT) verifies with the tenant's secret."""

from __future__ import annotations

import base64
import json
import pathlib
import sqlite3
import subprocess
import tempfile
import time
import uuid

import jwt
import pytest

from dpms_helpers import TIMEOUT, binary_path, body_json, clean_env, describe, error

ADMIN = "5d1f0b2c-8e3a-4f6d-9b7c-2a4e6c8f0d13"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def empty_plugins():
    folder = pathlib.Path(tempfile.mkdtemp(prefix="dpms-token-plugins-"))
    yield folder
    folder.rmdir()


@pytest.fixture(scope="module")
def srv(start_module_server, empty_plugins):
    return start_module_server(
        env={"ADMIN_ID": ADMIN, "DPMS_WORKERS": "2", "MULTI_TENANT": "False"},
        plugin_dirs=[empty_plugins],
    )


def call(server, method, path, **kw):
    return server.request(method, "/rest/admin" + path, headers=dict(AUTH), **kw)


def run(server, *args):
    """`dpms ARGS` in the server's working folder: the same registry."""
    p = subprocess.run(
        [str(binary_path()), *args],
        cwd=server.workdir,
        env=clean_env({"ADMIN_ID": ADMIN}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return p.returncode, p.stdout, p.stderr


def secret_of(key: dict) -> bytes:
    assert set(key) == {"kid", "secret"}, key
    assert isinstance(key["kid"], str) and key["kid"], key
    raw = base64.urlsafe_b64decode(key["secret"] + "=" * (-len(key["secret"]) % 4))
    assert len(raw) == 32, key
    return raw


def register(server, userid=None):
    r = call(server, "POST", "/tenants", json={"userid": userid or f"k-{uuid.uuid4().hex[:10]}"})
    assert r.status_code == 201, describe(r)
    body = body_json(r)
    return body["tenant"]["uuid"], body["key"]


def mint(server, u, status=201, **body):
    r = call(server, "POST", f"/tenants/{u}/tokens", json=body)
    assert r.status_code == status, describe(r)
    return body_json(r)


def decode(token: str, key: dict, **kw) -> dict:
    """Verifies with PyJWT, a library that knows nothing of dpms."""
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": key["kid"]}
    return jwt.decode(token, secret_of(key), algorithms=["HS256"], options={"verify_sub": False}, **kw)


def check_claims(claims: dict, u: str, ttl: int):
    assert claims["sub"] == u
    assert claims["exp"] - claims["iat"] == ttl
    assert abs(claims["iat"] - time.time()) < 30
    jti = base64.urlsafe_b64decode(claims["jti"] + "=" * (-len(claims["jti"]) % 4))
    assert len(jti) >= 16, claims


def test_registration_hands_out_a_key_once(srv):
    u, key = register(srv)
    secret_of(key)
    # Never again: not in the tenant, the listing, or the CLI's view of it.
    for r in (call(srv, "GET", f"/tenants/{u}"), call(srv, "GET", "/tenants")):
        assert r.status_code == 200, describe(r)
        assert key["secret"] not in r.text and key["kid"] not in r.text, describe(r)
    code, out, err = run(srv, "tenant", "show", u)
    assert code == 0, err
    assert key["secret"] not in out and key["kid"] not in out
    # Every tenant's key is its own.
    u2, key2 = register(srv)
    assert key2["kid"] != key["kid"] and key2["secret"] != key["secret"]


def test_a_minted_token_is_a_standard_jwt(srv):
    u, key = register(srv)
    body = mint(srv, u)
    assert set(body) == {"status", "token", "exp"}, body
    claims = decode(body["token"], key)
    check_claims(claims, u, 60)
    assert claims["exp"] == body["exp"]
    assert "htm" not in claims and "htu" not in claims

    path = f"/rest/services/{u}/hello/"
    claims = decode(mint(srv, u, ttl=5, htm="POST", htu=path)["token"], key)
    check_claims(claims, u, 5)
    assert claims["htm"] == "POST" and claims["htu"] == path
    # Every token is unique.
    ids = {decode(mint(srv, u)["token"], key)["jti"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize(
    "body",
    [{"ttl": 0}, {"ttl": 61}, {"ttl": -1}, {"ttl": "5"}, {"ttl": 1.5}, {"htm": 5}, {"aud": "x"}, []],
)
def test_bad_mint_requests(srv, body):
    u, _ = register(srv)
    r = call(srv, "POST", f"/tenants/{u}/tokens", json=body)
    error(r, 400, "bad_request")


def test_mint_refusals(srv):
    unknown = str(uuid.uuid4())
    error(call(srv, "POST", f"/tenants/{unknown}/tokens", json={}), 404, "not_found")
    error(call(srv, "POST", f"/tenants/{unknown}/keys"), 404, "not_found")
    u, _ = register(srv)
    r = srv.request("POST", f"/rest/admin/tenants/{u}/tokens", json={})
    error(r, 401, "unauthorized")
    r = srv.request("POST", f"/rest/admin/tenants/{u}/keys", headers={"Authorization": "Bearer " + u})
    error(r, 401, "unauthorized")


def test_rotation_over_the_api(srv):
    u, old = register(srv)
    r = call(srv, "POST", f"/tenants/{u}/keys")
    assert r.status_code == 201, describe(r)
    body = body_json(r)
    assert set(body) == {"status", "key"} and body["status"] == "OK", body
    new = body["key"]
    assert new["kid"] != old["kid"] and new["secret"] != old["secret"]
    token = mint(srv, u)["token"]
    check_claims(decode(token, new), u, 60)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, secret_of(old), algorithms=["HS256"])


def test_the_cli_rotates_and_mints(srv):
    code, out, err = run(srv, "tenant", "add", f"c-{uuid.uuid4().hex[:8]}")
    assert code == 0, err
    made = json.loads(out)
    u, first = made["uuid"], made["key"]
    secret_of(first)

    code, out, err = run(srv, "token", "rotate", u)
    assert code == 0, err
    key = json.loads(out)
    secret_of(key)
    assert key["kid"] != first["kid"]

    code, out, err = run(srv, "token", "mint", u, "--ttl", "30", "--method", "GET", "--path", "/x/")
    assert code == 0, err
    claims = decode(out.strip(), key)
    check_claims(claims, u, 30)
    assert claims["htm"] == "GET" and claims["htu"] == "/x/"
    # The server's API mints with the key the CLI made: one registry.
    check_claims(decode(mint(srv, u)["token"], key), u, 60)

    # The admin has keys of its own, made on the registry directly.
    code, out, err = run(srv, "token", "rotate", ADMIN)
    assert code == 0, err
    admin_key = json.loads(out)
    code, out, err = run(srv, "token", "mint", ADMIN)
    assert code == 0, err
    check_claims(decode(out.strip(), admin_key), ADMIN, 60)


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["token", "mint", "{u}", "--ttl", "61"], 2, "ttl"),
        (["token", "mint", "{u}", "--ttl", "0"], 2, "ttl"),
        (["token", "mint", "not-a-uuid"], 2, "UUID"),
        (["token", "rotate", "not-a-uuid"], 2, "UUID"),
        (["token", "mint", "{unknown}"], 1, "{unknown}"),
        (["token", "rotate", "{unknown}"], 1, "{unknown}"),
    ],
)
def test_cli_refusals(srv, args, code, words):
    u, _ = register(srv)
    unknown = str(uuid.uuid4())
    args = [a.format(u=u, unknown=unknown) for a in args]
    got, out, err = run(srv, *args)
    assert got == code, (got, out, err)
    assert out == ""
    assert words.format(unknown=unknown) in err, err


def test_removal_takes_the_keys_with_it(srv):
    u, key = register(srv)
    assert run(srv, "token", "rotate", u)[0] == 0
    db = srv.workdir / ".dpms" / "registry.sqlite3"

    def keys_of(owner):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return c.execute("SELECT count(*) FROM keys WHERE owner = ?", (owner,)).fetchone()[0]

    assert keys_of(u) == 2
    r = call(srv, "DELETE", f"/tenants/{u}")
    assert r.status_code == 200, describe(r)
    assert keys_of(u) == 0
    error(call(srv, "POST", f"/tenants/{u}/tokens", json={}), 404, "not_found")
    # Registering the same uuid again makes a fresh key, not the old one back.
    r = call(srv, "POST", "/tenants", json={"userid": f"again-{uuid.uuid4().hex[:8]}", "uuid": u})
    assert r.status_code == 201, describe(r)
    again = body_json(r)["key"]
    assert again["kid"] != key["kid"] and again["secret"] != key["secret"]

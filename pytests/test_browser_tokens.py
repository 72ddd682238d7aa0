"""The browser client (SPEC §12): a page served by dpms imports `clients/js/dpms-token.js`,
mints a token in headless Chromium (Debian's `chromium`, driven over the DevTools protocol) from
a session key the admin API made, and calls a token-only endpoint: one 200, then the same token
again: 401. `./run-tests.sh` installs Chromium when it is missing."""

from __future__ import annotations

import json
import pathlib
import time
import urllib.parse
import uuid


from browser_helpers import BROWSER_SECS, Browser
from dpms_helpers import describe, write_atomic
from token_helpers import mint, run_dpms

ADMIN = "7e3b9a1c-4d2f-4a6e-8c5b-0f9d1e2a3b4c"
REPO = pathlib.Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "js" / "dpms-token.js"


def admin_token(key: dict) -> str:
    return mint(key, ADMIN)


def cli(data: pathlib.Path, *args) -> dict:
    return json.loads(run_dpms(data, ADMIN, *args))


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dpms tokens</title></head>
<body><pre id="out">running</pre>
<script type="module">
import { mintToken } from "/rest/services/%(tenant)s/browser-client/";
window.dpmsResult = (async () => {
  const session = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  const path = `/rest/services/${session.sub}/browser-private/`;
  const token = await mintToken(session, { method: "GET", path });
  const first = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  const again = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  const other = await fetch(path, { headers: { "X-Dpms-Token": await mintToken(session, { path }) } });
  const elsewhere = await fetch(path, {
    method: "POST", headers: { Authorization: `Bearer ${await mintToken(session, { method: "GET", path })}` },
  });
  return JSON.stringify({
    first: first.status, body: await first.json(), again: again.status,
    challenge: again.headers.get("WWW-Authenticate"), other: other.status, elsewhere: elsewhere.status,
    distinct: token !== await mintToken(session, { path }),
  });
})().catch((e) => JSON.stringify({ error: String(e && e.stack || e) }));
window.dpmsResult.then((r) => { document.getElementById("out").textContent = r; });
</script></body></html>
"""


def test_a_page_mints_a_token_and_it_is_served_once(start_server, tmp_path, chromium):
    data = tmp_path / "data"
    admin_key = cli(data, "token", "rotate", ADMIN)
    tenant = cli(data, "tenant", "add", f"browser-{uuid.uuid4().hex[:8]}")["uuid"]
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "browser.py",
        "import pathlib\n"
        "from vyperlogix.decorators import expose\n"
        "from dpms.response import Response\n"
        f"PAGE = {PAGE % {'tenant': tenant}!r}\n"
        f"CLIENT = pathlib.Path({str(CLIENT)!r})\n"
        "@expose.endpoint(method='GET', API='browser-page', auth='public')\n"
        "def page(**kwargs):\n"
        "    return Response(PAGE, content_type='text/html; charset=utf-8')\n"
        "@expose.endpoint(method='GET', API='browser-client', auth='public')\n"
        "def client(**kwargs):\n"
        "    return Response(CLIENT.read_text(encoding='utf-8'), content_type='text/javascript; charset=utf-8')\n"
        "@expose.endpoint(method='GET', API='browser-private', auth='token')\n"
        "def private(**kwargs):\n"
        "    return {'private': True}\n",
    )
    server = start_server(
        env={
            "MULTI_TENANT": "True",
            "ADMIN_ID": ADMIN,
            "DPMS_WORKERS": "2",
            "DPMS_REQUIRE_TOKENS": "True",
            "DPMS_DATA_DIR": str(data),
        },
        plugin_dirs=[plugins],
    )
    r = server.post(
        f"/rest/admin/tenants/{tenant}/sessions",
        json={"ttl": 600},
        headers={"Authorization": "Bearer " + admin_token(admin_key)},
    )
    assert r.status_code == 201, describe(r)
    session = r.json()
    assert set(session) == {"status", "kid", "key", "exp"}, session
    assert 595 <= session["exp"] - time.time() <= 605
    session = {"kid": session["kid"], "key": session["key"], "exp": session["exp"], "sub": tenant}

    fragment = urllib.parse.quote(json.dumps(session))
    url = f"{server.url}/rest/services/{tenant}/browser-page/#{fragment}"
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=url)
        deadline = time.monotonic() + BROWSER_SECS
        while True:
            got = browser.send(
                "Runtime.evaluate", expression="window.dpmsResult", awaitPromise=True, returnByValue=True
            )["result"]
            if got.get("type") == "string":
                break
            assert time.monotonic() < deadline, f"the page never ran: {got}"
            time.sleep(0.2)
    finally:
        browser.close()
    result = json.loads(got["value"])
    assert "error" not in result, result["error"]
    assert result["first"] == 200 and result["body"]["response"] == {"browser.private": {"private": True}}, result
    assert result["again"] == 401, result
    assert result["challenge"] == 'Bearer realm="dpms", error="invalid_token"', result
    assert result["other"] == 200, result  # X-Dpms-Token, unbound method
    assert result["elsewhere"] == 401, result  # bound to GET, sent as POST
    assert result["distinct"] is True


def test_sessions_refusals_and_their_end(start_server, tmp_path):
    """Sessions through the admin API without a browser: bad ttl, unknown tenant, a session
    token for another tenant's URL, and the end of every session with the key's rotation."""
    data = tmp_path / "data"
    tenant = cli(data, "tenant", "add", f"s-{uuid.uuid4().hex[:8]}")["uuid"]
    other = cli(data, "tenant", "add", f"o-{uuid.uuid4().hex[:8]}")["uuid"]
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "sessions.py",
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='GET', API='s-private', auth='token')\n"
        "def private(**kwargs):\n"
        "    return 'ok'\n",
    )
    server = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "1", "DPMS_DATA_DIR": str(data),
             "DPMS_KEY_GRACE_SECS": "300"},
        plugin_dirs=[plugins],
    )
    auth = {"Authorization": f"Bearer {ADMIN}"}  # tokens not required: ADMIN_ID is the bearer
    for body in [{"ttl": 0}, {"ttl": 86401}, {"ttl": "60"}, {"ttl": 60, "sub": tenant}]:
        r = server.post(f"/rest/admin/tenants/{tenant}/sessions", json=body, headers=auth)
        assert r.status_code == 400, describe(r)
    r = server.post(f"/rest/admin/tenants/{uuid.uuid4()}/sessions", json={}, headers=auth)
    assert r.status_code == 404, describe(r)
    r = server.post(f"/rest/admin/tenants/{tenant}/sessions", headers=auth)  # no body: defaults
    assert r.status_code == 201, describe(r)
    s = r.json()
    assert 3595 <= s["exp"] - time.time() <= 3605, s

    def token(sub):
        return mint({"kid": s["kid"], "secret": s["key"]}, sub, ttl=30)

    path = f"/rest/services/{tenant}/s-private/"
    assert server.get(path, headers={"Authorization": "Bearer " + token(tenant)}).status_code == 200
    # A session of one tenant is nothing on another's URL.
    r = server.get(f"/rest/services/{other}/s-private/", headers={"Authorization": "Bearer " + token(other)})
    assert r.status_code == 401, describe(r)
    # A forged expiry in the kid derives another key: refused.
    forged = dict(s, kid=s["kid"].rsplit(".", 1)[0] + "." + str(s["exp"] + 100))
    bad = mint({"kid": forged["kid"], "secret": s["key"]}, tenant, ttl=30)
    assert server.get(path, headers={"Authorization": "Bearer " + bad}).status_code == 401
    # Rotating the tenant's key ends its sessions at once (the old key keeps its grace for
    # plain tokens only).
    r = server.post(f"/rest/admin/tenants/{tenant}/keys", headers=auth)
    assert r.status_code == 201, describe(r)
    assert server.get(path, headers={"Authorization": "Bearer " + token(tenant)}).status_code == 401

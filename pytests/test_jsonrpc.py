"""JSON-RPC 2.0 (SPEC §13) at /rpc and /api through real servers: every example of the
specification's "Examples" section, on plugin functions of the same shape, answers as the
specification shows; then what dpms adds: its error codes, `<module>.<api>` names, typed
parameters, a tenant's view, tokens (one per HTTP request, a batch included), limits."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from dpms_helpers import TIMEOUT, describe, error, write_atomic
from token_helpers import add_tenant, mint, run_dpms, serve_registry

ADMIN = "4d6f8a0b-2c3e-4a5b-9d7f-1e3a5c7e9b0d"

EXAMPLES = '''
from vyperlogix.decorators import expose

UPDATES = []


@expose.endpoint(method="POST", API="subtract")
def subtract(minuend, subtrahend):
    return minuend - subtrahend


@expose.endpoint(method="POST", API="update")
def update(*args):
    UPDATES.append(list(args))


@expose.endpoint(method="POST", API="sum")
def total(*args):
    return sum(args)


@expose.endpoint(method="GET", API="get_data")
def get_data():
    return ["hello", 5]


@expose.endpoint(method="POST", API="notify_hello")
def notify_hello(*args):
    UPDATES.append(["hello", *args])


@expose.endpoint(method="GET", API="rpc-updates")
def updates():
    return UPDATES


@expose.endpoint(method="POST", API="rpc-boom")
def boom():
    raise ValueError("boom")


@expose.endpoint(method="POST", API="rpc-slow")
def slow():
    import time
    time.sleep(30)


STARTS = []


@expose.endpoint(method="POST", API="rpc-slow-start")
def slow_start():
    import time
    STARTS.append(1)
    time.sleep(30)


@expose.endpoint(method="GET", API="rpc-starts")
def starts():
    return len(STARTS)


@expose.endpoint(method="GET|POST", API="rpc-typed")
def typed(n: int, when: "datetime.date" = None, **kwargs):
    return {"n": n, "when": str(when), "func": kwargs.get("func")}


@expose.endpoint(method="POST", API="rpc-request")
def seen(__request__):
    return {"method": __request__.method, "json": __request__.json}


import datetime  # noqa: E402 - the annotation above names it
'''


def rpc(server, body, path="/rpc", headers=None):
    """POSTs `body` (an object, or text sent as is) and returns the response."""
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=TIMEOUT,
                         headers={"Content-Type": "application/json", **(headers or {})})


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rpc-plugins")
    write_atomic(folder / "rpc_examples.py", EXAMPLES)
    return folder


@pytest.fixture(scope="module")
def server(start_module_server, plugins):
    return start_module_server(env={"DPMS_WORKERS": "1", "MAX_FUNCTION_SECS": "1"}, plugin_dirs=[plugins])


# JSON-RPC 2.0 specification, section 7 ("Examples"): request, and the reply it shows.
SPEC_EXAMPLES = [
    # rpc call with positional parameters
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     {"jsonrpc": "2.0", "result": -19, "id": 2}),
    # rpc call with named parameters
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
     {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
     {"jsonrpc": "2.0", "result": 19, "id": 4}),
    # a Notification
    ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ('{"jsonrpc": "2.0", "method": "foobar"}', None),
    # rpc call of non-existent method
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    # rpc call with invalid JSON
    ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    # rpc call with invalid Request object
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    # rpc call Batch, invalid JSON
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method"]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    # rpc call with an empty Array
    ("[]", {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    # rpc call with an invalid Batch (but not empty)
    ("[1]", [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    # rpc call with invalid Batch
    ("[1,2,3]", [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    # rpc call Batch
    ("""[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]""", [
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ]),
    # rpc call Batch (all notifications)
    ("""[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]""", None),
]


def without_data(reply):
    """The reply as the specification writes it: dpms adds `data` to errors."""
    if isinstance(reply, list):
        return [without_data(r) for r in reply]
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        reply = dict(reply, error={k: v for k, v in reply["error"].items() if k != "data"})
    return reply


@pytest.mark.parametrize("path", ["/rpc", "/api"])
@pytest.mark.parametrize("request_text,expected", SPEC_EXAMPLES)
def test_the_specifications_examples(server, path, request_text, expected):
    r = rpc(server, request_text, path)
    if expected is None:
        assert r.status_code == 204 and r.content == b"", describe(r)
        return
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), describe(r)
    assert without_data(r.json()) == expected


def test_notifications_run(server):
    before = len(rpc(server, {"jsonrpc": "2.0", "method": "rpc-updates", "id": 1}).json()["result"])
    assert rpc(server, {"jsonrpc": "2.0", "method": "update", "params": ["n", 1]}).status_code == 204
    assert rpc(server, [{"jsonrpc": "2.0", "method": "notify_hello", "params": [2]}]).status_code == 204
    after = rpc(server, {"jsonrpc": "2.0", "method": "rpc-updates", "id": 1}).json()["result"]
    assert after[before:] == [["n", 1], ["hello", 2]], after


def test_dpms_error_codes(server):
    def err(body):
        r = rpc(server, dict({"jsonrpc": "2.0", "id": 7}, **body))
        assert r.status_code == 200, describe(r)
        reply = r.json()
        assert reply["id"] == 7 and "result" not in reply, reply
        return reply["error"]

    e = err({"method": "rpc-boom"})
    assert e["code"] == -32000 and e["data"]["exception"] == "ValueError: boom", e
    assert e["data"]["error"] == "plugin_error"
    e = err({"method": "rpc-slow"})
    assert e["code"] == -32001 and e["data"]["error"] == "timeout", e
    e = err({"method": "subtract", "params": [1]})
    assert e["code"] == -32602 and e["data"]["error"] == "missing_argument", e
    e = err({"method": "subtract", "params": [1, 2, 3]})
    assert e["code"] == -32602 and e["data"]["error"] == "bad_arguments", e
    e = err({"method": "rpc-typed", "params": {"n": "x"}})
    assert e["code"] == -32602 and e["data"]["parameter"] == "n" and e["data"]["expected"] == "int", e
    e = err({"method": "rpc.discover"})
    assert e["code"] == -32601, e
    e = err({"method": "__dir__"})
    assert e["code"] == -32601, e
    r = rpc(server, '{"jsonrpc": "2.0", "id": 7, "method": "subtract", "params": [%s, 1]}' % ("9" * 5000))
    e = r.json()["error"]
    assert e["code"] == -32602 and e["data"]["error"] == "bad_request", e


def test_a_batch_is_bounded_by_one_call_time(server):
    """A batch of slow calls answers within one MAX_FUNCTION_SECS: the first call times out and
    the others are answered -32001 without running (regression: they ran one after another,
    holding the connection for MAX_FUNCTION_SECS each)."""
    before = rpc(server, {"jsonrpc": "2.0", "method": "rpc-starts", "id": 0}).json()["result"]
    r = rpc(server, [{"jsonrpc": "2.0", "method": "rpc-slow-start", "id": i} for i in range(3)])
    replies = r.json()
    assert [x["id"] for x in replies] == [0, 1, 2], replies
    assert all(x["error"]["code"] == -32001 for x in replies), replies
    after = rpc(server, {"jsonrpc": "2.0", "method": "rpc-starts", "id": 0}).json()["result"]
    assert after - before == 1, (before, after)


def test_names_types_and_the_request(server):
    def result(body):
        r = rpc(server, dict({"jsonrpc": "2.0", "id": "x"}, **body))
        assert "result" in r.json(), describe(r)
        return r.json()["result"]

    assert result({"method": "rpc_examples.subtract", "params": [5, 3]}) == 2
    assert result({"method": "rpc-typed", "params": {"n": "5", "when": "2024-01-02"}}) == {
        "n": 5, "when": "2024-01-02", "func": "rpc-typed"}
    # Reserved names cannot come from params, as from a body.
    assert result({"method": "rpc-typed", "params": {"n": 1, "func": "other"}})["func"] == "rpc-typed"
    seen = result({"method": "rpc-request", "params": {}})
    assert seen["method"] == "POST" and seen["json"]["method"] == "rpc-request", seen


def test_methods_and_bad_bodies(server):
    r = requests.get(server.url + "/rpc", timeout=TIMEOUT)
    error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST, OPTIONS"
    r = requests.options(server.url + "/api", timeout=TIMEOUT)
    assert r.status_code == 204 and "POST" in r.headers["Allow"], describe(r)
    r = rpc(server, "")
    assert r.json()["error"]["code"] == -32700, describe(r)
    r = rpc(server, b"\xff\xfe".decode("latin-1"))
    assert r.json()["error"]["code"] == -32700, describe(r)
    big = [{"jsonrpc": "2.0", "method": "get_data", "id": i} for i in range(1001)]
    assert rpc(server, big).json()["error"]["code"] == -32600
    r = rpc(server, [{"jsonrpc": "2.0", "method": "get_data", "id": i} for i in range(50)])
    assert [x["id"] for x in r.json()] == list(range(50)), describe(r)


def test_a_tenants_view(start_server, tmp_path):
    data = tmp_path / "data"
    mine, other = add_tenant(data, ADMIN, "ra"), add_tenant(data, ADMIN, "rb")
    server = serve_registry(start_server, data, ADMIN, {
        "rpc_mine.py":
        f"__ID__ = {mine!r}\n"
        "from vyperlogix.decorators import expose\n"
        "import os\n"
        "@expose.endpoint(method='POST', API='whoami')\n"
        "def whoami(**kwargs):\n"
        "    return {'uuid': kwargs.get('uuid'), 'pid': os.getpid()}\n",
        "rpc_shared.py":
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='POST', API='shared')\n"
        "def shared(x: int):\n"
        "    return x * 2\n",
    }, MULTI_TENANT="True")
    r = rpc(server, [{"jsonrpc": "2.0", "method": "whoami", "id": 1},
                     {"jsonrpc": "2.0", "method": "shared", "params": {"x": "21"}, "id": 2}], f"/rpc/{mine}")
    replies = {x["id"]: x for x in r.json()}
    assert replies[1]["result"]["uuid"] == mine, replies
    assert replies[2]["result"] == 42, replies
    # Another tenant does not see it; an unknown uuid, or none, is the same 404 as on REST.
    r = rpc(server, {"jsonrpc": "2.0", "method": "whoami", "id": 1}, f"/api/{other}")
    assert r.json()["error"]["code"] == -32601, describe(r)
    error(rpc(server, {"jsonrpc": "2.0", "method": "whoami", "id": 1}, f"/rpc/{uuid.uuid4()}"), 404, "not_found")
    error(rpc(server, {"jsonrpc": "2.0", "method": "whoami", "id": 1}, "/rpc"), 404, "not_found")


def test_tokens(start_server, tmp_path):
    data = tmp_path / "data"
    key = json.loads(run_dpms(data, ADMIN, "token", "rotate", ADMIN))
    server = serve_registry(start_server, data, ADMIN, {
        "rpc_tok.py":
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='POST', API='t-open', auth='public')\n"
        "def o():\n    return 'open'\n"
        "@expose.endpoint(method='POST', API='t-closed', auth='token')\n"
        "def c():\n    return 'closed'\n"
        "@expose.endpoint(method='POST', API='t-closed2', auth='token')\n"
        "def c2():\n    return 'closed2'\n",
    }, DPMS_WORKERS="2")
    call = lambda m, i: {"jsonrpc": "2.0", "method": m, "id": i}  # noqa: E731
    # No token: public served, token-only refused with -32003 (tokens not required server-wide).
    r = rpc(server, [call("t-open", 1), call("t-closed", 2)])
    got = {x["id"]: x for x in r.json()}
    assert got[1]["result"] == "open" and got[2]["error"]["code"] == -32003, got
    # One token serves every call of its request, and only that request.
    token = {"Authorization": "Bearer " + mint(key, ADMIN, htm="POST", htu="/rpc")}
    r = rpc(server, [call("t-closed", 1), call("t-closed2", 2)], headers=token)
    assert [x.get("result") for x in r.json()] == ["closed", "closed2"], describe(r)
    r = rpc(server, call("t-closed", 3), headers=token)
    assert r.json()["error"]["code"] == -32003, describe(r)


def test_tokens_required(start_server, tmp_path):
    data = tmp_path / "data"
    key = json.loads(run_dpms(data, ADMIN, "token", "rotate", ADMIN))
    server = serve_registry(start_server, data, ADMIN, {
        "rpc_req.py":
        "from vyperlogix.decorators import expose\n"
        "@expose.endpoint(method='POST', API='r-open', auth='public')\n"
        "def o():\n    return 'open'\n"
        "@expose.endpoint(method='POST', API='r-any')\n"
        "def a():\n    return 'any'\n",
    }, DPMS_REQUIRE_TOKENS="True")
    r = rpc(server, {"jsonrpc": "2.0", "method": "r-any", "id": 1})
    error(r, 401, "unauthorized")
    assert "invalid_token" in r.headers["WWW-Authenticate"]
    r = rpc(server, {"jsonrpc": "2.0", "method": "r-open", "id": 1})
    assert r.json()["result"] == "open", describe(r)
    r = rpc(server, {"jsonrpc": "2.0", "method": "r-any", "id": 1},
            headers={"Authorization": "Bearer " + mint(key, ADMIN)})
    assert r.json()["result"] == "any", describe(r)

"""SPEC §5: marshalling a request into ``f(*args, **kwargs)``."""

import json
import os
import uuid
from urllib.parse import quote

import pytest

from dpms_helpers import Probe, describe, error, ok, source, unique

PROBE_SRC = """
from dpms import expose

ALL = "GET|POST|PUT|DELETE|PATCH"


@expose.endpoint(method=ALL, API="$p-echo")
def echo_all(*args, **kwargs):
    req = kwargs.get("__request__")
    return {
        "args": list(args),
        "kwargs": {k: v for k, v in kwargs.items() if k != "__request__"},
        "request_type": type(req).__name__,
        "has_request": "__request__" in kwargs,
    }


@expose.endpoint(method=ALL, API="$p-req")
def req_info(**kwargs):
    r = kwargs["__request__"]
    try:
        r.method = "HACKED"
        read_only = False
    except Exception:
        read_only = True
    try:
        hdr_missing = r.headers.get("x-not-sent-at-all")
    except Exception as e:
        hdr_missing = "error: %r" % e
    return {
        "method": r.method,
        "path": r.path,
        "query_params": dict(r.query_params),
        "query_list": [list(p) for p in r.query_list],
        "h_lower": r.headers.get("x-probe-header"),
        "h_upper": r.headers["X-PROBE-HEADER"],
        "h_mixed": r.headers["X-Probe-Header"],
        "h_in": "x-PROBE-header" in r.headers,
        "h_missing": hdr_missing,
        "body_type": type(r.body).__name__,
        "body": bytes(r.body).decode("utf-8", "replace"),
        "json": r.json,
        "remote_addr": r.remote_addr,
        "uuid": r.uuid,
        "role": r.role,
        "read_only": read_only,
    }


@expose.endpoint(API="$p-named")
def named(alpha, beta="dflt"):
    return {"alpha": alpha, "beta": beta}


@expose.endpoint(API="$p-kwonly")
def kwonly(*, kay, opt=5):
    return {"kay": kay, "opt": opt}


@expose.endpoint(method="POST", API="$p-pos")
def pos(ex, why):
    return [ex, why]


@expose.endpoint(method="POST", API="$p-varargs")
def varargs(*args):
    return list(args)


@expose.endpoint(method="GET|POST", API="$p-nothing")
def nothing():
    return "nothing"


@expose.endpoint(method="GET|POST", API="$p-reserved")
def reserved(func, __body__=None, module=None, uuid=None):
    return {"func": func, "__body__": __body__, "module": module, "uuid": uuid}


@expose.endpoint(method="POST", API="$p-mixed")
def mixed(ex, *args, kay=1, **kwargs):
    return {"ex": ex, "args": list(args), "kay": kay,
            "kw": sorted(k for k in kwargs if k != "__request__")}


@expose.endpoint(method="GET|POST", API="$p-reqonly")
def reqonly(__request__):
    return type(__request__).__name__


@expose.endpoint(method=ALL, API="$p-touch")
def touch(*args, **kwargs):
    open(kwargs["marker"], "w").close()
    return "ran"
"""


@pytest.fixture(scope="module")
def probe(server, write_module_plugin):
    mod = unique("probe")
    prefix = f"p{uuid.uuid4().hex[:10]}"
    write_module_plugin(mod, source(PROBE_SRC, p=prefix))
    return Probe(server, mod, prefix, echo_func="echo_all")


# --------------------------------------------------------------------------------------------
# kwargs assembly


def test_override_order(probe):
    body = {"a": "body", "parm_1": "body", "b": "body"}
    res = probe.echo("POST", "URL/?parm_1=query&a=query&c=query", json=body)
    kw = res["kwargs"]
    assert kw["b"] == "body"  # body only
    assert kw["a"] == "query"  # query beats body
    assert kw["c"] == "query"
    assert kw["parm_1"] == "URL"  # URL parameters beat query and body
    assert kw["func"] == f"{probe.p}-echo"
    assert kw["__body__"] == body
    assert set(kw) == {"a", "b", "c", "parm_1", "func", "__body__"}
    assert res["args"] == []
    assert res["has_request"] is True


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_reserved_keys_cannot_be_spoofed(probe, method):
    body = {
        "func": "spoof",
        "module": "spoof",
        "uuid": "spoof",
        "__request__": "spoof",
        "__body__": "spoof",
        "keep": 1,
    }
    q = "?func=q&module=q&uuid=q&__request__=q&__body__=q&other=q"
    res = probe.echo(method, q, json=body)
    kw = res["kwargs"]
    assert kw["func"] == f"{probe.p}-echo"
    assert "module" not in kw and "uuid" not in kw
    assert kw["__body__"] == body  # the body still holds what was sent
    assert kw["keep"] == 1 and kw["other"] == "q"
    assert res["request_type"] not in ("str", "NoneType")


def test_reserved_keys_in_get_query(probe):
    res = probe.echo("GET", "?func=q&module=q&uuid=q&__request__=q&__body__=q")
    kw = res["kwargs"]
    assert kw == {"func": f"{probe.p}-echo"}
    assert res["request_type"] != "str"


def test_reserved_from_url(probe):
    ident = str(uuid.uuid4())
    r = probe.server.get(f"{ident}/{probe.mod}/{probe.p}-reserved/")
    assert ok(r, f"{probe.mod}.reserved") == {
        "func": f"{probe.p}-reserved",
        "__body__": None,
        "module": probe.mod,
        "uuid": ident,
    }
    r = probe.server.post(f"{probe.p}-reserved/?func=x", json={"z": 1, "module": "m"})
    assert ok(r) == {
        "func": f"{probe.p}-reserved",
        "__body__": {"z": 1, "module": "m"},
        "module": None,
        "uuid": None,
    }


MAP_CASES = [
    # body, URL params path, expected kwargs subset, keys that must be absent
    ({"__map__": {"parm_1": "first"}}, "X/Y/", {"first": "X", "parm_2": "Y"}, {"parm_1", "__map__"}),
    (
        {"__map__": {"parm_1": "a", "parm_2": "b"}, "a": "body"},
        "X/Y/",
        {"a": "X", "b": "Y"},
        {"parm_1", "parm_2", "__map__"},
    ),
    # __map__ renames URL parameters only: a body key or query key is left alone.
    ({"__map__": {"k": "zz"}, "k": 1}, "X/?q=2", {"k": 1, "parm_1": "X", "q": "2"}, {"zz", "__map__"}),
    ({"__map__": {"q": "zz"}}, "?q=2", {"q": "2"}, {"zz", "__map__"}),
    # Renaming onto a reserved name does not beat the reserved key.
    ({"__map__": {"parm_1": "func"}}, "X/", {}, {"parm_1", "__map__"}),
    ({"__map__": {}}, "X/", {"parm_1": "X"}, {"__map__"}),
]


@pytest.mark.parametrize("body,path,expected,absent", MAP_CASES)
def test_map_renames_url_params(probe, body, path, expected, absent):
    kw = probe.echo("POST", path, json=body)["kwargs"]
    for k, v in expected.items():
        assert kw[k] == v, kw
    assert not (absent & set(kw)), kw
    assert kw["func"] == f"{probe.p}-echo"
    assert kw["__body__"] == {k: v for k, v in body.items() if k != "__map__"}


ARRAY_CASES = [
    ([[1, 2]], "", [1, 2], {}),
    ([[]], "", [], {}),
    ([["Bob"], {"last_name": "Ross"}], "", ["Bob"], {"last_name": "Ross"}),
    ([[1], {"k": "body"}], "?k=query", [1], {"k": "query"}),
    ([[1], {"__map__": {"parm_1": "renamed"}}], "X/", [1], {"renamed": "X"}),
    ([[{"nested": [1, 2]}, None, True], {}], "", [{"nested": [1, 2]}, None, True], {}),
]


@pytest.mark.parametrize("body,path,args,expected", ARRAY_CASES)
def test_array_body_forms(probe, body, path, args, expected):
    res = probe.echo("POST", path, json=body)
    assert res["args"] == args
    kw = res["kwargs"]
    for k, v in expected.items():
        assert kw[k] == v
    assert "__map__" not in kw
    if len(body) == 2 and "__map__" in body[1]:
        assert kw["__body__"] == [body[0], {k: v for k, v in body[1].items() if k != "__map__"}]
    else:
        assert kw["__body__"] == body


def test_object_body_args(probe):
    res = probe.echo("PUT", json={"args": [1, "two", [3]], "k": "v"})
    assert res["args"] == [1, "two", [3]]
    assert res["kwargs"]["k"] == "v"
    assert "args" not in res["kwargs"]


# --------------------------------------------------------------------------------------------
# Content types, empty and ignored bodies

FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "content_type,data,args,expected,body",
    [
        (FORM, "a=1&b=x%20y", [], {"a": "1", "b": "x y"}, {"a": "1", "b": "x y"}),
        # no special args meaning in a form
        (FORM, "args=5&n=1", [], {"args": "5", "n": "1"}, {"args": "5", "n": "1"}),
        (FORM + "; charset=utf-8", "u=%C3%BC", [], {"u": "\u00fc"}, {"u": "\u00fc"}),
        # a form-typed body that is JSON is read as JSON (curl -d's default type)
        (FORM, '{"args": [1], "x": 2}', [1], {"x": 2}, {"args": [1], "x": 2}),
        (FORM, '[[1, 2], {"x": 3}]', [1, 2], {"x": 3}, [[1, 2], {"x": 3}]),
        # no content type and any */*+json type are parsed as JSON; other types are not
        # parsed at all (pytests/test_bodies.py)
        ("application/problem+json", '{"args": [7], "t": true}', [7], {"t": True}, {"args": [7], "t": True}),
        ("APPLICATION/JSON", '{"x": null}', [], {"x": None}, {"x": None}),
        (None, '{"args": ["n"], "y": 1.5}', ["n"], {"y": 1.5}, {"args": ["n"], "y": 1.5}),
        ("application/json; charset=utf-8", '{"s": "\u00fc"}', [], {"s": "\u00fc"}, {"s": "\u00fc"}),
    ],
)
def test_content_types(probe, content_type, data, args, expected, body):
    headers = {"Content-Type": content_type} if content_type else {}
    # requests would add no type for str data: that is the "no content type" case.
    res = probe.echo("POST", data=data.encode("utf-8"), headers=headers)
    assert res["args"] == args
    kw = res["kwargs"]
    for k, v in expected.items():
        assert kw[k] == v, kw
    assert kw["__body__"] == body


@pytest.mark.parametrize("content_type", [None, "application/json", FORM])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_empty_body_is_no_body(probe, method, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    res = probe.echo(method, "?a=1", data=b"", headers=headers)
    assert res["args"] == []
    assert res["kwargs"] == {"a": "1", "func": f"{probe.p}-echo"}


@pytest.mark.parametrize(
    "data",
    ['{"x": 1, "args": [1]}', "{bad json", "[[1], 5]", '"str"', "x" * 100],
)
def test_get_ignores_body(probe, data):
    res = probe.echo("GET", "?a=1", data=data, headers={"Content-Type": "application/json"})
    assert res["args"] == []
    assert res["kwargs"] == {"a": "1", "func": f"{probe.p}-echo"}


# --------------------------------------------------------------------------------------------
# 400 before any plugin runs

BAD_BODIES = [
    ("{bad json", "json"),
    ('{"a": 1,}', "json"),
    ('{"a": 1} trailing', "json"),
    ('"a string"', None),
    ("42", None),
    ("null", None),
    ("true", None),
    ('{"args": 5}', "args"),
    ('{"args": "abc"}', "args"),
    ('{"args": {"a": 1}}', "args"),
    ('{"args": null}', "args"),
    ('{"__map__": 5}', "__map__"),
    ('{"__map__": ["parm_1"]}', "__map__"),
    ('{"__map__": {"parm_1": 5}}', "__map__"),
    ('{"__map__": {"parm_1": null}}', "__map__"),
    ("[1, 2]", None),
    ('[[1], 5]', None),
    ('[[1], {}, {}]', None),
    ('[[1], {"args": [2]}]', "args"),
    ('[[1], {"__map__": 3}]', "__map__"),
    ('{"n": ' + "9" * 5000 + "}", None),  # over CPython's 4300-digit limit
    ('{"args": [' + "1" * 4301 + "]}", None),
]


@pytest.mark.parametrize("data,mentions", BAD_BODIES, ids=[d[:24] for d, _ in BAD_BODIES])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_body_is_400_before_plugin(probe, tmp_path, data, mentions, method):
    marker = tmp_path / "ran"
    r = probe.call(
        method,
        "touch",
        "?marker=" + quote(str(marker)),
        data=data.encode(),
        headers={"Content-Type": "application/json"},
    )
    body = error(r, 400, "bad_request")
    if mentions:
        assert mentions.lower() in body["status"].lower(), body
    assert not marker.exists(), "the plugin ran on a bad request"


def test_good_body_runs_plugin(probe, tmp_path):
    marker = tmp_path / "ran"
    r = probe.call("POST", "touch", "?marker=" + quote(str(marker)), json={"args": []})
    assert ok(r) == "ran"
    assert marker.exists()


# --------------------------------------------------------------------------------------------
# Numbers, unicode

BIG = 2**200


NUMBERS = [BIG, -BIG, 2**64, 2**63 - 1, -(2**63), 10**4299 * 9, 0, 1.5, -0.25, 1e300, 12345678901234567890]


@pytest.mark.parametrize("value", NUMBERS, ids=[repr(n)[:20] for n in NUMBERS])
def test_numbers_exact(probe, value):
    res = probe.echo("POST", json={"args": [value], "n": value, "nested": {"l": [value]}})
    assert res["args"] == [value]
    kw = res["kwargs"]
    assert kw["n"] == value and type(kw["n"]) is type(value)
    assert kw["nested"] == {"l": [value]}


def test_4300_digit_integer_is_fine(probe):
    value = int("7" * 4300)
    res = probe.echo("POST", data=('{"n": ' + "7" * 4300 + "}").encode())
    assert res["kwargs"]["n"] == value


def test_unicode_everywhere(probe):
    seg = "\u00fcn\u00ef c\u00f6de/\u2713"
    r = probe.server.get(
        f"{probe.p}-echo/{quote(seg, safe='')}/?q={quote('日本 😀')}&{quote('ключ')}=v"
    )
    kw = ok(r)["kwargs"]
    assert kw["parm_1"] == seg
    assert kw["q"] == "日本 😀"
    assert kw["ключ"] == "v"
    body = {"s": "😀 \u00fc \u0000 \u2028", "😀": ["日本"]}
    res = probe.echo("POST", json=body)
    assert res["kwargs"]["s"] == body["s"]
    assert res["kwargs"]["😀"] == ["日本"]
    res = probe.echo("POST", data=json.dumps(body, ensure_ascii=False).encode("utf-8"))
    assert res["kwargs"]["__body__"] == body


def test_plus_is_space_in_query_only(probe):
    r = probe.server.raw("GET", f"/rest/services/{probe.p}-echo/a+b/?q=c+d&r=%2B&s=+")
    kw = ok(r)["kwargs"]
    assert kw["parm_1"] == "a+b"
    assert kw["q"] == "c d"
    assert kw["r"] == "+"
    assert kw["s"] == " "


# --------------------------------------------------------------------------------------------
# __request__


def test_request_object_post(probe):
    ident = str(uuid.uuid4())
    data = b'{"n": [1], "k": "v"}'
    r = probe.server.post(
        f"{ident}/{probe.p}-req/x/?a=1&a=2&b=3",
        data=data,
        headers={"X-Probe-Header": "hv", "Content-Type": "application/json"},
    )
    info = ok(r, f"{probe.mod}.req_info")
    assert info["method"] == "POST"
    assert info["path"].startswith("/rest/services/") and info["path"].endswith(f"{probe.p}-req/x/")
    assert "?" not in info["path"]
    assert info["query_params"] == {"a": "2", "b": "3"}
    assert info["query_list"] == [["a", "1"], ["a", "2"], ["b", "3"]]
    assert info["h_lower"] == info["h_upper"] == info["h_mixed"] == "hv"
    assert info["h_in"] is True
    assert info["h_missing"] is None
    assert info["body_type"] == "bytes"
    assert info["body"] == data.decode()
    assert info["json"] == {"n": [1], "k": "v"}
    assert info["remote_addr"].startswith("127.0.0.1")
    assert info["uuid"] == ident
    assert info["role"] == "admin"  # MULTI_TENANT off: every call runs as admin (§7)
    assert info["read_only"] is True


def test_request_object_get(probe):
    r = probe.server.get(f"{probe.p}-req/?z=%20", headers={"x-probe-header": "g"})
    info = ok(r)
    assert info["method"] == "GET"
    assert info["query_params"] == {"z": " "}
    assert info["query_list"] == [["z", " "]]
    assert info["h_upper"] == "g"
    assert info["body_type"] == "bytes"
    assert info["body"] == ""
    assert info["json"] is None
    assert info["uuid"] is None


def test_request_only_parameter(probe):
    assert ok(probe.server.get(f"{probe.p}-reqonly/?x=1")) not in ("str", "NoneType")


# --------------------------------------------------------------------------------------------
# Binding to the signature

SIGNATURE_OK = [
    ("GET", "named", "?alpha=1&zzz=9", None, {"alpha": "1", "beta": "dflt"}),
    ("GET", "named", "?alpha=1&beta=2", None, {"alpha": "1", "beta": "2"}),
    ("GET", "named", "U/V/?alpha=1", None, {"alpha": "1", "beta": "dflt"}),
    ("GET", "kwonly", "?kay=3", None, {"kay": "3", "opt": 5}),
    ("GET", "kwonly", "?kay=3&opt=4", None, {"kay": "3", "opt": "4"}),
    ("POST", "pos", "", {"args": [1, 2]}, [1, 2]),
    ("POST", "pos", "", {"args": [1], "why": 2}, [1, 2]),
    ("POST", "pos", "", {"ex": 1, "why": 2, "extra": 3}, [1, 2]),
    ("POST", "pos", "", [[1], {"why": "w"}], [1, "w"]),
    ("POST", "varargs", "", {"args": [1, 2, 3], "k": 1}, [1, 2, 3]),
    ("GET", "nothing", "1/2/?q=1&r=2", None, "nothing"),
    ("POST", "nothing", "1/", {"k": 1}, "nothing"),
    (
        "POST",
        "mixed",
        "",
        {"args": [1, 2, 3], "kay": 4, "z": 5},
        {"ex": 1, "args": [2, 3], "kay": 4, "kw": ["__body__", "func", "z"]},
    ),
]


@pytest.mark.parametrize("method,api,path,body,expected", SIGNATURE_OK)
def test_signature_binding(probe, method, api, path, body, expected):
    r = probe.call(method, api, path, json=body)
    assert ok(r) == expected


SIGNATURE_ERRORS = [
    ("GET", "named", "?beta=1", None, "missing_argument", ["alpha"]),
    ("GET", "named", "1/", None, "missing_argument", ["alpha"]),
    ("GET", "kwonly", "?opt=1", None, "missing_argument", ["kay"]),
    ("POST", "pos", "", {"args": [1]}, "missing_argument", ["why"]),
    ("POST", "pos", "", {"args": [1, 2, 3]}, "bad_arguments", ["pos"]),
    ("POST", "pos", "", {"args": [1, 2], "ex": 3}, "bad_arguments", ["ex"]),
    ("POST", "nothing", "", {"args": [1]}, "bad_arguments", ["nothing"]),
    ("POST", "mixed", "", {"args": [1], "ex": 2}, "bad_arguments", ["ex"]),
    ("POST", "mixed", "", {"kay": 1}, "missing_argument", ["ex"]),
]


@pytest.mark.parametrize("method,api,path,body,code,mentions", SIGNATURE_ERRORS)
def test_signature_errors_are_400(probe, method, api, path, body, code, mentions):
    r = probe.call(method, api, path, json=body)
    body = error(r, 400, code)
    for word in mentions:
        assert word in body["status"], body


# --------------------------------------------------------------------------------------------
# 413, NUM_URL_PARMS: dedicated servers


@pytest.fixture(scope="module")
def small_body_server(start_module_server):
    return start_module_server(env={"DPMS_MAX_BODY": "1000"})


def body_of(size: int) -> bytes:
    data = b'{"p":"' + b"x" * (size - 8) + b'"}'
    assert len(data) == size
    return data


@pytest.mark.parametrize(
    "size,status",
    [(100, 200), (999, 200), (1000, 200), (1001, 413), (5000, 413), (20000, 413)],
)
def test_max_body(small_body_server, size, status):
    r = small_body_server.post("sample-one/", data=body_of(size))
    if status == 200:
        assert ok(r)["kwargs"]["p"] == "x" * (size - 8)
    else:
        error(r, 413, "body_too_large")


def test_max_body_chunked(small_body_server):
    def chunks():  # valid JSON, 1508 bytes in all, no Content-Length
        yield b'{"p":"'
        for _ in range(15):
            yield b"x" * 100
        yield b'"}'

    r = small_body_server.post("sample-one/", data=chunks(), headers={"Content-Type": "application/json"})
    error(r, 413, "body_too_large")
    # and the server is fine afterwards
    assert ok(small_body_server.get("hello-world/"))


@pytest.fixture(scope="module")
def url_parm_server(start_module_server):
    return start_module_server(
        env={"NUM_URL_PARMS": "3", "URL_PARM1": "alpha", "URL_PARM2": "beta"}
    )


@pytest.mark.parametrize(
    "path,expected",
    [
        ("hello-world/x/", {"alpha": "x"}),
        ("hello-world/x/y/", {"alpha": "x", "beta": "y"}),
        ("hello-world/x/y/z/", {"alpha": "x", "beta": "y", "parm_3": "z"}),
        ("module1/hello-world/x//z/", {"alpha": "x", "beta": "", "parm_3": "z", "module": "module1"}),
    ],
)
def test_url_parm_names(url_parm_server, path, expected):
    kw = ok(url_parm_server.get(path))["kwargs"]
    got = {k: v for k, v in kw.items() if k not in ("func",)}
    assert got == expected


@pytest.mark.parametrize("path", ["hello-world/1/2/3/4/", "v1/hello-world/1/2/3/4/5/"])
def test_num_url_parms_limit(url_parm_server, path):
    body = error(url_parm_server.get(path), 404, "too_many_url_params")
    assert "3" in body["status"]


def test_map_with_custom_names(url_parm_server):
    kw = ok(url_parm_server.post("sample-one/x/y/", json={"__map__": {"alpha": "renamed"}}))["kwargs"]
    assert kw["renamed"] == "x" and kw["beta"] == "y"
    assert "alpha" not in kw

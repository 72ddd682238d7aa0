"""SPEC §3 (URLs) and §4 (methods, status codes, headers, error bodies)."""

import uuid
from urllib.parse import quote

import pytest

from dpms_helpers import (
    JSON_CT,
    allow_set,
    body_json,
    describe,
    error,
    ok,
    source,
    unique,
    api_name,
)

TEN = "/".join(str(i) for i in range(1, 11))


def echo_kwargs(r, key="module1.foo"):
    return ok(r, key)["kwargs"]


# --------------------------------------------------------------------------------------------
# Path grammar


@pytest.mark.parametrize(
    "without,with_slash",
    [
        ("hello-world", "hello-world/"),
        ("hello-world/1/2", "hello-world/1/2/"),
        ("module1/hello-world/x", "module1/hello-world/x/"),
        ("v1/hello-world", "v1/hello-world/"),
        (f"hello-world/{TEN}", f"hello-world/{TEN}/"),
    ],
)
def test_trailing_slash_optional(server, without, with_slash):
    a = echo_kwargs(server.get(without + "?q=1"))
    b = echo_kwargs(server.get(with_slash + "?q=1"))
    assert a == b
    assert a["q"] == "1"


@pytest.mark.parametrize("path", ["__dir__", "__dir__/", "module1/__dir__", "v1/__dir__/"])
def test_dir_trailing_slash_optional(server, path):
    r = server.get(path)
    assert r.status_code == 200, describe(r)
    assert body_json(r)["status"] == "OK"


# raw path after /rest/services/ -> expected URL parameters
PERCENT_CASES = [
    ("hello-world/a%2Fb/", {"parm_1": "a/b"}),
    ("hello-world/a%2Fb/c/", {"parm_1": "a/b", "parm_2": "c"}),
    ("hello-world/%E2%9C%93/%20x%20/", {"parm_1": "\u2713", "parm_2": " x "}),
    ("hello-world/a+b/", {"parm_1": "a+b"}),
    ("hello-world/a%2Bb/", {"parm_1": "a+b"}),
    ("hello-world/100%25/", {"parm_1": "100%"}),
    ("hello-world/1//3/", {"parm_1": "1", "parm_2": "", "parm_3": "3"}),
    ("hello-world/1///4/", {"parm_1": "1", "parm_2": "", "parm_3": "", "parm_4": "4"}),
    ("hello-world/%C3%BCn%C3%AF/", {"parm_1": "\u00fcn\u00ef"}),
    ("%68ello-world/x/", {"parm_1": "x"}),  # the API segment is decoded too
    ("module1/hello%2Dworld/x/", {"parm_1": "x", "module": "module1"}),
]


@pytest.mark.parametrize("path,expected", PERCENT_CASES)
def test_segments_are_split_then_decoded(server, path, expected):
    r = server.raw("GET", "/rest/services/" + path)
    kwargs = echo_kwargs(r)
    parms = {k: v for k, v in kwargs.items() if k.startswith("parm_") or k == "module"}
    assert parms == expected


@pytest.mark.parametrize(
    "path",
    [
        "hello-world/%FF/",
        "hello-world/%C3%28/",
        "hello-world/ok/%E2%9C/",
        "%FF/",
        "module1/%FE%FF/",
    ],
)
def test_invalid_utf8_segment_is_400(server, path):
    r = server.raw("GET", "/rest/services/" + path)
    error(r, 400, "bad_request")


@pytest.mark.parametrize(
    "query,expected",
    [
        ("q=c+d", {"q": "c d"}),
        ("q=c%2Bd", {"q": "c+d"}),
        ("q=%E6%97%A5%E6%9C%AC", {"q": "\u65e5\u672c"}),
        ("q=1&q=2&r=3", {"q": "2", "r": "3"}),  # repeated key: the last value
        ("q=a%26b%3Dc", {"q": "a&b=c"}),
    ],
)
def test_query_string(server, query, expected):
    kwargs = echo_kwargs(server.raw("GET", "/rest/services/hello-world/x+y/?" + query))
    assert kwargs["parm_1"] == "x+y"  # "+" is a space in the query string only
    for k, v in expected.items():
        assert kwargs[k] == v


# --------------------------------------------------------------------------------------------
# uuid and module qualification


@pytest.mark.parametrize(
    "prefix,module",
    [("", None), ("module1/", "module1"), ("v1/", "v1")],
)
def test_uuid_first_segment(server, prefix, module):
    ident = str(uuid.uuid4())
    kwargs = echo_kwargs(server.get(f"{ident}/{prefix}hello-world/p/?a=1"))
    assert kwargs["uuid"] == ident
    assert kwargs["parm_1"] == "p"
    assert kwargs["func"] == "hello-world"
    assert kwargs.get("module") == module
    assert ("module" in kwargs) == (module is not None)


def test_uuid_before_dir(server):
    r = server.get(f"{uuid.uuid4()}/__dir__/")
    assert r.status_code == 200, describe(r)
    assert body_json(r)["status"] == "OK"


def test_no_uuid_no_uuid_kwarg(server):
    assert "uuid" not in echo_kwargs(server.get("hello-world/"))


@pytest.mark.parametrize(
    "path,module,key",
    [
        ("hello-world/", None, "module1.foo"),
        ("module1/hello-world/", "module1", "module1.foo"),
        ("v1/hello-world/", "v1", "module1.foo"),
        ("module2/hello-world2/", "module2", "module2.foo2"),
    ],
)
def test_module_kwarg_as_written(server, path, module, key):
    kwargs = ok(server.get(path), key)["kwargs"]
    assert kwargs.get("module") == module
    if module is None:
        assert "module" not in kwargs


@pytest.mark.parametrize(
    "path,nxt,module",
    [
        ("module1/no-such-api/", "no-such-api", "module1"),
        ("module2/hello-world/", "hello-world", "module2"),  # an API, but of another module
        ("module1/hello-world2/x/", "hello-world2", "module1"),
        ("echo_helper/anything/", "anything", "echo_helper"),
    ],
)
def test_module_then_unknown_api(server, path, nxt, module):
    body = error(server.get(path), 404, "api_undefined")
    assert body["status"] == f"{nxt} is undefined in {module}."


def test_module_name_that_is_also_an_api(server, write_plugin):
    # The first segment names a module, the next is none of its APIs, but the first IS an API:
    # it is an API call with a URL parameter.
    mod = unique("modapi")
    write_plugin(
        mod,
        source(
            """
            from dpms import expose

            @expose.endpoint(API="$mod")
            def same(*args, **kwargs):
                return {k: v for k, v in kwargs.items() if k != "__request__"}
            """,
            mod=mod,
        ),
    )
    result = ok(server.get(f"{mod}/zzz/"), f"{mod}.same")
    assert result["parm_1"] == "zzz"
    assert "module" not in result
    result = ok(server.get(f"{mod}/{mod}/"), f"{mod}.same")  # qualified
    assert result["module"] == mod


@pytest.mark.parametrize("api", ["no-such-api", "nope_nope", "%C3%BCber"])
def test_unknown_api(server, api):
    r = server.raw("GET", f"/rest/services/{api}/")
    body = error(r, 404, "api_undefined")
    shown = "\u00fcber" if api.startswith("%") else api
    assert body["status"] == f"{shown} is undefined."


@pytest.mark.parametrize(
    "path,limit",
    [
        ("hello-world/" + "/".join(str(i) for i in range(1, 12)) + "/", 10),
        ("module1/hello-world/" + "/".join(str(i) for i in range(1, 12)) + "/", 10),
        ("hello-world/" + "/".join("x" * 20), 10),
    ],
)
def test_too_many_url_params(server, path, limit):
    body = error(server.get(path), 404, "too_many_url_params")
    assert str(limit) in body["status"]


def test_ten_url_params_is_fine(server):
    kwargs = echo_kwargs(server.get(f"hello-world/{TEN}/"))
    assert [kwargs[f"parm_{i}"] for i in range(1, 11)] == [str(i) for i in range(1, 11)]


# --------------------------------------------------------------------------------------------
# Ambiguity


AMBIGUOUS_SRC = """
from dpms import expose

@expose.endpoint(method="GET|POST", API="$api")
def handler(*args, **kwargs):
    return "$tag"
"""


def test_ambiguous_api_is_409(server, write_plugin):
    api = api_name("amb")
    mod_a, mod_b = unique("amba"), unique("ambb")
    write_plugin(mod_a, source(AMBIGUOUS_SRC, api=api, tag="A"))
    write_plugin(mod_b, source(AMBIGUOUS_SRC, api=api, tag="B"))
    for method in ("GET", "POST"):
        body = error(server.request(method, f"{api}/"), 409, "ambiguous_api", extra=("candidates",))
        cands = body["candidates"]
        assert isinstance(cands, list) and len(cands) == 2, cands
        assert all(isinstance(c, str) and api in c for c in cands), cands
        assert sorted(mod for mod in (mod_a, mod_b) for c in cands if mod in c) == sorted(
            [mod_a, mod_b]
        ), cands
    # The qualified paths resolve it.
    assert ok(server.get(f"{mod_a}/{api}/"), f"{mod_a}.handler") == "A"
    assert ok(server.post(f"{mod_b}/{api}/", json={}), f"{mod_b}.handler") == "B"
    # And __dir__ lists the qualified names instead of the bare API.
    endpoints = server.dir()["endpoints"]["GET"]
    assert api not in endpoints
    assert f"{mod_a}/{api}" in endpoints and f"{mod_b}/{api}" in endpoints
    assert endpoints[f"{mod_a}/{api}"]["module"] == mod_a


def test_same_api_different_methods_is_not_ambiguous(server, write_plugin):
    api = api_name("split")
    mod_a, mod_b = unique("splita"), unique("splitb")
    tmpl = """
    from dpms import expose

    @expose.endpoint(method="$method", API="$api")
    def handler():
        return "$tag"
    """
    write_plugin(mod_a, source(tmpl, method="GET", api=api, tag="A"))
    write_plugin(mod_b, source(tmpl, method="POST", api=api, tag="B"))
    assert ok(server.get(f"{api}/"), f"{mod_a}.handler") == "A"
    assert ok(server.post(f"{api}/"), f"{mod_b}.handler") == "B"
    body = error(server.put(f"{api}/"), 404, "method_undefined")
    assert body["status"] == f"{api} is undefined for PUT."
    assert {"GET", "POST"} <= allow_set(server.put(f"{api}/"))


# --------------------------------------------------------------------------------------------
# Other paths, methods, headers


@pytest.mark.parametrize(
    "path",
    ["/nope", "/nope/", "/rest", "/rest/", "/rest/other/hello-world/", "/favicon.ico",
     "/rest/servicesx/hello-world/", "/hello-world/"],
)
def test_other_paths_are_404_json(server, path):
    error(server.get(path), 404, "not_found")


def test_index(server):
    r = server.get("/")
    assert r.status_code == 200, describe(r)
    body = body_json(r)
    assert isinstance(body, dict)
    assert body.get("name") == "dpms" and body.get("version")
    assert "__dir__" in r.text  # says where __dir__ is
    # ...and where everything else around the services is (SPEC §13).
    for key, path in [("openapi", "/rest/openapi.json"), ("docs", "/docs"), ("jsonrpc", "/rpc"),
                      ("metrics", "/metrics"), ("health", "/healthz"), ("ready", "/readyz")]:
        assert body.get(key) == path, body


@pytest.mark.parametrize(
    "path,status",
    [("/", 200), ("hello-world/1/?a=1", 200), ("__dir__/", 200), ("no-such-api/", 404),
     ("sample-one/", 404)],
)
def test_head_is_get_without_body(server, path, status):
    g = server.get(path)
    h = server.head(path)
    assert h.status_code == g.status_code == status, describe(h)
    assert h.content == b""
    assert h.headers.get("Content-Type") == JSON_CT
    assert h.headers.get("X-Request-Id")


@pytest.mark.parametrize(
    "path,allowed,not_allowed",
    [
        ("hello-world/", {"GET", "PUT", "POST"}, {"DELETE", "PATCH"}),
        ("bar-none/", {"GET"}, {"POST", "PUT", "DELETE", "PATCH"}),
        ("sample-one2a/1/", {"DELETE"}, {"GET", "POST", "PUT", "PATCH"}),
        ("module2/sample-put/", {"PUT", "POST"}, {"GET", "DELETE", "PATCH"}),
    ],
)
def test_options(server, path, allowed, not_allowed):
    r = server.options(path)
    assert r.status_code == 204, describe(r)
    assert r.content == b""
    got = allow_set(r)
    assert allowed <= got and not (got & not_allowed), got
    assert r.headers.get("X-Request-Id")


@pytest.mark.parametrize("method", ["TRACE", "FOO", "PROPFIND", "BREW"])
@pytest.mark.parametrize("path", ["hello-world/", "/", "no-such-api/"])
def test_unknown_methods_are_501(server, method, path):
    error(server.request(method, path), 501, "method_not_implemented")


def test_uri_too_long(server):
    # Over any sensible request-line limit, but under hyper's own 64 KiB URI cap (which answers
    # with an empty body): dpms must answer this one itself, in its JSON shape.
    r = server.raw("GET", "/rest/services/hello-world/" + "x" * 60_000 + "/")
    error(r, 414, "uri_too_long")


def test_headers_too_large(server):
    r = server.raw("GET", "/rest/services/hello-world/", headers={"X-Big": "y" * 200_000})
    error(r, 431, "headers_too_large")


# Every response: X-Request-Id, JSON content type (unless a plugin returns its own response).
HEADER_CASES = [
    ("GET", "/", None),
    ("GET", "hello-world/", None),
    ("POST", "sample-one/", {"args": [1]}),
    ("GET", "__dir__/", None),
    ("GET", "no-such-api/", None),
    ("POST", "bar-none/", None),
    ("GET", "/nope", None),
    ("TRACE", "hello-world/", None),
    ("POST", "sample-one/", "{bad json"),
    ("HEAD", "hello-world/", None),
    ("OPTIONS", "hello-world/", None),
]


@pytest.mark.parametrize("method,path,body", HEADER_CASES)
def test_every_response_has_request_id_and_json_type(server, method, path, body):
    kw = {"json": body} if isinstance(body, dict) else {"data": body}
    r = server.request(method, path, **kw)
    assert r.headers.get("X-Request-Id"), describe(r)
    if r.status_code != 204:
        assert r.headers.get("Content-Type") == JSON_CT, describe(r)
    if r.status_code >= 400:
        body = body_json(r)
        assert {"status", "error"} <= set(body)
        assert isinstance(body["error"], str) and body["error"].replace("_", "").isalpha()
        assert body["error"] == body["error"].lower()


def test_request_ids_differ(server):
    ids = {server.get("hello-world/").headers.get("X-Request-Id") for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("stem", ["gr\u00fc\u00dfe", "\u65e5\u672c-api"])
def test_unicode_api_names(server, write_plugin, stem):
    mod = unique("uni")
    api = f"{stem}-{mod[-6:]}"
    write_plugin(
        mod,
        source(
            """
            from dpms import expose

            @expose.endpoint(API="$api")
            def hello(*args, **kwargs):
                return kwargs["func"]
            """,
            api=api,
        ),
    )
    assert ok(server.get(quote(api) + "/"), f"{mod}.hello") == api

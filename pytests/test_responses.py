"""SPEC §6: result conversion, ``dpms.Response``, plugin errors, DEBUG tracebacks, timeouts."""

import base64
import json
import time
import uuid

import pytest

from dpms_helpers import JSON_CT, SAMPLE_PLUGINS, describe, error, ok, source, unique

CONVERT_SRC = """
import datetime
import decimal
import enum
import itertools
from dpms import expose


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    HIGH = 3


def gen():
    yield 1
    yield {"two": 2}


def broken_gen():
    yield 1
    raise ValueError("gen broke")


class WithToJSON:
    def toJSON(self):
        return {"via": "toJSON", "n": 1}


class WithDict:
    def __init__(self):
        self.a = 1
        self.b = [1, (2, 3)]


class Slotted:
    __slots__ = ()

    def __str__(self):
        return "slotted!"


class Point:
    __slots__ = ("x",)

    def __init__(self):
        self.x = 1

    def __str__(self):
        return "Point(1)"


def cycle_list():
    x = []
    x.append(x)
    return x


def cycle_dict():
    d = {"k": 1}
    d["self"] = d
    return d


def cycle_obj():
    o = WithDict()
    o.me = o
    return o


def nested(depth):
    v = []
    for _ in range(depth):
        v = [v]
    return v


def nested_dict(depth):
    v = {}
    for _ in range(depth):
        v = {"k": v}
    return v


UTC = datetime.timezone.utc
CASES = {
    "dict": lambda: {"a": 1, "b": [1, 2], "c": {"d": None}},
    "list": lambda: [1, "x", None, True, 2.5],
    "str": lambda: "h\\u00e9llo \\u2713",
    "empty_str": lambda: "",
    "int": lambda: 7,
    "bigint": lambda: 2 ** 200,
    "neg": lambda: -3,
    "float": lambda: 1.5,
    "true": lambda: True,
    "false": lambda: False,
    "bools_in_list": lambda: [True, False, 1, 0],
    "none": lambda: None,
    "tuple": lambda: (1, 2, (3, 4)),
    "empty_tuple": lambda: (),
    "set": lambda: {3},
    "frozenset": lambda: frozenset({4}),
    "set_in_dict": lambda: {"s": {5}},
    "keys": lambda: {True: 1, False: 2, None: 3, 1.5: 4, 7: 5, "s": 6},
    "datetime": lambda: datetime.datetime(2024, 1, 2, 3, 4, 5),
    "datetime_us": lambda: datetime.datetime(2024, 1, 2, 3, 4, 5, 123456),
    "datetime_tz": lambda: datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    "date": lambda: datetime.date(2024, 1, 2),
    "time": lambda: datetime.time(3, 4, 5),
    "dates_in_list": lambda: [datetime.date(2020, 2, 29)],
    "decimal": lambda: decimal.Decimal("1.10"),
    "decimal_big": lambda: decimal.Decimal("123456789012345678901234567890.000000001"),
    "bytes_utf8": lambda: "abc \\u2713".encode("utf-8"),
    "bytes_bin": lambda: b"\\xff\\x00\\x01",
    "bytes_empty": lambda: b"",
    "tojson": lambda: WithToJSON(),
    "obj_dict": lambda: WithDict(),
    "str_fallback": lambda: Slotted(),
    "slots_str": lambda: Point(),
    "nan": lambda: float("nan"),
    "inf": lambda: float("inf"),
    "ninf": lambda: float("-inf"),
    "nan_in_list": lambda: [1.5, float("nan"), {"x": float("inf")}],
    "nested_ok": lambda: nested(100),
    "nested_dict_ok": lambda: nested_dict(100),
    "shared_not_cycle": lambda: (lambda s: [s, s, {"a": s}])([1, 2]),
    "cycle_list": cycle_list,
    "cycle_dict": cycle_dict,
    "cycle_obj": cycle_obj,
    "too_deep": lambda: nested(300),
    "too_deep_dict": lambda: nested_dict(300),
    "very_deep": lambda: nested(200000),
    "enum": lambda: Color.RED,
    "enum_tuple": lambda: Color.PAIR,
    "int_enum": lambda: Level.HIGH,
    "enum_in_dict": lambda: {"c": Color.RED, "l": [Level.HIGH]},
    "generator": gen,
    "genexpr": lambda: (i * i for i in range(4)),
    "range": lambda: range(2, 5),
    "iterator": lambda: iter([3, 2, 1]),
    "map": lambda: map(str, [1, 2]),
    "timedelta": lambda: datetime.timedelta(minutes=1, seconds=30),
    "timedelta_days": lambda: datetime.timedelta(days=2, hours=3),
    "timedelta_frac": lambda: datetime.timedelta(seconds=1.5),
    "timedelta_zero": lambda: datetime.timedelta(),
    "timedelta_neg": lambda: datetime.timedelta(seconds=-0.5),
    "endless": lambda: itertools.count(),
    "broken_gen": broken_gen,
}


@expose.endpoint(API="$api")
def convert(case):
    return CASES[case]()


@expose.endpoint(API="$api-alive")
def alive():
    return "alive"
"""


# The expected shapes, built from JSON text rather than with the plugin's own loops.
def nested(depth):
    return json.loads("[" * (depth + 1) + "]" * (depth + 1))


def nested_dict(depth):
    return json.loads('{"k":' * depth + "{}" + "}" * depth)


@pytest.fixture(scope="module")
def conv(server, write_module_plugin):
    mod = unique("conv")
    api = f"conv-{uuid.uuid4().hex[:10]}"
    write_module_plugin(mod, source(CONVERT_SRC, api=api))
    return server, mod, api


CONVERSIONS = [
    ("dict", {"a": 1, "b": [1, 2], "c": {"d": None}}),
    ("list", [1, "x", None, True, 2.5]),
    ("str", "h\u00e9llo \u2713"),
    ("empty_str", ""),
    ("int", 7),
    ("bigint", 2**200),
    ("neg", -3),
    ("float", 1.5),
    ("true", True),
    ("false", False),
    ("bools_in_list", [True, False, 1, 0]),
    ("none", None),
    ("tuple", [1, 2, [3, 4]]),
    ("empty_tuple", []),
    ("set", [3]),
    ("frozenset", [4]),
    ("set_in_dict", {"s": [5]}),
    ("keys", {"true": 1, "false": 2, "null": 3, "1.5": 4, "7": 5, "s": 6}),
    ("datetime", "2024-01-02T03:04:05"),
    ("datetime_us", "2024-01-02T03:04:05.123456"),
    ("datetime_tz", "2024-01-02T03:04:05+00:00"),
    ("date", "2024-01-02"),
    ("time", "03:04:05"),
    ("dates_in_list", ["2020-02-29"]),
    ("decimal", "1.10"),
    ("decimal_big", "123456789012345678901234567890.000000001"),
    ("bytes_utf8", "abc \u2713"),
    ("bytes_bin", base64.b64encode(b"\xff\x00\x01").decode()),
    ("bytes_empty", ""),
    ("tojson", {"via": "toJSON", "n": 1}),
    ("obj_dict", {"a": 1, "b": [1, [2, 3]]}),
    ("str_fallback", "slotted!"),
    ("slots_str", "Point(1)"),
    ("nan", None),
    ("inf", None),
    ("ninf", None),
    ("nan_in_list", [1.5, None, {"x": None}]),
    ("nested_ok", nested(100)),
    ("nested_dict_ok", nested_dict(100)),
    ("shared_not_cycle", [[1, 2], [1, 2], {"a": [1, 2]}]),
    ("enum", "red"),
    ("enum_tuple", [1, 2]),
    ("int_enum", 3),
    ("enum_in_dict", {"c": "red", "l": [3]}),
    ("generator", [1, {"two": 2}]),
    ("genexpr", [0, 1, 4, 9]),
    ("range", [2, 3, 4]),
    ("iterator", [3, 2, 1]),
    ("map", ["1", "2"]),
    ("timedelta", "PT1M30S"),
    ("timedelta_days", "P2DT3H"),
    ("timedelta_frac", "PT1.5S"),
    ("timedelta_zero", "PT0S"),
    ("timedelta_neg", "-PT0.5S"),
]


def same(a, b):
    """Equal, and bools stay bools (True is not 1), ints stay ints."""
    if isinstance(b, bool) or isinstance(a, bool):
        return type(a) is type(b) and a == b
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(b, int):
        return type(a) is int and a == b
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("case,expected", CONVERSIONS)
def test_result_conversion(conv, case, expected):
    server, mod, api = conv
    result = ok(server.get(f"{api}/?case={case}"), f"{mod}.convert")
    assert same(result, expected), (result, expected)


@pytest.mark.parametrize(
    "case,type_name",
    [
        ("cycle_list", "list"),
        ("cycle_dict", "dict"),
        ("cycle_obj", None),
        ("too_deep", "list"),
        ("too_deep_dict", "dict"),
        ("very_deep", "list"),
        ("endless", "count"),
        ("broken_gen", "generator"),
    ],
)
def test_unserializable_results(conv, case, type_name):
    server, mod, api = conv
    body = error(server.get(f"{api}/?case={case}"), 500, "unserializable_result")
    if type_name:
        assert type_name in body["status"], body
    # the server still serves, this endpoint and others
    assert ok(server.get(f"{api}-alive/")) == "alive"
    assert ok(server.get("hello-world/"), "module1.foo")["response"] == "hello-world"
    assert ok(server.get(f"{api}/?case=int")) == 7


# --------------------------------------------------------------------------------------------
# dpms.Response

RESPONSE_SRC = """
from dpms import Response, expose


@expose.endpoint(method="GET|POST", API="$api")
def resp(case):
    if case == "json":
        return Response({"a": 1, "t": (1, 2)}, status=201, headers={"X-Custom": "yes"})
    if case == "text":
        return Response("plain \\u2713", status=202)
    if case == "bytes":
        return Response(b"\\x00\\x01\\xff")
    if case == "html":
        return Response("<b>x</b>", content_type="text/html; charset=utf-8",
                        headers={"X-A": "1", "X-B": "2"})
    if case == "teapot":
        return Response({"error": "mine"}, status=418)
    if case == "list":
        return Response([1, 2])
    if case == "csv":
        return Response(b"a,b\\n1,2\\n", status=200, content_type="text/csv")
    if case == "created_empty":
        return Response("", status=201)
    if case == "redirect":
        return Response("", status=302, headers={"Location": "/elsewhere"})
    raise ValueError(case)
"""

RESPONSES = [
    # case, status, content type, body check (bytes or json), headers
    ("json", 201, JSON_CT, {"a": 1, "t": [1, 2]}, {"X-Custom": "yes"}),
    ("text", 202, "text/plain; charset=utf-8", "plain \u2713".encode(), {}),
    ("bytes", 200, "application/octet-stream", b"\x00\x01\xff", {}),
    ("html", 200, "text/html; charset=utf-8", b"<b>x</b>", {"X-A": "1", "X-B": "2"}),
    ("teapot", 418, JSON_CT, {"error": "mine"}, {}),
    ("list", 200, JSON_CT, [1, 2], {}),
    ("csv", 200, "text/csv", b"a,b\n1,2\n", {}),
    ("created_empty", 201, "text/plain; charset=utf-8", b"", {}),
    ("redirect", 302, "text/plain; charset=utf-8", b"", {"Location": "/elsewhere"}),
]


@pytest.fixture(scope="module")
def resp_api(server, write_module_plugin):
    mod = unique("resp")
    api = f"resp-{uuid.uuid4().hex[:10]}"
    write_module_plugin(mod, source(RESPONSE_SRC, api=api))
    return server, api


@pytest.mark.parametrize("case,status,ctype,expected,headers", RESPONSES)
def test_response_object(resp_api, case, status, ctype, expected, headers):
    server, api = resp_api
    r = server.get(f"{api}/?case={case}", allow_redirects=False)
    assert r.status_code == status, describe(r)
    assert r.headers.get("Content-Type") == ctype, describe(r)
    if isinstance(expected, bytes):
        assert r.content == expected
    else:
        assert r.json() == expected  # sent as is: no envelope
    for k, v in headers.items():
        assert r.headers.get(k) == v, describe(r)
    assert r.headers.get("X-Request-Id")


# --------------------------------------------------------------------------------------------
# Exceptions

RAISE_SRC = """
import asyncio
import sys
from dpms import expose


@expose.endpoint(method="GET|POST", API="$api")
def boom(kind):
    if kind == "value":
        raise ValueError("boom")
    if kind == "key":
        raise KeyError("k")
    if kind == "zero":
        return 1 / 0
    if kind == "exit":
        raise SystemExit("bye")
    if kind == "exit0":
        sys.exit(0)
    if kind == "kbi":
        raise KeyboardInterrupt()
    if kind == "unicode":
        raise RuntimeError("\\u00fcber \\u2713")
    return "fine"


@expose.endpoint(API="$api-async")
async def aboom(kind):
    await asyncio.sleep(0)
    if kind == "value":
        raise ValueError("boom")
    if kind == "exit":
        raise SystemExit("bye")
    if kind == "kbi":
        raise KeyboardInterrupt()
    return "fine"
"""

RAISES = [
    ("", "value", "ValueError: boom"),
    ("", "key", "KeyError: 'k'"),
    ("", "zero", "ZeroDivisionError: division by zero"),
    ("", "exit", "SystemExit: bye"),
    ("", "exit0", "SystemExit: 0"),
    ("", "kbi", "KeyboardInterrupt"),
    ("", "unicode", "RuntimeError: \u00fcber \u2713"),
    ("-async", "value", "ValueError: boom"),
    ("-async", "exit", "SystemExit: bye"),
    ("-async", "kbi", "KeyboardInterrupt"),
]


def raise_plugin(write, api, folder=None):
    mod = unique("raiser")
    write(mod, source(RAISE_SRC, api=api), folder=folder)
    return mod


@pytest.fixture(scope="module")
def raise_api(server, write_module_plugin):
    api = f"boom-{uuid.uuid4().hex[:10]}"
    raise_plugin(write_module_plugin, api)
    return server, api


@pytest.mark.parametrize("suffix,kind,exception", RAISES)
def test_plugin_exception_is_500(raise_api, suffix, kind, exception):
    server, api = raise_api
    body = error(server.get(f"{api}{suffix}/?kind={kind}"), 500, "plugin_error", extra=("exception",))
    assert body["exception"] == exception
    assert body["status"] == f"{api}{suffix} raised {exception}"
    # no traceback without DEBUG (error() checked the exact key set); the server keeps serving
    assert ok(server.get(f"{api}{suffix}/?kind=none")) == "fine"
    assert ok(server.get("bar-none/")) == "bar-none again"


def test_repeated_system_exit_keeps_serving(raise_api):
    server, api = raise_api
    for _ in range(5):
        error(server.get(f"{api}/?kind=exit"), 500, "plugin_error", extra=("exception",))
        error(server.get(f"{api}-async/?kind=kbi"), 500, "plugin_error", extra=("exception",))
    assert ok(server.get("hello-world/"))["response"] == "hello-world"


@pytest.fixture(scope="module")
def debug_server(start_module_server):
    return start_module_server(env={"DEBUG": "true"})


@pytest.mark.parametrize("suffix,kind,exception", [r for r in RAISES if r[1] in ("value", "exit")])
def test_debug_adds_traceback(debug_server, write_plugin, suffix, kind, exception):
    api = f"dboom-{uuid.uuid4().hex[:10]}"
    raise_plugin(write_plugin, api, folder=debug_server.plugin_dir)
    r = debug_server.get(f"{api}{suffix}/?kind={kind}")
    body = error(r, 500, "plugin_error", extra=("exception", "traceback"))
    assert body["exception"] == exception
    tb = body["traceback"]
    tb = "".join(tb) if isinstance(tb, list) else tb
    assert "Traceback" in tb and exception in tb, tb
    assert ok(debug_server.get("hello-world/"))


# --------------------------------------------------------------------------------------------
# MAX_FUNCTION_SECS

SLEEP_SRC = """
import asyncio
import time
from dpms import expose


@expose.endpoint(API="$api-sync")
def sleepy():
    end = time.monotonic() + 15
    while time.monotonic() < end:
        time.sleep(0.05)
    return "woke"


@expose.endpoint(API="$api-spin")
def spin():
    end = time.monotonic() + 15
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@expose.endpoint(API="$api-async")
async def asleepy():
    end = time.monotonic() + 15
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
    return "woke"


@expose.endpoint(API="$api-quick")
def quick():
    return "quick"
"""


@pytest.fixture(scope="module")
def timeout_server(start_module_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("timeout-plugins")
    api = f"sleep-{uuid.uuid4().hex[:10]}"
    (folder / f"{unique('sleeper')}.py").write_text(source(SLEEP_SRC, api=api))
    srv = start_module_server(env={"MAX_FUNCTION_SECS": "1"}, plugin_dirs=[SAMPLE_PLUGINS, folder])
    return srv, api


@pytest.mark.parametrize("which", ["sync", "spin", "async"])
def test_max_function_secs(timeout_server, which):
    srv, api = timeout_server
    t0 = time.monotonic()
    r = srv.get(f"{api}-{which}/")
    elapsed = time.monotonic() - t0
    error(r, 504, "timeout")
    assert elapsed < 12, f"504 came after {elapsed:.1f} s with MAX_FUNCTION_SECS=1"
    assert ok(srv.get(f"{api}-quick/")) == "quick"
    assert ok(srv.get("hello-world/"))["response"] == "hello-world"

"""Typed parameters (SPEC §13) through real servers: every annotation of the list with a good and a
bad value, from the query, the URL, a form and a JSON body; 400 `bad_argument_type` naming the
parameter; the same conversions for a tenant's sandboxed module; unannotated plugins untouched."""

from __future__ import annotations


import pytest

from dpms_helpers import describe, error, ok, write_atomic
from token_helpers import add_tenant

ADMIN = "6a1f0c3e-2b4d-4e8f-9a7c-1d3e5f7a9b0c"

TYPED = '''
import datetime, enum, uuid
from typing import List, Literal, Optional
from vyperlogix.decorators import expose
%(owner)s

class Color(enum.Enum):
    RED = "red"
    GREEN = 2


def show(v):
    if isinstance(v, list):
        return [show(x) for x in v]
    return {"type": type(v).__name__, "repr": repr(v)}


@expose.endpoint(method="GET|POST", API="typed-int%(suffix)s")
def t_int(limit: int, **kwargs):
    return show(limit)


@expose.endpoint(method="GET|POST", API="typed-float%(suffix)s")
def t_float(ratio: float):
    return show(ratio)


@expose.endpoint(method="GET|POST", API="typed-bool%(suffix)s")
def t_bool(flag: bool):
    return show(flag)


@expose.endpoint(method="GET|POST", API="typed-str%(suffix)s")
def t_str(name: str):
    return show(name)


@expose.endpoint(method="GET|POST", API="typed-uuid%(suffix)s")
def t_uuid(id: uuid.UUID):
    return show(id)


@expose.endpoint(method="GET|POST", API="typed-date%(suffix)s")
def t_date(day: datetime.date):
    return show(day)


@expose.endpoint(method="GET|POST", API="typed-datetime%(suffix)s")
def t_datetime(at: datetime.datetime):
    return show(at)


@expose.endpoint(method="GET|POST", API="typed-enum%(suffix)s")
def t_enum(color: Color):
    return show(color)


@expose.endpoint(method="GET|POST", API="typed-literal%(suffix)s")
def t_literal(order: Literal["asc", "desc", 3]):
    return show(order)


@expose.endpoint(method="GET|POST", API="typed-list%(suffix)s")
def t_list(tag: list[int], names: List[str] = ()):
    return show(tag)


@expose.endpoint(method="GET|POST", API="typed-optional%(suffix)s")
def t_optional(limit: Optional[int] = 10, other: int | None = None):
    return show(limit)


@expose.endpoint(method="GET", API="typed-url%(suffix)s")
def t_url(parm_1: int, parm_2: uuid.UUID = None):
    return [show(parm_1), show(parm_2)]
'''

# The same annotations as strings (`from __future__ import annotations`) read as their types.
POSTPONED = '''from __future__ import annotations
import datetime
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="typed-postponed")
def postponed(day: datetime.date, n: int = 1, later: NoSuchName = None):
    return [type(day).__name__, n]
'''

U = "12345678-1234-5678-1234-567812345678"

#: (api, query or body, expected type name, expected repr) for values that convert.
GOOD = [
    ("typed-int", "limit=42", "int", "42"),
    ("typed-int", "limit=-7", "int", "-7"),
    ("typed-int", "limit=123456789012345678901234567890", "int", "123456789012345678901234567890"),
    ("typed-float", "ratio=2.5", "float", "2.5"),
    ("typed-float", "ratio=3", "float", "3.0"),
    ("typed-bool", "flag=true", "bool", "True"),
    ("typed-bool", "flag=0", "bool", "False"),
    ("typed-bool", "flag=off", "bool", "False"),
    ("typed-str", "name=42", "str", "'42'"),
    ("typed-uuid", f"id={U}", "UUID", f"UUID('{U}')"),
    ("typed-uuid", "id=" + U.replace("-", "").upper(), "UUID", f"UUID('{U}')"),
    ("typed-date", "day=2024-02-29", "date", "datetime.date(2024, 2, 29)"),
    ("typed-datetime", "at=2024-05-01T10:20:30", "datetime", "datetime.datetime(2024, 5, 1, 10, 20, 30)"),
    (
        "typed-datetime",
        "at=2024-05-01T10:20:30.25%2B02:00",
        "datetime",
        "datetime.datetime(2024, 5, 1, 10, 20, 30, 250000, "
        "tzinfo=datetime.timezone(datetime.timedelta(seconds=7200)))",
    ),
    ("typed-datetime", "at=2024-05-01T10:20:30Z", "datetime", "datetime.datetime(2024, 5, 1, 10, 20, 30, tzinfo=datetime.timezone.utc)"),
    ("typed-enum", "color=RED", "Color", "<Color.RED: 'red'>"),
    ("typed-enum", "color=red", "Color", "<Color.RED: 'red'>"),
    ("typed-enum", "color=2", "Color", "<Color.GREEN: 2>"),
    ("typed-literal", "order=desc", "str", "'desc'"),
    ("typed-literal", "order=3", "int", "3"),
    ("typed-optional", "limit=5", "int", "5"),
    ("typed-optional", "limit=", "NoneType", "None"),
    ("typed-optional", "", "int", "10"),
]

#: (api, query, parameter, expected) for values that do not.
BAD = [
    ("typed-int", "limit=abc", "limit", "int"),
    ("typed-int", "limit=1.5", "limit", "int"),
    ("typed-int", "limit=", "limit", "int"),
    ("typed-float", "ratio=fast", "ratio", "float"),
    ("typed-float", "ratio=nan", "ratio", "float"),
    ("typed-bool", "flag=maybe", "flag", "bool"),
    ("typed-uuid", "id=not-a-uuid", "id", "uuid.UUID"),
    ("typed-date", "day=2023-02-29", "day", "datetime.date"),
    ("typed-date", "day=tomorrow", "day", "datetime.date"),
    ("typed-datetime", "at=2024-05-01T25:00", "at", "datetime.datetime"),
    ("typed-enum", "color=blue", "color", "Color"),
    ("typed-literal", "order=up", "order", 'Literal["asc", "desc", 3]'),
    ("typed-list", "tag=1&tag=x", "tag", "list[int]"),
    ("typed-optional", "limit=many", "limit", "Optional[int]"),
    ("typed-optional", "limit=1&other=x", "other", "Optional[int]"),
]


def bad_type(r) -> dict:
    return error(r, 400, "bad_argument_type", extra=("parameter", "expected", "got"))


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("typed-plugins")
    write_atomic(folder / "typed_admin.py", TYPED % {"owner": "", "suffix": ""})
    write_atomic(folder / "typed_postponed.py", POSTPONED)
    return folder


@pytest.fixture(scope="module")
def server(start_module_server, plugins):
    return start_module_server(env={"DPMS_WORKERS": "1"}, plugin_dirs=[plugins])


@pytest.mark.parametrize("api,query,type_name,shown", GOOD)
def test_good_values_convert(server, api, query, type_name, shown):
    r = server.get(f"/rest/services/{api}/?{query}")
    assert ok(r) == {"type": type_name, "repr": shown}, describe(r)


@pytest.mark.parametrize("api,query,parameter,expected", BAD)
def test_bad_values_are_400(server, api, query, parameter, expected):
    r = server.get(f"/rest/services/{api}/?{query}")
    body = bad_type(r)
    assert body["parameter"] == parameter and body["expected"] == expected, body
    sent = dict(p.partition("=")[::2] for p in query.split("&"))
    got = body["got"]
    assert got == sent[parameter] or parameter == "tag" and got == ["1", "x"], body
    assert parameter in body["status"], body


def test_repeated_key_is_a_list(server):
    r = server.get("/rest/services/typed-list/?tag=1&tag=2&tag=30")
    assert ok(r) == [{"type": "int", "repr": r} for r in ("1", "2", "30")], describe(r)
    r = server.get("/rest/services/typed-list/?tag=5")
    assert ok(r) == [{"type": "int", "repr": "5"}], describe(r)
    # Without list[X], a repeated key is its last value, as before.
    r = server.get("/rest/services/typed-int/?limit=1&limit=2")
    assert ok(r) == {"type": "int", "repr": "2"}, describe(r)


def test_url_parameters_and_form_and_json(server):
    r = server.get(f"/rest/services/typed-url/12/{U}/")
    assert ok(r) == [{"type": "int", "repr": "12"}, {"type": "UUID", "repr": f"UUID('{U}')"}], describe(r)
    bad_type(server.get("/rest/services/typed-url/twelve/"))
    r = server.post("/rest/services/typed-int/", data={"limit": "8"})
    assert ok(r) == {"type": "int", "repr": "8"}, describe(r)
    r = server.post("/rest/services/typed-int/", json={"limit": 9})
    assert ok(r) == {"type": "int", "repr": "9"}, describe(r)
    r = server.post("/rest/services/typed-int/", json={"limit": "10"})
    assert ok(r) == {"type": "int", "repr": "10"}, describe(r)
    for wrong in [1.5, True, [1], {"a": 1}, None]:
        body = bad_type(server.post("/rest/services/typed-int/", json={"limit": wrong}))
        assert body["got"] == wrong, body
    r = server.post("/rest/services/typed-list/", json={"tag": [1, "2"]})
    assert ok(r) == [{"type": "int", "repr": "1"}, {"type": "int", "repr": "2"}], describe(r)
    r = server.post("/rest/services/typed-enum/", json={"color": 2})
    assert ok(r) == {"type": "Color", "repr": "<Color.GREEN: 2>"}, describe(r)
    # A missing required typed parameter is still `missing_argument`.
    error(server.get("/rest/services/typed-int/"), 400, "missing_argument")


def test_postponed_annotations(server):
    r = server.get("/rest/services/typed-postponed/?day=2024-01-02&n=3")
    assert ok(r) == ["date", 3], describe(r)
    bad_type(server.get("/rest/services/typed-postponed/?day=x"))


def test_unannotated_kwargs_unchanged(server):
    # `**kwargs` takes the strings as sent; only the annotated name converts.
    r = server.get("/rest/services/typed-int/?limit=1&other=2")
    assert ok(r) == {"type": "int", "repr": "1"}, describe(r)


def test_a_tenants_sandboxed_module_converts_the_same(start_server, tmp_path):
    data = tmp_path / "data"
    tenant = add_tenant(data, ADMIN, "typed")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_atomic(
        plugins / "typed_tenant.py",
        TYPED % {"owner": f"__ID__ = {tenant!r}", "suffix": "-t"},
    )
    server = start_server(
        env={"MULTI_TENANT": "True", "ADMIN_ID": ADMIN, "DPMS_WORKERS": "1", "DPMS_DATA_DIR": str(data)},
        plugin_dirs=[plugins],
    )
    for api, query, type_name, shown in GOOD:
        r = server.get(f"/rest/services/{tenant}/{api}-t/?{query}")
        assert ok(r) == {"type": type_name, "repr": shown}, describe(r)
    for api, query, parameter, _ in BAD:
        body = bad_type(server.get(f"/rest/services/{tenant}/{api}-t/?{query}"))
        assert body["parameter"] == parameter, body
    r = server.get(f"/rest/services/{tenant}/typed-list-t/?tag=1&tag=2")
    assert ok(r) == [{"type": "int", "repr": "1"}, {"type": "int", "repr": "2"}], describe(r)

"""SPEC §1: plugins import and run under plain python; the decorator changes nothing.

Runs in a subprocess of the test venv's python (the one makevenv.sh installs ./python into), with
bytecode writing off so nothing lands in plugins/__pycache__.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dpms_helpers import ROOT, SAMPLE_PLUGINS


def venv_python():
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def run_plain(code: str, tmp_path) -> dict:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["SAMPLE_PLUGINS"] = str(SAMPLE_PLUGINS)
    proc = subprocess.run(
        [venv_python(), "-B", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


SAMPLES_CODE = """
import json, os, sys
sys.path.insert(0, os.environ["SAMPLE_PLUGINS"])
import module1, module2, echo_helper

out = {
    "foo": module1.foo(1, 2, a=3, __request__=object()),
    "bar": module1.bar(),
    "bar2": module2.bar2(),
    "sample1": module1.sample1(*[1, 2], name1="one"),
    "foo2": module2.foo2(x="y"),
    "alias": module1.__alias__,
    "has_alias2": hasattr(module2, "__alias__"),
    "foo_name": module1.foo.__name__,
    "foo_doc": module1.foo.__doc__.splitlines()[0],
    "bar2_name": module2.bar2.__qualname__,
}
print(json.dumps(out))
"""


def test_samples_run_under_plain_python(tmp_path):
    out = run_plain(SAMPLES_CODE, tmp_path)
    assert out["foo"] == {"args": {"0": 1, "1": 2}, "kwargs": {"a": 3}, "response": "hello-world"}
    assert out["bar"] == out["bar2"] == "bar-none again"
    assert out["sample1"] == {"args": {"0": 1, "1": 2}, "kwargs": {"name1": "one"}}
    assert out["foo2"] == {"args": {}, "kwargs": {"x": "y"}, "response": "hello-world"}
    assert out["alias"] == "v1" and out["has_alias2"] is False
    assert out["foo_name"] == "foo" and out["bar2_name"] == "bar2"
    assert out["foo_doc"] == "Echo the call: positional args by index and every keyword argument."


DECORATOR_CODE = """
import inspect, json
import dpms
from dpms import expose, Response
from vyperlogix.decorators import expose as compat
import vyperlogix.decorators.expose as compat_module


def f(a, b=2, *args, c, **kw):
    \"\"\"Docstring of f.\"\"\"
    return a


sig = inspect.signature(f)
out = {"same_object": expose is compat is compat_module}

results = {}
for name, deco in [
    ("pipe", expose.endpoint(method="GET|POST", API="x")),
    ("list", expose.endpoint(method=["GET"], API="x", version="2")),
    ("absent", expose.endpoint()),
    ("compat", compat.endpoint(method="PUT")),
    ("bad_method", expose.endpoint(method=42)),
    ("bad_api", expose.endpoint(API=object())),
    ("bad_both", expose.endpoint(method=["GET", None], API=5)),
]:
    g = deco(f)
    results[name] = {
        "is_same": g is f,
        "name": g.__name__,
        "doc": g.__doc__,
        "signature": str(inspect.signature(g)) == str(sig),
        "call": g(1, c=3),
    }


@expose.endpoint
def bare(x):
    \"\"\"Bare doc.\"\"\"
    return x * 2


@expose.endpoint(method="POST", API="async-one")
async def coro(x):
    return x


class K:
    pass


results["bare"] = {"name": bare.__name__, "doc": bare.__doc__, "call": bare(21),
                   "signature": str(inspect.signature(bare))}
results["async"] = {"name": coro.__name__, "iscoroutinefunction": inspect.iscoroutinefunction(coro)}
results["class"] = {"is_class": inspect.isclass(expose.endpoint(API="k")(K))}
out["results"] = results
r = Response({"a": 1}, status=201, headers={"X-A": "1"}, content_type="text/plain")
out["response"] = [r.body, r.status, r.headers, r.content_type]
d = Response()
out["response_default"] = [d.body, d.status, d.headers, d.content_type]
print(json.dumps(out))
"""


def test_decorator_returns_function_unchanged(tmp_path):
    out = run_plain(DECORATOR_CODE, tmp_path)
    assert out["same_object"] is True
    for name, res in out["results"].items():
        if name in ("bare", "async", "class"):
            continue
        assert res == {
            "is_same": True,
            "name": "f",
            "doc": "Docstring of f.",
            "signature": True,
            "call": 1,
        }, name
    assert out["results"]["bare"] == {"name": "bare", "doc": "Bare doc.", "call": 42, "signature": "(x)"}
    assert out["results"]["async"] == {"name": "coro", "iscoroutinefunction": True}
    assert out["results"]["class"] == {"is_class": True}
    assert out["response"] == [{"a": 1}, 201, {"X-A": "1"}, "text/plain"]
    assert out["response_default"] == [None, 200, {}, None]


@pytest.mark.parametrize("path", ["module1.py", "module2.py", "echo_helper.py", "notes.py"])
def test_sample_files_compile(path):
    src = (SAMPLE_PLUGINS / path).read_text()
    compile(src, str(SAMPLE_PLUGINS / path), "exec")

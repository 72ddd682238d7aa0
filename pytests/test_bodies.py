"""SPEC §5: bodies that are neither JSON nor a form.

* Any content type other than JSON, a form or multipart (``text/plain``,
  ``application/octet-stream``, XML, …) is not parsed: no kwargs come from it, ``__body__`` is
  absent, and the plugin reads the bytes from ``__request__.body`` (webhook receivers).
* ``multipart/form-data`` (``curl -F``) is parsed: text fields become kwargs like form fields,
  files become ``dpms.Upload`` objects (``filename``, ``content_type``, ``data``); a malformed
  one is a 400 before the plugin runs.
* Bodies that claim JSON and are not are still the JSON 400; the size limit still holds.
"""

import base64
import hashlib
import json
import shutil
import subprocess
from urllib.parse import quote

import pytest

from dpms_helpers import TIMEOUT, Probe, error, ok, source, unique

BODIES_SRC = """
import base64

from dpms import Upload, expose

ALL = "GET|POST|PUT|DELETE|PATCH"


def _show(value):
    if isinstance(value, Upload):
        return {
            "upload": True,
            "filename": value.filename,
            "content_type": value.content_type,
            "data_b64": base64.b64encode(value.data).decode(),
            "size": value.size,
            "type": type(value.data).__name__,
        }
    if isinstance(value, dict):
        return {k: _show(v) for k, v in value.items()}
    return value


@expose.endpoint(method=ALL, API="$p-echo")
def echo(*args, **kwargs):
    req = kwargs.pop("__request__")
    return {
        "args": list(args),
        "kwargs": {k: _show(v) for k, v in kwargs.items()},
        "body_b64": base64.b64encode(req.body).decode(),
        "body_type": type(req.body).__name__,
        "json": req.json,
        "content_type": req.headers.get("content-type"),
    }


@expose.endpoint(method="POST", API="$p-hook")
def hook(__request__):
    # A webhook receiver: the raw bytes, whatever they are.
    return {"len": len(__request__.body), "text": __request__.body.decode("utf-8", "replace")}


@expose.endpoint(method="POST", API="$p-upload")
def upload(title, file, tags="none"):
    return {"title": title, "filename": file.filename, "content_type": file.content_type,
            "text": file.data.decode("utf-8", "replace"), "tags": tags}


@expose.endpoint(method=ALL, API="$p-touch")
def touch(*args, **kwargs):
    open(kwargs["marker"], "w").close()
    return "ran"
"""


@pytest.fixture(scope="module")
def probe(server, write_module_plugin):
    mod = unique("bodies")
    prefix = unique("b")
    write_module_plugin(mod, source(BODIES_SRC, p=prefix))
    return Probe(server, mod, prefix)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------
# Bodies that are not parsed


RAW_CASES = [
    ("text/plain", b"hello, plain text \xe2\x9c\x93"),
    ("text/plain; charset=utf-8", b'{"args": [1], "looks": "like JSON"}'),
    ("application/octet-stream", bytes(range(256)) + b"\xff\xfe\x00\x80"),
    ("application/xml", b'<?xml version="1.0"?><event id="7"><a>1</a></event>'),
    ("text/xml; charset=iso-8859-1", b"<x>\xe9t\xe9</x>"),
    ("application/pdf", b"%PDF-1.4\n\x00\x01\x02"),
    ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00"),
    ("text/csv", b"a,b\n1,2\n"),
    ("garbage", b"not even a media type"),
    ("text/json", b"not JSON either"),  # only application/json and */*+json are JSON
    ("multipart/mixed; boundary=x", b"--x\r\n\r\nraw\r\n--x--\r\n"),
]


@pytest.mark.parametrize("content_type,data", RAW_CASES, ids=[c for c, _ in RAW_CASES])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_unparsed_body_reaches_request_body(probe, method, content_type, data):
    res = probe.echo(method, "q/?a=1", data=data, headers={"Content-Type": content_type})
    assert res["body_b64"] == b64(data), "the plugin must see the bytes as sent"
    assert res["body_type"] == "bytes"
    assert res["json"] is None
    assert res["args"] == []
    # Nothing from the body: no kwargs, no __body__; the query and URL still count.
    assert res["kwargs"] == {"a": "1", "parm_1": "q", "func": f"{probe.p}-echo"}
    assert res["content_type"] == content_type


def test_octet_stream_non_utf8_exact(probe):
    data = hashlib.sha256(b"x").digest() * 100 + b"\x80\x81\xc3\x28\xed\xa0\x80"
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    res = probe.echo("POST", data=data, headers={"Content-Type": "application/octet-stream"})
    assert base64.b64decode(res["body_b64"]) == data


def test_webhook_receiver_xml(probe):
    xml = '<?xml version="1.0" encoding="UTF-8"?><push ref="refs/heads/main">ünï</push>'
    r = probe.call("POST", "hook", data=xml.encode(), headers={"Content-Type": "application/xml"})
    assert ok(r, f"{probe.mod}.hook") == {"len": len(xml.encode()), "text": xml}


def test_text_plain_to_request_only_endpoint(probe):
    r = probe.call("POST", "hook", data=b"ping", headers={"Content-Type": "text/plain"})
    assert ok(r) == {"len": 4, "text": "ping"}


def test_raw_body_bad_utf8_is_no_error(probe):
    # A form body that is not UTF-8 is a 400; a raw one is the plugin's business.
    res = probe.echo("POST", data=b"\xff\xfe=\xff", headers={"Content-Type": "text/plain"})
    assert base64.b64decode(res["body_b64"]) == b"\xff\xfe=\xff"


def test_get_still_ignores_raw_body(probe):
    res = probe.echo("GET", "?a=1", data=b"plain", headers={"Content-Type": "text/plain"})
    assert res["kwargs"] == {"a": "1", "func": f"{probe.p}-echo"}


# --------------------------------------------------------------------------------------------
# JSON stays JSON


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON",
     "application/problem+json", "application/vnd.api+json"],  # fmt: skip
)
@pytest.mark.parametrize("data", [b"{bad json", b'{"a": 1,}', b"<xml/>", b"plain words"])
def test_invalid_json_still_400(probe, tmp_path, content_type, data):
    marker = tmp_path / "ran"
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = probe.call("POST", "touch", "?marker=" + quote(str(marker)), data=data, headers=headers)
    body = error(r, 400, "bad_request")
    assert "json" in body["status"].lower(), body
    assert not marker.exists(), "the plugin ran on a bad body"


@pytest.mark.parametrize("content_type", [None, "application/json", "application/x-www-form-urlencoded"])
def test_utf8_bom_before_json_is_skipped(probe, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    data = b"\xef\xbb\xbf" + json.dumps({"args": [1], "k": "v"}).encode()
    res = probe.echo("POST", data=data, headers=headers)
    assert res["args"] == [1]
    assert res["kwargs"]["k"] == "v"
    assert res["json"] == {"args": [1], "k": "v"}


# --------------------------------------------------------------------------------------------
# multipart/form-data


def test_multipart_fields_and_file(probe):
    blob = b"\x00\x01binary\xff\xfe" * 10
    res = probe.echo(
        "POST",
        "url1/?q=query",
        data={"title": "Hello", "n": "42", "uni": "ünï ✓"},
        files={"file": ("report.bin", blob, "application/octet-stream"),
               "notes": ("notes.txt", b"line 1\nline 2\n", "text/plain")},  # fmt: skip
    )
    kw = res["kwargs"]
    assert kw["title"] == "Hello" and kw["n"] == "42" and kw["uni"] == "ünï ✓"
    up = kw["file"]
    assert up["upload"] is True
    assert up["filename"] == "report.bin"
    assert up["content_type"] == "application/octet-stream"
    assert base64.b64decode(up["data_b64"]) == blob
    assert up["size"] == len(blob) and up["type"] == "bytes"
    assert kw["notes"]["filename"] == "notes.txt"
    assert kw["notes"]["content_type"] == "text/plain"
    assert base64.b64decode(kw["notes"]["data_b64"]) == b"line 1\nline 2\n"
    assert kw["q"] == "query" and kw["parm_1"] == "url1"
    # __body__: the fields as sent, files as uploads.
    assert kw["__body__"]["title"] == "Hello"
    assert kw["__body__"]["file"] == up
    assert set(kw["__body__"]) == {"title", "n", "uni", "file", "notes"}
    assert res["args"] == []
    assert res["json"] is None
    assert res["content_type"].startswith("multipart/form-data; boundary=")


def test_multipart_binds_named_parameters(probe):
    r = probe.call(
        "POST",
        "upload",
        data={"title": "T"},
        files={"file": ("x.txt", b"contents", "text/plain")},
    )
    assert ok(r, f"{probe.mod}.upload") == {
        "title": "T",
        "filename": "x.txt",
        "content_type": "text/plain",
        "text": "contents",
        "tags": "none",
    }


def test_multipart_missing_file_is_missing_argument(probe):
    r = probe.call("POST", "upload", files={"title": (None, "only a title")})
    body = error(r, 400, "missing_argument")
    assert "file" in body["status"], body


def test_multipart_precedence_and_reserved(probe):
    res = probe.echo(
        "POST",
        "URL/?a=query",
        files={
            "a": (None, "body"),
            "b": (None, "body"),
            "parm_1": (None, "body"),
            "func": (None, "spoof"),
            "__request__": (None, "spoof"),
            "args": (None, "no special meaning"),
            "__map__": (None, "no special meaning"),
        },
    )
    kw = res["kwargs"]
    assert kw["a"] == "query" and kw["b"] == "body" and kw["parm_1"] == "URL"
    assert kw["func"] == f"{probe.p}-echo"
    assert kw["args"] == "no special meaning" and kw["__map__"] == "no special meaning"
    assert res["args"] == []
    assert kw["__body__"]["func"] == "spoof"  # the body still holds what was sent


def test_multipart_repeated_name_last_wins(probe):
    files = [("f", ("one.txt", b"1", "text/plain")), ("f", ("two.txt", b"2", "text/plain")),
             ("t", (None, "x")), ("t", (None, "y"))]  # fmt: skip
    kw = probe.echo("POST", files=files)["kwargs"]
    assert kw["f"]["filename"] == "two.txt"
    assert kw["t"] == "y"
    assert kw["__body__"]["f"]["filename"] == "two.txt" and kw["__body__"]["t"] == "y"


def test_multipart_file_without_type_and_empty_filename(probe):
    boundary = "b0undary"
    data = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="f"; filename=""\r\n\r\n'
        "no type\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    up = probe.echo("POST", data=data, headers=headers)["kwargs"]["f"]
    assert up["upload"] is True
    assert up["filename"] == "" and up["content_type"] is None
    assert base64.b64decode(up["data_b64"]) == b"no type"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_multipart_with_curl(probe, tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"from curl\n")
    url = probe.server.abs(f"{probe.p}-upload/")
    out = subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), "-F", "title=1", "-F", f"file=@{f}", url],
        capture_output=True,
        check=True,
        timeout=TIMEOUT + 5,
    )
    body = json.loads(out.stdout)
    assert body["response"][f"{probe.mod}.upload"] == {
        "title": "1",
        "filename": "x.txt",
        "content_type": "text/plain",
        "text": "from curl\n",
        "tags": "none",
    }


BAD_MULTIPART = [
    ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--\r\n', "boundary"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1', "multipart"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"\r\n', "multipart"),
    ("multipart/form-data; boundary=x", b"no boundary line at all", "multipart"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data\r\n\r\n1\r\n--x--\r\n', "name"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="t"\r\n\r\n\xff\xfe\r\n--x--\r\n', "utf-8"),
]  # fmt: skip


@pytest.mark.parametrize("content_type,data,mentions", BAD_MULTIPART)
def test_bad_multipart_is_400_before_plugin(probe, tmp_path, content_type, data, mentions):
    marker = tmp_path / "ran"
    r = probe.call(
        "POST", "touch", "?marker=" + quote(str(marker)), data=data, headers={"Content-Type": content_type}
    )
    body = error(r, 400, "bad_request")
    assert mentions in body["status"].lower(), body
    assert "json" not in body["status"].lower(), body
    assert not marker.exists(), "the plugin ran on a bad body"


# --------------------------------------------------------------------------------------------
# The size limit holds for every type

OVER_LIMIT = 1024 * 1024 + 1  # DPMS_MAX_BODY defaults to 1 MiB


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "multipart/form-data"])
def test_size_limit_still_413(probe, tmp_path, content_type):
    marker = tmp_path / "ran"
    if content_type.startswith("multipart"):
        r = probe.call(
            "POST",
            "touch",
            "?marker=" + quote(str(marker)),
            files={"big": ("big.bin", b"\x00" * OVER_LIMIT, "application/octet-stream")},
        )
    else:
        r = probe.call(
            "POST",
            "touch",
            "?marker=" + quote(str(marker)),
            data=b"x" * OVER_LIMIT,
            headers={"Content-Type": content_type},
        )
    error(r, 413, "body_too_large")
    assert not marker.exists()


def test_multipart_just_under_limit(probe):
    data = b"\x01" * (1024 * 1024 - 4096)
    up = probe.echo("POST", files={"f": ("f.bin", data)})["kwargs"]["f"]
    assert up["size"] == len(data)


def test_upload_under_plain_python(tmp_path):
    # A plugin's own unit tests build uploads without a server (SPEC §1).
    from test_plain_python import run_plain

    out = run_plain(
        """
        import json
        from dpms import Upload
        u = Upload("a.txt", "text/plain", bytearray(b"hi"))
        print(json.dumps([u.filename, u.content_type, u.data.decode(), u.size, u.text(),
                          u == Upload("a.txt", "text/plain", b"hi"), repr(u)]))
        """,
        tmp_path,
    )
    assert out == ["a.txt", "text/plain", "hi", 2, "hi", True,
                   "Upload(filename='a.txt', content_type='text/plain', size=2)"]  # fmt: skip

#!/usr/bin/env python3
"""Writes the seed corpus: fuzz/corpus/marshal/*.req and fuzz/corpus/dotenv/*.env.

Run from anywhere: `python3 fuzz/seeds.py`. It rewrites only the files it names (files added
by hand stay). The marshal input format is documented in fuzz/src/marshal_checks.rs: a selector line,
the raw path, the raw query, then the body.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "text/plain",
    "multipart/form-data; boundary=----x",
    "APPLICATION/X-WWW-FORM-URLENCODED",
    ";;application/x-www-form-urlencoded",
    "",
    "application/x-www-form-urlencodedx",
    " application/x-www-form-urlencoded ;",
]
# Index into fuzz/src/marshal_checks.rs's signatures().
SIGS = {
    "args_kwargs": 0,  # def foo(*args, **kwargs)   (the samples)
    "kwargs": 1,  # def f(**kwargs)
    "defaults": 2,  # def f(a, b=2, c=3)
    "posonly_kwonly": 3,  # def f(x, /, y=1, *, z, w=0)
    "star_args": 4,  # def f(first, *args)
    "request": 5,  # def f(name='world', __request__=None)
    "none": 6,  # def bar2()
    "echo": 7,  # def echo(args, kwargs, **extra)
    "reserved_names": 8,  # def f(parm_1, p1=None, *, func=None, module=None, uuid=None, __body__=None)
}
# Index into url_parm_names().
NAMES = {"parm10": 0, "p10": 1, "URL_PARM10": 2, "parm3": 3, "none": 4, "p100": 5}

TEN = "/".join(str(n) for n in range(1, 11))
UUID = "0b5b7a5e-4c1e-4a8e-9c1e-2b6f6a7e8d9f"


def sel(n: int) -> bytes:
    return bytes([ord("0") + n])


def req(name, method="GET", ct=None, sig="args_kwargs", names="parm10", module=False,
        path="hello-world/", query="", body=b""):
    header = (sel(METHODS.index(method)) + sel(CONTENT_TYPES.index(ct)) + sel(SIGS[sig])
              + sel(NAMES[names]) + sel(1 if module else 0))
    if isinstance(body, str):
        body = body.encode()
    data = header + b"\n" + path.encode() + b"\n" + query.encode() + b"\n" + body
    (ROOT / "marshal" / f"{name}.req").write_bytes(data)


def env(name, text):
    data = text.encode() if isinstance(text, str) else text
    (ROOT / "dotenv" / f"{name}.env").write_bytes(data)


def marshal_seeds():
    q = "a=1&b=2&c=3&d=4"
    names4 = '"name1":"one","name2":"two","name3":"three","name4":"four"'
    req("hello_world_get", path=f"hello-world/{TEN}/", query=q)
    req("hello_world_get_prefixed", path=f"/rest/services/hello-world/{TEN}/", query=q)
    req("hello_world_module", module=True, path=f"module1/hello-world/{TEN}/", query=q)
    req("hello_world_uuid", path=f"{UUID}/hello-world/1/2/", query=q)
    req("hello_world_head", method="HEAD", path=f"hello-world/{TEN}", query=q, body="ignored")
    req("options", method="OPTIONS", path="hello-world/", body='{"args":[1]}')
    req("sample_one_post", method="POST", ct="application/json; charset=utf-8",
        path=f"sample-one/{TEN}/", query=q, body='{"args":[1,2,3,4,5,6],' + names4 + "}")
    req("sample_one_module", method="POST", ct="application/json", module=True,
        path=f"module1/sample-one/{TEN}/", query=q, body='{"args":[1,2,3,4,5,6],' + names4 + "}")
    req("sample_put_no_ct", method="PUT", path="sample-one2/1/", body='{"args":[],"x":null}')
    req("rpc_array_curl", method="POST", ct="application/x-www-form-urlencoded",
        path="sample-two/", body='[["Bob"], {"last_name": "Ross"}]')
    req("rpc_array_args_only", method="POST", ct="application/json", path="sample-two/",
        body='[["Bob", 1, 2.5, true, null]]')
    req("rpc_array_map", method="POST", ct="application/json", path="sample-two/7/8/",
        body='[[], {"__map__": {"parm_1": "id", "parm_2": "page"}, "k": "v"}]')
    req("rpc_array_bad_args_key", method="POST", path="x/", body='[[1], {"args": [2]}]')
    req("rpc_array_three", method="POST", path="x/", body="[[1], {}, 3]")
    req("rpc_array_not_list", method="POST", path="x/", body='[{"a": 1}]')
    req("rpc_array_empty", method="PATCH", path="x/", body="[]")
    req("map_rename", method="POST", ct="application/json", path="item/42/7/",
        body='{"__map__": {"parm_1": "id", "parm_2": "rev"}, "x": 1}')
    req("map_rename_p_names", method="DELETE", names="p10", path="item/42/",
        body='{"__map__": {"p1": "id"}}')
    req("map_not_object", method="POST", path="x/1/", body='{"__map__": ["parm_1"]}')
    req("map_not_strings", method="POST", path="x/1/", body='{"__map__": {"parm_1": 5}}')
    req("form_fields", method="POST", ct="application/x-www-form-urlencoded", path="form/",
        body="name=Bob+Ross&age=42&check=%E2%9C%93&empty=&flag")
    req("form_charset", method="PUT", ct="application/x-www-form-urlencoded; charset=UTF-8",
        path="form/1/", query="name=query", body="name=body&args=1&__map__=x")
    req("form_bad_escape", method="POST", ct="application/x-www-form-urlencoded", path="form/",
        body="a=%ZZ&b=%ff")
    req("form_looks_json_broken", method="POST", ct="application/x-www-form-urlencoded",
        path="form/", body="{a=1&b=2")
    req("form_uppercase_ct", method="POST", ct="APPLICATION/X-WWW-FORM-URLENCODED",
        path="form/", body="a=1&a=2")
    req("form_garbage_ct", method="POST", ct=";;application/x-www-form-urlencoded",
        path="form/", body="a=1")
    req("form_spaced_ct", method="POST", ct=" application/x-www-form-urlencoded ;",
        path="form/", body="a=%20b+c")
    req("text_plain_json", method="POST", ct="text/plain", path="x/", body='{"a": "b"}')
    req("multipart_garbage", method="POST", ct="multipart/form-data; boundary=----x", path="x/",
        body="------x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n------x--\r\n")
    req("multipart_file", method="POST", ct="multipart/form-data; boundary=----x", path="x/1/",
        query="a=q", body="------x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nbody\r\n"
        "------x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n\x00\xff\r\n------x--\r\n")
    req("multipart_truncated", method="POST", ct="multipart/form-data; boundary=----x", path="x/",
        body="------x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1")
    req("text_plain_bytes", method="PUT", ct="text/plain", sig="request", path="x/",
        body=b"\xff\xfe<xml/>")
    req("query_bad_escape", path="x/", query="a=%&b=%C3%28")
    req("query_plus_repeat", path="x/", query="a=1&a=2&b=x+y&&c&=v&d=%2B")
    req("query_reserved", sig="reserved_names", path="x/1/",
        query="func=spoof&module=spoof&uuid=spoof&__body__=spoof&__request__=spoof")
    req("body_reserved", method="POST", sig="reserved_names", path="x/1/",
        body='{"func":"s","module":"s","uuid":"s","__body__":1,"__request__":2,"p1":3}')
    req("path_escapes", path="hello-world/a%2Fb/%E2%9C%93/x+y/%25/")
    req("path_bad_utf8", path="hello-world/%FF/")
    req("path_empty_segments", path="hello-world//x//")
    req("path_only_api", path="bar2-none", sig="none")
    req("too_many_params", path=f"hello-world/{TEN}/11/")
    req("no_url_params_allowed", names="none", path="hello-world/1/")
    req("p100_names", names="p100", path="hello-world/" + "/".join(map(str, range(1, 13))), query=q)
    req("url_parm_names", names="URL_PARM10", path="hello-world/1/2/3/")
    req("parm3_names", names="parm3", method="POST", path="x/1/2/3/", body='{"parm_1": "body"}')
    big = "1" * 4300
    req("big_int", method="POST", ct="application/json", path="x/",
        body='{"n": 123456789012345678901234567890123456789012345678901234567890, "f": -1.5e308}')
    req("big_int_limit", method="POST", path="x/", body='{"args": [' + big + "]}")
    req("big_int_over", method="POST", path="x/", body='{"n": -' + big + "1}")
    req("float_huge", method="POST", path="x/", body='{"f": 1e400, "g": 0.1, "h": -0.0}')
    req("json_broken", method="POST", path="x/", body='{"a":')
    req("json_scalar", method="POST", path="x/", body='"just a string"')
    req("json_number", method="POST", path="x/", body="42")
    req("json_args_not_list", method="POST", path="x/", body='{"args": 5}')
    req("json_duplicate_keys", method="POST", path="x/", body='{"a": 1, "a": 2, "args": [1], "args": [2, 3]}')
    req("json_deep", method="POST", path="x/", body="[" * 200 + "]" * 200)
    req("json_unicode", method="POST", ct="application/json; charset=utf-8", path="x/",
        query="q=%F0%9F%98%80", body='{"\u043a\u043b\u044e\u0447": "\\u00e9\\ud83d\\ude00"}')
    req("json_bad_escape", method="POST", path="x/", body='{"a": "\\x41 \\ud800"}')
    req("whitespace_body", method="DELETE", path="x/", body=" \n\t\r ")
    req("get_body_ignored", path="x/", body="not json at all")
    req("defaults_ok", sig="defaults", path="x/", query="a=1&c=3")
    req("defaults_missing", sig="defaults", path="x/")
    req("defaults_too_many", method="POST", sig="defaults", path="x/", body='{"args": [1, 2, 3, 4]}')
    req("defaults_clash", method="POST", sig="defaults", path="x/", body='{"args": [1], "a": 2}')
    req("posonly_ok", method="POST", sig="posonly_kwonly", path="x/", body='{"args": [1], "z": 3}')
    req("posonly_by_name", method="POST", sig="posonly_kwonly", path="x/", body='{"x": 1, "z": 3}')
    req("kwonly_from_query", sig="posonly_kwonly", path="x/", query="z=1&w=2&y=3")
    req("star_args", method="POST", sig="star_args", path="x/", body='{"args": [1, 2, 3]}')
    req("star_args_missing", sig="star_args", path="x/", query="first=1")
    req("request_named", method="POST", sig="request", path="x/", body='{"args": ["Bob"]}')
    req("request_query", sig="request", path="x/", query="name=Bob&__request__=spoof")
    req("no_params_get", sig="none", path="bar2-none/", query="a=1")
    req("no_params_post", method="POST", sig="none", path="bar2-none/", body='{"args": [1]}')
    req("echo_sig", method="POST", sig="echo", path="echo/1/", body='{"args": [[1], {"k": 1}]}')
    req("kwargs_only", method="PUT", sig="kwargs", module=True, path=f"{UUID}/module2/sample-put/1/",
        query="a=1", body='{"b": 2, "__map__": {"parm_1": "one"}}')


def dotenv_seeds():
    # The original framework's shape: bare KEY=value, `# comment` lines, an empty value, a URI
    # with `=` and `?`, and NUM_URL_PARMS with its URL_PARMn names and inline comments.
    lines = [
        "MULTI_TENANT=True",
        "MAX_FUNCTION_SECS=30",
        "",
        "# identify the elements that are secrets. Tenants cannot see the environment.",
        "SECRETS=",
        "#MONGO_URI=mongodb+srv://cluster.example/admin",
        "MONGO_URI=mongodb://127.0.0.1:27017/?connectTimeoutMS=300000",
        "",
        "ADMIN_TABLE=ADMINS",
        "ADMIN_COL=ADMIN",
        "TENANT_COL=TENANT",
        "",
        "NUM_URL_PARMS=100  # Can be any number however the default is 10.",
        'URL_PARM0=p0       # Do not use dashes ("-") for parameter names. ',
        'URL_PARM1=p1       # Do not use dashes ("-") for parameter names. ',
    ] + [f"URL_PARM{n}=p{n}" for n in range(2, 101)]
    env("framework_style", "\n".join(lines) + "\n")
    example = Path(__file__).resolve().parent.parent / ".env.example"
    if example.exists():
        env("dpms_example", example.read_bytes())
    env("simple", "DPMS_PORT=8088\nDEBUG=False\n")
    env("spaces_around_eq", "plugins = ./plugins          # `:`-separated folders\nNUM_URL_PARMS\t=\t3\n")
    env("quotes", 'A="value with spaces"\nB=\'single $NOT_EXPANDED\'\nC="escaped \\" quote"\nD="tab\\tnew\\nline"\n')
    env("multiline_quote", 'CERT="-----BEGIN-----\nabc\n-----END-----"\nNEXT=1\n')
    env("export", "export DPMS_HOST=127.0.0.1\nexport  DEBUG=true\n")
    env("comments", "# full line\n   # indented\nA=1 # inline\nB=2#no-space\nC='3 # kept'\n")
    env("eq_in_values", "URI=mongodb://x:1/?a=1&b=2\nB64=YWJj==\nEQ==\n")
    env("empty_lines", "\n\n\nA=1\n\n\n\nB=2\n\n")
    env("crlf", "A=1\r\nB=two words\r\n# c\r\n")
    env("no_trailing_newline", "A=1\nB=2")
    env("substitution", "A=1\nB=${A}2\nC=$A\nD=\\${A}\nE=${MISSING:-default}\nF=\"$A and ${B}\"\n")
    env("empty_values", 'A=\nB= \nC=""\nD=\'\'\n')
    env("bad_eq_first", "=value\n")
    env("bad_no_eq", "A=1\nKEY\n")
    env("bad_space_in_key", "KEY value=1\n")
    env("bad_export_only", "export\n")
    env("bad_unterminated_double", 'A="unterminated\n')
    env("bad_unterminated_single", "A='a\nB=2\n")
    env("odd_keys", "1KEY=x\nKEY-DASH=x\nKEY.DOT=x\n_U=1\n")
    env("bom", b"\xef\xbb\xbfA=1\n")
    env("bad_line_after_comment", "# KEY value\nA=1\nKEY value\n")
    env("unicode", "GREETING=h\u00e9llo \u2713\n\u00c9T\u00c9=1\n")
    env("backslashes", "WIN=C:\\path\\to\nQ=\"a\\\\b\"\nR='a\\b'\n")
    env("only_comment", "# nothing here\n")
    env("empty", "")


def main():
    (ROOT / "marshal").mkdir(parents=True, exist_ok=True)
    (ROOT / "dotenv").mkdir(parents=True, exist_ok=True)
    marshal_seeds()
    dotenv_seeds()


if __name__ == "__main__":
    main()

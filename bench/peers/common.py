"""What both peer servers share: the same plugin functions dpms serves, and the same per-request work.

dpms does this in Rust; here it is plain Python, written once so that the two peers differ only in
how their framework receives the request and sends the response. Per request a peer:

1. splits ``/rest/services/[<uuid>/][<module>/]<api>/<p1>/…/<pN>/`` on ``/`` and percent-decodes
   each segment (up to ``NUM_URL_PARMS`` = 10 URL parameters, named ``parm_1`` … ``parm_10``);
2. parses the query string (last value of a repeated key wins) and, for POST/PUT/DELETE/PATCH, the
   JSON body (``"args"`` → positional args, other keys → kwargs);
3. builds kwargs in dpms's order (body keys, query, URL parameters, then ``func``, ``module``,
   ``uuid``, ``__body__`` and ``__request__``);
4. calls the very function dpms calls (``plugins/module1.py`` and ``bench/plugins/sleep50.py``);
5. answers ``{"status": "OK", "response": {"<module>.<function>": <result>}}`` as compact JSON.

The route table is built the way dpms builds it: from the ``@expose.endpoint`` metadata of the
functions defined in each plugin module.
"""

import importlib
import inspect
import json
import os
import re
import sys
from urllib.parse import parse_qsl, unquote

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
REPO = os.path.dirname(BENCH)
PLUGIN_DIRS = [os.path.join(REPO, "plugins"), os.path.join(BENCH, "plugins")]
for _d in PLUGIN_DIRS:
    if _d not in sys.path:
        sys.path.insert(0, _d)

from dpms.expose import get_endpoint  # noqa: E402  (installed into bench/.venv from ./python)

PLUGIN_MODULES = ["module1", "sleep50"]
PREFIX = "/rest/services/"
NUM_URL_PARMS = 10
PARM_NAMES = ["parm_%d" % (i + 1) for i in range(NUM_URL_PARMS)]
BODY_METHODS = frozenset(("POST", "PUT", "DELETE", "PATCH"))
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Which endpoints block (sleep in a thread). dpms runs every sync call on one of its Python
# threads; a peer's author would write just this endpoint as blocking work for the threadpool.
BLOCKING_APIS = frozenset(("sleep50",))

JSON_HEADERS = [("content-type", "application/json")]


class Endpoint:
    __slots__ = ("func", "key", "is_async", "blocking", "api")

    def __init__(self, module_name, func, api):
        self.func = func
        self.api = api
        self.key = "%s.%s" % (module_name, func.__name__)
        self.is_async = inspect.iscoroutinefunction(func)
        self.blocking = api in BLOCKING_APIS


def _methods(spec):
    if isinstance(spec, str):
        spec = spec.split("|")
    out = []
    for m in spec:
        out.extend(part.strip().upper() for part in str(m).split("|") if part.strip())
    return out


def build_routes(module_names=PLUGIN_MODULES):
    """``{(METHOD, api): Endpoint}``, ``{(module_or_alias, METHOD, api): Endpoint}``, module names."""
    routes, qualified, names = {}, {}, set()
    for name in module_names:
        mod = importlib.import_module(name)
        aliases = [name]
        if isinstance(getattr(mod, "__alias__", None), str):
            aliases.append(mod.__alias__)
        names.update(aliases)
        for attr, func in vars(mod).items():
            if attr.startswith("__") or not callable(func):
                continue
            if getattr(func, "__module__", None) != name:
                continue
            meta = get_endpoint(func)
            if meta is None:
                continue
            api = meta.get("API") or func.__name__
            ep = Endpoint(name, func, api)
            for method in _methods(meta.get("method") or "GET"):
                routes[(method, api)] = ep
                for a in aliases:
                    qualified[(a, method, api)] = ep
    return routes, qualified, frozenset(names)


ROUTES, QUALIFIED, MODULE_NAMES = build_routes()


class NotFound(Exception):
    pass


class BadRequest(Exception):
    pass


def resolve(method, path, query_string, body, request):
    """Route one request: ``(endpoint, args, kwargs)``; raises NotFound / BadRequest."""
    if not path.startswith(PREFIX):
        raise NotFound(path)
    segs = path[len(PREFIX):].split("/")
    if segs and segs[-1] == "":
        segs.pop()  # the trailing slash
    segs = [unquote(s, errors="strict") for s in segs]
    uuid = None
    if segs and UUID_RE.match(segs[0]):
        uuid = segs.pop(0)
    if not segs:
        raise NotFound(path)
    module = None
    ep = None
    if len(segs) >= 2 and segs[0] in MODULE_NAMES:
        ep = QUALIFIED.get((segs[0], method, segs[1]))
        if ep is not None:
            module = segs[0]
            segs = segs[1:]
    if ep is None:
        ep = ROUTES.get((method, segs[0]))
        if ep is None:
            raise NotFound(segs[0])
    api = segs[0]
    parms = segs[1:]
    if len(parms) > NUM_URL_PARMS:
        raise NotFound("too many URL parameters")

    args = ()
    kwargs = {}
    parsed = None
    if body and method in BODY_METHODS:
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise BadRequest(str(exc))
        if isinstance(parsed, dict):
            a = parsed.get("args", [])
            if not isinstance(a, list):
                raise BadRequest('"args" is not a list')
            args = tuple(a)
            for k, v in parsed.items():
                if k != "args" and k != "__map__":
                    kwargs[k] = v
        elif isinstance(parsed, list) and parsed and isinstance(parsed[0], list):
            args = tuple(parsed[0])
            if len(parsed) > 1 and isinstance(parsed[1], dict):
                kwargs.update(parsed[1])
        else:
            raise BadRequest("body is neither an object nor [args, kwargs]")
    if query_string:
        kwargs.update(parse_qsl(query_string, keep_blank_values=True))
    for i, value in enumerate(parms):
        kwargs[PARM_NAMES[i]] = value
    kwargs["func"] = api
    if module is not None:
        kwargs["module"] = module
    if uuid is not None:
        kwargs["uuid"] = uuid
    if parsed is not None:
        if isinstance(parsed, dict) and "__map__" in parsed:
            parsed = {k: v for k, v in parsed.items() if k != "__map__"}
        kwargs["__body__"] = parsed
    kwargs["__request__"] = request
    return ep, args, kwargs


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def envelope(ep, result):
    """The success body dpms sends, as bytes."""
    return _dumps({"status": "OK", "response": {ep.key: result}}).encode()


def error_body(status_text, code):
    return _dumps({"status": status_text, "error": code}).encode()

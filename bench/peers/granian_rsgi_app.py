"""Peer 1: the dpms work served by Granian through its native RSGI interface.

    granian --interface rsgi --workers 1 --host 127.0.0.1 --port P bench.peers.granian_rsgi_app:app

RSGI hands the app the request line (``scope``) and a protocol object to read the body from and
answer with; nothing else runs between the socket and this code. Per request it does what dpms
does (bench/peers/common.py): route, parse the 10 URL parameters, the query and the JSON body,
build the kwargs, call the plugin function, answer the JSON envelope.

Blocking endpoints (``sleep50``: ``time.sleep`` in a sync def) are offloaded to a thread pool of
``BENCH_PEER_THREADS`` (default 40, anyio's default limit, which FastAPI uses) so a sleeping call
does not stall the event loop; coroutine endpoints are awaited on the loop.
"""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from bench.peers.common import JSON_HEADERS, BadRequest, NotFound, envelope, error_body, resolve

_POOL = ThreadPoolExecutor(max_workers=int(os.environ.get("BENCH_PEER_THREADS", "40")),
                           thread_name_prefix="blocking")
_BODY_METHODS = frozenset(("POST", "PUT", "DELETE", "PATCH"))


async def app(scope, proto):
    if scope.proto != "http":
        return
    method = scope.method
    body = await proto() if method in _BODY_METHODS else b""
    try:
        ep, args, kwargs = resolve(method, scope.path, scope.query_string, body, scope)
    except NotFound as exc:
        proto.response_bytes(404, JSON_HEADERS, error_body("%s is undefined." % exc, "api_undefined"))
        return
    except (BadRequest, UnicodeDecodeError) as exc:
        proto.response_bytes(400, JSON_HEADERS, error_body(str(exc), "bad_request"))
        return
    try:
        if ep.is_async:
            result = await ep.func(*args, **kwargs)
        elif ep.blocking:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(_POOL, partial(ep.func, *args, **kwargs))
        else:
            result = ep.func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  (a plugin error is a 500, as in dpms)
        proto.response_bytes(500, JSON_HEADERS, error_body(repr(exc), "plugin_error"))
        return
    proto.response_bytes(200, JSON_HEADERS, envelope(ep, result))

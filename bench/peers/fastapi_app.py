"""Peer 2: the dpms work served by FastAPI under uvicorn (uvloop + httptools when installed).

    uvicorn --workers 1 --host 127.0.0.1 --port P bench.peers.fastapi_app:app

One catch-all path operation receives every ``/rest/services/...`` request and does what dpms
does (bench/peers/common.py): route, parse the 10 URL parameters, the query and the JSON body,
build the kwargs, call the plugin function, answer the JSON envelope. It is an ``async def``, so
cheap plugin functions run inline on the event loop (FastAPI's fastest path).

The blocking ``sleep50`` endpoint gets its own sync ``def`` path operation, which is how a FastAPI
author writes blocking work: FastAPI runs it in its threadpool (anyio, 40 threads by default).
Coroutine endpoints (``sleep50-async``) are awaited.
"""

from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench.peers.common import BadRequest, NotFound, envelope, error_body, resolve

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
_JSON = "application/json"


def _answer(method, request, body):
    """Route and marshal; returns the endpoint and its call, or a ready error Response."""
    try:
        scope = request.scope
        path = scope.get("raw_path") or scope["path"].encode()  # undecoded, as dpms splits it
        return resolve(method, path.decode("latin-1"), scope["query_string"].decode("latin-1"),
                       body, request), None
    except NotFound as exc:
        return None, Response(error_body("%s is undefined." % exc, "api_undefined"), 404, media_type=_JSON)
    except (BadRequest, UnicodeDecodeError) as exc:
        return None, Response(error_body(str(exc), "bad_request"), 400, media_type=_JSON)


def _plugin_error(exc):
    return Response(error_body(repr(exc), "plugin_error"), 500, media_type=_JSON)


@app.get("/rest/services/sleep50/{rest:path}")
def sleep50(rest: str, request: Request):
    """Sync path operation: FastAPI runs it in its threadpool, so time.sleep blocks one thread."""
    call, err = _answer("GET", request, b"")
    if err is not None:
        return err
    ep, args, kwargs = call
    try:
        result = ep.func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return _plugin_error(exc)
    return Response(envelope(ep, result), media_type=_JSON)


@app.api_route("/rest/services/{rest:path}", methods=_METHODS)
async def services(rest: str, request: Request):
    method = request.method
    body = await request.body() if method != "GET" else b""
    call, err = _answer(method, request, body)
    if err is not None:
        return err
    ep, args, kwargs = call
    try:
        if ep.is_async:
            result = await ep.func(*args, **kwargs)
        else:
            result = ep.func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return _plugin_error(exc)
    return Response(envelope(ep, result), media_type=_JSON)

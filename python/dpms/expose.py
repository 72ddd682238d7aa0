"""The ``@expose.endpoint`` decorator.

It records how a function is published and returns the function itself, unchanged: name,
docstring and signature stay as written. It never raises: the server checks the recorded
values when it loads the module, and a bad value makes only that function unroutable (the
message is listed under ``imports[<module>]["errors"]`` in ``__dir__``).
"""

import sys

#: Attribute the server looks for on module-level functions.
MARKER = "__dpms_endpoint__"
#: Module global listing every object decorated while that module was executing, so the
#: server finds endpoints that another decorator wrapped (``functools.lru_cache``, a helper
#: without ``functools.wraps``).
REGISTRY = "__dpms_endpoints__"


def _executing_module_globals():
    """The globals of the innermost module body being executed (the decorator may be
    reached through a helper's wrapper function), or ``None``."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            return frame.f_globals
        frame = frame.f_back
    return None


def endpoint(*args, method="GET", API=None, **meta):
    """Publish a function as a REST endpoint.

    ``method``: ``"GET"``, ``"GET|POST"`` or a list/tuple of such strings (default GET).
    ``API``: the public name in URLs (default: the function's own name).
    Any other keyword is kept as metadata and shown in ``__dir__``.

    Usable as ``@expose.endpoint(method="POST", API="sample-one")`` or bare ``@expose.endpoint``.
    """

    owner = _executing_module_globals()

    def decorate(func):
        marker = {"method": method, "API": API, "meta": dict(meta)}
        if owner is not None:
            marker["module"] = owner.get("__name__")
            try:
                owner.setdefault(REGISTRY, []).append(func)
            except (AttributeError, TypeError):
                pass
        try:
            setattr(func, MARKER, marker)
        except (AttributeError, TypeError):
            # Objects that refuse attributes simply stay unexposed.
            pass
        return func

    if len(args) == 1 and callable(args[0]) and API is None and not meta:
        return decorate(args[0])
    return decorate


def get_endpoint(func):
    """The metadata recorded by :func:`endpoint`, or ``None``."""
    return getattr(func, MARKER, None)

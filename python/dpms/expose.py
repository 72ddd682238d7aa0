"""The ``@expose.endpoint`` decorator.

It records how a function is published and returns the function itself, unchanged: name,
docstring and signature stay as written. It never raises: the server checks the recorded
values when it loads the module, and a bad value makes only that function unroutable (the
message is listed under ``imports[<module>]["errors"]`` in ``__dir__``).
"""

#: Attribute the server looks for on module-level functions.
MARKER = "__dpms_endpoint__"


def endpoint(*args, method="GET", API=None, **meta):
    """Publish a function as a REST endpoint.

    ``method``: ``"GET"``, ``"GET|POST"`` or a list/tuple of such strings (default GET).
    ``API``: the public name in URLs (default: the function's own name).
    Any other keyword is kept as metadata and shown in ``__dir__``.

    Usable as ``@expose.endpoint(method="POST", API="sample-one")`` or bare ``@expose.endpoint``.
    """

    def decorate(func):
        try:
            setattr(func, MARKER, {"method": method, "API": API, "meta": dict(meta)})
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

"""``Response``: return it from an endpoint to choose the status, headers or a non-JSON body."""


class Response:
    """A response sent as is, without the ``{"status": "OK", "response": ...}`` envelope.

    ``body``: ``str`` or ``bytes`` are sent as they are; anything else is converted to JSON.
    ``status``: the HTTP status code (200-599); 204 and 304 are sent without a body.
    ``headers``: a mapping of extra header names to values, or a list of ``(name, value)``
    pairs (to send a header twice, e.g. two ``Set-Cookie``). The framing headers
    (``Content-Length``, ``Transfer-Encoding``, ``Connection``…) are the server's and ignored.
    ``content_type``: defaults to ``application/json; charset=utf-8`` for converted bodies and
    ``text/plain; charset=utf-8`` for ``str``, ``application/octet-stream`` for ``bytes``.
    """

    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(self, body=None, status=200, headers=None, content_type=None):
        self.body = body
        self.status = status
        if not headers:
            self.headers = {}
        elif hasattr(headers, "items"):
            self.headers = dict(headers)
        else:
            self.headers = [tuple(pair) for pair in headers]
        self.content_type = content_type

    def __repr__(self):
        return f"Response(status={self.status!r}, content_type={self.content_type!r})"

"""``Upload``: a file sent in a ``multipart/form-data`` body (``curl -F file=@x.txt``)."""


class Upload:
    """One file part of a multipart body, passed to the endpoint under its field name.

    ``filename``: the name the client sent (may be ``""``). ``content_type``: the part's own
    ``Content-Type`` (``None`` if it sent none). ``data``: the file's bytes. Parts without a
    filename are plain text fields and arrive as ``str``, like form fields.

    It holds plain values and needs no server: a plugin's own tests can build one.
    """

    __slots__ = ("filename", "content_type", "data")

    def __init__(self, filename, content_type=None, data=b""):
        self.filename = filename
        self.content_type = content_type
        self.data = bytes(data)

    @property
    def size(self):
        """The length of ``data`` in bytes."""
        return len(self.data)

    def text(self, encoding="utf-8", errors="strict"):
        """``data`` decoded (UTF-8 unless told otherwise)."""
        return self.data.decode(encoding, errors)

    def __eq__(self, other):
        if not isinstance(other, Upload):
            return NotImplemented
        return (self.filename, self.content_type, self.data) == (
            other.filename,
            other.content_type,
            other.data,
        )

    __hash__ = None

    def __repr__(self):
        return (
            f"Upload(filename={self.filename!r}, content_type={self.content_type!r}, "
            f"size={len(self.data)})"
        )

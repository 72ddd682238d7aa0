"""Sample plugin: the original framework's ``module1`` endpoints, served by dpms.

How a call reaches a function (see the README for the full rules):

* ``GET /rest/services/hello-world/1/2/?a=1`` calls ``foo(**kwargs)`` with the query string
  (``a="1"``), the URL parameters (``parm_1="1"``, ``parm_2="2"``) and ``func="hello-world"``.
* ``POST /rest/services/sample-one/`` with ``{"args": [1, 2], "name1": "one"}`` calls
  ``sample1(1, 2, name1="one", func=..., __body__=...)``.
* ``/rest/services/module1/hello-world/`` or ``/rest/services/v1/hello-world/`` names the module
  (or its ``__alias__``) explicitly; the call then also gets ``module``.
* Every call also gets ``__request__``: method, path, headers, raw body and more.

Whatever the function returns is sent as ``{"status": "OK", "response": {"module1.<function>": ...}}``.
"""

from vyperlogix.decorators import expose  # the original import path keeps working

from echo_helper import echo

__alias__ = "v1"  # a second name for this module in URLs, handy for API versions


@expose.endpoint(method="GET|PUT|POST".split("|"), API="hello-world")
def foo(*args, **kwargs):
    """Echo the call: positional args by index and every keyword argument.

    ``method`` may be a ``|``-separated string or a list of names, as here.
    """
    return echo(args, kwargs, response="hello-world")


def __private_function__():
    """Names that begin with ``__`` are never published nor listed."""
    return "bar-none"


def private_function():
    """Not decorated: listed in ``__dir__`` as a module function, but not callable over HTTP."""
    return "again"


@expose.endpoint(method="GET", API="bar-none")
def bar(*args, **kwargs):
    """Return a plain string built from two unexposed helpers."""
    return __private_function__() + " " + private_function()


my_var = 1.0  # module globals are never published; they live as long as the loaded module


@expose.endpoint(method="POST", API="sample-one")
def sample1(*args, **kwargs):
    """POST: the body's ``"args"`` list becomes the positional arguments, other keys kwargs."""
    return echo(args, kwargs)


@expose.endpoint(method="PUT", API="sample-one2")
def sample12(*args, **kwargs):
    """PUT: the body is read exactly as for POST."""
    return echo(args, kwargs)


@expose.endpoint(method="DELETE", API="sample-one2a")
def sample12a(*args, **kwargs):
    """DELETE: a JSON body is read exactly as for POST."""
    return echo(args, kwargs)


@expose.endpoint(method="POST", API="sample-two")
def sample2(*args, **kwargs):
    """POST: a second echo endpoint, as in the original samples."""
    return echo(args, kwargs)

"""Sample plugin: the original framework's ``module2`` endpoints.

``bar2`` takes no arguments at all: dpms binds each call to the function's signature, so a
function only receives the keyword arguments it names (or all of them with ``**kwargs``).
"""

from vyperlogix.decorators import expose

from echo_helper import echo


@expose.endpoint(method="GET", API="hello-world2")
def foo2(*args, **kwargs):
    """Echo the call, like ``hello-world`` in module1."""
    return echo(args, kwargs, response="hello-world")


def __private_function__():
    return "bar-none"


def private_function():
    """Listed in ``__dir__`` but not published."""
    return "again"


@expose.endpoint(method="GET", API="bar2-none")
def bar2():
    """A function without parameters: query strings and URL parameters are simply not passed."""
    return __private_function__() + " " + private_function()


@expose.endpoint(method="PUT|POST".split("|"), API="sample-put")
def sample12(*args, **kwargs):
    """PUT or POST: echo the call."""
    return echo(args, kwargs)


@expose.endpoint(method="POST", API="sample-two2")
def sample22(*args, **kwargs):
    """POST: echo the call."""
    return echo(args, kwargs)

"""A helper module shared by the sample plugins.

Any ``*.py`` file in a plugin folder is a module; one without ``@expose.endpoint`` functions
publishes nothing and is simply importable by its siblings (``from echo_helper import echo``).
When this file changes, dpms re-imports it and every plugin that imported it.
"""


def echo(args, kwargs, **extra):
    """Describe a call the way the original framework's samples did.

    ``args`` become ``{index: value}``; ``kwargs`` are copied except ``__request__`` (an object,
    not data). ``extra`` keys are added at the top level.
    """
    response = {
        "args": {i: arg for i, arg in enumerate(args)},
        "kwargs": {k: v for k, v in kwargs.items() if k != "__request__"},
    }
    response.update(extra)
    return response

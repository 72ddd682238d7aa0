"""dpms: the package plugin authors import.

    from dpms import expose            # native path
    from vyperlogix.decorators import expose   # the original framework's path, same object

`expose.endpoint(...)` only attaches metadata to a function; the dpms server reads it when it
loads the plugin. Nothing here needs the server, so a plugin imports and runs under plain
``python3`` and can be unit tested like any other module.
"""

from dpms import expose
from dpms.response import Response
from dpms.upload import Upload

__all__ = ["expose", "Response", "Upload"]
__version__ = "0.1.0"

"""``from vyperlogix.decorators import expose`` gives the very same module as ``dpms.expose``."""

import sys

from dpms import expose

# `import vyperlogix.decorators.expose` must find the same object too.
sys.modules[__name__ + ".expose"] = expose

__all__ = ["expose"]

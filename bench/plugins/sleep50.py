"""Benchmark plugin: endpoints that wait 50 ms, for the ``sleep50`` cases of bench/bench.py.

``sleep50`` blocks its thread (``time.sleep``), like a database call would; ``sleep50-async``
awaits ``asyncio.sleep`` and holds no thread. Both echo the call like ``hello-world``.
"""

import asyncio
import time

from vyperlogix.decorators import expose

from echo_helper import echo


@expose.endpoint(method="GET", API="sleep50")
def sleep50(*args, **kwargs):
    """Block the calling thread for 50 ms, then echo the call."""
    time.sleep(0.05)
    return echo(args, kwargs, response="slept 50 ms")


@expose.endpoint(method="GET", API="sleep50-async")
async def sleep50_async(*args, **kwargs):
    """Wait 50 ms without holding a thread, then echo the call."""
    await asyncio.sleep(0.05)
    return echo(args, kwargs, response="slept 50 ms")

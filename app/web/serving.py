"""Which serving model this process runs: an event loop (gevent) or threads.

A stream is a request that never ends, and a proxied gateway request waits on its upstream for
most of its life. Under gunicorn's ``gthread`` or ``sync`` workers each would hold a worker
thread while it waits, so production serves ``/api/v1/stream`` and ``/api/v1/gateway`` from
gunicorn with ``-k gevent``, where a waiting request costs a greenlet. An API process that is
not gevent-patched redirects stream requests there when ``SWITCHBOARD_STREAM_URL`` names it;
the gateway route split is the load balancer's (docs/operations.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def cooperative() -> bool:
    """True in a gevent-patched process (gunicorn ``-k gevent``), where waiting is cheap."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def off_the_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``; in a gevent process, in gevent's thread pool, so that CPU-bound work
    which releases the GIL (bcrypt) does not stop every other request of the process."""
    if not cooperative():
        return function(*args)
    import gevent

    result: T = gevent.get_hub().threadpool.apply(function, args)
    return result

"""Where streams are served: the gevent stream service, or (capped) any other server.

A stream is a request that never ends. Under gunicorn's ``gthread`` or ``sync`` workers it
would hold a worker thread for its whole life, so production runs a second gunicorn with
``-k gevent`` for ``/api/v1/stream``, where a stream costs a greenlet. An API process that is
not gevent-patched redirects stream requests there when ``SWITCHBOARD_STREAM_URL`` names it.
"""

from __future__ import annotations

import sys


def cooperative() -> bool:
    """True in a gevent-patched process (gunicorn ``-k gevent``), where streams are cheap."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))

"""This process was asked to stop (SIGTERM or Ctrl-C): long-running jobs wind down.

The worker's warm-shutdown handler sets it; a running dispatcher job sees it at its next turn,
stops claiming, and hands back within ``STOP_GRACE`` seconds what it still has in flight, so a
stopping worker exits within a few seconds whatever its receivers do (Kubernetes' default grace
period is 30 s).
"""

from __future__ import annotations

import threading

#: How long a stopping dispatcher waits for its sends in flight before handing them back.
STOP_GRACE = 1.0

_requested = threading.Event()


def request() -> None:
    """Ask this process's jobs to wind down."""
    _requested.set()


def requested() -> bool:
    """True once this process was asked to stop."""
    return _requested.is_set()

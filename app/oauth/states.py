"""Single-use ``state`` values in Redis: 10 minutes, bound to one flow and what started it.

``take`` reads and deletes in one transaction, so a state is honoured at most once even when a
callback is replayed concurrently.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import Any

from app.store.models import utcnow
from app.store.redis import get_redis

STATE_TTL_SECONDS = 600
_KEY = "sb:oauth:state:{flow}:{state}"


def issue(flow: str, data: dict[str, Any]) -> tuple[str, datetime]:
    """Remember ``data`` under a new random state for ``flow``; return it and its expiry."""
    state = secrets.token_urlsafe(32)
    get_redis().set(_KEY.format(flow=flow, state=state), json.dumps(data), ex=STATE_TTL_SECONDS)
    return state, utcnow() + timedelta(seconds=STATE_TTL_SECONDS)


def take(flow: str, state: str | None) -> dict[str, Any] | None:
    """The data of an unexpired, unused state of ``flow`` (consuming it), else None."""
    if not state or len(state) > 200:
        return None
    key = _KEY.format(flow=flow, state=state)
    pipe = get_redis().pipeline(transaction=True)  # GET + DEL in one MULTI: GETDEL needs 6.2
    pipe.get(key)
    pipe.delete(key)
    raw, deleted = pipe.execute()
    if raw is None or not deleted:
        return None
    data: dict[str, Any] = json.loads(raw)
    return data

"""The token refresher: a worker thread that refreshes OAuth2 tokens before they expire.

Every ``SWITCHBOARD_OAUTH_REFRESH_INTERVAL`` seconds it refreshes the token sets that would
expire before the next pass (plus a margin), so connections that nobody uses for a while keep
a live refresh token. Each refresh takes the integration's lock, so workers and API processes
never refresh the same connection twice.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from flask import Flask

from app.oauth.tokens import REFRESH_MARGIN, refresh_due
from app.store.db import database
from app.store.outage import WORKER_SURVIVES, describe

log = logging.getLogger(__name__)


def start_token_refresher(app: Flask) -> threading.Thread:
    """Run :func:`refresh_due` every ``OAUTH_REFRESH_INTERVAL`` seconds in a daemon thread."""
    interval = int(app.config["OAUTH_REFRESH_INTERVAL"])
    horizon = timedelta(seconds=interval) + REFRESH_MARGIN

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            with app.app_context():
                try:
                    with database.connection_context():
                        refresh_due(horizon)
                except WORKER_SURVIVES as exc:
                    log.warning("token refresh pass failed: %s", describe(exc))
                except Exception as exc:  # noqa: BLE001 - keep refreshing on the next pass
                    log.warning("token refresh pass failed: %s", exc)

    thread = threading.Thread(target=loop, name="oauth-token-refresher", daemon=True)
    thread.start()
    return thread

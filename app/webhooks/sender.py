"""Sending one signed webhook request and classifying the answer."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from app import __version__
from app.outbound.guard import REFUSED, BlockedDestination, GuardedSession
from app.outbound.session import outbound_session
from app.store import jsoncodec
from app.store.models import Webhook, utcnow
from app.store.secretbox import decrypt
from app.webhooks.backoff import parse_retry_after
from app.webhooks.signing import signature_header

USER_AGENT = f"Switchboard-Webhooks/{__version__}"
MAX_STORED_BODY = 4096
#: The longest per-attempt timeout a webhook may set (``timeout_ms``); the dispatcher's job
#: time limit is derived from it.
MAX_TIMEOUT_MS = 60_000
# Stored in delivery history and logs that members read: how our DNS resolved a name stays out.
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    """What happened to one HTTP attempt."""

    success: bool
    status_code: int | None
    response_time_ms: float
    error: str | None = None
    response_body: str | None = None
    retry_after: float | None = None
    final: bool = False  # no point retrying (e.g. a connector's non-retryable error)


def event_body(event_type: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The delivered JSON body; identical on every retry of the same event."""
    timestamp = created_at.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return jsoncodec.dumps(
        {"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":")
    ).encode()


def signing_secrets(webhook: Webhook) -> list[str]:
    """The current secret, plus the previous one while a rotation's overlap lasts."""
    in_use = [decrypt(webhook.secret)]
    if webhook.previous_secret and webhook.previous_secret_until:
        if webhook.previous_secret_until > utcnow():
            in_use.append(decrypt(webhook.previous_secret))
    return in_use


def send_signed(
    url: str,
    secrets: list[str],
    msg_id: str,
    body: bytes,
    timeout_ms: int,
    *,
    headers: dict[str, str] | None = None,
    session: GuardedSession | None = None,
) -> SendResult:
    """POST ``body`` to ``url`` with Standard Webhooks headers (after the endpoint's own
    ``headers``), over ``session`` (default: the shared guarded one); never raises for HTTP
    trouble."""
    timestamp = int(time.time())
    headers = {
        **(headers or {}),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    timeout = timeout_ms / 1000
    started = time.perf_counter()
    try:
        with (session or outbound_session()).post(
            url,
            data=body,
            headers=headers,
            timeout=(timeout, timeout),
            allow_redirects=False,
            stream=True,
        ) as response:
            text = _read_capped(response)
            elapsed = (time.perf_counter() - started) * 1000
            status = response.status_code
            if 200 <= status < 300:
                return SendResult(True, status, elapsed, response_body=text)
            retry_after = (
                parse_retry_after(response.headers.get("Retry-After"))
                if status in (429, 503)
                else None
            )
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += f" redirect to {response.headers.get('Location', '?')} (not followed)"
            return SendResult(False, status, elapsed, error, text, retry_after)
    except requests.Timeout:
        return _failure(started, f"timed out after {timeout_ms} ms")
    except BlockedDestination as exc:  # retrying cannot help until the URL or the setting changes
        log.warning("webhook delivery refused by the outbound guard: %s", exc)  # host, no path
        elapsed = (time.perf_counter() - started) * 1000
        return SendResult(False, None, elapsed, REFUSED, final=True)
    except requests.RequestException as exc:
        return _failure(started, f"{type(exc).__name__}: {_short(exc)}")


def _failure(started: float, error: str) -> SendResult:
    return SendResult(False, None, (time.perf_counter() - started) * 1000, error)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "…"


def _read_capped(response: requests.Response) -> str:
    """Up to 4 KiB of the response body, decoded leniently."""
    chunk = response.raw.read(MAX_STORED_BODY, decode_content=True) or b""
    return chunk[:MAX_STORED_BODY].decode("utf-8", errors="replace")

"""Sending to a webhook's endpoint as it asks: its extra headers, its auth, its client
certificate — the one send of a delivery attempt and of ``POST /webhooks/{id}/test``.

``basic`` and ``bearer`` become an ``Authorization`` header; ``oauth2_client_credentials`` a
bearer token from ``app.webhooks.client_credentials`` (a failing token endpoint is the
attempt's error, retried on the schedule; a ``401`` answer forgets the token); ``mtls`` a
guarded session whose TLS context holds the client certificate and key (and trusts only the
receiver's CA when one is given), built once per process for each stored auth. The key is
handed to OpenSSL through an anonymous in-memory file where the platform has one (Linux),
else a private temporary file removed at once: it never lands anywhere readable.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import certifi

from app.outbound.guard import GuardedSession, make_session
from app.outbound.session import allowed_networks
from app.store import jsoncodec
from app.store.models import Webhook
from app.store.secretbox import decrypt
from app.webhooks import client_credentials
from app.webhooks.credentials import plain_headers
from app.webhooks.sender import USER_AGENT, SendResult, send_signed, signing_secrets

_SESSION_LIMIT = 128
_sessions: dict[str, GuardedSession] = {}  # digest of the stored mtls auth -> its session
_sessions_lock = threading.Lock()


def send_to_endpoint(webhook: Webhook, msg_id: str, body: bytes) -> SendResult:
    """One signed POST of ``body`` to the webhook with its headers and auth; never raises for
    HTTP or token trouble."""
    started = time.perf_counter()
    auth = webhook.auth or {}
    try:
        headers = {**plain_headers(webhook.headers), **_authorization(webhook, auth)}
    except client_credentials.TokenFailed as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return SendResult(False, None, elapsed, exc.message, final=exc.final)
    session = _mtls_session(auth) if auth.get("type") == "mtls" else None
    result = send_signed(
        webhook.url,
        signing_secrets(webhook),
        msg_id,
        body,
        webhook.timeout_ms,
        headers=headers,
        session=session,
    )
    if result.status_code == 401 and auth.get("type") == "oauth2_client_credentials":
        client_credentials.forget(webhook.id, auth)  # revoked early: fetch a fresh one next
    return result


def _authorization(webhook: Webhook, auth: dict[str, Any]) -> dict[str, str]:
    kind = auth.get("type")
    if kind == "basic":
        pair = f"{auth['username']}:{decrypt(auth['password'])}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if kind == "bearer":
        return {"Authorization": "Bearer " + decrypt(auth["token"])}
    if kind == "oauth2_client_credentials":
        token = client_credentials.access_token(webhook.id, auth, webhook.timeout_ms / 1000)
        return {"Authorization": "Bearer " + token}
    return {}


def _mtls_session(auth: dict[str, Any]) -> GuardedSession:
    digest = hashlib.sha256(jsoncodec.dumps(auth, sort_keys=True).encode()).hexdigest()
    with _sessions_lock:
        session = _sessions.get(digest)
        if session is None:
            if len(_sessions) >= _SESSION_LIMIT:
                for stale in _sessions.values():
                    stale.close()
                _sessions.clear()
            session = _sessions[digest] = make_session(
                allowed_networks(),
                pool_maxsize=8,
                user_agent=USER_AGENT,
                ssl_context=_client_context(auth),
            )
    return session


def _client_context(auth: dict[str, Any]) -> ssl.SSLContext:
    """A verifying TLS context presenting the client certificate (see the module doc)."""
    ca = auth.get("ca_certificate")
    context = (
        ssl.create_default_context(cadata=ca)
        if ca
        else ssl.create_default_context(cafile=certifi.where())
    )
    with _in_memory(auth["certificate"]) as cert, _in_memory(decrypt(auth["private_key"])) as key:
        context.load_cert_chain(cert, key)
    return context


@contextmanager
def _in_memory(text: str) -> Iterator[str]:
    """A path OpenSSL can read ``text`` from, gone when the block ends."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("switchboard-pem", 0)
        try:
            os.write(fd, text.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:  # mode 0600
        handle.write(text)
        handle.flush()
        yield handle.name

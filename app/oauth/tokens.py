"""OAuth2 token sets: stored encrypted, handed out fresh, refreshed once under a Redis lock.

``access_token(integration_id)`` is what every user of a connection calls (the gateway, the
``rest`` connector, any plugin through ``ConnectorContext.oauth_token``). A token expiring
within ``REFRESH_MARGIN`` — or one the API just rejected — is refreshed by exactly one caller:
the others wait on the integration's lock and then find the new token in the database. A
rotated refresh token is saved in the same compare-and-swap as the access token; a response
without one keeps the old one. ``invalid_grant`` (and other permanent refusals) set the
integration's status to ``error`` and emit ``oauth.refresh_failed``; transient failures are
retried a few times and then reported as retryable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from flask import Flask
from redis.exceptions import LockError

from app.connectors.configs import decrypt_config
from app.connectors.contract import TokenUnavailable, timeout_seconds
from app.events.catalog import emit_event
from app.metrics import instruments as metrics
from app.oauth.presets import effective_config
from app.outbound.oauth import GrantRefused, ProviderError, ProviderUnavailable, describe
from app.outbound.oauth import oauth_session as make_session
from app.store.db import database
from app.store.models import Integration, IntegrationLog, OAuthToken, utcnow
from app.store.redis import get_redis
from app.store.secretbox import decrypt, encrypt
from app.stream import kinds

log = logging.getLogger(__name__)

#: A token expiring within this is refreshed before use.
REFRESH_MARGIN = timedelta(seconds=60)
#: A refresh holds the integration's lock at most this long (a dead holder frees it then).
LOCK_TIMEOUT_SECONDS = 60
#: How long a caller waits for another caller's refresh before giving up (retryable).
LOCK_WAIT_SECONDS = 35
#: Transient refresh failures are retried after these pauses (seconds).
RETRY_PAUSES = (0.25, 1.0)
OAUTH_PROVIDER = "oauth2"
#: An ``expires_in`` beyond this is taken as this (a datetime cannot hold any number).
MAX_LIFETIME_SECONDS = 10 * 366 * 86400


@dataclass(frozen=True)
class TokenSet:
    """A decrypted token set (never logged, never answered)."""

    access_token: str
    refresh_token: str | None
    token_type: str
    scope: str | None
    expires_at: datetime | None
    version: int

    def expiring(self, margin: timedelta = REFRESH_MARGIN) -> bool:
        """True when the access token expires within ``margin``."""
        return self.expires_at is not None and self.expires_at - margin <= utcnow()


def _expires_at(token: dict[str, Any]) -> datetime | None:
    """When the provider says the access token expires (``expires_in``), if it does."""
    try:
        seconds = int(token["expires_in"])
    except (KeyError, TypeError, ValueError):
        return None
    return utcnow() + timedelta(seconds=min(max(0, seconds), MAX_LIFETIME_SECONDS))


def _scope(token: dict[str, Any]) -> str | None:
    scope = token.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    return str(scope)[:2000] if scope else None


def load(tenant_id: str, integration_id: str) -> TokenSet | None:
    """The integration's token set, decrypted, or None when it is not connected."""
    row = OAuthToken.get_of(tenant_id, OAuthToken.integration == integration_id)
    if row is None:
        return None
    return TokenSet(
        access_token=decrypt(row.access_token),
        refresh_token=decrypt(row.refresh_token) if row.refresh_token else None,
        token_type=row.token_type,
        scope=row.scope,
        expires_at=row.expires_at,
        version=row.version,
    )


def store_new(tenant_id: str, integration_id: str, token: dict[str, Any]) -> None:
    """Save the token set of a fresh connection (replacing any earlier one)."""
    fields = {
        "access_token": encrypt(str(token["access_token"])),
        "refresh_token": encrypt(str(token["refresh_token"]))
        if token.get("refresh_token")
        else None,
        "token_type": str(token.get("token_type") or "Bearer")[:40],
        "scope": _scope(token),
        "expires_at": _expires_at(token),
        "connected_at": utcnow(),
        "refreshed_at": None,
    }
    updated = (
        OAuthToken.update_of(tenant_id, **fields, version=OAuthToken.version + 1)
        .where(OAuthToken.integration == integration_id)
        .execute()
    )
    if not updated:
        OAuthToken.create(tenant_id=tenant_id, integration=integration_id, **fields)


def _store_refreshed(
    tenant_id: str, integration_id: str, seen: TokenSet, token: dict[str, Any]
) -> bool:
    """Compare-and-swap the refreshed set over ``seen``; keep the old refresh token if none came."""
    refresh_token = token.get("refresh_token") or seen.refresh_token
    updated = (
        OAuthToken.update_of(
            tenant_id,
            access_token=encrypt(str(token["access_token"])),
            refresh_token=encrypt(str(refresh_token)) if refresh_token else None,
            token_type=str(token.get("token_type") or seen.token_type)[:40],
            scope=_scope(token) or seen.scope,
            expires_at=_expires_at(token),
            refreshed_at=utcnow(),
            version=seen.version + 1,
        )
        .where((OAuthToken.integration == integration_id) & (OAuthToken.version == seen.version))
        .execute()
    )
    return bool(updated)


def delete(tenant_id: str, integration_id: str) -> bool:
    """Forget the integration's tokens; True if there were any."""
    query = OAuthToken.delete_of(tenant_id).where(OAuthToken.integration == integration_id)
    return bool(query.execute())


def _connection(tenant_id: str, integration_id: str) -> Integration:
    row = Integration.get_of(tenant_id, Integration.id == integration_id)
    if row is None or row.provider != OAUTH_PROVIDER:
        raise TokenUnavailable(f"integration {integration_id} is not an OAuth2 connection")
    return row


def _needs_refresh(tokens: TokenSet, rejected: str | None) -> bool:
    if rejected is not None:
        return tokens.access_token == rejected  # a newer token may already be stored
    return tokens.expiring()


def access_token(tenant_id: str, integration_id: str, rejected: str | None = None) -> str:
    """A valid access token of the tenant's connection, refreshed first when needed (see
    module doc); another tenant's integration is as unknown as a missing one."""
    if _connection(tenant_id, integration_id).status == "inactive":
        raise TokenUnavailable(f"integration {integration_id} is switched off (inactive)")
    tokens = load(tenant_id, integration_id)
    if tokens is None:
        raise TokenUnavailable(
            f"integration {integration_id} is not connected: "
            "POST /api/v1/integrations/{id}/oauth/authorize to connect it"
        )
    if not _needs_refresh(tokens, rejected):
        return tokens.access_token
    return _refresh_under_lock(tenant_id, integration_id, rejected)


def _refresh_under_lock(tenant_id: str, integration_id: str, rejected: str | None) -> str:
    try:
        lock = get_redis().lock(
            f"sb:oauth:refresh:{integration_id}",
            timeout=LOCK_TIMEOUT_SECONDS,
            blocking_timeout=LOCK_WAIT_SECONDS,
        )
        acquired = lock.acquire()
    except redis.RedisError as exc:
        raise TokenUnavailable(
            "the token store's lock (Redis) is unavailable", retryable=True
        ) from exc
    if not acquired:
        raise TokenUnavailable("another token refresh is taking too long", retryable=True)
    try:
        tokens = load(tenant_id, integration_id)  # the lock's previous holder may have refreshed
        if tokens is None:
            raise TokenUnavailable(f"integration {integration_id} was disconnected")
        if not _needs_refresh(tokens, rejected):
            return tokens.access_token
        return refresh(tenant_id, integration_id, tokens).access_token
    finally:
        try:
            lock.release()
        except (LockError, redis.RedisError):  # expired meanwhile: nothing left to release
            log.warning("refresh lock of %s expired before release", integration_id)


def refresh(tenant_id: str, integration_id: str, tokens: TokenSet) -> TokenSet:
    """Refresh now (the caller holds the lock); record the outcome; raise ``TokenUnavailable``."""
    integration = _connection(tenant_id, integration_id)
    if not tokens.refresh_token:
        raise TokenUnavailable(
            "the access token expired or was rejected and the provider gave no refresh token: "
            "reconnect the integration"
        )
    config = effective_config(decrypt_config(integration.config))
    started = time.perf_counter()
    try:
        answer = _request_refresh(config, tokens.refresh_token)
    except ProviderError as exc:
        _record_failure(integration, exc, started)
        raise TokenUnavailable(
            exc.message, retryable=isinstance(exc, ProviderUnavailable)
        ) from None
    if not _store_refreshed(tenant_id, integration_id, tokens, answer):
        current = load(tenant_id, integration_id)  # reconnected or revoked meanwhile: it wins
        if current is None:
            raise TokenUnavailable(f"integration {integration_id} was disconnected")
        return current
    IntegrationLog.create(
        tenant_id=tenant_id,
        integration_id=integration_id,
        event_type="oauth.refresh",
        event_data={"rotated_refresh_token": bool(answer.get("refresh_token"))},
        status="success",
        response_time_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    metrics.oauth_refresh(success=True)
    refreshed = load(tenant_id, integration_id)
    assert refreshed is not None
    return refreshed


def _request_refresh(config: dict[str, Any], refresh_token: str) -> dict[str, Any]:
    """One refresh request, retried after transient failures; raises ``ProviderError``."""
    last: ProviderError | None = None
    for pause in (0.0, *RETRY_PAUSES):
        time.sleep(pause)
        session = make_session(
            client_id=config["client_id"],
            client_secret=config.get("client_secret"),
            timeout=timeout_seconds(config),
            auth_method=config["token_endpoint_auth_method"],
        )
        try:
            with session:
                answer = dict(
                    session.refresh_token(config["token_url"], refresh_token=refresh_token)
                )
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised if unknown
            last = describe(exc, "token refresh")
            if isinstance(last, GrantRefused):
                raise last from None
            continue
        if not answer.get("access_token"):
            raise GrantRefused("token refresh: the provider's answer has no access_token")
        return answer
    assert last is not None
    raise last


def _record_failure(integration: Integration, exc: ProviderError, started: float) -> None:
    """Log a failed refresh; a permanent one also sets status ``error`` and emits an event."""
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    permanent = isinstance(exc, GrantRefused)
    metrics.oauth_refresh(success=False)
    with database.atomic():
        IntegrationLog.create(
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            event_type="oauth.refresh",
            event_data={"error": exc.error},
            status="error",
            error_message=exc.message,
            response_time_ms=elapsed,
        )
        if permanent:
            Integration.update_of(integration.tenant_id, status="error", updated_at=utcnow()).where(
                Integration.id == integration.id
            ).execute()
            kinds.integration_status_changed(
                integration.tenant_id, integration.id, integration.status, "error"
            )
            emit_event(
                "oauth.refresh_failed",
                {
                    "integration_id": integration.id,
                    "error": exc.error,
                    "message": exc.message + "; reconnect the integration",
                },
                tenant_id=integration.tenant_id,
            )
    log.warning("token refresh of %s failed: %s", integration.id, exc.message)


def refresh_due(horizon: timedelta) -> int:
    """Refresh every connected token set expiring within ``horizon``; return how many were due.

    Operator-wide on purpose: the workers refresh every tenant's tokens, each in its tenant.
    """
    cutoff = utcnow() + horizon
    due = [
        (row.tenant_id, row.integration_id)
        for row in OAuthToken.select(OAuthToken.tenant_id, OAuthToken.integration)
        .join(Integration)
        .where(
            OAuthToken.expires_at.is_null(False)
            & (OAuthToken.expires_at <= cutoff)
            & OAuthToken.refresh_token.is_null(False)
            & (Integration.status == "active")  # not switched off, not refused for good
        )
    ]
    for tenant_id, integration_id in due:
        tokens = load(tenant_id, integration_id)
        if tokens is None or not tokens.expiring(horizon):
            continue
        try:
            # "rejected" = the set seen here: refreshed unless another process just did it
            _refresh_under_lock(tenant_id, integration_id, rejected=tokens.access_token)
        except TokenUnavailable as exc:
            log.warning("scheduled refresh of %s failed: %s", integration_id, exc.message)
    return len(due)


def init_app(app: Flask) -> None:
    """Offer :func:`access_token` to connectors (``ConnectorContext.tokens``)."""
    app.extensions["oauth_tokens"] = access_token

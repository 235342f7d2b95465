"""Console sessions: single-use portal links, the cookies they become, console sign-ins.

A portal link carries a random token; only its SHA-256 digest is stored. Redeeming it (once,
within :data:`LINK_TTL`) issues a second random token, the cookie, also stored as a digest.
The CSRF token of a session is derived from its cookie, so a page can embed it while a
cross-site form, which cannot read the cookie, cannot forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from app.auth.access import bump_auth_epoch
from app.store.db import database
from app.store.models import ApiKey, ConsoleSession, utcnow

#: How long a portal link may wait before it is redeemed.
LINK_TTL = timedelta(minutes=5)


def digest(token: str) -> str:
    """The stored form of a link or cookie token."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(cookie: str) -> str:
    """The CSRF token that forms of the session holding ``cookie`` must send back."""
    return hashlib.sha256(b"csrf:" + cookie.encode()).hexdigest()[:40]


def csrf_matches(cookie: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(cookie), sent or "")


def open_portal_session(
    tenant_id: str,
    *,
    read_only: bool,
    expires_in: int,
    return_url: str | None,
    theme: dict[str, Any] | None,
    created_by_key: str,
) -> tuple[ConsoleSession, str]:
    """A new portal session and the token of its single-use link (call in a transaction)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = ConsoleSession.create(
        tenant_id=tenant_id,
        kind="portal",
        created_by_key=created_by_key,
        read_only=read_only,
        link_digest=digest(token),
        link_expires_at=now + LINK_TTL,
        expires_at=now + timedelta(seconds=expires_in),
        return_url=return_url,
        theme=theme or None,
    )
    return row, token


def open_console_session(tenant_id: str, user_id: str, lifetime: timedelta) -> tuple[Any, str]:
    """A signed-in user's console session and its cookie token."""
    cookie = secrets.token_urlsafe(32)
    row = ConsoleSession.create(
        tenant_id=tenant_id,
        kind="console",
        user_id=user_id,
        cookie_digest=digest(cookie),
        expires_at=utcnow() + lifetime,
    )
    return row, cookie


class LinkRefused(Exception):
    """A portal link that cannot be redeemed; the message says why, in plain words."""


def redeem_link(token: str) -> tuple[ConsoleSession, str]:
    """Exchange a portal link's token for its session and a new cookie token, once."""
    now = utcnow()
    with database.atomic():
        # Unscoped by necessity: the presented link is what names the tenant.
        row = ConsoleSession.get_or_none(
            (ConsoleSession.link_digest == digest(token)) & (ConsoleSession.kind == "portal")
        )
        if row is None:
            raise LinkRefused("This link is not valid. Ask for a new one.")
        if row.redeemed_at is not None:
            raise LinkRefused("This link was already used. Each link opens the portal once.")
        if row.revoked_at is not None or row.expires_at <= now:
            raise LinkRefused("This portal session has ended. Ask for a new link.")
        if row.link_expires_at is None or row.link_expires_at <= now:
            raise LinkRefused("This link has expired: it had to be opened within 5 minutes.")
        cookie = secrets.token_urlsafe(32)
        claimed = (
            ConsoleSession.update_of(row.tenant_id, redeemed_at=now, cookie_digest=digest(cookie))
            .where((ConsoleSession.id == row.id) & ConsoleSession.redeemed_at.is_null())
            .execute()
        )
        if not claimed:
            raise LinkRefused("This link was already used. Each link opens the portal once.")
    return row, cookie


def session_for_cookie(cookie: str | None, kind: str) -> ConsoleSession | None:
    """The live session of ``kind`` a cookie token belongs to, or None."""
    if not cookie:
        return None
    # Unscoped by necessity: the presented cookie is what names the tenant.
    row = ConsoleSession.get_or_none(
        (ConsoleSession.cookie_digest == digest(cookie)) & (ConsoleSession.kind == kind)
    )
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    return row


def end_session(row: ConsoleSession, now: datetime | None = None) -> None:
    """Revoke a session (its cookie stops working at once)."""
    ConsoleSession.update_of(row.tenant_id, revoked_at=now or utcnow()).where(
        ConsoleSession.id == row.id
    ).execute()


def revoke_key(row: ApiKey) -> None:
    """Revoke a key at once in every process (an SSO session key the console traded in)."""
    ApiKey.update_of(row.tenant_id, revoked_at=utcnow()).where(ApiKey.id == row.id).execute()
    bump_auth_epoch(required=True)

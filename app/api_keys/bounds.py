"""A key never exceeds the key that creates it: scopes, address list, rate limit, expiry."""

from __future__ import annotations

import ipaddress
from typing import Any

from app.store.models import ApiKey
from app.web.problems import Problem

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: list[str]) -> list[_Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def _within(child: list[str], parent: list[str]) -> list[str]:
    """The entries of ``child`` that no network of ``parent`` contains."""
    outer = _networks(parent)
    return [
        cidr
        for cidr, net in zip(child, _networks(child), strict=True)
        if not any(net.version == o.version and net.subnet_of(o) for o in outer)  # type: ignore[arg-type]
    ]


def bound_child(
    data: dict[str, Any], creator: ApiKey, explicit: set[str], *, admin: bool
) -> dict[str, Any]:
    """``data`` for a key created by ``creator``, with unset limits inherited from it.

    Fields the caller set (``explicit``) must stay within the creator's: ``allowed_ips`` inside
    its networks, ``rate_limit`` no higher (admins excepted: capacity is theirs to grant),
    ``expires_at`` no later; otherwise 422 naming the field. Unset fields take the creator's
    value where it is the stricter one. A session key (``sb_sess_``) passes on its expiry
    only as the default: a key that outlives the session is asked for with an explicit
    ``expires_at`` (a later date, or null for never) — see :func:`outlives_session`.
    """
    data = dict(data)
    errors: dict[str, list[str]] = {}
    if creator.allowed_ips:
        if "allowed_ips" not in explicit or not data["allowed_ips"]:
            data["allowed_ips"] = list(creator.allowed_ips)
        elif outside := _within(data["allowed_ips"], creator.allowed_ips):
            errors["allowed_ips"] = [
                "outside the creating key's allowed_ips: " + ", ".join(outside)
            ]
    if data["rate_limit"] > creator.rate_limit and not admin:
        if "rate_limit" in explicit:
            errors["rate_limit"] = [f"exceeds the creating key's rate_limit ({creator.rate_limit})"]
        else:
            data["rate_limit"] = creator.rate_limit
    # A login session's expiry ends the session, not the user's authority: a child may outlive
    # it when asked to explicitly, but never by default.
    if is_session(creator) and "expires_at" not in explicit:
        data["expires_at"] = creator.expires_at
    elif creator.expires_at is not None and not is_session(creator):
        if data["expires_at"] is None:
            data["expires_at"] = creator.expires_at
        elif data["expires_at"] > creator.expires_at:
            errors["expires_at"] = [
                "later than the creating key's expiry (" + creator.expires_at.isoformat() + "Z)"
            ]
    if errors:
        raise Problem(
            422,
            "A key cannot exceed the key that creates it: " + ", ".join(sorted(errors)) + ".",
            errors={"json": errors},
        )
    return data


def is_session(key: ApiKey) -> bool:
    """True for a login session's key (``/auth/login``, SSO)."""
    return bool(key.key_prefix.startswith("sb_sess_"))


def outlives_session(data: dict[str, Any], creator: ApiKey) -> bool:
    """True when a key made by the session key ``creator`` expires after it (or never)."""
    if not is_session(creator) or creator.expires_at is None:
        return False
    return data["expires_at"] is None or data["expires_at"] > creator.expires_at

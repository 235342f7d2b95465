"""A webhook's extra request headers and endpoint authentication: checked, stored, shown.

``headers`` is a list of ``{"name", "value", "secret"}``; ``auth`` one of

- ``{"type": "basic", "username", "password"}``
- ``{"type": "bearer", "token"}``
- ``{"type": "oauth2_client_credentials", "token_url", "client_id", "client_secret",
  "scope"?, "audience"?, "token_auth_method"?}`` (``client_secret_basic`` or ``_post``)
- ``{"type": "mtls", "certificate", "private_key", "ca_certificate"?}`` (PEM; https only)

Secrets — secret header values, ``password``, ``token``, ``client_secret``, ``private_key`` —
are stored encrypted (``app.store.secretbox``) and shown as ``********``. As with connector
configs, an update that omits a secret (or sends ``********``) keeps the stored one, unless it
would send that secret somewhere new: after the ``url`` changes, secrets that travel to the
endpoint (secret header values, the password, the token, the client secret whose tokens it
gets) must be sent again, and so must the client secret after its ``token_url`` changes. The
mTLS key never leaves Switchboard, so it is kept.

Header names are HTTP tokens; ``webhook-*`` (the signature's), ``Host``, ``Content-Length``,
``Content-Type``, ``Content-Encoding``, ``User-Agent`` and hop-by-hop headers are refused, and so is
``Authorization`` when ``auth`` sets it. :class:`CredentialsInvalid` names each bad field
(``headers.1.name``, ``auth.client_secret``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from app.outbound.guard import UnsafeURL
from app.outbound.session import check_outbound_url, unsafe_url_reason
from app.store.secretbox import decrypt, encrypt

REDACTED = "********"
MAX_HEADERS = 20
MAX_HEADER_VALUE = 4096
MAX_PEM = 64 * 1024
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")  # visible ASCII, spaces and tabs
REFUSED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "user-agent",
    }
)
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
#: Fields of each auth type: (required, optional, secret).
AUTH_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "basic": (("username", "password"), (), ("password",)),
    "bearer": (("token",), (), ("token",)),
    "oauth2_client_credentials": (
        ("token_url", "client_id", "client_secret"),
        ("scope", "audience", "token_auth_method"),
        ("client_secret",),
    ),
    "mtls": (("certificate", "private_key"), ("ca_certificate",), ("private_key",)),
}
AUTH_TYPES = tuple(AUTH_FIELDS)
AUTH_FIELDS_ALL = frozenset({"type"} | {f for r, o, _ in AUTH_FIELDS.values() for f in r + o})
#: Auth secrets that reach the endpoint (directly, or as the token they obtain).
_SENT_TO_URL = frozenset({"password", "token", "client_secret"})


class CredentialsInvalid(ValueError):
    """Headers or auth that cannot be stored; ``errors`` maps each field to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def prepare(
    data: dict[str, Any],
    stored_url: str | None,
    stored_auth: dict[str, Any] | None,
    stored_headers: list[dict[str, Any]] | None,
) -> None:
    """Turn ``headers`` and ``auth`` of a webhook's create or update ``data`` into their
    stored form, kept secrets carried over from the stored ones. A changed ``url`` re-checks
    both even when ``data`` leaves them out: what they would send there must come again.
    Raises :class:`CredentialsInvalid` with every bad field of both."""
    url_changed = stored_url is not None and data.get("url", stored_url) != stored_url
    url = data.get("url") or stored_url or ""
    errors: dict[str, list[str]] = {}
    if "auth" in data or url_changed:
        given = data.get("auth", _as_given(shown_auth(stored_auth)))
        try:
            data["auth"] = store_auth(given, stored_auth, url=url, url_changed=url_changed)
        except CredentialsInvalid as exc:
            errors.update(exc.errors)
    has_auth = bool(data["auth"] if "auth" in data else stored_auth)
    headers = data.get("headers", shown_headers(stored_headers))
    if "headers" in data or url_changed or ("auth" in data and has_auth):
        try:
            stored = store_headers(
                headers, stored_headers, has_auth=has_auth, url_changed=url_changed
            )
        except CredentialsInvalid as exc:
            errors.update(exc.errors)
        else:
            if "headers" in data or url_changed:
                data["headers"] = stored
    if errors:
        raise CredentialsInvalid(errors)


def _as_given(shown: dict[str, Any] | None) -> dict[str, Any] | None:
    """Stored auth as if sent back unchanged (fields only shown, not stored, left out)."""
    return None if shown is None else {k: v for k, v in shown.items() if k in AUTH_FIELDS_ALL}


def _kept(value: Any) -> bool:
    """An update that leaves a secret as it is: omitted, or the redaction marker sent back."""
    return value is None or value == REDACTED


def store_headers(
    given: list[dict[str, Any]] | None,
    stored: list[dict[str, Any]] | None,
    *,
    has_auth: bool,
    url_changed: bool,
) -> list[dict[str, Any]] | None:
    """The headers to store for ``given`` (secret values encrypted, kept ones carried over
    from ``stored``); None for none. Raises :class:`CredentialsInvalid`."""
    if not given:
        return None
    errors: dict[str, list[str]] = {}
    previous = {h["name"].lower(): h for h in stored or () if h.get("secret")}
    seen: set[str] = set()
    result = []
    if len(given) > MAX_HEADERS:
        raise CredentialsInvalid({"headers": [f"must hold at most {MAX_HEADERS} headers"]})
    for index, header in enumerate(given):
        name, value, secret = header["name"], header.get("value"), bool(header.get("secret"))
        where = f"headers.{index}"
        lower = name.lower()
        if not HEADER_NAME.match(name):
            errors[f"{where}.name"] = ["must be an HTTP header name (letters, digits, -, …)"]
        elif lower.startswith("webhook-") or lower in REFUSED_HEADERS:
            errors[f"{where}.name"] = ["is set by Switchboard and cannot be added"]
        elif lower == "authorization" and has_auth:
            errors[f"{where}.name"] = ["is set by `auth`: remove one of them"]
        elif lower in seen:
            errors[f"{where}.name"] = ["appears twice (names are case-insensitive)"]
        seen.add(lower)
        if secret and _kept(value):
            if lower not in previous:
                errors[f"{where}.value"] = ["is required"]
            elif url_changed:
                errors[f"{where}.value"] = ["must be sent again: the url changed"]
            else:
                result.append({"name": name, "value": previous[lower]["value"], "secret": True})
            continue
        if not isinstance(value, str):
            errors[f"{where}.value"] = ["is required"]
        elif len(value) > MAX_HEADER_VALUE or not HEADER_VALUE.match(value):
            errors[f"{where}.value"] = [
                f"must be at most {MAX_HEADER_VALUE} visible ASCII characters (no line breaks)"
            ]
        else:
            result.append(
                {"name": name, "value": encrypt(value) if secret else value, "secret": secret}
            )
    if errors:
        raise CredentialsInvalid(errors)
    return result


def store_auth(
    given: dict[str, Any] | None,
    stored: dict[str, Any] | None,
    *,
    url: str,
    url_changed: bool,
) -> dict[str, Any] | None:
    """The auth to store for ``given`` (secrets encrypted, kept ones carried over from
    ``stored`` of the same type); None for none. Raises :class:`CredentialsInvalid`."""
    if given is None:
        return None
    kind = given.get("type")
    if kind not in AUTH_FIELDS:
        raise CredentialsInvalid({"auth.type": [f"must be one of: {', '.join(AUTH_TYPES)}"]})
    required, optional, secrets = AUTH_FIELDS[kind]
    errors: dict[str, list[str]] = {}
    for name in given:
        if name != "type" and name not in required + optional:
            errors[f"auth.{name}"] = [f"is not a field of {kind} auth"]
    same_kind = stored if stored is not None and stored.get("type") == kind else {}
    moved = url_changed or (
        kind == "oauth2_client_credentials" and given.get("token_url") != same_kind.get("token_url")
    )
    result: dict[str, Any] = {"type": kind}
    for name in required + optional:
        value = given.get(name)
        if name in secrets and _kept(value):
            if name not in same_kind:
                errors[f"auth.{name}"] = ["is required"]
            elif moved and name in _SENT_TO_URL:
                errors[f"auth.{name}"] = ["must be sent again: where it is sent changed"]
            else:
                result[name] = same_kind[name]
            continue
        if value is None or value == "":
            if name in required:
                errors[f"auth.{name}"] = ["is required"]
            continue
        if not isinstance(value, str):
            errors[f"auth.{name}"] = ["must be a string"]
            continue
        result[name] = encrypt(value) if name in secrets else value
    if not errors:
        errors.update(_check_auth(kind, given, result, url))
    if errors:
        raise CredentialsInvalid(errors)
    return result


def _check_auth(
    kind: str, given: dict[str, Any], stored: dict[str, Any], url: str
) -> dict[str, list[str]]:
    """Type-specific checks of a complete ``auth`` (``stored``: secrets already encrypted)."""
    if kind == "basic" and (
        ":" in stored["username"] or not HEADER_VALUE.match(stored["username"])
    ):
        return {"auth.username": ["must be visible ASCII without a colon"]}
    if kind == "bearer" and not HEADER_VALUE.match(given.get("token") or "x"):
        return {"auth.token": ["must be visible ASCII"]}
    if kind == "oauth2_client_credentials":
        if stored.get("token_auth_method", TOKEN_AUTH_METHODS[0]) not in TOKEN_AUTH_METHODS:
            return {"auth.token_auth_method": [f"must be one of: {', '.join(TOKEN_AUTH_METHODS)}"]}
        try:
            check_outbound_url(stored["token_url"])
        except UnsafeURL as exc:
            return {"auth.token_url": [unsafe_url_reason(exc)]}
    if kind == "mtls":
        if not url.lower().startswith("https://"):
            return {"auth.type": ["mtls needs an https url"]}
        return _check_pem(stored)
    return {}


def _check_pem(stored: dict[str, Any]) -> dict[str, list[str]]:
    """The certificate, key and CA parse, and the key is the certificate's."""
    if any(len(stored.get(n) or "") > MAX_PEM for n in ("certificate", "ca_certificate")):
        return {"auth": [f"PEM fields must be at most {MAX_PEM // 1024} KiB"]}
    try:
        certificate = x509.load_pem_x509_certificate(stored["certificate"].encode())
    except ValueError:
        return {"auth.certificate": ["must be a PEM certificate"]}
    try:
        key = serialization.load_pem_private_key(decrypt(stored["private_key"]).encode(), None)
    except (ValueError, TypeError):
        return {"auth.private_key": ["must be an unencrypted PEM private key"]}
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        return {"auth.private_key": ["is not the key of the certificate"]}
    if stored.get("ca_certificate"):
        try:
            x509.load_pem_x509_certificates(stored["ca_certificate"].encode())
        except ValueError:
            return {"auth.ca_certificate": ["must be PEM certificates"]}
    return {}


def shown_headers(stored: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Headers as the API shows them: secret values redacted."""
    if stored is None:
        return None
    return [{**h, "value": REDACTED} if h.get("secret") else dict(h) for h in stored]


def shown_auth(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Auth as the API shows it: secrets redacted; for mTLS, when the certificate expires."""
    if stored is None:
        return None
    secrets = AUTH_FIELDS[stored["type"]][2]
    shown = {name: REDACTED if name in secrets else value for name, value in stored.items()}
    if stored["type"] == "mtls":
        certificate = x509.load_pem_x509_certificate(stored["certificate"].encode())
        shown["certificate_expires_at"] = _utc(certificate.not_valid_after_utc)
    return shown


def _utc(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat() + "Z"


def plain_headers(stored: list[dict[str, Any]] | None) -> dict[str, str]:
    """The extra headers to send, decrypted."""
    return {h["name"]: decrypt(h["value"]) if h.get("secret") else h["value"] for h in stored or ()}

"""Input constraints defined once: each pattern below is both what the server enforces and what
the OpenAPI document publishes, so the spec tells clients exactly what is accepted.

- a ``Dict`` field's keys are described by ``propertyNames`` (:func:`dict_key_constraints`);
- a schema's ``JSON_SCHEMA_EXTRA`` (relations between its fields, e.g. ``if``/``then``) is
  published with it (``app.web.api.SchemaExtrasPlugin``); the server checks the same rule;
- every string anywhere (body, query, path) is free of NUL (``app.web.hygiene`` refuses it):
  :func:`nul_free_strings` adds :data:`NUL_FREE` to each string field that has no pattern;
- :class:`HttpUrl`: an ``http(s)`` URL with a host name, IPv4 or [IPv6] address, an optional
  port and anything printable after it;
- :class:`IpNetwork`: an IPv4 or IPv6 address, or a CIDR network of either.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import marshmallow as ma

NUL_FREE = "^[^\\u0000]*$"

_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_PORT = "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"

_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = (
    "(?:"
    rf"(?:{_H}:){{7}}{_H}"
    rf"|(?:{_H}:){{1,7}}:"
    rf"|(?:{_H}:){{1,6}}:{_H}"
    rf"|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}"
    rf"|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}"
    rf"|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}"
    rf"|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}"
    rf"|:(?:(?::{_H}){{1,7}}|:)"
    rf"|(?:{_H}:){{6}}{_IPV4}"
    rf"|::(?:[Ff]{{4}}(?::0{{1,4}})?:)?{_IPV4}"
    ")"
)
HTTP_URL = rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*|\[{_IPV6}\])(?::{_PORT})?(?:[/?#][!-~]*)?$"
IP_NETWORK = (
    rf"^(?:{_IPV4}(?:/(?:3[0-2]|[12]?[0-9]))?"
    rf"|{_IPV6}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
)


def nul_free_strings(converter: Any, field: ma.fields.Field, ret: dict[str, Any]) -> dict[str, Any]:
    """apispec attribute function: a string field without a pattern of its own gets
    :data:`NUL_FREE` (every pattern of ours already leaves NUL out)."""
    if ret.get("type") == "string" and "pattern" not in ret and "enum" not in ret:
        if "format" not in ret:
            return {"pattern": NUL_FREE}
    return {}


def dict_key_constraints(
    converter: Any, field: ma.fields.Field, ret: dict[str, Any]
) -> dict[str, Any]:
    """apispec attribute function: a ``Dict`` field's ``keys`` field becomes ``propertyNames``."""
    if not isinstance(field, ma.fields.Dict) or field.key_field is None:
        return {}
    names = converter.field2property(field.key_field)
    return {"propertyNames": names} if names else {}


class HttpUrl(ma.fields.String):
    """An ``http(s)`` URL (:data:`HTTP_URL`) of at most 2000 characters."""

    def __init__(self, **kwargs: Any) -> None:
        validators = [
            ma.validate.Length(max=2000),
            ma.validate.Regexp(HTTP_URL, error="Not a valid http(s) URL."),
        ]
        super().__init__(validate=validators, **kwargs)


def _parses_as_network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ma.ValidationError(f"{value!r} is not an IP address or CIDR network.") from exc


class IpNetwork(ma.fields.String):
    """An IP address or CIDR network (:data:`IP_NETWORK`)."""

    def __init__(self, **kwargs: Any) -> None:
        validators: list[Any] = [
            ma.validate.Regexp(IP_NETWORK, error="{input} is not an IP address or CIDR network."),
            _parses_as_network,
        ]
        super().__init__(validate=validators, **kwargs)

"""Masking credentials in logged gateway bodies (``log_bodies``), structurally where possible.

A body that parses as JSON is walked: the value of every key whose name says "secret"
(:func:`secret_name`: ``password``, ``pwd``, ``private_key``, ``Authorization``…, any case, any
separator, at any depth) is replaced whole, and a string that itself holds JSON (escaped JSON
inside a string) is walked the same way. Anything else — a body cut at the logged 4 KiB, a
form, XML, raw header lines — is masked by patterns over the same names: ``name: value`` lines
to their end (``Authorization: Bearer X`` loses all of ``Bearer X``), ``name=value`` pairs,
``"name": "value"`` pairs (escaped quotes too), XML elements and attributes; and any
``Bearer``/``Basic`` credential wherever it appears.
"""

from __future__ import annotations

import json
import re
from typing import Any

MASK = "[redacted]"
_SECRET_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "signingkey",
    "authorization",
    "credential",
    "cookie",
    "signature",
    "sessionid",
    "bearer",
)
_SECRET_NAMES = frozenset({"pwd", "pass", "pin", "auth", "key", "session", "otp", "cvv", "cvc"})
_NAME = r"[A-Za-z0-9_.\-]*"


def secret_name(name: str) -> bool:
    """True when a field or header called ``name`` holds a credential."""
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    return folded in _SECRET_NAMES or any(part in folded for part in _SECRET_PARTS)


def redact_text(text: str) -> str:
    """``text`` (a logged body) with every credential masked."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return _redact_patterns(text)
    if isinstance(parsed, dict | list):
        return json.dumps(_redact_value(parsed), ensure_ascii=False)
    return _redact_patterns(text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: MASK if secret_name(str(key)) else _redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, str):
        return redact_text(value) if value.strip()[:1] in ("{", "[") else _redact_patterns(value)
    return value


# Each pattern finds a name and where its value starts; a secret name's value (matched from
# there by the second regex) is masked. Values of other names are not consumed, so a secret
# nested inside one (escaped JSON in a string) is still found.
_HEADS = (
    # "name": value, \"name\": value (escaped JSON inside a string)
    re.compile(r'(?P<q>\\*")(?P<name>' + _NAME + r")(?P=q)\s*:\s*"),
    # <name>value</name>, <ns:name attr="x">value</ns:name>
    re.compile(r"<(?:[A-Za-z0-9_\-]+:)?(?P<name>" + _NAME + r")(?:\s[^>]*)?(?<!/)>"),
    # name="value", name='value' (XML attributes)
    re.compile(r"\b(?P<name>" + _NAME + r")\s*=\s*(?=[\"'])"),
    # name=value (forms, query strings)
    re.compile(r"\b(?P<name>" + _NAME + r")=(?=[^\"'])"),
    # Name: value (header lines): the whole value, to the end of the line
    re.compile(r"(?im)^[ \t]*(?P<name>" + _NAME + r")[ \t]*:[ \t]*"),
)
_VALUES = (
    None,  # depends on the quote found: see _value_after
    re.compile(r"[^<]*"),
    re.compile(r"\"[^\"]*\"|'[^']*'"),
    re.compile(r"[^&\s\"'<>]*"),
    re.compile(r"[^\r\n]*"),
)
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/=]{6,}")


def _value_after(head: re.Match[str], index: int, text: str) -> tuple[int, int, str] | None:
    """The span of the value after ``head`` and what replaces it."""
    quote = head.groupdict().get("q")
    if quote is not None:
        q = re.escape(quote)
        value = re.compile(q + r'(?:\\.|[^"\\])*?' + q + r'|[^,}\]\s"\\]+').match(text, head.end())
        if value is None:
            return None
        quoted = value.group(0).startswith(quote)
        return value.start(), value.end(), (quote + MASK + quote) if quoted else MASK
    pattern = _VALUES[index]
    assert pattern is not None
    value = pattern.match(text, head.end())
    if value is None:
        return None
    first = value.group(0)[:1]
    return value.start(), value.end(), (first + MASK + first) if first in "\"'" else MASK


def _redact_patterns(text: str) -> str:
    for index, head_pattern in enumerate(_HEADS):
        pieces, cursor = [], 0
        for head in head_pattern.finditer(text):
            if head.start() < cursor or not secret_name(head.group("name")):
                continue
            found = _value_after(head, index, text)
            if found is None:
                continue
            start, end, replacement = found
            pieces += [text[cursor:start], replacement]
            cursor = end
        text = "".join(pieces) + text[cursor:]
    return _SCHEME_CREDENTIAL.sub(lambda m: m.group(1) + " " + MASK, text)

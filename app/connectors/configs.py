"""Connector configs at rest: ``writeOnly`` fields encrypted, redacted in every answer.

A secret is stored as ``{"$encrypted": "<fernet token>"}``. Redaction and decryption look for
that marker rather than at the connector's schema, so secrets stay hidden even if a plugin is
uninstalled or its schema changes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from app.connectors.contract import ANY, Connector, replace_secrets, secret_paths
from app.store.secretbox import decrypt, encrypt

REDACTED = "********"
MARKER = "$encrypted"


def _is_encrypted(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {MARKER}


def _map_encrypted(value: Any, fn: Any) -> Any:
    if _is_encrypted(value):
        return fn(value[MARKER])
    if isinstance(value, dict):
        return {k: _map_encrypted(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_encrypted(v, fn) for v in value]
    return value


def api_config_errors(errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """``config_errors`` keys as the API answers them: ``config.<path>``; the root is ``config``."""
    return {f"config.{path}" if path != "_schema" else "config": m for path, m in errors.items()}


def encrypt_config(connector: Connector, config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every secret field encrypted for storage."""

    def seal(value: Any) -> dict[str, str]:
        return {MARKER: encrypt(json.dumps(value))}

    result: dict[str, Any] = replace_secrets(connector.config_schema, config, seal)
    return result


def decrypt_config(stored: dict[str, Any]) -> dict[str, Any]:
    """The plaintext config a connector runs with."""
    result: dict[str, Any] = _map_encrypted(stored, lambda token: json.loads(decrypt(token)))
    return result


def redact_config(stored: dict[str, Any]) -> dict[str, Any]:
    """The config as the API shows it: every secret is ``********``."""
    result: dict[str, Any] = _map_encrypted(stored, lambda _token: REDACTED)
    return result


def keep_omitted_secrets(
    connector: Connector, incoming: dict[str, Any], current: dict[str, Any]
) -> dict[str, Any]:
    """Fill secrets that ``incoming`` omits or sends as ``********`` from plaintext ``current``."""
    merged = copy.deepcopy(incoming)
    for path in secret_paths(connector.config_schema):
        if path:
            _keep(merged, current, path)
    return merged


def _keep(target: Any, source: Any, path: tuple[str | int, ...]) -> None:
    head, rest = path[0], path[1:]
    if isinstance(target, dict) and isinstance(source, dict):
        keys = [k for k in source if head == ANY or k == head]
    elif isinstance(target, list) and isinstance(source, list):
        indexes = range(min(len(target), len(source)))
        keys = [i for i in indexes if head == ANY or i == head]
    else:
        return
    for key in keys:
        if rest:
            if isinstance(target, dict) and key not in target:
                continue
            _keep(target[key], source[key], rest)
        elif isinstance(target, dict) and (key not in target or target[key] == REDACTED):
            target[key] = source[key]
        elif isinstance(target, list) and target[key] == REDACTED:
            target[key] = source[key]

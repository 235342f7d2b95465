"""Validating integrations against their connector before anything is written."""

from __future__ import annotations

from typing import Any

from app.connectors import Connector, config_errors
from app.events import event_catalog, is_valid_pattern
from app.integrations.configs import decrypt_config, encrypt_config, keep_omitted_secrets
from app.models import Integration
from app.plugins_ext import require_connector
from app.problems import Problem


def _reject(errors: dict[str, list[str]], detail: str) -> Problem:
    return Problem(422, detail, errors=errors)


def _check_type(connector: Connector, integration_type: str) -> None:
    if integration_type != connector.type:
        raise _reject(
            {"type": [f"connector {connector.name!r} is of type {connector.type!r}"]},
            f"`type` must be {connector.type!r} for provider {connector.name!r}.",
        )


def _check_config(connector: Connector, config: dict[str, Any]) -> None:
    errors = config_errors(connector.config_schema, config)
    if errors:
        raise _reject(
            {
                f"config.{path}" if path != "_schema" else "config": msgs
                for path, msgs in errors.items()
            },
            f"`config` does not match the {connector.name!r} connector's schema; see errors.",
        )


def _check_subscriptions(connector: Connector, subscriptions: list[dict[str, Any]]) -> None:
    errors: dict[str, list[str]] = {}
    catalog = event_catalog()
    for index, sub in enumerate(subscriptions):
        if sub["action"] not in connector.actions:
            known = ", ".join(sorted(connector.actions)) or "none"
            errors[f"subscriptions.{index}.action"] = [
                f"connector {connector.name!r} has no action {sub['action']!r} (has: {known})"
            ]
        unknown = [p for p in sub["events"] if not is_valid_pattern(p, catalog)]
        if unknown:
            errors[f"subscriptions.{index}.events"] = ["unknown event types: " + ", ".join(unknown)]
    if errors:
        raise _reject(errors, "Invalid `subscriptions`; see errors.")


def prepare_create(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a new integration; return the fields to store (secrets encrypted)."""
    connector = require_connector(data["provider"])
    _check_type(connector, data["type"])
    _check_config(connector, data["config"])
    _check_subscriptions(connector, data["subscriptions"])
    return {**data, "config": encrypt_config(connector, data["config"])}


def prepare_update(row: Integration, data: dict[str, Any]) -> dict[str, Any]:
    """Validate a partial update; omitted or ``********`` secrets keep their stored values."""
    connector = require_connector(data.get("provider", row.provider))
    if "type" in data or "provider" in data:
        _check_type(connector, data.get("type", row.type))
    changes = dict(data)
    if "config" in data or "provider" in data:
        current = decrypt_config(row.config)
        config = (
            keep_omitted_secrets(connector, data["config"], current)
            if "config" in data
            else current
        )
        _check_config(connector, config)
        changes["config"] = encrypt_config(connector, config)
    if "subscriptions" in data or "provider" in data:
        _check_subscriptions(connector, data.get("subscriptions", row.subscriptions))
    return changes

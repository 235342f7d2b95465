"""Validating integrations against their connector before anything is written."""

from __future__ import annotations

from typing import Any

import peewee

from app.connectors.configs import (
    REDACTED,
    api_config_errors,
    decrypt_config,
    encrypt_config,
    keep_omitted_secrets,
)
from app.connectors.contract import Connector, config_errors, url_paths, values_at
from app.connectors.extension import require_connector
from app.events.catalog import event_catalog, is_valid_pattern
from app.events.filters import FilterInvalid, compile_filter
from app.oauth.sso import SSO_PROVIDER
from app.outbound.guard import UnsafeURL
from app.outbound.session import check_outbound_url, unsafe_url_reason
from app.store.models import Integration, SsoDomain
from app.web.problems import Problem


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
            api_config_errors(errors),
            f"`config` does not match the {connector.name!r} connector's schema; see errors.",
        )


def _check_urls(connector: Connector, config: dict[str, Any]) -> None:
    """Every destination (``"format": "uri"`` field) passes the SSRF guard, as webhook URLs do."""
    errors: dict[str, list[str]] = {}
    for path in url_paths(connector.config_schema):
        for where, url in values_at(config, path):
            try:
                check_outbound_url(str(url))
            except UnsafeURL as exc:
                errors[f"config.{where}"] = [unsafe_url_reason(exc)]
    if errors:
        raise _reject(errors, "`config` names a URL the service may not call; see errors.")


def _check_subscriptions(
    connector: Connector, subscriptions: list[dict[str, Any]], tenant_id: str
) -> None:
    errors: dict[str, list[str]] = {}
    catalog = event_catalog(tenant_id)
    for index, sub in enumerate(subscriptions):
        if sub["action"] not in connector.actions:
            known = ", ".join(sorted(connector.actions)) or "none"
            errors[f"subscriptions.{index}.action"] = [
                f"connector {connector.name!r} has no action {sub['action']!r} (has: {known})"
            ]
        unknown = [p for p in sub["events"] if not is_valid_pattern(p, catalog)]
        if unknown:
            errors[f"subscriptions.{index}.events"] = ["unknown event types: " + ", ".join(unknown)]
        try:
            compile_filter(sub.get("filter"), f"subscriptions.{index}.filter")
        except FilterInvalid as exc:
            errors.update(exc.errors)
        if not sub.get("filter"):
            sub.pop("filter", None)  # {} and null: every event
    if errors:
        raise _reject(errors, "Invalid `subscriptions`; see errors.")


def _merge_kept_secrets(
    connector: Connector, incoming: dict[str, Any], current: dict[str, Any]
) -> dict[str, Any]:
    """Keep stored secrets a PATCH omits or sends as ``********``, but never send them elsewhere.

    If any URL in the config changes (a secret one such as Slack's ``webhook_url`` included),
    kept secrets would travel to the new address, so they must be sent again (422 names them).
    The URLs compared are those of the merged and the stored plaintext configs, so a secret
    that is itself a URL and is kept counts as unchanged. Omitted secrets that no longer fit
    the config (say ``auth`` switched from bearer to none) are dropped rather than forced back in.
    """
    merged = keep_omitted_secrets(connector, incoming, current)
    if merged == incoming:
        return incoming
    if _urls(merged) != _urls(current):
        message = ["send this secret again: the config's URLs changed"]
        raise _reject(
            {f"config.{path}": message for path in _added_paths(incoming, merged)},
            "The config's URLs changed, so its secrets must be sent again.",
        )
    plain = _without_redactions(incoming)
    schema = connector.config_schema
    if config_errors(schema, merged) and not config_errors(schema, plain):
        return plain
    return merged


def _urls(config: Any) -> set[str]:
    """Every http(s) URL among the config's values, secret or not."""
    if isinstance(config, dict):
        return set().union(set(), *(_urls(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(set(), *(_urls(v) for v in config))
    if isinstance(config, str) and config.startswith(("http://", "https://")):
        return {config.rstrip("/")}
    return set()


def _without_redactions(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _without_redactions(v) for k, v in config.items() if v != REDACTED}
    if isinstance(config, list):
        return [_without_redactions(v) for v in config]
    return config


def _added_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted paths where ``after`` holds a value that ``before`` lacks or differs on."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            path
            for key, value in after.items()
            for path in (
                [f"{prefix}{key}"]
                if key not in before
                else _added_paths(before[key], value, f"{prefix}{key}.")
            )
        ]
    if isinstance(before, list) and isinstance(after, list):
        return [
            path
            for i, (x, y) in enumerate(zip(before, after, strict=False))
            for path in _added_paths(x, y, f"{prefix}{i}.")
        ]
    return [] if before == after else [prefix.rstrip(".")]


def prepare_create(data: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """Validate a new integration of ``tenant_id``; return the fields to store (secrets
    encrypted)."""
    connector = require_connector(data["provider"])
    _check_type(connector, data["type"])
    _check_config(connector, data["config"])
    _check_urls(connector, data["config"])
    _check_subscriptions(connector, data["subscriptions"], tenant_id)
    return {**data, "config": encrypt_config(connector, data["config"])}


def prepare_update(row: Integration, data: dict[str, Any]) -> dict[str, Any]:
    """Validate a partial update; omitted or ``********`` secrets keep their stored values."""
    provider = data.get("provider", row.provider)
    connector = require_connector(provider, stored="provider" not in data)
    if "type" in data or "provider" in data:
        _check_type(connector, data.get("type", row.type))
    changes = dict(data)
    if "provider" in data and data["provider"] != row.provider and "config" not in data:
        raise _reject(
            {"config": ["send the full config (secrets included) when changing the provider"]},
            "Changing `provider` needs a new `config`: secrets never move between connectors.",
        )
    if "config" in data:
        config = data["config"]
        if data.get("provider", row.provider) == row.provider:
            config = _merge_kept_secrets(connector, config, decrypt_config(row.config))
        _check_config(connector, config)
        _check_urls(connector, config)
        changes["config"] = encrypt_config(connector, config)
    if "subscriptions" in data or "provider" in data:
        _check_subscriptions(connector, data.get("subscriptions", row.subscriptions), row.tenant_id)
    return changes


def claim_sso_domains(row: Integration) -> None:
    """Make the email domains of an SSO integration (``oidc``: ``allowed_domains``) its
    tenant's, for ``/auth/sso/discover``; a domain another tenant claimed is a 409.

    Call in the transaction that saves the integration: the claims follow its config.
    """
    tenant_id = row.tenant_id
    SsoDomain.delete_of(tenant_id).where(SsoDomain.integration == row.id).execute()
    if row.provider != SSO_PROVIDER:
        return
    domains = sorted({str(d).strip().lower() for d in row.config.get("allowed_domains") or ()})
    # Across tenants on purpose: a domain is unique among all of them (its primary key).
    taken = [
        claim.domain
        for claim in SsoDomain.select(SsoDomain.domain).where(SsoDomain.domain.in_(domains))
    ]
    try:
        if not taken:
            for domain in domains:
                SsoDomain.create(domain=domain, tenant_id=tenant_id, integration=row.id)
    except peewee.IntegrityError:  # claimed meanwhile by a concurrent save
        taken = domains
    if taken:
        raise Problem(
            409,
            "These email domains are already claimed by another SSO integration: "
            + ", ".join(taken)
            + ". A domain signs in through one integration only.",
            errors={"config.allowed_domains": [f"{domain} is claimed" for domain in taken]},
        )

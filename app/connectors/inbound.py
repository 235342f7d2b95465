"""``POST /inbound/{integration_id}``: provider webhooks verified by the connector itself.

No API key: the connector checks the provider's own signature. Accepted requests become
Switchboard events (only types the connector declares) and are logged one by one; a repeated
delivery id is answered 200 without a second event. Rejected requests are counted and logged
once per interval, and a sender rejected too often gets 429 (see
:mod:`app.connectors.inbound_rejections`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import peewee
import redis
from flask import jsonify, request
from flask.typing import ResponseReturnValue

from app.auth.access import client_ip, ip_allowed
from app.connectors.configs import decrypt_config
from app.connectors.contract import Event as EventData
from app.connectors.contract import InboundRejected, InboundRequest, InboundResult
from app.connectors.extension import connector_context, get_registry, unavailable
from app.connectors.inbound_rejections import rejected
from app.events.catalog import emit_event
from app.events.progress import paused_tenants
from app.store import jsoncodec
from app.store.db import database
from app.store.models import Event, Integration, IntegrationLog, Tenant
from app.store.redis import get_redis
from app.stream import kinds
from app.web.api import Blueprint
from app.web.problems import Problem

log = logging.getLogger(__name__)

blp = Blueprint("inbound", __name__, url_prefix="/api/v1", description="Inbound webhooks")


def _dedupe_key(integration_id: str, delivery_id: str, index: int) -> str:
    # Hashed: a provider's delivery id is untrusted input of any length or content.
    digest = hashlib.sha256(delivery_id.encode()).hexdigest()[:40]
    return f"inbound:{integration_id}:{digest}#{index}"


def _replayed(integration_id: str, result: InboundResult) -> bool:
    """True if ``result.replay_key`` was seen under another delivery id within its window.

    The first delivery id is remembered with the key, so the provider retrying that same
    delivery (after a failure on our side) is not mistaken for a replay. Without Redis the
    check is skipped (logged): the signature and timestamp checks still stand.
    """
    if not result.replay_key or result.replay_window <= 0:
        return False
    digest = hashlib.sha256(result.replay_key).hexdigest()[:40]
    key, delivery = f"inbound-replay:{integration_id}:{digest}", result.delivery_id or ""
    try:
        client = get_redis()
        if client.set(key, delivery, nx=True, ex=result.replay_window):
            return False
        seen = client.get(key)
    except redis.RedisError as exc:
        log.warning("replay check of integration %s skipped: %s", integration_id, exc)
        return False
    return seen is not None and seen not in (delivery, delivery.encode())


def _log(
    integration: Integration,
    status: str,
    data: dict[str, Any],
    error: str | None,
    started: float,
) -> None:
    logged = IntegrationLog.create(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        event_type="inbound.request",
        event_data=data,
        status=status,
        error_message=error,
        response_time_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    kinds.log_created(logged.to_dict())


def _rejected(integration: Integration, reason: str, status: int, detail: str) -> Problem:
    """The problem answering a rejected request, counted (not logged one by one)."""
    return rejected(integration.id, integration.tenant_id, client_ip(), reason, status, detail)


def _result_problem(result: Any) -> str | None:
    """What keeps ``handle_inbound``'s result from being published and answered, or None."""
    if not isinstance(result, InboundResult) or not isinstance(result.events, list):
        return f"a value of type {type(result).__name__}, not an InboundResult with a list"
    for index, event in enumerate(result.events):
        if not isinstance(event, EventData) or not isinstance(event.data, dict):
            return f"events[{index}] that is not an Event whose data is a JSON object"
        found = jsoncodec.problem(event.data, f"events[{index}].data")
        if found is not None:
            return f"an event that is not JSON: {found}"
    if result.response is not None and not isinstance(result.response, dict):
        return f"a response of type {type(result.response).__name__}, not a JSON object"
    found = jsoncodec.problem(result.response, "response")
    return None if found is None else f"a response that is not JSON: {found}"


@blp.route("/inbound/<integration_id>", methods=["POST"])
@blp.doc(
    security=[],
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "The provider's payload, verified by the connector's signature check",
    },
    responses={"200": {"description": "Accepted (or a repeated delivery)"}},
)
@blp.problem(400, "The request is malformed for this connector")
@blp.problem(401, "The signature did not verify")
@blp.problem(403, "The sender's address is not allowed")
@blp.problem(404, "No such integration, or it does not accept inbound requests")
@blp.problem(409, "The integration is inactive, or the payload is a replay")
@blp.problem(429, "Too many rejected requests from this address for this integration")
@blp.problem(503, "The integration's connector failed to load, or returned a broken result")
def receive_inbound(integration_id: str) -> ResponseReturnValue:
    """Receive a signed webhook from a provider (no API key; the connector verifies it)."""
    started = time.perf_counter()
    # By id across tenants on purpose: the unguessable id in the URL is what names the tenant
    # (the provider has no API key); the connector's signature check authenticates the request.
    integration = Integration.get_or_none(Integration.id == integration_id)
    if (
        integration is not None
        and paused_tenants().where(Tenant.id == integration.tenant_id).exists()
    ):
        raise Problem(403, "This integration's tenant is suspended; nothing is received.")
    connector = get_registry().get(integration.provider) if integration else None
    if integration is not None and connector is None:  # the provider retries a 503 later
        raise Problem(503, f"The {unavailable(integration.provider)}; retry once it is fixed.")
    if integration is None or connector is None or not connector.accepts_inbound:
        raise Problem(404, f"No integration {integration_id!r} accepting inbound requests.")
    if integration.status == "inactive":  # switched off: nothing flows through it
        raise _rejected(
            integration,
            "inactive",
            409,
            "This integration is inactive; set its status to active to receive.",
        )
    if not ip_allowed(client_ip(), integration.allowed_ips):
        raise _rejected(
            integration,
            "address_not_allowed",
            403,
            "Requests from your address are not accepted for this integration.",
        )
    inbound = InboundRequest(
        method=request.method,
        headers=dict(request.headers),
        body=request.get_data(cache=False),
        query=request.args.to_dict(),
        remote_addr=client_ip(),
    )
    try:
        result = connector.handle_inbound(
            inbound,
            decrypt_config(integration.config),
            connector_context(integration.id, integration.tenant_id),
        )
    except InboundRejected as exc:
        raise _rejected(integration, "rejected", exc.status, exc.message) from exc
    except Exception as exc:  # noqa: BLE001 - a payload the connector chokes on is bad input
        log.exception("connector %s failed on an inbound request", connector.name)
        detail = f"The connector could not process this request ({type(exc).__name__})."
        raise _rejected(integration, "unreadable", 400, detail) from exc
    problem = _result_problem(result)
    if problem is not None:  # a plugin bug: the provider retries a 503 once it is fixed
        log.error("connector %s: handle_inbound returned %s", connector.name, problem)
        _log(integration, "error", {"ip": client_ip()}, f"connector returned {problem}", started)
        raise Problem(503, "The connector returned a result it cannot publish; retry later.")
    declared = connector.event_types
    events = [e for e in result.events if e.type in declared]
    delivery = result.delivery_id
    if delivery and Event.get_of(
        integration.tenant_id, Event.idempotency_key == _dedupe_key(integration.id, delivery, 0)
    ):
        return jsonify({"ok": True, "duplicate": True, "events": []})
    if _replayed(integration.id, result):
        raise _rejected(
            integration,
            "replay",
            409,
            "This payload was already received under another delivery id.",
        )
    emitted: list[str] = []
    try:
        with database.atomic():
            for index, event in enumerate(events):
                key = _dedupe_key(integration.id, delivery, index) if delivery else None
                data = {**event.data, "integration_id": integration.id}
                event_row = emit_event(
                    event.type, data, tenant_id=integration.tenant_id, idempotency_key=key
                )
                emitted.append(event_row.id)
            _log(
                integration,
                "success",
                {"delivery_id": delivery, "events": emitted},
                None,
                started,
            )
    except peewee.IntegrityError:  # the same delivery raced us: it is a duplicate
        return jsonify({"ok": True, "duplicate": True, "events": []})
    return jsonify(result.response or {"ok": True, "events": emitted})

"""Running connector actions: shared by action jobs and event subscriptions.

``execute_action`` validates input against the action's schema, runs the handler with the
decrypted config and the guarded HTTP session, logs the run to ``integration_logs`` with its
latency, and turns every outcome (result, ``ActionError``, crash) into an ``ActionOutcome``.
A result must be a JSON object: anything else fails the run for good, so nothing a plugin
returns can break the job's answer, the log or the delivery that show it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from app.connectors.configs import decrypt_config
from app.connectors.contract import (
    ActionError,
    Connector,
    ConnectorContext,
    bind_context,
    config_errors,
)
from app.connectors.extension import connector_context, get_registry, unavailable
from app.metrics import instruments as metrics
from app.outbound.guard import REFUSED, refused_by_guard
from app.store import jsoncodec
from app.store.models import Integration, IntegrationLog
from app.stream import kinds

log = logging.getLogger(__name__)

_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


@dataclass(frozen=True)
class ActionOutcome:
    """How one action run ended."""

    success: bool
    result: dict[str, Any] | None
    error: str | None
    retryable: bool
    retry_after: float | None
    response_time_ms: float


def execute_action(
    integration: Integration,
    action_name: str,
    action_input: dict[str, Any],
    *,
    log_data: dict[str, Any] | None = None,
    will_retry: bool = False,
) -> ActionOutcome:
    """Run ``action_name`` of the integration's connector and log the run."""
    started = time.perf_counter()
    outcome = _run(integration, action_name, action_input, started)
    logged = IntegrationLog.create(
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        event_type=f"action.{action_name}",
        event_data={"action": action_name, **(log_data or {})},
        status="success"
        if outcome.success
        else ("pending" if outcome.retryable and will_retry else "error"),
        error_message=outcome.error,
        response_time_ms=round(outcome.response_time_ms, 2),
    )
    kinds.log_created(logged.to_dict())
    return outcome


def _run(
    integration: Integration, action_name: str, action_input: dict[str, Any], started: float
) -> ActionOutcome:
    connector = get_registry().get(integration.provider)
    if connector is None:  # a broken or missing plugin: retried, fixing it lets the run through
        return _ended(started, error=unavailable(integration.provider), retryable=True)
    return run_handler(
        connector,
        action_name,
        decrypt_config(integration.config),
        action_input,
        connector_context(integration.id, integration.tenant_id),
        started=started,
    )


def run_handler(
    connector: Connector,
    action_name: str,
    config: dict[str, Any],
    action_input: dict[str, Any],
    ctx: ConnectorContext,
    *,
    started: float | None = None,
) -> ActionOutcome:
    """Validate the input and run one action handler; every way it can end is an outcome.

    The one place an action runs: jobs, subscriptions and ``PluginHarness`` all come here.
    """
    started = time.perf_counter() if started is None else started
    outcome = _run_handler(connector, action_name, config, action_input, ctx, started)
    _count(connector, action_name, outcome)
    return outcome


def _count(connector: Connector, action_name: str, outcome: ActionOutcome) -> None:
    """Metrics of a run; an action the connector does not have is labelled ``unknown``."""
    label = "success" if outcome.success else "retryable_error" if outcome.retryable else "error"
    action = action_name if action_name in connector.actions else "unknown"
    metrics.connector_action(connector.name, action, label, outcome.response_time_ms / 1000)


def _run_handler(
    connector: Connector,
    action_name: str,
    config: dict[str, Any],
    action_input: dict[str, Any],
    ctx: ConnectorContext,
    started: float,
) -> ActionOutcome:
    action = connector.actions.get(action_name)
    if action is None:
        return _ended(started, error=f"connector {connector.name!r} has no action {action_name!r}")
    errors = config_errors(action.input_schema, action_input)
    if errors:
        detail = "; ".join(f"{path}: {', '.join(msgs)}" for path, msgs in errors.items())
        return _ended(started, error=f"invalid input: {detail}")
    try:
        result = action.handler(config, action_input, bind_context(ctx, connector.name, config))
    except Exception as exc:  # noqa: BLE001 - every way a handler ends is an outcome
        if refused_by_guard(exc):  # however the connector wrapped it: final, never retried
            return _ended(started, error=REFUSED)
        if isinstance(exc, ActionError):
            return _ended(
                started, error=exc.message, retryable=exc.retryable, retry_after=exc.retry_after
            )
        # A plugin bug is a failed, retryable run.
        log.exception("action %s of %s crashed", action_name, connector.name)
        return _ended(started, error=f"action crashed: {type(exc).__name__}", retryable=True)
    problem = _result_problem(result)
    if problem is not None:  # final: the same code returns the same thing again
        error = f"action {action_name!r} of connector {connector.name!r} returned {problem}"
        log.warning("%s", error)
        return _ended(started, error=error)
    # Stored as parsed JSON: tuples become lists, str and int subclasses plain values.
    return _ended(started, success=True, result=jsoncodec.loads(jsoncodec.dumps(result)))


def _result_problem(result: Any) -> str | None:
    """What is wrong with what a handler returned (a JSON object is right), or None."""
    if not isinstance(result, dict):
        kind = "None" if result is None else f"a value of type {type(result).__name__}"
        return f"{kind}, not a JSON object"
    found = jsoncodec.problem(result, "result")
    return None if found is None else f"a result that is not JSON: {found}"


def _ended(started: float, **outcome: Any) -> ActionOutcome:
    fields: dict[str, Any] = {
        "success": False,
        "result": None,
        "error": None,
        "retryable": False,
        "retry_after": None,
        **outcome,
    }
    return ActionOutcome(**fields, response_time_ms=(time.perf_counter() - started) * 1000)


def render_template(value: Any, context: dict[str, Any]) -> Any:
    """Fill ``{{event.data.x}}`` placeholders; a string that is one placeholder keeps its type."""
    if isinstance(value, dict):
        return {k: render_template(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_template(v, context) for v in value]
    if not isinstance(value, str):
        return value
    whole = _TEMPLATE.fullmatch(value.strip())
    if whole:
        return _lookup(context, whole.group(1))
    return _TEMPLATE.sub(lambda m: _as_text(_lookup(context, m.group(1))), value)


def _lookup(context: dict[str, Any], path: str) -> Any:
    node: Any = context
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)

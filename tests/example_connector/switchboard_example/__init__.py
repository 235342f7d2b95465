"""An example Switchboard connector: the smallest complete plugin, used as a template and test.

It uses only Switchboard's public surface: ``app.hookimpl`` and ``app.connectors``.
"""

from __future__ import annotations

import hmac
from typing import Any

from app import hookimpl
from app.connectors import (
    Action,
    Connector,
    ConnectorContext,
    Event,
    InboundRejected,
    InboundRequest,
    InboundResult,
    TestResult,
)

__all__ = ["EchoConnector", "register_connectors"]


def echo(
    config: dict[str, Any], action_input: dict[str, Any], ctx: ConnectorContext
) -> dict[str, Any]:
    """Return the configured greeting followed by the message."""
    ctx.logger.info("echoing for integration %s", ctx.integration_id)
    return {"echo": f"{config['greeting']}, {action_input['message']}"}


class EchoConnector(Connector):
    """Echoes messages with a greeting; accepts inbound calls signed with its API token."""

    name = "example"
    version = "1.0.0"
    title = "Example echo"
    type = "api"
    description = "Echoes a message prefixed with a configured greeting."
    config_schema = {
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "minLength": 1, "description": "Prefix, e.g. Hello."},
            "api_token": {"type": "string", "writeOnly": True, "description": "Inbound token."},
        },
        "required": ["greeting"],
        "additionalProperties": False,
    }
    event_types = {"example.echoed": "An inbound request asked the example connector to echo."}
    actions = {
        "echo": Action(
            input_schema={
                "type": "object",
                "properties": {"message": {"type": "string"}},
                "required": ["message"],
                "additionalProperties": False,
            },
            handler=echo,
            description="Return the greeting followed by the message.",
        ),
    }

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Succeed when a greeting is configured."""
        if not config.get("greeting"):
            return TestResult(False, "greeting is not set")
        return TestResult(
            True, f"greeting is {config['greeting']!r}", {"greeting": config["greeting"]}
        )

    def handle_inbound(
        self, request: InboundRequest, config: dict[str, Any], ctx: ConnectorContext
    ) -> InboundResult:
        """Accept ``{"message": ...}`` with header ``X-Example-Token: <api_token>``."""
        token = config.get("api_token")
        given = request.headers.get("X-Example-Token", "")
        if not token or not hmac.compare_digest(token.encode(), given.encode()):
            raise InboundRejected("invalid X-Example-Token")
        payload = request.json()
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, str):
            raise InboundRejected('body must be {"message": "..."}', status=400)
        data = {"echo": f"{config['greeting']}, {message}"}
        return InboundResult(request.headers.get("X-Request-Id"), [Event("example.echoed", data)])


@hookimpl
def register_connectors() -> list[Connector]:
    """Return the example connector."""
    return [EchoConnector()]

"""Slack: send messages (incoming webhook or bot token) and receive signed Events API calls.

Outbound: an incoming-webhook URL posts to the channel it was created for; a bot token posts to
``channel`` through ``chat.postMessage``. Inbound: requests are verified with the app's signing
secret (``v0`` HMAC-SHA256 over ``v0:{timestamp}:{body}``, timestamp within five minutes),
``url_verification`` challenges are answered, and ``event_callback`` envelopes become
``slack.<event type>`` events whose delivery id is Slack's ``event_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlsplit

from app.connectors import (
    Action,
    ActionError,
    ConnectorContext,
    DeclarativeConnector,
    Event,
    InboundRejected,
    InboundRequest,
    InboundResult,
    TestResult,
    provides,
    secret,
    secret_url,
    url,
)

__all__ = ["SlackConnector", "register_connectors"]

DEFAULT_API_BASE_URL = "https://slack.com/api"
#: Oldest accepted ``X-Slack-Request-Timestamp``, in seconds (Slack's recommendation).
MAX_SIGNATURE_AGE = 300

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Slack",
    "properties": {
        "webhook_url": secret_url(
            "https://hooks.slack.com/services/… (posts to its own channel).",
            title="Incoming webhook URL",
        ),
        "bot_token": secret(
            "Bot user OAuth token (xoxb-…) with the chat:write scope.", title="Bot token"
        ),
        "channel": {
            "type": "string",
            "description": "Channel ID (C0123456789) or name (#alerts) the bot posts to.",
            "minLength": 1,
        },
        "signing_secret": secret("The Slack app's signing secret; needed to receive events."),
        "api_base_url": url(default=DEFAULT_API_BASE_URL),
        "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 120000, "default": 10000},
    },
    "additionalProperties": False,
    "oneOf": [
        {
            "title": "incoming webhook (webhook_url)",
            "required": ["webhook_url"],
            "not": {"anyOf": [{"required": ["bot_token"]}, {"required": ["channel"]}]},
        },
        {
            "title": "bot token (bot_token and channel)",
            "required": ["bot_token", "channel"],
            "not": {"required": ["webhook_url"]},
        },
    ],
}

SEND_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "description": "Message text (mrkdwn)."},
        "blocks": {"type": "array", "items": {"type": "object"}, "description": "Block Kit."},
    },
    "required": ["text"],
    "additionalProperties": False,
}

EVENT_TYPES = {
    "slack.message": "A message was posted in a channel the app is in.",
    "slack.app_mention": "The app was @-mentioned in a message.",
    "slack.reaction_added": "A reaction was added to a message.",
    "slack.reaction_removed": "A reaction was removed from a message.",
    "slack.member_joined_channel": "A user joined a channel.",
    "slack.channel_created": "A channel was created.",
    "slack.app_home_opened": "A user opened the app's Home tab.",
}


def _call_api(
    ctx: ConnectorContext, config: dict[str, Any], method: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Call a Web API method with the bot token; ``ok: false`` raises ``ActionError``."""
    base = str(config.get("api_base_url") or DEFAULT_API_BASE_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {config['bot_token']}"}
    answer = ctx.post_json(f"{base}/{method}", payload, headers=headers)
    if not isinstance(answer, dict):
        raise ActionError("slack answered without a JSON object")
    if not answer.get("ok"):
        error = str(answer.get("error") or "unknown_error")
        raise ActionError(f"slack error: {error}", retryable=error == "ratelimited")
    return answer


def send_message(
    config: dict[str, Any], action_input: dict[str, Any], ctx: ConnectorContext
) -> dict[str, Any]:
    """Post ``text`` (and optional ``blocks``) through the webhook or as the bot."""
    payload: dict[str, Any] = {"text": action_input["text"]}
    if "blocks" in action_input:
        payload["blocks"] = action_input["blocks"]
    if "webhook_url" in config:
        # Incoming webhooks answer errors as text ("channel_not_found"): ctx.request quotes it.
        ctx.post_json(config["webhook_url"], payload)
        return {"ok": True}
    payload["channel"] = config["channel"]
    answer = _call_api(ctx, config, "chat.postMessage", payload)
    return {"ok": True, "channel": answer.get("channel"), "ts": answer.get("ts")}


class SlackConnector(DeclarativeConnector):
    """Post messages to Slack through an incoming webhook or a bot token, and receive signed
    Events API requests (messages, mentions, reactions)."""

    name = "slack"
    version = "1.0.0"
    title = "Slack"
    type = "notification"
    config_schema = CONFIG_SCHEMA
    event_types = EVENT_TYPES
    actions = {
        "send_message": Action(SEND_MESSAGE_SCHEMA, send_message, "Post a message to Slack."),
    }

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Bot mode: call ``auth.test``. Webhook mode: check the URL's shape, post nothing."""
        if "webhook_url" in config:
            parts = urlsplit(str(config["webhook_url"]))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return TestResult(False, "webhook_url must be an http(s) URL with a host")
            return TestResult(
                True,
                "webhook URL looks valid (not called, so no message was posted)",
                {"mode": "webhook", "host": parts.hostname},
            )
        try:
            answer = _call_api(ctx, config, "auth.test", {})
        except ActionError as exc:
            return TestResult(False, exc.message, {"mode": "bot"})
        data = {key: answer.get(key) for key in ("team", "team_id", "user", "user_id", "url")}
        return TestResult(
            True, f"authenticated as {data['user']} in {data['team']}", {"mode": "bot", **data}
        )

    def handle_inbound(
        self, request: InboundRequest, config: dict[str, Any], ctx: ConnectorContext
    ) -> InboundResult:
        """Verify Slack's signature, answer URL verification, map event callbacks."""
        verify_signature(request, config.get("signing_secret"))
        payload = request.json()
        if not isinstance(payload, dict):
            raise InboundRejected("expected a JSON object", status=400)
        if payload.get("type") == "url_verification":
            return InboundResult(None, [], {"challenge": payload.get("challenge")})
        if payload.get("type") != "event_callback":
            return InboundResult(None)
        event = _object(payload.get("event"))
        item = _object(event.get("item"))
        event_type = f"slack.{event.get('type')}"
        delivery_id = payload.get("event_id")
        if event_type not in self.event_types:
            return InboundResult(delivery_id)
        data = {
            "team_id": payload.get("team_id"),
            "api_app_id": payload.get("api_app_id"),
            "event_id": delivery_id,
            "event_time": payload.get("event_time"),
            "channel": event.get("channel") or item.get("channel"),
            "user": event.get("user"),
            "text": event.get("text"),
            "ts": event.get("ts") or event.get("event_ts"),
            "event": event,
        }
        return InboundResult(delivery_id, [Event(event_type, data)])


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def verify_signature(
    request: InboundRequest, signing_secret: str | None, *, now: float | None = None
) -> None:
    """Raise ``InboundRejected`` unless the request carries Slack's valid, fresh signature."""
    if not signing_secret:
        raise InboundRejected("signing_secret is not configured for this integration", status=403)
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not timestamp or not signature:
        raise InboundRejected("missing X-Slack-Signature or X-Slack-Request-Timestamp header")
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        raise InboundRejected("X-Slack-Request-Timestamp is not a Unix time") from None
    if age > MAX_SIGNATURE_AGE:
        raise InboundRejected("X-Slack-Request-Timestamp is too old (possible replay)")
    base = b"v0:" + timestamp.encode() + b":" + request.body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise InboundRejected("invalid X-Slack-Signature")


register_connectors = provides(SlackConnector)

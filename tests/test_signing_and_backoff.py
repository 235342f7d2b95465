"""Focused unit tests: Standard Webhooks signing, retry timing, subscription templates."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import standardwebhooks

from app.connectors.runtime import render_template
from app.webhooks.backoff import parse_retry_after, parse_schedule, retry_delay
from app.webhooks.signing import generate_secret, secret_key, sign, signature_header


def test_signature_matches_reference_library():
    secret = generate_secret()
    body = b'{"type":"order.paid","data":{"n":1}}'
    ts = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "msg_abc", ts, body),
    }
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {
        "type": "order.paid",
        "data": {"n": 1},
    }
    # Byte-for-byte the reference library's own signature for the same message.
    fixed = "whsec_" + base64.b64encode(b"k" * 32).decode()
    when = datetime.fromtimestamp(1700000000, UTC)
    reference = standardwebhooks.Webhook(fixed).sign("msg_1", when, "{}")
    assert sign(fixed, "msg_1", 1700000000, b"{}") == reference


def test_rotation_header_carries_both_signatures():
    old, new = generate_secret(), generate_secret()
    ts = int(datetime.now(UTC).timestamp())
    value = signature_header([new, old], "msg_x", ts, b"{}")
    assert len(value.split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(
            b"{}", {"webhook-id": "msg_x", "webhook-timestamp": str(ts), "webhook-signature": value}
        )
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(
            b"{}", {"webhook-id": "msg_x", "webhook-timestamp": str(ts), "webhook-signature": value}
        )


@pytest.mark.parametrize(
    "secret, problem",
    [
        ("sk_" + base64.b64encode(b"k" * 32).decode(), "whsec_"),
        ("whsec_not*base64", "base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "24–64"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "24–64"),
    ],
)
def test_bad_secrets_are_rejected(secret, problem):
    with pytest.raises(ValueError, match=problem):
        secret_key(secret)


def test_generated_secret_size():
    assert len(secret_key(generate_secret())) == 32
    assert len(secret_key(generate_secret(64))) == 64


def test_schedule_parsing():
    assert parse_schedule("5, 30,120") == [5.0, 30.0, 120.0]
    for bad in ("", "a,b", "5,-1"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_retry_delay_follows_schedule_with_bounded_jitter():
    schedule = [1.0, 10.0, 100.0]
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 10.0), (3, 100.0), (9, 100.0)]:
        delays = [retry_delay(schedule, attempt, rng) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert max(delays) - min(delays) > base * 0.2  # jitter actually spreads retries


def test_retry_after_parsing_and_clamping():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0") == 1.0  # clamped up: never a hot loop
    assert parse_retry_after("999999") == 3600.0  # clamped down: a peer can't park us forever
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    http_date = format_datetime(now + timedelta(seconds=120), usegmt=True)
    assert parse_retry_after(http_date, now=now) == 120.0


def test_subscription_templates():
    context = {
        "event": {
            "type": "github.push",
            "data": {"repository": "acme/shop", "n": 3, "list": ["a", "b"]},
        }
    }
    assert render_template({"text": "{{event.data.repository}}: {{ event.type }}"}, context) == {
        "text": "acme/shop: github.push"
    }
    assert render_template("{{event.data.n}}", context) == 3  # a lone placeholder keeps its type
    assert render_template(["{{event.data.list.1}}", "{{event.data.missing}}!"], context) == [
        "b",
        "!",
    ]


def test_connector_retry_after_is_clamped_too():
    from app.connectors import parse_retry_after as connector_parse

    assert connector_parse("999999999999") == 3600.0
    assert connector_parse("2") == 2.0

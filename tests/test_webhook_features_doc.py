"""docs/webhook-features.md runs as written against a real ``make run``.

The page's shell blocks run in one bash session (every curl must answer 2xx) with the
machinery of ``tests/test_readme.py``: its ``Bash`` runner, block extraction and ``NAME=…``
placeholders filled from the answers above them. The page's receiver on 127.0.0.1:9000 is a
real one here (a free port), which also serves the OAuth2 token endpoint the page names; the
PEM files its mTLS example reads are generated first. Then what the examples promise is
checked: the filter's publish answers, the headers and the token that reached the receiver,
the ordered deliveries' arrival order, and the erasure job's result.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.dev_process import Output
from tests.peers import Received, Receiver
from tests.test_readme import PLACEHOLDER, Bash, _answers, _blocks, _fill, make_run  # noqa: F401
from tests.tls_peers import Certificates

pytestmark = pytest.mark.skipif(os.name != "posix", reason="bash, make and process groups")

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "webhook-features.md").read_text()


@pytest.fixture()
def service(request: pytest.FixtureRequest) -> tuple[str, str, str, Output]:
    """``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8``: test_readme's ``make_run``."""
    return request.getfixturevalue("make_run")  # type: ignore[no-any-return]


CLIENT_BASIC = "Basic " + base64.b64encode(b"switchboard:cs-8d1e").decode()


def _receiver() -> Receiver:
    """The page's receiver: 204 for deliveries, and a client-credentials token endpoint."""

    def respond(req: Received, n: int) -> tuple[int, dict[str, str], bytes]:
        if req.path == "/oauth/token":
            if req.headers.get("authorization") != CLIENT_BASIC:
                return 401, {"Content-Type": "application/json"}, b'{"error":"invalid_client"}'
            token = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600}
            return 200, {"Content-Type": "application/json"}, json.dumps(token).encode()
        return 204, {}, b""

    return Receiver(respond)


def _delivered(receiver: Receiver) -> list[tuple[dict[str, str], dict[str, Any]]]:
    return [(r.headers, json.loads(r.body)) for r in list(receiver.requests) if r.path == "/hooks"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_webhook_features_page_runs_as_written_against_make_run(
    service: tuple[str, str, str, Output], tmp_path: Path
) -> None:
    base, key, _, server_output = service
    receiver = _receiver()
    certificates = Certificates()
    client = certificates.issue("switchboard", server=False)
    (tmp_path / "client.pem").write_text(client.certificate)
    (tmp_path / "client.key").write_text(client.private_key)
    (tmp_path / "ca.pem").write_text(certificates.ca)
    receiver_port = receiver.server.server_address[1]
    known = {"KEY": key}

    def localise(text: str) -> str:
        text = text.replace("127.0.0.1:5000", base.removeprefix("http://"))
        return text.replace("127.0.0.1:9000", f"127.0.0.1:{receiver_port}")

    blocks = [code for lang, code in _blocks(PAGE) if lang == "sh"]
    assert len(blocks) == 7
    bash = Bash(tmp_path, {**os.environ, "HOME": str(tmp_path)})
    answers: list[Any] = []
    try:
        for code in blocks:
            pending: list[str] = []
            for line in localise(code).splitlines():
                placeholder = PLACEHOLDER.match(line)
                if placeholder is None:
                    pending.append(line)
                    continue
                answers += _answers(bash.run("\n".join(pending)))
                pending = []
                name, prefix = placeholder.group(1), placeholder.group(2)
                known[name] = _fill(name, prefix, known, answers)
                bash.run(f"{name}='{known[name]}'")
            answers += _answers(bash.run("\n".join(pending)))
        # The filter: ord_2 (FR, 250) was delivered to it, ord_3 (DE) created no delivery.
        published = [a for a in answers if "deliveries" in a and "duplicate" in a]
        assert [a["deliveries"] for a in published[:2]] == [1, 0]
        # The typed event's catalog entry, and the webhook's redacted secrets.
        assert any(a.get("name") == "order.paid" and a.get("schema") for a in answers)
        hooks = [a for a in answers if str(a.get("id", "")).startswith("wh_")]
        assert any(h.get("headers") and h["headers"][1]["value"] == "********" for h in hooks)
        assert any((h.get("auth") or {}).get("certificate_expires_at") for h in hooks)
        # Headers and the token from the page's token endpoint reached the receiver, and the
        # ordered webhook's three deliveries arrived in order.
        deadline = time.monotonic() + 60
        while True:
            got = _delivered(receiver)
            ordered = [
                body["data"]["amount"]
                for headers, body in got
                if body["data"].get("order_id") == "ord_7" and "x-api-version" not in headers
            ]
            partner = [h for h, b in got if h.get("x-partner-key") == "pk-4f9a2c"]
            if ordered == [100, 200, 300] and any(
                h.get("authorization") == "Bearer at-1" for h in partner
            ):
                break
            assert time.monotonic() < deadline, (ordered, [h for h, _ in got])
            time.sleep(0.1)
        assert all(h["x-api-version"] == "2024-06-01" for h in partner)
        # The erasure job erased ann's other event.
        job = known["JOB"]
        deadline = time.monotonic() + 60
        while True:
            state = requests.get(
                f"{base}/api/v1/jobs/{job}", headers={"Authorization": f"Bearer {key}"}, timeout=10
            ).json()
            if state["status"] == "finished":
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["result"]["erased"] == 1
    finally:
        bash.close()
        receiver.close()
    assert "Traceback" not in server_output.text()


def test_every_shell_block_of_the_page_is_run() -> None:
    """The test above runs the ``sh`` blocks; the others only show answers or grammar."""
    languages = {lang for lang, _ in _blocks(PAGE)}
    assert languages <= {"sh", "json"}, languages

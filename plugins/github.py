"""GitHub: receive signed repository webhooks and turn them into Switchboard events.

Every request must carry ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``
made with the webhook's secret; the delivery id is ``X-GitHub-Delivery`` (the same on GitHub's
redeliveries, so the core can deduplicate). ``ping`` is answered and produces no event. Only
the event types declared in ``EVENT_TYPES`` are emitted; other events and actions are accepted
and ignored. Event data is a normalized summary (repository, branch, commit, actor, url, …),
not GitHub's whole payload.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from app.connectors import (
    Connector,
    ConnectorContext,
    Event,
    EventSpec,
    InboundRejected,
    InboundRequest,
    InboundResult,
    TestResult,
)
from app.connectors.hookspecs import hookimpl
from app.store import jsoncodec

__all__ = ["GitHubConnector", "register_connectors"]

#: Shortest webhook secret ``test`` accepts as strong enough.
MIN_SECRET_LENGTH = 16
#: GitHub's signature does not cover ``X-GitHub-Delivery``: how long a captured body is refused.
DEFAULT_REPLAY_WINDOW = 3600
#: Where an event's payload says when it happened (``pushed_at`` is epoch seconds, others ISO).
_TIMESTAMPS: dict[str, tuple[tuple[str, str], ...]] = {
    "push": (("repository", "pushed_at"),),
    "pull_request": (("pull_request", "updated_at"),),
    "issues": (("issue", "updated_at"),),
    "issue_comment": (("comment", "updated_at"),),
    "workflow_run": (("workflow_run", "updated_at"),),
    "check_suite": (("check_suite", "updated_at"),),
    "deployment_status": (("deployment_status", "updated_at"),),
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "GitHub webhooks",
    "properties": {
        "webhook_secret": {
            "type": "string",
            "title": "Webhook secret",
            "description": "The secret set on the GitHub webhook (at least 16 random characters).",
            "minLength": 1,
            "writeOnly": True,
        },
        "replay_window_seconds": {
            "type": "integer",
            "minimum": 0,
            "maximum": 7 * 86400,
            "default": DEFAULT_REPLAY_WINDOW,
            "description": "Refuse payloads whose own timestamp is older than this, and the "
            "same signed body again under another delivery id within it; 0 turns both off.",
        },
    },
    "required": ["webhook_secret"],
    "additionalProperties": False,
}

_DESCRIPTIONS = {
    "github.push": "Commits were pushed to a branch or tag.",
    "github.pull_request.opened": "A pull request was opened.",
    "github.pull_request.edited": "A pull request's title or body was edited.",
    "github.pull_request.closed": "A pull request was closed or merged (see data.merged).",
    "github.pull_request.reopened": "A pull request was reopened.",
    "github.pull_request.synchronize": "A pull request's head branch was updated.",
    "github.pull_request.ready_for_review": "A draft pull request was marked ready for review.",
    "github.pull_request.converted_to_draft": "A pull request was converted to a draft.",
    "github.pull_request.review_requested": "A review was requested on a pull request.",
    "github.workflow_run.requested": "A GitHub Actions workflow run was requested.",
    "github.workflow_run.in_progress": "A GitHub Actions workflow run started.",
    "github.workflow_run.completed": "A GitHub Actions workflow run finished (see conclusion).",
    "github.check_run.created": "A check run was created.",
    "github.check_run.completed": "A check run finished (see conclusion).",
    "github.check_run.rerequested": "A check run was re-requested.",
    "github.check_run.requested_action": "A check run's requested action was triggered.",
    "github.check_suite.requested": "A check suite was requested.",
    "github.check_suite.rerequested": "A check suite was re-requested.",
    "github.check_suite.completed": "All check runs of a suite finished (see conclusion).",
    "github.deployment_status.created": "A deployment status with an unlisted state was created.",
    "github.deployment_status.queued": "A deployment was queued.",
    "github.deployment_status.pending": "A deployment is pending.",
    "github.deployment_status.in_progress": "A deployment is in progress.",
    "github.deployment_status.success": "A deployment succeeded.",
    "github.deployment_status.failure": "A deployment failed.",
    "github.deployment_status.error": "A deployment errored.",
    "github.deployment_status.inactive": "A deployment became inactive.",
}

_TEXT = {"type": ["string", "null"]}
_NUMBER = {"type": ["integer", "null"]}
_FLAG = {"type": ["boolean", "null"]}


def _summary(**fields: dict[str, Any]) -> dict[str, Any]:
    """The schema of an event summary: the fields every one carries, and ``fields``."""
    common = {"repository": _TEXT, "actor": _TEXT, "action": _TEXT}
    return {
        "type": "object",
        "required": ["repository", "actor", "integration_id"],
        "properties": {**common, **fields, "integration_id": {"type": "string"}},
    }


#: The ``data`` of each family of events (``integration_id`` is added by Switchboard).
SCHEMAS = {
    "push": _summary(
        ref=_TEXT,
        branch=_TEXT,
        tag=_TEXT,
        commit=_TEXT,
        before=_TEXT,
        created={"type": "boolean"},
        deleted={"type": "boolean"},
        forced={"type": "boolean"},
        commits={"type": "integer", "minimum": 0},
        title=_TEXT,
        message=_TEXT,
        url=_TEXT,
        compare=_TEXT,
    ),
    "pull_request": _summary(
        number=_NUMBER,
        branch=_TEXT,
        base_branch=_TEXT,
        commit=_TEXT,
        state=_TEXT,
        draft=_FLAG,
        merged=_FLAG,
        title=_TEXT,
        url=_TEXT,
    ),
    "workflow_run": _summary(
        workflow=_TEXT,
        run_id=_NUMBER,
        run_number=_NUMBER,
        run_attempt=_NUMBER,
        trigger=_TEXT,
        branch=_TEXT,
        commit=_TEXT,
        status=_TEXT,
        conclusion=_TEXT,
        title=_TEXT,
        message=_TEXT,
        url=_TEXT,
    ),
    "check_run": _summary(
        name=_TEXT,
        branch=_TEXT,
        commit=_TEXT,
        status=_TEXT,
        conclusion=_TEXT,
        title=_TEXT,
        url=_TEXT,
    ),
    "check_suite": _summary(
        app=_TEXT,
        branch=_TEXT,
        commit=_TEXT,
        status=_TEXT,
        conclusion=_TEXT,
        message=_TEXT,
        url=_TEXT,
    ),
    "deployment_status": _summary(
        state=_TEXT, environment=_TEXT, branch=_TEXT, commit=_TEXT, message=_TEXT, url=_TEXT
    ),
}
_EXAMPLES: dict[str, tuple[dict[str, Any], ...]] = {
    "github.push": (
        {
            "repository": "acme/shop",
            "actor": "octocat",
            "action": None,
            "ref": "refs/heads/main",
            "branch": "main",
            "tag": None,
            "commit": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "before": "0000000000000000000000000000000000000000",
            "created": False,
            "deleted": False,
            "forced": False,
            "commits": 1,
            "title": "Fix checkout totals",
            "message": "Fix checkout totals",
            "url": "https://github.com/acme/shop/commit/6dcb09b",
            "compare": "https://github.com/acme/shop/compare/000000...6dcb09b",
            "integration_id": "int_4fPq8ZkTn2Lw9YbXc1Rs",
        },
    ),
    "github.workflow_run.completed": (
        {
            "repository": "acme/shop",
            "actor": "octocat",
            "action": "completed",
            "workflow": "CI",
            "run_id": 30433642,
            "run_number": 562,
            "run_attempt": 1,
            "trigger": "push",
            "branch": "main",
            "commit": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "status": "completed",
            "conclusion": "success",
            "title": "Fix checkout totals",
            "message": "Fix checkout totals",
            "url": "https://github.com/acme/shop/actions/runs/30433642",
            "integration_id": "int_4fPq8ZkTn2Lw9YbXc1Rs",
        },
    ),
}
EVENT_TYPES = {
    name: EventSpec(text, SCHEMAS[name.split(".")[1]], _EXAMPLES.get(name, ()))
    for name, text in _DESCRIPTIONS.items()
}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _base(payload: dict[str, Any]) -> dict[str, Any]:
    """Fields every GitHub event summary carries."""
    return {
        "repository": _object(payload.get("repository")).get("full_name"),
        "actor": _object(payload.get("sender")).get("login"),
        "action": payload.get("action"),
    }


def _push(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ref = str(payload.get("ref") or "")
    head = _object(payload.get("head_commit"))
    message = head.get("message")
    actor = _object(payload.get("sender")).get("login") or _object(payload.get("pusher")).get(
        "name"
    )
    return "github.push", {
        **_base(payload),
        "actor": actor,
        "ref": ref,
        "branch": ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None,
        "tag": ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None,
        "commit": payload.get("after"),
        "before": payload.get("before"),
        "created": bool(payload.get("created")),
        "deleted": bool(payload.get("deleted")),
        "forced": bool(payload.get("forced")),
        "commits": len(payload.get("commits") or []),
        "title": message.splitlines()[0] if isinstance(message, str) and message else None,
        "message": message,
        "url": head.get("url") or payload.get("compare"),
        "compare": payload.get("compare"),
    }


def _pull_request(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    pr = _object(payload.get("pull_request"))
    head, base = _object(pr.get("head")), _object(pr.get("base"))
    return f"github.pull_request.{payload.get('action')}", {
        **_base(payload),
        "number": payload.get("number") or pr.get("number"),
        "branch": head.get("ref"),
        "base_branch": base.get("ref"),
        "commit": head.get("sha"),
        "state": pr.get("state"),
        "draft": pr.get("draft"),
        "merged": pr.get("merged"),
        "title": pr.get("title"),
        "url": pr.get("html_url"),
    }


def _workflow_run(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    run = _object(payload.get("workflow_run"))
    actor = _object(run.get("actor")).get("login")
    return f"github.workflow_run.{payload.get('action')}", {
        **_base(payload),
        "actor": actor or _object(payload.get("sender")).get("login"),
        "workflow": run.get("name"),
        "run_id": run.get("id"),
        "run_number": run.get("run_number"),
        "run_attempt": run.get("run_attempt"),
        "trigger": run.get("event"),
        "branch": run.get("head_branch"),
        "commit": run.get("head_sha"),
        "status": run.get("status"),
        "conclusion": run.get("conclusion"),
        "title": run.get("display_title") or run.get("name"),
        "message": _object(run.get("head_commit")).get("message"),
        "url": run.get("html_url"),
    }


def _check_run(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    check = _object(payload.get("check_run"))
    return f"github.check_run.{payload.get('action')}", {
        **_base(payload),
        "name": check.get("name"),
        "branch": _object(check.get("check_suite")).get("head_branch"),
        "commit": check.get("head_sha"),
        "status": check.get("status"),
        "conclusion": check.get("conclusion"),
        "title": _object(check.get("output")).get("title") or check.get("name"),
        "url": check.get("html_url") or check.get("details_url"),
    }


def _check_suite(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    suite = _object(payload.get("check_suite"))
    repository_url = _object(payload.get("repository")).get("html_url")
    sha = suite.get("head_sha")
    return f"github.check_suite.{payload.get('action')}", {
        **_base(payload),
        "app": _object(suite.get("app")).get("name"),
        "branch": suite.get("head_branch"),
        "commit": sha,
        "status": suite.get("status"),
        "conclusion": suite.get("conclusion"),
        "message": _object(suite.get("head_commit")).get("message"),
        "url": f"{repository_url}/commit/{sha}" if repository_url and sha else None,
    }


def _deployment_status(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    status = _object(payload.get("deployment_status"))
    deployment = _object(payload.get("deployment"))
    state = status.get("state")
    event_type = f"github.deployment_status.{state}"
    if event_type not in EVENT_TYPES:
        event_type = "github.deployment_status.created"
    return event_type, {
        **_base(payload),
        "state": state,
        "environment": status.get("environment") or deployment.get("environment"),
        "branch": deployment.get("ref"),
        "commit": deployment.get("sha"),
        "message": status.get("description"),
        "url": status.get("target_url") or status.get("environment_url") or status.get("log_url"),
    }


_MAPPERS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "push": _push,
    "pull_request": _pull_request,
    "workflow_run": _workflow_run,
    "check_run": _check_run,
    "check_suite": _check_suite,
    "deployment_status": _deployment_status,
}


def verify_signature(body: bytes, signature: str | None, secret: str) -> None:
    """Raise ``InboundRejected`` unless ``signature`` is ``sha256=`` + HMAC of ``body``."""
    if not signature:
        raise InboundRejected("missing X-Hub-Signature-256 header (set a secret on the webhook)")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise InboundRejected("invalid X-Hub-Signature-256")


def _embedded_time(event_name: str, payload: dict[str, Any]) -> float | None:
    """When the payload says its event happened (epoch seconds), if this kind says so."""
    for obj, key in _TIMESTAMPS.get(event_name, ()):
        value = _object(payload.get(obj)).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                return None
    return None


def check_fresh(event_name: str, payload: dict[str, Any], window: int) -> None:
    """Raise ``InboundRejected`` if the payload's own timestamp is older than ``window`` s."""
    happened = _embedded_time(event_name, payload)
    if window > 0 and happened is not None and happened < time.time() - window:
        raise InboundRejected(
            f"payload is older than the replay window ({window} s); redeliver a fresh event "
            "or raise replay_window_seconds"
        )


def _payload(request: InboundRequest) -> dict[str, Any]:
    """The JSON payload, whether the webhook sends JSON or a form with a ``payload`` field."""
    if request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        fields = parse_qs(request.body.decode("utf-8", "replace"))
        try:
            payload = jsoncodec.loads(fields.get("payload", [""])[0])
        except ValueError:
            raise InboundRejected("form field 'payload' is not valid JSON", status=400) from None
    else:
        payload = request.json()
    if not isinstance(payload, dict):
        raise InboundRejected("expected a JSON object", status=400)
    return payload


class GitHubConnector(Connector):
    """GitHub repository and organization webhooks."""

    name = "github"
    version = "1.0.0"
    title = "GitHub"
    type = "webhook"
    description = (
        "Receive signed GitHub webhooks (push, pull requests, Actions workflow runs, checks, "
        "deployments) as Switchboard events."
    )
    config_schema = CONFIG_SCHEMA
    event_types = EVENT_TYPES

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Check that the webhook secret is set and long enough (no network call)."""
        secret = str(config.get("webhook_secret") or "")
        if not secret:
            return TestResult(False, "webhook_secret is not set")
        if len(secret) < MIN_SECRET_LENGTH or len(set(secret)) < 6:
            return TestResult(
                False,
                f"webhook_secret is weak: use at least {MIN_SECRET_LENGTH} random characters, "
                'e.g. python -c "import secrets; print(secrets.token_hex(32))"',
            )
        return TestResult(True, "webhook secret is set; GitHub deliveries will be verified")

    def handle_inbound(
        self, request: InboundRequest, config: dict[str, Any], ctx: ConnectorContext
    ) -> InboundResult:
        """Verify ``X-Hub-Signature-256`` and map the event to Switchboard events."""
        verify_signature(
            request.body, request.headers.get("X-Hub-Signature-256"), config["webhook_secret"]
        )
        delivery_id = request.headers.get("X-GitHub-Delivery") or None
        event_name = request.headers.get("X-GitHub-Event")
        if not event_name:
            raise InboundRejected("missing X-GitHub-Event header", status=400)
        payload = _payload(request)
        if event_name == "ping":
            response = {"ok": True, "zen": payload.get("zen"), "hook_id": payload.get("hook_id")}
            return InboundResult(delivery_id, [], response)
        window = int(config.get("replay_window_seconds", DEFAULT_REPLAY_WINDOW))
        check_fresh(event_name, payload, window)
        mapper = _MAPPERS.get(event_name)
        event_type, data = mapper(payload) if mapper else ("", {})
        events = [Event(event_type, data)] if event_type in self.event_types else []
        return InboundResult(delivery_id, events, replay_key=request.body, replay_window=window)


@hookimpl
def register_connectors() -> list[Connector]:
    """Return the GitHub connector."""
    return [GitHubConnector()]

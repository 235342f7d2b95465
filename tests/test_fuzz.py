"""Property-based fuzzing of the whole API against its own live OpenAPI document (schemathesis).

Every operation gets generated valid (positive) and invalid (negative) requests, sent with an
admin key through the WSGI app: no response may be a 5xx, and every response must match the
spec (status code, content type, headers, body schema), every JSON answer must parse strictly
(``app.store.jsoncodec``: no NaN, no lone surrogates); invalid input must be rejected with a
4xx. Operations with path parameters run twice: with generated ids (the 404 paths) and with the
ids of freshly created resources, so updates, tests, rotations and deletes run for real. The
destructive key operations get a sacrificial key, never the fuzzer's own.

The schema comes from the session app, so it is loaded inside the test and each operation's
Hypothesis test is built with ``APIOperation.as_strategy``: schemathesis' pytest fixture loader
(``schemathesis.pytest.from_fixture``) fails on pytest 9.2, which removed ``Node._nodeid``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from app.store import jsoncodec
from tests.conftest import make_key, make_user
from tests.peers import ROOT

FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_MAX_EXAMPLES", "10")),
    deadline=None,
    derandomize=True,  # the same cases every run
    database=None,  # nothing written to .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=False,
)
PATH_PARAMETER = re.compile(r"{(\w+)}")
#: How long an event stream (``GET /stream``) is read before the check: it never ends, and
#: heartbeats (every quarter of this) let the reader see the time pass.
STREAM_READ_SECONDS = 1.0


@pytest.fixture()
def fuzz_key(app: Any) -> str:
    """An admin key whose rate limit the fuzzer cannot exhaust."""
    admin = make_user(app, "fuzz-admin@example.com", role="admin")
    return make_key(app, admin, ["admin"], rate_limit=10_000_000)


@pytest.fixture()
def peer(httpserver: Any) -> str:
    """A local HTTP peer that answers 200 to everything (webhook and REST upstream target)."""
    httpserver.expect_request(re.compile(".*")).respond_with_data("ok")
    return str(httpserver.url_for("/"))


def seed_resources(client: Any, auth: dict[str, str], peer: str) -> dict[str, str]:
    """Create one of everything a path parameter can name; return the ids by parameter name."""

    def call(method: str, url: str, body: Any = None, also_ok: int = 0) -> Any:
        response = client.open(url, method=method, json=body, headers=auth)
        ok = response.status_code < 300 or response.status_code == also_ok
        assert ok, (method, url, response.get_json())
        return response.get_json()

    integration = call(
        "POST",
        "/api/v1/integrations",
        {"name": "fuzz target", "type": "api", "provider": "rest", "status": "active"}
        | {"config": {"upstreams": [{"url": peer}]}},
    )
    webhook = call(
        "POST",
        "/api/v1/webhooks",
        {"url": f"{peer}hook", "events": ["*"], "integration_id": integration["id"]},
    )
    key = call("POST", "/api/v1/api-keys", {"name": "fuzz target", "permissions": ["logs:read"]})
    job = call(
        "POST", f"/api/v1/integrations/{integration['id']}/actions/request", {"method": "GET"}
    )
    call("POST", "/api/v1/event-types", {"name": "fuzz.happened"}, also_ok=409)  # 409: seen
    event = call("POST", "/api/v1/events", {"type": "fuzz.happened", "data": {}})
    deliveries = call("GET", f"/api/v1/webhooks/{webhook['id']}/deliveries")["items"]
    portal = call("POST", "/api/v1/portal-sessions", {"read_only": True})
    return {
        "integration_id": integration["id"],
        "webhook_id": webhook["id"],
        "key_id": key["id"],
        "job_id": job["job_id"],
        "delivery_id": deliveries[0]["id"],
        "event_id": event["id"],
        "event_type": "fuzz.happened",
        "session_id": portal["id"],
        "name": "rest",
        "action": "request",
    }


def status_code_listed(ctx: Any, response: Any, case: Any) -> None:
    """Stricter than schemathesis' own check, which accepts anything once ``default`` exists."""
    listed = {str(code) for code in case.operation.responses.status_codes} - {"default"}
    code = str(response.status_code)
    if code not in listed and f"{code[0]}XX" not in listed:
        raise AssertionError(
            f"{response.status_code} is not documented (documents {sorted(listed)})"
        )


def strict_json(ctx: Any, response: Any, case: Any) -> None:
    """Every JSON answer parses with a strict parser: no NaN/Infinity, no lone surrogates."""
    if response.content and "json" in (response.headers.get("content-type") or [""])[0]:
        jsoncodec.loads(response.content)


#: Schema-valid input the server rightly refuses for reasons no schema can state, by operation
#: and by the field the problem's ``errors`` names: what exists (server state), what time it is,
#: the operator's settings, and relations between query parameters. Every other refusal of
#: schema-valid input fails ``accepts_valid_data``: the spec must say it.
_STATE = "must name what exists on the server (registered, installed, created)"
_ALL_LISTS = {
    "offset": "`cursor` and `offset` exclude each other: OpenAPI cannot relate two query "
    "parameters",
    "cursor": "an opaque value the server issued with an earlier page",
}
_FILTER = (
    "the filter grammar ($and, $or, operators by field) is recursive: a schema the generators "
    "cannot draw from"
)
UNEXPRESSIBLE: dict[str, dict[str, str]] = {
    "POST /api/v1/api-keys": {"expires_at": "must be in the future: the server's clock"},
    "POST /api/v1/webhooks/{webhook_id}/enable": {"since": "must not be in the future"},
    "POST /api/v1/webhooks/{webhook_id}/recover": {"since": "must not be in the future"},
    "POST /api/v1/events": {"type": _STATE},
    "POST /api/v1/integrations": {
        "provider": _STATE,
        "config": "the connector's own schema",
        "subscriptions": _FILTER,
    },
    "PATCH /api/v1/integrations/{integration_id}": {
        "provider": _STATE,
        "type": "the type of the connector named by provider",
        "subscriptions": _FILTER,
        "config": "the connector's own schema",
    },
    "POST /api/v1/integrations/{integration_id}/actions/{action}": {
        "*": "the input schema is the {action}'s, chosen by a path parameter"
    },
    "POST /api/v1/alert-rules": {"condition": _STATE, "target": _STATE},
    "PATCH /api/v1/alert-rules/{rule_id}": {"condition": _STATE, "target": _STATE},
    "PATCH /api/v1/retention": {"*": "bounds are the operator's settings"},
    "POST /api/v1/webhooks": {
        "url": "must resolve to an address the operator's SSRF policy allows",
        "events": _STATE,
        "integration_id": _STATE,
        "filter": _FILTER,
    },
    "PATCH /api/v1/webhooks/{webhook_id}": {
        "url": "must resolve to an address the operator's SSRF policy allows",
        "events": _STATE,
        "held": "only while the webhook is active: its current state",
        "filter": _FILTER,
        "ordering_key": "only with fifo ordering: the webhook's current ordering",
    },
    "GET /api/v1/auth/sso/callback": {"state": "a single-use value the server issued"},
    "GET /api/v1/oauth/callback": {"state": "a single-use value the server issued"},
    "GET /api/v1/oauth/start": {"ticket": "a single-use value the server issued"},
    "POST /api/v1/portal-sessions": {
        "return_url": "its origin must be in the operator's SWITCHBOARD_RETURN_TO_ORIGINS"
    },
    "GET /api/v1/auth/sso/{integration_id}/login": {
        "return_to": "its origin must be in the operator's SWITCHBOARD_RETURN_TO_ORIGINS"
    },
    "POST /api/v1/integrations/{integration_id}/oauth/authorize": {
        "return_to": "its origin must be in the operator's SWITCHBOARD_RETURN_TO_ORIGINS"
    },
}
#: NUL is refused in every string; typed strings publish it (a pattern), but strings inside
#: free-form JSON (event data, configs, metadata, action input) could only say so through a
#: recursive schema the generators cannot draw from.
NUL_IN_FREE_FORM = "NUL characters are not allowed in JSON strings."


def _unexpressible(case: Any, response: Any) -> bool:
    """True when ``response`` refuses ``case`` only for reasons listed in ``UNEXPRESSIBLE``."""
    try:
        problem = jsoncodec.loads(response.content)
    except ValueError:
        return False
    if problem.get("detail") == NUL_IN_FREE_FORM:
        return True
    reasons = {**_ALL_LISTS, **UNEXPRESSIBLE.get(case.operation.label, {})}
    fields = {str(name).split(".")[0] for name in problem.get("errors") or {}}  # config.x
    return "*" in reasons or bool(fields) and fields <= set(reasons)


def accepts_valid_data(ctx: Any, response: Any, case: Any) -> None:
    """schemathesis' ``positive_data_acceptance``, but for the refusals no schema can state."""
    try:
        schemathesis.checks.positive_data_acceptance(ctx, response, case)
    except AssertionError:
        if not _unexpressible(case, response):
            raise


def fuzz_operation(operation: Any, mode: Any, auth: dict[str, str], ids: dict[str, str]) -> None:
    """Run one operation's Hypothesis test; raises what schemathesis found."""

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=ids or None))
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            headers=auth,
            timeout=STREAM_READ_SECONDS,
            excluded_checks=[schemathesis.checks.positive_data_acceptance],
            additional_checks=[status_code_listed, strict_json, accepts_valid_data],
        )

    fuzz()


def _documented_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation in the committed spec: one test each, so parallel
    runs spread the fuzzing (``test_openapi`` keeps the file equal to the live spec)."""
    spec = jsoncodec.loads((ROOT / "openapi" / "openapi.json").read_bytes())
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    ]


OPERATIONS = _documented_operations()
_schemas: dict[int, Any] = {}  # the live schema, loaded once per app


def test_every_operation_of_the_spec_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 40


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[" ".join(o) for o in OPERATIONS])
def test_every_operation_conforms_to_the_spec(
    app: Any,
    client: Any,
    fuzz_key: str,
    peer: str,
    method: str,
    path: str,
    mode: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(app.config, "STREAM_HEARTBEAT", STREAM_READ_SECONDS / 4)
    if id(app) not in _schemas:
        _schemas[id(app)] = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operation = _schemas[id(app)][path][method]  # one schemathesis cannot use fails here
    auth = {"Authorization": f"Bearer {fuzz_key}"}
    names = PATH_PARAMETER.findall(operation.path)
    runs: list[tuple[str, dict[str, str]]] = [("", {})]  # generated ids: the 404 paths
    known = seed_resources(client, auth, peer) if names else {}
    ids = {name: known[name] for name in names if name in known}
    if ids:
        runs.append((" (existing resources)", ids))
    failures: list[str] = []
    for label, ids in runs:
        try:
            fuzz_operation(operation, mode, auth, ids)
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): the positive run covers it.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # report both runs' failures
            failures.append(f"{operation.label}{label}:\n{exc}")
    if failures:
        pytest.fail("\n\n".join(failures))


#: Id-bearing operations no link reaches: their ids come only from lists, whose contents differ
#: from one example of the state machine to the next (hypothesis refuses data generation that
#: depends on it). ``test_every_operation_conforms_to_the_spec`` runs them with seeded ids.
ONLY_LISTED_IDS = {"POST /api/v1/deliveries/{delivery_id}/retry", "GET /api/v1/connectors/{name}"}


def test_every_id_bearing_operation_is_reached_by_a_link() -> None:
    """The stateful pass can reach every operation that takes an id: some answer links to it."""
    spec = jsoncodec.loads((ROOT / "openapi" / "openapi.json").read_bytes())
    targets = {
        link["operationRef"]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for response in operation.get("responses", {}).values()
        for link in (response.get("links") or {}).values()
    }
    unreached = [
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        if PATH_PARAMETER.search(path)
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
        and "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method not in targets
    ]
    assert sorted(unreached) == sorted(ONLY_LISTED_IDS)


def test_stateful_create_then_use_links(
    app: Any, fuzz_key: str, peer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Follow the spec's links (create → the operations on what was created) with every
    check, stateful ones too (positive data acceptance with ``UNEXPRESSIBLE``'s exceptions)."""
    monkeypatch.setitem(app.config, "STREAM_HEARTBEAT", STREAM_READ_SECONDS / 4)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    auth = {"Authorization": f"Bearer {fuzz_key}"}

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": auth, "timeout": STREAM_READ_SECONDS}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(
                response,
                additional_checks=[status_code_listed, strict_json, accepts_valid_data],
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
                headers=auth,  # sent instead of generated auth: the auth checks must know
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Machine.run(
        settings=settings(
            max_examples=int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "15")),
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
    )

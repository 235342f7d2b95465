"""Nothing a plugin returns can break an answer: results that are not strict JSON objects fail
the run at once (not retried), visibly in the job, the log and the delivery, in a real worker
and in ``PluginHarness`` alike; a connection test's data and inbound events are checked too."""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.results import Result

from app import create_app
from app.connectors.testing import PluginHarness
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, Delivery, IntegrationLog
from tests.conftest import ApiClient, session_redis_url
from tests.peers import WorkerProcess
from tests.plugin_site import install_plugin

INTS = "/api/v1/integrations"

#: A connector whose action returns whatever its input names, whose test returns data with a
#: set in it, and whose inbound endpoint publishes NaN or answers with a set.
ODDITIES = '''
"""Returns what it is asked to: a connector for the tests of result checks."""

import enum

from app import hookimpl
from app.connectors import Action, Connector, Event, InboundResult, TestResult


class State(enum.StrEnum):
    DONE = "done"


def _deep():
    value = {}
    for _ in range(150):
        value = {"d": value}
    return value


RESULTS = {
    "object": lambda: object(),
    "set": lambda: {"tags": {"a", "b"}},
    "bytes": lambda: {"body": b"raw"},
    "nan": lambda: {"ratio": float("nan")},
    "infinity": lambda: {"ratio": float("inf")},
    "int_key": lambda: {1: "one"},
    "surrogate": lambda: {"text": "\\ud800"},
    "deep": _deep,
    "none": lambda: None,
    "list": lambda: [1, 2],
    "str": lambda: "done",
    "ok": lambda: {"items": (1, 2), "state": State.DONE},
}


def give(config, action_input, ctx):
    return RESULTS[action_input["kind"]]()


class Oddities(Connector):
    name = "oddities"
    version = "1.0.0"
    type = "api"
    event_types = {"oddities.seen": "Something odd was seen."}
    actions = {
        "give": Action(
            {"type": "object", "properties": {"kind": {"enum": list(RESULTS)}}},
            give,
        )
    }

    def test(self, config, ctx):
        return TestResult(True, "fine", {"seen": {1, 2}})

    def handle_inbound(self, request, config, ctx):
        if request.json().get("kind") == "response":
            return InboundResult(None, [], {"tags": {"a"}})
        return InboundResult(None, [Event("oddities.seen", {"ratio": float("nan")})])


@hookimpl
def register_connectors():
    return [Oddities()]
'''

PREFIX = "action 'give' of connector 'oddities' returned "
NOT_JSON = "a result that is not JSON: "
REFUSED = {
    "object": "a value of type object, not a JSON object",
    "set": NOT_JSON + "result.tags is of type set, not a JSON value",
    "bytes": NOT_JSON + "result.body is of type bytes, not a JSON value",
    "nan": NOT_JSON + "result.ratio is NaN, not a JSON number",
    "infinity": NOT_JSON + "result.ratio is infinite, not a JSON number",
    "int_key": NOT_JSON + "result has a key of type int (JSON keys are strings)",
    "surrogate": NOT_JSON + "result.text is a string with an unpaired surrogate",
    "deep": NOT_JSON + "result.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d.d… is nested "
    "more than 100 levels deep",
    "none": "None, not a JSON object",
    "list": "a value of type list, not a JSON object",
    "str": "a value of type str, not a JSON object",
}
#: What the "ok" kind's result is stored and answered as: plain JSON.
OK_RESULT = {"items": [1, 2], "state": "done"}


@pytest.fixture()
def oddities() -> Iterator[types.ModuleType]:
    module = types.ModuleType("oddities_plugin")
    exec(compile(ODDITIES, "oddities_plugin", "exec"), module.__dict__)  # noqa: S102
    yield module


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_the_harness_fails_a_non_json_result_for_good(oddities, kind: str) -> None:
    with PluginHarness(oddities, name="oddities") as harness:
        outcome = harness.run_action("give", {}, {"kind": kind})
    assert (outcome.success, outcome.result, outcome.retryable) == (False, None, False)
    assert outcome.error == PREFIX + REFUSED[kind]


def test_the_harness_stores_a_json_result_as_plain_json(oddities) -> None:
    with PluginHarness(oddities, name="oddities") as harness:
        outcome = harness.run_action("give", {}, {"kind": "ok"})
        tested = harness.test({})
    assert outcome.success and outcome.result == OK_RESULT
    assert type(outcome.result["state"]) is str and type(outcome.result["items"]) is list
    assert (tested.success, tested.data) == (False, {}), tested
    assert tested.message == (
        "test returned data that is not JSON: data.seen is of type set, not a JSON value"
    )


@pytest.fixture()
def oddities_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The oddities plugin installed into a throwaway directory on this process's path."""
    site = install_plugin(
        tmp_path / "site",
        "switchboard-oddities",
        "1.0.0",
        {"switchboard_oddities": ODDITIES},
        {"oddities": "switchboard_oddities"},
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("switchboard_oddities", None)


def _wait(condition: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout}s")


def test_a_worker_fails_non_json_results_in_the_job_the_log_and_the_delivery(
    app: Any, admin_key: str, oddities_site: Path
) -> None:
    fresh = create_app({**app.config})  # entry points are read when the app starts
    api = ApiClient(fresh.test_client(), admin_key)
    assert api.post("/api/v1/event-types", json={"name": "odd.happened"}).status_code == 201
    subscription = {"events": ["odd.happened"], "action": "give", "input": {"kind": "set"}}
    created = api.post(
        INTS,
        json={
            "name": "odd",
            "type": "api",
            "provider": "oddities",
            "status": "active",
            "config": {},
            "subscriptions": [subscription],
        },
    )
    assert created.status_code == 201, created.json
    iid = created.json["id"]
    worker = WorkerProcess(fresh, PYTHONPATH=str(oddities_site))
    try:
        jobs = {
            kind: api.post(f"{INTS}/{iid}/actions/give", json={"kind": kind}).json["job_id"]
            for kind in [*REFUSED, "ok"]
        }
        assert api.post(
            "/api/v1/events", json={"type": "odd.happened", "data": {}}
        ).status_code == (202)
        for kind, job_id in jobs.items():
            answer = _wait(
                lambda job_id=job_id: (
                    (res := api.get(f"/api/v1/jobs/{job_id}")).json["status"]
                    in ("finished", "failed")
                    and res
                )
            )
            assert answer.status_code == 200, answer.json
            job = answer.json
            if kind == "ok":
                assert (job["status"], job["result"], job["error"]) == ("finished", OK_RESULT, None)
                continue
            assert (job["status"], job["attempts"], job["result"]) == ("failed", 1, None), job
            assert job["error"] == PREFIX + REFUSED[kind]

        def delivery() -> Delivery | None:
            with fresh.app_context(), database.connection_context():
                row = Delivery.get_of(DEFAULT_TENANT_ID, Delivery.integration == iid)
            return row if row is not None and row.status != "pending" else None

        row = _wait(delivery)
    finally:
        worker.stop()
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error == PREFIX + REFUSED["set"]
    logs = api.get(f"{INTS}/{iid}/logs", query_string={"limit": 100})
    assert logs.status_code == 200
    errors = sorted(e["error_message"] for e in logs.json["items"] if e["status"] == "error")
    assert errors == sorted(PREFIX + REFUSED[k] for k in [*REFUSED, "set"])
    assert [e["status"] for e in logs.json["items"]].count("success") == 1


def _refuse_to_load() -> None:
    raise RuntimeError("this result cannot be read back")


class Unreadable:
    """Pickles fine; unpickling it raises (a class the reading process cannot rebuild)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load, ())


@pytest.mark.parametrize(
    ("stored", "error"),
    [
        (
            {"tags": {"a"}, "ratio": float("nan")},
            "the stored result is not JSON and is not shown: result.tags is of type set, "
            "not a JSON value",
        ),
        (Unreadable(), "the stored result cannot be read (RuntimeError)"),
    ],
)
def test_a_job_finished_before_results_were_checked_is_answered(
    api: ApiClient, stored: Any, error: str
) -> None:
    """Jobs stay 7 days: those that finished with a non-JSON result earlier answer 200."""
    with redis.Redis.from_url(session_redis_url()) as connection:
        job = Job.create(
            len,
            args=([],),
            connection=connection,
            meta={"action": "give", "integration_id": "int_x", "tenant_id": DEFAULT_TENANT_ID},
        )
        job.save()
        job.set_status(JobStatus.FINISHED)
        Result.create(job, Result.Type.SUCCESSFUL, ttl=600, return_value=stored)
    answer = api.get(f"/api/v1/jobs/{job.id}")
    assert answer.status_code == 200, answer.json
    assert (answer.json["status"], answer.json["result"], answer.json["error"]) == (
        "finished",
        None,
        error,
    )


@pytest.fixture()
def registered(app: Any, oddities: types.ModuleType) -> Iterator[None]:
    """The oddities plugin registered into the session app (and unregistered afterwards)."""
    registry = app.extensions["plugins"]
    registry.register(oddities, "oddities")
    try:
        yield
    finally:
        registry.unregister("oddities")


def test_test_data_and_inbound_results_that_are_not_json_are_refused(
    app: Any, api: ApiClient, client: Any, registered: None
) -> None:
    created = api.post(
        INTS,
        json={"name": "o", "type": "api", "provider": "oddities", "status": "active", "config": {}},
    )
    iid = created.json["id"]
    tested = api.post(f"{INTS}/{iid}/test")
    assert tested.status_code == 200
    assert tested.json == {
        "success": False,
        "message": "test returned data that is not JSON: data.seen is of type set, "
        "not a JSON value",
        "data": {},
    }
    for body in ({"kind": "event"}, {"kind": "response"}):
        answer = client.post(f"/api/v1/inbound/{iid}", json=body)
        assert answer.status_code == 503, answer.json
        assert answer.mimetype == "application/problem+json"
    with app.app_context(), database.connection_context():
        logged = sorted(
            row.error_message
            for row in IntegrationLog.of(DEFAULT_TENANT_ID).where(
                IntegrationLog.event_type == "inbound.request"
            )
        )
    assert logged == [
        "connector returned a response that is not JSON: response.tags is of type set, "
        "not a JSON value",
        "connector returned an event that is not JSON: events[0].data.ratio is NaN, "
        "not a JSON number",
    ]
    published = api.get("/api/v1/events", query_string={"type": "oddities.seen"})
    assert published.json["items"] == []

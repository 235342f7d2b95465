"""The example connector's own tests, as its repository's CI runs them (docs/plugins.md §9)."""

import pytest
import switchboard_example

from app.connectors.testing import PluginHarness


@pytest.fixture()
def example():
    with PluginHarness(switchboard_example, name="example") as harness:
        yield harness


def test_echo(example):
    outcome = example.run_action("echo", {"greeting": "Hello"}, {"message": "world"})
    assert outcome.success and outcome.result == {"echo": "Hello, world"}


def test_invalid_input_is_refused_before_the_handler_runs(example):
    outcome = example.run_action("echo", {"greeting": "Hello"}, {"message": 42})
    assert not outcome.success and not outcome.retryable
    assert outcome.error == "invalid input: message: must be of type string"


def test_connection_test(example):
    result = example.test({"greeting": "Hi"})
    assert (result.success, result.data) == (True, {"greeting": "Hi"})
    assert example.test({}).success is False  # the schema is checked first, like the API does


def test_config_errors_as_the_api_reports_them(example):
    assert example.api_config_errors({"greeting": "", "colour": "red"}) == {
        "config.greeting": ["must not be empty"],
        "config.colour": ["is not an allowed field"],
    }

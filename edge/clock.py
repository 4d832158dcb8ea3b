"""Time for the hub: UTC, timezone-aware, and injectable so tests can move it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone


class Clock:
    """Wall clock (UTC) and monotonic clock. Pure logic takes ``now`` as an
    argument; the parts that schedule things ask a Clock, so that tests can
    use ``FakeClock`` to jump 24 hours without waiting."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


def rfc3339(ts: datetime) -> str:
    """UTC RFC 3339 with milliseconds and a Z, as the MQTT contract wants."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime: hub-edge keeps every time timezone-aware (UTC)")
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 time; refuses times without a zone."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone: send UTC with a Z or an offset")
    return ts.astimezone(timezone.utc)

"""What every driver shares: how it reports its own health to the hub core.

A driver never holds business rules. It turns wire bytes into typed events and
commands into wire bytes. When its device stops answering it says so with a
``DeviceFault`` and keeps trying on its own; when the device answers again it
says ``DeviceRecovered``. One dead device is that device's fault alone: drivers
never block the event loop and never share a connection between devices.

Threaded drivers (nfcpy, serial) hand events to the loop with
``loop.call_soon_threadsafe(emit, event)``; asyncio drivers call ``emit``
directly from the loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Literal


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


async def cancel_and_wait(tasks, nudge_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until every one has ended. On Python 3.11,
    ``asyncio.wait_for`` drops a cancellation that arrives just as the call
    it waits on completes, so a polling loop may go on after one cancel: a
    task still running after ``nudge_s`` is cancelled again."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=nudge_s)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: an ending task's error is not reported as never retrieved


@dataclass(frozen=True)
class DeviceFault:
    device_id: str
    device_class: str  # charger | reader | terminal | camera | barrier
    reason: str  # what happened and what to check, for a person
    ts: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class DeviceRecovered:
    device_id: str
    device_class: str
    ts: datetime = field(default_factory=utcnow)


@dataclass
class DeviceHealth:
    """Live health of one device, shown by ``hubctl devices``."""

    device_id: str
    device_class: str
    state: Literal["unknown", "ok", "fault"] = "unknown"
    since: datetime = field(default_factory=utcnow)
    last_error: str | None = None
    detail: dict = field(default_factory=dict)
    last_down_s: float | None = None  # how long the last fault lasted, set on recovery

    def mark_ok(self, now: datetime | None = None) -> bool:
        """Record a good exchange. True when this is a recovery from a fault."""
        recovered = self.state == "fault"
        if self.state != "ok":
            now = now or utcnow()
            if recovered:
                self.last_down_s = max(0.0, (now - self.since).total_seconds())
            self.state = "ok"
            self.since = now
            self.last_error = None
        return recovered

    def mark_fault(self, reason: str, now: datetime | None = None) -> bool:
        """Record a fault. True when the device was not already in fault."""
        new = self.state != "fault"
        if new:
            self.state = "fault"
            self.since = now or utcnow()
        self.last_error = reason
        return new

    def as_dict(self) -> dict:
        return {
            "device": self.device_id,
            "class": self.device_class,
            "state": self.state,
            "since": self.since.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "last_error": self.last_error,
            **({"detail": self.detail} if self.detail else {}),
        }


Emit = Callable[[object], None]

"""Time for the hub: UTC, timezone-aware, and injectable so tests can move it.

Whether the wall clock can be trusted is a question of its own: a Raspberry
Pi has no battery-backed clock, so after a power cut it starts at the time it
last saved (or in 1970) until NTP has synchronised it. ``Clock.synced`` says
whether that has happened; decisions that depend on the date (a hold
released after 24 hours, a command's expiry) ask it first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

# systemd-timesyncd creates this file once it has synchronised the clock
# (it stays until the next boot).
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5  # adjtimex's answer while the kernel clock is not synchronised
_STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    # struct timex up to ``status``; the rest is room the kernel writes into.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


def kernel_clock_synced() -> str | None:
    """How the kernel's clock is known to be synchronised - "timesyncd"
    (systemd-timesyncd's flag file) or "kernel" (adjtimex says so, whatever
    NTP client set it) - or None when it is not, or cannot be told (adjtimex
    refused, as inside a sandbox that filters it)."""
    try:
        if TIMESYNC_FLAG.exists():
            return "timesyncd"
    except OSError:
        pass
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()  # modes 0: read only, needs no privilege
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0 or state == _TIME_ERROR or timex.status & _STA_UNSYNC:
        return None
    return "kernel"


class Clock:
    """Wall clock (UTC) and monotonic clock. Pure logic takes ``now`` as an
    argument; the parts that schedule things ask a Clock, so that tests can
    use ``FakeClock`` to jump 24 hours without waiting.

    ``rtc``: the gateway keeps time in a battery-backed real-time clock, so
    its clock is trusted from boot, synchronised or not."""

    def __init__(self, *, rtc: bool = False):
        self.rtc = rtc
        self._source: str | None = "rtc" if rtc else None

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    @property
    def synced(self) -> bool:
        """True once the wall clock can be trusted for decisions that depend
        on the date. Once true it stays true: a clock set once drifts by
        seconds a day, not by hours."""
        return self.sync_source is not None

    @property
    def sync_source(self) -> str | None:
        """What vouches for the clock: "rtc", "timesyncd", "kernel", or None
        while nothing does."""
        if self._source is None:
            self._source = kernel_clock_synced()
        return self._source

    def view(self) -> dict:
        """The clock as `hubctl status` shows it."""
        return {"synced": self.synced, "source": self.sync_source, "now": rfc3339(self.now())}


class FakeClock(Clock):
    def __init__(self, start: datetime | None = None, *, synced: bool = True):
        super().__init__()
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._mono = 1000.0
        self.set_synced(synced)

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set_synced(self, synced: bool) -> None:
        self._fixed_source = "test" if synced else None

    @property
    def sync_source(self) -> str | None:
        return self._fixed_source


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

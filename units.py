"""The units every room of the project shares, importing nothing of ours:
time (UTC, timezone-aware, injectable so tests can move it) and money
(ISO 4217 currencies, their minor units and the one rounding rule).

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
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
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


# ---------------------------------------------------------------- money

@dataclass(frozen=True)
class Currency:
    alpha: str  # ISO 4217 letters, e.g. "EUR"
    numeric: int  # ISO 4217 number, e.g. 978 (ZVT sends this as BCD 09 78)
    minor_unit: int  # digits after the decimal point


# ISO 4217: the currencies of the countries the operator runs hubs in, and their
# neighbours. Add a row here to support another; nothing else needs to change.
CURRENCIES: dict[str, Currency] = {
    c.alpha: c
    for c in (
        Currency("EUR", 978, 2),
        Currency("GBP", 826, 2),
        Currency("CHF", 756, 2),
        Currency("CZK", 203, 2),
        Currency("DKK", 208, 2),
        Currency("NOK", 578, 2),
        Currency("PLN", 985, 2),
        Currency("SEK", 752, 2),
        Currency("HUF", 348, 2),
        Currency("RON", 946, 2),
        Currency("ISK", 352, 0),
    )
}
_BY_NUMERIC = {c.numeric: c for c in CURRENCIES.values()}


def currency(alpha: str) -> Currency:
    try:
        return CURRENCIES[alpha.upper()]
    except KeyError:
        raise ValueError(
            f"unknown currency {alpha!r}: use an ISO 4217 code among {sorted(CURRENCIES)}"
        ) from None


def currency_by_numeric(numeric: int) -> Currency:
    try:
        return _BY_NUMERIC[numeric]
    except KeyError:
        raise ValueError(
            f"unknown ISO 4217 currency number {numeric}: add it to units.CURRENCIES"
        ) from None


def minor_unit(alpha: str) -> int:
    """Digits after the decimal point (ISO 4217), e.g. 2 for EUR, 0 for ISK."""
    return currency(alpha).minor_unit


def quantum(alpha: str) -> Decimal:
    """The smallest amount of the currency: Decimal('0.01') for EUR."""
    return Decimal(1).scaleb(-minor_unit(alpha))


def round_money(amount: Decimal, alpha: str) -> Decimal:
    """ROUND_HALF_UP to the currency's minor unit (the rule stated above)."""
    require_decimal("amount", amount)
    return amount.quantize(quantum(alpha), rounding=ROUND_HALF_UP)


def to_minor_units(amount: Decimal, alpha: str) -> int:
    """An exact amount in minor units (cents). Refuses amounts finer than the unit."""
    require_decimal("amount", amount)
    scaled = amount.scaleb(minor_unit(alpha))
    if scaled != scaled.to_integral_value():
        raise ValueError(
            f"amount {amount} {alpha} has more decimals than the currency allows: round it first"
        )
    return int(scaled)


def from_minor_units(units: int, alpha: str) -> Decimal:
    return Decimal(units).scaleb(-minor_unit(alpha)).quantize(quantum(alpha))


def require_decimal(name: str, value: object) -> None:
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal (money is never a float), got {type(value).__name__}")

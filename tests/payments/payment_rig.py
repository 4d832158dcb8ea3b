"""A hub core built from a configuration and never started, for the payment
part's tests without sockets: terminal T1's ZVT client is replaced by a
scripted terminal that records every call, holds reservations and keeps its
own ledger of what it booked and reversed, charger CH1 by a stand-in that
accepts every start."""

from __future__ import annotations

import asyncio
import json
import time as time_module
import tomllib
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from drivers.zvt import PaymentResult, TerminalRefused, TerminalTimeout, TerminalUnavailable
from drivers.zvt.client import OpenPreauthorization
from units import FakeClock
from edge.core.config import parse_config
from edge.parts.payments.ledger import Closing
from edge.parts.payments.pricing import Tariff

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "register-maps"
UTC = timezone.utc
# 2026-11-24 10:00 in Berlin (CET, UTC+1): today's 03:00 closing time has passed.
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TARIFF = Tariff("t1", "EUR", Decimal("0.399"), Decimal("0.19"), datetime(2025, 1, 1, tzinfo=UTC))


def hub_config(tmp: Path, end_of_day: str | None = '"03:00"', extra: str = "") -> dict:
    line = f"end_of_day = {end_of_day}\n" if end_of_day is not None else ""
    return tomllib.loads(f"""
[hub]
id = "EOD-01"
country = "DE"
currency = "EUR"
timezone = "Europe/Berlin"
vat_rate = "0.19"
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{tmp / 'control.sock'}"
[[chargers]]
id = "CH1"
address = "127.0.0.1:9"
register_map = "{MAPS / 'hubcharge-mcs1200.toml'}"
connectors = [ {{ id = "C1", index = 1 }}, {{ id = "C2", index = 2 }} ]
[[terminals]]
id = "T1"
port = "tcp://127.0.0.1:9"
connectors = ["C1", "C2"]
{line}{extra}
""")


class Listing(list):
    """The terminal's answer about its open reservations: the receipts it
    names, and whether it said that nothing else is open."""

    def __init__(self, receipts, complete: bool):
        super().__init__(OpenPreauthorization(r) for r in receipts)
        self.complete = complete
        self.named = frozenset(receipts)


class ScriptedTerminal:
    """Stands in for T1's ZvtClient: records every call, holds reservations,
    answers end-of-days from a script (a PaymentResult or an exception).

    ``first_only``: it names only its first open reservation, as Feig cVEND
    terminals do. ``faults``: what happens to the next bookings and
    releases, in order: "nak" (refused on the line, never done), "silent"
    (taken, never done, no answer), "lost" (done, the answer lost),
    "stale" (answered with the approval of another receipt, as a late
    answer would be), "not_found" (answered B8, not found, while the
    reservation stays open). ``booked`` and ``reversed`` are its own ledger."""

    def __init__(self, health):
        self.health = health
        self.calls: list[str] = []
        self.open: dict[int, Decimal] = {}
        self.booked: dict[int, Decimal] = {}
        self.reversed: set[int] = set()
        self.closings: list[PaymentResult | Exception] = []
        self.preauth_gate: asyncio.Event | None = None  # set: the card holder is still typing
        self.first_only = False
        self.refuse_query = False
        self.faults: list[str] = []
        self.preauth_answers: list[PaymentResult] = []  # given instead of a new reservation
        self._receipt = 0

    async def connect(self):
        self.calls.append("connect")

    async def close(self):
        pass

    async def register(self):
        return PaymentResult("registration", True, 0, "done")

    async def preauthorize(self, amount, currency=None):
        self.calls.append("preauthorize")
        if self.preauth_gate is not None:
            await self.preauth_gate.wait()
        if self.preauth_answers:
            return self.preauth_answers.pop(0)
        self._receipt = max([self._receipt, *self.open, *self.booked, *self.reversed]) + 1
        self.open[self._receipt] = amount
        self.calls.append("preauthorize_done")
        return PaymentResult("pre-authorisation", True, 0, "approved", receipt_no=self._receipt, amount=amount,
                             currency="EUR", card_token="aa11", masked_pan="411111******1111")

    async def open_preauthorizations(self):
        self.calls.append("open_preauthorizations")
        if self.refuse_query:
            raise TerminalRefused("terminal refused the open pre-authorisation query (function not possible)", 0x83)
        receipts = sorted(self.open)
        return Listing(receipts[:1] if self.first_only else receipts, complete=not receipts)

    def _fault(self, what: str, done) -> PaymentResult | None:
        """Apply the next scripted fault to a booking or release."""
        fault = self.faults.pop(0) if self.faults else None
        if fault == "nak":
            raise TerminalUnavailable("terminal on /dev/ttyUSB0: the terminal did not acknowledge a frame after 3 attempts")
        if fault == "silent":
            err = TerminalTimeout(f"terminal: no message within 5 s; the {what} may have been done")
            err.maybe_done = True
            raise err
        if fault == "not_found":
            return PaymentResult(what, False, 0xB8, "pre-authorisation error (unknown or already closed)")
        if fault == "stale":
            other = max(self.open, default=0) + 1
            return PaymentResult(what, True, 0, "done", receipt_no=other)
        result = done()
        if fault == "lost":
            err = TerminalTimeout(f"terminal: no message within 180 s; the {what} may have been done")
            err.maybe_done = True
            raise err
        return result

    async def book_preauth(self, receipt_no, amount, *, preauthorized, currency=None):
        self.calls.append(f"book {receipt_no}")

        def book():
            if receipt_no not in self.open:
                return PaymentResult("partial reversal", False, 0xB8, "pre-authorisation error (unknown or already closed)")
            assert amount <= self.open.pop(receipt_no)
            self.booked[receipt_no] = amount
            return PaymentResult("partial reversal", True, 0, "done", receipt_no=receipt_no, amount=amount)

        return self._fault("partial reversal", book)

    async def reverse_preauth(self, receipt_no, currency=None):
        self.calls.append(f"release {receipt_no}")

        def reverse():
            if receipt_no not in self.open:
                code = 0xB4 if receipt_no in self.reversed else 0xB8
                return PaymentResult("pre-authorisation reversal", False, code, "not open")
            self.open.pop(receipt_no)
            self.reversed.add(receipt_no)
            return PaymentResult("pre-authorisation reversal", True, 0, "done", receipt_no=receipt_no)

        return self._fault("pre-authorisation reversal", reverse)

    async def end_of_day(self):
        self.calls.append("end_of_day")
        answer = self.closings.pop(0) if self.closings else done("0.00")
        if isinstance(answer, Exception):
            raise answer
        return answer


def done(total: str) -> PaymentResult:
    return PaymentResult("end-of-day", True, 0, "done", amount=Decimal(total), currency="EUR")


REFUSED = PaymentResult("end-of-day", False, 0x77, "end-of-day not possible now: the operator must retry later")


class FakeCharger:
    async def start(self, cid):
        pass

    async def stop(self, cid):
        pass

    async def unlock(self, cid):
        return True

    async def close(self):
        pass


class Rig:
    def __init__(self, tmp: Path, clock: FakeClock, end_of_day: str = '"03:00"'):
        from edge.core.hub import Hub

        self.clock = clock
        self.hub = Hub(parse_config(hub_config(tmp, end_of_day), tmp / "hub.toml"), clock=clock)
        self.hub.chargers["CH1"] = FakeCharger()
        self.payments = next(p for p in self.hub.capabilities if p.name == "payments")
        self.lane = self.payments.lanes["T1"]
        self.terminal = ScriptedTerminal(self.lane.client.health)
        self.lane.client = self.terminal
        self.lane.connected = True
        self.lane.last_reconcile = time_module.monotonic()  # the loop's own reconciliation is not due
        self.events: list[tuple[str, dict]] = []
        original = self.hub.emit

        def emit(type_, data):
            self.events.append((type_, data))
            original(type_, data)

        self.hub.emit = emit

    def of(self, type_: str) -> list[dict]:
        return [d for t, d in self.events if t == type_]

    def envelopes(self, type_: str) -> list[dict]:
        rows = [json.loads(r[0]) for r in self.hub.store.db.execute("SELECT body FROM outbox ORDER BY pos")]
        return [e for e in rows if e.get("type") == type_]

    def at(self, when: datetime) -> None:
        self.clock.advance((when - self.clock.now()).total_seconds())

    def closings(self) -> list[Closing]:
        return self.payments.ledger.closings("T1")

    def settling_hold(self, receipt: int, amount: str) -> str:
        """A session's hold whose settlement is due: what the day's closing must include."""
        ledger, now = self.payments.ledger, self.clock.now()
        rec = ledger.create(terminal="T1", connector="C1", kind="session", currency="EUR", hold=Decimal("236.81"),
                            now=now, tariff=TARIFF)
        ledger.change(rec, now, "approve", receipt_no=receipt, held_at=now)
        ledger.change(rec, now, "begin_charging", session_id=f"S{receipt}")
        ledger.change(rec, now, "bill", settle_amount=Decimal(amount), cost_net=Decimal(amount), cost_vat=Decimal("0"),
                      cost_gross=Decimal(amount), next_attempt_at=now)
        self.terminal.open[receipt] = Decimal("236.81")
        return rec.id

    def close(self) -> None:
        self.hub.store.close()

    def restarted(self, tmp: Path) -> "Rig":
        """The hub killed and started again on the same state; the terminal
        keeps its reservations and its own ledger, as a real one does."""
        self.close()
        again = Rig(tmp, self.clock)
        old, new = self.terminal, again.terminal
        new.open, new.booked, new.reversed, new.first_only = old.open, old.booked, old.reversed, old.first_only
        return again

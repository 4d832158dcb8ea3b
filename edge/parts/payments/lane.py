"""One arch terminal's lane: its ZVT client, its lock and its worker task.

Each terminal has its own lane (a task and a lock): a dead terminal delays
only its own arch. The lane's loop connects, reconciles (``reconciliation``),
makes the settlements and releases that are due (``flow``) and runs the
scheduled end-of-day (``receipts``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from edge.parts.payments.ledger import PaymentLedger
from edge.parts.payments.reconciliation import RECONCILE_EVERY_S
from state_machines.payment import REQUESTED

if TYPE_CHECKING:
    from edge.parts.payments.part import Payments

log = logging.getLogger("hubedge.payments")


class TerminalLane:
    """One arch terminal: its ZVT client, its lock (one card at a time) and
    its worker task (connect, reconcile, retries). A dead terminal stalls
    only its own lane."""

    def __init__(self, payments: "Payments", tcfg):
        from drivers.zvt import Timers, ZvtClient

        hub = payments.hub
        self.payments = payments
        self.cfg = tcfg
        self.id = tcfg.id
        self.connectors = list(tcfg.connectors)
        timers = Timers(
            t3_command=float(tcfg.t3_command_s),
            t4_completion=float(tcfg.t4_completion_s),
        )
        self.client = ZvtClient.from_url(
            tcfg.port, password=tcfg.password, currency=hub.cfg.hub.currency, on_status=self._on_text,
            on_health=hub.device_event, clock=hub.clock, device_id=tcfg.id, timers=timers,
        )
        hub.devices[tcfg.id] = self.client.health
        self.lock = asyncio.Lock()
        self.connected = False
        self.needs_reconnect = False
        self.reconcile_due = True
        self.last_reconcile = 0.0
        self.last_result: str | None = None
        self.activity = "starting"
        self._wake: asyncio.Event | None = None
        self._texts = None  # where the terminal's screen texts go during an exchange
        self.serving: str | None = None  # the connector whose driver is at the terminal now
        self.closing = False  # its end-of-day is running
        # Its last answer about open reservations named some, not all: a
        # reservation behind them may be named once one of them is closed.
        self.listing_partial = False
        self.open_query_refused = False  # alarmed once: R-P4 cannot be checked on it

    def _on_text(self, text: str):
        if self._texts is not None:
            return self._texts(text)
        return None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def failed(self, exc: Exception) -> None:
        from drivers.zvt import TerminalUnavailable

        if isinstance(exc, TerminalUnavailable):
            self.connected = False
            self.needs_reconnect = True
        if getattr(exc, "maybe_done", False):
            self.reconcile_due = True
        self.last_result = f"error: {exc}"

    async def ensure_connected(self) -> bool:
        """Under the lane's lock: open the link and register (06 00)."""
        from drivers.zvt import TerminalError

        if self.connected:
            return True
        try:
            if self.needs_reconnect:
                await self.client.close()
            await self.client.connect()
            reg = await self.client.register()
            if not reg.ok:
                log.warning("terminal.registration_refused terminal=%s reason=%s", self.id, reg.reason)
        except TerminalError as exc:
            self.needs_reconnect = True
            self.last_result = f"not answering: {exc}"
            self.activity = "down"
            return False
        self.connected = True
        self.needs_reconnect = False
        self.reconcile_due = True
        self.activity = "idle"
        log.info("terminal.connected terminal=%s", self.id)
        return True

    async def run(self) -> None:
        self._wake = asyncio.Event()
        backoff = 1.0
        while not self.payments.hub.stopping:
            try:
                if not self.connected:
                    async with self.lock:
                        ok = await self.ensure_connected()
                    if not ok:
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                    backoff = 1.0
                if self.reconcile_due or time.monotonic() - self.last_reconcile > RECONCILE_EVERY_S:
                    await self.payments.reconcile(self)
                await self.payments.run_due(self)
                await self.payments.maybe_end_of_day(self)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("terminal.lane_failed terminal=%s", self.id)
            await self._sleep(self.payments.next_due_in(self))

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.05, seconds))
        except asyncio.TimeoutError:
            pass

    def view(self, ledger: PaymentLedger) -> dict:
        holds = [r for r in ledger.open_records(self.id) if r.state != REQUESTED]
        return {
            "terminal": self.id,
            "state": "fault" if self.client.health.state == "fault" else self.activity,
            "connectors": ",".join(self.connectors),
            "open_holds": len(holds),
            "last_result": self.last_result or "-",
            **self.payments.closing_view(self),
        }

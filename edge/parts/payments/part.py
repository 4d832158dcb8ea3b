"""Payment at the arch terminal (R-P1..R-P9, R-S1): the ``payments`` part.

The flow, as a driver sees it: plug the truck in, pick the connector on the
arch screen (control command ``arch_select``), present a card; the terminal
pre-authorises the site's amount and, when approved, the session starts. The
session stops at the arch (``arch_stop``, same card only), by the truck, by a
technician or by its cost cap; the energy times the tariff in force at the
start, plus VAT, is booked at once (never above the hold) and the session
gets its receipt link. A hold whose session never started is released.

This module is the part itself: ``Payments``, the capability the hub starts
(its lanes, the cost watch, the backstop tick, the control commands, its
status), recovery after a restart and the part's events. The rest lives
along its seams:

- ``ledger``: the payment ledger, the part's store (holds, calls, closings);
- ``flow``: the flow at the arch, from pre-authorisation to settlement;
- ``reconciliation``: the terminal's open reservations against the ledger,
  manual review, the 24-hour backstop;
- ``receipts``: receipts and each terminal's end-of-day;
- ``lane``: one arch terminal's client, lock and worker task.

``ArchFlow``, ``Reconciliation`` and ``Receipts`` hold the part's methods of
their seam and are mixed into ``Payments``: they share its hub, ledger and
lanes.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from edge.core.hub import Capability, NotFound, Refused
from edge.parts.payments.flow import ArchFlow, CapWatch
from edge.parts.payments.lane import TerminalLane
from edge.parts.payments.ledger import PaymentLedger, PaymentRecord, money
from edge.parts.payments.receipts import Receipts, closing_time, next_closing_at
from edge.parts.payments.reconciliation import RECONCILE_EVERY_S, Reconciliation
from state_machines.payment import CHARGING, FOUND, HELD, PENDING_STATES, REQUESTED, SETTLING

log = logging.getLogger("hubedge.payments")


class Payments(ArchFlow, Reconciliation, Receipts, Capability):
    """The payments part: arch terminals, the payment ledger, the flow at the arch,
    reconciliation, receipts and end-of-day."""

    name = "payments"

    def __init__(self, hub):
        super().__init__(hub)
        self.ledger = PaymentLedger(hub.store)
        self.tz = ZoneInfo(hub.cfg.hub.timezone)  # end-of-day times are local
        self.lanes: dict[str, TerminalLane] = {t.id: TerminalLane(self, t) for t in hub.cfg.terminals}
        self._watch: dict[str, CapWatch] = {}  # payment id -> cost-cap watch of a charging hold
        self._selecting: set[str] = set()  # connectors with a pre-authorisation running
        self._last_backstop = 0.0
        self._backstop_stops: set[str] = set()  # sessions with a backstop stop on its way
        hub.session_ended_hooks.append(self._on_session_ended)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self.lanes and not self.ledger.open_records():
            return
        self._recover()
        for lane in self.lanes.values():
            self._last_closing(lane)
            self.spawn_loop(f"terminal {lane.id}", lane.run)
        self.spawn_loop("cost watch", self._watch_costs)

    async def stop(self) -> None:
        for lane in self.lanes.values():
            try:
                await lane.client.close()
            except Exception:
                pass

    def _now(self) -> datetime:
        return self.hub.clock.now()

    def _recover(self) -> None:
        """After a start (or a crash): bring every open hold to a state the
        lanes and the watch can carry on from."""
        now = self._now()
        open_sessions = {s.payment_id: s for s in self.hub.sessions.open_sessions() if s.payment_id}
        for rec in self.ledger.open_records():
            if rec.terminal in self.lanes:
                self.lanes[rec.terminal].reconcile_due = True
            if rec.state == REQUESTED:
                with self.hub.store.transaction():
                    self.ledger.settle_open_steps(rec.id, "unknown", "controller restarted during the call", now)
                    self.ledger.change(rec, now, "decline", reason="interrupted: the controller restarted during the pre-authorisation")
                    if rec.kind == "session":
                        self._emit("payment.declined", rec)
                log.info("payment.recovered payment=%s action=declined", rec.id)
            elif rec.state == HELD:
                s = open_sessions.get(rec.id) or self._ended_session_of(rec)
                if s is not None and s.is_open:
                    self._link(rec, s.id)
                elif s is not None:
                    self._session_over(rec, s)
                else:
                    self._begin_release(rec, "the controller restarted before the session started")
            elif rec.state == CHARGING:
                s = self.hub.sessions.get(rec.session_id) if rec.session_id else None
                if s is None or not s.is_open:
                    self._session_over(rec, s)
                else:
                    self._watch[rec.id] = CapWatch(self._cap_wh(rec))
            elif rec.state == FOUND:
                self._begin_release(rec, rec.reason or "a hold the ledger did not know")
            elif rec.state == SETTLING and any(st["action"] == "settle" and st["outcome"] is None
                                               for st in self.ledger.steps(rec.id)):
                self._doubt(rec, None, "the controller restarted during the booking")

    def _ended_session_of(self, rec: PaymentRecord):
        if not rec.connector:
            return None
        for s in self.hub.sessions.query(connector=rec.connector, since=rec.created_at - timedelta(seconds=1), limit=20):
            if s.payment_id == rec.id:
                return s
        return None

    # --------------------------------------------------------------- events
    def _event(self, rec: PaymentRecord, **extra) -> dict:
        d = {
            "payment": rec.id,
            "session": rec.session_id,
            "terminal": rec.terminal,
            "connector": rec.connector,
            "hold": money(rec.hold, rec.currency),
        }
        if rec.receipt_no is not None:
            d["terminal_receipt"] = rec.receipt_no
        if rec.card_masked:
            d["card"] = rec.card_masked
        d.update(extra)
        return d

    def _emit(self, type_: str, rec: PaymentRecord, **extra) -> None:
        if type_ == "payment.declined":
            extra.setdefault("reason", rec.reason or "declined")
            if rec.result_code is not None:
                extra.setdefault("result_code", rec.result_code)
        self.hub.emit(type_, self._event(rec, **extra))

    # ------------------------------------------------------ the cloud's tariffs
    def sync_handlers(self) -> dict:
        """R-P8: the cloud's tariffs, kept in the site's currency only."""
        from edge.parts.payments.tariffs import apply_tariffs

        currency = self.hub.cfg.hub.currency
        return {"tariffs": lambda m: apply_tariffs(self.hub.store, m, currency=currency)}

    # ------------------------------------------------------ control commands
    def control_handlers(self) -> dict:
        return {
            "arch_select": self._arch_select,
            "arch_stop": self._arch_stop,
            "arch_receipt": self._arch_receipt,
            "payments": self._list,
            "payment_retry": self._retry,
            "payment_resolve": self._resolve,
            "terminal_end_of_day": self._terminal_end_of_day,
        }

    def _lane_for(self, args: dict) -> tuple[TerminalLane, str]:
        from edge.core.control import ControlError

        terminal, connector = args.get("terminal"), args.get("connector")
        if not isinstance(terminal, str) or not isinstance(connector, str) or not terminal or not connector:
            raise ControlError("bad_request", "give the terminal and the connector, e.g. {\"terminal\": \"T1\", \"connector\": \"C3\"}")
        lane = self.lanes.get(terminal)
        if lane is None:
            raise NotFound(f"no terminal {terminal!r} at this hub; configured: {', '.join(self.lanes) or 'none'}")
        if connector not in lane.connectors:
            raise Refused(
                f"terminal {terminal} does not serve connector {connector} (R-P7): pick one of {', '.join(lane.connectors)} "
                f"or pay at the arch of {connector}", code="not_served")
        if connector not in self.hub.connectors:
            raise NotFound(f"no connector {connector!r} at this hub")
        return lane, connector

    # ------------------------------------------------- lanes: next look
    def next_due_in(self, lane: TerminalLane) -> float:
        now = self._now()
        waits = [max(0.0, (r.next_attempt_at - now).total_seconds()) if r.next_attempt_at else 0.0
                 for r in self.ledger.open_records(lane.id) if r.state in PENDING_STATES]
        until_reconcile = max(1.0, RECONCILE_EVERY_S - (time.monotonic() - lane.last_reconcile))
        closing = next_closing_at(closing_time(lane.cfg.end_of_day), self.tz, self.ledger.last_closing(lane.id), now)
        if closing is not None:
            # Due while a driver is at the terminal: look again each second.
            waits.append(max(1.0, (closing - now).total_seconds()))
        return min([until_reconcile, 30.0] + waits)

    # ------------------------------------------------ ticks: backstop (R-P4)
    def tick(self, now: datetime) -> None:
        mono = time.monotonic()
        if mono - self._last_backstop < 30.0:
            return
        self._last_backstop = mono
        self.apply_backstop(now)

    # ------------------------------------------------------------ hubctl
    async def _list(self, args: dict, caller, progress) -> list:
        limit = args.get("limit", 50)
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            from edge.core.control import ControlError

            raise ControlError("bad_request", "limit must be a whole number from 1 to 10000")
        records = self.ledger.recent(limit, include_closed=bool(args.get("all", True)))
        return [r.view() for r in records]

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        if not self.lanes:
            return {}
        return {"terminals": [lane.view(self.ledger) for lane in self.lanes.values()], "payments": self.ledger.counts()}

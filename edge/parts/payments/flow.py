"""The flow at the arch (R-P1, R-P2, R-P3, R-P7): from the tap to the settlement.

The driver picks a connector on the arch screen and presents a card; the
terminal pre-authorises the site's amount (the hold) and, when approved,
the session starts. While it charges, the cost watch stops it before its
energy costs more than the hold (R-P2). It stops at the arch with the same
card only (R-P1), by the truck, by a technician or by the cost cap; the
energy times the tariff in force at the start, plus VAT, is booked at once,
never above the hold (R-P3). A hold whose session never started or never
charged is released. Settlements and releases are write-ahead calls
(``ledger``) and a failed one is retried with backoff.

Card numbers never reach this module: the driver gives the terminal's card
token and at most BIN + last four (R-P6).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Iterable, Mapping

from edge.core.hub import Refused
from edge.parts.payments.ledger import PaymentRecord, money, tariff_from_document
from edge.parts.payments.pricing import (
    Cost,
    Tariff,
    energy_cap_wh,
    preauthorization_amount,
    round_money,
    session_cost,
    settlement_amount,
)
from edge.parts.payments.reconciliation import NOT_OPEN_CODES, not_open_outcome, retry_delay_s
from state_machines.payment import CHARGING, HELD, PENDING_STATES, REVIEW, SETTLING

if TYPE_CHECKING:
    from edge.parts.payments.lane import TerminalLane

log = logging.getLogger("hubedge.payments")


# Time a charger takes to stop drawing power once told to stop.
STOP_ALLOWANCE_S = 1.0
# How long the driver may take to present the card at arch_stop.
READ_CARD_TIMEOUT_S = 30
# Smallest authorisation used to identify a card on terminals that cannot read
# one without paying (the hold is released at once).
CARD_CHECK_AMOUNT = Decimal("1.00")

DEFAULT_TARIFF_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)


# =========================================================== pure decisions
def hold_amount(net_or_gross: Decimal, vat_rate: Decimal, currency: str, includes_vat: bool) -> Decimal:
    """R-P1: what is asked of the card. The site's amount is excluding VAT
    unless the site says it includes VAT; the hold covers the VAT either way."""
    return preauthorization_amount(net_or_gross, vat_rate, currency, include_vat=not includes_vat)


def choose_tariff(synced: Iterable[Mapping], now: datetime, *, currency: str, price_per_kwh: Decimal,
                  vat_rate: Decimal) -> Tariff:
    """R-P8: the synced tariff in force at ``now`` in the site's currency, or
    the site's configured default when the cloud has sent none yet."""
    from edge.parts.payments.tariffs import tariff_in_force

    doc = tariff_in_force(list(synced), now, currency=currency)
    if doc is not None:
        return tariff_from_document(doc)
    return Tariff("site-default", currency, price_per_kwh, vat_rate, DEFAULT_TARIFF_FROM)


@dataclass(frozen=True)
class Settlement:
    amount: Decimal  # what the terminal books
    cost: Cost  # what the session cost at the tariff; amount == cost.gross unless capped
    capped: bool


def settlement_for(energy_wh: int, tariff: Tariff, hold: Decimal) -> Settlement:
    """R-P3: energy times the tariff at start plus VAT, in the minor unit,
    never above the hold. When capped, the cost shown is the hold split into
    net and VAT, so the receipt adds up to what was booked."""
    cost = session_cost(energy_wh, tariff)
    amount = settlement_amount(cost.gross, hold)
    if amount == cost.gross:
        return Settlement(amount, cost, False)
    net = round_money(amount / (1 + tariff.vat_rate), tariff.currency)
    return Settlement(amount, Cost(net=net, vat=amount - net, gross=amount, currency=tariff.currency), True)


def cost_cap_reached(energy_wh: int, rate_wh_per_s: float, cap_wh: int | None, lead_s: float) -> bool:
    """R-P2: stop now if the energy the charger will have delivered by the
    time a stop can take effect (``lead_s`` at the current rate) would cost
    more than the hold."""
    if cap_wh is None:
        return False
    return energy_wh + max(0.0, rate_wh_per_s) * lead_s >= cap_wh


def _no_clear_answer(error: Exception) -> str:
    """For the driver at the arch: how a pre-authorisation went unanswered."""
    from drivers.zvt import TerminalTimeout

    if isinstance(error, TerminalTimeout):
        return f"did not answer in time ({type(error).__name__})"
    return f"gave no clear answer ({type(error).__name__})"


def same_card(started: "PaymentRecord", token: str | None, masked: str | None) -> bool:
    """R-P1: the card at the arch is the one that started the session. The
    terminal's card token decides; a terminal that gives no token on either
    read falls back to BIN + last four (never the card number)."""
    if started.card_token and token:
        return started.card_token == token
    if not started.card_token and not token and started.card_masked and masked:
        return started.card_masked == masked
    return False


@dataclass
class CapWatch:
    """What the cost-cap watch knows of one bank-card session."""

    cap_wh: int | None
    meter_start_wh: int | None = None
    last_energy: int | None = None
    last_mono: float | None = None
    rate: float = 0.0  # Wh per second, from the last two meter changes
    stop_sent_at: float | None = None

    def observe(self, energy_wh: int, mono: float) -> None:
        if self.last_energy is not None and energy_wh != self.last_energy and self.last_mono is not None and mono > self.last_mono:
            self.rate = (energy_wh - self.last_energy) / (mono - self.last_mono)
        if energy_wh != self.last_energy:
            self.last_energy, self.last_mono = energy_wh, mono


# ================================================================ the part's side
class ArchFlow:
    """The flow at the arch (R-P1..R-P3, R-P7), mixed into ``Payments``: pick a
    connector, pre-authorise, start; stop with the same card; the cost watch;
    at the session's end the bill, and the settlement or release call."""

    # ---------------------------------------------------- arch: pick connector
    async def _arch_select(self, args: dict, caller, progress) -> dict:
        """R-P1/R-P2/R-C2: the driver picks a connector on the arch screen."""
        lane, connector = self._lane_for(args)
        c = self.hub.connectors[connector]
        if c.session_id:
            raise Refused(f"connector {connector} is already charging (session {c.session_id[:8]}): to stop it, choose stop "
                          f"and present the card that started it", code="busy")
        if c.state != "Preparing":
            raise Refused(f"connector {connector} is {c.state}: plug the cable into the truck first, then pick the connector "
                          f"again (R-C2)", code="not_plugged")
        if connector in self._selecting or lane.serving is not None:
            raise Refused(f"terminal {lane.id} is busy with another card: wait until its screen is free, then pick again",
                          code="busy")
        self._selecting.add(connector)
        lane.serving = connector
        try:
            return await self._preauthorize_and_start(lane, connector, progress)
        finally:
            lane.serving = None
            self._selecting.discard(connector)

    async def _preauthorize_and_start(self, lane: TerminalLane, connector: str, progress) -> dict:
        hubcfg = self.hub.cfg.hub
        now = self._now()
        tariff = self.tariff_at(now)
        hold = hold_amount(hubcfg.preauth_amount, tariff.vat_rate, tariff.currency, hubcfg.preauth_amount_includes_vat)
        async with lane.lock:
            if not await lane.ensure_connected():
                raise Refused(f"terminal {lane.id} is not answering ({lane.last_result}): use another arch or call the "
                              f"operator; nothing was charged", code="device_unavailable")
            rec = self.ledger.create(terminal=lane.id, connector=connector, kind="session", currency=tariff.currency,
                                     hold=hold, now=now, tariff=tariff)
            step = self.ledger.begin_step(rec.id, "preauthorize", hold, now)
            await self.hub.store.durable()
            log.info("payment.requested payment=%s terminal=%s connector=%s hold=%s", rec.id, lane.id, connector, hold)
            result, error = await self._with_screen(lane, progress, lane.client.preauthorize(hold, tariff.currency))
            now = self._now()
            error = error or self._foreign_approval(lane, rec, result)
            if error is not None:
                lane.failed(error)
                lane.reconcile_due = True  # a reservation may exist that the ledger cannot name
                reason = f"the terminal {_no_clear_answer(error)}: try again, or use another arch"
                with self.hub.store.transaction():
                    self.ledger.end_step(rec.id, step, "unknown" if error.maybe_done else "failed", str(error), now)
                    self.ledger.change(rec, now, "decline", reason=reason)
                    self._emit("payment.declined", rec, reason=reason)
                lane.wake()
                return {"approved": False, "payment": rec.id, "reason": reason}
            lane.last_result = result.reason
            if not result.ok:
                if result.receipt_no is not None:
                    # Approved, then cancelled by the terminal: reconciliation checks that it
                    # really holds nothing under that receipt (and releases it if it does).
                    lane.reconcile_due = True
                    lane.wake()
                    log.warning("payment.approval_withdrawn payment=%s receipt=%s code=%s", rec.id,
                                result.receipt_no, result.result_code)
                with self.hub.store.transaction():
                    self.ledger.end_step(rec.id, step, "refused", result.reason, now)
                    self.ledger.change(rec, now, "decline", reason=result.reason, result_code=result.result_code,
                                       receipt_no=result.receipt_no)  # an approval the terminal withdrew
                    self._emit("payment.declined", rec)
                log.info("payment.declined payment=%s connector=%s code=%s", rec.id, connector, result.result_code)
                return {"approved": False, "payment": rec.id, "reason": result.reason}
            with self.hub.store.transaction():
                self.ledger.end_step(rec.id, step, "done", "approved", now)
                self.ledger.change(
                    rec, now, "approve", receipt_no=result.receipt_no, trace_no=result.trace_no,
                    card_token=result.card_token, card_masked=result.masked_pan, card_name=result.card_name,
                    held_at=now, hold=result.amount if result.amount is not None else hold,
                )
            log.info("payment.approved payment=%s connector=%s receipt=%s hold=%s", rec.id, connector, rec.receipt_no, rec.hold)
        return await self._start_paid_session(rec, tariff)

    def _foreign_approval(self, lane: TerminalLane, rec: PaymentRecord, result):
        """An approval without a receipt number, or naming a reservation the
        ledger already holds open on this terminal, is no answer to this
        pre-authorisation (a terminal never gives two open reservations one
        number): its outcome is unknown, and reconciliation finds what the
        terminal really holds."""
        from drivers.zvt import TerminalProtocolError

        if result is None or not result.ok:
            return None
        n = result.receipt_no
        if n is not None and not any(r.receipt_no == n and r.id != rec.id for r in self.ledger.open_records(lane.id)):
            return None
        what = f"names receipt {n}, which an open hold already has" if n is not None else "has no receipt number"
        log.warning("payment.foreign_approval payment=%s terminal=%s receipt=%s", rec.id, lane.id, n)
        err = TerminalProtocolError(f"the terminal's approval {what}: it answers another call")
        err.maybe_done = True
        return err

    async def _with_screen(self, lane: TerminalLane, progress, call):
        """Run a terminal call, passing the terminal's screen texts and a
        heartbeat to the caller, so the arch screen (and its socket) knows
        the card holder is still at it."""
        from drivers.zvt import TerminalError

        async def show(text: str) -> None:
            try:
                await progress({"terminal": lane.id, "screen": text})
            except Exception:
                pass

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(2.0)
                await show("waiting for the card holder")

        lane._texts = show
        lane.activity = "busy"
        beat = asyncio.get_running_loop().create_task(heartbeat())
        try:
            return await call, None
        except TerminalError as exc:
            return None, exc
        finally:
            beat.cancel()
            lane._texts = None
            lane.activity = "idle" if lane.connected else "down"

    async def _start_paid_session(self, rec: PaymentRecord, tariff: Tariff) -> dict:
        connector = rec.connector
        c = self.hub.connectors[connector]
        answer = {"approved": True, "payment": rec.id, "hold": money(rec.hold, rec.currency)}
        if c.state != "Preparing" or c.session_id:
            reason = f"the truck was unplugged during the pre-authorisation (connector {connector} is {c.state})"
            self._begin_release(rec, reason)
            return {**answer, "started": False, "reason": reason + ": the hold is released; plug in and pick the connector again"}
        try:
            s = await self.hub.start_session(
                connector, method="bank_card", token=rec.card_token or f"terminal:{rec.terminal}:{rec.receipt_no}",
                token_masked=rec.card_masked or rec.card_name, payment_id=rec.id, tariff=tariff,
            )
        except Refused as exc:
            fresh = self.ledger.get(rec.id)
            if fresh and fresh.state == HELD:
                self._begin_release(fresh, f"the session could not start: {exc}")
            return {**answer, "started": False, "reason": f"{exc}; the hold is released"}
        fresh = self.ledger.get(rec.id)
        if fresh is None or fresh.state != HELD:
            # The session ended while its start was being sent (truck unplugged):
            # the end-of-session hook has already released or billed the hold.
            return {**answer, "started": False, "session": s.id, "reason": "the session ended as it started; the hold is released"}
        self._link(fresh, s.id)
        return {**answer, "started": True, "session": s.id,
                "message": f"approved: charging starts on {connector}; stop it here with the same card"}

    def _link(self, rec: PaymentRecord, session_id: str) -> None:
        now = self._now()
        with self.hub.store.transaction():
            self.ledger.change(rec, now, "begin_charging", session_id=session_id)
            self._emit("payment.preauthorized", rec)
        self._watch[rec.id] = CapWatch(self._cap_wh(rec))
        log.info("payment.charging payment=%s session=%s", rec.id, session_id)

    # ------------------------------------------------------ arch: stop session
    async def _arch_stop(self, args: dict, caller, progress) -> dict:
        """R-P1: the driver re-selects the connector at the arch, sees the
        session and chooses stop; only the card that started it may."""
        lane, connector = self._lane_for(args)
        c = self.hub.connectors[connector]
        if not c.session_id:
            raise Refused(f"connector {connector} has no session running: nothing to stop", code="not_open")
        s = self.hub.sessions.get(c.session_id)
        rec = self.ledger.get(s.payment_id) if s and s.payment_id else None
        if s is None or rec is None or s.method != "bank_card":
            raise Refused(f"the session on {connector} was not paid at the arch: stop it with the card you tapped at the "
                          f"charger's reader, or ask the operator", code="not_bank_card")
        if lane.serving is not None:
            raise Refused(f"terminal {lane.id} is busy with another card: wait until its screen is free", code="busy")
        overview = self._overview(rec, s)
        lane.serving = connector
        try:
            async with lane.lock:
                if not await lane.ensure_connected():
                    raise Refused(f"terminal {lane.id} is not answering: the session goes on; stop it at another arch "
                                  f"terminal or ask the operator", code="device_unavailable")
                token, masked, why = await self._identify_card(lane, progress)
        finally:
            lane.serving = None
        if why is not None:
            return {"stopped": False, "session": s.id, "reason": why, **overview}
        if not same_card(rec, token, masked):
            log.info("payment.stop_refused payment=%s reason=other_card", rec.id)
            return {"stopped": False, "session": s.id, **overview,
                    "reason": "this is not the card that started the session: present the card you paid with"}
        await self.hub.stop_session(s.id, "arch_stop")
        return {"stopped": True, "session": s.id, **overview,
                "message": "stopping: the final amount is booked when the charger confirms, and the receipt link follows"}

    def _overview(self, rec: PaymentRecord, s) -> dict:
        reading = self.hub.readings.get(s.connector)
        energy = max(0, reading.energy_wh - (s.meter_start_wh or 0)) if reading and reading.energy_wh is not None and s.meter_start_wh is not None else 0
        tariff = rec.tariff_obj
        cost = session_cost(int(energy), tariff) if tariff else None
        return {"energy_wh": int(energy), "cost_so_far": money(cost.gross, rec.currency) if cost else None,
                "hold": money(rec.hold, rec.currency)}

    async def _identify_card(self, lane: TerminalLane, progress) -> tuple[str | None, str | None, str | None]:
        """(card token, masked card, why not). Reads the card (06 C0); a
        terminal that cannot read without paying gets the smallest
        authorisation instead, released at once and kept in the ledger."""
        result, error = await self._with_screen(lane, progress, lane.client.read_card(READ_CARD_TIMEOUT_S))
        if error is not None:
            lane.failed(error)
            return None, None, f"the terminal could not read the card ({type(error).__name__}): try again"
        lane.last_result = result.reason
        if result.ok:
            return result.card_token, result.masked_pan, None
        if result.result_code != 0x83:
            return None, None, result.reason
        return await self._card_check(lane, progress)

    async def _card_check(self, lane: TerminalLane, progress) -> tuple[str | None, str | None, str | None]:
        now = self._now()
        cur = self.hub.cfg.hub.currency
        rec = self.ledger.create(terminal=lane.id, connector=None, kind="card_check", currency=cur,
                                 hold=CARD_CHECK_AMOUNT, now=now)
        step = self.ledger.begin_step(rec.id, "preauthorize", CARD_CHECK_AMOUNT, now)
        await self.hub.store.durable()
        result, error = await self._with_screen(lane, progress, lane.client.preauthorize(CARD_CHECK_AMOUNT, cur))
        now = self._now()
        error = error or self._foreign_approval(lane, rec, result)
        if error is not None or not result.ok:
            if error is not None:
                lane.failed(error)
                lane.reconcile_due = True
            reason = f"the terminal {_no_clear_answer(error)}: try again" if error is not None else result.reason
            with self.hub.store.transaction():
                self.ledger.end_step(rec.id, step, "unknown" if error is not None else "refused", reason, now)
                self.ledger.change(rec, now, "decline", reason=reason)
            return None, None, reason
        with self.hub.store.transaction():
            self.ledger.end_step(rec.id, step, "done", "approved", now)
            self.ledger.change(rec, now, "approve", receipt_no=result.receipt_no, trace_no=result.trace_no,
                               card_token=result.card_token, card_masked=result.masked_pan, held_at=now)
            self.ledger.change(rec, now, "release", reason="card check at the arch", next_attempt_at=now)
        await self._attempt(lane, rec)  # lock held by the caller
        return result.card_token, result.masked_pan, None

    # ------------------------------------------------------ session ends
    def _on_session_ended(self, s) -> None:
        if not s.payment_id:
            return
        rec = self.ledger.get(s.payment_id)
        if rec is None:
            return
        self._watch.pop(rec.id, None)
        self._session_over(rec, s)

    def _session_over(self, rec: PaymentRecord, s) -> None:
        """The session of a hold has ended (or never began): bill or release."""
        if rec.state not in (HELD, CHARGING):
            return
        if s is None or s.status == "failed" or not s.energy_wh:
            why = (s.stop_reason if s is not None and s.status == "failed" else None) or "no energy was delivered"
            self._begin_release(rec, f"session did not charge: {why}", session=s)
            return
        tariff = rec.tariff_obj or self.tariff_at(s.started_at)
        bill = settlement_for(int(s.energy_wh), tariff, rec.hold)
        if bill.amount <= 0:
            self._begin_release(rec, "the energy delivered costs less than the smallest amount", session=s)
            return
        now = self._now()
        with self.hub.store.transaction():
            if rec.state == HELD:
                rec.session_id = s.id
                self._emit("payment.preauthorized", rec)
            self.ledger.change(
                rec, now, "bill", session_id=s.id, energy_wh=int(s.energy_wh), settle_amount=bill.amount,
                cost_net=bill.cost.net, cost_vat=bill.cost.vat, cost_gross=bill.cost.gross, next_attempt_at=now,
            )
            self._write_session_cost(s.id, tariff, bill.cost)  # the session's cost with the amount to book
        log.info("payment.settling payment=%s session=%s energy_wh=%s amount=%s capped=%s",
                 rec.id, s.id, s.energy_wh, bill.amount, bill.capped)
        self._wake(rec.terminal)

    def _begin_release(self, rec: PaymentRecord, reason: str, session=None) -> None:
        now = self._now()
        with self.hub.store.transaction():
            if rec.state == HELD:
                if session is not None:
                    rec.session_id = session.id
                if rec.kind == "session":
                    self._emit("payment.preauthorized", rec)
            self.ledger.change(rec, now, "release", reason=reason, next_attempt_at=now,
                               session_id=session.id if session is not None else rec.session_id)
        log.info("payment.releasing payment=%s reason=%s", rec.id, reason)
        self._watch.pop(rec.id, None)
        self._wake(rec.terminal)

    def _wake(self, terminal: str) -> None:
        lane = self.lanes.get(terminal)
        if lane is not None:
            lane.wake()

    # ------------------------------------------------- settle and release
    async def run_due(self, lane: TerminalLane) -> None:
        for rec in self.ledger.due(lane.id, self._now()):
            if not lane.connected:
                return
            async with lane.lock:
                await self._attempt(lane, rec)

    async def _attempt(self, lane: TerminalLane, rec: PaymentRecord) -> None:
        """One settlement or release call, write-ahead. The lane's lock is held.

        It is also how the hub asks the terminal about one reservation: the
        terminal takes the call only while the reservation is open, and
        answers B8/B4 when it is not (``not_open_outcome``). A booking whose
        answer is lost sends the hold to review; never released from there."""
        from drivers.zvt import TerminalError

        fresh = self.ledger.get(rec.id)
        if fresh is None or fresh.state not in PENDING_STATES:
            return
        rec = fresh
        settle = rec.state in (SETTLING, REVIEW)
        action = "settle" if settle else "release"
        amount = rec.settle_amount if settle else rec.hold
        now = self._now()
        step = self.ledger.begin_step(rec.id, action, amount, now)
        await self.hub.store.durable()
        lane.activity = "busy"
        try:
            if settle:
                result = await lane.client.book_preauth(rec.receipt_no, rec.settle_amount, preauthorized=rec.hold,
                                                        currency=rec.currency)
            else:
                result = await lane.client.reverse_preauth(rec.receipt_no, rec.currency)
        except TerminalError as exc:
            lane.failed(exc)
            if settle and exc.maybe_done:
                self._doubt(rec, step, str(exc))
            else:
                self._retry_later(rec, step, "unknown" if exc.maybe_done else "failed", str(exc))
            return
        finally:
            lane.activity = "idle" if lane.connected else "down"
        lane.last_result = f"{action}: {result.reason}"
        if result.ok and result.receipt_no != rec.receipt_no:
            # Another reservation's answer (the driver matches them; this is the ledger's own check).
            detail = f"the terminal answered about receipt {result.receipt_no}, not {rec.receipt_no}"
            if settle:
                self._doubt(rec, step, detail)
            else:
                self._retry_later(rec, step, "unknown", detail)
        elif result.ok:
            self._finish(rec, step, action, "done", f"{action} done by the terminal")
        elif result.result_code in NOT_OPEN_CODES:
            outcome = not_open_outcome(action, self.ledger.maybe_done(rec.id, "settle", before=step))
            detail = f"terminal: reservation no longer open ({result.reason})"
            if outcome == "settled":
                self._finish(rec, step, action, "done", detail + " after our earlier booking reached it")
            elif outcome == "released":
                self._finish(rec, step, action, "done", detail)
            elif outcome == "lapsed":
                await self._lapse_unless_listed(lane, rec, step, result.reason)
            else:
                self._doubt(rec, step, detail + ", but a booking may have reached it before")
        else:
            self._retry_later(rec, step, "refused", result.reason)

    def _retry_later(self, rec: PaymentRecord, step: int, outcome: str, detail: str) -> None:
        now = self._now()
        attempts = rec.attempts + 1
        delay = retry_delay_s(attempts)
        with self.hub.store.transaction():
            self.ledger.end_step(rec.id, step, outcome, detail, now)
            self.ledger.change(rec, now, attempts=attempts, last_error=detail[:300],
                               next_attempt_at=now + timedelta(seconds=delay))
        log.warning("payment.retry_scheduled payment=%s state=%s attempts=%d in_s=%.0f outcome=%s",
                    rec.id, rec.state, attempts, delay, outcome)

    def _finish(self, rec: PaymentRecord, step: int | None, action: str, outcome: str, detail: str) -> None:
        """The hold is settled or released: the step's outcome, earlier calls
        left open by a crash, the hold's state and its event in one commit. A
        kill between them must not leave the call closed and the hold still
        settling: the restart would no longer know the booking was sent, and
        would take the terminal's empty list for a lapse."""
        now = self._now()
        with self.hub.store.transaction():
            if step is not None:
                self.ledger.end_step(rec.id, step, outcome, detail, now)
                self.ledger.settle_open_steps(rec.id, "superseded", f"{action} confirmed by a later call", now)
            else:
                self.ledger.settle_open_steps(rec.id, outcome, detail, now)
            if action == "settle":
                receipt_id = uuid.uuid4().hex
                self.ledger.change(rec, now, "confirm_settlement", receipt_id=receipt_id, last_error=None)
                cost = Cost(rec.cost_net, rec.cost_vat, rec.cost_gross, rec.currency)
                url = self.hub.cfg.hub.receipt_base_url + receipt_id
                self._emit(
                    "payment.settled", rec, amount=money(rec.settle_amount, rec.currency),
                    cost={"net": str(cost.net), "vat": str(cost.vat), "gross": str(cost.gross), "currency": rec.currency},
                    energy_wh=rec.energy_wh or 0, tariff=rec.tariff, receipt={"id": receipt_id, "url": url},
                    receipt_url=url,
                )
                if rec.session_id and rec.tariff_obj is not None:
                    # R-P5: the receipt link exists once the money is booked, and in the
                    # same commit: a kill in between must not leave it settled without one.
                    self._write_session_cost(rec.session_id, rec.tariff_obj, cost, receipt_id)
            else:
                self.ledger.change(rec, now, "confirm_release", last_error=None)
                if rec.kind != "card_check":
                    self._emit("payment.released", rec, reason=rec.reason or "released")
        self._terminal_changed(rec.terminal)
        log.info("payment.%s payment=%s", "settled" if action == "settle" else "released", rec.id)

    # ------------------------------------------------------------ cost cap
    def _cap_wh(self, rec: PaymentRecord) -> int | None:
        tariff = rec.tariff_obj
        if tariff is None or rec.hold is None:
            return None
        return energy_cap_wh(rec.hold, tariff)

    async def _watch_costs(self) -> None:
        interval = min(0.5, self.hub.cfg.charging.poll_interval_s)
        lead = self.hub.cfg.charging.poll_interval_s + interval + STOP_ALLOWANCE_S
        while not self.hub.stopping:
            try:
                self._check_costs(lead)
            except Exception:
                log.exception("payment.cost_watch_failed")
            await asyncio.sleep(interval)

    def _check_costs(self, lead_s: float) -> None:
        mono = time.monotonic()
        for pid, w in list(self._watch.items()):
            rec = self.ledger.get(pid)
            if rec is None or rec.state != CHARGING:
                self._watch.pop(pid, None)
                continue
            if w.meter_start_wh is None:
                s = self.hub.sessions.get(rec.session_id)
                if s is None or s.meter_start_wh is None:
                    continue
                w.meter_start_wh = s.meter_start_wh
            reading = self.hub.readings.get(rec.connector)
            if reading is None or reading.energy_wh is None:
                continue  # no energy figure yet (an OCPP station sends it with its meter values)
            w.observe(reading.energy_wh, mono)
            energy = reading.energy_wh - w.meter_start_wh
            if not cost_cap_reached(energy, w.rate, w.cap_wh, lead_s):
                continue
            if w.stop_sent_at is not None and mono - w.stop_sent_at < 5.0:
                continue
            w.stop_sent_at = mono
            log.info("payment.cost_cap payment=%s session=%s energy_wh=%d cap_wh=%s rate_wh_s=%.0f",
                     pid, rec.session_id, energy, w.cap_wh, w.rate)
            self.hub.spawn(self._stop_for_cap(rec.session_id))

    async def _stop_for_cap(self, session_id: str) -> None:
        try:
            await self.hub.stop_session(session_id, "cost_cap")
        except Refused as exc:
            log.warning("payment.cost_cap_stop_failed session=%s reason=%s", session_id, exc)

    # ------------------------------------------------------------ tariffs
    def tariff_at(self, now: datetime) -> Tariff:
        hubcfg = self.hub.cfg.hub
        try:
            synced = self.hub.store.documents("tariffs").all()
        except Exception:
            synced = []
        return choose_tariff(synced, now, currency=hubcfg.currency, price_per_kwh=hubcfg.price_per_kwh,
                             vat_rate=hubcfg.vat_rate)

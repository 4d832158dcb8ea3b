"""Reconciliation with the terminal, manual review and the 24-hour backstop (R-P4, R-T3).

At start-up and periodically each terminal's open reservations are compared
with the ledger: one the ledger does not know is released, and each hold the
terminal's answer does not name (a terminal may name only the first open
one) is asked about on its own, by the call the ledger owes on it. A booking
whose answer never came sits in review (never released) until the terminal
says what became of it, or a technician records it from the acquirer's
records (control command payment_resolve; payment_retry asks the terminal now). A
hold open for 24 hours is released once its session has stopped.

The pure decisions (backoff, the reconciliation plan, the backstop) are
plain functions, unit-tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Iterable

from edge.core.hub import NotFound, Refused
from edge.parts.payments.ledger import PaymentRecord, money
from state_machines.payment import CHARGING, FINAL_STATES, FOUND, HELD, PENDING_STATES, REVIEW, SETTLING

if TYPE_CHECKING:
    from edge.parts.payments.lane import TerminalLane

log = logging.getLogger("hubedge.payments")


# R-P4 (FAQ): a hold is never left open longer than this.
BACKSTOP = timedelta(hours=24)
# Retries of a failed settlement or release: 5 s, 10 s, 20 s ... at most 5 min.
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
# How often a terminal's open reservations are compared with the ledger.
RECONCILE_EVERY_S = 600.0
# Questions of one reconciliation at most: a terminal that names one open
# reservation at a time is asked again after each one the hub closes.
RECONCILE_ROUNDS = 20

# ZVT result codes meaning "that reservation is not open (any more)".
NOT_OPEN_CODES = frozenset({0xB8, 0xB4})


# =========================================================== pure decisions
def retry_delay_s(attempts: int) -> float:
    """Backoff after the ``attempts``-th failed try (1, 2, ...)."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * (2 ** max(0, attempts - 1)))


def backstop_decision(state: str, held_at: datetime | None, now: datetime, *, clock_trusted: bool,
                      session_open: bool, booking_may_have_reached: bool, booking_refused: bool) -> str:
    """R-P4: what to do with a hold 24 hours after its approval.

    - none: not open that long (or nothing held);
    - wait_for_clock: it looks due, but the hub's clock never synced (a Pi
      without a real-time clock starts in the past and jumps): no time-based
      decision on such a clock;
    - stop_session: its session still charges: stop it and keep the hold
      until the session has really stopped (it is then billed), retrying
      the stop; never release under a session still drawing energy;
    - release: no session (or it has ended and was never billed), a found
      hold, or a booking the terminal answered with a refusal;
    - doubt: a booking may have reached the terminal: review, never release;
    - keep: a booking never reached the terminal (it is down) or one in
      review: book it when the terminal answers; releasing needs the same
      terminal anyway."""
    if state not in (HELD, CHARGING, SETTLING, REVIEW, FOUND) or held_at is None or now - held_at < BACKSTOP:
        return "none"
    if not clock_trusted:
        return "wait_for_clock"
    if state in (HELD, CHARGING):
        return "stop_session" if session_open else "release"
    if state == FOUND:
        return "release"
    if state == REVIEW:
        return "keep"
    if booking_may_have_reached:
        return "doubt"
    return "release" if booking_refused else "keep"


def not_open_outcome(action: str, booking_may_have_reached: bool) -> str:
    """What the terminal's definite word that a reservation is no longer
    open (B8/B4 to a call about it, or "nothing open") means for a hold
    whose ``action`` (settle | release) is owed: settled (a booking of ours
    reached it), lapsed (closed before any booking of ours), released, or
    review (a release owed on a hold a booking may have reached: booked or
    not, only the acquirer's records can tell)."""
    if action == "settle":
        return "settled" if booking_may_have_reached else "lapsed"
    return "review" if booking_may_have_reached else "released"


@dataclass(frozen=True)
class ReconcileAction:
    # release_unknown | ask | confirm_settled | lapse | confirm_released | doubt | terminal_lost_hold
    kind: str
    receipt_no: int | None = None
    payment_id: str | None = None


_CONCLUDED = {"settled": "confirm_settled", "lapsed": "lapse", "released": "confirm_released", "review": "doubt"}


def reconcile_plan(named: Iterable[int], complete: bool, records: Iterable["PaymentRecord"],
                   maybe_done) -> list[ReconcileAction]:
    """Compare a terminal's answer about its open reservations with the
    ledger's open holds on that terminal (R-P4).

    ``named`` are receipts the terminal said are open; ``complete`` is True
    only when it said nothing else is open (receipt FF FF). A terminal may
    name only the first open reservation (Feig cVEND), so a hold it does not
    name is concluded about only on a complete answer; otherwise it is asked
    about on its own (``ask``: the call the ledger owes on it, which the
    terminal takes only while the reservation is open). ``maybe_done(id,
    action)`` says whether a call for that action may have reached the
    terminal.

    - named, no open hold in the ledger: release it (a crash between the
      approval and the ledger's write, an approval whose answer was lost);
    - named, a call owed on it (settling, review, releasing, found): ask;
    - not open (complete answer): see ``not_open_outcome``; a hold still
      held or charging is reported (its settlement will tell);
    - not named in a partial answer: ask when a call is owed; a hold whose
      session runs is left alone, concluding nothing.
    Receipt numbers restart on terminals, so only open holds are matched."""
    named = set(named)
    live = [r for r in records if r.state not in FINAL_STATES and r.receipt_no is not None]
    known = {r.receipt_no for r in live}
    plan = [ReconcileAction("release_unknown", receipt_no=n) for n in sorted(named - known)]
    for r in live:
        owed = r.state in PENDING_STATES or r.state == FOUND
        if r.receipt_no in named or not complete:
            if owed:
                plan.append(ReconcileAction("ask", receipt_no=r.receipt_no, payment_id=r.id))
            continue
        if owed:
            action = "settle" if r.state in (SETTLING, REVIEW) else "release"
            kind = _CONCLUDED[not_open_outcome(action, maybe_done(r.id, "settle"))]
        else:
            kind = "terminal_lost_hold"
        plan.append(ReconcileAction(kind, receipt_no=r.receipt_no, payment_id=r.id))
    return plan


# ================================================================ the part's side
class Reconciliation:
    """The part's reconciliation (R-P4, R-T3), mixed into ``Payments``: the terminal's
    open reservations against the ledger, holds in review, the 24-hour backstop,
    and the technician's retry and resolve."""

    # ------------------------------------------------- lapse and review
    def _lapse(self, rec: PaymentRecord, step: int | None, detail: str,
               reason: str | None = None) -> None:
        now = self._now()
        with self.hub.store.transaction():
            if step is not None:
                self.ledger.end_step(rec.id, step, "refused", detail, now)
            self.ledger.change(rec, now, "lapse", last_error=None,
                               reason=reason or f"the terminal no longer held the reservation: {detail}")
            self._emit("payment.lapsed", rec, amount=money(rec.settle_amount, rec.currency), reason=rec.reason)
        self._terminal_changed(rec.terminal)
        log.warning("payment.lapsed payment=%s session=%s", rec.id, rec.session_id)

    def _lapse_reason(self, rec: PaymentRecord, why: str) -> str:
        """For payment.lapsed: what happened to the hold and what to do."""
        amount = money(rec.settle_amount, rec.currency)
        owed = f"{amount['amount']} {amount['currency']}" if amount else "the session's amount"
        session = f"session {rec.session_id[:8]}" if rec.session_id else "the session"
        return (f"terminal {rec.terminal} no longer held reservation {rec.receipt_no} when the hub came to book {owed} "
                f"for {session} ({why}): nothing was booked on the card. The terminal closed the reservation by "
                f"itself (an automatic reversal after a result it took as unacknowledged, or a reset). Bill {session} "
                f"another way, and check receipt {rec.receipt_no} in terminal {rec.terminal}'s journal if the driver "
                f"asks about it")

    async def _lapse_unless_listed(self, lane: TerminalLane, rec: PaymentRecord, step: int, answer: str) -> None:
        """R-P4: a booking answered "not open" (B8/B4) on a hold the ledger
        holds open, no booking of ours having reached the terminal before.
        The terminal closed the reservation by itself, or the answer was not
        about it: before the hold is taken for gone (payment.lapsed), the
        terminal's list of open reservations is asked. One that names it
        contradicts the answer, and one that names others may hold it behind
        them (a terminal may name only its first): the hold stays settling
        and is asked about again with backoff. Only "nothing open", or a
        terminal that cannot list its reservations at all, confirms it."""
        from drivers.zvt import TerminalError, TerminalRefused

        detail = f"terminal: reservation {rec.receipt_no} no longer open ({answer})"
        try:
            listing = await lane.client.open_preauthorizations()
        except TerminalRefused as exc:
            self._open_query_refused(lane, exc)
            why = f"{answer}; the terminal cannot list its open reservations to confirm it"
            self._lapse(rec, step, detail, reason=self._lapse_reason(rec, why))
            return
        except TerminalError as exc:
            lane.failed(exc)
            self._retry_later(rec, step, "refused", f"{detail}, not confirmed: the open query failed ({exc})")
            return
        if rec.receipt_no in listing.named or not listing.complete:
            seen = "lists it open" if rec.receipt_no in listing.named else (
                f"names only {', '.join(map(str, sorted(listing.named)))} as open, and may hold it behind them")
            log.warning("payment.not_open_unconfirmed payment=%s receipt=%s listed=%s", rec.id, rec.receipt_no,
                        sorted(listing.named))
            lane.listing_partial = lane.listing_partial or not listing.complete
            self._retry_later(rec, step, "refused", f"{detail}, but the terminal {seen}: the booking is tried again")
            return
        self._lapse(rec, step, detail, reason=self._lapse_reason(
            rec, f"{answer}, and the terminal holds no reservation open"))

    def _doubt(self, rec: PaymentRecord, step: int | None, detail: str) -> None:
        """A booking may have reached the terminal and its answer never came:
        the hold goes to review (once, with its event) and the terminal is
        asked again with backoff; never released from here."""
        now = self._now()
        attempts = rec.attempts + 1
        delay = retry_delay_s(attempts)
        amount = money(rec.settle_amount, rec.currency)
        booking = f"{amount['amount']} {amount['currency']}" if amount else "the amount"
        message = (f"the booking of {booking} on receipt {rec.receipt_no} at terminal {rec.terminal} may have gone "
                   f"through, but the terminal did not confirm it ({detail}). The hub keeps asking the terminal; "
                   f"`hubctl payment retry {rec.id[:8]}` asks now. If the terminal can no longer tell (replaced, "
                   f"reset, broken), look up receipt {rec.receipt_no} of terminal {rec.terminal} in the acquirer's "
                   f"records and record it with `hubctl payment resolve {rec.id[:8]} --booked` or `--not-booked`")
        with self.hub.store.transaction():
            if step is not None:
                self.ledger.end_step(rec.id, step, "unknown", detail, now)
            else:
                self.ledger.settle_open_steps(rec.id, "unknown", detail, now)
            fresh = rec.state != REVIEW
            self.ledger.change(rec, now, "doubt" if fresh else None, attempts=attempts, last_error=detail[:300],
                               next_attempt_at=now + timedelta(seconds=delay))
            if fresh:
                self._emit("payment.manual_review", rec, amount=amount, reason=detail[:500], message=message)
        log.warning("payment.review payment=%s receipt=%s attempts=%d in_s=%.0f reason=%s",
                    rec.id, rec.receipt_no, attempts, delay, detail)

    def _terminal_changed(self, terminal: str) -> None:
        """A reservation was closed: on a terminal that names only its first
        open one, the next one may be named now."""
        lane = self.lanes.get(terminal)
        if lane is not None and lane.listing_partial:
            lane.reconcile_due = True

    # ---------------------------------------------------------- reconcile
    async def reconcile(self, lane: TerminalLane) -> None:
        """R-P4: the terminal's open reservations against the ledger, until
        every hold of the ledger on it has a definite answer or is left
        with its running session. The terminal is asked for its open
        reservations; each hold the answer does not settle is asked about on
        its own; after each reservation closed the list is asked for again,
        as a terminal that names one at a time then names the next."""
        from drivers.zvt import TerminalError, TerminalRefused

        async with lane.lock:
            asked: set[str] = set()
            complete = False
            for _round in range(RECONCILE_ROUNDS):
                try:
                    listing = await lane.client.open_preauthorizations()
                    named, complete = listing.named, listing.complete
                except TerminalRefused as exc:
                    self._open_query_refused(lane, exc)
                    named, complete = frozenset(), False
                except TerminalError as exc:
                    lane.failed(exc)
                    return
                plan = reconcile_plan(named, complete, self.ledger.open_records(lane.id), self.ledger.maybe_done)
                closed_any = False
                for action in plan:
                    if action.kind == "ask":
                        if action.payment_id in asked:
                            continue
                        asked.add(action.payment_id)
                    closed_any |= await self._apply(lane, action)
                    if not lane.connected:
                        return  # the next round of the lane reconnects and reconciles again
                if not closed_any or not named:
                    break
            lane.listing_partial = not complete
            lane.reconcile_due = False
            lane.last_reconcile = time.monotonic()

    def _open_query_refused(self, lane: TerminalLane, exc: Exception) -> None:
        if lane.open_query_refused:
            return
        lane.open_query_refused = True
        message = (f"terminal {lane.id} refused the query for open reservations ({exc}): the hub cannot check that "
                   f"no reservation is left open on it (R-P4). The holds the hub recorded are still booked or "
                   f"released one by one, but a reservation it never recorded (power lost during a payment) cannot "
                   f"be found. Enable the open pre-authorisation query (06 23) in the terminal's ZVT settings; until "
                   f"then check its journal for open reservations after each outage and reverse them at the terminal")
        log.warning("terminal.open_query_refused terminal=%s reason=%s", lane.id, exc)
        self.hub.emit("device.alarm", {"alarm": "terminal_open_query_refused", "message": message})

    async def _apply(self, lane: TerminalLane, action: ReconcileAction) -> bool:
        """Carry out one step of a reconciliation plan; True when a
        reservation at the terminal was closed by it."""
        now = self._now()
        if action.kind == "release_unknown":
            rec = self.ledger.create(terminal=lane.id, connector=None, kind="unknown_hold", currency=self.hub.cfg.hub.currency,
                                     hold=None, now=now, state=FOUND,
                                     receipt_no=action.receipt_no, reason="a hold at the terminal the ledger did not know")
            with self.hub.store.transaction():
                self.ledger.change(rec, now, "release", next_attempt_at=now)
            log.warning("payment.unknown_hold terminal=%s receipt=%s action=release", lane.id, action.receipt_no)
            await self._attempt(lane, rec)
            return True
        rec = self.ledger.get(action.payment_id)
        if rec is None:
            return False
        if action.kind == "ask":
            await self._attempt(lane, rec)
            fresh = self.ledger.get(rec.id)
            return fresh is not None and fresh.state in FINAL_STATES
        if action.kind == "confirm_settled":
            self._finish(rec, None, "settle", "done", "confirmed: the terminal holds nothing open after our booking")
        elif action.kind == "confirm_released":
            self._finish(rec, None, "release", "done", "confirmed: the terminal holds nothing open")
        elif action.kind == "lapse":
            self._lapse(rec, None, "reservation closed at the terminal before any booking",
                        reason=self._lapse_reason(rec, "the terminal holds no reservation open"))
        elif action.kind == "doubt":
            self._doubt(rec, None, "the terminal holds nothing open, but a booking may have reached it before")
        elif action.kind == "terminal_lost_hold":
            log.warning("payment.terminal_lost_hold payment=%s state=%s receipt=%s", rec.id, rec.state, rec.receipt_no)
        return False

    # ---------------------------------------------------------- backstop
    def apply_backstop(self, now: datetime) -> list[str]:
        """R-P4: a hold open 24 hours is released once its session has
        really stopped (the stop is sent, and sent again, until it has);
        a booking that may have been made is never released, it goes to
        review. Nothing is decided on a clock that never synced. Returns
        the payments released."""
        trusted = self.hub.clock.synced
        released, untrusted = [], 0
        for rec in self.ledger.open_records():
            session = self._open_session_of(rec)
            decision = backstop_decision(
                rec.state, rec.held_at, now, clock_trusted=trusted, session_open=session is not None,
                booking_may_have_reached=self.ledger.maybe_done(rec.id, "settle"),
                booking_refused=self.ledger.refused(rec.id, "settle"))
            if decision == "wait_for_clock":
                untrusted += 1
            elif decision == "stop_session":
                if session.id not in self._backstop_stops:
                    log.warning("payment.backstop_stop payment=%s session=%s: the hold is 24 hours old; it is kept "
                                "until the session has stopped", rec.id, session.id)
                    self._backstop_stops.add(session.id)
                    self.hub.spawn(self._stop_for_backstop(session.id))
            elif decision == "release":
                why = "the hold was open for 24 hours (backstop)"
                if rec.state == SETTLING:
                    why += f" and the terminal refused its booking ({rec.last_error}): the session is not billed here"
                self._begin_release(rec, why)
                released.append(rec.id)
            elif decision == "doubt":
                self._doubt(rec, None, "open for 24 hours with a booking that may have been made")
        if untrusted:
            log.warning("payment.backstop_skipped holds=%d: the hub's clock has not synced, so no hold is released for "
                        "its age; check the time source (NTP) with `hubctl status`", untrusted)
        return released

    def _open_session_of(self, rec: PaymentRecord):
        """The session still running on this hold, if any."""
        if rec.state not in (HELD, CHARGING):
            return None
        if rec.session_id:
            s = self.hub.sessions.get(rec.session_id)
            return s if s is not None and s.is_open else None
        return next((s for s in self.hub.sessions.open_sessions() if s.payment_id == rec.id), None)

    async def _stop_for_backstop(self, session_id: str) -> None:
        try:
            await self.hub.stop_session(session_id, "payment_hold_expired")
        except Refused as exc:
            log.warning("payment.backstop_stop_failed session=%s reason=%s: the hold stays until the session stops; "
                        "the stop is sent again", session_id, exc)
        finally:
            self._backstop_stops.discard(session_id)

    # ------------------------------------------- hubctl: retry and resolve
    def _payment_arg(self, args: dict) -> PaymentRecord:
        from edge.core.control import ControlError

        ref = args.get("id")
        if not isinstance(ref, str) or not ref:
            raise ControlError("bad_request", "give the payment id (or its first 8 characters) from `hubctl payments`")
        rec = self.ledger.find(ref)
        if rec is None:
            raise NotFound(f"no payment {ref!r}: `hubctl payments` lists them")
        if rec.state in FINAL_STATES:
            raise Refused(f"payment {rec.id[:8]} is already {rec.state}: nothing to do", code="not_open")
        return rec

    async def _retry(self, args: dict, caller, progress) -> dict:
        """R-T3: a technician asks for a settlement or release now; for a
        hold in review, the terminal is asked about its booking again."""
        rec = self._payment_arg(args)
        if rec.state not in PENDING_STATES:
            raise Refused(f"payment {rec.id[:8]} is {rec.state}: it is settled when its session ends; nothing to retry now",
                          code="not_due")
        lane = self.lanes.get(rec.terminal)
        if lane is None:
            raise Refused(f"terminal {rec.terminal} is no longer configured: add it back to [[terminals]] to resolve "
                          f"this hold", code="device_unavailable")
        now = self._now()
        self.ledger.change(rec, now, next_attempt_at=now)
        lane.reconcile_due = True
        lane.wake()
        deadline = time.monotonic() + float(args.get("timeout", 30))
        while time.monotonic() < deadline:
            fresh = self.ledger.get(rec.id)
            if fresh.state in FINAL_STATES:
                break
            await progress({"payment": rec.id, "state": fresh.state, "terminal": lane.last_result})
            await asyncio.sleep(0.5)
        fresh = self.ledger.get(rec.id)
        result = fresh.state if fresh.state in FINAL_STATES else f"still {fresh.state}: {fresh.last_error or 'waiting for the terminal'}"
        self.hub.audit(caller.user, "payment.retry", rec.id, "", result)
        if fresh.state in FINAL_STATES:
            message = f"payment {rec.id[:8]} is now {fresh.state}"
        elif fresh.state == REVIEW:
            message = (f"payment {rec.id[:8]} is still in review: terminal {rec.terminal} has not said whether the "
                       f"booking on its receipt {rec.receipt_no} went through (last: {fresh.last_error or 'no answer yet'}). "
                       f"The hub keeps asking; check the terminal with `hubctl devices`. If it can no longer tell, "
                       f"look up that receipt in the acquirer's records and run `hubctl payment resolve {rec.id[:8]} "
                       f"--booked` or `--not-booked` with --reason")
        else:
            message = (f"payment {rec.id[:8]} is still {fresh.state}: the terminal said {fresh.last_error or 'nothing yet'}; "
                       f"the hub keeps retrying (check `hubctl devices` for terminal {rec.terminal})")
        return {"payment": rec.id, "state": fresh.state, "message": message}

    async def _resolve(self, args: dict, caller, progress) -> dict:
        """R-T3: a technician records what became of a booking in review,
        from the acquirer's records, when the terminal cannot tell: booked
        settles it (receipt link, payment.settled), not booked lapses it
        (payment.lapsed: the cloud bills the session another way)."""
        from edge.core.control import ControlError

        rec = self._payment_arg(args)
        outcome, reason = args.get("outcome"), args.get("reason")
        if outcome not in ("booked", "not_booked"):
            raise ControlError("bad_request", "say what the acquirer's records show: outcome \"booked\" or \"not_booked\"")
        if not isinstance(reason, str) or not reason.strip():
            raise ControlError("bad_request", "give a reason: where you saw it, e.g. --reason \"acquirer portal, 2026-11-24\"")
        if rec.state != REVIEW:
            raise Refused(f"payment {rec.id[:8]} is {rec.state}, not in review: the hub resolves it with the terminal; "
                          f"`hubctl payment retry {rec.id[:8]}` tries now", code="not_in_review")
        note = f"recorded by {caller.user} as {outcome.replace('_', ' ')}: {reason.strip()[:200]}"
        lane = self.lanes.get(rec.terminal)
        async with lane.lock if lane is not None else contextlib.nullcontext():  # not during a call about it
            fresh = self.ledger.get(rec.id)
            if fresh is None or fresh.state != REVIEW:
                raise Refused(f"payment {rec.id[:8]} was resolved by the terminal meanwhile: it is "
                              f"{fresh.state if fresh else 'gone'}", code="not_in_review")
            if outcome == "booked":
                self._finish(fresh, None, "settle", "done", note)
            else:
                self._lapse(fresh, None, note, reason=note)
        state = self.ledger.get(rec.id).state
        self.hub.audit(caller.user, "payment.resolve", rec.id, reason.strip()[:200], state)
        log.warning("payment.resolved_by_hand payment=%s user=%s outcome=%s", rec.id, caller.user, outcome)
        return {"payment": rec.id, "state": state,
                "message": f"payment {rec.id[:8]} is now {state} ({note})"}

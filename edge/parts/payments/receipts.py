"""Receipts and end-of-day (R-P5, R-S1).

A settled session keeps its tariff, VAT, cost and receipt link, written in
the same commit as the booking; the arch screen shows the amount and the
link (and its QR code) for the latest settled session of a connector.

Once a day, at its configured local time, each terminal runs its end-of-day
(ZVT 06 50): the day's bookings go to the acquirer (until then the operator
is not paid, and a terminal whose memory fills refuses cards). Its open
reservations are resolved first; a refused or failed closing is tried again
every 10 minutes, six times at most, and each closing is kept durably.
When a closing is due is decided by plain functions, unit-tested without
sockets.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from datetime import time as time_of_day
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from edge.core.hub import NotFound, Refused
from edge.parts.payments.ledger import Closing, money
from edge.parts.payments.pricing import Cost, Tariff

if TYPE_CHECKING:
    from edge.parts.payments.lane import TerminalLane

log = logging.getLogger("hubedge.payments")


# A closing refused by the terminal (77: not possible now) or failed is tried
# again this often, at most this many times for one day, then reported.
END_OF_DAY_RETRY = timedelta(minutes=10)
END_OF_DAY_ATTEMPTS = 6


# =========================================================== pure decisions
def closing_time(setting: str) -> time_of_day | None:
    """``[[terminals]] end_of_day``: "HH:MM" (checked by the config), or "off"."""
    if setting == "off":
        return None
    hours, minutes = setting.split(":")
    return time_of_day(int(hours), int(minutes))


def closing_slot(day: date, at: time_of_day, tz: ZoneInfo) -> datetime:
    """When ``day``'s closing is due, in UTC. On the spring-forward day a time
    the clock skips (02:30 in Europe/Berlin) comes an hour later; on the
    fall-back day a time that happens twice is its first occurrence."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(timezone.utc)


def latest_closing_day(at: time_of_day, tz: ZoneInfo, now: datetime) -> date:
    """The local day of the latest closing time at or before ``now``."""
    today = now.astimezone(tz).date()
    return today if closing_slot(today, at, tz) <= now else today - timedelta(days=1)


def _retry_pending(last: Closing | None, day: date) -> bool:
    return last is not None and last.day == day and last.outcome == "refused" and last.attempts < END_OF_DAY_ATTEMPTS


def end_of_day_due(at: time_of_day | None, tz: ZoneInfo, last: Closing | None, now: datetime) -> date | None:
    """The local day whose closing is due at ``now``, or None.

    ``last`` is the terminal's latest closing record. Without one nothing is
    due: the caller records a baseline first, so the days before the hub ran
    are not closed late. After days without the hub only the latest day is
    due: one closing submits everything booked since the previous one."""
    if at is None or last is None:
        return None
    day = latest_closing_day(at, tz, now)
    if last.day < day:
        return day
    if _retry_pending(last, day) and (last.next_attempt_at is None or last.next_attempt_at <= now):
        return day
    return None


def next_closing_at(at: time_of_day | None, tz: ZoneInfo, last: Closing | None, now: datetime) -> datetime | None:
    """When the terminal's next closing (or retry) is due, UTC; None when off."""
    if at is None:
        return None
    day = latest_closing_day(at, tz, now)
    if last is not None and last.day < day:
        return closing_slot(day, at, tz)
    if _retry_pending(last, day):
        return last.next_attempt_at or now
    return closing_slot(max(day, last.day if last else day) + timedelta(days=1), at, tz)


# ================================================================ the part's side
class Receipts:
    """The part's receipts and end-of-day (R-P5, R-S1), mixed into ``Payments``: the
    session's cost and receipt link, the arch's receipt screen, each terminal's
    daily closing (ZVT 06 50) on schedule or by hand."""

    # ---------------------------------------------------------- receipts
    async def _arch_receipt(self, args: dict, caller, progress) -> dict:
        """R-P5: what the arch screen shows at the end of a bank-card session:
        the settled amount and the receipt link (and its QR code), only for
        a session that ended successfully; the latest one on the connector."""
        lane, connector = self._lane_for(args)
        for rec in self.ledger.recent(200):
            if rec.kind != "session" or rec.connector != connector or rec.terminal != lane.id:
                continue
            if rec.state != "settled" or not rec.receipt_id:
                break  # the latest hold on this connector has no receipt (declined, released, still open)
            s = self.hub.sessions.get(rec.session_id) if rec.session_id else None
            if s is None or not s.receipt_url:
                break
            import io

            import segno

            qr = io.StringIO()
            segno.make(s.receipt_url, error="m").terminal(out=qr, compact=True)
            return {"connector": connector, "session": s.id, "amount": money(rec.settle_amount, rec.currency),
                    "energy_wh": int(s.energy_wh or 0), "receipt_url": s.receipt_url, "qr": qr.getvalue()}
        raise NotFound(f"no receipt for connector {connector}: a receipt exists only for a bank-card session that ended "
                       f"and was settled (R-P5); for help call the number on the charger")

    def _write_session_cost(self, session_id: str, tariff: Tariff, cost: Cost, receipt_id: str | None = None) -> None:
        """R-S1: the session keeps its tariff, VAT, cost and receipt."""
        s = self.hub.sessions.get(session_id)
        if s is None:
            return
        s.tariff_id, s.price_per_kwh, s.vat_rate, s.currency = tariff.id, tariff.price_per_kwh, tariff.vat_rate, tariff.currency
        s.cost_net, s.cost_vat, s.cost_gross = cost.net, cost.vat, cost.gross
        if receipt_id is not None:
            s.receipt_id = receipt_id
            s.receipt_url = self.hub.cfg.hub.receipt_base_url + receipt_id
        self.hub.sessions.update(s, self._now())

    # ---------------------------------------------------------- end-of-day
    def _last_closing(self, lane: TerminalLane) -> Closing | None:
        """The terminal's latest closing. On its very first start a baseline
        for the latest closing time, so days before the hub ran are not
        closed late."""
        last = self.ledger.last_closing(lane.id)
        at = closing_time(lane.cfg.end_of_day)
        if last is None and at is not None:
            now = self._now()
            last = self.ledger.record_closing(lane.id, latest_closing_day(at, self.tz, now), "baseline", now)
            log.info("terminal.end_of_day_baseline terminal=%s day=%s", lane.id, last.day)
        return last

    async def maybe_end_of_day(self, lane: TerminalLane) -> Closing | None:
        """From the lane's loop: the scheduled end-of-day, when due and no
        driver is at the terminal (else it waits for the next round)."""
        at = closing_time(lane.cfg.end_of_day)
        last = self._last_closing(lane)
        day = end_of_day_due(at, self.tz, last, self._now())
        if day is None or lane.serving is not None or lane.closing:
            return None
        if last.outcome == "refused" and last.day < day:
            self._supersede(lane, last, day)
        pending = last if last.day == day and last.outcome == "refused" else None
        attempts = (pending.attempts if pending else 0) + 1
        result, error = await self._end_of_day_call(lane)
        now = self._now()
        if result is not None and result.ok:
            return self._closed(lane, day, result, attempts, "schedule", pending)
        reason = result.reason if result is not None else error
        code = result.result_code if result is not None else None
        if attempts < END_OF_DAY_ATTEMPTS:
            closing = self.ledger.record_closing(
                lane.id, day, "refused", now, attempts=attempts, reason=reason, result_code=code,
                next_attempt_at=now + END_OF_DAY_RETRY, closing_id=pending.id if pending else None)
            log.warning("terminal.end_of_day_retry terminal=%s day=%s attempts=%d in_s=%.0f reason=%s",
                        lane.id, day, attempts, END_OF_DAY_RETRY.total_seconds(), reason)
            return closing
        message = (f"terminal {lane.id} did not close the day {day} after {attempts} tries ({reason}): its bookings are "
                   f"not yet submitted to the acquirer; run `hubctl terminal end-of-day {lane.id}` when it is free, "
                   f"and check it with `hubctl devices`")
        with self.hub.store.transaction():
            closing = self.ledger.record_closing(lane.id, day, "failed", now, attempts=attempts, reason=reason,
                                                 result_code=code, closing_id=pending.id if pending else None)
            self._emit_closing(closing, message)
        log.error("terminal.end_of_day_failed terminal=%s day=%s attempts=%d reason=%s", lane.id, day, attempts, reason)
        return closing

    def _supersede(self, lane: TerminalLane, stale: Closing, day: date) -> None:
        """A day still being retried when the next day's closing falls due (the
        hub was off past it): that closing submits everything booked since the
        last one, so the older day is finished as ``superseded``, not left
        waiting for a retry that never comes."""
        reason = f"{stale.reason or 'refused'}; its bookings go with the closing of {day}"
        self.ledger.record_closing(lane.id, stale.day, "superseded", self._now(), attempts=stale.attempts,
                                   trigger=stale.trigger, reason=reason, result_code=stale.result_code,
                                   closing_id=stale.id)
        log.warning("terminal.end_of_day_superseded terminal=%s day=%s by=%s attempts=%d",
                    lane.id, stale.day, day, stale.attempts)

    async def _end_of_day_call(self, lane: TerminalLane):
        """(result, None) or (None, why). R-P4 first: the terminal's open
        reservations are resolved and due bookings and releases made, so the
        day's bookings are in the batch; holds of sessions still charging stay
        open. Then 06 50 under the lane's lock: never during a card's
        transaction."""
        from drivers.zvt import TerminalError

        lane.closing = True
        try:
            if lane.connected:
                await self.reconcile(lane)
                await self.run_due(lane)
            async with lane.lock:
                if not await lane.ensure_connected():
                    return None, f"the terminal is not answering: {lane.last_result}"
                lane.activity = "busy"
                try:
                    result = await lane.client.end_of_day()
                except TerminalError as exc:
                    lane.failed(exc)
                    return None, str(exc)
                finally:
                    lane.activity = "idle" if lane.connected else "down"
                lane.last_result = f"end-of-day: {result.reason}"
                return result, None
        finally:
            lane.closing = False

    def _closed(self, lane: TerminalLane, day: date, result, attempts: int, trigger: str,
                pending: Closing | None) -> Closing:
        now = self._now()
        previous = self.ledger.last_closing(lane.id, ("done", "baseline"))
        count = self.ledger.settled_since(lane.id, previous.at if previous else None)
        with self.hub.store.transaction():
            closing = self.ledger.record_closing(
                lane.id, day, "done", now, attempts=attempts, trigger=trigger, total=result.amount,
                currency=result.currency if result.amount is not None else None, transactions=count,
                closing_id=pending.id if pending else None)
            self._emit_closing(closing)
        log.info("terminal.end_of_day terminal=%s day=%s transactions=%d total=%s trigger=%s",
                 lane.id, day, count, result.amount, trigger)
        return closing

    def _emit_closing(self, c: Closing, message: str | None = None) -> None:
        data: dict[str, Any] = {
            "terminal": c.terminal, "day": c.day.isoformat(), "outcome": c.outcome, "attempts": c.attempts,
            "trigger": c.trigger, "total": money(c.total, c.currency or self.hub.cfg.hub.currency),
            "transactions": c.transactions,
        }
        if c.reason:
            data["reason"] = c.reason
        if c.result_code is not None:
            data["result_code"] = c.result_code
        if message:
            data["message"] = message
        self.hub.emit("payment.end_of_day", data)

    async def _terminal_end_of_day(self, args: dict, caller, progress) -> dict:
        """R-T3: a technician closes a terminal's day now. A closing still
        being retried is the one closed; otherwise today's (local)."""
        from edge.core.control import ControlError

        ref = args.get("id")
        if not isinstance(ref, str) or not ref:
            raise ControlError("bad_request", "give the terminal id from [[terminals]], e.g. {\"id\": \"T1\"}")
        lane = self.lanes.get(ref)
        if lane is None:
            raise NotFound(f"no terminal {ref!r} at this hub; configured: {', '.join(self.lanes) or 'none'}")
        if lane.serving is not None or lane.closing:
            why = "a driver is paying at it" if lane.serving is not None else "its end-of-day is already running"
            raise Refused(f"terminal {lane.id} is busy ({why}): nothing was closed; try again in a few minutes",
                          code="busy")
        last = self.ledger.last_closing(lane.id)
        pending = last if last is not None and last.outcome == "refused" else None
        day = pending.day if pending else self._now().astimezone(self.tz).date()
        result, error = await self._end_of_day_call(lane)
        answer: dict[str, Any] = {"terminal": lane.id, "day": day.isoformat(), "total": None, "transactions": None,
                                  "result_code": result.result_code if result is not None else None}
        if result is not None and result.ok:
            closing = self._closed(lane, day, result, (pending.attempts if pending else 0) + 1, "hubctl", pending)
            total = money(closing.total, closing.currency)
            n = closing.transactions
            booked = f"{total['amount']} {total['currency']}" if total else "an amount the terminal did not report"
            answer.update(outcome="done", total=total, transactions=n,
                          message=f"terminal {lane.id} closed the day {day}: {n} transaction{'' if n == 1 else 's'}, "
                                  f"{booked} booked, submitted to the acquirer")
        elif result is not None:
            answer.update(outcome="refused",
                          message=f"terminal {lane.id} refused the end-of-day ({result.reason}): nothing was closed; "
                                  f"try again in a few minutes")
        else:
            answer.update(outcome="failed",
                          message=f"terminal {lane.id} did not complete the end-of-day ({error}): nothing was recorded "
                                  f"as closed; check it with `hubctl devices`, then try again")
        self.hub.audit(caller.user, "terminal.end_of_day", lane.id, "", answer["outcome"])
        log.info("terminal.end_of_day_by_hand terminal=%s user=%s outcome=%s", lane.id, caller.user, answer["outcome"])
        return answer

    def closing_view(self, lane: TerminalLane) -> dict:
        """For `hubctl status`: the last closing and when the next is due (local time)."""
        last = self.ledger.last_closing(lane.id)
        due = next_closing_at(closing_time(lane.cfg.end_of_day), self.tz, last, self._now())
        shown = "-"
        if last is not None and last.outcome != "baseline":
            shown = f"{last.day} {last.outcome}" + (f" ({last.attempts} of {END_OF_DAY_ATTEMPTS} tries)"
                                                    if last.outcome == "refused" else "")
        return {"last_closing": shown,
                "next_closing": due.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z") if due else "off"}

"""Issue 15 on the payment part, without sockets: a terminal that names only
its first open reservation (Feig cVEND), bookings whose answer is lost, late
answers about another receipt, a refused open-reservations query, the
24-hour backstop against a booking that may have been made, a session that
will not stop and a clock that never synced, and the receipt link in the
settlement's commit. The terminal is payment_rig's scripted one, which keeps
its own ledger of what it booked and reversed (R-P3, R-P4, R-P5, R-T3)."""

from __future__ import annotations

import logging
from decimal import Decimal
from types import SimpleNamespace

import pytest
from payment_rig import NOW, Rig

from units import FakeClock
from edge.cloud.envelope import validate_event
from edge.core.hub import Refused
from edge.hubctl import Style
from edge.parts.payments.reconciliation import BACKSTOP
from edge.parts.payments.hubctl import _render_list

TECHNICIAN = SimpleNamespace(user="tech")


async def _quiet(_progress):
    pass


@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path, FakeClock(NOW))
    made.terminal.first_only = True  # as Feig cVEND terminals answer 06 23 FF FF
    yield made
    made.close()


def state(rig: Rig, payment: str) -> str:
    return rig.payments.ledger.get(payment).state


def charging_hold(rig: Rig, receipt: int) -> str:
    """A hold whose session is still charging, as the ledger has it."""
    ledger, now = rig.payments.ledger, rig.clock.now()
    rec = ledger.create(terminal="T1", connector="C2", kind="session", currency="EUR", hold=Decimal("236.81"),
                        now=now)
    ledger.change(rec, now, "approve", receipt_no=receipt, held_at=now)
    ledger.change(rec, now, "begin_charging", session_id=f"S{receipt}")
    rig.terminal.open[receipt] = Decimal("236.81")
    return rec.id


def assert_ledgers_agree(rig: Rig) -> None:
    """The hub's ledger and the terminal's: each booking settled once with its
    amount, each reversal released, nothing lapsed that the terminal booked."""
    for rec in rig.payments.ledger.recent(100):
        if rec.receipt_no is None:
            continue
        if rec.receipt_no in rig.terminal.booked:
            assert rec.state == "settled" and rec.settle_amount == rig.terminal.booked[rec.receipt_no], rec
        elif rec.receipt_no in rig.terminal.reversed:
            assert rec.state == "released", rec
        elif rec.receipt_no in rig.terminal.open:
            assert rec.state not in ("settled", "released", "lapsed"), rec
    settled = [d["payment"] for d in rig.of("payment.settled")]
    assert len(settled) == len(set(settled))


# ------------------------------------------------------------ finding 0
async def test_issue15_a_booking_lost_to_three_naks_is_booked_not_lapsed(rig):
    """The booking of receipt 12 met three NAKs (never done); the terminal's
    answer names only receipt 3, a session still charging. The hub concluded
    that 12 was gone and published payment.lapsed, then released 12 as
    unknown. It must ask about 12 itself, and book it."""
    charging_hold(rig, 3)
    payment = rig.settling_hold(12, "41.90")
    rig.terminal.faults = ["nak"]
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "settling" and 12 in rig.terminal.open
    rig.lane.connected = True  # the lane reconnects after the NAKs
    await rig.payments.reconcile(rig.lane)
    assert state(rig, payment) == "settled"
    assert rig.terminal.booked == {12: Decimal("41.90")} and 3 in rig.terminal.open
    assert rig.of("payment.lapsed") == [] and rig.of("payment.released") == []
    assert_ledgers_agree(rig)


async def test_issue15_a_booking_the_terminal_never_made_is_not_published_settled(rig):
    """The booking of 17 went unanswered (taken, never done); the answer to the
    open query names only 5. "May have been done" plus "not named" was taken
    for settled, with a receipt link, while 17 was still open."""
    charging_hold(rig, 5)
    payment = rig.settling_hold(17, "59.28")
    rig.terminal.faults = ["silent"]
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "review"
    await rig.payments.reconcile(rig.lane)
    assert state(rig, payment) == "settled" and rig.terminal.booked == {17: Decimal("59.28")}
    [settled] = rig.of("payment.settled")
    assert settled["payment"] == payment and settled["amount"] == {"amount": "59.28", "currency": "EUR"}
    assert_ledgers_agree(rig)


async def test_issue15_after_a_restart_with_two_holds_open_the_second_is_booked_not_lapsed(tmp_path):
    """Killed with two sessions billed and not yet booked; after the restart
    the terminal names only the first open reservation. The second was lapsed."""
    first = Rig(tmp_path, FakeClock(NOW))
    first.terminal.first_only = True
    one, two = first.settling_hold(1, "12.34"), first.settling_hold(2, "56.78")
    second = first.restarted(tmp_path)
    try:
        await second.payments.reconcile(second.lane)
        assert (state(second, one), state(second, two)) == ("settled", "settled")
        assert second.terminal.booked == {1: Decimal("12.34"), 2: Decimal("56.78")} and second.terminal.open == {}
        assert second.of("payment.lapsed") == []
        assert_ledgers_agree(second)
    finally:
        second.close()


async def test_r_p4_a_reservation_named_only_after_another_closes_is_found(rig):
    """Paging a terminal that names one at a time: a reservation the ledger
    never knew sits behind a running session's; once that one is booked the
    terminal is asked again and names it, and it is released."""
    payment = charging_hold(rig, 3)
    rig.terminal.open[9] = Decimal("236.81")  # an approval whose answer was lost
    await rig.payments.reconcile(rig.lane)
    assert 9 in rig.terminal.open and not rig.lane.reconcile_due
    rec = rig.payments.ledger.get(payment)
    rig.payments.ledger.change(rec, rig.clock.now(), "bill", settle_amount=Decimal("20.00"), cost_net=Decimal("16.81"),
                               cost_vat=Decimal("3.19"), cost_gross=Decimal("20.00"), next_attempt_at=rig.clock.now())
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "settled" and rig.lane.reconcile_due
    await rig.payments.reconcile(rig.lane)
    assert rig.terminal.open == {} and rig.terminal.reversed == {9}
    [found] = [r for r in rig.payments.ledger.recent(10) if r.kind == "unknown_hold"]
    assert found.state == "released" and found.receipt_no == 9


async def test_r_p4_reconciliation_asks_the_terminal_again_after_each_one_it_closes(rig):
    for receipt in (4, 6, 8):
        rig.terminal.open[receipt] = Decimal("10.00")  # three strays, named one at a time
    await rig.payments.reconcile(rig.lane)
    assert rig.terminal.open == {} and rig.terminal.reversed == {4, 6, 8}
    assert rig.terminal.calls.count("open_preauthorizations") == 4  # the last answer: nothing open


# ------------------------------------------------------------ finding 1
async def test_issue15_an_answer_about_another_receipt_does_not_settle(rig):
    """Booking 17 came back "ok" carrying receipt 18's completion although
    nothing was booked: the ledger said settled, and the money was lost."""
    payment = rig.settling_hold(17, "59.28")
    rig.terminal.faults = ["stale"]
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "review" and rig.terminal.booked == {}
    assert rig.of("payment.settled") == []
    rig.clock.advance(60)
    await rig.payments.run_due(rig.lane)  # asked again: the terminal books it now
    assert state(rig, payment) == "settled" and rig.terminal.booked == {17: Decimal("59.28")}
    assert_ledgers_agree(rig)


async def test_r_p4_an_approval_naming_a_reservation_already_open_is_no_new_hold(rig):
    """A late answer about receipt 17 taken for a new pre-authorisation's
    approval would make two holds of one reservation: it is taken as an
    unknown outcome (declined), and reconciliation finds what is really held."""
    from drivers.zvt import PaymentResult

    payment = rig.settling_hold(17, "59.28")
    c = rig.hub.connectors["C1"]
    prev = c.state
    c.trigger("plug_in")
    rig.hub._changed(c, prev)
    rig.terminal.preauth_answers = [PaymentResult("pre-authorisation", True, 0, "approved", receipt_no=17,
                                                  amount=Decimal("236.81"), currency="EUR")]
    answer = await rig.payments._arch_select({"terminal": "T1", "connector": "C1"}, TECHNICIAN, _quiet)
    assert not answer["approved"] and "no clear answer" in answer["reason"]
    assert [r.id for r in rig.payments.ledger.open_records("T1") if r.receipt_no == 17] == [payment]
    assert rig.lane.reconcile_due and rig.hub.sessions.open_sessions() == []


async def test_r_p4_a_terminal_refusing_the_open_query_is_alarmed_and_its_holds_still_asked(rig):
    """Only logged at info before: R-P4 cannot be checked on that terminal.
    A device alarm says so and what to do (once); the holds the ledger knows
    are still asked about one by one."""
    rig.terminal.refuse_query = True
    payment = rig.settling_hold(21, "7.77")
    rig.payments.ledger.change(rig.payments.ledger.get(payment), rig.clock.now(),
                               next_attempt_at=rig.clock.now() + BACKSTOP)  # not due by its own schedule
    await rig.payments.reconcile(rig.lane)
    await rig.payments.reconcile(rig.lane)
    [alarm] = rig.of("device.alarm")
    assert alarm["alarm"] == "terminal_open_query_refused"
    assert "terminal T1" in alarm["message"] and "R-P4" in alarm["message"] and "ZVT settings" in alarm["message"]
    [envelope] = rig.envelopes("device.alarm")
    validate_event(envelope)
    assert state(rig, payment) == "settled" and rig.terminal.booked == {21: Decimal("7.77")}


# ------------------------------------------------------------ finding 4
async def test_issue15_the_backstop_never_releases_a_booking_whose_answer_never_came(rig, caplog):
    """The terminal booked 59.28 EUR and the answer never came; 24 hours on,
    the backstop released the hold (payment.released). It sits in review
    (evented, shown by hubctl) until the terminal says what became of it."""
    payment = rig.settling_hold(164, "59.28")
    rig.terminal.faults = ["lost"] + ["silent"] * 3
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "review" and rig.terminal.booked == {164: Decimal("59.28")}
    [review] = rig.of("payment.manual_review")
    assert review["amount"] == {"amount": "59.28", "currency": "EUR"} and review["terminal_receipt"] == 164
    assert "hubctl payment retry" in review["message"] and "hubctl payment resolve" in review["message"]
    validate_event(rig.envelopes("payment.manual_review")[0])
    listed = await rig.payments._list({}, TECHNICIAN, _quiet)
    assert [p["state"] for p in listed] == ["review"] and "card_token" not in listed[0]
    shown = _render_list(listed, Style(False), None)
    assert f"1 in review ({payment[:8]})" in shown and "never releases" in shown
    assert "hubctl payment resolve ID --booked" in shown
    for _ in range(3):  # the terminal stays silent
        rig.clock.advance(3600)
        await rig.payments.run_due(rig.lane)
    rig.clock.advance(BACKSTOP.total_seconds())
    assert rig.payments.apply_backstop(rig.clock.now()) == []
    await rig.payments.run_due(rig.lane)  # the terminal answers: 164 is no longer open
    assert state(rig, payment) == "settled" and rig.terminal.reversed == set()
    assert rig.of("payment.released") == [] and len(rig.of("payment.manual_review")) == 1
    assert_ledgers_agree(rig)


async def test_r_t3_retry_and_resolve_a_hold_in_review(rig):
    """A technician asks again now (retry), and records what the acquirer's
    records show when the terminal cannot tell (resolve, audited)."""
    from edge.core.control import ControlError

    payment = rig.settling_hold(30, "12.00")
    rig.terminal.faults = ["lost"]
    await rig.payments.run_due(rig.lane)
    waiting = rig.settling_hold(31, "1.00")
    rig.payments.ledger.change(rig.payments.ledger.get(waiting), rig.clock.now(), next_attempt_at=rig.clock.now() + BACKSTOP)
    with pytest.raises(Refused, match="not in review"):
        await rig.payments._resolve({"id": waiting[:8], "outcome": "booked", "reason": "x"}, TECHNICIAN, _quiet)
    with pytest.raises(ControlError, match="give a reason"):
        await rig.payments._resolve({"id": payment[:8], "outcome": "booked"}, TECHNICIAN, _quiet)
    rig.terminal.faults = ["silent"]
    answer = await rig.payments._retry({"id": payment[:8], "timeout": 0}, TECHNICIAN, _quiet)
    assert answer["state"] == "review" and "hubctl payment resolve" in answer["message"]
    answer = await rig.payments._resolve({"id": payment, "outcome": "booked", "reason": "acquirer portal: booked"},
                                         TECHNICIAN, _quiet)
    assert answer["state"] == "settled" and "recorded by tech as booked" in answer["message"]
    [settled] = rig.of("payment.settled")
    assert settled["payment"] == payment and settled["receipt_url"]
    [audit] = [d for d in rig.of("audit.action") if d["action"] == "payment.resolve"]
    assert audit["target"] == payment and audit["result"] == "settled"

    lost = rig.settling_hold(32, "3.00")
    rig.terminal.faults = ["silent"]
    await rig.payments.run_due(rig.lane)
    answer = await rig.payments._resolve({"id": lost, "outcome": "not_booked", "reason": "no booking in the portal"},
                                         TECHNICIAN, _quiet)
    assert answer["state"] == "lapsed"
    [lapsed] = rig.of("payment.lapsed")
    assert lapsed["payment"] == lost and "not booked" in lapsed["reason"]


async def test_r_p4_a_restart_during_a_booking_puts_it_in_review_until_the_terminal_tells(tmp_path):
    first = Rig(tmp_path, FakeClock(NOW))
    payment = first.settling_hold(40, "8.80")
    first.payments.ledger.begin_step(payment, "settle", Decimal("8.80"), first.clock.now())  # killed during the call
    second = first.restarted(tmp_path)
    try:
        second.payments._recover()
        assert state(second, payment) == "review"
        await second.payments.reconcile(second.lane)  # still open: the booking never happened; booked now
        assert state(second, payment) == "settled" and second.terminal.booked == {40: Decimal("8.80")}
    finally:
        second.close()


# ------------------------------------------------------------ finding 12
async def _charging_session(rig: Rig):
    c = rig.hub.connectors["C1"]
    prev = c.state
    c.trigger("plug_in")
    rig.hub._changed(c, prev)
    answer = await rig.payments._arch_select({"terminal": "T1", "connector": "C1"}, TECHNICIAN, _quiet)
    assert answer["started"], answer
    s = rig.hub.sessions.get(answer["session"])
    s.status, s.meter_start_wh = "active", 1000
    rig.hub.sessions.update(s, rig.clock.now())
    return answer["payment"], s


async def test_issue15_the_backstop_keeps_the_hold_until_the_session_has_stopped(rig):
    """The backstop's stop failed and charging went on with no hold: the hold
    stays, the stop is sent again, and the session's end bills it."""
    payment, s = await _charging_session(rig)
    stops = []

    async def refuse(cid):
        stops.append(cid)
        raise ConnectionError("charger CH1 not answering")

    rig.hub.chargers["CH1"].stop = refuse
    rig.clock.advance(BACKSTOP.total_seconds())
    assert rig.payments.apply_backstop(rig.clock.now()) == []
    for _ in range(5):
        await _settle_tasks()
    assert state(rig, payment) == "charging" and len(stops) == 1
    assert rig.payments.apply_backstop(rig.clock.now()) == []  # the next round sends the stop again
    for _ in range(5):
        await _settle_tasks()
    assert state(rig, payment) == "charging" and len(stops) == 2 and rig.of("payment.released") == []
    reading = SimpleNamespace(energy_wh=11_000, signed_meter_value=None)
    rig.hub._end_session(rig.hub.connectors["C1"], rig.hub.sessions.get(s.id), "payment_hold_expired", reading)
    await rig.payments.run_due(rig.lane)
    rec = rig.payments.ledger.get(payment)
    assert rec.state == "settled" and rec.settle_amount == Decimal("4.75")  # 10 kWh at 0.399 + 19 % VAT


async def test_issue15_the_backstop_releases_nothing_on_a_clock_that_never_synced(rig, caplog):
    payment = charging_hold(rig, 3)
    rec = rig.payments.ledger.get(payment)
    rig.payments.ledger.change(rec, rig.clock.now(), "release", reason="no energy")
    held = rig.payments.ledger.create(terminal="T1", connector="C1", kind="session", currency="EUR",
                                      hold=Decimal("236.81"), now=rig.clock.now())
    rig.payments.ledger.change(held, rig.clock.now(), "approve", receipt_no=4, held_at=rig.clock.now())
    rig.clock.advance(BACKSTOP.total_seconds() + 60)
    rig.clock.set_synced(False)
    with caplog.at_level(logging.WARNING, logger="hubedge.payments"):
        assert rig.payments.apply_backstop(rig.clock.now()) == []
    assert state(rig, held.id) == "held"
    assert "clock has not synced" in caplog.text
    rig.clock.set_synced(True)
    assert rig.payments.apply_backstop(rig.clock.now()) == [held.id]


async def test_issue15_the_receipt_link_is_written_in_the_settlements_commit(rig):
    """Killed between the settled state and the session's receipt link, the
    restart found a settled payment whose session had no receipt (R-P5)."""

    class Killed(BaseException):
        pass

    payment, s = await _charging_session(rig)
    reading = SimpleNamespace(energy_wh=11_000, signed_meter_value=None)
    rig.hub._end_session(rig.hub.connectors["C1"], rig.hub.sessions.get(s.id), "arch_stop", reading)
    assert state(rig, payment) == "settling"
    assert rig.hub.sessions.get(s.id).cost_gross == Decimal("4.75")  # the cost with the billing
    update = rig.hub.sessions.update

    def killed(session, now):
        if session.receipt_id:
            raise Killed()
        update(session, now)

    rig.hub.sessions.update = killed
    with pytest.raises(Killed):
        await rig.payments.run_due(rig.lane)
    rig.hub.sessions.update = update
    rec, after = rig.payments.ledger.get(payment), rig.hub.sessions.get(s.id)
    assert (rec.state, rec.receipt_id, after.receipt_url) == ("settling", None, None)
    assert rig.envelopes("payment.settled") == []
    await rig.payments.reconcile(rig.lane)  # the restart: 1 was booked, nothing is open
    rec, after = rig.payments.ledger.get(payment), rig.hub.sessions.get(s.id)
    assert rec.state == "settled" and after.receipt_url.endswith(rec.receipt_id)


async def _settle_tasks():
    import asyncio

    await asyncio.sleep(0)

"""R-P4 on the payment part, without sockets: a booking the terminal answers
"not open" (B8) for a hold the ledger holds open and no booking of ours ever
reached. The hub takes the hold for gone (payment.lapsed: the session is
billed another way) only once the terminal's own list of open reservations
agrees; a terminal that still lists it, or names others and may hold it
behind them, is asked again, and the session is booked when it takes the
booking. A reservation the terminal really closed by itself (an automatic
reversal after a result it took as unacknowledged) lapses, never settles,
with what happened and what to do (R-P3, R-P4, R-P5)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from payment_rig import NOW, Rig

from units import FakeClock
from edge.cloud.envelope import validate_event
from edge.parts.payments.reconciliation import RETRY_FIRST_S


@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path, FakeClock(NOW))
    yield made
    made.close()


def state(rig: Rig, payment: str) -> str:
    return rig.payments.ledger.get(payment).state


async def retried(rig: Rig) -> None:
    """The retry's backoff has passed and the lane makes the calls due."""
    rig.clock.advance(RETRY_FIRST_S + 1)
    rig.lane.connected = True
    await rig.payments.run_due(rig.lane)


async def test_r_p4_a_not_found_answer_for_a_reservation_the_terminal_still_lists_is_no_lapse(rig):
    """The flaky R-P8 HIL run: the booking of receipt 1 was answered B8 and
    the hub published payment.lapsed at once, for a session whose money the
    terminal may still hold. It must ask the terminal's list first; receipt 1
    is on it, so the booking is tried again and goes through."""
    payment = rig.settling_hold(1, "12.34")
    rig.terminal.faults = ["not_found"]
    await rig.payments.run_due(rig.lane)
    assert rig.terminal.calls[-2:] == ["book 1", "open_preauthorizations"]
    assert state(rig, payment) == "settling" and 1 in rig.terminal.open
    assert rig.of("payment.lapsed") == [] and rig.of("payment.settled") == []
    rec = rig.payments.ledger.get(payment)
    assert "lists it open" in rec.last_error and "tried again" in rec.last_error
    await retried(rig)
    assert state(rig, payment) == "settled" and rig.terminal.booked == {1: Decimal("12.34")}
    [settled] = rig.of("payment.settled")
    assert settled["payment"] == payment and rig.of("payment.lapsed") == []


async def test_r_p4_a_not_found_answer_behind_a_partial_list_is_asked_again(rig):
    """A terminal naming only its first open reservation (Feig cVEND) names
    receipt 3, a session still charging: receipt 8 may be open behind it, so
    the B8 is not confirmed and the booking is tried again."""
    rig.terminal.first_only = True
    rig.settling_hold(3, "1.00")
    rig.payments.ledger.change(rig.payments.ledger.get(next(
        r.id for r in rig.payments.ledger.open_records("T1") if r.receipt_no == 3)), rig.clock.now(),
        next_attempt_at=rig.clock.now() + timedelta(hours=1))  # not due now: stands for a running session
    payment = rig.settling_hold(8, "20.00")
    rig.terminal.faults = ["not_found"]
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "settling" and rig.of("payment.lapsed") == []
    assert "names only 3" in rig.payments.ledger.get(payment).last_error
    assert rig.lane.listing_partial
    await retried(rig)
    assert state(rig, payment) == "settled" and rig.terminal.booked[8] == Decimal("20.00")


async def test_r_p4_a_reservation_the_terminal_reversed_itself_lapses_and_says_what_to_do(rig):
    """The terminal reversed receipt 5 by itself (our 80 00 to its approval
    came too late for it): B8, and its list holds nothing open. The hold
    lapses, never settles: no receipt link for money never held, and the
    event says what happened and what to do."""
    payment = rig.settling_hold(5, "33.10")
    del rig.terminal.open[5]
    rig.terminal.reversed.add(5)
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "lapsed"
    assert rig.of("payment.settled") == [] and rig.terminal.booked == {}
    [lapsed] = rig.of("payment.lapsed")
    assert lapsed["payment"] == payment and lapsed["amount"] == {"amount": "33.10", "currency": "EUR"}
    reason = lapsed["reason"]
    assert "terminal T1 no longer held reservation 5" in reason and "33.10 EUR" in reason
    assert "holds no reservation open" in reason and "nothing was booked" in reason
    assert "Bill session S5" in reason and "journal" in reason
    [envelope] = rig.envelopes("payment.lapsed")
    validate_event(envelope)
    rec = rig.payments.ledger.get(payment)
    assert rec.receipt_id is None


async def test_r_p4_a_not_found_answer_is_retried_while_the_open_query_fails(rig):
    """The open query itself goes unanswered: nothing is concluded."""
    from drivers.zvt import TerminalTimeout

    payment = rig.settling_hold(6, "5.00")
    rig.terminal.faults = ["not_found"]

    async def silent():
        raise TerminalTimeout("terminal: no message within 5 s")

    rig.terminal.open_preauthorizations = silent
    await rig.payments.run_due(rig.lane)
    assert state(rig, payment) == "settling" and rig.of("payment.lapsed") == []
    assert "not confirmed" in rig.payments.ledger.get(payment).last_error

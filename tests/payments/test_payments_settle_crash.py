"""A settlement's answer and the ledger's record of it are one commit (R-P4).

Found by the full chaos run (seed 645487739): the terminal booked a
session's 59.28 EUR, the hub closed the booking step, and the daemon was
SIGKILLed before the hold was marked settled. After the restart the hold was
still settling, no call was open, and the receipt was gone from the
terminal's open list, so reconciliation took it for a lapse: "money not
collected", though the card was charged. Here the kill is an exception
raised inside that commit, on the payment part of `payment_rig.py`."""

from __future__ import annotations

from decimal import Decimal

from payment_rig import NOW, Rig

from units import FakeClock
from state_machines.payment import SETTLING


class Killed(BaseException):
    """The power goes: nothing after this point runs."""


async def test_r_p4_kill_after_the_terminal_booked_settles_on_restart_not_lapses(tmp_path):
    clock = FakeClock(NOW)
    first = Rig(tmp_path, clock)
    try:
        payment = first.settling_hold(164, "59.28")
        original = first.payments._emit

        def emit(type_, rec, **fields):
            if type_ == "payment.settled":
                raise Killed()
            original(type_, rec, **fields)

        first.payments._emit = emit
        try:
            await first.payments.run_due(first.lane)
        except Killed:
            pass
        assert first.terminal.calls.count("book 164") == 1 and 164 not in first.terminal.open  # booked
        ledger = first.payments.ledger
        assert ledger.get(payment).state == SETTLING
        [step] = [st for st in ledger.steps(payment) if st["action"] == "settle"]
        assert step["outcome"] is None, "the call's answer was committed without the hold's state"
    finally:
        first.close()

    second = Rig(tmp_path, clock)  # the restart: the terminal no longer lists receipt 164
    try:
        await second.payments.reconcile(second.lane)
        rec = second.payments.ledger.get(payment)
        assert (rec.state, rec.settle_amount) == ("settled", Decimal("59.28"))
        assert not [c for c in second.terminal.calls if c.startswith("book")]  # no second booking
        [settled] = second.of("payment.settled")
        assert settled["amount"] == {"amount": "59.28", "currency": "EUR"}
        assert second.of("payment.lapsed") == []
    finally:
        second.close()

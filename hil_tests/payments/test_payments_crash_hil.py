"""R-P4 / R-C9: SIGKILL the daemon at every step of a payment; after the
restart every hold ends settled or released exactly once, with the right
amount, as the terminal simulator's own records show.

A kill inside a step is a kill at a commit point: started with ``kill``, the
daemon runs through the commit-counting entry point (hil_tests/crash/daemon.py)
and SIGKILLs itself just before or just after the commit named by its label
(the edge/* functions that made it, the tables it wrote; ``*`` stands for any
text); the restart runs plainly. The other kills come from the test. Every
commit of a paid session is crashed in turn by `python -m bench crashpoints`
(journey bank_card).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from hil_tests.payments.conftest import expected_cost

pytestmark = pytest.mark.hil

# The commits of a paid session where a kill used to be placed by hand.
APPROVAL_RECORDED = ("after", "ArchFlow._preauthorize_and_start < * [payment_holds,payment_steps] #1")
SESSION_ENDED_NOT_BILLED = ("before", "ArchFlow._session_over < * #1")
SETTLE_CALL_WRITTEN = ("after", "PaymentLedger.begin_step < ArchFlow._attempt < * #1")
SETTLE_ANSWER_NOT_RECORDED = ("before", "ArchFlow._finish < ArchFlow._attempt < * #1")


def _steps(hub, payment_id: str) -> list[tuple]:
    import sqlite3

    db = sqlite3.connect(hub.db_path)
    try:
        return db.execute("SELECT action, outcome FROM payment_steps WHERE payment_id=? ORDER BY n", (payment_id,)).fetchall()
    finally:
        db.close()


async def _charging(hub, charger, connector="C1", i=0) -> str:
    charger.plug(i, soc=20, battery_kwh=900, max_power_w=200_000)
    await hub.wait_connector(connector, "Preparing")
    answer = await hub.select(connector)
    assert answer["ok"] and answer["data"]["started"], answer
    c = await hub.wait_connector(connector, "Charging")
    await asyncio.sleep(0.8)
    return c["session"]


async def test_r_p4_sigkill_after_approval_before_start_releases_the_hold(make_hub, charger, terminal):
    hub = await make_hub("tcp", kill=APPROVAL_RECORDED)
    charger.plug(0, soc=40)
    await hub.wait_connector("C1", "Preparing")
    with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError)):
        await hub.select("C1")
    await hub.wait_exit()
    assert terminal.open_reservations(), "the terminal approved before the crash"
    await hub.restart()
    paid = await hub.wait_payment("released")
    assert "restarted before the session started" in paid["reason"]
    assert terminal.transaction(paid["receipt_no"]).state == "reversed"
    assert hub.sessions() == [] and charger.command_count(0, "start") == 0
    hub.assert_every_hold_ended_once()
    # The driver can simply try again.
    assert (await hub.select("C1"))["data"]["started"]


async def test_r_p4_sigkill_while_charging_session_goes_on_and_settles_once(make_hub, charger, terminal):
    hub = await make_hub("pty")
    sid = await _charging(hub, charger)
    hub.kill()
    await asyncio.sleep(0.3)
    await hub.restart()
    c = await hub.wait_connector("C1", "Charging")
    assert c["session"] == sid and charger.command_count(0, "start") == 1
    assert (await hub.stop_at_arch("C1"))["data"]["stopped"]
    paid = await hub.wait_payment("settled")
    s = hub.sessions()[0]
    assert terminal.transaction(paid["receipt_no"]).booked == expected_cost(s["energy_wh"]) == Decimal(s["cost_gross"])
    hub.assert_every_hold_ended_once()


async def test_r_p4_sigkill_after_stop_before_settlement_settles_after_restart(make_hub, charger, terminal):
    hub = await make_hub("tcp", kill=SESSION_ENDED_NOT_BILLED)
    await _charging(hub, charger)
    sid = (await hub.connector("C1"))["session"]
    await hub.ask("session_stop", {"id": sid, "reason": "HIL"})
    await hub.wait_exit()
    s = hub.sessions()[0]
    assert s["status"] == "stopped" and hub.payments()[0]["state"] == "charging"  # session over, not billed yet
    await hub.restart()
    paid = await hub.wait_payment("settled")
    assert Decimal(paid["settle_amount"]) == expected_cost(s["energy_wh"])
    assert terminal.transaction(paid["receipt_no"]).booked == expected_cost(s["energy_wh"])
    assert hub.sessions()[0]["receipt_url"]
    hub.assert_every_hold_ended_once()


@pytest.mark.parametrize("point", [SETTLE_CALL_WRITTEN, SETTLE_ANSWER_NOT_RECORDED], ids=["before_call", "after_call"])
async def test_r_p4_sigkill_during_settlement_books_exactly_once(make_hub, charger, terminal, point):
    hub = await make_hub("tcp", kill=point)
    booked_at_kill = point is SETTLE_ANSWER_NOT_RECORDED
    sid = await _charging(hub, charger)
    await hub.ask("session_stop", {"id": sid, "reason": "HIL"})
    await hub.wait_exit()
    rec = hub.payments()[0]
    assert rec["state"] == "settling"
    booked_before = terminal.transaction(rec["receipt_no"]).state
    assert booked_before == ("booked" if booked_at_kill else "open")
    await hub.restart()
    paid = await hub.wait_payment("settled")
    energy = hub.sessions()[0]["energy_wh"]
    assert terminal.transaction(paid["receipt_no"]).booked == expected_cost(energy) == Decimal(paid["settle_amount"])
    steps = [st for st in _steps(hub, paid["id"]) if st[0] == "settle"]
    # After the call: the booking went through, the restart confirms it from the terminal's open list
    # and sends no second one; before it: the intent was never sent, so it is sent once now.
    assert len(steps) == (1 if booked_at_kill else 2), steps
    assert len(hub.events("payment.settled")) == 1
    hub.assert_every_hold_ended_once()


async def test_r_p4_sigkill_while_terminal_books_is_confirmed_by_the_terminal(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    sid = await _charging(hub, charger)
    terminal.book_delay = 2.0  # booked at the host; the answer is late
    await hub.ask("session_stop", {"id": sid, "reason": "HIL"})
    for _ in range(100):
        if any(t.state == "booked" for t in terminal.transactions):
            break
        await asyncio.sleep(0.05)
    hub.kill()
    terminal.book_delay = 0.0
    await hub.restart()
    paid = await hub.wait_payment("settled")
    assert terminal.transaction(paid["receipt_no"]).booked == expected_cost(hub.sessions()[0]["energy_wh"])
    hub.assert_every_hold_ended_once()


async def test_r_p4_sigkill_during_preauthorisation_leaves_nothing_held(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    charger.plug(0, soc=40)
    await hub.wait_connector("C1", "Preparing")
    terminal.card_delay = 1.0
    task = asyncio.create_task(hub.select("C1"))
    await asyncio.sleep(0.5)
    hub.kill()  # the card holder is still typing
    with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError)):
        await task
    await asyncio.sleep(1.0)  # the terminal finishes its side
    terminal.card_delay = 0.0
    await hub.restart()
    await hub.wait_no_open_holds()
    declined = await hub.wait_payment("declined")
    assert "restarted during the pre-authorisation" in declined["reason"]
    assert hub.sessions() == []
    hub.assert_every_hold_ended_once()


async def test_r_p4_unknown_hold_at_the_terminal_is_released_at_start_up(make_hub, charger, terminal):
    stray = terminal.hold(Decimal("236.81"))  # left over from before this controller
    hub = await make_hub("pty")
    await hub.wait_no_open_holds()
    assert terminal.transaction(stray).state == "reversed"
    found = [p for p in hub.payments() if p["kind"] == "unknown_hold"]
    assert len(found) == 1 and found[0]["state"] == "released" and found[0]["receipt_no"] == stray
    released = hub.events("payment.released")
    assert len(released) == 1 and released[0]["data"]["session"] is None

"""R-P4 over the real wire (real daemon, ZVT terminal simulator over a
serial pty and TCP): the two halves of the flaky R-P8 run, each forced.

- A terminal that took the hub's 80 00 to its approval as too late
  reverses the approval itself and aborts, as real terminals do: the hub
  must not believe it holds money (no session, nothing to settle later),
  and must tell the driver.
- A terminal that answers a booking "not found" (B8) while it still holds
  the reservation: the hub must not publish payment.lapsed for money still
  held; it asks the terminal's list, books again, and settles."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

pytestmark = pytest.mark.hil


@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_r_p4_an_approval_the_terminal_reversed_for_a_late_ack_starts_nothing(make_hub, charger, terminal,
                                                                                     transport):
    hub = await make_hub(transport)
    terminal.result_acks_late = 1
    charger.plug(0, soc=20, battery_kwh=900, max_power_w=350_000)
    await hub.wait_connector("C1", "Preparing")
    answer = await hub.select("C1")
    assert answer["ok"] and not answer["data"]["approved"], answer
    assert "cancelled the payment itself" in answer["data"]["reason"] and "try again" in answer["data"]["reason"]
    assert "auto_reversal receipt=1" in terminal.events and terminal.transaction(1).state == "reversed"
    declined = await hub.wait_payment("declined")
    assert declined["session_id"] is None and declined["receipt_no"] == 1 and hub.sessions() == []
    assert [e["data"]["payment"] for e in hub.events("payment.declined")] == [declined["id"]]
    assert (await hub.connector("C1"))["status"] == "Preparing"
    await hub.wait_no_open_holds()

    # The driver tries again: approved, charged, settled as usual.
    answer = await hub.select("C1")
    assert answer["ok"] and answer["data"]["approved"] and answer["data"]["started"], answer
    await hub.wait_connector("C1", "Charging")
    await asyncio.sleep(0.5)
    stop = await hub.stop_at_arch("C1")
    assert stop["ok"] and stop["data"]["stopped"], stop
    paid = await hub.wait_payment("settled")
    assert paid["receipt_no"] == 2 and terminal.transaction(2).booked == Decimal(paid["settle_amount"])
    assert terminal.open_reservations() == {} and terminal.transaction(1).state == "reversed"
    assert [p["state"] for p in hub.payments()] == ["declined", "settled"]
    assert len(hub.events("payment.settled")) == 1 and hub.events("payment.lapsed") == []


async def test_r_p4_a_not_found_answer_while_the_terminal_holds_it_is_booked_not_lapsed(make_hub, charger, terminal):
    hub = await make_hub("tcp")
    await hub.paid_start("C1")
    await asyncio.sleep(0.5)
    terminal.false_not_found = 1
    stop = await hub.stop_at_arch("C1")
    assert stop["ok"] and stop["data"]["stopped"], stop
    paid = await hub.wait_payment("settled", timeout=30)  # booked again after the retry's backoff
    assert "false_not_found" in terminal.events
    tx = terminal.transaction(paid["receipt_no"])
    assert tx.state == "booked" and tx.booked == Decimal(paid["settle_amount"])
    assert hub.events("payment.lapsed") == []
    assert len(hub.events("payment.settled")) == 1
    hub.assert_every_hold_ended_once()

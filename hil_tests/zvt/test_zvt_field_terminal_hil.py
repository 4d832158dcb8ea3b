"""The ZVT driver against a terminal that behaves like the ones in the field
(simulators/zvt_field_terminal.py), over a serial pty and over TCP: it names
only its first open reservation, answers late, NAKs, goes silent and
restarts (R-P4, R-H1; issue 15, findings 0 and 1)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from drivers.zvt import TerminalError, TerminalTimeout, TerminalUnavailable, Timers, ZvtClient
from simulators.zvt_field_terminal import FieldTerminal

pytestmark = pytest.mark.hil

TIMERS = Timers(t1_inter_byte=0.3, t2_ack=0.3, t3_command=0.8, t4_completion=1.0, connect=2.0)
HOLD = Decimal("236.81")


@pytest.fixture
async def field():
    sim = FieldTerminal(late_s=1.6, restart_s=0.8)
    sim.t2_ack = 0.3
    await sim.start(tcp_port=0, pty=True)
    yield sim
    await sim.stop()


@pytest.fixture(params=["pty", "tcp"])
async def client(request, field):
    url = field.pty_path if request.param == "pty" else field.tcp_url
    c = ZvtClient.from_url(url, password=123456, timers=TIMERS)
    await c.connect()
    yield c
    await c.close()


async def test_r_p4_a_feig_terminal_names_one_open_reservation_at_a_time(client, field):
    """Resolve the named one, ask again: the next is named; only "nothing
    open" (receipt FF FF, as in the capture partial_reversal.blob) is whole."""
    receipts = [field.hold(HOLD) for _ in range(3)]
    seen = []
    for _ in range(4):
        answer = await client.open_preauthorizations()
        if answer.complete:
            break
        assert len(answer.named) == 1
        [n] = answer.named
        seen.append(n)
        assert (await client.reverse_preauth(n)).ok
    assert seen == receipts and answer.complete and list(answer) == []


async def test_r_p4_a_late_answer_is_not_taken_for_the_next_booking(client, field):
    """Issue 15, finding 1: the booking of 18 is answered after the client's
    T4, while the booking of 17 runs. 17's result must be 17's own, and say
    only what the terminal did for 17."""
    r17, r18 = field.hold(HOLD), field.hold(HOLD)
    field.plan = ["late"]
    with pytest.raises(TerminalTimeout) as lost:
        await client.book_preauth(r18, Decimal("12.00"), preauthorized=HOLD)
    assert lost.value.maybe_done
    result = await client.book_preauth(r17, Decimal("49.77"), preauthorized=HOLD)
    assert result.ok and result.receipt_no == r17 and result.amount == Decimal("49.77")
    assert field.transaction(r17).booked == Decimal("49.77")  # booked when the answer says so
    assert field.transaction(r18).booked == Decimal("12.00")  # the late one was done, too
    assert any("receipt 18" in s or f"receipt {r18}" in s for s in client.strays)
    assert client.in_step


async def test_r_p4_a_silent_terminal_leaves_the_booking_unknown_and_asking_again_is_safe(client, field):
    r = field.hold(HOLD)
    field.plan = ["silent"]
    with pytest.raises(TerminalTimeout) as lost:
        await client.book_preauth(r, Decimal("5.00"), preauthorized=HOLD)
    assert lost.value.maybe_done and field.transaction(r).state == "open"
    again = await client.book_preauth(r, Decimal("5.00"), preauthorized=HOLD)  # asks about r: still open, booked now
    assert again.ok and field.transaction(r).booked == Decimal("5.00")
    once_more = await client.book_preauth(r, Decimal("5.00"), preauthorized=HOLD)  # never booked twice
    assert not once_more.ok and once_more.result_code == 0xB8


async def test_r_p4_serial_naks_mean_not_done_and_silence_on_the_line_maybe_done(field):
    """Three NAKs: the terminal refused the frame each time, nothing done.
    A frame met by silence (the terminal restarting) may have arrived."""
    client = ZvtClient.from_url(field.pty_path, password=123456, timers=TIMERS)
    await client.connect()
    try:
        r = field.hold(HOLD)
        field.plan = ["nak"]
        with pytest.raises(TerminalUnavailable, match="did not acknowledge") as refused:
            await client.book_preauth(r, Decimal("5.00"), preauthorized=HOLD)
        assert not refused.value.maybe_done and field.transaction(r).state == "open"
        assert field.events.count("nak_sent") == 3
    finally:
        await client.close()
    client = ZvtClient.from_url(field.pty_path, password=123456, timers=TIMERS)
    await client.connect()
    try:
        field._deaf_until = asyncio.get_running_loop().time() + 2.0  # restarting: frames go unanswered
        with pytest.raises(TerminalUnavailable) as silent:
            await client.book_preauth(r, Decimal("5.00"), preauthorized=HOLD)
        assert silent.value.maybe_done
    finally:
        await client.close()


async def test_r_p4_a_restart_after_booking_keeps_the_booking_and_the_terminal_comes_back(field):
    client = ZvtClient.from_url(field.tcp_url, password=123456, timers=TIMERS)
    await client.connect()
    try:
        r = field.hold(HOLD)
        field.plan = ["restart_after"]
        with pytest.raises(TerminalError) as lost:
            await client.book_preauth(r, Decimal("7.00"), preauthorized=HOLD)
        assert lost.value.maybe_done and field.restarts == 1
        assert field.transaction(r).booked == Decimal("7.00")
        for _ in range(50):
            try:
                await client.reconnect()
                break
            except TerminalUnavailable:
                await asyncio.sleep(0.1)
        answer = await client.open_preauthorizations()
        assert answer.complete and (await client.register()).ok
        gone = await client.book_preauth(r, Decimal("7.00"), preauthorized=HOLD)
        assert not gone.ok and gone.result_code == 0xB8  # no second booking
    finally:
        await client.close()

"""The ZVT driver against the terminal simulator over a serial pty and over TCP.

R-P1 (flow, decline reasons, timeouts), R-P3 (partial booking exact), R-P4 (no
reservation left: query and release), R-P6 (masked card data), R-H1 (faults)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from drivers.zvt import TerminalTimeout, TerminalUnavailable, Timers, ZvtClient

pytestmark = pytest.mark.hil


async def test_r_p3_approve_then_book_partial_amount(zvt_client, zvt_sim):
    result = await zvt_client.preauthorize(Decimal("236.81"))
    assert result.ok and result.receipt_no is not None
    assert result.amount == Decimal("236.81")
    assert result.masked_pan == "411111******1111" and result.card_token
    assert "insert card" in zvt_client.seen_texts
    assert zvt_sim.open_reservations() == {result.receipt_no: Decimal("236.81")}

    booked = await zvt_client.book_preauth(result.receipt_no, Decimal("49.77"), preauthorized=result.amount)
    assert booked.ok and booked.amount == Decimal("49.77")
    tx = zvt_sim.transaction(result.receipt_no)
    assert tx.state == "booked" and tx.booked == Decimal("49.77")
    assert zvt_sim.open_reservations() == {}


async def test_book_total(zvt_client, zvt_sim):
    result = await zvt_client.preauthorize(Decimal("100.00"))
    done = await zvt_client.book_total(result.receipt_no, Decimal("12.34"))
    assert done.ok and zvt_sim.transaction(result.receipt_no).booked == Decimal("12.34")


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("funds", "insufficient funds: try another card"),
        ("expired", "card expired: use another card"),
        ("pin", "wrong PIN: try again"),
    ],
)
async def test_r_p1_decline_gives_reason_and_no_reservation(zvt_client, zvt_sim, kind, reason):
    zvt_sim.decline_next(kind)
    result = await zvt_client.preauthorize(Decimal("236.81"))
    assert not result.ok and result.reason == reason and result.receipt_no is None
    assert zvt_sim.open_reservations() == {}
    assert zvt_sim.transactions[-1].state == "declined"


async def test_r_p1_silent_terminal_times_out_quickly(zvt_client, zvt_sim):
    zvt_sim.never_answer = True
    started = time.monotonic()
    with pytest.raises(TerminalTimeout, match="check open pre-authorisations"):
        await zvt_client.preauthorize(Decimal("10.00"))
    assert time.monotonic() - started < 3
    assert zvt_client.health.state == "fault"


async def test_slow_card_holder_within_t4_is_fine(zvt_client, zvt_sim):
    zvt_sim.card_delay = 1.0
    result = await zvt_client.preauthorize(Decimal("10.00"))
    assert result.ok


async def test_abort_while_card_holder_is_slow(zvt_client, zvt_sim):
    zvt_sim.card_delay = 1.5
    task = asyncio.create_task(zvt_client.preauthorize(Decimal("10.00")))
    await asyncio.sleep(0.3)
    assert await zvt_client.abort()
    result = await task
    assert not result.ok and result.result_code == 0x6C
    assert zvt_sim.open_reservations() == {}


async def test_r_p4_open_reservations_query_and_release(zvt_client, zvt_sim):
    left_over = zvt_sim.hold(Decimal("236.81"))  # from before a controller restart
    fresh = (await zvt_client.preauthorize(Decimal("50.00"))).receipt_no
    listed = await zvt_client.open_preauthorizations()
    assert sorted(o.receipt_no for o in listed) == sorted([left_over, fresh])

    for o in listed:
        released = await zvt_client.reverse_preauth(o.receipt_no)
        assert released.ok
    none = await zvt_client.open_preauthorizations()
    assert list(none) == [] and none.complete
    assert zvt_sim.transaction(left_over).state == "reversed"
    again = await zvt_client.reverse_preauth(left_over)
    assert not again.ok and "already reversed" in again.reason


async def test_registration_status_end_of_day(zvt_client, zvt_sim):
    assert (await zvt_client.register()).terminal_id == "52523535"
    status = await zvt_client.status_enquiry()
    assert status.ok and status.text == "ready"
    assert (await zvt_client.end_of_day()).ok


async def test_disconnect_mid_transaction_is_a_clear_error(zvt_client, zvt_sim):
    zvt_sim.disconnect_in_transaction = True
    with pytest.raises(TerminalUnavailable) as info:
        await zvt_client.preauthorize(Decimal("10.00"))
    assert "open pre-authorisations" in str(info.value)
    assert zvt_sim.open_reservations() == {}


SERIAL = Timers(t1_inter_byte=0.3, t2_ack=0.3, t3_command=1.5, t4_completion=2.0)


async def serial_client(sim) -> ZvtClient:
    client = ZvtClient.from_url(sim.pty_path, password=123456, timers=SERIAL)
    await client.connect()
    return client


async def test_serial_naks_from_terminal_are_retried(zvt_sim):
    client = await serial_client(zvt_sim)
    try:
        zvt_sim.nak_frames = 2  # the terminal refuses our next two frames
        result = await client.preauthorize(Decimal("20.00"))
        assert result.ok and zvt_sim.nak_frames == 0
        assert zvt_sim.events.count("nak_sent") == 2
    finally:
        await client.close()


async def test_serial_crc_errors_are_nakked_and_resent(zvt_sim):
    client = await serial_client(zvt_sim)
    try:
        zvt_sim.corrupt_frames = 2  # the terminal's next two frames arrive damaged
        result = await client.preauthorize(Decimal("20.00"))
        assert result.ok and result.amount == Decimal("20.00")
        assert zvt_sim.events.count("crc_corrupted") == 2
        assert zvt_sim.events.count("nak_received") == 2
    finally:
        await client.close()


async def test_serial_terminal_that_never_acks_is_unavailable(zvt_sim):
    client = await serial_client(zvt_sim)
    try:
        zvt_sim.nak_frames = 10
        started = time.monotonic()
        with pytest.raises(TerminalUnavailable, match="did not acknowledge"):
            await client.status_enquiry()
        assert time.monotonic() - started < 3
    finally:
        await client.close()


async def test_missing_port_and_refused_tcp_are_unavailable():
    with pytest.raises(TerminalUnavailable, match="cannot open the port"):
        await ZvtClient.from_url("/dev/zvt-terminal-that-does-not-exist", password=0, timers=SERIAL).connect()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TerminalUnavailable, match="cannot connect"):
        await ZvtClient.from_url(f"tcp://127.0.0.1:{port}", password=0, timers=SERIAL).connect()


async def test_r_p1_read_card_token_matches_the_pre_authorisation_token(zvt_client, zvt_sim):
    """R-P1: the arch stop recognises the card by the terminal's token, the
    same one the pre-authorisation gave; another card gives another token."""
    paid = await zvt_client.preauthorize(Decimal("20.00"))
    read = await zvt_client.read_card(10)
    assert read.ok and read.card_token == paid.card_token and read.masked_pan == "411111******1111"
    zvt_sim.pan = "5555555555554444"
    other = await zvt_client.read_card(10)
    assert other.ok and other.card_token != paid.card_token
    zvt_sim.read_card_supported = False
    refused = await zvt_client.read_card(10)
    assert not refused.ok and refused.result_code == 0x83

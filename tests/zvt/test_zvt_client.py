"""ZvtClient logic against a scripted in-memory link (no sockets): R-P1, R-P3, R-P4, R-P6."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from drivers.device import DeviceFault, DeviceRecovered
from drivers.zvt import TerminalProtocolError, TerminalRefused, TerminalTimeout, TerminalUnavailable, Timers, ZvtClient
from drivers.zvt import messages as m
from drivers.zvt.bmp import RECEIPT_ALL
from drivers.zvt.link import Link
from drivers.zvt.tlv import constructed, primitive
from units import FakeClock

FAST = Timers(t3_command=0.2, t4_completion=0.3, resync_quiet=0.05)


class ScriptedLink(Link):
    """Answers each command sent with the next scripted list of terminal messages."""

    def __init__(self, *scripts: list[m.Message | bytes | Exception]):
        super().__init__(FAST)
        self.scripts = list(scripts)
        self.sent: list[m.Message] = []

    async def open(self):
        self._inbox = asyncio.Queue()

    async def send(self, apdu):
        msg = m.decode_message(apdu)
        self.sent.append(msg)
        if msg.control in (m.ACK, m.ABORT):
            return
        if self.scripts:
            for item in self.scripts.pop(0):
                if isinstance(item, m.Message):
                    item = m.encode_message(item)
                self._inbox.put_nowait(item)

    async def close(self):
        pass


APPROVED = [
    m.ack(),
    m.intermediate_status(0x0A),
    m.status_information(
        [(0x27, 0), (0x04, 23681), (0x49, 978), (0x87, 42), (0x0B, 7), (0x22, "4111111111111111"),
         (0x8B, "Visa\x00"), (0x29, "12345678"), (0x06, (primitive(0x1F14, bytes.fromhex("ab" * 16)),))]
    ),
    m.completion(),
]


async def client_for(*scripts, **kw) -> tuple[ZvtClient, ScriptedLink]:
    link = ScriptedLink(*scripts)
    client = ZvtClient(link, password="123456", clock=FakeClock(), **kw)
    await client.connect()
    return client, link


async def test_approved_pre_authorisation_gives_references_not_card_number():
    """R-P1, R-P6: receipt, trace, token and masked PAN; never the full number."""
    texts = []

    async def on_status(text):
        texts.append(text)

    client, link = await client_for(APPROVED, on_status=on_status)
    result = await client.preauthorize(Decimal("236.81"))
    assert result.ok and result.receipt_no == 42 and result.trace_no == 7
    assert result.amount == Decimal("236.81") and result.currency == "EUR"
    assert result.masked_pan == "411111******1111" and "4111111111111111" not in repr(result)
    assert result.card_token == "ab" * 16
    assert texts == ["insert card"]
    assert link.sent[0].get(0x04) == 23681 and link.sent[0].get(0x49) == 978
    assert [s.control for s in link.sent[1:]] == [m.ACK] * 3


async def test_decline_maps_reason_and_leaves_no_receipt():
    client, _ = await client_for([m.ack(), m.status_information([(0x27, 0x33)]), m.abort_from_terminal(0x33)])
    result = await client.preauthorize(Decimal("10.00"))
    assert not result.ok and result.result_code == 0x33
    assert result.reason == "insufficient funds: try another card"
    assert result.receipt_no is None


async def test_unknown_code_gets_generic_reason():
    client, _ = await client_for([m.ack(), m.abort_from_terminal(0xF7)])
    result = await client.preauthorize(Decimal("10.00"))
    assert not result.ok and "F7" in result.reason and "try again" in result.reason


async def test_refused_command_84():
    client, _ = await client_for([m.nak(0x83)])
    result = await client.reverse_preauth(5)
    assert not result.ok and result.result_code == 0x83


async def test_no_answer_is_terminal_timeout_and_fault_reported():
    events = []
    client, link = await client_for([], on_health=events.append)
    with pytest.raises(TerminalTimeout, match="may have been done"):
        await client.preauthorize(Decimal("10.00"))
    assert isinstance(events[0], DeviceFault) and client.health.state == "fault"
    # the client tried to cancel whatever the terminal might still be doing
    assert link.sent[-1].control == m.ABORT
    assert not client.in_step
    link.scripts += [ENQUIRY_DONE, APPROVED]
    assert (await client.preauthorize(Decimal("1.00"))).ok
    assert isinstance(events[-1], DeviceRecovered) and client.in_step


async def test_silence_after_accept_is_t4_timeout():
    client, _ = await client_for([m.ack(), m.intermediate_status(0x0A)])
    with pytest.raises(TerminalTimeout):
        await client.preauthorize(Decimal("10.00"))


async def test_link_loss_mid_transaction_is_unavailable():
    lost = TerminalUnavailable("terminal: connection lost")
    client, _ = await client_for([m.ack(), lost])
    with pytest.raises(TerminalUnavailable, match="may have been done"):
        await client.preauthorize(Decimal("10.00"))


async def test_unreadable_status_information_is_protocol_error():
    client, _ = await client_for([m.ack(), bytes.fromhex("04 0f 02 04 00")])
    with pytest.raises(TerminalProtocolError, match="unreadable"):
        await client.preauthorize(Decimal("10.00"))


async def test_book_preauth_sends_released_part():
    """06 23 carries the hold minus the used amount; booking above the hold is refused (R-P3)."""
    client, link = await client_for([m.ack(), m.status_information([(0x27, 0), (0x04, 4977), (0x87, 42)]), m.completion()])
    result = await client.book_preauth(42, Decimal("49.77"), preauthorized=Decimal("236.81"))
    assert result.ok and result.amount == Decimal("49.77")
    sent = link.sent[0]
    assert sent.control == m.PARTIAL_REVERSAL and sent.get(0x87) == 42 and sent.get(0x04) == 23681 - 4977
    with pytest.raises(ValueError, match="between zero and the hold"):
        await client.book_preauth(42, Decimal("236.82"), preauthorized=Decimal("236.81"))


async def test_r_p4_open_preauthorizations_names_receipts_and_is_complete_only_when_none_is_open():
    """R-P4: a terminal that names receipts may name only the first (Feig
    cVEND): only receipt FF FF, "nothing open", is a whole answer."""
    listing = constructed(0x23, primitive(0x08, bytes.fromhex("0007")), primitive(0x08, bytes.fromhex("0012")))
    client, link = await client_for(
        [m.ack(), m.abort_from_terminal(0xB8, [(0x87, 7), (0x06, (listing,))])],
        [m.ack(), m.abort_from_terminal(0xB8, [(0x87, 9)])],
        [m.ack(), m.abort_from_terminal(0xB8, [(0x87, RECEIPT_ALL)])],
        [m.nak(0x83)],
    )
    listed = await client.open_preauthorizations()
    assert [o.receipt_no for o in listed] == [7, 12] and not listed.complete
    first_only = await client.open_preauthorizations()
    assert first_only.named == {9} and not first_only.complete
    none = await client.open_preauthorizations()
    assert list(none) == [] and none.complete
    assert link.sent[0].get(0x87) == RECEIPT_ALL
    with pytest.raises(TerminalRefused, match="ledger"):
        await client.open_preauthorizations()


async def test_r_p4_the_captured_nothing_open_answer_is_complete():
    """The capture partial_reversal.blob (06 1E, result B8, receipt FF FF) is
    a Feig terminal saying that nothing is open."""
    captured = bytes.fromhex("061e04b887ffff")
    client, _ = await client_for([m.ack(), captured])
    answer = await client.open_preauthorizations()
    assert answer.complete and list(answer) == []


@pytest.mark.parametrize("answer", [m.abort_from_terminal(0x6C), m.completion()])
async def test_r_p4_an_answer_without_a_receipt_is_no_list_of_open_reservations(answer):
    """An abort for another reason (cancelled) or a bare completion says
    nothing about the reservations: never taken for "nothing open"."""
    client, _ = await client_for([m.ack(), answer])
    with pytest.raises(TerminalRefused, match="no list of open pre-authorisations"):
        await client.open_preauthorizations()


async def test_abort_during_running_command_ends_it_with_6c():
    link = ScriptedLink([m.ack(), m.intermediate_status(0x0A)])
    client = ZvtClient(link, password=0)
    client.timers = Timers(t3_command=1, t4_completion=2)
    await client.connect()
    task = asyncio.create_task(client.preauthorize(Decimal("5.00")))
    await asyncio.sleep(0.05)
    assert client.busy
    assert await client.abort() is True
    link._inbox.put_nowait(m.encode_message(m.ack()))
    link._inbox.put_nowait(m.encode_message(m.abort_from_terminal(0x6C)))
    result = await task
    assert not result.ok and result.result_code == 0x6C and "cancelled" in result.reason


async def test_status_enquiry_and_registration():
    client, link = await client_for(
        [m.ack(), m.enquiry_completion("SW 1", 0x00, (primitive(0x1F44, bytes.fromhex("52523535")),))],
        [m.ack(), m.completion([(0x19, 0), (0x29, "52523535"), (0x49, 978)])],
    )
    status = await client.status_enquiry()
    assert status.ok and status.text == "ready" and status.terminal_id == "52523535"
    reg = await client.register()
    assert reg.ok and reg.terminal_id == "52523535"
    assert link.sent[-2].fields == (("password", 123456), ("config_byte", 0xDE), ("currency", 978))


async def test_commands_need_connect():
    client = ZvtClient(ScriptedLink(), password=0)
    with pytest.raises(TerminalUnavailable, match="connect"):
        await client.status_enquiry()


def test_from_url_picks_transport():
    from drivers.zvt.link import SerialLink, TcpLink

    assert isinstance(ZvtClient.from_url("tcp://127.0.0.1:20007", password=0)._link, TcpLink)
    assert isinstance(ZvtClient.from_url("/dev/ttyUSB0", password=0)._link, SerialLink)
    with pytest.raises(ValueError, match="host and port"):
        ZvtClient.from_url("tcp://nohost", password=0)


async def test_r_p4_money_command_lost_after_sending_is_flagged_maybe_done():
    """R-P4: the payment ledger must know a lost booking may have been done."""
    client, _ = await client_for([])
    with pytest.raises(TerminalTimeout) as info:
        await client.book_preauth(5, Decimal("1.00"), preauthorized=Decimal("2.00"))
    assert info.value.maybe_done
    # A query that is lost did nothing worth checking for.
    client2, _ = await client_for([])
    with pytest.raises(TerminalTimeout) as info2:
        await client2.status_enquiry()
    assert not info2.value.maybe_done


async def test_r_p1_r_p6_read_card_gives_the_token_of_the_real_capture_not_the_number():
    """R-P1: the arch stop reads the card (06 C0); the real capture's status
    information carries the card token (TLV 1F14) and a masked track."""
    from pathlib import Path

    # The capture corpus in the project's test data (test_zvt_corpus.py).
    capture = Path(__file__).resolve().parents[1] / "data" / "zvt-captures" / "status_information_read_card.blob"
    info = capture.read_bytes()
    client, link = await client_for([m.ack(), m.intermediate_status(0x0A), info, m.completion()])
    result = await client.read_card(30)
    assert result.ok and result.card_token == "3f56a32065cc4dbe8330c37609f91996"
    assert link.sent[0].control == m.READ_CARD and link.sent[0].field("timeout") == 30
    assert result.receipt_no is None and result.amount is None


async def test_read_card_refused_by_terminal_without_it():
    client, _ = await client_for([m.nak(0x83)])
    result = await client.read_card(10)
    assert not result.ok and result.result_code == 0x83


ENQUIRY_DONE = [m.ack(), m.enquiry_completion("SW 1", 0x00)]
BOOKED_17 = [m.ack(), m.status_information([(0x27, 0), (0x04, 4977), (0x87, 17), (0x0B, 31)]), m.completion()]
LATE_18 = [m.status_information([(0x27, 0), (0x04, 1200), (0x87, 18), (0x0B, 30)]), m.completion()]


async def test_r_p4_a_late_answer_after_a_timeout_is_not_the_next_commands_answer():
    """Issue 15, finding 1: booking receipt 18 times out (T4); its late
    approval arrives while the hub books receipt 17. It must not be taken as
    17's answer: the link is brought back in step first (abort, drop what
    arrives, status enquiry), then 17 is sent and answered on its own."""
    client, link = await client_for([m.ack(), m.intermediate_status(0x17)])
    with pytest.raises(TerminalTimeout) as lost:
        await client.book_preauth(18, Decimal("12.00"), preauthorized=Decimal("236.81"))
    assert lost.value.maybe_done and not client.in_step
    # The terminal finishes 18 late: its result comes with the next exchange.
    link.scripts += [LATE_18 + ENQUIRY_DONE, [m.ack(), m.abort_from_terminal(0xB8)]]
    seventeen = await client.book_preauth(17, Decimal("49.77"), preauthorized=Decimal("236.81"))
    assert not seventeen.ok and seventeen.result_code == 0xB8 and seventeen.receipt_no is None
    assert [s.control for s in link.sent if s.control not in (m.ACK,)] == [
        m.PARTIAL_REVERSAL, m.ABORT, m.ABORT, m.STATUS_ENQUIRY, m.PARTIAL_REVERSAL]
    assert list(client.strays) == ["status information receipt 18", "completion"]
    assert client.in_step


async def test_r_p4_a_result_sent_before_the_command_was_taken_is_dropped():
    """Anything before 80 00 is the tail of another exchange: acknowledged so
    the terminal goes on, never taken as this command's result."""
    client, link = await client_for(LATE_18 + BOOKED_17)
    result = await client.book_preauth(17, Decimal("49.77"), preauthorized=Decimal("236.81"))
    assert result.ok and result.receipt_no == 17 and result.amount == Decimal("49.77")
    assert list(client.strays) == ["status information receipt 18", "completion"]
    assert [s.control for s in link.sent].count(m.ACK) == 4  # two strays and 17's two messages


async def test_r_p4_an_answer_about_another_receipt_leaves_the_outcome_unknown():
    client, _ = await client_for([m.ack()] + LATE_18)
    with pytest.raises(TerminalProtocolError, match="receipt 18 arrived while .* receipt 17") as info:
        await client.book_preauth(17, Decimal("49.77"), preauthorized=Decimal("236.81"))
    assert info.value.maybe_done and not client.in_step


async def test_r_p4_a_booking_done_without_naming_its_receipt_is_unknown():
    client, _ = await client_for([m.ack(), m.completion()])
    with pytest.raises(TerminalProtocolError, match="without a result naming that receipt") as info:
        await client.reverse_preauth(17)
    assert info.value.maybe_done


async def test_r_p4_a_terminal_that_stays_busy_is_not_sent_the_next_command():
    """Back in step fails (every status enquiry is refused busy): the next
    command is never sent, so its failure is no doubt about the money."""
    client, link = await client_for([m.ack()])
    with pytest.raises(TerminalTimeout):
        await client.book_preauth(18, Decimal("12.00"), preauthorized=Decimal("236.81"))
    link.scripts += [[m.nak(m.NAK_REPEAT)]] * 4
    with pytest.raises(TerminalTimeout, match="stayed busy") as info:
        await client.book_preauth(17, Decimal("49.77"), preauthorized=Decimal("236.81"))
    assert not info.value.maybe_done
    assert [s.control for s in link.sent].count(m.PARTIAL_REVERSAL) == 1


async def test_an_unreadable_answer_to_a_money_command_leaves_it_unknown():
    client, _ = await client_for([m.ack(), bytes.fromhex("04 0f 02 04 00")])
    with pytest.raises(TerminalProtocolError) as info:
        await client.book_total(17, Decimal("1.00"))
    assert info.value.maybe_done


async def test_r_p4_back_in_step_waits_out_a_busy_terminal_and_ignores_stray_acks():
    """The abort's own 80 00 and a busy refusal come before the enquiry's
    answer: 80 00 and 84 xx say nothing of whose they are, only the
    enquiry's completion (with the terminal's status) brings the link back."""
    client, link = await client_for([m.ack()])
    with pytest.raises(TerminalTimeout):
        await client.book_preauth(18, Decimal("12.00"), preauthorized=Decimal("236.81"))
    link.scripts += [[m.ack(), m.nak(m.NAK_REPEAT)], ENQUIRY_DONE, BOOKED_17]
    result = await client.book_preauth(17, Decimal("49.77"), preauthorized=Decimal("236.81"))
    assert result.ok and result.receipt_no == 17 and client.in_step
    assert [s.control for s in link.sent].count(m.STATUS_ENQUIRY) == 2


async def test_r_p4_an_approval_the_terminal_reverses_itself_is_no_hold():
    """A terminal that took our 80 00 to its approval as too late reverses it
    and ends with an abort: not approved, the receipt kept (so the hub can
    check the terminal holds nothing under it), and the driver told why."""
    approved = m.status_information([(0x27, 0), (0x04, 23681), (0x49, 978), (0x87, 42), (0x0B, 7)])
    client, _ = await client_for([m.ack(), m.intermediate_status(0x0A), approved,
                                  m.abort_from_terminal(0x9A, [(0x87, 42)])])
    result = await client.preauthorize(Decimal("236.81"))
    assert not result.ok and result.result_code == 0x9A and result.receipt_no == 42
    assert "approved, then cancelled the payment itself" in result.reason and "nothing is charged" in result.reason

"""The link acknowledges the terminal's messages itself (R-P4).

A terminal waits T3 (typically 5 s) for the controller's 80 00 to its
result and reverses an approval whose result went unacknowledged. So the
80 00 is sent by the transport the moment a message has arrived (TCP: its
reader; serial: its reader thread, through the writer thread), never when
the client's coroutine gets round to it on a busy event loop. These tests
never let the client read: the 80 00 must come all the same, once per
message, and never for an acknowledgement, a refusal or an unreadable
message."""

from __future__ import annotations

import asyncio
import os
import time
import tty
from decimal import Decimal

import pytest

from drivers.zvt import Timers, ZvtClient
from drivers.zvt import messages as m
from drivers.zvt.framing import ACK_BYTE, Frame, FrameReader, LineByte, encode_frame
from drivers.zvt.link import SerialLink, TcpLink
from units import FakeClock

ACK = m.encode_message(m.ack())
RESULT = m.encode_message(m.status_information([(0x27, 0), (0x04, 23681), (0x87, 1)]))


class Terminal:
    """A TCP terminal end that records what the controller sends."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.received = bytearray()
        self.connected = asyncio.Event()

    async def serve(self, reader, writer) -> None:
        self.writer = writer
        self.connected.set()
        while chunk := await reader.read(256):
            self.received += chunk

    async def acks_within(self, count: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.received.count(ACK) >= count:
                return True
            await asyncio.sleep(0.01)
        return False


@pytest.fixture
async def tcp():
    terminal = Terminal()
    server = await asyncio.start_server(terminal.serve, "127.0.0.1", 0)
    link = TcpLink("127.0.0.1", server.sockets[0].getsockname()[1], Timers())
    await link.open()
    await asyncio.wait_for(terminal.connected.wait(), 5)
    yield terminal, link
    await link.close()
    server.close()


async def test_r_p4_tcp_link_acknowledges_a_result_before_the_client_reads_it(tcp):
    terminal, link = tcp
    terminal.writer.write(RESULT)
    assert await terminal.acks_within(1, 2.0), "no 80 00 while the client was busy: the terminal would reverse"
    assert link.acks_messages and link.acked == 1
    assert link.drain() == [RESULT]  # the client still gets the message


async def test_r_p4_tcp_link_does_not_acknowledge_acks_refusals_or_unreadable_messages(tcp):
    terminal, link = tcp
    unreadable = bytes.fromhex("04 0f 02 04 00")
    terminal.writer.write(ACK + m.encode_message(m.nak(0x9C)) + unreadable + m.encode_message(m.completion()))
    assert await terminal.acks_within(1, 2.0)
    await asyncio.sleep(0.1)
    assert bytes(terminal.received) == ACK and link.acked == 1  # the completion's only


async def test_r_p4_a_client_over_tcp_sends_one_80_00_per_message():
    """The client no longer acknowledges on its own: one 80 00 per
    terminal message, not two (a second would be taken for the next one's)."""
    terminal = Terminal()
    script = [m.ack(), m.intermediate_status(0x0A), m.status_information([(0x27, 0), (0x04, 100), (0x87, 3)]),
              m.completion()]

    async def serve(reader, writer):
        head = await reader.readexactly(3)
        await reader.readexactly(head[2])  # the pre-authorisation
        for message in script:
            writer.write(m.encode_message(message))
            if message.control != m.ACK:
                terminal.received += await reader.readexactly(3)
        terminal.received += await reader.read(64)  # anything more the client sends

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = ZvtClient(TcpLink("127.0.0.1", server.sockets[0].getsockname()[1], Timers(t3_command=2, t4_completion=2)),
                       password="123456", clock=FakeClock())
    await client.connect()
    result = await client.preauthorize(Decimal("1.00"))
    await client.close()
    server.close()
    assert result.ok and result.receipt_no == 3
    assert bytes(terminal.received) == ACK * 3


async def test_r_p4_serial_link_acknowledges_a_result_frame_before_the_client_reads_it():
    master, slave = os.openpty()
    tty.setraw(slave)
    link = SerialLink(os.ttyname(slave), Timers(t2_ack=1.0))
    await link.open()
    try:
        os.write(master, encode_frame(RESULT))
        events: list = []
        parser = FrameReader()
        deadline = time.monotonic() + 3
        os.set_blocking(master, False)
        while time.monotonic() < deadline and not any(isinstance(e, Frame) for e in events):
            try:
                chunk = os.read(master, 256)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            events += parser.feed(chunk)
        assert events and events[0] == LineByte(ACK_BYTE), events  # the frame's line ACK
        frames = [e for e in events if isinstance(e, Frame)]
        assert frames and frames[0].apdu == ACK, "no 80 00 while the client was busy: the terminal would reverse"
        os.write(master, bytes((ACK_BYTE,)))  # the terminal takes our 80 00
        await asyncio.sleep(0.1)
        assert link.acked == 1 and link.drain() == [RESULT]
    finally:
        await link.close()
        os.close(master)
        os.close(slave)

"""A ZVT payment terminal (the PT side) for tests, the demo and a bench without hardware.

It speaks ZVT over a serial pty (DLE/STX framing, CRC, ACK/NAK) and over TCP
(bare APDUs), holds its own reservations (receipt -> amount) like a real
terminal, closes its booked transactions at an end-of-day, and can be told
to misbehave: decline, keep the card holder slow, never answer, NAK or
corrupt frames, drop the line mid-transaction, refuse an end-of-day.

    python -m simulators.zvt_terminal --tcp 0 --pty

prints where it listens and runs until interrupted. From tests, ``await
sim.start()`` in the test's event loop, or ``sim.start_in_thread()``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import threading
import tty
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from drivers.zvt import messages as m
from drivers.zvt.apdu import Apdu, decode_apdu, header_size_and_length
from drivers.zvt.bmp import RECEIPT_ALL
from drivers.zvt.framing import ACK_BYTE, NAK_BYTE, Frame, FrameReader, LineByte, encode_frame
from drivers.zvt.tlv import constructed, primitive
from units import currency as currency_info
from units import from_minor_units

log = logging.getLogger("hubedge.sim.zvt")

DECLINES = {
    "funds": 0x33,  # host code 51: insufficient funds
    "expired": 0x78,  # card expired (terminal check)
    "pin": 0x37,  # host code 55: wrong PIN
    "declined": 0x05,  # host code 05: do not honour
}

# A test card number from the card schemes' published test ranges, not a real card.
TEST_PAN = "4111111111111111"


@dataclass
class SimTransaction:
    """What the terminal did with one pre-authorisation, for test assertions."""

    receipt_no: int | None
    trace_no: int
    amount: Decimal
    currency: str
    state: str  # open | booked | reversed | declined | aborted
    booked: Decimal | None = None
    result_code: int = 0
    closed: bool = False  # booked and submitted by an end-of-day


@dataclass
class SimClosing:
    """One end-of-day the terminal ran: what it submitted to the acquirer."""

    transactions: int
    total: Decimal
    currency: str
    at: datetime


class ChannelClosed(Exception):
    pass


class _Channel:
    """An APDU pipe to one controller."""

    name = "channel"

    async def send(self, apdu: bytes) -> None:
        raise NotImplementedError

    async def receive(self, timeout: float | None) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def next_waiting(self) -> bytes | None:
        """The next APDU that has arrived and not been read yet, if any."""
        inbox: asyncio.Queue = getattr(self, "_inbox")
        if inbox.empty():
            return None
        item = inbox.get_nowait()
        if item is None:  # the line closed: keep that for the next read
            inbox.put_nowait(None)
        return item

    def waiting(self) -> list[bytes]:
        """Take the APDUs that have arrived and not been read yet."""
        inbox: asyncio.Queue = getattr(self, "_inbox")
        out: list[bytes] = []
        while not inbox.empty():
            item = inbox.get_nowait()
            if item is None:  # the line closed: keep that for the next read
                inbox.put_nowait(None)
                break
            out.append(item)
        return out


class _TcpChannel(_Channel):
    name = "tcp"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(3)
                if head[2] == 0xFF:
                    head += await self._reader.readexactly(2)
                sizes = header_size_and_length(head)
                assert sizes is not None
                self._inbox.put_nowait(head + await self._reader.readexactly(sizes[1]))
        except (asyncio.IncompleteReadError, OSError):
            self._inbox.put_nowait(None)

    async def send(self, apdu: bytes) -> None:
        if self._writer.is_closing():
            raise ChannelClosed()
        self._writer.write(apdu)
        try:
            await self._writer.drain()
        except OSError:
            raise ChannelClosed() from None

    async def receive(self, timeout: float | None) -> bytes | None:
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if item is None:
            self._inbox.put_nowait(None)
            raise ChannelClosed()
        return item

    def close(self) -> None:
        self._task.cancel()
        self._writer.close()


class _PtyChannel(_Channel):
    """The terminal end of a pty: frames, ACK/NAK, retries, and frame-level faults."""

    name = "pty"

    def __init__(self, sim: "ZvtTerminalSimulator", master_fd: int) -> None:
        self._sim = sim
        self._fd = master_fd
        self._parser = FrameReader()
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._line: asyncio.Queue[int] = asyncio.Queue()
        self._closed = False
        os.set_blocking(master_fd, False)
        asyncio.get_running_loop().add_reader(master_fd, self._readable)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except OSError:
            pass

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: nobody has the slave end open (the controller closed it). Wait
            # for it to come back rather than spin on a readable-but-empty fd.
            chunk = b""
        if not chunk:
            return
        for event in self._parser.feed(chunk):
            if isinstance(event, LineByte):
                self._line.put_nowait(event.value)
            elif isinstance(event, Frame):
                verdict = self._sim.frame_verdict(event.apdu) if event.crc_ok else "nak"
                if verdict == "nak":
                    if event.crc_ok:
                        self._sim.events.append("nak_sent")
                    self._write(bytes((NAK_BYTE,)))
                elif verdict == "ack":
                    self._write(bytes((ACK_BYTE,)))
                    self._inbox.put_nowait(event.apdu)
                # "drop": no ACK, no NAK, the frame is lost (a terminal restarting)

    def forget_input(self) -> None:
        """Frames received and not yet read are lost (the terminal restarted)."""
        self._parser = FrameReader()
        while not self._inbox.empty():
            self._inbox.get_nowait()

    async def send(self, apdu: bytes) -> None:
        if self._closed:
            raise ChannelClosed()
        for _attempt in range(3):
            corrupt = self._sim.corrupt_frames > 0
            if corrupt:
                self._sim.corrupt_frames -= 1
                self._sim.events.append("crc_corrupted")
            while not self._line.empty():
                self._line.get_nowait()
            self._write(encode_frame(apdu, corrupt_crc=corrupt))
            try:
                reply = await asyncio.wait_for(self._line.get(), self._sim.t2_ack)
            except asyncio.TimeoutError:
                continue
            if reply == ACK_BYTE:
                return
            self._sim.events.append("nak_received")
        log.warning("sim.frame_unacknowledged after=3 attempts")

    async def receive(self, timeout: float | None) -> bytes | None:
        if self._closed:
            raise ChannelClosed()
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if item is None:
            raise ChannelClosed()
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.get_running_loop().remove_reader(self._fd)
        except (RuntimeError, ValueError):
            pass
        os.close(self._fd)
        self._inbox.put_nowait(None)


class ZvtTerminalSimulator:
    def __init__(
        self,
        *,
        terminal_id: str = "52523535",
        currency: str = "EUR",
        pan: str = TEST_PAN,
        card_name: str = "Visa",
        host: str = "127.0.0.1",
    ) -> None:
        self.terminal_id = terminal_id
        self.currency = currency_info(currency)
        self.pan = pan
        self.card_name = card_name
        self.host = host
        # fault injection and behaviour (set from tests; plain attributes)
        self.decline_code: int | None = None  # decline every pre-authorisation with this code
        self._decline_once: list[int] = []
        self.card_delay = 0.0  # seconds the card holder takes before the result
        self.never_answer = False  # take frames (ACK on serial) but never reply
        self.nak_frames = 0  # serial: NAK the next N frames received
        self.corrupt_frames = 0  # serial: send the next N frames with a bad CRC
        self.disconnect_in_transaction = False  # drop the line during the next pre-authorisation
        self.read_card_supported = True  # False: answer 06 C0 with 84 83 like terminals without it
        self.book_delay = 0.0  # seconds a booking (06 23 / 06 24) takes before its result
        self.end_of_day_refusals = 0  # refuse the next N end-of-days with 77 (not possible now)
        # Take the controller's 80 00 to the next N pre-authorisation results as too late: the
        # approval is reversed and the transaction aborted, as a real terminal does after T3.
        self.result_acks_late = 0
        # Answer the next N bookings (06 23 / 06 24) with B8 (not found) while the reservation
        # stays open: an answer the controller must not take for the reservation being gone.
        self.false_not_found = 0
        self.t2_ack = 1.0
        self.t3_ack = 5.0  # how long to wait for the controller's 80 00
        # what happened
        self.transactions: list[SimTransaction] = []
        self.closings: list[SimClosing] = []
        self.commands: list[str] = []
        self.events: list[str] = []
        self._receipt = 0
        self._trace = 0
        self._server: asyncio.base_events.Server | None = None
        self._pty_master: int | None = None
        self._pty_slave: int | None = None
        self.pty_path: str | None = None
        self.tcp_port: int | None = None
        self._channels: set[_Channel] = set()
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- scripting -----------------------------------------------------------------

    def decline_next(self, kind: str | int) -> None:
        """Decline the next pre-authorisation: funds, expired, pin, declined, or a code."""
        self._decline_once.append(DECLINES[kind] if isinstance(kind, str) else kind)

    def open_reservations(self) -> dict[int, Decimal]:
        return {t.receipt_no: t.amount for t in self.transactions if t.state == "open" and t.receipt_no}

    def transaction(self, receipt_no: int) -> SimTransaction | None:
        for t in self.transactions:
            if t.receipt_no == receipt_no:
                return t
        return None

    def hold(self, amount: Decimal) -> int:
        """Create an open reservation directly, as if left over from before a restart."""
        tx = SimTransaction(self._next_receipt(), self._next_trace(), amount, self.currency.alpha, "open")
        self.transactions.append(tx)
        return tx.receipt_no  # type: ignore[return-value]

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, *, tcp_port: int | None = 0, pty: bool = True) -> None:
        if tcp_port is not None:
            self._server = await asyncio.start_server(self._on_tcp, self.host, tcp_port)
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        if pty:
            self.open_pty()

    def open_pty(self) -> str:
        """A fresh pty; its slave path is what the controller opens with pyserial."""
        master, slave = os.openpty()
        tty.setraw(slave)
        if self._pty_slave is not None:
            os.close(self._pty_slave)
        # Holding the slave end open keeps the master from reporting EIO while
        # no controller has the port open (before connect, between reconnects).
        self._pty_master, self._pty_slave = master, slave
        self.pty_path = os.ttyname(slave)
        channel = _PtyChannel(self, master)
        self._spawn(self._serve(channel))
        return self.pty_path

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.host}:{self.tcp_port}"

    async def stop(self) -> None:
        for channel in list(self._channels):
            channel.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._pty_slave is not None:
            os.close(self._pty_slave)
            self._pty_slave = None

    def start_in_thread(self, *, tcp_port: int | None = 0, pty: bool = True) -> None:
        """Run the simulator on its own event loop in a thread (for sync callers)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start(tcp_port=tcp_port, pty=pty))
            except BaseException as exc:  # report to the caller, then end the thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="zvt-terminal-sim", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(_TcpChannel(reader, writer))
        except asyncio.CancelledError:
            pass  # stop(): the connection ends with the simulator

    # -- protocol ------------------------------------------------------------------

    def frame_verdict(self, apdu: bytes) -> str:
        """Serial: what the line answers to a good frame: "ack", "nak", or
        "drop" (no answer at all)."""
        if self.nak_frames > 0:
            self.nak_frames -= 1
            return "nak"
        return "ack"

    async def _serve(self, channel: _Channel) -> None:
        self._channels.add(channel)
        try:
            while True:
                raw = await self._read(channel, None)
                if raw is None:
                    continue
                try:
                    message = m.decode_message(decode_apdu(raw))
                except ValueError:
                    await channel.send(m.encode_message(m.nak(0x9A)))
                    continue
                self.commands.append(message.name)
                if self.never_answer:
                    continue
                await self._dispatch(channel, message)
        except ChannelClosed:
            pass
        finally:
            self._channels.discard(channel)
            channel.close()

    async def _read(self, channel: _Channel, timeout: float | None) -> bytes | None:
        """The next APDU from the controller."""
        return await channel.receive(timeout)

    async def _send(self, channel: _Channel, message: m.Message) -> None:
        await channel.send(m.encode_message(message))

    async def _expect_ack(self, channel: _Channel) -> bool:
        reply = await channel.receive(self.t3_ack)
        if reply is None:
            reply = await self._arrived_meanwhile(channel)
        return reply is not None and Apdu(reply[0], reply[1]).control == m.ACK

    async def _arrived_meanwhile(self, channel: _Channel) -> bytes | None:
        """After T3 ran out: an 80 00 that reached this end in time but was not
        read yet, because this simulator's own event loop was held up (a
        loaded test machine), is on time. A few turns of the loop move what
        is already in the socket into the channel; no wall time is added."""
        for _turn in range(5):
            await asyncio.sleep(0)
            reply = channel.next_waiting()
            if reply is not None:
                return reply
        return None

    async def _exchange_end(self, channel: _Channel, message: m.Message) -> bool:
        await self._send(channel, message)
        return await self._expect_ack(channel)

    async def _dispatch(self, channel: _Channel, message: m.Message) -> None:
        c = message.control
        if c == m.PRE_AUTHORISATION:
            await self._pre_authorise(channel, message)
        elif c == m.PARTIAL_REVERSAL:
            await self._partial_reversal(channel, message)
        elif c == m.BOOK_TOTAL:
            await self._book_total(channel, message)
        elif c == m.PRE_AUTHORISATION_REVERSAL:
            await self._reverse(channel, message)
        elif c == m.READ_CARD:
            await self._read_card(channel)
        elif c == m.REGISTRATION:
            await self._send(channel, m.ack())
            await self._exchange_end(
                channel,
                m.completion([(0x19, 0x00), (0x29, self.terminal_id), (0x49, self.currency.numeric)]),
            )
        elif c == m.STATUS_ENQUIRY:
            await self._send(channel, m.ack())
            tlv = (primitive(0x1F44, bytes.fromhex(self.terminal_id)),)
            await self._exchange_end(channel, m.enquiry_completion("hub-edge ZVT simulator 1.0", 0x00, tlv))
        elif c == m.END_OF_DAY:
            await self._end_of_day(channel)
        elif c == m.ABORT:
            await self._send(channel, m.ack())  # nothing running: nothing to cancel
        elif c == m.ACK:
            pass
        else:
            await self._send(channel, m.nak(0x83))

    async def _end_of_day(self, channel: _Channel) -> None:
        """06 50: submit every booked transaction not yet closed, and report
        their total; reservations still open stay open."""
        await self._send(channel, m.ack())
        if self.end_of_day_refusals > 0:
            self.end_of_day_refusals -= 1
            self.events.append("end_of_day_refused")
            await self._exchange_end(channel, m.abort_from_terminal(0x77))
            return
        batch = [t for t in self.transactions if t.state == "booked" and not t.closed]
        total = sum((t.booked or Decimal(0) for t in batch), Decimal(0))
        for t in batch:
            t.closed = True
        self.closings.append(SimClosing(len(batch), total, self.currency.alpha, datetime.now(timezone.utc)))
        info = [(0x27, 0), (0x04, _minor(total, self.currency.minor_unit)), (0x49, self.currency.numeric),
                (0x0B, self._next_trace())]
        if await self._exchange_end(channel, m.status_information(info)):
            await self._exchange_end(channel, m.completion())

    def card_token(self) -> bytes:
        """The card identification item (TLV 1F14) of the card presented now:
        the same card gives the same token, another card another one."""
        return hashlib.sha256(("sim-card:" + self.pan).encode()).digest()[:16]

    async def _read_card(self, channel: _Channel) -> None:
        if not self.read_card_supported:
            await self._send(channel, m.nak(0x83))
            return
        await self._send(channel, m.ack())
        if not await self._exchange_end(channel, m.intermediate_status(0x0A)):  # insert card
            return
        if self.card_delay > 0:
            await channel.receive(self.card_delay)
        info = [
            (0x27, 0),
            (0x22, self.pan),
            (0x8B, self.card_name + "\x00"),
            (0x06, (primitive(0x1F14, self.card_token()),)),
        ]
        self.events.append("card_read")
        if await self._exchange_end(channel, m.status_information(info)):
            await self._exchange_end(channel, m.completion())

    def _result_bmps(self, tx: SimTransaction, amount_minor: int) -> list:
        now = datetime.now(timezone.utc)
        token = self.card_token()
        return [
            (0x27, 0),
            (0x04, amount_minor),
            (0x49, self.currency.numeric),
            (0x0C, now.strftime("%H%M%S")),
            (0x0D, now.strftime("%m%d")),
            (0x22, self.pan),
            (0x87, tx.receipt_no),
            (0x3B, "123456\x00\x00"),
            (0x0B, tx.trace_no),
            (0x19, 0x60),
            (0x29, self.terminal_id),
            (0x8A, 0x0A),
            (0x8B, self.card_name + "\x00"),
            (0x06, (primitive(0x1F14, token),)),
        ]

    async def _pre_authorise(self, channel: _Channel, message: m.Message) -> None:
        amount_minor = int(message.get(0x04) or 0)
        amount = from_minor_units(amount_minor, self.currency.alpha)
        await self._send(channel, m.ack())
        if not await self._exchange_end(channel, m.intermediate_status(0x0A)):  # insert card
            return
        if self.disconnect_in_transaction:
            self.disconnect_in_transaction = False
            self.events.append("disconnected")
            channel.close()
            raise ChannelClosed()
        if self.card_delay > 0:
            waited = await channel.receive(self.card_delay)
            if waited is not None and Apdu(waited[0], waited[1]).control == m.ABORT:
                await self._send(channel, m.ack())
                self.transactions.append(
                    SimTransaction(None, self._next_trace(), amount, self.currency.alpha, "aborted", None, 0x6C)
                )
                await self._exchange_end(channel, m.abort_from_terminal(0x6C))
                return
        code = self._decline_once.pop(0) if self._decline_once else self.decline_code
        if code is not None:
            tx = SimTransaction(None, self._next_trace(), amount, self.currency.alpha, "declined", None, code)
            self.transactions.append(tx)
            info = [(0x27, code), (0x04, amount_minor), (0x49, self.currency.numeric), (0x0B, tx.trace_no)]
            if await self._exchange_end(channel, m.status_information(info)):
                await self._exchange_end(channel, m.abort_from_terminal(code))
            return
        tx = SimTransaction(self._next_receipt(), self._next_trace(), amount, self.currency.alpha, "open")
        self.transactions.append(tx)
        acked = await self._exchange_end(channel, m.status_information(self._result_bmps(tx, amount_minor)))
        if acked and self.result_acks_late > 0:
            self.result_acks_late -= 1
            acked = False
        if not acked:
            # The controller did not take the result within T3: a real terminal
            # reverses the approval itself and ends the transaction with an abort.
            tx.state = "reversed"
            self.events.append(f"auto_reversal receipt={tx.receipt_no}")
            log.warning("sim.auto_reversal receipt=%s: the controller's 80 00 to the result did not come within "
                        "%.1f s", tx.receipt_no, self.t3_ack)
            await self._exchange_end(channel, m.abort_from_terminal(0x9A, [(0x87, tx.receipt_no)]))
            return
        await self._exchange_end(channel, m.completion())

    async def _refuse(self, channel: _Channel, code: int, receipt: int | None = None) -> None:
        bmps = [(0x87, receipt)] if receipt is not None else []
        await self._exchange_end(channel, m.abort_from_terminal(code, bmps))

    async def _partial_reversal(self, channel: _Channel, message: m.Message) -> None:
        receipt = message.get(0x87)
        await self._send(channel, m.ack())
        if receipt == RECEIPT_ALL:
            open_receipts = sorted(self.open_reservations())
            bmps: list = [(0x87, open_receipts[0] if open_receipts else RECEIPT_ALL)]
            if open_receipts:
                listing = constructed(0x23, *(primitive(0x08, bytes.fromhex(f"{r:04d}")) for r in open_receipts))
                bmps.append((0x06, (listing,)))
            await self._exchange_end(channel, m.abort_from_terminal(0xB8, bmps))
            return
        tx = self._open(receipt)
        if tx is None or self._falsely_not_found():
            await self._refuse(channel, 0xB8)
            return
        release = from_minor_units(int(message.get(0x04) or 0), self.currency.alpha)
        if release > tx.amount:
            await self._refuse(channel, 0xB7)
            return
        await self._book(channel, tx, tx.amount - release)

    async def _book_total(self, channel: _Channel, message: m.Message) -> None:
        await self._send(channel, m.ack())
        tx = self._open(message.get(0x87))
        if tx is None or self._falsely_not_found():
            await self._refuse(channel, 0xB8)
            return
        amount = from_minor_units(int(message.get(0x04) or 0), self.currency.alpha)
        if amount > tx.amount:
            await self._refuse(channel, 0xB7)
            return
        await self._book(channel, tx, amount)

    async def _book(self, channel: _Channel, tx: SimTransaction, booked: Decimal) -> None:
        tx.state, tx.booked = "booked", booked
        if self.book_delay > 0:
            # Booked at the host already; the result reaches the controller late.
            await asyncio.sleep(self.book_delay)
        info = [
            (0x27, 0),
            (0x04, _minor(booked, self.currency.minor_unit)),
            (0x49, self.currency.numeric),
            (0x87, tx.receipt_no),
            (0x0B, self._next_trace()),
            (0x29, self.terminal_id),
        ]
        if await self._exchange_end(channel, m.status_information(info)):
            await self._exchange_end(channel, m.completion())

    async def _reverse(self, channel: _Channel, message: m.Message) -> None:
        await self._send(channel, m.ack())
        receipt = message.get(0x87)
        tx = self._open(receipt)
        if tx is None:
            known = self.transaction(receipt) if isinstance(receipt, int) else None
            await self._refuse(channel, 0xB4 if known and known.state == "reversed" else 0xB8)
            return
        tx.state = "reversed"
        info = [(0x27, 0), (0x04, 0), (0x49, self.currency.numeric), (0x87, tx.receipt_no), (0x0B, self._next_trace())]
        if await self._exchange_end(channel, m.status_information(info)):
            await self._exchange_end(channel, m.completion())

    def _falsely_not_found(self) -> bool:
        if self.false_not_found <= 0:
            return False
        self.false_not_found -= 1
        self.events.append("false_not_found")
        return True

    def _open(self, receipt: object) -> SimTransaction | None:
        for t in self.transactions:
            if t.receipt_no == receipt and t.state == "open":
                return t
        return None

    def _next_receipt(self) -> int:
        self._receipt = self._receipt % 9999 + 1
        return self._receipt

    def _next_trace(self) -> int:
        self._trace = self._trace % 999999 + 1
        return self._trace


def _minor(amount: Decimal, exponent: int) -> int:
    return int(amount.scaleb(exponent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ZVT payment terminal simulator (terminal side)")
    parser.add_argument("--tcp", type=int, metavar="PORT", help="listen on TCP (0 picks a free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pty", action="store_true", help="serve ZVT serial framing on a new pty")
    parser.add_argument("--currency", default="EUR")
    parser.add_argument("--decline", choices=sorted(DECLINES), help="decline every pre-authorisation")
    parser.add_argument("--card-delay", type=float, default=0.0, help="seconds the card holder takes")
    parser.add_argument("--end-of-day-refusals", type=int, default=0, metavar="N",
                        help="refuse the next N end-of-days (result 77, not possible now)")
    args = parser.parse_args(argv)
    if args.tcp is None and not args.pty:
        parser.error("give --tcp PORT, --pty, or both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        sim = ZvtTerminalSimulator(currency=args.currency, host=args.host)
        sim.card_delay = args.card_delay
        sim.end_of_day_refusals = args.end_of_day_refusals
        if args.decline:
            sim.decline_code = DECLINES[args.decline]
        await sim.start(tcp_port=args.tcp, pty=args.pty)
        where = []
        if sim.tcp_port is not None:
            where.append(f"tcp={sim.tcp_url}")
        if sim.pty_path:
            where.append(f"pty={sim.pty_path}")
        print("zvt-terminal-simulator listening " + " ".join(where), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""The wire under ZVT: a serial line with framing, or TCP with bare APDUs.

Both links offer the same three verbs to the client: ``send(apdu)``,
``receive(timeout)`` and ``close()``. The serial link does its blocking I/O in
two dedicated threads (a reader that answers ACK/NAK at once, and a writer that
waits for the terminal's ACK) and hands APDUs to the event loop, which it never
blocks.

Both links also acknowledge (80 00) every readable message of the terminal's
that is not itself an acknowledgement or refusal, the moment it has arrived
and before the client sees it: the terminal waits only T3 for that 80 00 and
reverses an approval whose result went unacknowledged, so it must never wait
for the client's coroutine to be scheduled behind other work. The serial
reader thread queues it on the writer thread, clear of the event loop; the
TCP reader task writes it in the same step that read the message. The client
then sends no 80 00 of its own (``Link.acks_messages``).

Which link is used follows from the URL alone: ``tcp://host:port`` or
anything pyserial opens (a device path, a pty, ``rfc2217://``, ``loop://``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from drivers.zvt import messages as m
from drivers.zvt.apdu import header_size_and_length
from drivers.zvt.errors import TerminalTimeout, TerminalUnavailable, ZvtDecodeError
from drivers.zvt.framing import ACK_BYTE, NAK_BYTE, Frame, FrameReader, LineByte, encode_frame
from drivers.device import cancel_and_wait

log = logging.getLogger("hubedge.zvt")


@dataclass(frozen=True)
class Timers:
    """ZVT timers in seconds. Defaults follow the specification's typical values;
    tests pass short ones."""

    t1_inter_byte: float = 0.5  # gap allowed between two bytes of one serial frame
    t2_ack: float = 2.0  # serial frame sent -> ACK/NAK byte
    t3_command: float = 5.0  # command sent -> 80 00 / 84 xx
    t4_completion: float = 180.0  # longest silence while the card holder acts
    frame_attempts: int = 3  # serial: sends of one frame before giving up
    connect: float = 5.0  # TCP connect / opening the serial port
    resync_quiet: float = 0.5  # after an abandoned exchange: silence that means the terminal has finished it


ACK_APDU = m.encode_message(m.ack())


def needs_ack(apdu: bytes) -> bool:
    """A message of the terminal's that the controller answers with 80 00:
    every readable one except an acknowledgement (80 00) or a refusal (84 xx)."""
    if len(apdu) < 2 or apdu[0] in (m.ACK[0], m.NAK_CLASS):
        return False
    try:
        m.decode_message(apdu)
    except ZvtDecodeError:
        return False  # unreadable: the client reports it; no 80 00 for what we could not read
    return True


class Link:
    """What the client needs from a transport."""

    description = "terminal"
    # True: the link itself sends 80 00 for every message that needs one (``needs_ack``),
    # as soon as it has arrived; the client must not send another.
    acks_messages = False

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self._inbox: asyncio.Queue[bytes | Exception] | None = None

    async def open(self) -> None:
        raise NotImplementedError

    async def send(self, apdu: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def receive(self, timeout: float) -> bytes:
        if self._inbox is None:
            raise TerminalUnavailable(f"{self.description}: link not open: call connect() first")
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            raise TerminalTimeout(
                f"{self.description}: no message within {timeout:g} s: "
                "check that the terminal is on and in ECR mode"
            ) from None
        if isinstance(item, Exception):
            self._inbox.put_nowait(item)  # the link stays broken for later calls too
            raise item
        return item

    def drain(self) -> list[bytes]:
        """Take the APDUs that arrived while no exchange was running (left
        over from an earlier, abandoned one) and return them; a broken
        link's error stays for the next receive."""
        if self._inbox is None:
            return []
        kept: list[Exception] = []
        dropped: list[bytes] = []
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, Exception):
                kept.append(item)
            else:
                dropped.append(item)
        for item in kept:
            self._inbox.put_nowait(item)
        return dropped


def open_link(url: str, timers: Timers, *, baudrate: int = 9600) -> Link:
    if url.startswith("tcp://"):
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"terminal URL {url!r} needs a host and port: tcp://192.0.2.10:20007")
        return TcpLink(parts.hostname, parts.port, timers)
    return SerialLink(url, timers, baudrate=baudrate)


class TcpLink(Link):
    acks_messages = True

    def __init__(self, host: str, port: int, timers: Timers) -> None:
        super().__init__(timers)
        self.host, self.port = host, port
        self.description = f"terminal tcp://{host}:{port}"
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self.acked = 0  # messages acknowledged by the link

    async def open(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timers.connect
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise TerminalUnavailable(
                f"{self.description}: cannot connect ({exc.__class__.__name__}: {exc}): "
                "check the terminal is on, its IP address and port, and the network"
            ) from None
        self._inbox = asyncio.Queue()
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        assert self._inbox is not None
        try:
            while True:
                head = await reader.readexactly(3)
                if head[2] == 0xFF:
                    head += await reader.readexactly(2)
                sizes = header_size_and_length(head)
                assert sizes is not None
                data = await reader.readexactly(sizes[1])
                apdu = head + data
                if needs_ack(apdu):
                    # At once, from the reader: not behind the client's coroutine.
                    self._writer.write(ACK_APDU)
                    self.acked += 1
                self._inbox.put_nowait(apdu)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, OSError) as exc:
            self._inbox.put_nowait(
                TerminalUnavailable(
                    f"{self.description}: connection lost ({exc.__class__.__name__}): "
                    "check the terminal and the network; reconnect before the next command"
                )
            )

    async def send(self, apdu: bytes) -> None:
        if self._writer is None:
            raise TerminalUnavailable(f"{self.description}: not connected: call connect() first")
        if self._reader_task is not None and self._reader_task.done():
            raise TerminalUnavailable(f"{self.description}: connection lost: reconnect and retry")
        try:
            self._writer.write(apdu)
            await asyncio.wait_for(self._writer.drain(), self.timers.t2_ack)
        except (OSError, asyncio.TimeoutError) as exc:
            err = TerminalUnavailable(
                f"{self.description}: could not send ({exc.__class__.__name__}): reconnect and retry"
            )
            err.maybe_delivered = True  # bytes handed to the socket may still reach the terminal
            raise err from None

    async def close(self) -> None:
        if self._reader_task is not None:
            await cancel_and_wait([self._reader_task])
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None


class SerialLink(Link):
    """ZVT over a serial line (9600 8N2 by default): framing, ACK/NAK, retries."""

    acks_messages = True

    def __init__(self, url: str, timers: Timers, *, baudrate: int = 9600) -> None:
        super().__init__(timers)
        self.url = url
        self.baudrate = baudrate
        self.description = f"terminal on {url}"
        self._serial = None
        self._write_lock = threading.Lock()
        self._line_replies: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._writer_pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken: Exception | None = None
        self.acked = 0  # messages acknowledged by the link

    async def open(self) -> None:
        import serial  # pyserial; imported here so TCP-only sites never need it loaded

        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zvt-serial-write")

        def open_port():
            return serial.serial_for_url(
                self.url,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_TWO,
                timeout=0.02,
                write_timeout=self.timers.t2_ack,
            )

        try:
            self._serial = await self._loop.run_in_executor(self._writer_pool, open_port)
        except (OSError, ValueError, serial.SerialException) as exc:
            self._writer_pool.shutdown(wait=False)
            raise TerminalUnavailable(
                f"{self.description}: cannot open the port ({exc}): check the cable, the device "
                "path and that the service user is in the dialout group"
            ) from None
        self._stop.clear()
        self._broken = None
        self._reader = threading.Thread(target=self._read_loop, name="zvt-serial-read", daemon=True)
        self._reader.start()

    # -- reader thread ---------------------------------------------------------------

    def _deliver(self, item: bytes | Exception) -> None:
        loop, inbox = self._loop, self._inbox
        if loop is None or inbox is None:
            return
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # loop closed while shutting down
            pass

    def _write_byte(self, value: int) -> None:
        with self._write_lock:
            self._serial.write(bytes((value,)))

    def _read_loop(self) -> None:
        parser = FrameReader()
        last_byte = time.monotonic()
        try:
            while not self._stop.is_set():
                chunk = self._serial.read(512)
                now = time.monotonic()
                if not chunk:
                    if parser.in_frame and now - last_byte > self.timers.t1_inter_byte:
                        log.warning("zvt.frame_incomplete port=%s action=nak", self.url)
                        parser.reset()
                        self._write_byte(NAK_BYTE)
                    continue
                last_byte = now
                for event in parser.feed(chunk):
                    if isinstance(event, LineByte):
                        self._line_replies.put(event.value)
                    elif isinstance(event, Frame):
                        if event.crc_ok:
                            self._write_byte(ACK_BYTE)
                            if needs_ack(event.apdu):
                                self._ack_from_reader()
                            self._deliver(event.apdu)
                        else:
                            log.warning("zvt.frame_crc_error port=%s action=nak", self.url)
                            self._write_byte(NAK_BYTE)
        except Exception as exc:  # pyserial raises SerialException, OSError, TypeError on close
            if self._stop.is_set():
                return
            self._broken = TerminalUnavailable(
                f"{self.description}: serial link lost ({exc.__class__.__name__}): "
                "check the cable and the terminal's power; reconnect before the next command"
            )
            self._deliver(self._broken)

    def _ack_from_reader(self) -> None:
        """Queue the 80 00 for the message just read on the writer thread
        (it waits for the terminal's line ACK, which this thread must read),
        ahead of anything the client sends in reply to that message."""
        pool = self._writer_pool
        if pool is None:
            return
        self.acked += 1
        future = pool.submit(self._send_blocking, ACK_APDU)
        future.add_done_callback(self._ack_sent)

    def _ack_sent(self, future) -> None:
        exc = future.exception()
        if exc is not None:
            # The terminal never took our 80 00: it reverses what it reported and
            # the exchange ends without its answer; the client sees that (T4, link lost).
            log.warning("zvt.ack_not_taken port=%s error=%s", self.url, exc.__class__.__name__)

    # -- writer thread ---------------------------------------------------------------

    def _send_blocking(self, apdu: bytes) -> None:
        frame = encode_frame(apdu)
        unanswered = False  # an attempt met silence: the frame may have arrived and its ACK been lost
        for attempt in range(1, self.timers.frame_attempts + 1):
            if self._broken is not None:
                if unanswered:
                    err = TerminalUnavailable(str(self._broken))
                    err.maybe_delivered = True
                    raise err
                raise self._broken
            while not self._line_replies.empty():
                self._line_replies.get_nowait()
            try:
                with self._write_lock:
                    self._serial.write(frame)
            except Exception as exc:
                raise TerminalUnavailable(
                    f"{self.description}: write failed ({exc.__class__.__name__}): check the cable"
                ) from None
            try:
                reply = self._line_replies.get(timeout=self.timers.t2_ack)
            except queue.Empty:
                log.warning("zvt.frame_unacknowledged port=%s attempt=%d", self.url, attempt)
                unanswered = True
                continue
            if reply == ACK_BYTE:
                return
            log.warning("zvt.frame_nak port=%s attempt=%d", self.url, attempt)
        err = TerminalUnavailable(
            f"{self.description}: the terminal did not acknowledge a frame after "
            f"{self.timers.frame_attempts} attempts: check the cable, the line settings "
            f"({self.baudrate} 8N2) and that the terminal is in ECR mode"
        )
        # Every attempt NAKed: the terminal refused the frame each time. A silent
        # attempt proves nothing: the terminal may have taken it.
        err.maybe_delivered = unanswered
        raise err

    async def send(self, apdu: bytes) -> None:
        if self._serial is None or self._writer_pool is None or self._loop is None:
            raise TerminalUnavailable(f"{self.description}: port not open: call connect() first")
        await self._loop.run_in_executor(self._writer_pool, self._send_blocking, apdu)

    async def close(self) -> None:
        self._stop.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(None, reader.join, 2.0)
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
            self._serial = None
        if self._writer_pool is not None:
            self._writer_pool.shutdown(wait=False)
            self._writer_pool = None
